"""The model after a layer, as a function of the layer's tensor.

Ablation-CAM, LIFT-CAM and the channel metrics evaluate the model many times
with the layer's tensor changed and everything before the layer as it was.
:func:`layer_tail` gives them a :class:`LayerTail`: the layer's activations
for the explained examples, their target scores, and the target scores for
any replacement of the layer tensor. Where ``torch.fx`` can split the model
at the layer, the part before the layer runs once and only the part after it
is replayed (:class:`TracedTail`); elsewhere the whole model is re-run with
the layer's tensor substituted (:class:`ReplayedTail`), with a
:class:`WholeModelReplayWarning` that names the reason once per layer. Both
give the same numbers for models whose examples do not interact.
"""

import weakref
from typing import Callable, List, Optional, Set, Tuple, cast

import torch
from captum._utils.typing import TargetType
from torch import Tensor, fx
from torch.nn import Module, ModuleList

from captum_xcam._utils.graph_split import (
    ARGUMENT,
    PER_ROW,
    SHAPE,
    GraphSplit,
    Unsplittable,
    discard_split,
    split_at_layer,
)
from captum_xcam._utils.layer_grid import LayerGrid
from captum_xcam._utils.layer_hooks import captured, substituted
from captum_xcam._utils.model_state import model_of, without_data_parallel
from captum_xcam._utils.targets import TargetSelector, rows_of
from captum_xcam._utils.user_warnings import warn
from captum_xcam._utils.validation import check_layer_tensor


class WholeModelReplayWarning(UserWarning):
    r"""The part of the model after the layer cannot be run on its own, so
    every replay of the layer's tensor re-runs the whole model (slower, same
    numbers). The message names the reason and how to avoid it."""


class LayerTail:
    r"""
    The target scores of ``forward_func`` on the explained examples as a
    function of one layer's output (or input).

    With a :class:`~captum_xcam._utils.layer_grid.LayerGrid` that reshapes
    the layer's tensor (a transformer's tokens), the function is one of the
    grid: a replacement grid is put back into the layer's own layout, with
    what the transform drops (prefix tokens) as it was.

    Attributes:
        activations (Tensor): The layer's grid for the explained examples,
                    (N, K, *spatial), owned by the caller.
        target_scores (Tensor): Their target scores (N,).
        selector (TargetSelector): Picks the target scores of any rows.
        path (str): "tail only" or "whole model": what each replay runs.
    """

    activations: Tensor
    target_scores: Tensor
    selector: TargetSelector
    path: str
    _place: Optional[Callable[[Tensor, Tensor], Tensor]] = None

    def _on_grid(self, layer_tensor: Tensor, grid: Optional[LayerGrid]) -> None:
        r"""Sets ``activations`` to the grid of ``layer_tensor`` and, where the
        grid is reshaped, the placement of a grid back into the layer."""
        self.activations = layer_tensor if grid is None else grid(layer_tensor)
        if grid is not None and grid.transform is not None:
            self._place = grid.placed(layer_tensor, self.activations)

    def scores(self, layer_value: Tensor, rows: Tensor) -> Tensor:
        r"""
        Args:
            layer_value (Tensor): M replacement grids, one per row, handed
                        over: the model may change them in place.
            rows (Tensor): The explained example each replacement belongs to
                        (M,), repeats allowed.
        Returns:
            The target score of each row (M,), without autograd.
        """
        with torch.no_grad():
            if self._place is not None:
                layer_value = self._place(layer_value, rows)
            return self.selector(self._outputs(layer_value, rows), rows)

    def _outputs(self, layer_value: Tensor, rows: Tensor) -> Tensor:
        r"""The outputs for M layer tensors (in the layer's own layout)."""
        raise NotImplementedError

    def module(self) -> Module:
        r"""The tail as a module, ``forward(grid, rows=None)`` giving the
        model's output; ``rows`` defaults to ``i % N`` for row ``i``. Its
        submodules are the model's own, so that Captum's DeepLift can hook the
        nonlinearities that the tail runs."""
        raise NotImplementedError

    def _of_grid(self, module: Module) -> Module:
        r"""``module`` (a function of the layer tensor) as a function of the grid."""
        if self._place is None:
            return module
        return _GridPlaced(module, self._place, len(self.activations))


