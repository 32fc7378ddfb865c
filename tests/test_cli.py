"""The captum-xcam command line, run as a user runs it: `python -m captum_xcam` in a
subprocess, offline. Models are torchvision's with random weights saved by the
tests; nothing is downloaded."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from captum_xcam.cli.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
METRIC_KEYS = ["pointing", "energy", "average_drop", "increase", "deletion", "insertion",
               "ms_per_image"]


def run_cli(*args, env=None, timeout=300):
    r"""``python -m captum_xcam *args`` with this checkout's package, one thread
    (tiny models; and the test process runs beside it), and no way to reach the
    network through urllib (an unreachable proxy): nothing can download."""
    environment = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
                       http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
                       **(env or {}))
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY", "HTTPS_PROXY"):
        environment.pop(name, None)
    return subprocess.run([sys.executable, "-m", "captum_xcam", *map(str, args)], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=timeout)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def assert_opens_as_image(path, min_width=100):
    with Image.open(path) as image:
        image.load()
        assert image.width >= min_width and image.height >= 50
        return image.size


def assert_nothing_written(out):
    assert not out.exists() or not any(out.iterdir())
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    r"""Two images in a folder (a colour PNG and a greyscale JPEG, odd sizes), a
    third with the same stem elsewhere, a broken image, and checkpoints."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    folder = root / "photos"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 56), dtype=np.uint8)).save(folder / "b.jpg")
    (folder / "notes.txt").write_text("not an image, and not picked from the folder")
    other = root / "other"
    other.mkdir()
    Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(other / "a.png")
    (root / "empty").mkdir()
    broken = root / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG")
    torch.manual_seed(0)
    resnet18 = torchvision.models.resnet18().eval()
    torch.save(resnet18.state_dict(), root / "resnet18.pt")
    torch.save({"epoch": 3, "state_dict": resnet18.state_dict()}, root / "resnet18_dict.pt")
    return {"root": root, "folder": folder, "empty": root / "empty", "other": other / "a.png",
            "broken": broken, "checkpoint": root / "resnet18.pt",
            "wrapped": root / "resnet18_dict.pt", "model": resnet18}


