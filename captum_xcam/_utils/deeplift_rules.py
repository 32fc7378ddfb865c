r"""DeepLIFT rules for every operation of a traced tail, so that LIFT-CAM's
channel weights are complete: ``sum_k w_k = f(A) - f(0)``.

Captum's :class:`~captum.attr.DeepLift` runs the model once on the actual
inputs and the references stacked in one batch, applies its rules to the
nonlinear modules it knows, and backpropagates plain gradients through
everything else. That is exact for linear operations and wrong for any other
nonlinearity: a functional ``F.relu``, an ``nn.SiLU``, a LayerNorm, a gate
``x * sigmoid(x)``. :func:`deeplift_tail` rewrites a *copy* of the traced tail
(never the user's model) so that every operation that depends on the layer's
tensor gets a rule:

=====================================================  ==========================================
operation                                              rule
=====================================================  ==========================================
``nn.ReLU``, ``ELU``, ``LeakyReLU``, ``Sigmoid``,      Captum's Rescale rule [1], on a copy of
``Tanh``, ``Softplus``                                 the module for each call
``nn.MaxPool1d/2d/3d``; ``nn.Softmax``                 Captum's max-pooling and softmax rules,
                                                       a copy per call (softmax's is not exact)
``F.max_pool*d``, ``F.softmax`` and their method       the module form, as above
forms
every other elementwise function, module or            Rescale [1]: ``m = (f(x) - f(x_0)) /
functional: ``F.relu``, ``torch.sigmoid``,             (x - x_0)``, the gradient where
``x.relu()``, ``SiLU``, ``GELU``, ``Hardswish``,       ``|x - x_0| < 1e-10``
``Hardsigmoid``, ``ReLU6``, ``Mish``, ``ELU``
variants, ``exp``, ``sqrt``, ``clamp`` ...
``a * b``, ``a @ b`` with both factors depending on    Shapley split of the interaction [2]:
the layer (gates, squeeze-excitation, attention)       ``ab - a_0 b_0 = (a - a_0)(b + b_0)/2 +
                                                       (a + a_0)/2 (b - b_0)``: exact
``a / b`` with both depending on the layer             ``a * (1 / b)``: Rescale, then the
                                                       product rule
``nn.LayerNorm``, ``F.layer_norm``                     its decomposition into centring
                                                       (linear), variance ``mean(u * u)``
                                                       (product rule), ``rsqrt`` (Rescale) and
                                                       ``u * rsqrt(v)`` (product rule): exact
linear operations (convolution, linear, eval-mode      the gradient, which is exact for them
batch norm, average pooling, sums, reshapes)
anything else                                          the gradient; LIFT-CAM measures the gap
                                                       and warns
=====================================================  ==========================================

[1] Shrikumar, Greenside & Kundaje, "Learning Important Features Through
Propagating Activation Differences", ICML 2017 (Rescale rule, summation to
delta). [2] The Shapley value of the two-player game ``v(S) = prod of the
factors, those outside S at their reference``, as DeepSHAP and the
chain-of-Shapley view of Chen, Lundberg & Lee, "Explaining a series of models
by propagating Shapley values", Nature Communications 2022, propagate it.

Each rule is exact for its operation, so the chain of multipliers satisfies
summation to delta through the whole tail. The rule functions assume the
DeepLift batch layout: the actual rows first, then as many reference rows.
"""
import copy
import operator
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from captum_xcam._utils.graph_split import dependent_nodes