class TracedTail(LayerTail):
    r"""Runs the head of a :class:`GraphSplit` once, then only its tail."""

    path = "tail only"

    def __init__(
        self,
        split: GraphSplit,
        head_values: Tuple[Tensor, ...],
        target: TargetType,
        grid: Optional[LayerGrid] = None,
    ) -> None:
        layer_tensor = head_values[0]
        self.split = split
        self._module = _TracedTailModule(
            split.tail, split.kinds, head_values[1:], len(layer_tensor)
        )
        self._on_grid(layer_tensor, grid)
        with torch.no_grad():
            output = self._module(layer_tensor.clone())
        self.selector = TargetSelector(target, output)
        self.target_scores = self.selector(output)

    def module(self, tail: Optional[fx.GraphModule] = None) -> Module:
        r"""The tail as a module, as :meth:`LayerTail.module`; with ``tail``,
        a rewrite of ``self.split.tail`` run in its place."""
        if tail is None:
            return self._of_grid(self._module)
        m = self._module
        return self._of_grid(_TracedTailModule(tail, m.kinds, m.crossing, m.n))

    def _outputs(self, layer_value: Tensor, rows: Tensor) -> Tensor:
        return self._module.outputs(layer_value, rows)


class ReplayedTail(LayerTail):
    r"""Re-runs the whole forward function with the layer tensor substituted.

    Attributes:
        reason (str): Why the part after the layer cannot run on its own.
    """

    path = "whole model"

    def __init__(
        self,
        forward_func: Callable,
        layer: Module,
        inputs: Tuple[Tensor, ...],
        additional_forward_args: Optional[Tuple[object, ...]],
        target: TargetType,
        attribute_to_layer_input: bool,
        reason: str = "",
        grid: Optional[LayerGrid] = None,
    ) -> None:
        self.reason = reason
        layer_tensor, output = layer_activations(
            forward_func, layer, inputs, additional_forward_args, attribute_to_layer_input
        )
        self._on_grid(layer_tensor, grid)
        self.selector = TargetSelector(target, output)
        self.target_scores = self.selector(output)
        self._module = LayerSubstitutedModel(
            forward_func,
            model_of(forward_func),
            layer,
            inputs,
            additional_forward_args,
            attribute_to_layer_input,
        )

    def _outputs(self, layer_value: Tensor, rows: Tensor) -> Tensor:
        return self._module(layer_value, rows)

    def module(self) -> Module:
        return self._of_grid(self._module)


def layer_tail(
    forward_func: Callable,
    layer: Module,
    inputs: Tuple[Tensor, ...],
    additional_forward_args: Optional[Tuple[object, ...]],
    target: TargetType,
    attribute_to_layer_input: bool,
    grid: Optional[LayerGrid] = None,
) -> LayerTail:
    r"""A :class:`TracedTail` where ``torch.fx`` can split ``forward_func``
    (the model, its ``forward``, or a Python function that calls it) at the
    layer, with crossing values that have one row per example; else a
    :class:`ReplayedTail`, with a :class:`WholeModelReplayWarning` that names
    the reason, once per layer. A ``DataParallel`` model is split (or re-run)
    as the module it wraps. With ``grid``, the tail is a function of the
    layer's grid (:class:`LayerTail`)."""
    forward_func = without_data_parallel(forward_func)
    model = model_of(forward_func)
    if model is not None and not (forward_func is model or forward_func == model.forward):
        model = None  # another method of the model: traced as a function
    num_args = len(inputs) + len(additional_forward_args or ())
    split = split_at_layer(forward_func, model, layer, attribute_to_layer_input, num_args)
    if isinstance(split, GraphSplit):
        with torch.no_grad():
            head_values = split.head(*inputs, *(additional_forward_args or ()))
        where = "input" if attribute_to_layer_input else "output"
        value = head_values[0]
        values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        check_layer_tensor(values, layer, where)
        problem = _replay_problem(split, head_values, len(inputs[0]))
        if problem is None:
            return TracedTail(split, head_values, target, grid)
        split = Unsplittable(
            problem,
            "compute that value per example; a model that mixes the examples of a batch gives "
            "weights that depend on which rows share a replay unless it explains one example "
            "at a time with perturbations_per_eval=1",
        )
        discard_split(forward_func, model, layer, attribute_to_layer_input, split, num_args)
    _warn_whole_model(forward_func, layer, split)
    return ReplayedTail(
        forward_func,
        layer,
        inputs,
        additional_forward_args,
        target,
        attribute_to_layer_input,
        reason=split.reason,
        grid=grid,
    )


