"""Warnings attributed to the user's line, not to ours."""
import sys
import warnings
from pathlib import Path
from types import FrameType
from typing import Optional, Type

_OURS = tuple(
    str(Path(file).parent)
    for file in (
        getattr(module, "__file__", None)
        for module in (sys.modules["captum_xcam"], __import__("captum"))
    )
    if file
)


def warn(message: str, category: Type[Warning]) -> None:
    r"""``warnings.warn`` with the stack level of the first caller outside
    captum-xcam and Captum, so that the warning names the user's line."""
    frame: Optional[FrameType] = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_OURS):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)
