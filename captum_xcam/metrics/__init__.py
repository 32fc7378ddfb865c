r"""Measuring explanations: localisation, faithfulness, sanity and axiom metrics.

Every metric takes a batch and returns one value per image (aggregate with a
mean), works on the inputs' device, and accepts either kind of attribution:
a CAM at the layer's resolution (N, 1, h, w), upsampled with
``LayerAttribution.interpolate``, or an input-resolution attribution such as
Integrated Gradients (N, C, H, W), reduced over the colour channels
(:func:`input_resolution_maps`).
"""
from captum_xcam.metrics._maps import boxes_to_masks, input_resolution_maps, min_max_normalized
from captum_xcam.metrics._ranks import spearman
from captum_xcam.metrics.axioms import (
    AxiomErrors,
    axiom_errors,
    channel_ablation_scores,
    xgrad_cam_axioms,
)
from captum_xcam.metrics.captum_metrics import (
    expand_to_inputs,
    explanation_func,
    pixel_noise,
    square_removal,
)
from captum_xcam.metrics.confidence import ConfidenceChange, confidence_change
from captum_xcam.metrics.deletion_insertion import PixelCurves, deletion, insertion
from captum_xcam.metrics.discrimination import class_discrimination, mispointing
from captum_xcam.metrics.pointing_game import energy_pointing_game, pointing_game
from captum_xcam.metrics.road import RoadCurves, noisy_linear_imputation, road
from captum_xcam.metrics.sanity import (
    RandomizationResult,
    cascade_order,
    cascading_randomization,
    random_logit,
)
from captum_xcam.metrics.shapley import (
    channel_shapley_values,
    channel_weights,
    rank_correlation,
    weights_from_maps,
)

__all__ = [
    "AxiomErrors",
    "ConfidenceChange",
    "PixelCurves",
    "RandomizationResult",
    "RoadCurves",
    "axiom_errors",
    "boxes_to_masks",
    "cascade_order",
    "cascading_randomization",
    "channel_ablation_scores",
    "channel_shapley_values",
    "channel_weights",
    "class_discrimination",
    "confidence_change",
    "deletion",
    "energy_pointing_game",
    "expand_to_inputs",
    "explanation_func",
    "input_resolution_maps",
    "insertion",
    "min_max_normalized",
    "mispointing",
    "noisy_linear_imputation",
    "pixel_noise",
    "pointing_game",
    "random_logit",
    "rank_correlation",
    "road",
    "spearman",
    "square_removal",
    "weights_from_maps",
    "xgrad_cam_axioms",
]