#: Modules that Captum's DeepLift gives its own rule.
CAPTUM_RULES = (
    nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Softmax,
)
#: Elementwise modules that Captum leaves out: they get Rescale here.
ELEMENTWISE_MODULES = (
    nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.ReLU6, nn.Mish, nn.CELU, nn.SELU,
    nn.Hardtanh, nn.LogSigmoid, nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink,
    nn.Threshold,
)
_ELEMENTWISE_FUNCTIONS = {
    torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.elu, F.elu_, F.selu, F.celu,
    F.leaky_relu, F.leaky_relu_, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.hardtanh_, F.softplus, F.sigmoid, torch.sigmoid, torch.tanh, F.tanh,
    F.logsigmoid, F.softsign, F.threshold, torch.exp, torch.log, torch.sqrt, torch.rsqrt,
    torch.reciprocal, torch.square, torch.abs, torch.clamp, torch.clamp_min, torch.clip,
    torch.sigmoid_, torch.tanh_,
}
_ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "exp_", "log", "sqrt",
    "rsqrt", "reciprocal", "square", "abs", "clamp", "clamp_", "clamp_min", "clamp_min_",
    "clip", "pow",
}
_PRODUCTS = {operator.mul: "mul", torch.mul: "mul", operator.matmul: "matmul",
             torch.matmul: "matmul", torch.bmm: "bmm", operator.imul: "mul"}
_PRODUCT_METHODS = {"mul": "mul", "mul_": "mul", "matmul": "matmul", "bmm": "bmm"}
_BILINEAR: Dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mul": torch.mul, "matmul": torch.matmul, "bmm": torch.bmm
}
_QUOTIENTS = {operator.truediv, torch.div, torch.true_divide, operator.itruediv}
_MAX_POOLS = {F.max_pool1d: nn.MaxPool1d, F.max_pool2d: nn.MaxPool2d,
              F.max_pool3d: nn.MaxPool3d, torch.max_pool1d: nn.MaxPool1d,
              torch.max_pool2d: nn.MaxPool2d, torch.max_pool3d: nn.MaxPool3d}
_SOFTMAXES = {F.softmax, torch.softmax}
_LINEAR_FUNCTIONS = {
    operator.add, operator.sub, operator.neg, operator.getitem, operator.iadd, operator.isub,
    torch.add, torch.sub, torch.flatten, torch.cat, torch.stack, torch.reshape, torch.permute,
    torch.transpose, torch.squeeze, torch.unsqueeze, torch.sum, torch.mean, torch.conv2d,
    F.linear, F.conv1d, F.conv2d, F.conv3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.dropout, F.pad,
    F.interpolate, torch.chunk, torch.split, getattr, len,
}
_LINEAR_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "mean", "sum", "add",
    "sub", "squeeze", "unsqueeze", "chunk", "split", "size", "dim", "expand", "expand_as",
    "view_as", "reshape_as", "to", "type_as", "float", "double", "narrow", "unbind", "neg",
    "add_", "sub_", "clone", "movedim", "unflatten",
}
_LINEAR_MODULES = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Identity, nn.Flatten, nn.Dropout,
    nn.Dropout2d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.ConvTranspose2d, nn.ZeroPad2d,
    nn.Upsample, nn.Unflatten,
)


def _halves(x: Tensor) -> Tuple[Tensor, ...]:
    return x.chunk(2)


def _twice(x: Tensor) -> Tensor:
    return torch.cat([x, x])


class _Rescale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, fn: Callable[[Tensor], Tensor], eps: float) -> Tensor:
        ctx.fn, ctx.eps = fn, eps
        ctx.save_for_backward(x)
        return fn(x.clone())

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            out = ctx.fn(leaf.clone())
            (plain,) = torch.autograd.grad(out, leaf, grad)
        delta = _twice(torch.sub(*_halves(x)))
        delta_out = _twice(torch.sub(*_halves(out.detach())))
        small = delta.abs() < ctx.eps
        rescaled = grad * delta_out / torch.where(small, torch.ones_like(delta), delta)
        return torch.where(small, plain, rescaled), None, None


def rescale(x: Tensor, fn: Callable[[Tensor], Tensor], eps: float = 1e-10) -> Tensor:
    r"""``fn(x)``, backpropagated with DeepLIFT's Rescale rule."""
    return _Rescale.apply(x, fn, eps)


