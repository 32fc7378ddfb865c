"""Element-wise Grad-CAM (as in pytorch-grad-cam's GradCAMElementWise)."""
from torch import Tensor

from captum_xcam._core.cam_attribution import GradientCamAttribution
from captum_xcam._core.registry import GRADIENT, register_method


@register_method(
    "elementwisegradcam",
    name="Element-wise Grad-CAM",
    paper="Gildenblat & contributors, pytorch-grad-cam (GradCAMElementWise), 2021, "
    "https://github.com/jacobgil/pytorch-grad-cam",
    family=GRADIENT,
    formula="L = sum_k relu(G_k A_k), i.e. w_k,ij = G_k,ij where G_k,ij A_k,ij > 0",
)
class LayerElementWiseGradCam(GradientCamAttribution):
    r"""
    Element-wise Grad-CAM [introduced in pytorch-grad-cam as
    ``GradCAMElementWise``, https://github.com/jacobgil/pytorch-grad-cam]:
    HiResCAM's products of gradient and activation, each clipped at zero
    before the channels are summed,

    .. math::
        L_{ij} = \sum_k \mathrm{ReLU}\big(G_{k,ij} A_{k,ij}\big),
        \qquad G = \frac{\partial y}{\partial A}

    so that channels cannot cancel each other at a position. As a weighting of
    the activations: ``w_{k,ij} = G_{k,ij}`` where ``G_{k,ij} A_{k,ij} > 0``
    and 0 elsewhere (weights of shape ``(N, K, *spatial)``), so that
    ``attr_dim_summation=False`` gives the clipped products per channel.
    """

    def _weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return gradients * (gradients * activations > 0)