_WARNED: "weakref.WeakKeyDictionary[Module, Set[str]]" = weakref.WeakKeyDictionary()


def _warn_whole_model(forward_func: Callable, layer: Module, why: Unsplittable) -> None:
    r"""Says once per layer and reason that the whole model is re-run."""
    warned = _WARNED.setdefault(layer, set())
    if why.reason in warned:
        return
    warned.add(why.reason)
    model = model_of(forward_func)
    name = next((n for n, m in model.named_modules() if m is layer), None) if model else None
    where = f"'{name}'" if name else type(layer).__name__
    warn(
        f"The part of the model after the layer {where} cannot be run on its own: "
        f"{why.reason}. Every replay of the layer's tensor re-runs the whole model "
        "(Ablation-CAM and the channel metrics: one whole forward pass per chunk of "
        "perturbations_per_eval channels; LIFT-CAM: DeepLift through the whole model); "
        f"the numbers are the same, only slower. To avoid it, {why.remedy}.",
        WholeModelReplayWarning,
    )


def _replay_problem(split: GraphSplit, head_values: Tuple[object, ...], n: int) -> Optional[str]:
    r"""Why the tail could not be replayed on any rows, or None: the head must
    give tensors with one row per example for the values computed before the
    layer, and tensors for the shapes read there (a batch mean computed before
    the layer, for instance, would be wrong for a replay of some rows)."""
    for value, kind in zip(head_values[1:], split.kinds):
        if kind == ARGUMENT:
            continue
        per_row = isinstance(value, Tensor) and value.dim() > 0
        if not per_row or (kind == PER_ROW and len(cast(Tensor, value)) != n):
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            return (
                f"a value computed before the layer and used after it ({shape}) has no "
                f"row per example"
            )
    return None


def layer_activations(
    forward_func: Callable,
    layer: Module,
    inputs: Tuple[Tensor, ...],
    additional_forward_args: Optional[Tuple[object, ...]],
    attribute_to_layer_input: bool,
) -> Tuple[Tensor, Tensor]:
    r"""One forward pass without autograd: the layer tensor (a copy, immune to
    later in-place operations) and the model's output."""
    with torch.no_grad(), captured(layer, attribute_to_layer_input) as records:
        output = forward_func(*inputs, *(additional_forward_args or ()))
    return single_record(records, layer, attribute_to_layer_input), output


def single_record(
    records: List[Tuple[Tensor, ...]], layer: Module, attribute_to_layer_input: bool
) -> Tensor:
    r"""The one layer tensor recorded in a forward pass, or a ValueError that
    says why there is not exactly one."""
    if not records:
        raise ValueError(
            f"The layer {type(layer).__name__} was not called by the "
            "forward function: pass a module that the model uses."
        )
    if len(records) > 1:
        raise ValueError(
            f"The layer {type(layer).__name__} was called {len(records)} "
            "times in one forward pass; CAM methods need a layer called once."
        )
    return check_layer_tensor(records[0], layer, "input" if attribute_to_layer_input else "output")


def _cyclic_rows(layer_value: Tensor, rows: Optional[Tensor], n: int) -> Tensor:
    if rows is not None:
        return rows
    return torch.arange(len(layer_value), device=layer_value.device) % n


