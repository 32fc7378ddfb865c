r"""The one list of CAM methods, in the manner of torchvision's model registry.

Each method's module declares its class with :func:`register_method`; every
module of :mod:`captum_xcam._core` is imported on first use, so a new method is
its own file and nothing else. The CLI, the benchmarks, the tests' method lists
and the README's method table all read :func:`list_methods` and
:func:`get_method`."""
import difflib
import functools
import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Type, TypeVar

from captum.attr import LayerAttribution, LayerGradCam

#: The families, by how a method finds its channel weights.
GRADIENT = "gradient"
PERTURBATION = "perturbation"
GRADIENT_FREE = "gradient-free"
FAMILIES = (GRADIENT, PERTURBATION, GRADIENT_FREE)


@dataclass(frozen=True)
class MethodInfo:
    r"""What a registered method declares about itself.

    Attributes:
        key: The registry key (``get_method(key)``, the CLI's ``--methods``).
        name: The display name, as in the paper.
        paper: Authors, venue and year, and a link.
        family: ``"gradient"`` (weights from the gradient of the target at the
            layer), ``"perturbation"`` (weights from replaying the model on
            perturbed copies of the input or the layer) or ``"gradient-free"``
            (weights from the activations alone).
        formula: The weights in one line of plain text (the class's
            docstring has them in full).
        cam: The class.
    """

    key: str
    name: str
    paper: str
    family: str
    formula: str
    cam: Type[LayerAttribution]

    @property
    def uses_target(self) -> bool:
        r"""Whether the map depends on ``target`` (the class's
        ``uses_target``); a target-free method accepts a target and warns that
        it is ignored."""
        return bool(getattr(self.cam, "uses_target", True))

    @property
    def attribute_keywords(self) -> Tuple[str, ...]:
        r"""The keywords of the class's ``attribute`` beyond those of Captum's
        ``LayerGradCam`` (read from its signature)."""
        own = inspect.signature(self.cam.attribute).parameters
        return tuple(name for name in own if name not in _LAYER_GRAD_CAM_PARAMETERS)

    @property
    def perturbation(self) -> bool:
        r"""Whether the method replays the model once per channel (and takes
        ``perturbations_per_eval`` and ``show_progress``)."""
        return self.family == PERTURBATION


_REGISTRY: Dict[str, MethodInfo] = {}
_LAYER_GRAD_CAM_PARAMETERS = set(inspect.signature(LayerGradCam.attribute).parameters)
_CAM = TypeVar("_CAM", bound=Type[LayerAttribution])


def register_method(
    key: str,
    *,
    name: str,
    paper: str,
    family: str,
    formula: str,
) -> Callable[[_CAM], _CAM]:
    r"""Class decorator that registers a CAM class under ``key`` with its
    :class:`MethodInfo` (also set as the class attribute ``method_info``)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}.")

    def register(cam: _CAM) -> _CAM:
        if key in _REGISTRY and _REGISTRY[key].cam is not cam:
            raise ValueError(f"A method is already registered as {key!r}.")
        info = MethodInfo(key, name, paper, family, formula, cam)
        _REGISTRY[key] = info
        cam.method_info = info
        return cam

    return register


@functools.lru_cache(maxsize=None)
def _load_methods() -> None:
    r"""Imports every module of :mod:`captum_xcam._core` (once), which
    registers its methods."""
    package = importlib.import_module("captum_xcam._core")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def list_methods(family: Optional[str] = None) -> List[str]:
    r"""The keys of the registered methods, in the order of :data:`FAMILIES`
    and then by key; only those of ``family`` if given."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}.")
    return [i.key for i in _sorted_infos() if family in (None, i.family)]


def _sorted_infos() -> List[MethodInfo]:
    _load_methods()
    return sorted(_REGISTRY.values(), key=lambda i: (FAMILIES.index(i.family), i.key))


def method_info(key: str) -> MethodInfo:
    r"""The :class:`MethodInfo` of the method registered as ``key``; a
    ``ValueError`` that names the nearest keys for an unknown one."""
    _load_methods()
    try:
        return _REGISTRY[key]
    except KeyError:
        near = difflib.get_close_matches(str(key).lower(), list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ValueError(
            f"Unknown CAM method {key!r}.{hint} Registered: {', '.join(list_methods())}."
        ) from None


def get_method(key: str) -> Type[LayerAttribution]:
    r"""The class of the method registered as ``key``, used exactly as
    Captum's ``LayerGradCam``::

        >>> cam = get_method("xgradcam")(model, model.layer4)
        >>> attr = cam.attribute(images, target=labels, relu_attributions=True)
    """
    return method_info(key).cam


def method_table() -> str:
    r"""The registered methods as the README's Markdown table."""
    rows = ["| key | class | method | family | weights | paper |", "|---" * 6 + "|"]
    for info in _sorted_infos():
        cells = (f"`{info.key}`", f"`{info.cam.__name__}`", info.name, info.family,
                 f"`{info.formula}`", info.paper)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
