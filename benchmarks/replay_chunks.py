r"""How many masked inputs per forward pass Score-CAM's replay should score: the
time per row of the replay that the Score-CAM family uses (batch norm folded,
the memory format measured) at several rows per pass, on the CPU's threads. It
sets the default ``perturbations_per_eval`` (16 per example) of the perturbation
methods.

    python benchmarks/replay_chunks.py            # ResNet-18 and -50, 224x224, 2 threads
    python benchmarks/replay_chunks.py --device cuda --rows 16,32,64,128,256

Writes ``replay_chunks.md`` into ``--out`` (default benchmarks/results).
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.common import RESULTS, Environment, command_line  # noqa: E402
from captum_xcam._utils.replay import fast_replay  # noqa: E402


def seconds_per_row(replay, rows: int, size: int, device: torch.device, repeats: int) -> float:
    x = torch.rand(rows, 3, size, size, device=device)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first call warms up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            replay((x,), ())
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    return min(times[1:]) / rows


def measure(model_name: str, rows: List[int], size: int, device: torch.device,
            repeats: int) -> Dict[int, float]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(model_name, weights=None).eval().to(device)
    x = torch.rand(1, 3, size, size, device=device)
    replay = fast_replay(model, model.layer4, (x,), (), "Score-CAM")
    with torch.inference_mode():  # its trials of the memory formats, on 16 rows
        while replay.chosen is None:
            replay((x.expand(16, -1, -1, -1).contiguous(),), ())
    return {n: seconds_per_row(replay, n, size, device, repeats) for n in rows}


def markdown(results: Dict[str, Dict[int, float]], env: Environment, command: str) -> str:
    rows = sorted(next(iter(results.values())))
    lines = ["# Rows per forward pass of Score-CAM's replay", "", f"`{command}`", "",
             env.markdown(), "",
             "Milliseconds per masked input (the best of the repeats after a warm-up), and in "
             "brackets relative to the fastest row count of the model; the memory format is "
             "the one the replay measured faster on 16 rows.", "",
             "| model | " + " | ".join(f"{n} rows" for n in rows) + " |",
             "| --- |" + " ---: |" * len(rows)]
    for model_name, times in results.items():
        best = min(times.values())
        lines.append(f"| {model_name} | " + " | ".join(
            f"{times[n] * 1000:.1f} ({times[n] / best:.2f})" for n in rows) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--rows", default="4,8,16,32,64")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    rows = [int(n) for n in args.rows.split(",")]
    results = {name: measure(name, rows, args.size, device, args.repeats)
               for name in args.models.split(",")}
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(results, Environment.capture(device), command_line("replay_chunks.py"))
    (args.out / "replay_chunks.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
