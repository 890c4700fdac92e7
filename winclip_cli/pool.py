"""Mutual-scoring pools: features of unlabelled images of a part, in memory and on disk.

A pool holds, for each of its M images (or tiles), the tapped layers after LNAMD's
LayerNorm. The r x r means and unit vectors follow from them exactly, so a file keeps
that one stage (a third of the size of every degree's features) and the degrees are
derived when the pool is first used. Each member also keeps the sha256 of its
preprocessed input, so that an image scored against a pool it belongs to is left out
of its own comparison (WINCLIP.md "Pool mode").

Files are written whole (write-then-rename) and checked on reading, like bank files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import PoolFileError
from .mutual import aggregate, distance_operands
from .payloads import read_torch_file, write_torch_file

POOL_FORMAT = "winclip-mutual-pool"
POOL_VERSION = 1
_DIGEST = re.compile(r"[0-9a-f]{64}")


def input_digests(x: torch.Tensor) -> list[str]:
    """sha256 of each preprocessed input (B, 3, H, W): the identity of a pool member."""
    flat = x.detach().float().cpu().contiguous()
    return [hashlib.sha256(image.numpy().tobytes()).hexdigest() for image in flat]


@dataclass
class MutualPool:
    """Pool features: ``layers`` (num_layers, M, gh, gw, C) float32, layer-normed;
    ``digests`` one per member; ``meta`` what the pool was made with."""

    layers: torch.Tensor
    digests: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    # Set by WinClip.check_pool: which model checked it (a pool is validated once).
    checked_for: str | None = field(default=None, repr=False, compare=False)
    _operands: dict[tuple[int, int, torch.dtype], torch.Tensor] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def num_images(self) -> int:
        """M, the number of pool members (images, or tiles of them)."""
        return int(self.layers.shape[1])

    def right_operand(self, layer: int, r: int, dtype: torch.dtype) -> torch.Tensor:
        """MSM's right operand (M, L, width) of one layer at degree r (made once, kept)."""
        key = (layer, r, dtype)
        if key not in self._operands:
            _, right = distance_operands(aggregate(self.layers[layer], r), dtype)
            self._operands[key] = right
        return self._operands[key]

    def excluded(self, digests: list[str]) -> torch.Tensor:
        """(B, M) bool: True where pool member j is the query image i itself."""
        rows = [[mine == theirs for theirs in self.digests] for mine in digests]
        return torch.tensor(rows, dtype=torch.bool, device=self.layers.device).view(
            len(digests), self.num_images
        )

    def to(self, device: torch.device | str) -> MutualPool:
        """The pool on ``device`` (derived operands are made again there)."""
        return MutualPool(self.layers.to(device), list(self.digests), dict(self.meta))


def pool_fingerprint(pool: MutualPool) -> str:
    """The identity of a pool's features: its members' inputs, in order, and what made
    them (weights, precision, tapped blocks, tile grid); not the model's name, as for
    banks. A pool built from a folder and the file saved from it share it."""
    made = {k: pool.meta.get(k) for k in ("weights", "precision", "blocks", "tiles")}
    text = json.dumps({"members": pool.digests, **made}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pool_payload(pool: MutualPool) -> dict[str, Any]:
    """The pool as plain tensors and strings (safe to torch.load)."""
    return {
        "format": POOL_FORMAT,
        "version": POOL_VERSION,
        "meta": dict(pool.meta),
        "layers": pool.layers.detach().float().cpu().contiguous(),
        "digests": list(pool.digests),
    }


def pool_from_payload(payload: Any, where: str) -> MutualPool:
    """The pool of a ``pool_payload``; PoolFileError (naming ``where``) when it is not one."""
    if not isinstance(payload, dict) or payload.get("format") != POOL_FORMAT:
        raise PoolFileError(f"{where} is not a winclip mutual-scoring pool file")
    if payload.get("version") != POOL_VERSION:
        raise PoolFileError(f"{where}: pool format version {payload.get('version')} unsupported")
    layers, digests, meta = payload.get("layers"), payload.get("digests"), payload.get("meta")
    if not isinstance(layers, torch.Tensor) or layers.ndim != 5 or layers.shape[1] < 1:
        raise PoolFileError(f"{where}: damaged pool file (its features are not a pool's)")
    if not isinstance(digests, list) or len(digests) != layers.shape[1]:
        raise PoolFileError(f"{where}: damaged pool file (one member identity per image)")
    if not all(isinstance(d, str) and _DIGEST.fullmatch(d) for d in digests):
        raise PoolFileError(f"{where}: damaged pool file (a member identity is not a sha256)")
    if not isinstance(meta, dict):
        raise PoolFileError(f"{where}: damaged pool file (no record of its model)")
    return MutualPool(layers.float(), digests, dict(meta))


def save_pool(pool: MutualPool, path: str | os.PathLike[str]) -> None:
    """Write a pool file (a torch file of plain tensors and strings, safe to load)."""
    write_torch_file(path, pool_payload(pool))


def load_pool(path: str | os.PathLike[str]) -> MutualPool:
    """Read a pool file written by save_pool; PoolFileError when it is not one."""
    path = Path(path)
    payload = read_torch_file(path, "pool file", PoolFileError, mmap=True)
    return pool_from_payload(payload, str(path))
