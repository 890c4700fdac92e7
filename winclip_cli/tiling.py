"""Tiling: WinCLIP on overlapping crops at the photo's own resolution (WINCLIP.md, "Tiling").

Geometry (`TileGrid`, `axis_tiles`, `tile_boxes`), stitching of the tiles'
grid maps into one map at the image's size (`MapStitcher`, `stitch`), the score rules
(`combine_scores`, `combine_map_max`) and two decode/preprocess helpers (`draft_scale`,
`mostly_upsampled`). Library code: no CLI, no model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# A split side shorter than this carries almost no picture and is squashed up to the
# model input anyway: the grid does not fit the image.
MIN_TILE_SIDE = 16
DRAFT_SCALES = (8, 4, 2)  # PIL's JPEG draft (DCT-domain) reductions, largest first

Box = tuple[int, int, int, int]  # (left, top, right, bottom), PIL crop convention

_GRID_TEXT = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


class TileGridError(ValueError):
    """The tile grid does not fit this image (one-line message; an error row for it)."""


@dataclass(frozen=True)
class TileGrid:
    """R rows x C columns of equal tiles; `overlap` is the fraction of a tile's side
    shared by neighbours. 1x1 is the untiled run."""

    rows: int = 1
    cols: int = 1
    overlap: float = 0.25

    def __post_init__(self) -> None:
        for name, value in (("rows", self.rows), ("cols", self.cols)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"tile {name} must be a whole number of at least 1; got {value!r}")
        _check_overlap(self.overlap)

    @classmethod
    def parse(cls, text: str, overlap: float = 0.25) -> TileGrid:
        """ "RxC" (e.g. "3x3", "2x4") with the given overlap; ValueError if malformed."""
        match = _GRID_TEXT.fullmatch(text)
        if match is None:
            raise ValueError(f"tile grid must be ROWSxCOLUMNS, like 3x3 or 2x4; got {text!r}")
        rows, cols = int(match.group(1)), int(match.group(2))
        if rows < 1 or cols < 1:
            raise ValueError(f"tile grid needs at least 1 row and 1 column, like 3x3; got {text!r}")
        return cls(rows, cols, float(overlap))

    @property
    def count(self) -> int:
        """Tiles per image (R*C)."""
        return self.rows * self.cols

    @property
    def is_single(self) -> bool:
        """1x1: the whole image, exactly the untiled behaviour."""
        return self.rows == 1 and self.cols == 1

    def __str__(self) -> str:
        return f"{self.rows}x{self.cols}"


def _check_overlap(overlap: float) -> None:
    # `not (0 <= o < 1)` also refuses NaN.
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise ValueError(f"tile overlap must be at least 0 and below 1; got {overlap!r}")


def _round_half_up(x: float) -> int:
    # WINCLIP.md says "round"; Python's round() is half-to-even (round(2.5) == 2), which
    # would make the geometry depend on the parity of a tie. Ties go up here.
    return math.floor(x + 0.5)


def _tile_size(length: int, count: int, overlap: float) -> int:
    """The tile side along one axis (whole side when unsplit); see `axis_tiles`."""
    if count == 1:
        return length
    size = _round_half_up(length / (count - (count - 1) * overlap))
    # count - (count-1)*o = 1 + (count-1)*(1-o) >= 1, so size <= length always.
    assert size <= length, (length, count, overlap, size)
    # The formula leaves pixels between tiles uncovered exactly when count*size < length
    # (only at overlaps near 0, e.g. 3 tiles at o=0 on 4000 px: 3*1333 = 3999). Widen to
    # the smallest side that covers; the spec's intent ("overlap o >= 0") is kept.
    return max(size, -(-length // count))


def axis_tiles(length: int, count: int, overlap: float) -> list[tuple[int, int]]:
    """(start, size) of each tile along an axis `length` pixels long, split `count` ways.

    size = round(length / (count - (count - 1) * overlap)), start_j = round(j * (length -
    size) / (count - 1)), so start_0 = 0 and the last tile ends at `length`; size = length
    when count = 1. "round" is round-half-up (floor(x + 0.5)), not Python's half-to-even.
    One deviation: when that size would leave pixels uncovered (count * size < length,
    only possible at overlaps near 0) it is raised to ceil(length / count).

    Raises TileGridError when the axis is split (count > 1) and the side would be under
    MIN_TILE_SIDE pixels; an unsplit axis is the whole side, however small.
    """
    if length < 1 or count < 1:
        raise ValueError(f"need a positive length and count; got {length} and {count}")
    _check_overlap(overlap)
    size = _tile_size(length, count, overlap)
    if count > 1 and size < MIN_TILE_SIDE:
        raise TileGridError(
            f"{count} tiles along {length} pixels would be {size} pixels each "
            f"(at least {MIN_TILE_SIDE} needed); use fewer tiles"
        )
    if count == 1:
        return [(0, length)]
    return [(_round_half_up(j * (length - size) / (count - 1)), size) for j in range(count)]


def tile_boxes(width: int, height: int, grid: TileGrid) -> list[Box]:
    """(left, top, right, bottom) crop boxes of the grid on a width x height image,
    row-major: row 0 left to right, then row 1, ...

    Raises TileGridError (naming the image size) when the grid does not fit.
    """
    tw = _tile_size(width, grid.cols, grid.overlap)
    th = _tile_size(height, grid.rows, grid.overlap)
    for split, side, what, fewer in (
        (grid.cols > 1, tw, "wide", "columns"),
        (grid.rows > 1, th, "high", "rows"),
    ):
        if split and side < MIN_TILE_SIDE:
            raise TileGridError(
                f"{grid} tiles on a {width}x{height} image would be {side} pixels {what}; "
                f"use fewer {fewer}"
            )
    xs = axis_tiles(width, grid.cols, grid.overlap)
    ys = axis_tiles(height, grid.rows, grid.overlap)
    return [(x, y, x + w, y + h) for y, h in ys for x, w in xs]


def _upsample(grid_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # The same call as model.upsample (tested equal), kept here so that tiling does not
    # import the model and open_clip.
    return F.interpolate(
        grid_map[None, None].float(), size=size, mode="bilinear", align_corners=False
    )[0, 0]


class MapStitcher:
    """One image's stitched map, built tile by tile: each pixel is the arithmetic mean of
    the upsampled maps of the tiles that cover it.

    Holds one full-size float32 sum and a uint8 coverage count; a tile's map is upsampled
    only to the tile's own size, never to the full image.
    """

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = int(height), int(width)
        self._sum: np.ndarray | None = np.zeros((self.height, self.width), np.float32)
        self._count = np.zeros((self.height, self.width), np.uint8)

    def add(self, box: Box, grid_map: torch.Tensor) -> None:
        """Upsample a tile's (gh, gw) grid map bilinearly (align_corners=False) to the box's
        size and add it over the box."""
        if self._sum is None:
            raise RuntimeError("MapStitcher.result() was already taken")
        left, top, right, bottom = box
        if not (0 <= left < right <= self.width and 0 <= top < bottom <= self.height):
            raise ValueError(f"tile box {box} is outside the {self.width}x{self.height} map")
        if grid_map.dim() != 2:
            raise ValueError(f"a tile's grid map must be (gh, gw); got {tuple(grid_map.shape)}")
        count = self._count[top:bottom, left:right]
        # About (1/(1-o))^2 tiles cover a pixel: 4 up to o = 0.4 (rounding can make it 9
        # just under 0.5). Any overlap below 1 is allowed: refuse rather than wrap at 255.
        if count.max() == np.iinfo(np.uint8).max:
            raise ValueError("more than 255 tiles cover one pixel")
        tile = _upsample(grid_map.detach(), (bottom - top, right - left)).cpu().numpy()
        self._sum[top:bottom, left:right] += tile
        count += 1

    def result(self) -> np.ndarray:
        """The (H, W) float32 mean map; the stitcher is spent afterwards (the division
        reuses the sum's memory). ValueError if a pixel is covered by no tile."""
        if self._sum is None:
            raise RuntimeError("MapStitcher.result() was already taken")
        if self._count.min() == 0:
            raise ValueError("some pixels are covered by no tile")
        out, self._sum = self._sum, None
        np.divide(out, self._count, out=out)
        return out


def stitch(
    boxes: Sequence[Box], grid_maps: Iterable[torch.Tensor], size: tuple[int, int]
) -> np.ndarray:
    """Stitch the tiles' grid maps (one per box, same order) into an (H, W) map;
    `size` is (height, width)."""
    stitcher = MapStitcher(*size)
    maps = list(grid_maps)
    if len(maps) != len(boxes):
        raise ValueError(f"{len(boxes)} tile boxes but {len(maps)} grid maps")
    for box, grid_map in zip(boxes, maps, strict=True):
        stitcher.add(box, grid_map)
    return stitcher.result()


def combine_scores(tile_scores: Iterable[float]) -> float:
    """The image score of a tiled image: the maximum of its tile scores (each tile scored
    by the rule of its mode)."""
    scores = [float(s) for s in tile_scores]
    if not scores:
        raise ValueError("no tile scores")
    return max(scores)


def combine_map_max(tile_grid_maps: Iterable[torch.Tensor | np.ndarray]) -> float:
    """`map_max` of a tiled image: the maximum over the tiles' grid maps (before
    upsampling, like the untiled `map_max`)."""
    maxima = [float(torch.as_tensor(m).max()) for m in tile_grid_maps]
    if not maxima:
        raise ValueError("no tile grid maps")
    return max(maxima)


def _input_hw(input_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    return int(input_size[0]), int(input_size[1])


def draft_scale(width: int, height: int, grid: TileGrid, input_size: int | tuple[int, int]) -> int:
    """The JPEG draft reduction (8, 4, 2, or 1 for none) that keeps every tile at least
    the model input (`input_size`: side, or (height, width)) in both directions.

    PIL's `draft` decodes a JPEG at 1/2, 1/4 or 1/8 of its size in the DCT domain, which
    is far faster and smaller for 12 MP photos. It applies only to JPEG files, before
    `load()`, and only when this returns more than 1, i.e. when each tile of the grid laid
    on the reduced image (ceil(width / s) x ceil(height / s)) is still at least the input
    size: the squash to the input then still downsamples, so the model sees about the
    same pixels. Sizes here are the displayed (EXIF-oriented) ones; a reduction divides
    both sides alike. To get scale s, call `img.draft(img.mode, (w // s, h // s))` with
    the stored size (w, h); PIL picks the largest reduction that fits that request.
    """
    in_h, in_w = _input_hw(input_size)
    for scale in DRAFT_SCALES:
        w, h = -(-width // scale), -(-height // scale)
        try:
            boxes = tile_boxes(w, h, grid)
        except TileGridError:
            continue
        if all(r - le >= in_w and b - t >= in_h for le, t, r, b in boxes):
            return scale
    return 1


def mostly_upsampled(boxes: Sequence[Box], input_size: int | tuple[int, int]) -> bool:
    """True when more than half the tiles are smaller than the model input on either
    side (they are upsampled, so tiling gains little; the caller warns once)."""
    in_h, in_w = _input_hw(input_size)
    small = sum(1 for le, t, r, b in boxes if r - le < in_w or b - t < in_h)
    return 2 * small > len(boxes)


def grid_meta(grid: TileGrid) -> dict[str, object]:
    """What a reference bank records about the tiles it was built from; nothing for 1x1,
    so untiled banks stay byte-identical to those made before tiling existed."""
    return {} if grid.is_single else {"tiles": str(grid), "tile_overlap": float(grid.overlap)}


def grid_of_meta(meta: dict[str, object]) -> TileGrid:
    """The tile grid a bank's meta records (no key: 1x1, the banks made before tiling)."""
    overlap = meta.get("tile_overlap", 0.25)
    return TileGrid.parse(str(meta.get("tiles", "1x1")), float(overlap))  # type: ignore[arg-type]


def same_grid(a: TileGrid, b: TileGrid) -> bool:
    """The same tiles: rows and columns, and the overlap unless both are 1x1."""
    if (a.rows, a.cols) != (b.rows, b.cols):
        return False
    return a.is_single or a.overlap == b.overlap


def describe_grid(grid: TileGrid) -> str:
    """`3x3 tiles (overlap 0.25)`, or `1x1 tiles (untiled)`, for messages."""
    return (
        f"{grid} tiles (untiled)" if grid.is_single else f"{grid} tiles (overlap {grid.overlap:g})"
    )
