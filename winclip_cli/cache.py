"""On-disk text-embedding cache and reference-bank files.

Both are written to a temporary name and renamed, so a reader never sees half a file,
and both are checked on reading: a corrupt or mismatched entry is never trusted.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
import torch

from .atomic import atomic_write
from .errors import BankFileError
from .payloads import BANK_FORMAT, BANK_VERSION, BankFile
from .schemas import check

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


@dataclass
class ReferenceBank:
    """Features of K normal images: patch tokens and window embeddings, L2-normalised.

    ``patch_tokens``: (K * num_patches, width); ``windows[k]``: (K * num_windows_k, dim).
    ``meta`` records what the bank was built with, so a model it does not fit refuses it.
    """

    patch_tokens: torch.Tensor
    windows: dict[int, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    # Set by WinClip.check_bank: which model checked it (a bank is validated once).
    checked_for: str | None = field(default=None, repr=False, compare=False)

    @property
    def num_images(self) -> int:
        return int(self.meta.get("num_images", 0))

    def to(self, device: torch.device | str) -> ReferenceBank:
        return ReferenceBank(
            self.patch_tokens.to(device),
            {k: v.to(device) for k, v in self.windows.items()},
            dict(self.meta),
        )


def bank_payload(bank: ReferenceBank) -> dict[str, Any]:
    """The bank as plain tensors and strings (safe to torch.load): a bank file's content,
    and the bank inside a calibration file."""
    return {
        "format": BANK_FORMAT,
        "version": BANK_VERSION,
        "meta": bank.meta,
        "patch_tokens": bank.patch_tokens.detach().float().cpu(),
        "windows": {str(k): v.detach().float().cpu() for k, v in bank.windows.items()},
    }


def bank_from_payload(payload: Any, where: str) -> ReferenceBank:
    """The bank of a ``bank_payload``; BankFileError (naming ``where``) when it is not one."""
    if not isinstance(payload, dict) or payload.get("format") != BANK_FORMAT:
        raise BankFileError(f"{where} is not a winclip reference bank file")
    if payload.get("version") != BANK_VERSION:
        raise BankFileError(f"{where}: bank format version {payload.get('version')} unsupported")
    checked = check(BankFile, payload, where, BankFileError)
    windows = {int(k): v for k, v in checked.windows.items()}
    return ReferenceBank(checked.patch_tokens, windows, dict(payload["meta"]))


def save_bank(bank: ReferenceBank, path: str | os.PathLike[str]) -> None:
    """Write a bank file (a torch file of plain tensors and strings, safe to load)."""
    payload = bank_payload(bank)
    atomic_write(Path(path), lambda f: torch.save(payload, f))


def load_bank(path: str | os.PathLike[str]) -> ReferenceBank:
    """Read a bank file written by save_bank; raises BankFileError when it is not one."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles before failing
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise BankFileError(f"reference bank {path} not found") from exc
    except Exception as exc:
        raise BankFileError(f"{path} is not a readable reference bank file") from exc
    return bank_from_payload(payload, str(path))
