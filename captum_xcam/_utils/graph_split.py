"""Splitting a model's traced graph at a layer, so that the part after the
layer can be run on its own.

A model ``f`` traced with ``torch.fx`` is cut into a *head*, from the inputs
to the layer's tensor, and a *tail*, from that tensor to the output. Values
that the head computes from the inputs and the tail still needs (a skip
connection across the layer, an additional forward argument) become extra
arguments of the tail: the *crossing values*. Values that do not depend on
the inputs (parameters, constants) are recomputed in the tail. Then

    ``f(x) == tail(layer_tensor, *crossing)`` where
    ``(layer_tensor, *crossing) == head(x)``

with the same operations on the same modules, so the results are identical.
Models that ``torch.fx`` cannot trace get no split (``None``), and callers
fall back to running the whole model.
"""

import weakref
from typing import Dict, Hashable, List, NamedTuple, Optional, Set, Tuple

from torch import fx
from torch.nn import Module

_CACHE: "weakref.WeakKeyDictionary[Module, Dict[Hashable, object]]" = weakref.WeakKeyDictionary()


class GraphSplit(NamedTuple):
    r"""A model cut at a layer: ``head(*inputs, *args)`` returns the layer
    tensor and the crossing values, ``tail(layer_tensor, *crossing)`` the
    model's output. ``is_argument[i]`` tells whether crossing value ``i`` is
    one of the model's own arguments (an input or an additional forward
    argument) rather than a value computed from them."""

    head: fx.GraphModule
    tail: fx.GraphModule
    is_argument: Tuple[bool, ...]


class _LayerTracer(fx.Tracer):
    r"""Traces through every module except ``layer``, torch.nn's own modules
    and modules with hooks (which must still run as modules)."""

    def __init__(self, layer: Module) -> None:
        super().__init__()
        self.layer = layer

    def is_leaf_module(self, m: Module, module_qualified_name: str) -> bool:
        return m is self.layer or _has_hooks(m) or super().is_leaf_module(m, module_qualified_name)


def split_at_layer(
    model: Module, layer: Module, attribute_to_layer_input: bool
) -> Optional[GraphSplit]:
    r"""
    The split of ``model`` at ``layer``'s output (or input), or None when
    the model cannot be split: ``torch.fx`` cannot trace it, the layer is not
    called exactly once in the graph, or hooks on the model itself would be
    skipped. Splits are cached per model for as long as its modules, their
    train/eval modes and their hooks stay the same.
    """
    key = (id(layer), attribute_to_layer_input)
    signature = _signature(model)
    cached = _CACHE.setdefault(model, {}).get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    split = _split(model, layer, attribute_to_layer_input)
    _CACHE[model][key] = (signature, split)
    return split


def discard_split(model: Module, layer: Module, attribute_to_layer_input: bool) -> None:
    r"""Remembers that the split of ``model`` at ``layer`` is of no use (its
    crossing values turned out not to be per-example tensors), for as long as
    the model stays the same."""
    _CACHE.setdefault(model, {})[(id(layer), attribute_to_layer_input)] = (
        _signature(model),
        None,
    )


def _split(model: Module, layer: Module, attribute_to_layer_input: bool) -> Optional[GraphSplit]:
    if _has_hooks(model) or _has_global_hooks():
        return None
    try:
        graph = _LayerTracer(layer).trace(model)
    except Exception:  # untraceable Python: data-dependent control flow and the like
        return None
    calls = [
        n for n in graph.nodes if n.op == "call_module" and model.get_submodule(n.target) is layer
    ]
    if len(calls) != 1:
        return None
    layer_node = calls[0]
    if attribute_to_layer_input and not (
        layer_node.args and isinstance(layer_node.args[0], fx.Node)
    ):
        return None
    nodes = list(graph.nodes)
    cut = nodes.index(layer_node) + (0 if attribute_to_layer_input else 1)
    head_nodes, tail_nodes = nodes[:cut], nodes[cut:]
    boundary = layer_node.args[0] if attribute_to_layer_input else layer_node
    crossing = _crossing_values(head_nodes, tail_nodes, layer_node, _depends_on_inputs(nodes))
    try:
        tail_graph = _tail_graph(tail_nodes, layer_node, boundary, crossing)
    except _NeedsHead:
        return None
    return GraphSplit(
        fx.GraphModule(model, _head_graph(head_nodes, boundary, crossing)),
        fx.GraphModule(model, tail_graph),
        tuple(n.op == "placeholder" for n in crossing),
    )


class _NeedsHead(Exception):
    r"""The tail would have to recompute an input-dependent value."""


def _head_graph(head_nodes: List[fx.Node], boundary: fx.Node, crossing: List[fx.Node]) -> fx.Graph:
    graph = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {}
    for node in head_nodes:
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output((env[boundary], *(env[n] for n in crossing)))
    return graph


def _tail_graph(
    tail_nodes: List[fx.Node],
    layer_node: fx.Node,
    boundary: fx.Node,
    crossing: List[fx.Node],
) -> fx.Graph:
    graph = fx.Graph()
    value = graph.placeholder("layer_value")
    env = {n: graph.placeholder(f"crossing_{i}") for i, n in enumerate(crossing)}
    if boundary is layer_node:
        env[layer_node] = value

    def copied(node: fx.Node) -> fx.Node:
        # What the head computes without the inputs is recomputed here.
        if node not in env:
            if node.op == "placeholder":
                raise _NeedsHead
            env[node] = graph.node_copy(node, copied)
        return env[node]

    for node in tail_nodes:
        if node is layer_node:  # the layer reads the substituted input
            args = (value,) + fx.map_arg(node.args[1:], copied)
            env[node] = graph.call_module(node.target, args, fx.map_arg(node.kwargs, copied))
        else:
            env[node] = graph.node_copy(node, copied)
    return graph


def _crossing_values(
    head_nodes: List[fx.Node],
    tail_nodes: List[fx.Node],
    layer_node: fx.Node,
    from_inputs: Set[fx.Node],
) -> List[fx.Node]:
    r"""The head's input-dependent values that the tail reads, other than the
    substituted layer tensor."""
    head = set(head_nodes) - {layer_node}
    needed: List[fx.Node] = []
    for node in tail_nodes:
        reads = node.all_input_nodes
        if node is layer_node:  # its first argument is substituted
            reads = []
            fx.map_arg((node.args[1:], node.kwargs), reads.append)
        for arg in reads:
            if arg in head and arg in from_inputs and arg not in needed:
                needed.append(arg)
    return needed


def _depends_on_inputs(nodes: List[fx.Node]) -> Set[fx.Node]:
    dependent: Set[fx.Node] = set()
    for node in nodes:
        if node.op == "placeholder" or any(a in dependent for a in node.all_input_nodes):
            dependent.add(node)
    return dependent


def _has_hooks(m: Module) -> bool:
    return bool(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
    )


def _has_global_hooks() -> bool:
    from torch.nn.modules import module

    return bool(
        module._global_forward_hooks
        or module._global_forward_pre_hooks
        or module._global_backward_hooks
        or module._global_backward_pre_hooks
    )


def _signature(model: Module) -> Tuple[object, ...]:
    r"""What a cached split depends on: the module objects, their modes and hooks."""
    return tuple(
        (id(m), m.training, _has_hooks(m), m.__dict__.get("forward")) for m in model.modules()
    ) + (type(model).forward,)