def test_demo_writes_the_figure_and_the_metrics_table(tmp_path):
    out = tmp_path / "demo"
    done = run_cli("demo", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "demo.png", "metrics.csv", "metrics.json", "metrics.md"]
    width, height = assert_opens_as_image(out / "demo.png", min_width=700)
    assert width > height  # the image and six maps per row, four rows
    names = [method.name for method in METHODS.values()]
    rows = read_csv(out / "metrics.csv")
    assert [row["method"] for row in rows] == names
    table = json.loads((out / "metrics.json").read_text())["metrics"]
    for row in rows:
        values = {key: float(row[key]) for key in METRIC_KEYS}
        assert values == pytest.approx(table[row["method"]], rel=1e-9)
        for key in ("pointing", "energy", "increase", "deletion", "insertion"):
            assert 0 <= values[key] <= 1, (row["method"], key)
        assert 0 <= values["average_drop"] <= 100 and values["ms_per_image"] > 0
        # The shipped model is right on these images and the CAMs find the object.
        assert values["pointing"] >= 0.5 and values["insertion"] > values["deletion"]
    markdown = (out / "metrics.md").read_text()
    for name in names:
        assert f"| {name} |" in markdown and f"| {name} |" in done.stdout
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_explain_with_a_checkpoint_explains_every_image(files, tmp_path):
    out = tmp_path / "out"
    methods = ["liftcam", "gradcam"]
    done = run_cli("explain", files["folder"], files["other"], "--model", "resnet18",
                   "--checkpoint", files["wrapped"], "--methods", ",".join(methods),
                   "--guided", "--image-size", "64", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning" not in done.stderr
    figures = ["a.png", "b.png", "a-2.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        figures + ["explanations.csv", "explanations.json"])
    for figure in figures:
        assert_opens_as_image(out / figure, min_width=400)
    rows = read_csv(out / "explanations.csv")
    images = [str(files["folder"] / "a.png"), str(files["folder"] / "b.jpg"),
              str(files["other"])]
    assert [(r["image"], r["figure"], r["method"]) for r in rows] == [
        (image, figure, name) for image, figure in zip(images, figures)
        for name in ("LIFT-CAM", "Guided LIFT-CAM", "Grad-CAM (Captum)",
                     "Guided Grad-CAM (Captum)")]
    # The checkpoint's model made the predictions: recompute them here.
    from captum_xcam.data import read_image
    from captum_xcam.models import Preprocessing

    preprocessing = Preprocessing.for_weights(None, crop_size=64)
    for image in images:
        x = preprocessing.normalize(preprocessing.crop(read_image(image))).unsqueeze(0)
        with torch.no_grad():
            probabilities = files["model"](x).softmax(1)[0]
        for row in (r for r in rows if r["image"] == image):
            assert int(row["predicted"]) == int(probabilities.argmax())
            assert row["target"] == row["predicted"]  # --target auto
            assert float(row["score"]) == pytest.approx(float(probabilities.max()), abs=1e-5)
            assert row["target_name"] == "" and float(row["seconds"]) > 0
    report = json.loads((out / "explanations.json").read_text())
    assert report["config"]["layer"] == "layer4" and report["config"]["image_size"] == 64
    assert len(report["explanations"]) == len(rows)


def test_explain_perturbation_methods_and_a_target_by_name(files, tmp_path):
    out = tmp_path / "out"
    torch_home = tmp_path / "torch_home"  # empty: the weights' metadata needs no file
    done = run_cli("explain", files["folder"] / "a.png", "--model", "resnet18",
                   "--checkpoint", files["checkpoint"], "--weights", "IMAGENET1K_V1",
                   "--layer", "layer3", "--methods", "scorecam,ablationcam",
                   "--target", "Goldfish", "--image-size", "32", "--out", out,
                   env={"TORCH_HOME": str(torch_home)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Downloading" not in done.stderr and not torch_home.exists()
    rows = read_csv(out / "explanations.csv")
    assert [r["method"] for r in rows] == ["Score-CAM", "Ablation-CAM"]
    assert "Score-CAM channels" in done.stderr  # the progress bar over channels
    assert {(r["target"], r["target_name"]) for r in rows} == {("1", "goldfish")}
    assert_opens_as_image(out / "a.png", min_width=300)
    assert json.loads((out / "explanations.json").read_text())["config"]["layer"] == "layer3"


def test_explain_with_random_weights_warns_and_uses_the_family_layer(files, tmp_path):
    out = tmp_path / "out"
    done = run_cli("explain", files["folder"] / "b.jpg", "--model", "squeezenet1_1",
                   "--weights", "none", "--methods", "xgradcam", "--target", "7",
                   "--image-size", "64", "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "random weights" in done.stderr and "meaningless" in done.stderr
    report = json.loads((out / "explanations.json").read_text())
    assert report["config"]["layer"] == "features"
    assert [r["target"] for r in report["explanations"]] == [7]


def test_default_weights_offline_fail_fast_and_say_where_the_file_goes(files, tmp_path):
    out = tmp_path / "out"
    torch_home = tmp_path / "torch_home"
    done = run_cli("explain", files["folder"], "--model", "resnet18", "--out", out,
                   env={"TORCH_HOME": str(torch_home)}, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    error = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(error) == 1
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert "Cannot download the weights" in error[0] and str(expected) in error[0]
    assert "--checkpoint" in error[0] and "--weights none" in error[0]
    assert_nothing_written(out)
    assert not expected.exists()


# Wrong inputs, each run as a user would; the required options default as below.
BAD_INPUTS = {
    "missing file": (["{root}/nowhere.jpg"], "No such file or folder"),
    "unreadable image": (["{broken}"], "Cannot read"),
    "unknown model": (["{folder}", "--model", "resnet500"], "did you mean resnet50"),
    "unknown method": (["{folder}", "--methods", "xgradcam,foocam"], "Unknown method foocam"),
    "unknown layer": (["{folder}", "--layer", "layer9"], "has no layer 'layer9'"),
    "target out of range": (["{folder}", "--target", "1000"], "out of range"),
    "unknown target name": (["{folder}", "--weights", "DEFAULT", "--target", "goldfsh"],
                            "did you mean 'goldfish'"),
}
# More of them, run in-process (main(argv)): the same code path, without the
# seconds of a fresh interpreter each.
MORE_BAD_INPUTS = {
    "folder without images": (["{empty}"], "No images"),
    "layer without a feature map": (["{folder}", "--layer", "fc"], "(N, C, h, w)"),
    "target name without names": (["{folder}", "--target", "goldfish"],
                                  "class names come only with --weights"),
    "unknown weights": (["{folder}", "--weights", "IMAGENET9K"], "has no weights"),
    "missing checkpoint": (["{folder}", "--checkpoint", "{root}/none.pt"], "No checkpoint"),
    "not a checkpoint": (["{folder}", "--checkpoint", "{broken}"], "Cannot read"),
    "checkpoint of another model": (["{folder}", "--model", "resnet34"],
                                    "not a state dict of resnet34"),
    "checkpoint with another class count": (["{folder}", "--num-classes", "10"],
                                            "another number of classes"),
    "unknown device": (["{folder}", "--device", "tpu"], "Unknown device"),
    "bad image size": (["{folder}", "--image-size", "4"], "--image-size"),
}


def explain_arguments(case, cases, files, out):
    arguments, message = cases[case]
    arguments = [a.format(**files) for a in arguments]
    defaults = {"--model": "resnet18", "--checkpoint": str(files["checkpoint"]),
                "--methods": "xgradcam", "--image-size": "32"}
    for flag, value in defaults.items():
        if flag not in arguments:
            arguments += [flag, value]
    return ["explain", *arguments, "--out", str(out)], message


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_one_line_and_no_output(case, files, tmp_path):
    arguments, message = explain_arguments(case, BAD_INPUTS, files, tmp_path / "out")
    done = run_cli(*arguments, timeout=120)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("captum-xcam: error: "), lines
    assert message in lines[0]
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("case", list(MORE_BAD_INPUTS))
def test_more_bad_input_in_process(case, files, tmp_path, capsys):
    from captum_xcam.cli import main

    arguments, message = explain_arguments(case, MORE_BAD_INPUTS, files, tmp_path / "out")
    assert main(arguments) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("captum-xcam: error: "), lines
    assert message in lines[0]
    assert_nothing_written(tmp_path / "out")


def test_no_cuda_is_a_clear_error(files, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from captum_xcam.cli import main

    assert main(["explain", str(files["folder"]), "--device", "cuda", "--out",
                 str(tmp_path / "out")]) == 1
    assert "CUDA is not available" in capsys.readouterr().err


def test_checkpoints_are_never_unpickled(files, tmp_path):
    r"""A checkpoint that would run code when unpickled is refused, and the code
    does not run."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": files["model"].state_dict(), "extra": Payload()}, evil)
    done = run_cli("explain", files["folder"], "--model", "resnet18", "--checkpoint", evil,
                   "--out", tmp_path / "out")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "Refusing to load" in done.stderr and "weights_only=True" in done.stderr
    assert not marker.exists()
    assert_nothing_written(tmp_path / "out")


def test_a_failure_midway_leaves_no_partial_output(files, tmp_path, monkeypatch):
    r"""In-process: the second image fails after the first figure was written."""
    from captum_xcam.cli import explain as explain_command
    from captum_xcam.cli import main

    real = explain_command.explain_image
    calls = []

    def fail_on_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            assert any(p.suffix == ".png" for p in args[3].parent.iterdir())
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(explain_command, "explain_image", fail_on_second)
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("from an earlier run")
    with pytest.raises(RuntimeError, match="boom"):
        main(["explain", str(files["folder"]), "--model", "resnet18", "--checkpoint",
              str(files["checkpoint"]), "--methods", "xgradcam", "--image-size", "32",
              "--out", str(out), "--quiet"])
    assert len(calls) == 2
    assert [p.name for p in out.iterdir()] == ["earlier.txt"]
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_help_and_no_command(capsys):
    from captum_xcam.cli import main

    for argv in (["--help"], ["explain", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
    assert "--checkpoint" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2 and "{demo,explain}" in capsys.readouterr().err


def test_console_script_is_declared_for_main():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["captum-xcam"].partition(":")
    from captum_xcam.cli import main

    assert getattr(__import__(module, fromlist=[name]), name) is main
