"""Independent computations of each paper's formula, written from the
formulas with plain hooks and loops, sharing no code with the library."""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def scores_of(output: Tensor, targets: Sequence[int]) -> Tensor:
    return torch.stack([output[i, t] for i, t in enumerate(targets)])


def activations_and_gradients(
    model: nn.Module, layer: nn.Module, x: Tensor, targets: Sequence[int]
) -> Tuple[Tensor, Tensor]:
    r"""A and dy/dA from a forward hook and autograd, one example at a time."""
    acts: List[Tensor] = []
    grads: List[Tensor] = []
    for i, t in enumerate(targets):
        store = {}

        def hook(module, inp, out):
            store["a"] = out
            return out * 1.0  # keeps the stored tensor safe from in-place ops

        handle = layer.register_forward_hook(hook)
        try:
            y = model(x[i : i + 1])[0, t]
        finally:
            handle.remove()
        (g,) = torch.autograd.grad(y, store["a"])
        acts.append(store["a"].detach()[0])
        grads.append(g[0])
    return torch.stack(acts), torch.stack(grads)


def activations_of(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    r"""The layer's output A from a forward hook."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.update(a=o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store["a"]


def summed_over_channels(A: Tensor, G: Tensor, term) -> Tensor:
    r"""``sum_k term(G_k, A_k)`` per example and position, by a plain loop:
    the map (N, 1, *spatial) of a method with weights per position."""
    cam = torch.zeros(A.shape[0], 1, *A.shape[2:], dtype=A.dtype)
    for n in range(A.shape[0]):
        for k in range(A.shape[1]):
            cam[n, 0] += term(G[n, k], A[n, k])
    return cam


def xgrad_weights(A: Tensor, G: Tensor) -> Tensor:
    w = torch.zeros(A.shape[:2], dtype=A.dtype)
    for n in range(A.shape[0]):
        for k in range(A.shape[1]):
            total = A[n, k].sum()
            if total != 0:
                w[n, k] = (A[n, k] * G[n, k]).sum() / total
    return w


def gradcampp_weights(A: Tensor, G: Tensor) -> Tensor:
    w = torch.zeros(A.shape[:2], dtype=A.dtype)
    for n in range(A.shape[0]):
        for k in range(A.shape[1]):
            total = A[n, k].sum()
            for g in G[n, k].flatten().tolist():
                denominator = 2 * g**2 + total * g**3
                alpha = g**2 / denominator if denominator != 0 else 0.0
                w[n, k] += alpha * max(g, 0.0)
    return w


def output_with_layer(model: nn.Module, layer: nn.Module, x: Tensor, value: Tensor) -> Tensor:
    r"""The model's output with ``value`` in place of the layer's output."""
    handle = layer.register_forward_hook(lambda m, i, o: value.clone())
    try:
        with torch.no_grad():
            return model(x)
    finally:
        handle.remove()


def ablated_score(model, layer, x: Tensor, n: int, k: int, target: int) -> float:
    r"""The target score of example n with channel k of the layer output set to 0."""

    def hook(module, inp, out):
        out = out.clone()
        out[:, k] = 0
        return out

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return float(model(x[n : n + 1])[0, target])
    finally:
        handle.remove()


def score_cam_mask(A: Tensor, x: Tensor, n: int, k: int) -> Tensor:
    r"""Score-CAM's mask H_k of example n, built by hand: the map upsampled
    to the image and min-max normalised (zeros for a constant map)."""
    up = F.interpolate(
        A[n, k][None, None], size=x.shape[2:], mode="bilinear", align_corners=False
    )[0, 0]
    lo, hi = up.min(), up.max()
    return (up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)


def masked_increase(model, x: Tensor, baseline: Tensor, n: int, mask: Tensor, target: int) -> float:
    r"""f(X_b + (X - X_b) * mask) - f(X_b) for example n."""
    masked = baseline[n] + (x[n] - baseline[n]) * mask
    with torch.no_grad():
        return float(model(masked[None])[0, target] - model(baseline[n][None])[0, target])


def score_cam_weight(
    model, A: Tensor, x: Tensor, baseline: Tensor, n: int, k: int, target: int
) -> float:
    r"""Score-CAM Eq. 8 for one example and channel, mask built by hand."""
    return masked_increase(model, x, baseline, n, score_cam_mask(A, x, n, k), target)


def implied_weights(per_channel_map: Tensor, A: Tensor) -> Tensor:
    r"""w_k recovered from a method's per-channel map w_k * A_k (0 where A_k is all zero)."""
    num = (per_channel_map * A).flatten(2).sum(2)
    den = (A * A).flatten(2).sum(2)
    return torch.where(den > 0, num / torch.where(den > 0, den, 1), torch.zeros_like(num))


def sampled_channels(A: Tensor, n: int, seed: int, count: int = 4) -> List[int]:
    r"""``count`` random live (not all-zero) channels of example n."""
    g = torch.Generator().manual_seed(seed)
    live = (A[n].flatten(1).abs().sum(1) > 0).nonzero().flatten()
    return live[torch.randperm(len(live), generator=g)[:count]].tolist()
