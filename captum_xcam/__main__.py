r"""``python -m captum_xcam``: the ``captum-xcam`` command line."""
import sys

from captum_xcam.cli import main

if __name__ == "__main__":
    sys.exit(main())
