"""Target selection with Captum's rules, checked first."""
from typing import Callable, Optional

from captum._utils.common import _select_targets
from captum._utils.typing import TargetType
from torch import Tensor

from captum_xcam._utils.validation import check_target


def select_target_scores(output: Tensor, target: TargetType) -> Tensor:
    r"""One score per example, shape (N,), chosen from ``output`` by ``target``
    exactly as Captum's attribution methods choose it."""
    check_target(output, target)
    return _select_targets(output, target).reshape(output.shape[0])


def target_rows(target: TargetType, rows: Tensor) -> TargetType:
    r"""The target for a batch made of the examples ``rows`` (repeats allowed)."""
    if isinstance(target, list):
        return [target[i] for i in rows.tolist()]
    if isinstance(target, Tensor) and target.numel() > 1:
        return target[rows.to(target.device)]
    return target


def scoring(forward_func: Callable, target: TargetType) -> Callable[..., Tensor]:
    r"""``forward_func`` followed by the checked target selection."""

    def score(*args: object) -> Tensor:
        return select_target_scores(forward_func(*args), target)

    return score


def rows_of(args: Optional[tuple], rows: Tensor) -> Optional[tuple]:
    r"""Additional forward arguments for the examples ``rows``: every tensor with
    a batch dimension is indexed, as Captum expands them; others pass as they are."""
    if args is None:
        return None
    return tuple(
        a[rows.to(a.device)] if isinstance(a, Tensor) and a.dim() > 0 else a
        for a in args
    )

