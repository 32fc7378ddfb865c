"""Scoring many perturbed copies of the inputs fast, with the maps unchanged.

The Score-CAM family spends its time in forward passes of the whole model on
masked inputs (one per channel of the layer). :func:`fast_replay` gives the
function to score them with, cheaper than ``forward_func`` and equal to it up
to float rounding:

- batch norm folded into a copy of the convolution before it, in a graph
  module traced with ``torch.fx`` that shares every other module with the
  model, for a model in eval mode: the model itself is not touched;
- the inputs' memory format measured, on a CPU, for a model with 2-D
  convolutions: the first calls alternate the inputs' own format and
  ``torch.channels_last`` (oneDNN's convolutions are about 1.3x faster in it
  for ResNets at 224x224, slower at 64x64), and the faster one is kept;
- no autograd (the caller runs it under ``torch.inference_mode``).

A ``DataParallel`` model is replayed as it is (its replays are spread over
its devices). Like any torch.fx trace, the folded replay runs the modules'
operations, not the Python around them: side effects in a ``forward`` (a
counter, a print) happen once while tracing, not in every replay.

Before it is used, the replay is checked against ``forward_func`` on the
explained inputs, in every format it may use; where it differs by more than
:data:`TOLERANCE` (relative to the largest output), or cannot be built (a
model torch.fx cannot trace), the library says why in a warning and scores
with the model as given.
"""
import time
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from captum_xcam._utils.graph_split import Unsplittable, _has_hooks, traced_model
from captum_xcam._utils.model_state import model_of
from captum_xcam._utils.user_warnings import warn

#: The largest difference, relative to the largest output, between the fast
#: replay and ``forward_func`` on the explained inputs.
TOLERANCE = 1e-5

#: Calls timed in each candidate memory format before one is kept (the first
#: call in a format also creates oneDNN's primitives: the best call counts).
TRIALS = 2

#: A format whose first call takes this many times the fastest one's is not
#: tried again.
CLEARLY_SLOWER = 3.0

#: Models whose forward passes are spread over devices: replayed as they are.
_PARALLEL = (nn.DataParallel, nn.parallel.DistributedDataParallel)
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_PAIRS: Dict[type, type] = {
    nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}


class Replay:
    r"""Scores perturbed inputs: ``forward`` on the 4-D inputs laid out in one
    of ``formats`` (``torch.preserve_format``: as given). With several, the
    first ``TRIALS`` calls in each, alternating, are timed per row, and the
    format of the fastest is kept. ``changes`` lists what differs from
    calling ``forward_func`` (nothing for the exact replay)."""

    def __init__(
        self,
        forward: Callable,
        formats: Sequence[torch.memory_format] = (torch.preserve_format,),
        changes: Tuple[str, ...] = (),
    ) -> None:
        self.forward = forward
        self.formats = tuple(formats)
        self.changes = changes
        self._seconds_per_row: Dict[torch.memory_format, List[float]] = {f: [] for f in formats}
        self.chosen: Optional[torch.memory_format] = formats[0] if len(formats) == 1 else None

    def __call__(self, inputs: Tuple[Tensor, ...], args: Tuple[object, ...]) -> Tensor:
        layout = self.chosen or self._next_trial()
        start = time.perf_counter()
        output = self.forward(*(_laid_out(x, layout) for x in inputs), *args)
        if self.chosen is None:
            rows = max(1, len(inputs[0]))
            self._seconds_per_row[layout].append((time.perf_counter() - start) / rows)
            self.chosen = self._decided()
        return output

    def _next_trial(self) -> torch.memory_format:
        return min(self.formats, key=lambda f: len(self._seconds_per_row[f]))

    def _decided(self) -> Optional[torch.memory_format]:
        r"""The fastest format once each has had its trials, or at once where
        one's first call is :data:`CLEARLY_SLOWER` than another's (float64
        convolutions in channels-last, say, which oneDNN does not run)."""
        times = self._seconds_per_row
        if not all(times.values()):
            return None
        best = {f: min(t) for f, t in times.items()}
        fastest = min(self.formats, key=best.__getitem__)
        clearly = all(max(times[f]) > CLEARLY_SLOWER * best[fastest]
                      for f in self.formats if f is not fastest)
        if clearly or all(len(t) >= TRIALS for t in times.values()):
            return fastest
        return None


def _laid_out(x: Tensor, layout: torch.memory_format) -> Tensor:
    if layout is torch.preserve_format or x.dim() != 4:
        return x
    return x.contiguous(memory_format=layout)


