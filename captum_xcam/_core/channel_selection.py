"""Evaluating only the channels that matter: a cheap ranking before the replays."""
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

#: The criteria :class:`TopChannels` ranks the channels by.
CRITERIA = ("gradient", "activation")


@dataclass(frozen=True)
class TopChannels:
    r"""
    Lets a perturbation CAM (Ablation-CAM, Score-CAM, SS-CAM, IS-CAM) replay
    only the top ``fraction`` of each example's channels, ranked by a cheap
    criterion; every other channel gets weight 0, as a channel whose replay
    changed nothing would (for Score-CAM with ``channel_softmax=True``: the
    softmax is taken over the evaluated channels only). The cost falls with
    ``fraction``; the map is exact on the evaluated channels and leaves the
    others out: benchmarks/results/channel_selection.md measures what that
    costs in rank correlation with the full map and in faithfulness.

    The criteria, for activations ``A_k`` and gradients
    ``G_k = dy/dA_k`` of the target output at the layer:

    - ``"gradient"`` (default): :math:`|\sum_{ij} G_k A_k|`, the first-order
      estimate of how much the target changes when channel ``k`` is removed
      (Ablation-CAM's numerator, linearised), from one backward pass;
    - ``"activation"``: :math:`\sum_{ij} A_k^2`, the channel's energy, from
      the forward pass alone (target-free).

    pytorch-grad-cam's ``ratio_channels_to_ablate`` is the fraction of
    Ablation-CAM's channels kept by activation; this is that option for every
    perturbation CAM, with the gradient criterion besides.

    Args:
        fraction (float): The share of channels evaluated, in (0, 1]; at
                    least one channel per example is. 1 evaluates them all.
        by (str, optional): ``"gradient"`` or ``"activation"``.
                    Default: ``"gradient"``
    """

    fraction: float
    by: str = "gradient"

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not 0 < self.fraction <= 1:
            raise ValueError(f"TopChannels fraction must be in (0, 1], got {self.fraction!r}.")
        if self.by not in CRITERIA:
            raise ValueError(f"TopChannels ranks channels by one of {CRITERIA}, got {self.by!r}.")

    def count(self, channels: int) -> int:
        r"""How many of ``channels`` are evaluated."""
        return max(1, math.ceil(self.fraction * channels - 1e-9))

    def unselected(self, criterion: Tensor) -> Tensor:
        r"""For a criterion (N, K), True where a channel is not among its
        example's top :meth:`count` (ties broken by the lower index)."""
        keep = self.count(criterion.shape[1])
        order = torch.sort(criterion, dim=1, descending=True, stable=True).indices[:, :keep]
        unselected = torch.ones_like(criterion, dtype=torch.bool)
        return unselected.scatter(1, order, False)


def channel_criterion(by: str, activations: Tensor, gradients: Optional[Tensor] = None) -> Tensor:
    r"""The criterion (N, K) of :class:`TopChannels` for activations and
    gradients (N, K, *spatial); ``gradients`` only for ``"gradient"``."""
    if by == "activation":
        return activations.flatten(2).pow(2).sum(2)
    if gradients is None:
        raise ValueError("The gradient criterion needs the gradients.")
    return (gradients * activations).flatten(2).sum(2).abs()
