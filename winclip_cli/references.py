"""Choosing the K reference images from a folder: the one picker that fewshot,
calibrate and eval share, so the same folder and seed give the same references; and the
calibration images, which are never a reference."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from .data import InputImage, open_image
from .errors import ImageReadError
from .manifest import file_sha256

T = TypeVar("T")


def pick_references(
    candidates: Sequence[T],
    k: int,
    seed: int | None,
    path_of: Callable[[T], Path],
    name_of: Callable[[T], str],
) -> tuple[list[T], list[str]]:
    """The first ``k`` decodable candidates, in sorted order or, with ``seed``, after a
    ``random.Random(seed)`` shuffle; and why unreadable ones were passed over.

    ``candidates`` are in sorted order (as found). ``path_of`` / ``name_of`` map a
    candidate to the file to open and the name to show in messages.
    """
    order = list(candidates)
    if seed is not None:
        random.Random(seed).shuffle(order)
    chosen: list[T] = []
    skipped: list[str] = []
    for item in order:
        if len(chosen) == k:
            break
        try:
            open_image(path_of(item))
            chosen.append(item)
        except ImageReadError as exc:
            skipped.append(f"reference {name_of(item)} skipped: {exc}")
    return chosen, skipped


def _identity(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """(device, inode) and content hash of a file; None for what can't be read."""
    try:
        st = os.stat(path)
        node: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except OSError:
        return None, None
    try:
        return node, file_sha256(path)
    except OSError:
        return node, None


def calibration_images(
    images: Iterable[InputImage], references: Iterable[InputImage]
) -> tuple[list[InputImage], list[str]]:
    """The images that calibrate: never a reference (the same file under any name, or a
    copy of its bytes), and each file once. Returns them and why others were left out."""
    seen_nodes: set[tuple[int, int]] = set()
    seen_hashes: set[str] = set()
    for ref in references:
        node, digest = _identity(ref.path)
        seen_nodes |= {node} if node else set()
        seen_hashes |= {digest} if digest else set()
    ref_nodes, ref_hashes = set(seen_nodes), set(seen_hashes)
    kept, left_out = [], []
    for image in images:
        node, digest = _identity(image.path)
        if (node and node in ref_nodes) or (digest and digest in ref_hashes):
            left_out.append(f"{image.display}: a reference image, not a calibration image")
        elif (node and node in seen_nodes) or (digest and digest in seen_hashes):
            left_out.append(f"{image.display}: a duplicate of another calibration image")
        else:
            kept.append(image)
        seen_nodes |= {node} if node else set()
        seen_hashes |= {digest} if digest else set()
    return kept, left_out
