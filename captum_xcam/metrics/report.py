r"""Several attributions measured the same way, and the table that compares them.

:func:`map_metrics` computes, per image, the metrics that any attribution has
(localisation against ground truth when given, confidence change, deletion
and insertion); :data:`COLUMNS` names every metric of the library for a table
and :func:`markdown_table` writes one. The command line demo, the tutorials
and ``benchmarks/faithfulness.py`` share them.
"""
from typing import Callable, Dict, Mapping, NamedTuple, Optional

import torch
from captum._utils.typing import TargetType
from torch import Tensor

from captum_xcam.metrics._maps import boxes_to_masks
from captum_xcam.metrics.confidence import confidence_change
from captum_xcam.metrics.deletion_insertion import deletion, insertion
from captum_xcam.metrics.pointing_game import energy_pointing_game, pointing_game


class Column(NamedTuple):
    r"""How a metric appears in a table: its header, which direction is better
    ("↑", "↓" or ""), the factor from its value to the shown number, and the
    number's format."""

    header: str
    better: str
    scale: float
    format: str

    def cell(self, value: float) -> str:
        return self.format.format(value * self.scale)


COLUMNS: Dict[str, Column] = {
    "pointing": Column("Pointing game (%)", "↑", 100, "{:.1f}"),
    "energy": Column("Energy pointing (%)", "↑", 100, "{:.1f}"),
    "discrimination": Column("Class discrimination (%)", "↑", 100, "{:.1f}"),
    "mispointing": Column("Points at other object (%)", "↓", 100, "{:.1f}"),
    "average_drop": Column("Average Drop (%)", "↓", 1, "{:.1f}"),
    "increase": Column("Increase in Conf. (%)", "↑", 100, "{:.1f}"),
    "deletion": Column("Deletion AUC", "↓", 1, "{:.3f}"),
    "insertion": Column("Insertion AUC", "↑", 1, "{:.3f}"),
    "road_morf": Column("ROAD MoRF", "↓", 1, "{:.3f}"),
    "road_lerf": Column("ROAD LeRF", "↑", 1, "{:.3f}"),
    "infidelity": Column("Infidelity", "↓", 1, "{:.3g}"),
    "sensitivity_max": Column("Max-sensitivity", "↓", 1, "{:.3f}"),
    "randomization": Column("Randomisation rank corr.", "↓", 1, "{:.3f}"),
    "random_logit": Column("Random-logit rank corr.", "↓", 1, "{:.3f}"),
    "conservation": Column("Conservation error", "↓", 1, "{:.3g}"),
    "sensitivity": Column("Sensitivity error", "↓", 1, "{:.3g}"),
    "shap_rho": Column("SHAP rank corr.", "↑", 1, "{:.3f}"),
    "ms_per_image": Column("ms / image", "", 1, "{:.1f}"),
}
r"""Metric key to :class:`Column`, in table order: localisation, faithfulness,
robustness, sanity, axioms, time. Values are as the metrics return them:
shares in [0, 1] for the pointing games, the class discrimination and the
mispointing (:mod:`~captum_xcam.metrics.discrimination`, over two-object
images) and the increase in confidence (shown in percent), Average Drop
already in percent. ``road_morf`` and ``road_lerf`` are the ``mean`` over the
percentiles of :func:`~captum_xcam.metrics.road.road`; ``randomization`` is the
mean over the cascade's stages of the rank correlation of
:func:`~captum_xcam.metrics.sanity.cascading_randomization`
(``similarity.mean(1)``: a map that changes only once the layers near the
input are randomised scores high, which the last stage alone would miss);
``random_logit`` is :func:`~captum_xcam.metrics.sanity.random_logit`."""


