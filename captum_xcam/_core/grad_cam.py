"""Grad-CAM: Selvaraju et al., ICCV 2017."""
from torch import Tensor

from captum_xcam._core.cam_attribution import GradientCamAttribution, spatial_sum
from captum_xcam._core.registry import GRADIENT, register_method


@register_method(
    "gradcam",
    name="Grad-CAM",
    paper="Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391",
    family=GRADIENT,
    formula="w_k = mean_ij G_k,ij",
)
class LayerGradCam(GradientCamAttribution):
    r"""
    Grad-CAM [Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391]:
    each channel is weighted by its mean gradient,

    .. math::
        w_k = \frac{1}{Z} \sum_{ij} G_{k,ij}, \qquad G = \frac{\partial y}{\partial A}

    with ``Z`` the number of positions. The same maps as Captum's
    :class:`captum.attr.LayerGradCam` (the tests compare the two), with this
    library's plumbing: checks that name bad input, a backward pass that stops
    at the layer, and the model left exactly as it was found. Switching is a
    change of import::

        >>> from captum_xcam import LayerGradCam   # was: from captum.attr import ...
        >>> attr = LayerGradCam(model, model.layer4).attribute(images, target=labels)
    """

    def _weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return spatial_sum(gradients) / gradients[0, 0].numel()
