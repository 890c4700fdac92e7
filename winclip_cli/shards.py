"""`--shard I/N`: one of N contiguous parts of the sorted input list, for job arrays.

The parts are cut like numpy.array_split (sizes differ by at most 1, the first parts
larger), so the shards' rows concatenated in order are the rows of one unsharded run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_shard(text: str) -> tuple[int, int]:
    """(I, N) of "I/N" with 1 <= I <= N; ValueError with the reason otherwise."""
    match = _SHARD.fullmatch(text)
    if match is None:
        raise ValueError(f"--shard {text!r}: use I/N with whole numbers, like 2/8")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ValueError(f"--shard {text}: N must be at least 1")
    if not 1 <= index <= count:
        raise ValueError(f"--shard {text}: I counts from 1 to N ({count})")
    return index, count


def shard_bounds(total: int, index: int, count: int) -> tuple[int, int]:
    """[start, stop) of shard ``index`` (1-based) of ``count`` over ``total`` items."""
    size, extra = divmod(total, count)
    i = index - 1
    start = i * size + min(i, extra)  # the first `extra` shards hold one more
    return start, start + size + (1 if i < extra else 0)


def shard_of(items: Sequence[T], index: int, count: int) -> list[T]:
    """The items of shard ``index`` of ``count`` (empty when count > len(items) and
    index is past the last item)."""
    start, stop = shard_bounds(len(items), index, count)
    return list(items[start:stop])
