"""Splitting a model's traced graph at a layer, so that the part after the
layer can be run on its own.

A model ``f`` traced with ``torch.fx`` is cut into a *head*, from the inputs
to the layer's tensor, and a *tail*, from that tensor to the output. Values
that the head computes from the inputs and the tail still needs (a skip
connection across the layer, an additional forward argument) become extra
arguments of the tail: the *crossing values*. Values that do not depend on
the inputs (parameters, constants) are recomputed in the tail, and so are
shapes read from the inputs before the layer (``bs = x.size(0)``,
``x.shape[0]``, ``len(x)``, ``b, c, h, w = x.shape``): the tail reads them
from a stand-in tensor with as many rows as it is given, so that it runs on
any number of rows. Then

    ``f(x) == tail(layer_tensor, *crossing)`` where
    ``(layer_tensor, *crossing) == head(x)``

with the same operations on the same modules, so the results are identical.
A forward function that is not a module (``lambda x: model(x)["out"]``) is
traced through the modules it calls. Models that cannot be split get an
:class:`Unsplittable` with the reason and a remedy; callers then run the whole
model.
"""

import builtins
import inspect
import operator
import sys
import weakref
from contextlib import contextmanager
from typing import (
    Any,
    Callable,
    Dict,
    Hashable,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Set,
    Sized,
    Tuple,
    Union,
    cast,
)

from torch import fx
from torch.nn import Module

#: How a crossing value is handed to the tail for a replay of some rows.
ARGUMENT = "argument"  # one of the model's own arguments: its rows, as Captum expands them
PER_ROW = "per-row"  # a tensor computed from the inputs: its rows
SHAPE = "shape"  # a tensor the tail only reads the shape of: a stand-in of that many rows

_SHAPE_METHODS = {"size", "dim", "numel", "nelement", "ndimension", "get_device"}
_SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda"}
_SHAPE_ARITHMETIC = {
    operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv,
    operator.truediv, operator.mod, operator.neg, operator.pow, builtins.int, builtins.max,
    builtins.min,
}


class GraphSplit(NamedTuple):
    r"""A model cut at a layer: ``head(*inputs, *args)`` returns the layer
    tensor and the crossing values, ``tail(layer_tensor, *crossing)`` the
    model's output. ``kinds[i]`` says how crossing value ``i`` is replayed:
    :data:`ARGUMENT`, :data:`PER_ROW` or :data:`SHAPE`."""

    head: fx.GraphModule
    tail: fx.GraphModule
    kinds: Tuple[str, ...]


class Unsplittable(NamedTuple):
    r"""Why a model cannot be split at a layer, and what the user can do."""

    reason: str
    remedy: str


#: A cached split (or why there is none), with the signature it is valid for.
_Cached = Tuple[Tuple[object, ...], Union[GraphSplit, Unsplittable]]

_CACHE: "weakref.WeakKeyDictionary[Module, Dict[Hashable, _Cached]]" = weakref.WeakKeyDictionary()


class _LayerTracer(fx.Tracer):
    r"""Traces through every module except ``layer``, torch.nn's own modules
    and modules with hooks (which must still run as modules); ``len`` of a
    traced tensor is recorded, not refused."""

    def __init__(self, layer: Optional[Module]) -> None:
        leaves, functions = _timm_notrace()
        super().__init__(autowrap_functions=functions)
        self.layer = layer
        self.leaves = leaves

    def is_leaf_module(self, m: Module, module_qualified_name: str) -> bool:
        return (
            m is self.layer
            or _has_hooks(m)
            or type(m) in self.leaves
            or super().is_leaf_module(m, module_qualified_name)
        )

    def trace(
        self,
        root: Union[Module, Callable[..., Any]],
        concrete_args: Optional[Dict[str, Any]] = None,
    ) -> fx.Graph:
        if not isinstance(root, Module):
            raise TypeError(f"_LayerTracer traces modules, not a {type(root).__name__}.")
        with _traceable_len(root):
            return super().trace(root, concrete_args)


def _timm_notrace() -> Tuple[Tuple[type, ...], Tuple[Callable, ...]]:
    r"""The modules and functions that timm registers as not traceable by
    torch.fx (padding computed from shapes, and the like), to be kept whole,
    as timm's own feature extraction keeps them; nothing without timm."""
    # timm >= 1.0 exports the registry from timm.layers, timm 0.9 from timm.models.
    for name in ("timm.layers", "timm.models"):
        timm_layers = sys.modules.get(name)
        if timm_layers is not None and hasattr(timm_layers, "get_notrace_modules"):
            break
    else:
        return (), ()
    functions = tuple(f for f in timm_layers.get_notrace_functions() if callable(f))
    return tuple(timm_layers.get_notrace_modules()), functions


