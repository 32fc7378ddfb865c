"""Captum's argument forms, normalised."""
from typing import Optional, Tuple, Union

from torch import Tensor


def as_tuple(inputs: Union[Tensor, Tuple[Tensor, ...]]) -> Tuple[Tensor, ...]:
    r"""One tensor or a tuple of tensors, as a tuple."""
    return inputs if isinstance(inputs, tuple) else (inputs,)


def as_forward_args(additional_forward_args: Optional[object]) -> Optional[Tuple[object, ...]]:
    r"""Captum's ``additional_forward_args`` as a tuple (a single value is
    one argument); None stays None."""
    if additional_forward_args is None or isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)
