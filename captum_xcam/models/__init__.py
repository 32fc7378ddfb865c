"""Models for tests, benchmarks and tutorials, torchvision models by name, and
timm models by name (timm is optional: imported only when used)."""
from captum_xcam.models.efficientnet_lite import (
    EFFICIENTNET_LITE0_CAM_LAYER,
    EFFICIENTNET_LITE0_PREPROCESSING,
    EfficientNetLite0,
    PretrainedUnavailableError,
    efficientnet_lite0_cam_layer,
    efficientnet_lite0_categories,
    load_efficientnet_lite0,
)
from captum_xcam.models.small_cnn import SmallCNN, load_pretrained
from captum_xcam.models.small_vgg import SmallVGG, load_pretrained_vgg
from captum_xcam.models.timm_models import (
    TimmUnavailableError,
    TimmWeightsUnavailableError,
    check_timm_name,
    imagenet_class_names,
    is_timm_model,
    load_timm_model,
    timm_cam_layer,
    timm_preprocessing,
    timm_weights_name,
)
from captum_xcam.models.torchvision_models import (
    Preprocessing,
    WeightsUnavailableError,
    check_model_name,
    classification_models,
    default_cam_layer,
    get_weights,
    load_model,
    load_state_dict_file,
    weights_file,
)

__all__ = [
    "EFFICIENTNET_LITE0_CAM_LAYER",
    "EFFICIENTNET_LITE0_PREPROCESSING",
    "EfficientNetLite0",
    "Preprocessing",
    "PretrainedUnavailableError",
    "SmallCNN",
    "SmallVGG",
    "TimmUnavailableError",
    "TimmWeightsUnavailableError",
    "WeightsUnavailableError",
    "check_model_name",
    "check_timm_name",
    "classification_models",
    "default_cam_layer",
    "efficientnet_lite0_cam_layer",
    "efficientnet_lite0_categories",
    "get_weights",
    "imagenet_class_names",
    "is_timm_model",
    "load_model",
    "load_efficientnet_lite0",
    "load_pretrained",
    "load_pretrained_vgg",
    "load_state_dict_file",
    "load_timm_model",
    "timm_cam_layer",
    "timm_preprocessing",
    "timm_weights_name",
    "weights_file",
]