def _len(obj: object) -> object:
    if isinstance(obj, fx.Proxy):
        return obj.tracer.create_proxy("call_function", builtins.len, (obj,), {})
    return builtins.len(cast(Sized, obj))


@contextmanager
def _traceable_len(root: Module) -> Iterator[None]:
    r"""While tracing, ``len`` in the source files of the traced code records
    a graph node (what ``fx.wrap("len")`` in those files would do)."""
    functions: List[Optional[Callable]] = [type(m).forward for m in root.modules()]
    functions.append(getattr(root, "forward_func", None))  # a _CalledModel's function
    patched: List[dict] = []
    for fn in functions:
        namespace = getattr(fn, "__globals__", None)
        if namespace is not None and "len" not in namespace:
            namespace["len"] = _len
            patched.append(namespace)
    try:
        yield
    finally:
        for namespace in patched:
            if namespace.get("len") is _len:
                del namespace["len"]


class _CalledModel(Module):
    r"""A forward function that is not a module, as a module whose children
    are the modules it calls, so that torch.fx can trace it. ``forward`` takes
    as many positional arguments as the function is called with (torch.fx
    makes one graph input of each)."""

    def __init__(self, forward_func: Callable, modules: List[Module]) -> None:
        super().__init__()
        self.__dict__["forward_func"] = forward_func
        for i, m in enumerate(modules):
            self.add_module(f"module_{i}", m)

    @classmethod
    def taking(cls, num_args: int) -> type:
        names = ", ".join(f"arg_{i}" for i in range(num_args))
        namespace: Dict[str, object] = {}
        exec(f"def forward(self, {names}):\n    return self.forward_func({names})", namespace)
        return type(cls.__name__, (cls,), {"forward": namespace["forward"]})


def split_at_layer(
    forward_func: Callable,
    model: Optional[Module],
    layer: Module,
    attribute_to_layer_input: bool,
    num_args: int = 1,
) -> Union[GraphSplit, Unsplittable]:
    r"""
    The split of ``forward_func`` at ``layer``'s output (or input), or an
    :class:`Unsplittable` saying why there is none. ``model`` is the module
    ``forward_func`` is, or is the ``forward`` of, or None; ``num_args`` the
    number of arguments it is called with. Splits are cached
    per model (and forward function) for as long as its modules, their
    train/eval modes and their hooks stay the same.
    """
    root = model if model is not None else _called_model(forward_func, layer, num_args)
    if isinstance(root, Unsplittable):
        return root
    slot, key, signature = _cache_slot(forward_func, root, layer, attribute_to_layer_input)
    cached = slot.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    split = _split(root, layer, attribute_to_layer_input)
    slot[key] = (signature, split)
    return split


def discard_split(
    forward_func: Callable,
    model: Optional[Module],
    layer: Module,
    attribute_to_layer_input: bool,
    why: Unsplittable,
    num_args: int = 1,
) -> None:
    r"""Remembers that the split of ``forward_func`` at ``layer`` is of no use
    (its crossing values turned out not to be per-example tensors), for as
    long as the model stays the same."""
    root = model if model is not None else _called_model(forward_func, layer, num_args)
    if isinstance(root, Module):
        slot, key, signature = _cache_slot(forward_func, root, layer, attribute_to_layer_input)
        slot[key] = (signature, why)


def _cache_slot(
    forward_func: Callable, root: Module, layer: Module, attribute_to_layer_input: bool
) -> Tuple[Dict[Hashable, _Cached], Hashable, Tuple[object, ...]]:
    r"""Where the split of ``root`` is cached, under which key, valid while
    the signature holds: per model, and per forward function when that is
    not the model."""
    key: Hashable
    if isinstance(root, _CalledModel):
        model = next(iter(root.children()))
        key = (id(layer), attribute_to_layer_input, id(forward_func), _arity(root))
        extra: Tuple[object, ...] = (weakref.ref(forward_func),)
    else:
        model, key, extra = root, (id(layer), attribute_to_layer_input, None), ()
    return _CACHE.setdefault(model, {}), key, _signature(model) + extra