class _Product(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, op: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        ctx.op = op
        ctx.save_for_backward(a, b)
        return op(a, b)

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b = ctx.saved_tensors
        with torch.enable_grad():
            mean_a = _twice(cast(Tensor, sum(_halves(a.detach()))) / 2).requires_grad_()
            mean_b = _twice(cast(Tensor, sum(_halves(b.detach()))) / 2).requires_grad_()
            grad_a, grad_b = torch.autograd.grad(ctx.op(mean_a, mean_b), (mean_a, mean_b), grad)
        return grad_a, grad_b, None


def product(a: Tensor, b: Tensor, op: str = "mul") -> Tensor:
    r"""``a * b`` (``op`` "mul"), ``a @ b`` ("matmul") or ``torch.bmm(a, b)``,
    backpropagated with the Shapley split of the interaction: multipliers
    ``(b + b_0)/2`` for ``a`` and ``(a + a_0)/2`` for ``b``."""
    fn = _BILINEAR[op]
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or len(a) != len(b) or len(a) % 2:
        return fn(a, b)
    return _Product.apply(a, b, fn)


def quotient(a: Tensor, b: Tensor) -> Tensor:
    r"""``a / b`` as ``a * (1 / b)``, with Rescale on the reciprocal."""
    return product(a, rescale(b, torch.reciprocal))


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, normalized_shape, weight, bias, eps):
        ctx.normalized_shape, ctx.eps = tuple(normalized_shape), eps
        ctx.save_for_backward(x, weight)
        return F.layer_norm(x, normalized_shape, weight, bias, eps)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # In float64: against a zero reference r0 = 1/sqrt(eps) dwarfs r, and
        # the two shares of the product rule cancel to within r / r0, which
        # float32 would leave at 1e-2 of the result (MaxViT's head).
        x, weight = ctx.saved_tensors
        dtype, x, grad = x.dtype, x.double(), grad.double()
        weight = None if weight is None else weight.double()
        dims = tuple(range(-len(ctx.normalized_shape), 0))
        size = 1
        for d in ctx.normalized_shape:
            size *= d
        actual, reference = _halves(x)
        u, u0 = (h - h.mean(dims, keepdim=True) for h in (actual, reference))
        v, v0 = ((h * h).mean(dims, keepdim=True) for h in (u, u0))
        r, r0 = (v + ctx.eps).rsqrt(), (v0 + ctx.eps).rsqrt()
        g_z = grad if weight is None else grad * weight
        g_u = g_z * _twice((r + r0) / 2)  # z = u * r: product rule, u's share
        g_r = (g_z * _twice((u + u0) / 2)).sum(dims, keepdim=True)  # r's share
        delta_v = v - v0
        small = delta_v.abs() < 1e-12
        slope = torch.where(small, -0.5 * (v + ctx.eps) ** -1.5,
                            (r - r0) / torch.where(small, torch.ones_like(delta_v), delta_v))
        g_v = g_r * _twice(slope)  # r = rsqrt(v + eps): Rescale
        g_u = g_u + g_v * _twice(u + u0) / size  # v = mean(u * u): product rule
        g_x = g_u - g_u.mean(dims, keepdim=True)  # u = x - mean(x)
        return g_x.to(dtype), None, None, None, None


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    r"""``F.layer_norm``, backpropagated with the exact rule of its
    decomposition (module docstring)."""
    if len(input) % 2:
        return F.layer_norm(input, normalized_shape, weight, bias, eps)
    return _LayerNorm.apply(input, normalized_shape, weight, bias, eps)


class Rescaled(nn.Module):
    r"""An elementwise function or module under the Rescale rule."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return rescale(x, self.fn)


class LayerNormRule(nn.Module):
    r"""An ``nn.LayerNorm`` under the exact rule of its decomposition."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        n = self.norm
        return layer_norm(x, n.normalized_shape, n.weight, n.bias, n.eps)


