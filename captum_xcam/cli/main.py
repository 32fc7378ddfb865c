r"""``captum-xcam``: the command line, with the subcommands ``demo`` and ``explain``."""
import argparse
import sys
import warnings
from typing import List, Optional

from captum_xcam import __version__
from captum_xcam.cli import demo, explain
from captum_xcam.cli.errors import CliError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captum-xcam",
        description="Class Activation Maps for PyTorch models, with Captum. Start with "
                    "'captum-xcam demo'.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", required=True)
    demo.add_parser(subparsers)
    explain.add_parser(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    r"""Runs the command line; returns the exit status: 0 on success, 1 for a
    wrong input (told in one line on stderr), 2 for unparsable arguments,
    130 when interrupted."""
    args = build_parser().parse_args(argv)
    # Captum's notes on every call (inputs set to require grad, hooks set): noise here.
    warnings.filterwarnings("ignore", message=".*did not already require gradients")
    warnings.filterwarnings("ignore", message=".*Setting (forward, )?backward hooks")
    # torch < 2.2: torch.load(weights_only=True) itself warns that TypedStorage is deprecated.
    warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
    # captum < 0.8 reads torch.has_cuda, has_cudnn, has_mps, ..., which torch >= 2.1 says
    # are deprecated.
    warnings.filterwarnings("ignore", message=r"'has_\w+' is deprecated, please use 'torch\.")
    try:
        args.run(args)
    except CliError as error:
        print(f"captum-xcam: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:  # explain's says what became of the results
        print(f"captum-xcam: {interrupt or 'interrupted.'}", file=sys.stderr)
        return 130
    return 0
