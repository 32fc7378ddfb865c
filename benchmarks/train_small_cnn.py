r"""Trains the SmallCNN shipped in ``captum_xcam/models/small_cnn_synthetic.pt``.

Deterministic on the CPU: fixed seeds, ``torch.use_deterministic_algorithms``,
one thread, the data generated from seeds, and no data-loader workers, so
that a rerun with the same torch version gives the same weights bit for bit.

    python benchmarks/train_small_cnn.py            # retrain, write the weights
    python benchmarks/train_small_cnn.py --check    # retrain, compare with the shipped ones

Training set: ``make_synthetic(N_TRAIN, seed=0)``; test set:
``make_synthetic(N_TEST, seed=1)`` (the tests draw yet another seed).
"""
import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Dict

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from captum_xcam.data import make_synthetic
from captum_xcam.models.small_cnn import WEIGHTS_FILE, SmallCNN

N_TRAIN = 6000
N_TEST = 1000
EPOCHS = 8
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
SEED = 0


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(x).argmax(1) for x in images.split(500)])
    return (predictions == labels).float().mean().item()


def train(verbose: bool = True) -> Dict[str, torch.Tensor]:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    start = time.perf_counter()
    train_set = make_synthetic(N_TRAIN, seed=0)
    test_set = make_synthetic(N_TEST, seed=1)
    if verbose:
        print(f"data: {time.perf_counter() - start:.1f} s")
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    steps = EPOCHS * (N_TRAIN // BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=steps)
    order_generator = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(N_TRAIN, generator=order_generator)
        for batch in order[: steps // EPOCHS * BATCH_SIZE].split(BATCH_SIZE):
            loss = F.cross_entropy(model(train_set.images[batch]), train_set.labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if verbose:
            test_accuracy = accuracy(model, test_set.images, test_set.labels)
            print(
                f"epoch {epoch + 1}: loss {loss.item():.4f}, test accuracy "
                f"{test_accuracy:.4f} ({time.perf_counter() - start:.0f} s)"
            )
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fingerprint(state: Dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped weights")
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE, help="where to write")
    args = parser.parse_args()
    state = train()
    print(f"fingerprint: {fingerprint(state)}")
    if args.check:
        shipped = torch.load(WEIGHTS_FILE, map_location="cpu", weights_only=True)
        same = shipped.keys() == state.keys() and all(
            torch.equal(shipped[k], state[k]) for k in state
        )
        print(f"shipped:     {fingerprint(shipped)}")
        print("identical to the shipped weights" if same else "DIFFERENT from the shipped weights")
        raise SystemExit(0 if same else 1)
    torch.save(state, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
