r"""The ``captum-xcam`` command line (also ``python -m captum_xcam``)."""
from captum_xcam.cli.main import main

__all__ = ["main"]
