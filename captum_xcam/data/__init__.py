"""Data sets generated in code, for tests, benchmarks and tutorials."""
from captum_xcam.data.synthetic import CLASS_NAMES, SyntheticSet, make_synthetic

__all__ = ["CLASS_NAMES", "SyntheticSet", "make_synthetic"]
