r"""Memory of ``captum-xcam explain`` against the number of images it has done.

Writes a few hundred small random images to a temporary folder, runs the
explain command on them in a subprocess (with figures and with
``--no-figures``), samples its resident memory (VmRSS in /proc/<pid>/status,
Linux only) every 0.2 s against the rows in explanations.csv, and writes the
table to benchmarks/results/explain_memory.md. Streaming holds one image at a
time, so the memory should stay flat after the first images.

    python benchmarks/explain_memory.py [--images 400]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import RESULTS, ROOT, Environment  # noqa: E402

METHODS = "gradcam,xgradcam"  # two rows per image
CHECKPOINTS = (50, 100, 200, 400)
Sample = Tuple[int, float]  # images done, RSS in MiB
READING = ("Most of the memory is the interpreter with torch, torchvision, captum and "
           "matplotlib imported and the model loaded, before the first image; the sample "
           "after the last image falls while the run merges and writes explanations.json. "
           "A growth per 100 images near zero is what streaming promises: one image, its "
           "maps and its figure in memory at a time.")


def explain_command(images: Path, out: Path, figures: bool) -> List[str]:
    return [sys.executable, "-m", "captum_xcam", "explain", str(images), "--model",
            "resnet18", "--weights", "none", "--methods", METHODS, "--image-size", "64",
            "--out", str(out), "--quiet", *([] if figures else ["--no-figures"])]


def write_images(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):
        sub = folder / f"part{index % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(sub / f"image{index:04d}.png")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def images_done(table: Path) -> int:
    if not table.exists():
        return 0
    with open(table, "rb") as file:
        return max(file.read().count(b"\n") - 1, 0) // len(METHODS.split(","))


def sample_run(command: Sequence[str], table: Path) -> Tuple[List[Sample], float]:
    r"""The (images done, RSS) samples of one run, and its seconds."""
    environment = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    samples: List[Sample] = []
    while process.poll() is None:
        try:
            samples.append((images_done(table), rss_mib(process.pid)))
        except (FileNotFoundError, RuntimeError):  # the process just ended
            pass
        time.sleep(0.2)
    stderr = process.stderr.read() if process.stderr else ""
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
    return samples, time.perf_counter() - start


def rss_after(samples: Sequence[Sample], images: int) -> float:
    r"""The first RSS sampled once ``images`` images were done (the last
    sample if the run ended before the next one)."""
    return next((rss for done, rss in samples if done >= images), samples[-1][1])


def growth_base(checkpoints: Sequence[int]) -> int:
    r"""Where the growth is measured from: past the first images (imports and
    first calls), at the second checkpoint where there are three or more."""
    return checkpoints[1] if len(checkpoints) > 2 else checkpoints[0]


def table_row(label: str, samples: Sequence[Sample], seconds: float,
              checkpoints: Sequence[int]) -> str:
    values = [rss_after(samples, images) for images in checkpoints]
    base = growth_base(checkpoints)
    growth = ((values[-1] - values[checkpoints.index(base)])
              / ((checkpoints[-1] - base) / 100))
    cells = [label, *(f"{value:.0f}" for value in values), f"{growth:+.1f}",
             f"{max(rss for _, rss in samples):.0f}", f"{seconds:.0f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--out", type=Path, default=RESULTS / "explain_memory.md")
    args = parser.parse_args()
    checkpoints = [n for n in CHECKPOINTS if n < args.images] + [args.images]
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        images = Path(temporary) / "images"
        write_images(images, args.images)
        for figures in (True, False):
            out = Path(temporary) / f"out-{figures}"
            samples, seconds = sample_run(explain_command(images, out, figures),
                                          out / "explanations.csv")
            rows.append(table_row("with figures" if figures else "--no-figures", samples,
                                  seconds, checkpoints))
            print(rows[-1], flush=True)
        command = " ".join(explain_command(Path("IMAGES"), Path("OUT"), figures=True)[1:])
    header = ("| run | " + " | ".join(f"RSS after {n} images (MiB)" for n in checkpoints)
              + f" | growth per 100 images, {growth_base(checkpoints)} to {checkpoints[-1]} (MiB) "
              "| peak (MiB) | seconds |")
    report = "\n".join([
        "# Memory of `captum-xcam explain` against the images done",
        "",
        f"`python benchmarks/explain_memory.py --images {args.images}`: {args.images} random "
        "64x64 PNGs in four subfolders, explained by", "",
        f"    python {command} [--no-figures]", "",
        "in a subprocess whose resident memory (VmRSS) is sampled every 0.2 s against the "
        "rows in explanations.csv; each cell is the first sample once that many images were "
        "done. The command runs with OMP_NUM_THREADS=1, on cores shared with other work.", "",
        Environment.capture().markdown(), "",
        header, "|" + "---|" * (len(checkpoints) + 4), *rows, "",
        READING, "",
    ])
    args.out.write_text(report, encoding="utf-8")
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
