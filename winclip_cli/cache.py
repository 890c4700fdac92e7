"""On-disk text-embedding cache.

Entries are written to a temporary name and renamed, so a reader never sees half a file,
and checked on reading: a corrupt or mismatched entry is never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write

CACHE_ENV = "WINCLIP_CACHE_DIR"


def default_cache_dir() -> Path:
    """$WINCLIP_CACHE_DIR, else the platform's per-user cache folder + /winclip."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "winclip" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "winclip"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "winclip"


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
