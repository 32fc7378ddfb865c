"""Models for tests, benchmarks and tutorials, torchvision models by name, and
timm models by name (timm is optional: imported only when used)."""
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
    "Preprocessing",
    "SmallCNN",
    "SmallVGG",
    "TimmUnavailableError",
    "TimmWeightsUnavailableError",
    "WeightsUnavailableError",
    "check_model_name",
    "check_timm_name",
    "classification_models",
    "default_cam_layer",
    "get_weights",
    "imagenet_class_names",
    "is_timm_model",
    "load_model",
    "load_pretrained",
    "load_pretrained_vgg",
    "load_state_dict_file",
    "load_timm_model",
    "timm_cam_layer",
    "timm_preprocessing",
    "timm_weights_name",
    "weights_file",
]
