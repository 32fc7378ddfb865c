"""LayerCAM: Jiang et al., IEEE TIP 2021."""
import torch.nn.functional as F
from torch import Tensor

from captum_xcam._core.cam_attribution import GradientCamAttribution
from captum_xcam._core.registry import GRADIENT, register_method


@register_method(
    "layercam",
    name="LayerCAM",
    paper="Jiang et al., IEEE TIP 2021, https://doi.org/10.1109/TIP.2021.3089943",
    family=GRADIENT,
    formula="w_k,ij = relu(G_k,ij)",
)
class LayerLayerCam(GradientCamAttribution):
    r"""
    LayerCAM [Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation
    Maps for Localization", IEEE TIP 2021,
    https://doi.org/10.1109/TIP.2021.3089943]: each activation is weighted by
    the positive part of its own gradient,

    .. math::
        L_{ij} = \sum_k \mathrm{ReLU}(G_{k,ij})\, A_{k,ij},
        \qquad G = \frac{\partial y}{\partial A}

    (weights of shape ``(N, K, *spatial)``), which keeps fine detail at
    shallow layers where Grad-CAM's averaged weights blur it. The class is
    ``LayerLayerCam`` after Captum's naming (``Layer`` for a layer
    attribution); the paper's fusion of several layers is the multi-layer
    composition's ``"layercam"`` fusion.
    """

    def _weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return F.relu(gradients)
