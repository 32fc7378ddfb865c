"""captum-xcam: the Class Activation Mapping family as Captum layer attributions."""
from captum_xcam._core.ablation_cam import LayerAblationCam
from captum_xcam._core.grad_cam_plus_plus import LayerGradCamPlusPlus
from captum_xcam._core.guided_layer_cam import GuidedLayerCam
from captum_xcam._core.layer_cam import LayerCam
from captum_xcam._core.layer_tail import WholeModelReplayWarning
from captum_xcam._core.lift_cam import LayerLiftCam, LiftCompletenessWarning
from captum_xcam._core.score_cam import LayerScoreCam
from captum_xcam._core.xgrad_cam import LayerXGradCam

__version__ = "0.1.0"

__all__ = [
    "GuidedLayerCam",
    "LayerAblationCam",
    "LayerCam",
    "LayerGradCamPlusPlus",
    "LayerLiftCam",
    "LayerScoreCam",
    "LayerXGradCam",
    "LiftCompletenessWarning",
    "WholeModelReplayWarning",
]
