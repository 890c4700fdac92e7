"""Choosing the K reference images from a folder: the one picker that fewshot,
calibrate and eval share, so the same folder and seed give the same references."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from .data import open_image
from .errors import ImageReadError

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
