"""On-disk text-embedding cache.

Entries are written to a temporary name and renamed, so a reader never sees half a file,
and checked on reading: a corrupt or mismatched entry is never trusted.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import platformdirs
import torch

from .atomic import atomic_write

CACHE_ENV = "WINCLIP_CACHE_DIR"


def default_cache_dir() -> Path:
    """$WINCLIP_CACHE_DIR, else the platform's per-user cache folder for winclip
    (platformdirs: $XDG_CACHE_HOME or ~/.cache on Linux, ~/Library/Caches on macOS,
    %LOCALAPPDATA% on Windows).

    A home folder that does not exist (a service account with HOME=/nonexistent) is not
    created: the cache goes to a private folder under the system's temporary folder, and
    a warning says where."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    folder = Path(platformdirs.user_cache_dir("winclip", appauthor=False))
    home = Path(os.path.expanduser("~"))
    if home.is_dir() or not folder.is_relative_to(home):
        return folder
    fallback = Path(tempfile.gettempdir()) / f"winclip-cache-{_user_id()}"
    warnings.warn(
        f"the home folder {home} does not exist: text embeddings are cached in {fallback} "
        f"(set {CACHE_ENV} to choose the folder)",
        stacklevel=2,
    )
    return fallback


def _user_id() -> str:
    """Who the cache is for, in a folder name (a shared temporary folder holds others')."""
    getuid = getattr(os, "getuid", None)
    return str(getuid()) if getuid is not None else getpass.getuser()


class TextEmbeddingCache:
    """Text embeddings keyed by everything they depend on (model, weights, prompts, class)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def _path(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.root / "text" / f"{digest[:32]}.pt"

    def get(self, key: dict[str, Any]) -> torch.Tensor | None:
        """The cached (2, D) tensor, or None when missing, unreadable or for another key."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                entry = torch.load(path, map_location="cpu", weights_only=True)
            text = entry["text"]
            if entry["key"] != key or text.ndim != 2 or text.shape[0] != 2:
                return None
            if not torch.isfinite(text).all():
                return None
            return text.float()
        except Exception:  # any damage at all means: rebuild
            return None

    def put(self, key: dict[str, Any], text: torch.Tensor) -> None:
        """Store an entry; a cache that can't be written costs speed, never the run."""
        entry = {"key": key, "text": text.detach().float().cpu()}
        try:
            atomic_write(self._path(key), lambda f: torch.save(entry, f))
        except OSError as exc:
            warnings.warn(f"text cache not written ({self.root}): {exc.strerror}", stacklevel=2)
