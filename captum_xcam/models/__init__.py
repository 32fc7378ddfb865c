"""Models for tests, benchmarks and tutorials."""
from captum_xcam.models.small_cnn import SmallCNN, load_pretrained

__all__ = ["SmallCNN", "load_pretrained"]