def _arity(root: Module) -> int:
    return root.forward.__code__.co_argcount - 1


def _called_model(
    forward_func: Callable, layer: Module, num_args: int
) -> Union[_CalledModel, Unsplittable]:
    r"""A traceable module for a Python function that calls the model: the
    modules it reads from its closure or globals become children; the one
    that holds the layer comes first."""
    remedy = "pass the model itself (or a torch.nn.Module wrapping it) as forward_func"
    if inspect.ismethod(forward_func) and isinstance(forward_func.__self__, Module):
        found = [forward_func.__self__]
    elif inspect.isfunction(forward_func):
        names = inspect.getclosurevars(forward_func)
        found = [v for v in {**names.globals, **names.nonlocals}.values() if isinstance(v, Module)]
    else:
        return Unsplittable(
            f"the forward function is a {type(forward_func).__name__}, neither the model "
            "nor a Python function that calls it", remedy)
    holders = [m for m in found if any(s is layer for s in m.modules())]
    if len(holders) != 1:
        return Unsplittable(
            "the forward function does not refer to exactly one module holding the layer "
            f"({len(holders)} found among its globals and closure)", remedy)
    others = [m for m in found if m is not holders[0]]
    return _CalledModel.taking(num_args)(forward_func, holders + others)


def _split(
    root: Module, layer: Module, attribute_to_layer_input: bool
) -> Union[GraphSplit, Unsplittable]:
    r"""The split, leaving ``root`` as it was: torch.fx stores the tensor
    constants it meets on the traced root (``_tensor_constant0``, ...); the
    graph modules keep their own references, and the root loses them again."""
    names = set(root.__dict__)
    try:
        return _traced_split(root, layer, attribute_to_layer_input)
    finally:
        for name in set(root.__dict__) - names:
            delattr(root, name)


def _traced_split(
    root: Module, layer: Module, attribute_to_layer_input: bool
) -> Union[GraphSplit, Unsplittable]:
    graph = _trace(root, _LayerTracer(layer))
    if isinstance(graph, Unsplittable):
        return graph
    calls = [
        n for n in graph.nodes if n.op == "call_module" and root.get_submodule(n.target) is layer
    ]
    if len(calls) != 1:
        return Unsplittable(
            f"the traced model calls the layer {len(calls)} times, not once (it may sit "
            "inside a torch.nn module that is traced as a whole)",
            "explain a module that the model's own forward calls once")
    layer_node = calls[0]
    if attribute_to_layer_input and not (
        layer_node.args and isinstance(layer_node.args[0], fx.Node)
    ):
        return Unsplittable(
            "the layer's input is not a traced tensor", "explain the layer's output instead")
    nodes = list(graph.nodes)
    cut = nodes.index(layer_node) + (0 if attribute_to_layer_input else 1)
    head_nodes, tail_nodes = nodes[:cut], nodes[cut:]
    boundary = layer_node.args[0] if attribute_to_layer_input else layer_node
    from_inputs = dependent_nodes(nodes, [n for n in nodes if n.op == "placeholder"])
    crossing, kinds = _crossing_values(head_nodes, tail_nodes, layer_node, from_inputs)
    tail_graph = _tail_graph(tail_nodes, layer_node, boundary, crossing)
    return GraphSplit(
        fx.GraphModule(root, _head_graph(head_nodes, boundary, crossing)),
        fx.GraphModule(root, tail_graph),
        kinds,
    )


def traced_model(
    forward_func: Callable, model: Optional[Module], layer: Module, num_args: int = 1
) -> Union[fx.GraphModule, Unsplittable]:
    r"""``forward_func`` as one graph module traced through every module but
    torch.nn's own (and timm's untraceable ones, and modules with hooks), or
    an :class:`Unsplittable` saying why it cannot be traced. The graph module
    shares the model's modules: replacing one of its modules (batch norm
    folded into a copy of a convolution) leaves the model as it is."""
    root = model if model is not None else _called_model(forward_func, layer, num_args)
    if isinstance(root, Unsplittable):
        return root
    names = set(root.__dict__)
    try:
        graph = _trace(root, _LayerTracer(None))
        return graph if isinstance(graph, Unsplittable) else fx.GraphModule(root, graph)
    finally:
        for name in set(root.__dict__) - names:
            delattr(root, name)


