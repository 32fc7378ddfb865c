"""Grad-CAM++: Chattopadhyay et al., WACV 2018."""
import torch
import torch.nn.functional as F
from torch import Tensor

from captum_xcam._core.cam_attribution import GradientCamAttribution, spatial_sum
from captum_xcam._core.registry import GRADIENT, register_method


@register_method(
    "gradcampp",
    name="Grad-CAM++",
    paper="Chattopadhyay et al., WACV 2018, https://arxiv.org/abs/1710.11063",
    family=GRADIENT,
    formula="w_k = sum_ij alpha_k,ij relu(G_k,ij), alpha = G^2 / (2 G^2 + (sum_ab A_k,ab) G^3)",
)
class LayerGradCamPlusPlus(GradientCamAttribution):
    r"""
    Grad-CAM++ [Chattopadhyay et al., WACV 2018,
    https://arxiv.org/abs/1710.11063], with the closed-form coefficients of
    the paper's Eq. 19 (the exponential-output approximation, in which higher
    derivatives are powers of the first):

    .. math::
        \alpha_{k,ij} = \frac{G_{k,ij}^2}
            {2 G_{k,ij}^2 + \big(\sum_{ab} A_{k,ab}\big) G_{k,ij}^3},
        \qquad w_k = \sum_{ij} \alpha_{k,ij}\, \mathrm{ReLU}(G_{k,ij})

    with ``G`` the gradient of the target output with respect to ``A``, and
    ``alpha = 0`` where the denominator is 0. Note the paper's per-position
    denominator ``(sum A) G^3``; some implementations use ``sum(A G^3)`` per
    channel instead, which is a different formula.
    """

    def _weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        grads_2 = gradients.pow(2)
        totals = spatial_sum(activations).reshape(
            activations.shape[:2] + (1,) * (activations.dim() - 2)
        )
        denominator = 2 * grads_2 + totals * gradients.pow(3)
        alpha = grads_2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        alpha = alpha.masked_fill(denominator == 0, 0)
        return spatial_sum(alpha * F.relu(gradients))
