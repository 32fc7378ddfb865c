"""Target selection with Captum's rules, checked first."""

from typing import Callable, Optional, overload

import torch
from captum._utils.typing import TargetType
from torch import Tensor

from captum_xcam._utils.validation import target_indices


class TargetSelector:
    r"""
    Picks one score per example from model outputs, as Captum's ``target``
    rules pick it. The target is checked once, against the output of the
    explained examples, and turned into a flat index per example on the
    output's device; later selections for any rows of replayed examples are
    a ``gather``, with no host synchronisation.
    """

    def __init__(self, target: TargetType, output: Tensor) -> None:
        r"""
        Args:
            target (int, tuple, Tensor, list or None): The target, in any
                        form Captum accepts.
            output (Tensor): The output of the explained examples (N, ...).
        """
        shape = output.shape[1:]
        strides = [1] * len(shape)
        for dim in range(len(shape) - 2, -1, -1):
            strides[dim] = strides[dim + 1] * shape[dim + 1]
        flat = [
            sum(i * s for i, s in zip(index, strides)) for index in target_indices(output, target)
        ]
        self.index = torch.tensor(flat, dtype=torch.long, device=output.device)

    @classmethod
    def for_examples(cls, target: TargetType, output: Tensor, n: int) -> "TargetSelector":
        r"""A selector for ``n`` explained examples, made from the output of
        any replayed rows of them (the target is checked against ``n``
        examples with that output's per-example shape)."""
        return cls(target, output[:1].expand(n, *output.shape[1:]))

    def __call__(self, output: Tensor, rows: Optional[Tensor] = None) -> Tensor:
        r"""
        Args:
            output (Tensor): Outputs of M replayed examples (M, ...).
            rows (Tensor, optional): The explained example that each replayed
                        example copies, shape (M,). Default: all, in order.
        Returns:
            The target score of each example, shape (M,).
        """
        index = self.index if rows is None else self.index[rows.to(self.index.device)]
        return output.reshape(output.shape[0], -1).gather(1, index.unsqueeze(1)).squeeze(1)


def select_target_scores(output: Tensor, target: TargetType) -> Tensor:
    r"""One score per example, shape (N,), chosen from ``output`` by ``target``
    exactly as Captum's attribution methods choose it."""
    return TargetSelector(target, output)(output)


def scoring(forward_func: Callable, target: TargetType) -> Callable[..., Tensor]:
    r"""``forward_func`` followed by the checked target selection."""

    def score(*args: object) -> Tensor:
        return select_target_scores(forward_func(*args), target)

    return score


@overload
def rows_of(args: tuple, rows: Tensor) -> tuple: ...


@overload
def rows_of(args: Optional[tuple], rows: Tensor) -> Optional[tuple]: ...


def rows_of(args: Optional[tuple], rows: Tensor) -> Optional[tuple]:
    r"""Additional forward arguments for the examples ``rows``: every tensor with
    a batch dimension is indexed, as Captum expands them; others pass as they are."""
    if args is None:
        return None
    return tuple(a[rows.to(a.device)] if isinstance(a, Tensor) and a.dim() > 0 else a for a in args)