def fast_replay(
    forward_func: Callable,
    layer: nn.Module,
    inputs: Tuple[Tensor, ...],
    args: Tuple[object, ...],
    method: str,
) -> Replay:
    r"""The fastest :class:`Replay` of ``forward_func`` that agrees with it on
    ``inputs`` (and ``args``) within :data:`TOLERANCE`; ``method`` names the
    caller in warnings."""
    model = model_of(forward_func)
    modules = list(model.modules()) if model is not None else list(layer.modules())
    formats = _candidate_formats(modules, inputs)
    forward = forward_func
    reasons: List[str] = []
    changes: List[str] = []
    if _foldable(modules) and not isinstance(model, _PARALLEL):
        folded = _folded(forward_func, model, layer, len(inputs) + len(args))
        if isinstance(folded, Unsplittable):
            reasons.append(f"batch norm is not folded for its replays: {folded.reason}")
        elif folded is not None:
            forward = folded
            changes.append("batch norm folded")
    if len(formats) > 1:
        changes.append("channels-last inputs where faster")
    replay = Replay(forward, formats, tuple(changes))
    if changes:
        mismatch = _mismatch(forward, formats, forward_func, inputs, args)
        if mismatch is not None:
            reasons.append(f"its faster replay ({', '.join(changes)}) {mismatch}, so the "
                           "model itself scores the masked inputs")
            replay = Replay(forward_func)
    if reasons:
        warn(f"{method} runs slower than it could: {'; '.join(reasons)}.", UserWarning)
    return replay


def _candidate_formats(
    modules: List[nn.Module], inputs: Tuple[Tensor, ...]
) -> Tuple[torch.memory_format, ...]:
    r"""The inputs' own format, and channels-last for 4-D inputs on a CPU
    where the model has 2-D convolutions, in a precision oneDNN runs (float32,
    bfloat16, float16: its channels-last float64 convolutions are slow)."""
    images = [x for x in inputs if x.dim() == 4]
    if images and all(x.device.type == "cpu" and x.dtype in _ONEDNN_DTYPES for x in images) and any(
        isinstance(m, nn.Conv2d) for m in modules
    ):
        return torch.preserve_format, torch.channels_last
    return (torch.preserve_format,)


def _foldable(modules: List[nn.Module]) -> bool:
    r"""Whether the model has batch norms that could be folded: in eval mode
    with running statistics (in train mode they normalise by the batch)."""
    return any(
        isinstance(m, _BATCH_NORMS) and not m.training and m.track_running_stats
        for m in modules
    )


def _folded(
    forward_func: Callable, model: Optional[nn.Module], layer: nn.Module, num_args: int
) -> Union[nn.Module, Unsplittable, None]:
    r"""``forward_func`` traced, with every batch norm that directly follows a
    convolution and is its only use folded into a copy of that convolution
    (modules with hooks are left as they are, so that their hooks still run);
    None where there is none to fold (a batch norm before its convolution, as
    in DenseNet), or why it cannot be traced."""
    root = model if model is forward_func else None
    traced = traced_model(forward_func, root, layer, num_args)
    if isinstance(traced, Unsplittable):
        return traced
    modules = dict(traced.named_modules())
    calls = Counter(n.target for n in traced.graph.nodes if n.op == "call_module")
    folded = 0
    for node in list(traced.graph.nodes):
        conv_node = _foldable_into(node, modules, calls)
        if conv_node is None:
            continue
        conv, norm = modules[str(conv_node.target)], modules[str(node.target)]
        _replace(traced, str(conv_node.target), fuse_conv_bn_eval(conv, norm))
        node.replace_all_uses_with(conv_node)
        traced.graph.erase_node(node)
        folded += 1
    if not folded:
        return None
    traced.recompile()
    return traced


def _foldable_into(
    node: fx.Node, modules: Dict[str, nn.Module], calls: Counter
) -> Optional[fx.Node]:
    r"""The call of a convolution that ``node``'s batch norm can be folded
    into: its input, a convolution of the same dimension called only there
    and used by nothing else, both in eval mode and without hooks; or None."""
    conv_node = node.args[0] if node.op == "call_module" and node.args else None
    if not isinstance(conv_node, fx.Node) or conv_node.op != "call_module":
        return None
    norm, conv = modules[str(node.target)], modules[str(conv_node.target)]
    foldable = (
        _PAIRS.get(type(conv)) is type(norm) and len(conv_node.users) == 1
        and calls[conv_node.target] == 1
        and norm.track_running_stats and not norm.training and not conv.training
        and not _has_hooks(norm) and not _has_hooks(conv)
    )
    return conv_node if foldable else None


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    r"""Puts ``module`` at the dotted ``name`` of the graph module ``root``,
    whose containers are its own (the model's leaf modules are shared)."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _mismatch(
    forward: Callable,
    formats: Tuple[torch.memory_format, ...],
    forward_func: Callable,
    inputs: Tuple[Tensor, ...],
    args: Tuple[object, ...],
) -> Optional[str]:
    r"""None where ``forward`` agrees with ``forward_func`` on the inputs in
    every one of ``formats``, else how it does not."""
    detached = tuple(x.detach() for x in inputs)
    with torch.inference_mode():
        exact = forward_func(*detached, *args)
        for layout in formats:
            try:
                fast = forward(*(_laid_out(x, layout) for x in detached), *args)
            except Exception as error:  # a model that refuses channels-last inputs, say
                return f"fails ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
            difference = _relative_difference(fast, exact)
            if difference is None:
                return "does not return a tensor of the model's output shape"
            if not difference <= TOLERANCE:
                return f"differs from the model by {difference:.1e} of its largest output"
    return None


def _relative_difference(fast: object, exact: object) -> Optional[float]:
    if not (isinstance(exact, Tensor) and isinstance(fast, Tensor)) or fast.shape != exact.shape:
        return None
    scale = exact.abs().max().clamp_min(torch.finfo(exact.dtype).tiny)
    return float((fast - exact).abs().max() / scale)
