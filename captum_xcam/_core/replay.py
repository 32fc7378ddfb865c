"""Replaying the model on perturbed copies of the explained examples.

The perturbation methods score one perturbation per (example, channel) pair:
Ablation-CAM a layer tensor with the channel zeroed, replayed through the
model after the layer (:mod:`captum_xcam._core.layer_tail`), Score-CAM an
input masked by the channel, replayed through the whole model.
:func:`replay_channels` walks those pairs in chunks of
``perturbations_per_eval``, which may span examples, and gathers the scores
on the device without host synchronisation."""
from typing import Callable, Optional

import torch
from captum._utils.progress import progress
from torch import Tensor


def replay_channels(
    num_examples: int,
    num_channels: int,
    evaluate: Callable[[Tensor, Tensor], Tensor],
    perturbations_per_eval: int,
    device: torch.device,
    show_progress: bool = False,
    desc: str = "channels",
    skip: Optional[Tensor] = None,
) -> Tensor:
    r"""Calls ``evaluate(examples, channels)`` on chunks of at most
    ``perturbations_per_eval`` (example, channel) pairs, example by example
    and channel by channel, and gathers the returned values into an
    (N, K) tensor. Pairs where ``skip`` (N, K) is True are not evaluated and
    get 0."""
    if not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
        raise ValueError(
            f"perturbations_per_eval must be a positive int, got {perturbations_per_eval!r}."
        )
    pairs = torch.arange(num_examples * num_channels, device=device)
    if skip is not None:
        pairs = pairs[~skip.reshape(-1).to(device)]
    values: Optional[Tensor] = None
    # An empty tensor still splits into one (empty) chunk: evaluate none.
    chunks = pairs.split(perturbations_per_eval) if len(pairs) else ()
    bar = progress(total=len(pairs), desc=desc, disable=not show_progress)
    try:
        for chunk in chunks:
            scores = evaluate(chunk // num_channels, chunk % num_channels)
            if values is None:
                values = scores.new_zeros(num_examples * num_channels)
            values[chunk.to(values.device)] = scores
            bar.update(len(chunk))
    finally:
        bar.close()
    if values is None:
        return torch.zeros(num_examples, num_channels, device=device)
    return values.reshape(num_examples, num_channels)
