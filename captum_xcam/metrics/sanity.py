r"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018): an
explanation of a model must change when the model's weights are randomised,
and (Sixt et al., ICML 2020) when another class is explained."""
import copy
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Union

import torch
from captum._utils.typing import TargetType
from torch import Tensor
from torch.nn import Module

from captum_xcam.metrics._maps import input_resolution_maps
from captum_xcam.metrics._ranks import spearman

_SIMILARITIES = ("spearman", "spearman_abs")
GeneratorType = Union[None, int, torch.Generator]


class RandomizationResult(NamedTuple):
    r"""Result of :func:`cascading_randomization`.

    Attributes:
        similarity (Tensor): (N, S) float64, the rank correlation of each
                    image's map after stage ``s`` with its original map.
        stages (list of str): The S module names (as in ``named_modules()``,
                    "" for the model itself), in cascade order: the first is
                    re-initialised first, and each stage keeps the ones before.
    """

    similarity: Tensor
    stages: List[str]


def map_similarity(maps: Tensor, reference: Tensor, similarity: str = "spearman") -> Tensor:
    r"""The similarity (N,) of maps (N, H, W) with reference maps: "spearman"
    on the signed values, or "spearman_abs" on their absolute values (the two
    measures of Adebayo et al., identical for non-negative maps such as CAMs)."""
    if similarity not in _SIMILARITIES:
        raise ValueError(f"similarity must be one of {_SIMILARITIES}, got {similarity!r}.")
    a, b = maps.flatten(1), reference.flatten(1)
    if similarity == "spearman_abs":
        a, b = a.abs(), b.abs()
    return spearman(a, b)


def owns_parameters(module: Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def cascade_order(model: Module, inputs: Tensor) -> List[str]:
    r"""
    The names of the modules of ``model`` that own parameters directly, in
    reverse order of their first call in ``model(inputs)`` (recorded with
    forward pre-hooks, so independent of the order of registration): the
    output end first. Modules that the forward pass does not call are left
    out. The pass runs in eval mode without autograd; hooks and modes are
    restored afterwards.
    """
    called: List[str] = []
    modes = {name: m.training for name, m in model.named_modules()}
    handles = []

    def recorder(name: str) -> Callable[..., None]:
        def hook(module: Module, args: object) -> None:
            if name not in called:
                called.append(name)

        return hook

    try:
        for name, module in model.named_modules():
            if owns_parameters(module):
                handles.append(module.register_forward_pre_hook(recorder(name)))
        model.eval()
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
        for name, module in model.named_modules():
            module.training = modes[name]
    return called[::-1]


def reinitialise(module: Module, seed: int, reset_buffers: bool = False) -> None:
    r"""
    Re-initialises the parameters that ``module`` owns directly with its
    ``reset_parameters()`` under ``torch.manual_seed(seed)`` inside
    :func:`torch.random.fork_rng` (the caller's random state is left as it
    was). A module without ``reset_parameters`` has each parameter redrawn
    from a Gaussian with the parameter's own mean and standard deviation.
    The module's buffers (BatchNorm's running statistics) are kept unless
    ``reset_buffers``.
    """
    kept: Dict[str, Tensor] = {
        name: b.detach().clone() for name, b in module.named_buffers(recurse=False)
    }
    params = list(module.parameters(recurse=False))
    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            for p in params:
                std = p.std() if p.numel() > 1 else p.abs()
                p.copy_(torch.randn_like(p) * std + p.mean())
        if not reset_buffers:
            for name, value in kept.items():
                getattr(module, name).copy_(value)


def _stage_modules(model: Module, stage: Union[str, Sequence[str]]) -> List[Module]:
    names = [stage] if isinstance(stage, str) else list(stage)
    if not names:
        raise ValueError("A stage of layers is empty: name at least one module in each.")
    modules = []
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"layers names {name!r}, which is not a submodule of "
                f"{type(model).__name__}; use names from model.named_modules()."
            ) from None
        owners = [m for m in module.modules() if owns_parameters(m)]
        if not owners:
            raise ValueError(
                f"The module {name!r} ({type(module).__name__}) owns no parameters: "
                "name the modules whose weights to re-initialise."
            )
        modules += owners
    return modules


def _stage_name(stage: Union[str, Sequence[str]]) -> str:
    return stage if isinstance(stage, str) else "+".join(stage)


def cascading_randomization(
    explain: Callable[[Module, Tensor, TargetType], Tensor],
    model: Module,
    inputs: Tensor,
    target: TargetType = None,
    layers: Optional[Sequence[Union[str, Sequence[str]]]] = None,
    seed: int = 0,
    similarity: str = "spearman",
    reset_buffers: bool = False,
    *,
    attributions: Optional[Tensor] = None,
    interpolate_mode: str = "bilinear",
    reduce: str = "sum",
) -> RandomizationResult:
    r"""
    The cascading model parameter randomisation test [Adebayo et al., "Sanity
    Checks for Saliency Maps", NeurIPS 2018, https://arxiv.org/abs/1810.03292]:
    re-initialise the model's layers one after another from the output end
    towards the input, keeping the earlier ones randomised, and
    compare the explanation after each stage with the original one by
    Spearman's rank correlation of the maps at input resolution. A method
    that depends on the model passes when the correlation falls (**lower is
    better**); a method that ignores the model keeps 1.

    The caller's model is left untouched: one deep copy is explained and
    randomised. ``explain(model, inputs, target)`` builds the explanation for
    the model it is given (methods hold their model and layer, so rebuild
    them inside, finding the layer by name with ``model.get_submodule``).

    Stages, by default, are the modules that own parameters directly, in
    reverse order of their first call (:func:`cascade_order`); ``layers``
    names them instead, each stage a module name or a group of names
    re-initialised together; a named module that holds others (a block, a
    ``Sequential``) stands for every module inside it that owns parameters,
    in ``modules()`` order. The ``k``-th module re-initialised (from 0,
    counting across stages: stage ``k`` when stages are single modules) gets
    :func:`reinitialise` with seed ``seed + k``: the module's own
    ``reset_parameters()``, PyTorch's initial distribution for it (the paper
    re-draws the weights from an initialisation distribution; this is the one
    the model was built with). BatchNorm's running statistics are buffers,
    not learned weights, and are kept (``reset_buffers=False``): the paper
    randomises weights, and resetting the statistics to mean 0 and variance 1
    as well changes the activations' scale, which some methods would then
    reflect for that reason alone.

    Adebayo et al. report the rank correlation of absolute values and of the
    signed maps: ``similarity="spearman_abs"`` or ``"spearman"`` (the same
    for non-negative maps such as ReLU'd CAMs).

    Args:
        explain (Callable): ``explain(model, inputs, target)`` returning a CAM
                    (N, 1, h, w) or an input-resolution attribution (N, C, H, W).
        model (torch.nn.Module): The model; only a copy is changed.
        inputs (Tensor): Images (N, C, H, W).
        target (int, list or Tensor, optional): Passed on to ``explain``.
        layers (sequence of str or of sequences of str, optional): Module
                    names in cascade order (first re-initialised first), or
                    groups of names, one stage each. Default: None (each module
                    with parameters, output end first)
        seed (int, optional): Seed of the re-initialisations. Default: 0
        similarity (str, optional): "spearman" or "spearman_abs". Default: "spearman"
        reset_buffers (bool, optional): Also reset the re-initialised modules'
                    buffers (BatchNorm's running statistics). Default: False
        attributions (Tensor, optional): The explanation of the unchanged
                    model, when already computed. Default: None (computed)
        interpolate_mode (str, optional): Upsampling of CAMs. Default: "bilinear"
        reduce (str, optional): Reduction over colour channels. Default: "sum"

    Returns:
        :class:`RandomizationResult`: similarity (N, S) and the S stage names
        (a group's names joined by "+").
    """
    if similarity not in _SIMILARITIES:
        raise ValueError(f"similarity must be one of {_SIMILARITIES}, got {similarity!r}.")
    if not isinstance(model, Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        raise ValueError("inputs must be a (N, C, H, W) image tensor.")
    randomised = copy.deepcopy(model)
    stages = cascade_order(randomised, inputs) if layers is None else list(layers)
    if not stages:
        raise ValueError(
            f"{type(model).__name__} calls no module with parameters in its forward pass, "
            "or layers is empty: there is nothing to randomise."
        )
    groups = [_stage_modules(randomised, stage) for stage in stages]

    def maps_of(m: Module, given: Optional[Tensor] = None) -> Tensor:
        explained = explain(m, inputs, target) if given is None else given
        return input_resolution_maps(explained, inputs.shape[2:], interpolate_mode, reduce)

    original = maps_of(randomised, attributions)
    scores, k = [], 0
    for modules in groups:
        for module in modules:
            reinitialise(module, seed + k, reset_buffers)
            k += 1
        scores.append(map_similarity(maps_of(randomised), original.to(inputs.device), similarity))
    return RandomizationResult(torch.stack(scores, 1), [_stage_name(s) for s in stages])


def _target_classes(target: TargetType, n: int, num_classes: int, device: torch.device) -> Tensor:
    if isinstance(target, Tensor):
        classes = target.reshape(-1).to(device, torch.long)
    elif isinstance(target, int) and not isinstance(target, bool):
        classes = torch.full((n,), target, dtype=torch.long, device=device)
    elif isinstance(target, (list, tuple)) and all(isinstance(t, int) for t in target):
        classes = torch.tensor(list(target), dtype=torch.long, device=device)
    else:
        raise ValueError(
            "target must be a class index per image: an int, a list of ints or a (N,) "
            f"tensor; got {target!r}."
        )
    if classes.numel() == 1:
        classes = classes.expand(n)
    if classes.shape != (n,) or bool(((classes < 0) | (classes >= num_classes)).any()):
        raise ValueError(
            f"target must hold one class in [0, {num_classes}) per image ({n}), got {target!r}."
        )
    return classes


def random_logit(
    explain_target: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    target: TargetType,
    num_classes: int,
    generator: GeneratorType = None,
    similarity: str = "spearman",
    *,
    attributions: Optional[Tensor] = None,
    interpolate_mode: str = "bilinear",
    reduce: str = "sum",
) -> Tensor:
    r"""
    The random logit test [Sixt, Granz & Landgraf, "When Explanations Lie:
    Why Many Modified BP Attributions Fail", ICML 2020,
    https://arxiv.org/abs/1912.09818; Quantus's ``RandomLogit``]: Spearman's
    rank correlation (:func:`spearman`) between the map of the target class
    and the map of a class drawn uniformly from the ``num_classes - 1`` other
    ones. A class-sensitive method scores low (**lower is better**); a map
    that is the same for every class scores 1.

    Quantus compares the two maps with SSIM; this uses the rank correlation
    of :func:`cascading_randomization` instead: it needs no window size or
    data range, ignores the maps' scale (which differs between classes for
    most methods) and reads the same in both sanity checks.

    Args:
        explain_target (Callable): ``explain_target(inputs, target)`` returning
                    a CAM (N, 1, h, w) or an input-resolution attribution for
                    the classes ``target`` (N,).
        inputs (Tensor): Images (N, C, H, W).
        target (int, list or Tensor): The explained class of each image.
        num_classes (int): Number of classes (at least 2).
        generator (int or torch.Generator, optional): Seed or generator of the
                    random classes. Default: None (torch's global generator)
        similarity (str, optional): "spearman" or "spearman_abs". Default: "spearman"
        attributions (Tensor, optional): The map of ``target``, when already
                    computed. Default: None (computed)
        interpolate_mode (str, optional): Upsampling of CAMs. Default: "bilinear"
        reduce (str, optional): Reduction over colour channels. Default: "sum"

    Returns:
        Tensor (N,) float64 in [-1, 1].
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}.")
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        raise ValueError("inputs must be a (N, C, H, W) image tensor.")
    n = inputs.shape[0]
    classes = _target_classes(target, n, num_classes, inputs.device)
    others = (classes + 1 + _random_offsets(n, num_classes - 1, generator, inputs.device)) % (
        num_classes)

    def maps_of(t: Tensor, given: Optional[Tensor] = None) -> Tensor:
        explained = explain_target(inputs, t) if given is None else given
        return input_resolution_maps(explained, inputs.shape[2:], interpolate_mode, reduce)

    reference = maps_of(classes, attributions)
    return map_similarity(maps_of(others), reference.to(inputs.device), similarity)


def _random_offsets(n: int, high: int, generator: GeneratorType, device: torch.device) -> Tensor:
    r"""``n`` integers uniform in ``[0, high)`` on ``device``."""
    if isinstance(generator, int) and not isinstance(generator, bool):
        generator = torch.Generator().manual_seed(generator)
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be None, an int seed or a torch.Generator, got {generator!r}.")
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(0, high, (n,), generator=generator, device=where).to(device)
