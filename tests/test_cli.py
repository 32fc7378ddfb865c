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

from captum_xcam import list_methods, method_info

ROOT = Path(__file__).resolve().parents[1]
METRIC_KEYS = ["pointing", "energy", "average_drop", "increase", "deletion", "insertion",
               "ms_per_image"]


def run_cli(*args, env=None, timeout=300):
    r"""``python -m captum_xcam *args`` with this checkout's package, one thread
    (tiny models; and the test process runs beside it), and no way to reach the
    network through urllib (an unreachable proxy): nothing can download."""
    environment = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
                       http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    environment.update(env or {})
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
    names = [method_info(key).name for key in list_methods()]
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
        figures + ["explanations.csv", "explanations.json", "run.json"])
    for figure in figures:
        assert_opens_as_image(out / figure, min_width=400)
    rows = read_csv(out / "explanations.csv")
    images = [str(files["folder"] / "a.png"), str(files["folder"] / "b.jpg"),
              str(files["other"])]
    assert [(r["image"], r["figure"], r["method"]) for r in rows] == [
        (image, figure, name) for image, figure in zip(images, figures)
        for name in ("LIFT-CAM", "Guided LIFT-CAM", "Grad-CAM",
                     "Guided Grad-CAM")]
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


TESTS = Path(__file__).resolve().parent
WITH_BUILDERS = {"PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}"}  # tests/cli_builders.py


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    r"""Checkpoints of a timm model (random weights, ImageNet's 1000 classes) and
    of a builder's model of tests/cli_builders.py (10 classes)."""
    timm = pytest.importorskip("timm")
    import cli_builders

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    mobilenet = timm.create_model("mobilenetv3_small_050", pretrained=False).eval()
    torch.save(mobilenet.state_dict(), root / "mobilenet.pt")
    small = cli_builders.small_net(num_classes=10).eval()
    torch.save({"model": small.state_dict()}, root / "small.pt")
    return {"mobilenet": mobilenet, "mobilenet_file": root / "mobilenet.pt",
            "small": small, "small_file": root / "small.pt"}