def deeplift_tail(tail: fx.GraphModule) -> Tuple[fx.GraphModule, List[str]]:
    r"""A copy of ``tail`` (whose first input is the layer's tensor) with a
    DeepLIFT rule for every operation that depends on that tensor (module
    docstring), and the names of the operations left to the gradient that
    may not be linear."""
    graph = copy.deepcopy(tail.graph)
    modules: Dict[str, object] = {}
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr"):
            modules[node.target] = _attribute(tail, node.target)
    nodes = list(graph.nodes)
    dependent = dependent_nodes(nodes, [n for n in nodes if n.op == "placeholder"][:1])
    unruled: List[str] = []
    for i, node in enumerate(list(graph.nodes)):
        if node not in dependent or node.op not in ("call_module", "call_function", "call_method"):
            continue
        rule = _rule_for(node, modules, dependent)
        if rule is None:
            if not _is_linear(node, modules, dependent):
                unruled.append(_describe(node, modules))
            continue
        _apply(graph, node, rule, f"deeplift_rule_{i}", modules, dependent)
    graph.lint()
    return fx.GraphModule(modules, graph), unruled


#: (op, module or function, args, kwargs)
_Rule = Tuple[str, Union[nn.Module, Callable[..., Any]], tuple, dict]
_IN_PLACE_FUNCTIONS = {torch.relu_: torch.relu, F.relu_: F.relu, F.elu_: F.elu,
                       F.leaky_relu_: F.leaky_relu, F.hardtanh_: F.hardtanh,
                       torch.sigmoid_: torch.sigmoid, torch.tanh_: torch.tanh}


def _rule_for(
    node: fx.Node, modules: Dict[str, object], dependent: Set[fx.Node]
) -> Optional[_Rule]:
    r"""The replacement of ``node`` that carries its rule, or None where the
    gradient is the rule (linear operations) or no rule is known."""
    args, kwargs = node.args, dict(node.kwargs)
    if node.op == "call_module":
        m = _module(node, modules)
        if isinstance(m, CAPTUM_RULES):
            return "call_module", copy.deepcopy(m), args, kwargs
        if isinstance(m, ELEMENTWISE_MODULES):
            return "call_module", Rescaled(_out_of_place_module(m)), args[:1], {}
        if type(m) is nn.LayerNorm:
            return "call_module", LayerNormRule(m), args[:1], {}
        return None
    target = node.target
    if node.op == "call_method":
        if target in _ELEMENTWISE_METHODS and _constant(args[1:], kwargs):
            name = target.rstrip("_")
            method = partial(_call_method, name, args[1:], kwargs)
            return "call_module", Rescaled(method), args[:1], {}
        if target == "softmax" and _constant(args[1:], kwargs):
            return "call_module", nn.Softmax(_dim(args, kwargs)), args[:1], {}
        if target in _PRODUCT_METHODS and _both_dependent(args, dependent):
            return "call_function", product, (args[0], args[1], _PRODUCT_METHODS[target]), {}
        if target in ("div", "div_") and not kwargs and _reads(args[1:2], dependent):
            return "call_function", quotient, args[:2], {}
        return None
    if target in _ELEMENTWISE_FUNCTIONS and _constant(args[1:], kwargs):
        fn = _IN_PLACE_FUNCTIONS.get(target, target)
        kwargs.pop("inplace", None)
        return "call_module", Rescaled(partial(_call_function, fn, args[1:], kwargs)), args[:1], {}
    if target in (operator.pow, torch.pow) and _constant(args[1:], kwargs) and args[0] in dependent:
        power = partial(_call_function, torch.pow, args[1:], {})
        return "call_module", Rescaled(power), args[:1], {}
    if target in _MAX_POOLS and _constant(args[1:], kwargs):
        pool = _max_pool(_MAX_POOLS[target], args[1:], kwargs)
        return None if pool is None else ("call_module", pool, args[:1], {})
    if target in _SOFTMAXES and _constant(args[1:], kwargs):
        return "call_module", nn.Softmax(_dim(args, kwargs)), args[:1], {}
    if target in _PRODUCTS and _both_dependent(args, dependent):
        return "call_function", product, (args[0], args[1], _PRODUCTS[target]), {}
    if target in _QUOTIENTS and not kwargs and _reads(args[1:2], dependent):
        return "call_function", quotient, args[:2], {}
    if target is F.layer_norm:
        return "call_function", layer_norm, args, kwargs
    return None


