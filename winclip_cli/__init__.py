"""winclip: zero- and few-shot visual anomaly detection (WinCLIP) for folders of images.

``from winclip_cli import WinClip`` is the library entry point; importing the package
itself stays cheap (torch is loaded on first use of WinClip), so ``winclip --version``
answers at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

__all__ = ["WinClip", "__version__"]

if TYPE_CHECKING:
    from .model import WinClip


def __getattr__(name: str) -> Any:
    if name == "WinClip":
        from .model import WinClip

        return WinClip
    raise AttributeError(f"module 'winclip_cli' has no attribute {name!r}")
