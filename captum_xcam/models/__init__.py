"""Models for tests, benchmarks and tutorials, and torchvision models by name."""
from captum_xcam.models.small_cnn import SmallCNN, load_pretrained
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
    "WeightsUnavailableError",
    "check_model_name",
    "classification_models",
    "default_cam_layer",
    "get_weights",
    "load_model",
    "load_pretrained",
    "load_state_dict_file",
    "weights_file",
]
