r"""Pictures of what each method sees: the image, then every attribution as a
heat map blended over it, one row per image.

Drawing is Captum's :func:`captum.attr.visualization.visualize_image_attr`
(``method="blended_heat_map"``) on the axes of one matplotlib figure; this
module only lays the figure out, upsamples CAMs to the image with
:meth:`captum.attr.LayerAttribution.interpolate` and writes the titles.
Save the figure with ``fig.savefig("maps.png")`` (or ``.pdf``, ``.svg``).
"""
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from captum.attr import visualization as viz
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from captum_xcam.metrics import input_resolution_maps

Attributions = Union[Tensor, Mapping[str, Tensor]]


def visualize_attributions(
    images: Tensor,
    attributions: Attributions,
    targets: Optional[Union[int, Sequence[int], Tensor]] = None,
    scores: Optional[Union[Sequence[float], Tensor]] = None,
    class_names: Optional[Sequence[str]] = None,
    guided: Optional[Mapping[str, Tensor]] = None,
    image_titles: Optional[Sequence[str]] = None,
    show_colorbar: bool = False,
    sign: str = "auto",
    cmap: Optional[str] = None,
    alpha_overlay: float = 0.5,
    outlier_perc: float = 2,
    interpolate_mode: str = "bilinear",
    panel_size: float = 2.0,
) -> Figure:
    r"""
    One row per image: the image, each attribution as a heat map blended over
    a grey copy of it (titled with the method's name and, when given, the
    target and its score), then the optional guided views.

        >>> maps = {"XGrad-CAM": LayerXGradCam(model, layer).attribute(
        ...             images, target=labels, relu_attributions=True),
        ...         "Integrated Gradients": IntegratedGradients(model).attribute(
        ...             images, target=labels)}
        >>> fig = visualize_attributions(images, maps, targets=labels)
        >>> fig.savefig("maps.png", dpi=150)

    Args:
        images (Tensor): The images as they should be shown, (N, 3, H, W) or
                    (N, 1, H, W), float in [0, 1] or uint8. Undo any
                    normalisation first; a float image outside [0, 1] is
                    rescaled to [0, 1] by its own minimum and maximum.
        attributions (Tensor or dict[str, Tensor]): Method name to attribution
                    (one tensor: a single method, unnamed). Each is either a
                    CAM at the layer's resolution, (N, 1, h, w), upsampled to
                    the image here, or an input-resolution attribution
                    (N, C, H, W), summed over channels as Captum does.
        targets (int, sequence or Tensor, optional): The explained output of
                    each image (or one for all), shown in the titles.
                    Default: None
        scores (sequence or Tensor, optional): The model's score of each
                    image's target (for example its probability), shown in
                    the titles. Default: None
        class_names (sequence of str, optional): Names of the outputs, to
                    show a target by name. Default: None (by index)
        guided (dict[str, Tensor], optional): Guided views, such as
                    :class:`~captum_xcam.GuidedLayerCam`'s (N, C, H, W) output,
                    drawn after the blended maps as plain heat maps of
                    absolute values (their detail would drown in a blend).
                    Default: None
        image_titles (sequence of str, optional): Title of each image's first
                    panel, for example its file name. Default: None
        show_colorbar (bool, optional): A colour bar under every map (on
                    Captum's normalised scale). Default: False
        sign (str, optional): Which values to show, as in Captum: "positive",
                    "absolute_value", "negative", "all", or "auto": "positive"
                    for a map without negative values (a ReLU'd CAM), "all"
                    otherwise. Default: "auto"
        cmap (str, optional): Colour map of the blended maps. Default: None
                    ("jet" for positive maps, Captum's default otherwise)
        alpha_overlay (float, optional): Opacity of the heat maps. Default: 0.5
        outlier_perc (float, optional): Captum's clipping of the top values,
                    in percent of the total attribution. Default: 2
        interpolate_mode (str, optional): Upsampling of CAMs, as in
                    ``LayerAttribution.interpolate``. Default: "bilinear"
        panel_size (float, optional): Width and height of one panel in
                    inches. Default: 2.0

    Returns:
        A :class:`matplotlib.figure.Figure`, made without pyplot: it is not
        shown, and a notebook displays it when it ends a cell.
    """
    named = _named(attributions, "attributions")
    guided = _named(guided, "guided") if guided else {}
    shown = _displayable(images)
    n, height, width = shown.shape[0], shown.shape[1], shown.shape[2]
    maps = {name: _maps_for(attr, n, (height, width), interpolate_mode, name)
            for name, attr in {**named, **guided}.items()}
    labels = _target_labels(targets, scores, class_names, n)
    if image_titles is not None and len(image_titles) != n:
        raise ValueError(f"Got {len(image_titles)} image titles for {n} images.")

    columns = 1 + len(maps)
    extra = 0.35 if show_colorbar else 0.0
    fig = Figure(figsize=(panel_size * columns, (panel_size + 0.5 + extra) * n))
    axes = fig.subplots(n, columns, squeeze=False)
    for row in range(n):
        _draw_image(axes[row, 0], fig, shown[row], image_titles[row] if image_titles else None,
                    show_colorbar)
        for col, (name, map_) in enumerate(maps.items(), start=1):
            title = name if labels is None else f"{name}\n{labels[row]}"
            ax = axes[row, col]
            column_sign = "absolute_value" if name in guided else _sign_of(map_, sign)
            if not _has_values(map_[row], column_sign):  # Captum cannot normalise it
                _draw_image(ax, fig, shown[row], f"{title}\n(zero map)", show_colorbar)
            elif name in guided:  # detail that a blend would drown: a plain grey heat map
                viz.visualize_image_attr(
                    map_[row][..., None], method="heat_map", sign=column_sign,
                    plt_fig_axis=(fig, ax),
                    outlier_perc=outlier_perc, cmap="gray", show_colorbar=show_colorbar,
                    title=title, use_pyplot=False,
                )
            else:
                viz.visualize_image_attr(
                    map_[row][..., None], shown[row], method="blended_heat_map", sign=column_sign,
                    plt_fig_axis=(fig, ax), outlier_perc=outlier_perc,
                    cmap=cmap or ("jet" if column_sign == "positive" else None),
                    alpha_overlay=alpha_overlay, show_colorbar=show_colorbar, title=title,
                    use_pyplot=False,
                )
            ax.title.set_fontsize(8)
    fig.tight_layout()
    return fig