@pytest.fixture
def one_thread():
    r"""In-process runs of small models on shared cores: one thread, as run_cli's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def predictions(model, preprocessing, image):
    from captum_xcam.data import read_image

    x = preprocessing.normalize(preprocessing.crop(read_image(image))).unsqueeze(0)
    with torch.no_grad():
        return model(x).softmax(1)[0]


def test_explain_a_timm_model_with_random_weights_at_its_derived_layer(files, tmp_path):
    out = tmp_path / "out"
    done = run_cli("explain", files["folder"] / "a.png", "--model", "timm/mobilenetv3_small_050",
                   "--weights", "none", "--methods", "xgradcam", "--image-size", "64",
                   "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "random weights" in done.stderr and "meaningless" in done.stderr
    report = json.loads((out / "explanations.json").read_text())
    config = report["config"]
    assert (config["model"], config["weights"], config["layer"], config["image_size"]) == (
        "timm/mobilenetv3_small_050", None, "blocks", 64)
    assert [r["target_name"] for r in report["explanations"]] == [""]  # no weights, no names
    assert_opens_as_image(out / "a.png", min_width=200)


def test_explain_a_timm_checkpoint_with_timms_preprocessing_and_class_names(
        files, model_files, tmp_path):
    from captum_xcam.models import timm_preprocessing

    out = tmp_path / "out"
    caches = {"HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    image = files["folder"] / "b.jpg"
    done = run_cli("explain", image, "--model", "timm/mobilenetv3_small_050",
                   "--checkpoint", model_files["mobilenet_file"], "--weights", "DEFAULT",
                   "--target", "Goldfish", "--methods", "xgradcam", "--image-size", "64",
                   "--out", out, "--quiet", env=caches)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning" not in done.stderr
    assert not (tmp_path / "hf").exists() and not (tmp_path / "torch").exists()
    report = json.loads((out / "explanations.json").read_text())
    assert report["config"]["weights"] == "timm:mobilenetv3_small_050.lamb_in1k"
    [row] = report["explanations"]
    assert (row["target"], row["target_name"]) == (1, "goldfish")
    # The checkpoint's model on timm's preprocessing (bicubic, crop_pct 0.875) made it.
    probabilities = predictions(model_files["mobilenet"],
                                timm_preprocessing("mobilenetv3_small_050", 64), image)
    assert row["predicted"] == int(probabilities.argmax())
    assert row["score"] == pytest.approx(float(probabilities[1]), abs=1e-5)


def test_timm_default_weights_offline_fail_fast_in_one_line(files, tmp_path):
    out = tmp_path / "out"
    hf_home = tmp_path / "hf"
    done = run_cli("explain", files["folder"], "--model", "timm/mobilenetv3_small_050",
                   "--methods", "xgradcam", "--out", out,
                   env={"HF_HOME": str(hf_home), "TORCH_HOME": str(tmp_path / "torch")},
                   timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("captum-xcam: error: "), lines
    assert "Cannot download timm's weights mobilenetv3_small_050.lamb_in1k" in lines[0]
    assert str(hf_home / "hub") in lines[0] and "HF_HOME" in lines[0]
    assert "--checkpoint FILE --weights DEFAULT" in lines[0] and "--weights none" in lines[0]
    assert_nothing_written(out)


def test_explain_a_builders_model_from_its_checkpoint(files, model_files, tmp_path, capsys,
                                                      monkeypatch, one_thread):
    from captum_xcam.cli import main
    from captum_xcam.models import Preprocessing

    out = tmp_path / "out"
    image = files["folder"] / "a.png"
    done = run_cli("explain", image, "--model", "cli_builders:small_net", "--num-classes", "10",
                   "--checkpoint", model_files["small_file"], "--layer", "0",
                   "--methods", "xgradcam,gradcampp", "--target", "3", "--image-size", "48",
                   "--out", out, "--quiet", env=WITH_BUILDERS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning" not in done.stderr
    report = json.loads((out / "explanations.json").read_text())
    assert (report["config"]["layer"], report["config"]["weights"]) == ("0", None)
    probabilities = predictions(model_files["small"], Preprocessing.for_weights(None, 48), image)
    for row in report["explanations"]:
        assert row["predicted"] == int(probabilities.argmax()) and row["target"] == 3
        assert row["score"] == pytest.approx(float(probabilities[3]), abs=1e-5)
    # In-process: a builder whose model is a timm model gets the timm rule's layer.
    monkeypatch.syspath_prepend(str(TESTS))
    assert main(["explain", str(image), "--model", "cli_builders:timm_net", "--methods",
                 "xgradcam", "--image-size", "32", "--out", str(tmp_path / "timm"),
                 "--quiet"]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "timm" / "explanations.json").read_text())
    assert report["config"]["layer"] == "layer4"


# Wrong --model and --weights for timm names and builders, run in-process.
MODEL_BAD_INPUTS = {
    "unknown timm model": (["--model", "timm/resnet500"], "did you mean timm/resnet50"),
    "unknown timm tag": (["--model", "timm/resnet18.in9k"], "the tags of resnet18 are"),
    "torchvision weights for timm": (["--model", "timm/resnet18", "--weights", "IMAGENET1K_V1"],
                                     "timm models take --weights DEFAULT"),
    "builder module missing": (["--model", "nowhere_at_all:build"],
                               "Cannot import nowhere_at_all"),
    "builder module fails": (["--model", "failing_module:build"],
                             "Importing failing_module for --model failing_module:build "
                             "failed: ZeroDivisionError"),
    "builder syntax": (["--model", "cli_builders:"], "package.module:function"),
    "builder missing": (["--model", "cli_builders:smal_net"], "did you mean small_net"),
    "builder not callable": (["--model", "cli_builders:NUMBER"],
                             "not callable (an object of type int)"),
    "builder raising": (["--model", "cli_builders:broken"],
                        "cli_builders:broken() raised RuntimeError: the weights server"),
    "builder without num_classes": (["--model", "cli_builders:no_options", "--num-classes", "3"],
                                    "unexpected keyword argument 'num_classes'"),
    "builder not returning a module": (["--model", "cli_builders:not_a_module"],
                                       "returned a dict, not a torch.nn.Module"),
    "builder with weights": (["--model", "cli_builders:small_net", "--weights", "DEFAULT"],
                             "--weights is for torchvision and timm models"),
    "builder without layer": (["--model", "cli_builders:small_net"],
                              "no default CAM layer (only timm models do); name one with "
                              "--layer"),
    "builder checkpoint of another model": (
        ["--model", "cli_builders:small_net", "--layer", "0", "--checkpoint", "{checkpoint}"],
        "not a state dict of cli_builders:small_net"),
    "image too small for the model": (["--model", "timm/inception_v3", "--weights", "none",
                                       "--image-size", "24"],
                                      "fails on an input of shape (1, 3, 24, 24) (RuntimeError"),
    # Vision transformers get a layer (tests/test_cli_transformers.py); MambaOut none.
    "timm model without a feature map": (["--model", "timm/test_mambaout", "--weights", "none"],
                                         "its features are channels-last (1, 1, 1, 64), and "
                                         "CAMs need a (N, C, h, w) layer output; name a layer "
                                         "with --layer."),
}


@pytest.mark.parametrize("case", list(MODEL_BAD_INPUTS))
def test_bad_model_in_process(case, files, tmp_path, capsys, monkeypatch, one_thread):
    pytest.importorskip("timm")
    from captum_xcam.cli import main

    (tmp_path / "failing_module.py").write_text("1 / 0\n")
    monkeypatch.chdir(tmp_path)  # builders come from the current folder, or the path:
    monkeypatch.syspath_prepend(str(TESTS))
    arguments, message = MODEL_BAD_INPUTS[case]
    arguments = [a.format(**files) for a in arguments]
    if "--image-size" not in arguments:
        arguments += ["--image-size", "32"]
    out = tmp_path / "out"
    assert main(["explain", str(files["folder"]), *arguments, "--methods", "xgradcam",
                 "--out", str(out), "--quiet"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("captum-xcam: error: "), lines
    assert all("warning" in line for line in lines[:-1]), lines  # random weights, at most
    assert message in lines[-1]
    assert_nothing_written(out)


def test_without_timm_the_package_works_and_timm_names_say_how_to_install(files, tmp_path):
    r"""timm blocked in a fresh interpreter: importing the package and the command
    line needs no timm; a timm name is a one-line error."""
    code = ("import sys; sys.modules['timm'] = None; import captum_xcam, captum_xcam.models; "
            "from captum_xcam.cli import main; sys.exit(main(sys.argv[1:]))")
    environment = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code, "explain", str(files["folder"]),
                           "--model", "timm/resnet18", "--out", str(tmp_path / "out")],
                          cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "captum-xcam: error: timm models need the timm package: pip install timm "
        "(or pip install 'captum-xcam[dev]')."]


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


def test_a_failure_midway_keeps_the_images_done_and_marks_the_run_incomplete(
        files, tmp_path, monkeypatch):
    r"""In-process: the second image fails after the first one's rows were
    written. They stay, the output says why it is incomplete, and a rerun
    explains the rest (more in tests/test_cli_scale.py)."""
    from captum_xcam.cli import explain as explain_command
    from captum_xcam.cli import main

    real = explain_command.explain_image
    calls = []

    def fail_on_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            assert len(read_csv(out / "explanations.csv")) == 1
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(explain_command, "explain_image", fail_on_second)
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("from an earlier run")
    arguments = ["explain", str(files["folder"]), "--model", "resnet18", "--checkpoint",
                 str(files["checkpoint"]), "--methods", "xgradcam", "--image-size", "32",
                 "--out", str(out), "--quiet"]
    with pytest.raises(RuntimeError, match="boom"):
        main(arguments)
    assert len(calls) == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "a.png", "earlier.txt", "explanations.csv", "explanations.json", "run.json"]
    assert [r["image"] for r in read_csv(out / "explanations.csv")] == [
        str(files["folder"] / "a.png")]
    status = json.loads((out / "run.json").read_text())["status"]
    assert status["complete"] is False and "RuntimeError: boom" in status["reason"]
    monkeypatch.setattr(explain_command, "explain_image", real)
    assert main(arguments) == 0
    assert [r["image"] for r in read_csv(out / "explanations.csv")] == [
        str(files["folder"] / "a.png"), str(files["folder"] / "b.jpg")]
    assert json.loads((out / "run.json").read_text())["status"]["complete"] is True


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


@pytest.mark.parametrize("key", [k for k in list_methods() if not method_info(k).uses_target])
def test_a_target_free_method_and_its_guided_variant_run_with_the_cli_target(key):
    # The plain map ignores the target; guided backpropagation still needs it.
    from captum_xcam.cli.methods import attribute
    from conftest import make_images, make_tiny

    model, layer = make_tiny()
    x = make_images(n=1, size=16)
    plain, _ = attribute(method_info(key), model, layer, x, [2])
    guided, _ = attribute(method_info(key), model, layer, x, [2], guided=True)
    assert plain.shape == (1, 1, 4, 4) and guided.shape == x.shape
