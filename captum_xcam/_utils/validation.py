"""Checks that turn bad input into errors that name the problem."""
from typing import Callable, List, Tuple

import torch
from captum._utils.typing import TargetType
from torch import Tensor
from torch.nn import Module

from captum_xcam._utils.model_state import model_of


def check_positive_int(value: object, name: str) -> int:
    r"""``value`` if it is a positive int (not a bool), else a ValueError
    that names the argument."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


def check_layer(forward_func: Callable, layer: Module) -> None:
    if not isinstance(layer, Module):
        raise TypeError(f"layer must be a torch.nn.Module, got {type(layer).__name__}")
    model = model_of(forward_func)
    if model is not None and not any(m is layer for m in model.modules()):
        raise ValueError(
            f"The layer {type(layer).__name__} is not a submodule of the model "
            f"{type(model).__name__}; pass a module of the model, for example "
            "model.layer4 of a ResNet."
        )


def check_inputs(inputs: Tuple[Tensor, ...]) -> None:
    if len(inputs) == 0:
        raise ValueError("inputs is empty: pass a tensor or a tuple of tensors.")
    for i, inp in enumerate(inputs):
        if not isinstance(inp, Tensor):
            raise TypeError(f"inputs[{i}] must be a tensor, got {type(inp).__name__}")
        if inp.dim() == 0 or inp.shape[0] == 0:
            raise ValueError(
                f"inputs[{i}] has shape {tuple(inp.shape)}: the batch is empty."
            )
        if inp.shape[0] != inputs[0].shape[0]:
            raise ValueError(
                "All input tensors must have the same batch size, got "
                f"{[tuple(x.shape) for x in inputs]}."
            )
        if inp.is_floating_point() and not bool(torch.isfinite(inp).all()):
            raise ValueError(f"inputs[{i}] contains NaN or infinite values.")


def check_layer_tensor(values: Tuple[Tensor, ...], layer: Module, where: str) -> Tensor:
    r"""The single tensor of a layer's output (or input), with channels in
    dimension 1 and at least one spatial dimension after them."""
    if len(values) != 1:
        raise ValueError(
            f"The {where} of {type(layer).__name__} has {len(values)} tensors; "
            "CAM methods need a layer with exactly one."
        )
    value = values[0]
    if value.dim() < 3:
        raise ValueError(
            f"The {where} of {type(layer).__name__} has shape {tuple(value.shape)}, "
            "with no spatial dimensions: CAM methods need a (N, K, H, W)-like "
            "activation, for example the last convolutional block."
        )
    return value


def _index_rows(target: TargetType, n: int) -> List[Tuple[int, ...]]:
    if isinstance(target, Tensor):
        if target.numel() == 1:
            return [(int(target.item()),)] * n
        if target.dim() == 1 and target.numel() == n:
            return [(int(t),) for t in target.tolist()]
        raise ValueError(
            f"A tensor target must hold one index or one per example ({n}), "
            f"got shape {tuple(target.shape)}."
        )
    if isinstance(target, int):
        return [(target,)] * n
    if isinstance(target, tuple):
        return [target] * n
    if isinstance(target, list):
        if len(target) != n:
            raise ValueError(
                f"The target list has {len(target)} entries for {n} examples."
            )
        return [t if isinstance(t, tuple) else (t,) for t in target]
    raise TypeError(
        "target must be an int, a tuple, a list or a tensor, got "
        f"{type(target).__name__}."
    )


def target_indices(output: Tensor, target: TargetType) -> List[Tuple[int, ...]]:
    r"""The full index of each example's target in ``output[n]`` (one int per
    dimension after the batch), or a ValueError unless ``target`` picks one
    valid output per example."""
    n = output.shape[0]
    if target is None:
        if output.numel() != n:
            raise ValueError(
                f"The model output has shape {tuple(output.shape)}: pass a target "
                "to choose one output per example."
            )
        return [(0,) * (output.dim() - 1)] * n
    rows = _index_rows(target, n)
    for row, index in enumerate(rows):
        if len(index) != output.dim() - 1:
            raise ValueError(
                f"Target {index} for example {row} has {len(index)} indices, but "
                f"the model output {tuple(output.shape)} needs {output.dim() - 1}."
            )
        for dim, i in enumerate(index):
            size = output.shape[dim + 1]
            if not isinstance(i, int) or not 0 <= i < size:
                raise ValueError(
                    f"Target {i} for example {row} is out of range: the model "
                    f"output has {size} entries in dimension {dim + 1}."
                )
    return rows