def _trace(root: Module, tracer: "_LayerTracer") -> Union[fx.Graph, Unsplittable]:
    r"""The graph of ``root``, or why it has none: hooks on the model itself
    or global module hooks (which running a graph module would skip), or
    untraceable Python."""
    called = list(root.children()) if isinstance(root, _CalledModel) else []
    if _has_hooks(root) or any(_has_hooks(m) for m in called):
        return Unsplittable(
            "the model itself has hooks, which running its parts apart would skip",
            "remove the model's own hooks while explaining (hooks on its submodules are fine)")
    if _has_global_hooks():
        return Unsplittable(
            "global module hooks are registered (torch.nn.modules.module.register_module_*)",
            "remove the global hooks while explaining")
    try:
        return tracer.trace(root)
    except Exception as error:  # untraceable Python: data-dependent control flow and the like
        first_line = (str(error).strip().splitlines() or [""])[0]
        return Unsplittable(
            f"torch.fx cannot trace it ({type(error).__name__}: {first_line[:200]})",
            "make its forward traceable by torch.fx (no Python branches or loops on tensor "
            "values, no conversion of tensors to Python numbers)")


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
        # What the head computes without the inputs, and shapes read from
        # the stand-ins, are recomputed here.
        if node not in env:
            env[node] = graph.node_copy(node, copied)
        return env[node]

    for node in tail_nodes:
        if node is layer_node:  # the layer reads the substituted input
            args = (value,) + fx.map_arg(node.args[1:], copied)
            target = cast(str, node.target)  # a call_module node's target is the module's path
            env[node] = graph.call_module(target, args, fx.map_arg(node.kwargs, copied))
        else:
            env[node] = graph.node_copy(node, copied)
    return graph


def _crossing_values(
    head_nodes: List[fx.Node],
    tail_nodes: List[fx.Node],
    layer_node: fx.Node,
    from_inputs: Set[fx.Node],
) -> Tuple[List[fx.Node], Tuple[str, ...]]:
    r"""The head's input-dependent values that the tail needs, other than the
    substituted layer tensor, with their kinds: for a value that is a shape
    read from a tensor, that tensor (of kind :data:`SHAPE` unless the tail
    also needs its values)."""
    head = set(head_nodes) - {layer_node}
    values: List[fx.Node] = []
    shape_sources: List[fx.Node] = []
    for node in tail_nodes:
        reads = node.all_input_nodes
        if node is layer_node:  # its first argument is substituted
            reads = []
            fx.map_arg((node.args[1:], node.kwargs), reads.append)
        for arg in reads:
            if arg not in head or arg not in from_inputs:
                continue
            sources = _shape_sources(arg, from_inputs)
            target = values if sources is None else shape_sources
            for n in [arg] if sources is None else sources:
                if n not in target:
                    target.append(n)
    shape_only = [n for n in shape_sources if n not in values]
    crossing = values + shape_only
    kinds = tuple(
        ARGUMENT if n.op == "placeholder" else PER_ROW for n in values
    ) + (SHAPE,) * len(shape_only)
    return crossing, kinds


def _shape_sources(node: fx.Node, from_inputs: Set[fx.Node]) -> Optional[List[fx.Node]]:
    r"""The tensors whose shapes ``node`` is computed from, if it is computed
    from shapes alone (``x.size(0)``, ``x.shape[2] // 2``, ``len(x)``), else
    None."""
    reads = [a for a in node.all_input_nodes if a in from_inputs]
    shape_method = node.op == "call_method" and node.target in _SHAPE_METHODS
    shape_function = node.op == "call_function" and (
        node.target is builtins.len
        or node.target is builtins.getattr and node.args[1] in _SHAPE_ATTRIBUTES
    )
    if shape_method or shape_function:
        source = node.args[0]
        return [source] if isinstance(source, fx.Node) and reads == [source] else None
    if node.op == "call_function" and node.target in _SHAPE_ARITHMETIC:
        sources: List[fx.Node] = []
        for arg in reads:
            found = _shape_sources(arg, from_inputs)
            if found is None:
                return None
            sources += [s for s in found if s not in sources]
        return sources
    return None


def dependent_nodes(nodes: List[fx.Node], sources: List[fx.Node]) -> Set[fx.Node]:
    r"""The ``sources`` and every node of ``nodes`` (in graph order) computed
    from them."""
    dependent: Set[fx.Node] = set(sources)
    for node in nodes:
        if any(a in dependent for a in node.all_input_nodes):
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