def map_metrics(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    masks: Optional[Tensor] = None,
    boxes: Optional[Tensor] = None,
    tolerance: float = 4.0,
    step: Optional[int] = None,
    perturbations_per_eval: int = 256,
) -> Dict[str, Tensor]:
    r"""
    The metrics that any attribution has, per image, with this library's
    metric functions and their paper settings:

    - ``pointing``: :func:`pointing_game` hit (0 or 1) on ``masks``;
    - ``energy``: :func:`energy_pointing_game` share in ``boxes`` (as the
      Score-CAM paper does), or in ``masks`` when no boxes are given;
    - ``average_drop`` and ``increase`` (0 or 1): :func:`confidence_change`;
    - ``deletion`` and ``insertion``: the AUCs of :func:`deletion` (zeros
      substrate) and :func:`insertion` (blur), and their curves
      ``deletion_curve`` and ``insertion_curve`` (N, steps + 1).

    Args:
        forward_func (Callable): The model.
        inputs (Tensor): The images (N, C, H, W) the attributions explain.
        attributions (Tensor): A CAM (N, 1, h, w) or an input-resolution
                    attribution (N, C, H, W).
        target (int, list or Tensor, optional): The explained output.
        masks (Tensor, optional): (N, H, W) bool ground truth for the pointing
                    games. Default: None (no localisation metrics)
        boxes (Tensor, optional): (N, 4) boxes ``(x_min, y_min, x_max,
                    y_max)`` for the energy pointing game. Default: None
        tolerance (float, optional): Of the pointing game, in pixels.
                    Default: 4 (about the paper's 15 at 224 pixels, for 64)
        step (int, optional): Pixels per deletion and insertion step.
                    Default: None (the image width)
        perturbations_per_eval (int, optional): Images per forward pass of
                    deletion and insertion. Default: 256

    Returns:
        dict of metric key to a tensor (N,) (curves (N, steps + 1)) on the CPU.
    """
    row: Dict[str, Tensor] = {}
    if masks is not None:
        row["pointing"] = pointing_game(attributions, masks, tolerance=tolerance).float()
        regions = masks if boxes is None else boxes_to_masks(boxes, inputs.shape[2:])
        row["energy"] = energy_pointing_game(attributions, regions)
    change = confidence_change(forward_func, inputs, attributions, target)
    row["average_drop"], row["increase"] = change.drop, change.increase.float()
    curves = {
        "deletion": deletion(forward_func, inputs, attributions, target, step=step,
                             perturbations_per_eval=perturbations_per_eval),
        "insertion": insertion(forward_func, inputs, attributions, target, step=step,
                               perturbations_per_eval=perturbations_per_eval),
    }
    for name, result in curves.items():
        row[name], row[f"{name}_curve"] = result.auc, result.curves
    return {key: value.detach().float().cpu() for key, value in row.items()}


def markdown_table(rows: Mapping[str, Mapping[str, float]],
                   columns: Mapping[str, Column] = COLUMNS) -> str:
    r"""
    A Markdown table with one row per method and a column for every metric
    that some method has (in the order of ``columns``); "—" where a method
    lacks one.

    Args:
        rows (dict[str, dict[str, float]]): Method name to metric key to value
                    (a mean over images, say).
        columns (dict[str, Column], optional): Default: :data:`COLUMNS`

    Returns:
        The table, lines joined by newlines, without a final newline.
    """
    used = [key for key in columns if any(key in row for row in rows.values())]
    lines = [
        "| Method | " + " | ".join(
            f"{columns[k].header} {columns[k].better}".strip() for k in used) + " |",
        "|---|" + "---:|" * len(used),
    ]
    for name, row in rows.items():
        cells = [columns[k].cell(row[k]) if k in row else "—" for k in used]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_rows(per_image: Mapping[str, Mapping[str, Tensor]]) -> Dict[str, Dict[str, float]]:
    r"""Method to metric to per-image values (N,) becomes method to metric to
    their mean; curves and other keys outside :data:`COLUMNS` are left out."""
    return {
        method: {key: float(torch.as_tensor(values).double().mean())
                 for key, values in row.items() if key in COLUMNS}
        for method, row in per_image.items()
    }
