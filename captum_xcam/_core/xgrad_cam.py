"""XGrad-CAM: Fu et al., "Axiom-based Grad-CAM", BMVC 2020."""
from torch import Tensor

from captum_xcam._core.cam_attribution import GradientCamAttribution, spatial_sum
from captum_xcam._core.registry import GRADIENT, register_method


@register_method(
    "xgradcam",
    name="XGrad-CAM",
    paper="Fu et al., BMVC 2020, https://arxiv.org/abs/2008.02312",
    family=GRADIENT,
    formula="w_k = sum_ij A_k,ij G_k,ij / sum_ij A_k,ij",
)
class LayerXGradCam(GradientCamAttribution):
    r"""
    XGrad-CAM (Axiom-based Grad-CAM) [Fu et al., BMVC 2020,
    https://arxiv.org/abs/2008.02312]. Each gradient is weighted by its
    activation's share of the channel's total:

    .. math::
        w_k = \frac{\sum_{ij} A_{k,ij}\, G_{k,ij}}{\sum_{ij} A_{k,ij}},
        \qquad G = \frac{\partial y}{\partial A}

    with ``y`` the target output; a channel whose activations sum to 0 gets
    weight 0. These are the weights that best satisfy the paper's
    Conservation and Sensitivity axioms. Where ``G`` is constant over
    positions (a layer followed by global average pooling and one linear
    layer) XGrad-CAM equals Grad-CAM.

    Called exactly as Captum's ``LayerGradCam``::

        >>> cam = LayerXGradCam(model, model.layer4)
        >>> attr = cam.attribute(images, target=labels, relu_attributions=True)
        >>> upsampled = LayerAttribution.interpolate(attr, images.shape[2:])
    """

    def _weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        totals = spatial_sum(activations)
        weighted = spatial_sum(activations * gradients)
        safe_totals = totals.masked_fill(totals == 0, 1)
        return (weighted / safe_totals).masked_fill(totals == 0, 0)
