"""Forward hooks that read or replace what a layer sees or returns.

Every hook is removed when its ``with`` block ends, also after an error."""

from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Module


def _as_tuple(value: object) -> Tuple[Any, ...]:
    # Any, not Tensor: a layer may see or return other values (callers check).
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


@contextmanager
def captured(layer: Module, attribute_to_layer_input: bool) -> Iterator[List[Tuple[Tensor, ...]]]:
    r"""Records clones of the layer's output (or input) on each call. The
    clones are immune to later in-place operations such as torchvision's
    ``ReLU(inplace=True)``."""
    records: List[Tuple[Tensor, ...]] = []

    def record(values: object) -> None:
        records.append(tuple(v.detach().clone() for v in _as_tuple(values)))

    if attribute_to_layer_input:
        handle = layer.register_forward_pre_hook(lambda m, inp: record(inp))
    else:
        handle = layer.register_forward_hook(lambda m, inp, out: record(out))
    try:
        yield records
    finally:
        handle.remove()


@contextmanager
def substituted(
    layer: Module, value: Optional[Tensor], attribute_to_layer_input: bool
) -> Iterator[None]:
    r"""Runs the model with ``value`` in place of the layer's output (or its
    single input). ``None`` substitutes nothing."""
    if value is None:
        yield
        return

    def checked(original: Tensor) -> Tensor:
        if original.shape[1:] != value.shape[1:] or original.shape[0] != value.shape[0]:
            raise ValueError(
                f"Cannot substitute a tensor of shape {tuple(value.shape)} for the "
                f"{type(layer).__name__} tensor of shape {tuple(original.shape)}."
            )
        # A clone, so that an in-place operation after the layer cannot alter
        # ``value`` (or fail on it when it is a leaf that requires grad).
        return value.clone()

    if attribute_to_layer_input:
        handle = layer.register_forward_pre_hook(
            lambda m, inp: (checked(_as_tuple(inp)[0]),) + _as_tuple(inp)[1:],
            prepend=True,
        )
    else:
        handle = layer.register_forward_hook(lambda m, inp, out: checked(out), prepend=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def differentiable_from(
    layer: Module, attribute_to_layer_input: bool
) -> Iterator[List[Tuple[Tensor, ...]]]:
    r"""For a forward pass run under ``torch.no_grad()`` inside this block:
    records the layer's output (or input) on each call, as in
    :func:`captured`. A single tensor is recorded as a leaf that requires
    grad, and autograd is switched on from there, so that only the part of the
    model after the layer builds a graph. The model goes on with a copy of
    the leaf, which in-place operations may change."""
    records: List[Tuple[Tensor, ...]] = []

    def record(values: object) -> Optional[Tuple[Tensor, ...]]:
        values = _as_tuple(values)
        if len(values) != 1 or not isinstance(values[0], Tensor):
            records.append(tuple(v.detach() if isinstance(v, Tensor) else v for v in values))
            return None
        leaf = values[0].detach().clone().requires_grad_()
        records.append((leaf,))
        torch.set_grad_enabled(True)  # undone when the caller's no_grad block ends
        return (leaf.clone(),)

    def on_output(module: Module, inputs: object, output: object) -> Optional[Tensor]:
        replaced = record(output)
        return None if replaced is None else replaced[0]

    if attribute_to_layer_input:
        handle = layer.register_forward_pre_hook(lambda m, inp: record(inp))
    else:
        handle = layer.register_forward_hook(on_output)
    try:
        yield records
    finally:
        handle.remove()
