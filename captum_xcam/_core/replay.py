"""Replaying the model on perturbed copies of the explained examples.

The perturbation methods (Ablation-CAM, Score-CAM) score one perturbation
per (example, channel) pair. :func:`replay_channels` walks those pairs in
chunks of ``perturbations_per_eval``, which may span examples, and
:class:`LayerReplay` evaluates one chunk: the chosen examples, optionally with
replaced inputs or a replaced layer tensor, scored on their own targets."""
from typing import Callable, Optional, Tuple

import torch
from captum._utils.progress import progress
from captum._utils.typing import TargetType
from torch import Tensor
from torch.nn import Module

from captum_xcam._utils.layer_hooks import substituted
from captum_xcam._utils.targets import rows_of, scoring, target_rows


class LayerReplay:
    r"""Target scores of ``forward_func`` on rows of a batch, without autograd."""

    def __init__(
        self,
        forward_func: Callable,
        layer: Module,
        inputs: Tuple[Tensor, ...],
        additional_forward_args: Optional[Tuple[object, ...]],
        target: TargetType,
        attribute_to_layer_input: bool,
    ) -> None:
        self.forward_func = forward_func
        self.layer = layer
        self.inputs = inputs
        self.additional_forward_args = additional_forward_args
        self.target = target
        self.attribute_to_layer_input = attribute_to_layer_input

    def scores(
        self,
        rows: Tensor,
        inputs: Optional[Tuple[Tensor, ...]] = None,
        layer_value: Optional[Tensor] = None,
    ) -> Tensor:
        r"""
        Args:
            rows (Tensor): For each replayed example, the index of the explained
                        example it copies (repeats allowed), shape (M,).
            inputs (tuple[Tensor, ...], optional): Replacement inputs, M rows;
                        default: the explained inputs at ``rows``.
            layer_value (Tensor, optional): A tensor of M rows to use in place
                        of the layer's output (or input).
        Returns:
            The target score of every replayed example, shape (M,).
        """
        if inputs is None:
            inputs = tuple(x[rows.to(x.device)] for x in self.inputs)
        args = rows_of(self.additional_forward_args, rows) or ()
        score = scoring(self.forward_func, target_rows(self.target, rows))
        with torch.no_grad(), substituted(
            self.layer, layer_value, self.attribute_to_layer_input
        ):
            return score(*inputs, *args)


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
    chunks = pairs.split(perturbations_per_eval)
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
