"""EigenCAM: Muhammad & Yeasin, IJCNN 2020."""
from typing import Optional, Tuple, Union

import torch
from captum._utils.typing import TargetType
from captum.log import log_usage
from torch import Tensor

from captum_xcam._core.cam_attribution import CamAttribution
from captum_xcam._core.registry import GRADIENT_FREE, register_method


@register_method(
    "eigencam",
    name="EigenCAM",
    paper="Muhammad & Yeasin, IJCNN 2020, https://arxiv.org/abs/2008.00299",
    family=GRADIENT_FREE,
    formula="w_k = v_k, the first principal direction of the centred activations (target-free)",
)
class LayerEigenCam(CamAttribution):
    r"""
    EigenCAM [Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using
    Principal Components", IJCNN 2020, https://arxiv.org/abs/2008.00299]: the
    projection of each example's activations on their first principal
    component. With the activations as a matrix of positions by channels,
    ``M_{(ij),k} = A_{k,ij} - \bar A_k`` (centred over the positions), and
    ``v`` its first right singular vector (the channel direction of largest
    variance),

    .. math::
        L_{ij} = \sum_k v_k \big(A_{k,ij} - \bar A_k\big)

    a weighting of the centred activations by ``w_k = v_k``. The paper
    projects the activations without centring; pytorch-grad-cam centres
    them, and so do we by default (``center=False`` gives the paper's
    uncentred projection, whose first component is then close to the mean
    activation). A singular vector's sign is arbitrary, so it is fixed: the
    map correlates positively with the channels' mean activation map, and
    where that map or the correlation is 0 up to rounding (relative to the
    norms, below the square root of the dtype's epsilon: a LayerNorm's
    output, whose mean over the channels is zero at every position) the
    largest loading is positive.

    EigenCAM is target-free: the map is the same for every class, and a
    ``target`` is ignored with a warning. It needs one forward pass and no
    gradient; with ``attr_dim_summation=False`` it returns the per-channel
    terms ``v_k (A_k - \bar A_k)``.
    """

    uses_target = False

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Optional[object] = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
        center: bool = True,
    ) -> Tensor:
        r"""
        Arguments as in :meth:`CamAttribution.attribute` (``target`` is
        ignored), and:

            center (bool, optional): Centre each channel over the positions
                        before the decomposition (pytorch-grad-cam's choice);
                        False projects the raw activations (the paper's).
                        Default: True

        Returns:
            *Tensor* of **attributions**, shaped as by :meth:`CamAttribution.attribute`.
        """
        return self._attribute(
            inputs,
            target,
            additional_forward_args,
            attribute_to_layer_input,
            relu_attributions,
            attr_dim_summation,
            center=center,
        )

    def _activations_and_weights(
        self,
        inputs: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Optional[Tuple[object, ...]],
        attribute_to_layer_input: bool,
        center: bool = True,
    ) -> Tuple[Tensor, Tensor]:
        activations = self._layer_grid(inputs, additional_forward_args, attribute_to_layer_input)
        if center:
            activations = activations - activations.flatten(2).mean(2).reshape(
                activations.shape[:2] + (1,) * (activations.dim() - 2)
            )
        return activations, first_component(activations)


def first_component(activations: Tensor) -> Tensor:
    r"""The first right singular vector (N, K) of each example's activations
    as a positions-by-channels matrix, signed so that the projection
    correlates non-negatively with the channels' mean map."""
    positions = activations.flatten(2).transpose(1, 2)  # (N, P, K)
    _, _, vh = torch.linalg.svd(positions, full_matrices=False)
    v = vh[:, 0, :]
    projection = (positions @ v.unsqueeze(2)).squeeze(2)  # (N, P)
    mean_map = positions.mean(2)
    mean_map = mean_map - mean_map.mean(1, keepdim=True)
    correlation = (projection * mean_map).sum(1)
    # A mean map or a correlation at rounding level counts as none (a
    # LayerNorm's output has a mean map of zeros).
    tolerance = torch.finfo(positions.dtype).eps ** 0.5
    typical_channel = positions.flatten(1).norm(dim=1) / positions.shape[2] ** 0.5
    mean_norm = mean_map.norm(dim=1)
    decided = (mean_norm > tolerance * typical_channel) & (
        correlation.abs() > tolerance * projection.norm(dim=1) * mean_norm
    )
    largest = v.gather(1, v.abs().argmax(1, keepdim=True)).squeeze(1)
    sign = torch.where(decided, correlation.sign(), largest.sign())
    return v * torch.where(sign == 0, 1, sign).unsqueeze(1)
