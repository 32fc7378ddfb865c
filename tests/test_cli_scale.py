"""`captum-xcam explain` over a dataset: streamed results, resume after a kill,
torchrun shards, refusal to mix settings, recursive folders, unreadable images.

A tiny model (tests/cli_builders.py small_net, from a checkpoint) on 32x32
images; the runs that must be slow enough to be killed midway use the same
model with a sleep before each forward pass."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
METHODS = "gradcam,xgradcam"  # two rows per image
SLOW_BUILDERS = '''
import time

from cli_builders import small_net


def slow_net(num_classes=10):
    model = small_net(num_classes)
    model.register_forward_pre_hook(lambda module, inputs: time.sleep(0.03))
    return model
'''


def environment(extra_path):
    environment = dict(os.environ, OMP_NUM_THREADS="1",
                       PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), str(extra_path)]),
                       http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY", "HTTPS_PROXY"):
        environment.pop(name, None)
    return environment


def save_images(folder, names, seed=0):
    rng = np.random.default_rng(seed)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def without_seconds(rows):
    return [{key: value for key, value in row.items() if key != "seconds"} for row in rows]


def status(out):
    return json.loads((out / "run.json").read_text())["status"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    r"""A dataset of 24 images in a folder and its subfolders (and files that
    are not images to explain), a smaller one of 6, the checkpoint, the slow
    builder, and the reference: one uninterrupted in-process run on each."""
    import cli_builders

    root = tmp_path_factory.mktemp("scale")
    dataset = root / "dataset"
    names = ([f"top{i:02d}.png" for i in range(8)] + [f"cats/c{i:02d}.png" for i in range(8)]
             + [f"cats/deep/d{i:02d}.png" for i in range(4)] + [f"dogs/g{i:02d}.png"
                                                               for i in range(4)])
    save_images(dataset, names + [".hidden.png", ".cache/x.png"])
    (dataset / "notes.txt").write_text("not an image")
    small = root / "small"
    save_images(small, ["b.png", "sub/cat.png", "sub__cat.png", "a/z.png", "y.png", "x.png"],
                seed=1)
    torch.manual_seed(0)
    torch.save(cli_builders.small_net(num_classes=10).state_dict(), root / "small_net.pt")
    (root / "slow_builders.py").write_text(SLOW_BUILDERS)
    files = {"root": root, "dataset": dataset, "names": sorted_names(names), "small": small,
             "checkpoint": root / "small_net.pt"}
    files["reference"] = explain_in_process(files, dataset, root / "reference", "--no-figures")
    files["small_reference"] = explain_in_process(files, small, root / "small_reference")
    return files


def sorted_names(names):
    return sorted(names, key=lambda name: Path(name).parts)


def arguments(data, images, out, *extra, model="cli_builders:small_net"):
    return ["explain", str(images), "--model", model, "--num-classes", "10", "--layer", "0",
            "--checkpoint", str(data["checkpoint"]), "--methods", METHODS, "--image-size",
            "32", "--out", str(out), "--quiet", *extra]


def explain_in_process(data, images, out, *extra, model="cli_builders:small_net",
                       expect=0):
    from captum_xcam.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sys.path[:0] = [str(TESTS), str(data["root"])]
    try:
        assert main(arguments(data, images, out, *extra, model=model)) == expect
    finally:
        del sys.path[:2]
        torch.set_num_threads(threads)
    return out


def test_recursive_folders_are_found_sorted_and_streamed_in_order(data):
    rows = read_csv(data["reference"] / "explanations.csv")
    expected = [str(data["dataset"] / name) for name in data["names"]]
    assert [row["image"] for row in rows[::2]] == expected
    assert [row["image"] for row in rows[1::2]] == expected
    assert {row["figure"] for row in rows} == {""}  # --no-figures
    assert sorted(p.name for p in data["reference"].iterdir()) == [
        "explanations.csv", "explanations.json", "run.json"]
    report = json.loads((data["reference"] / "explanations.json").read_text())
    assert report["status"] == status(data["reference"])
    assert report["status"] == {"complete": True, "images": 24, "explained": 24,
                                "failed": [], "reason": None}
    assert without_seconds(report["explanations"]) == without_seconds(
        [{**row, "target": int(row["target"]), "predicted": int(row["predicted"]),
          "score": float(row["score"])} for row in rows])


def test_a_killed_run_is_valid_marked_incomplete_and_resumes_to_the_same_rows(data, tmp_path,
                                                                            capsys):
    out = tmp_path / "out"
    slow = arguments(data, data["dataset"], out, "--no-figures",
                     model="slow_builders:slow_net")
    process = subprocess.Popen([sys.executable, "-m", "captum_xcam", *slow], cwd=ROOT,
                               env=environment(data["root"]), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    table = out / "explanations.csv"
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        if table.exists() and table.read_text().count("\n") > 8:  # the header, 4 images
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.kill()  # SIGKILL: nothing of the program runs after it
    process.wait()
    assert process.returncode == -signal.SIGKILL
    killed = status(out)
    assert killed["complete"] is False and "run the same command again" in killed["reason"]
    rows = read_csv(table)
    reference = read_csv(data["reference"] / "explanations.csv")
    assert 8 <= len(rows) < len(reference) and len(rows) % 2 == 0  # whole images only
    assert without_seconds(rows) == without_seconds(reference[:len(rows)])
    assert not (out / "explanations.json").exists()  # written at the end
    # A power cut in the middle of a write could leave the next image's first
    # row and a torn second one: that image is not done.
    first, second = (",".join(row.values()) for row in reference[len(rows):len(rows) + 2])
    with open(table, "a", newline="", encoding="utf-8") as file:
        file.write(first + "\r\n" + second[: len(second) // 2])
    explain_in_process(data, data["dataset"], out, "--no-figures",
                       model="slow_builders:slow_net")
    done_before = len(rows) // 2
    assert f"Explained {24 - done_before} images ({done_before} done before)" in (
        capsys.readouterr().out)
    resumed = read_csv(table)
    assert without_seconds(resumed) == without_seconds(reference)
    assert [row["seconds"] for row in resumed[:len(rows)]] == [r["seconds"] for r in rows]
    assert status(out)["complete"] is True
    report = json.loads((out / "explanations.json").read_text())
    assert len(report["explanations"]) == len(reference) and report["status"]["complete"]


def test_torchrun_shards_write_what_one_process_writes(data, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         "2", "-m", "captum_xcam", *arguments(data, data["small"], out)],
        cwd=ROOT, env=environment(data["root"]), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Explained 6 images, 6 of 6 in all" in done.stdout
    reference = data["small_reference"]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in reference.iterdir())
    assert names == ["a__z.png", "b.png", "explanations.csv", "explanations.json", "run.json",
                     "sub__cat-2.png", "sub__cat.png", "x.png", "y.png"]
    rows = read_csv(out / "explanations.csv")
    assert without_seconds(rows) == without_seconds(read_csv(reference / "explanations.csv"))
    assert [row["figure"] for row in rows[::2]] == [
        "a__z.png", "b.png", "sub__cat.png", "sub__cat-2.png", "x.png", "y.png"]
    assert status(out) == status(reference)
    report, expected = (json.loads((folder / "explanations.json").read_text())
                        for folder in (out, reference))
    assert report["config"] == expected["config"] and report["status"] == expected["status"]
    assert without_seconds(report["explanations"]) == without_seconds(expected["explanations"])
    for figure in (name for name in names if not name.startswith(("explanations", "run"))):
        assert (out / figure).read_bytes() == (reference / figure).read_bytes(), figure


def test_shards_left_by_a_killed_torchrun_are_taken_in(data, tmp_path, monkeypatch):
    r"""A sharded run killed midway leaves explanations.csv and shard files;
    the next run (here one process) counts an image done by any shard as done,
    explains only the others, and merges all in order."""
    out = tmp_path / "out"
    out.mkdir()
    source = data["reference"]
    lines = (source / "explanations.csv").read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    (out / "explanations.csv").write_text(header + "".join(rows[:4]))  # images 0, 1
    (out / "explanations.shard-0-of-2.csv").write_text(header + "".join(rows[8:12]))  # 4, 5
    (out / "explanations.shard-1-of-2.csv").write_text(header + "".join(rows[12:14]))  # 6
    manifest = json.loads((source / "run.json").read_text())
    manifest["status"].update(complete=False, explained=0, reason="running")
    (out / "run.json").write_text(json.dumps(manifest))
    from captum_xcam.cli import explain as explain_command

    explained = []
    real = explain_command.explain_image

    def counting(job, path, *rest):
        explained.append(path.name)
        return real(job, path, *rest)

    monkeypatch.setattr(explain_command, "explain_image", counting)
    explain_in_process(data, data["dataset"], out, "--no-figures")
    assert len(explained) == 24 - 5 and Path(data["names"][4]).name not in explained
    assert without_seconds(read_csv(out / "explanations.csv")) == without_seconds(
        read_csv(source / "explanations.csv"))
    assert sorted(p.name for p in out.iterdir()) == [
        "explanations.csv", "explanations.json", "run.json"]


def test_other_settings_into_an_existing_output_are_refused(data, capsys):
    out = data["reference"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for extra, difference in [(["--target", "3"], "target 'auto' there, '3' here"),
                              ([], "figures False there, True here")]:
        explain_in_process(data, data["dataset"], out, *extra,
                           *(["--no-figures"] if extra else []), expect=1)
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("captum-xcam: error: "), lines
        assert difference in lines[0] and "use another --out, or delete" in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_resumed_complete_output_does_nothing_and_says_so(data, capsys):
    out = data["reference"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    explain_in_process(data, data["dataset"], out, "--no-figures")
    assert "All 24 images are explained" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_an_unreadable_image_midway_is_skipped_told_and_retried(data, tmp_path, capsys):
    images = tmp_path / "images"
    save_images(images, ["a.png", "c.png"])
    (images / "b.png").write_bytes(b"not a PNG")
    out = tmp_path / "out"
    explain_in_process(data, images, out, "--no-figures", expect=1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "warning" in err[0] and f"Cannot read {images / 'b.png'}" in err[0]
    assert err[1].startswith("captum-xcam: error: 1 of 3 images could not be read")
    assert [r["image"] for r in read_csv(out / "explanations.csv")][::2] == [
        str(images / "a.png"), str(images / "c.png")]
    told = status(out)
    assert told["complete"] is False and told["explained"] == 2
    assert [failure["image"] for failure in told["failed"]] == [str(images / "b.png")]
    assert "could not be read" in told["reason"]
    assert json.loads((out / "explanations.json").read_text())["status"] == told
    save_images(images, ["b.png"])  # fixed: the rerun explains it, in its place
    explain_in_process(data, images, out, "--no-figures")
    assert [r["image"] for r in read_csv(out / "explanations.csv")][::2] == [
        str(images / name) for name in ("a.png", "b.png", "c.png")]
    assert status(out)["complete"] is True


def test_ctrl_c_midway_writes_what_is_done_marked_interrupted(data, tmp_path, capsys,
                                                              monkeypatch):
    from captum_xcam.cli import explain as explain_command

    real = explain_command.explain_image
    calls = []

    def interrupt_third(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(explain_command, "explain_image", interrupt_third)
    out = tmp_path / "out"
    explain_in_process(data, data["dataset"], out, "--no-figures", expect=130)
    assert "interrupted (Ctrl-C); the results so far are in" in capsys.readouterr().err
    report = json.loads((out / "explanations.json").read_text())
    assert report["status"] == status(out)
    assert report["status"]["explained"] == 2 and not report["status"]["complete"]
    assert "interrupted" in report["status"]["reason"]
    assert len(report["explanations"]) == 4
