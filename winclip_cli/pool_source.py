"""Where pool mode's pool comes from (--pool DIR|FILE, --save-pool FILE): planned before
the model loads (a file read and checked, a folder's images found), built once it is
loaded (a folder's images decoded, tiled like the run, turned into the pool)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checks import check_bank_grid
from .data import InputImage, decode_tiles, find_images, open_image
from .errors import ImageReadError, PoolFileError, PoolMismatchError, UsageError
from .manifest import digest_of, file_sha256
from .model import WinClip
from .paths import check_writable_file
from .pool import MutualPool, load_pool, pool_fingerprint, save_pool
from .tiling import TileGrid, TileGridError


@dataclass
class PoolSource:
    """The pool of a run: the images of a --pool folder, or the pool of a --pool file;
    neither without --pool. ``save_to``: --save-pool."""

    source: Path | None = None
    images: list[InputImage] = field(default_factory=list)
    pool: MutualPool | None = None
    save_to: Path | None = None

    def identity(self) -> str | None:
        """What a run manifest records (compared on --resume): the pool file's
        fingerprint, or the folder's files' contents."""
        if self.pool is not None:
            return pool_fingerprint(self.pool)
        if self.images:
            return digest_of([file_sha256(image.path) for image in self.images])
        return None

    def member_hashes(self) -> set[str]:
        """The sha256 of each pool image's file (a folder's, or those a file records)."""
        if self.pool is not None:
            return set(self.pool.meta.get("sources", []))
        return {file_sha256(image.path) for image in self.images}


def check_calibration_pool(recorded: object, pool: Path | None, source: Path) -> None:
    """A pool-mode calibration needs its pool; any other one refuses a pool (exit 2).
    Which pool it was is checked once the pool is known (settings.check_loaded)."""
    if recorded is not None and pool is None:
        raise UsageError(
            f"--calibration {source} was made in pool mode (pool {recorded}): give the same --pool"
        )
    if recorded is None and pool is not None:
        raise UsageError(
            f"--calibration {source} was made without a pool: drop --pool, or calibrate "
            "with it (winclip calibrate GOOD --pool ...)"
        )


def plan_pool(source: Path | None, save_to: Path | None, grid: TileGrid) -> PoolSource:
    """The --pool of a run, checked without the model: a file read (exit 2 when it is no
    pool or has another tile grid), a folder's images found."""
    planned = PoolSource(source, save_to=save_to)
    if source is None:
        return planned
    if source.is_file():
        try:
            planned.pool = load_pool(source)
        except PoolFileError as exc:
            raise UsageError(f"--pool: {exc}") from exc
        check_bank_grid(planned.pool.meta, grid, f"--pool {source}")
        return planned
    planned.images = find_images([source])
    if not planned.images:
        raise UsageError(f"--pool {source}: no images found")
    if save_to is not None:
        check_writable_file(save_to)
    return planned


def outside_pool(
    images: list[InputImage], planned: PoolSource
) -> tuple[list[InputImage], list[str]]:
    """Calibration images that are not in the pool (by content): a pool member would
    match itself, its score be biased low and the false-alarm rate too high. Returns them
    and why others were left out."""
    if planned.source is None:
        return images, []
    members = planned.member_hashes()
    kept, left_out = [], []
    for image in images:
        if file_sha256(image.path) in members:
            left_out.append(f"{image.display}: in the --pool, not a calibration image")
        else:
            kept.append(image)
    return kept, left_out


def _pool_inputs(
    wc: WinClip, images: list[InputImage], grid: TileGrid, warn: Callable[[str], None]
) -> tuple[torch.Tensor, list[str]]:
    """The model inputs of the readable pool images (every tile, when tiled) and their
    files' sha256; an unreadable one is left out with a warning."""
    parts, hashes = [], []
    for image in images:
        try:
            if grid.is_single:
                parts.append(wc.preprocess(open_image(image.path))[None])
            else:
                parts.append(decode_tiles(image.path, grid, wc.preprocessor)[0])
            hashes.append(file_sha256(image.path))
        except (ImageReadError, TileGridError, OSError) as exc:
            warn(f"pool image {image.display} left out: {exc}")
    if not parts:
        raise UsageError("none of the --pool images could be read")
    return torch.cat(parts), hashes


def build_pool(
    planned: PoolSource, wc: WinClip, grid: TileGrid, batch_size: int, say: Callable[[str], None]
) -> MutualPool | None:
    """The run's pool on the loaded model: the file's, checked against the model, or
    one built from the folder's images (saved with --save-pool); None without --pool."""
    if planned.pool is not None:
        try:
            return wc.check_pool(planned.pool)
        except PoolMismatchError as exc:
            raise UsageError(f"--pool {planned.source}: {exc}") from exc
    if not planned.images:
        return None
    pixels, hashes = _pool_inputs(wc, planned.images, grid, say)
    pool = wc.mutual_pool(pixels, batch_size, None if grid.is_single else grid)
    pool.meta["sources"] = hashes
    if planned.save_to is not None:
        save_pool(pool, planned.save_to)
    return pool