class _TracedTailModule(Module):
    r"""The traced tail with the crossing values of the explained examples."""

    def __init__(
        self,
        tail: fx.GraphModule,
        kinds: Tuple[str, ...],
        crossing: Tuple[object, ...],
        n: int,
    ) -> None:
        super().__init__()
        self.tail = tail
        self.kinds = kinds
        # Only the shape of a SHAPE value is kept, not its data (a stand-in
        # given again stays one).
        self.crossing = tuple(
            _shape_of(cast(Tensor, v)) if kind == SHAPE else v
            for v, kind in zip(crossing, kinds)
        )
        self.n = n

    def forward(self, layer_value: Tensor, rows: Optional[Tensor] = None) -> Tensor:
        # A clone: an in-place operation after the layer must not alter the
        # caller's tensor (nor fail on it when it requires grad).
        return self.outputs(layer_value.clone(), rows)

    def outputs(self, layer_value: Tensor, rows: Optional[Tensor] = None) -> Tensor:
        r"""The output for a ``layer_value`` that the tail may change in place."""
        rows = _cyclic_rows(layer_value, rows, self.n)
        crossing = (
            _stand_in(cast(Tensor, v), len(rows)) if kind == SHAPE else rows_of((v,), rows)[0]
            for v, kind in zip(self.crossing, self.kinds)
        )
        return self.tail(layer_value, *crossing)


def _shape_of(value: Tensor) -> Tensor:
    return torch.empty((), dtype=value.dtype, device=value.device).expand(value.shape)


def _stand_in(shape_of: Tensor, rows: int) -> Tensor:
    r"""A tensor of ``rows`` rows shaped like ``shape_of`` otherwise, without
    data: the tail reads only its shape, dtype and device."""
    return shape_of[:1].expand(rows, *shape_of.shape[1:])


class _GridPlaced(Module):
    r"""A tail module as a function of the layer's grid: the grid of rows
    ``rows`` is put into their layer tensor, then the tail runs."""

    def __init__(self, tail: Module, place: Callable[[Tensor, Tensor], Tensor], n: int) -> None:
        super().__init__()
        self.tail = tail
        self.place = place
        self.n = n

    def forward(self, grid: Tensor, rows: Optional[Tensor] = None) -> Tensor:
        rows = _cyclic_rows(grid, rows, self.n)
        return self.tail(self.place(grid, rows), rows)


class LayerSubstitutedModel(Module):
    r"""The model as a function of the layer's output (or input):
    ``forward(a, rows)`` runs ``forward_func`` on the explained examples
    ``rows`` with ``a`` in place of the layer tensor. The wrapped model is a
    child, so that DeepLift finds its nonlinear modules."""

    # Set through ``__dict__`` in ``__init__``, not as submodules (see there).
    forward_func: Callable
    layer: Module

    def __init__(
        self,
        forward_func: Callable,
        model: Optional[Module],
        layer: Module,
        inputs: Tuple[Tensor, ...],
        additional_forward_args: Optional[Tuple[object, ...]],
        attribute_to_layer_input: bool,
    ) -> None:
        super().__init__()
        self.wrapped = ModuleList([model if model is not None else layer])
        # Plain attributes, not submodules: DeepLift hooks every module it
        # reaches through the module tree, and a nonlinearity reached twice
        # (through ``wrapped`` and through a ``forward_func`` that is the model)
        # would get two sets of hooks and fail in the backward pass.
        self.__dict__["forward_func"] = forward_func
        self.__dict__["layer"] = layer
        self.inputs = inputs
        self.additional_forward_args = additional_forward_args
        self.attribute_to_layer_input = attribute_to_layer_input

    def forward(self, layer_value: Tensor, rows: Optional[Tensor] = None) -> Tensor:
        rows = _cyclic_rows(layer_value, rows, len(self.inputs[0]))
        inputs = rows_of(self.inputs, rows)
        args = rows_of(self.additional_forward_args, rows) or ()
        with substituted(self.layer, layer_value, self.attribute_to_layer_input):
            return self.forward_func(*inputs, *args)