def _named(attributions: Attributions, what: str) -> Mapping[str, Tensor]:
    if isinstance(attributions, Tensor):
        return {"attribution": attributions}
    if not isinstance(attributions, Mapping) or not attributions:
        raise ValueError(f"{what} must be a tensor or a non-empty dict of method name to "
                         f"tensor, got {type(attributions).__name__}.")
    return attributions


def _displayable(images: Tensor) -> np.ndarray:
    r"""(N, H, W, C) floats in [0, 1], as Captum's ``original_image``."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (N, 3, H, W) or (N, 1, H, W) tensor, got {shape}.")
    x = images.detach().cpu()
    if x.dtype == torch.uint8:
        x = x.float() / 255
    x = x.float()
    low = x.amin((1, 2, 3), keepdim=True)
    high = x.amax((1, 2, 3), keepdim=True)
    outside = (low < 0) | (high > 1)
    span = torch.where(high > low, high - low, torch.ones_like(high))
    x = torch.where(outside, (x - low) / span, x)
    return x.permute(0, 2, 3, 1).numpy()


def _maps_for(attr: Tensor, n: int, size: Tuple[int, int], mode: str, name: str) -> np.ndarray:
    r"""One (H, W) map per image: CAMs upsampled, input attributions summed."""
    if not isinstance(attr, Tensor) or attr.dim() != 4 or attr.shape[0] != n:
        shape = tuple(attr.shape) if isinstance(attr, Tensor) else type(attr).__name__
        raise ValueError(f"The attribution {name!r} must be a (N, C, h, w) tensor with "
                         f"N = {n} images, got {shape}.")
    return input_resolution_maps(attr.detach().float(), size, mode).cpu().numpy()


def _target_labels(
    targets: Optional[Union[int, Sequence[int], Tensor]],
    scores: Optional[Union[Sequence[float], Tensor]],
    class_names: Optional[Sequence[str]],
    n: int,
) -> Optional[list]:
    r"""The second title line of each row, "name: score", or None for none."""
    if targets is None and scores is None:
        return None
    targets_list = _per_image(targets, n, "targets")
    scores_list = _per_image(scores, n, "scores")
    labels = []
    for target, score in zip(targets_list, scores_list):
        parts = []
        if target is not None:
            target = int(target)
            parts.append(class_names[target] if class_names is not None else f"class {target}")
        if score is not None:
            parts.append(f"{float(score):.2f}")
        labels.append(": ".join(parts))
    return labels


def _per_image(
    values: Optional[Union[int, float, Sequence[Any], Tensor]], n: int, what: str
) -> list:
    if values is None:
        return [None] * n
    items: list
    if isinstance(values, Tensor):
        items = values.detach().cpu().reshape(-1).tolist()
    elif isinstance(values, (int, float)):
        items = [values]
    else:
        items = list(values)
    if len(items) == 1:
        items = items * n
    if len(items) != n:
        raise ValueError(f"Got {len(items)} {what} for {n} images.")
    return items


def _draw_image(ax: Axes, fig: Figure, image: np.ndarray, title: Optional[str],
                show_colorbar: bool) -> None:
    # Captum's "original_image" ignores the attribution, but normalises it: ones do.
    viz.visualize_image_attr(
        np.ones(image.shape[:2] + (1,)), image, method="original_image", plt_fig_axis=(fig, ax),
        show_colorbar=show_colorbar, title=title, use_pyplot=False,
    )
    if title:
        ax.title.set_fontsize(8)


def _sign_of(maps: np.ndarray, sign: str) -> str:
    r"""Captum's sign for one method's maps (all images alike): "auto" is
    "positive" when no map has a negative value, else "all"."""
    if sign != "auto":
        return sign
    return "positive" if maps.min() >= 0 else "all"


def _has_values(map_: np.ndarray, sign: str) -> bool:
    r"""Whether the map has any value of the shown sign (Captum divides by it)."""
    if sign == "positive":
        return bool((map_ > 0).any())
    if sign == "negative":
        return bool((map_ < 0).any())
    return bool((map_ != 0).any())