def _apply(graph: fx.Graph, node: fx.Node, rule: _Rule, name: str,
           modules: Dict[str, object], dependent: Set[fx.Node]) -> None:
    op, target, args, kwargs = rule
    with graph.inserting_before(node):
        if op == "call_module":
            modules[name] = target
            new = graph.call_module(name, args, kwargs)
        else:
            new = graph.call_function(target, args, kwargs)
    node.replace_all_uses_with(new)
    if _in_place(node, modules):  # later readers of the input saw the change
        order = {n: i for i, n in enumerate(graph.nodes)}
        written = cast(fx.Node, node.args[0])  # what an in-place rule's operation writes to
        written.replace_all_uses_with(
            new, delete_user_cb=lambda user: user is not new and order[user] > order[node]
        )
    graph.erase_node(node)
    dependent.add(new)


def _in_place(node: fx.Node, modules: Dict[str, object]) -> bool:
    if node.op == "call_module":
        return bool(getattr(_module(node, modules), "inplace", False))
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    return str(name).endswith("_") or bool(node.kwargs.get("inplace", False))


def _call_method(name: str, args: tuple, kwargs: dict, x: Tensor) -> Tensor:
    return getattr(x, name)(*args, **kwargs)


def _call_function(fn: Callable, args: tuple, kwargs: dict, x: Tensor) -> Tensor:
    return fn(x, *args, **kwargs)


def _out_of_place_module(m: nn.Module) -> nn.Module:
    if getattr(m, "inplace", False):
        m = copy.copy(m)
        m.inplace = False  # type: ignore[assignment]  # torch types module attributes as Tensor | Module
    return m


def _max_pool(cls: type, args: tuple, kwargs: dict) -> Optional[nn.Module]:
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    params = dict(zip(names, args), **kwargs)
    if params.get("return_indices"):
        return None
    if params.get("stride") in (None, []):
        params.pop("stride", None)
    return cls(**params)


def _dim(args: tuple, kwargs: dict) -> Optional[int]:
    return kwargs.get("dim", args[1] if len(args) > 1 else None)


def _constant(args: tuple, kwargs: dict) -> bool:
    found: List[fx.Node] = []
    fx.map_arg((args, kwargs), found.append)
    return not found


def _reads(args: tuple, dependent: Set[fx.Node]) -> bool:
    return any(isinstance(a, fx.Node) and a in dependent for a in args)


def _both_dependent(args: tuple, dependent: Set[fx.Node]) -> bool:
    return len(args) >= 2 and all(isinstance(a, fx.Node) and a in dependent for a in args[:2])


def _is_linear(node: fx.Node, modules: Dict[str, object], dependent: Set[fx.Node]) -> bool:
    r"""Whether the gradient is the exact rule of ``node``: a linear operation,
    or a product or quotient with one factor independent of the layer."""
    if node.op == "call_module":
        m = _module(node, modules)
        batch_norm = isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training
        return batch_norm or isinstance(m, _LINEAR_MODULES)
    if node.op == "call_method":
        return node.target in _LINEAR_METHODS or (
            node.target in ("mul", "mul_", "div", "div_")
            and not _both_dependent(node.args, dependent)
        )
    target = node.target
    if target in _QUOTIENTS:
        return not _reads(node.args[1:2], dependent)
    if target in _PRODUCTS:
        return not _both_dependent(node.args, dependent)
    return target in _LINEAR_FUNCTIONS


def _module(node: fx.Node, modules: Dict[str, object]) -> object:
    r"""What a ``call_module`` node calls (its target is the module's path)."""
    return modules[cast(str, node.target)]


def _describe(node: fx.Node, modules: Dict[str, object]) -> str:
    if node.op == "call_module":
        return type(_module(node, modules)).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__name__", str(node.target))


def _attribute(root: nn.Module, target: str) -> object:
    value: object = root
    for name in target.split("."):
        value = getattr(value, name)
    return value
