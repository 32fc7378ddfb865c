"""HiResCAM: Draelos & Carin, 2020."""
from torch import Tensor

from captum_xcam._core.cam_attribution import GradientCamAttribution
from captum_xcam._core.registry import GRADIENT, register_method


@register_method(
    "hirescam",
    name="HiResCAM",
    paper="Draelos & Carin, 2020, https://arxiv.org/abs/2011.08891",
    family=GRADIENT,
    formula="w_k,ij = G_k,ij",
)
class LayerHiResCam(GradientCamAttribution):
    r"""
    HiResCAM [Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful
    explanations of convolutional neural networks", 2020,
    https://arxiv.org/abs/2011.08891]: the gradient weights each activation at
    its own position instead of being averaged over the map,

    .. math::
        L_{ij} = \sum_k G_{k,ij} A_{k,ij}, \qquad G = \frac{\partial y}{\partial A}

    (weights of shape ``(N, K, *spatial)``). Where the layer feeds global
    average pooling and one linear layer, ``G`` is constant over positions and
    HiResCAM equals Grad-CAM; the sum of the map is then ``y`` minus the
    linear layer's bias, which the paper uses to argue faithfulness.
    """

    def _weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return gradients
