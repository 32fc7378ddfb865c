r"""Trains the models shipped in ``captum_xcam/models``: the SmallCNN
(``small_cnn_synthetic.pt``) and the SmallVGG (``small_vgg_scenes.pt``).

Deterministic on the CPU: fixed seeds, ``torch.use_deterministic_algorithms``,
one thread, the data generated from seeds, and no data-loader workers, so
that a rerun with the same torch version gives the same weights bit for bit.

    python benchmarks/train_small_cnn.py                      # retrain the SmallCNN, write it
    python benchmarks/train_small_cnn.py --check              # retrain, compare with the shipped
    python benchmarks/train_small_cnn.py --model small_vgg    # the same for the SmallVGG

SmallCNN (8 epochs): trained on ``make_synthetic(6000, seed=0)`` with hard
labels, tested on ``make_synthetic(1000, seed=1)``. SmallVGG (10 epochs,
about 9 minutes on one loaded core): trained on ``make_scenes(12000, seed=0)``
with cross entropy against the soft labels ``label_distribution()`` (1/2 on
each class of a two-object scene, so that the softmax is the model's estimate
of each class's share), tested on ``make_scenes(1200, seed=1)``: top-1
accuracy of single-object scenes per scale, and for two-object scenes whether
the two highest scores are exactly the two classes present (``RECIPES`` holds
the numbers). The tests draw yet other seeds.
"""
import argparse
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from captum_xcam.data import SCALE_NAMES, SceneSet, make_scenes, make_synthetic
from captum_xcam.models import small_cnn, small_vgg

SEED = 0


@dataclass(frozen=True)
class Recipe:
    r"""What differs between the shipped models: the model, its data (images
    and the targets of the cross entropy, class indices or distributions), a
    test report, the schedule and where the weights go."""

    build: Callable[[], torch.nn.Module]
    data: Callable[[int, int], Tuple[Tensor, Tensor, object]]
    report: Callable[[torch.nn.Module, object], str]
    weights_file: Path
    n_train: int
    n_test: int
    epochs: int
    batch_size: int
    learning_rate: float


def predict(model: torch.nn.Module, images: Tensor) -> Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x) for x in images.split(500)])


def synthetic_data(n: int, seed: int) -> Tuple[Tensor, Tensor, object]:
    data = make_synthetic(n, seed=seed)
    return data.images, data.labels, data


def synthetic_report(model: torch.nn.Module, data: object) -> str:
    accuracy = (predict(model, data.images).argmax(1) == data.labels).float().mean()
    return f"test accuracy {accuracy.item():.4f}"


def scene_data(n: int, seed: int) -> Tuple[Tensor, Tensor, object]:
    data = make_scenes(n, seed=seed)
    return data.images, data.label_distribution(), data


def scene_accuracies(model: torch.nn.Module, data: SceneSet) -> Dict[str, float]:
    r"""Top-1 accuracy of the single-object scenes per scale, and the share of
    two-object scenes whose two highest scores are the two classes present."""
    scores = predict(model, data.images)
    single = ~data.two_objects
    correct = scores.argmax(1) == data.labels[:, 0]
    result = {
        name: correct[single & (data.scales[:, 0] == k)].float().mean().item()
        for k, name in enumerate(SCALE_NAMES)
    }
    top2 = scores[~single].topk(2, dim=1).indices.sort(1).values
    both = (top2 == data.labels[~single].sort(1).values).all(1)
    result["two objects"] = both.float().mean().item()
    return result


def scene_report(model: torch.nn.Module, data: object) -> str:
    accuracies = scene_accuracies(model, data)
    return "test " + ", ".join(f"{name} {value:.4f}" for name, value in accuracies.items())


RECIPES = {
    "small_cnn": Recipe(
        build=small_cnn.SmallCNN, data=synthetic_data, report=synthetic_report,
        weights_file=small_cnn.WEIGHTS_FILE, n_train=6000, n_test=1000, epochs=8,
        batch_size=64, learning_rate=3e-3,
    ),
    "small_vgg": Recipe(
        build=small_vgg.SmallVGG, data=scene_data, report=scene_report,
        weights_file=small_vgg.WEIGHTS_FILE, n_train=12000, n_test=1200, epochs=10,
        batch_size=64, learning_rate=3e-3,
    ),
}


def train(recipe: Recipe, verbose: bool = True) -> Dict[str, Tensor]:
    r"""Adam with a one-cycle schedule on ``recipe``'s data; the state dict."""
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    start = time.perf_counter()
    images, targets, _ = recipe.data(recipe.n_train, 0)
    test_set = recipe.data(recipe.n_test, 1)[2]
    if verbose:
        print(f"data: {time.perf_counter() - start:.1f} s")
    model = recipe.build()
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
    batches = recipe.n_train // recipe.batch_size
    steps = recipe.epochs * batches
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, recipe.learning_rate, total_steps=steps
    )
    order_generator = torch.Generator().manual_seed(SEED)
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(recipe.n_train, generator=order_generator)
        for batch in order[: batches * recipe.batch_size].split(recipe.batch_size):
            loss = F.cross_entropy(model(images[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if verbose:
            print(
                f"epoch {epoch + 1}: loss {loss.item():.4f}, {recipe.report(model, test_set)} "
                f"({time.perf_counter() - start:.0f} s)"
            )
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fingerprint(state: Dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(RECIPES), default="small_cnn",
                        help="which shipped model to train (default: small_cnn)")
    parser.add_argument("--check", action="store_true", help="compare with the shipped weights")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (default: the model's shipped file)")
    args = parser.parse_args()
    recipe = RECIPES[args.model]
    state = train(recipe)
    print(f"fingerprint: {fingerprint(state)}")
    if args.check:
        shipped = torch.load(recipe.weights_file, map_location="cpu", weights_only=True)
        same = shipped.keys() == state.keys() and all(
            torch.equal(shipped[k], state[k]) for k in state
        )
        print(f"shipped:     {fingerprint(shipped)}")
        print("identical to the shipped weights" if same else "DIFFERENT from the shipped weights")
        raise SystemExit(0 if same else 1)
    out = args.out or recipe.weights_file
    torch.save(state, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
