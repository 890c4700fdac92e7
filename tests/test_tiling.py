"""Tiling (WINCLIP.md, "Tiling"): geometry, stitching, score rules and odd sizes, each
against a slow, obvious reference."""

from __future__ import annotations

import itertools
import math
import random
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from winclip_cli.tiling import (
    MIN_TILE_SIDE,
    MapStitcher,
    TileGrid,
    TileGridError,
    axis_tiles,
    combine_map_max,
    combine_scores,
    draft_scale,
    mostly_upsampled,
    stitch,
    tile_boxes,
)

HALF = Fraction(1, 2)


# ---------------------------------------------------------------- references


def ref_axis(length: int, count: int, overlap: float) -> list[tuple[int, int]] | None:
    """WINCLIP.md's formulas in exact rational arithmetic, round half up; None when the
    axis is split into tiles under MIN_TILE_SIDE. The size is widened to ceil(L/C) where
    the formula alone would leave a gap (documented deviation)."""
    if count == 1:
        return [(0, length)]
    o = Fraction(overlap)
    size = math.floor(Fraction(length) / (count - (count - 1) * o) + HALF)
    size = max(size, math.ceil(Fraction(length, count)))
    if size < MIN_TILE_SIDE:
        return None
    return [
        (math.floor(Fraction(j * (length - size), count - 1) + HALF), size) for j in range(count)
    ]


def ref_bilinear(grid: np.ndarray, out_h: int, out_w: int, y: int, x: int) -> float:
    """One pixel of a bilinear, align_corners=False resize, written out by hand."""
    in_h, in_w = grid.shape

    def src(dst: int, n_in: int, n_out: int) -> tuple[int, int, float]:
        s = max((dst + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(math.floor(s), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        return i0, i1, s - i0

    y0, y1, ly = src(y, in_h, out_h)
    x0, x1, lx = src(x, in_w, out_w)
    top = (1 - lx) * grid[y0, x0] + lx * grid[y0, x1]
    bottom = (1 - lx) * grid[y1, x0] + lx * grid[y1, x1]
    return float((1 - ly) * top + ly * bottom)


def ref_stitch(boxes, grids, height: int, width: int) -> np.ndarray:
    """Per pixel: the mean, over the tiles whose box holds it, of that tile's upsampled map."""
    out = np.full((height, width), np.nan)
    for y in range(height):
        for x in range(width):
            values = [
                ref_bilinear(g, b - t, r - le, y - t, x - le)
                for (le, t, r, b), g in zip(boxes, grids, strict=True)
                if le <= x < r and t <= y < b
            ]
            if values:
                out[y, x] = sum(values) / len(values)
    return out


def random_cases(seed: int, n: int, max_side: int):
    rng = random.Random(seed)
    specials = [0.0, 0.25, 0.5, 0.1, 1 / 3, 0.49, 0.9]
    for _ in range(n):
        w = rng.choice([rng.randint(1, 40), rng.randint(1, max_side)])
        h = rng.choice([rng.randint(1, 40), rng.randint(1, max_side)])
        o = rng.choice(specials) if rng.random() < 0.4 else rng.uniform(0, 0.95)
        yield w, h, rng.randint(1, 8), rng.randint(1, 8), o


# ---------------------------------------------------------------- the grid spec


@pytest.mark.parametrize(
    ("text", "rows", "cols"), [("3x3", 3, 3), ("2x4", 2, 4), ("1x1", 1, 1), (" 10X2 ", 10, 2)]
)
def test_parse_accepts_rows_by_columns(text, rows, cols):
    grid = TileGrid.parse(text, 0.3)
    assert (grid.rows, grid.cols, grid.overlap) == (rows, cols, 0.3)
    assert grid.count == rows * cols
    assert str(grid) == f"{rows}x{cols}"
    assert grid.is_single == (rows == cols == 1)


@pytest.mark.parametrize(
    "text", ["0x3", "3x0", "a", "3", "-1x3", "3x-2", "3x3x3", "", "x3", "2.5x2"]
)
def test_parse_refuses_malformed_grids(text):
    with pytest.raises(ValueError, match="tile grid") as info:
        TileGrid.parse(text, 0.25)
    assert "\n" not in str(info.value)
    assert not isinstance(info.value, TileGridError)  # a usage error, not a per-image one


@pytest.mark.parametrize("overlap", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_overlap_outside_zero_to_one_is_refused(overlap):
    with pytest.raises(ValueError, match="overlap"):
        TileGrid.parse("2x2", overlap)
    with pytest.raises(ValueError, match="overlap"):
        TileGrid(2, 2, overlap)


def test_default_grid_is_untiled():
    assert TileGrid() == TileGrid(1, 1, 0.25)
    assert TileGrid().is_single and TileGrid().count == 1 and str(TileGrid()) == "1x1"


# ---------------------------------------------------------------- geometry


def test_axis_tiles_matches_the_exact_formula_on_many_cases():
    rng = random.Random(11)
    checked = 0
    for _ in range(20000):
        length = rng.randint(1, 20000)
        count = rng.randint(1, 12)
        o = rng.choice([0.0, 0.25, 0.5, 0.1, rng.uniform(0, 0.99)])
        want = ref_axis(length, count, o)
        if want is None:
            with pytest.raises(TileGridError):
                axis_tiles(length, count, o)
        else:
            assert axis_tiles(length, count, o) == want, (length, count, o)
            checked += 1
    assert checked > 15000


def test_rounding_is_half_up_not_half_even():
    # 3 tiles of 16 at o=0.25 on 40 pixels: starts 0, 12, 24 -> j*(40-16)/2 exact.
    # 2 tiles at o=0 on 33: 33/2 = 16.5 -> 17 (half-even would give 16 and a gap).
    assert axis_tiles(33, 2, 0.0) == [(0, 17), (16, 17)]
    # 3 tiles on 61 at o=0.25: 61/2.5 = 24.4 -> 24; starts 0, 18.5 -> 19, 37.
    assert axis_tiles(61, 3, 0.25) == [(0, 24), (19, 24), (37, 24)]


def test_zero_overlap_gap_is_closed_by_widening():
    # The formula alone: round(4000/3) = 1333, 3*1333 = 3999 < 4000 leaves a column bare.
    tiles = axis_tiles(4000, 3, 0.0)
    assert tiles == [(0, 1334), (1333, 1334), (2666, 1334)]


def test_boxes_cover_the_image_and_overlap_as_specified():
    checked = 0
    for w, h, rows, cols, o in random_cases(seed=7, n=4000, max_side=300):
        grid = TileGrid(rows, cols, o)
        xs, ys = ref_axis(w, cols, o), ref_axis(h, rows, o)
        if xs is None or ys is None:
            with pytest.raises(TileGridError):
                tile_boxes(w, h, grid)
            continue
        boxes = tile_boxes(w, h, grid)
        checked += 1
        assert len(boxes) == rows * cols
        # Row-major, from the reference edges.
        assert boxes == [(x, y, x + tw, y + th) for y, th in ys for x, tw in xs]
        covered = np.zeros((h, w), np.int32)
        for box in boxes:
            assert all(isinstance(v, int) for v in box)
            left, top, right, bottom = box
            assert 0 <= left < right <= w and 0 <= top < bottom <= h
            covered[top:bottom, left:right] += 1
        assert covered.min() >= 1, (w, h, rows, cols, o)
        # Per axis, about 1/(1-o) tiles reach a pixel (2 below o = 0.5, but rounding can
        # make it 3 just under 0.5); the uint8 count in MapStitcher relies on this staying small.
        per_axis = math.ceil(1 / (1 - o)) + 1
        assert covered.max() <= min(rows, per_axis) * min(cols, per_axis)
        if o <= 0.4:
            assert covered.max() <= 4, (w, h, rows, cols, o)
        # First tile at 0, last ending at the far edge, all tiles the same size.
        assert boxes[0][:2] == (0, 0) and boxes[-1][2:] == (w, h)
        assert len({(r - le, b - t) for le, t, r, b in boxes}) == 1
        for axis_tiles_, n in ((xs, cols), (ys, rows)):
            size = axis_tiles_[0][1]
            for (s0, _), (s1, _) in itertools.pairwise(axis_tiles_):
                shared = s0 + size - s1
                assert abs(shared - o * size) <= 2, (w, h, rows, cols, o, n, shared, size)
    assert checked > 1000


def test_large_images_against_the_reference():
    for w, h, rows, cols, o in random_cases(seed=3, n=3000, max_side=20000):
        xs, ys = ref_axis(w, cols, o), ref_axis(h, rows, o)
        grid = TileGrid(rows, cols, o)
        if xs is None or ys is None:
            with pytest.raises(TileGridError):
                tile_boxes(w, h, grid)
        else:
            assert tile_boxes(w, h, grid) == [(x, y, x + a, y + b) for y, b in ys for x, a in xs]


def test_single_tile_is_the_whole_image():
    for w, h in [(1, 1), (1, 5000), (5000, 1), (4000, 3000), (7, 5)]:
        for o in (0.0, 0.25, 0.9):
            assert tile_boxes(w, h, TileGrid(1, 1, o)) == [(0, 0, w, h)]


def test_known_3x3_boxes():
    assert tile_boxes(4000, 3000, TileGrid(3, 3, 0.25)) == [
        (0, 0, 1600, 1200), (1200, 0, 2800, 1200), (2400, 0, 4000, 1200),
        (0, 900, 1600, 2100), (1200, 900, 2800, 2100), (2400, 900, 4000, 2100),
        (0, 1800, 1600, 3000), (1200, 1800, 2800, 3000), (2400, 1800, 4000, 3000),
    ]  # fmt: skip


def crop_tiles(image: Image.Image, grid: TileGrid) -> list[Image.Image]:
    """The grid's tiles cut from ``image`` by their boxes, row-major (what decoding does)."""
    return [image.crop(box) for box in tile_boxes(image.width, image.height, grid)]


def test_crop_tiles_are_the_pixels_of_the_boxes():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    grid = TileGrid(2, 3, 0.3)
    boxes = tile_boxes(130, 90, grid)
    tiles = crop_tiles(image, grid)
    assert len(tiles) == len(boxes) == 6
    for tile, (le, t, r, b) in zip(tiles, boxes, strict=True):
        assert tile.mode == "RGB" and tile.size == (r - le, b - t)
        assert np.array_equal(np.asarray(tile), pixels[t:b, le:r])


# ---------------------------------------------------------------- odd sizes


def test_one_pixel_wide_image():
    assert tile_boxes(1, 1, TileGrid(1, 1)) == [(0, 0, 1, 1)]
    # 3 rows, 1 column on 1x5000 (W x H): the rows split, the single column is the pixel.
    boxes = tile_boxes(1, 5000, TileGrid(3, 1))
    assert [(le, r) for le, _, r, _ in boxes] == [(0, 1)] * 3
    assert boxes[0][1] == 0 and boxes[-1][3] == 5000
    # Splitting the 1-pixel width itself cannot fit.
    with pytest.raises(TileGridError, match=r"1x3 tiles on a 1x5000 image would be 1 pixels wide"):
        tile_boxes(1, 5000, TileGrid(1, 3))


def test_seven_by_five_thousand():
    assert tile_boxes(7, 5000, TileGrid(1, 1)) == [(0, 0, 7, 5000)]
    boxes = tile_boxes(7, 5000, TileGrid(8, 1, 0.25))
    assert len(boxes) == 8 and all(r - le == 7 and b - t == 800 for le, t, r, b in boxes)
    with pytest.raises(TileGridError, match="use fewer columns"):
        tile_boxes(7, 5000, TileGrid(8, 2))


def test_extreme_aspect_strip():
    boxes = tile_boxes(20000, 16, TileGrid(1, 8, 0.25))
    assert len(boxes) == 8
    assert all(b - t == 16 and r - le == 3200 for le, t, r, b in boxes)
    assert boxes[-1][2] == 20000
    assert mostly_upsampled(boxes, 240)  # 16 pixels high: every tile is squashed up
    with pytest.raises(
        TileGridError, match=r"2x8 tiles on a 20000x16 image would be 9 pixels high; use fewer rows"
    ):
        tile_boxes(20000, 16, TileGrid(2, 8))


def test_grid_too_fine_is_a_one_line_tile_grid_error():
    with pytest.raises(TileGridError) as info:
        tile_boxes(20, 5000, TileGrid(3, 3))
    assert (
        str(info.value) == "3x3 tiles on a 20x5000 image would be 8 pixels wide; use fewer columns"
    )
    assert isinstance(info.value, ValueError)
    # Exactly MIN_TILE_SIDE fits; one pixel less does not.
    assert tile_boxes(16 * 2 - 4, 100, TileGrid(1, 2, 0.25))[0][2] == 16  # 28 / 1.75 = 16
    with pytest.raises(TileGridError):
        tile_boxes(26, 100, TileGrid(1, 2, 0.25))  # 26 / 1.75 = 14.9 -> 15


# ---------------------------------------------------------------- stitching


@pytest.mark.parametrize(
    ("width", "height", "grid", "grid_hw"),
    [
        (61, 43, TileGrid(2, 3, 0.25), (5, 7)),
        (50, 37, TileGrid(3, 2, 0.4), (4, 4)),
        (40, 40, TileGrid(2, 2, 0.0), (3, 6)),
        (37, 23, TileGrid(1, 2, 0.25), (15, 15)),  # grid finer than the tile: downsampled
        (37, 23, TileGrid(1, 1, 0.25), (5, 5)),
    ],
)
def test_stitch_matches_a_per_pixel_loop(width, height, grid, grid_hw):
    rng = np.random.default_rng(width * height)
    boxes = tile_boxes(width, height, grid)
    grids = [rng.random(grid_hw).astype(np.float32) for _ in boxes]
    got = stitch(boxes, [torch.from_numpy(g) for g in grids], (height, width))
    want = ref_stitch(boxes, grids, height, width)
    assert got.dtype == np.float32 and got.shape == (height, width)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_stitch_of_hand_made_overlapping_boxes():
    # Not from tile_boxes: up to 3 boxes on a pixel, odd sizes, a 1-pixel box.
    boxes = [(0, 0, 37, 23), (5, 3, 20, 11), (10, 0, 11, 1), (30, 10, 37, 23)]
    rng = np.random.default_rng(5)
    grids = [rng.random((4, 6)).astype(np.float32) for _ in boxes]
    got = stitch(boxes, [torch.from_numpy(g) for g in grids], (23, 37))
    np.testing.assert_allclose(got, ref_stitch(boxes, grids, 23, 37), rtol=0, atol=1e-5)


def test_single_tile_stitch_is_exactly_the_untiled_upsample():
    from winclip_cli.model import upsample

    torch.manual_seed(0)
    for h, w, gh in [(3000, 4000, 15), (23, 37, 15), (1, 1, 15), (5000, 1, 7), (16, 20000, 15)]:
        g = torch.rand(gh, gh)
        (box,) = tile_boxes(w, h, TileGrid(1, 1))
        got = stitch([box], [g], (h, w))
        assert np.array_equal(got, upsample(g[None], (h, w))[0].numpy())


def test_a_planted_high_cell_lands_in_its_tile():
    width, height, gh = 300, 200, 15
    grid = TileGrid(3, 3, 0.25)
    boxes = tile_boxes(width, height, grid)
    grids = [torch.zeros(gh, gh) for _ in boxes]
    hot = 4  # the centre tile
    grids[hot][9, 7] = 1.0  # row 9, column 7 of its grid
    full = stitch(boxes, grids, (height, width))
    le, t, r, b = boxes[hot]
    ys, xs = np.nonzero(full)
    assert ys.min() >= t and ys.max() < b and xs.min() >= le and xs.max() < r
    y, x = np.unravel_index(np.argmax(full), full.shape)
    cell_w, cell_h = (r - le) / gh, (b - t) / gh
    assert abs(x - (le + (7 + 0.5) * cell_w)) <= cell_w
    assert abs(y - (t + (9 + 0.5) * cell_h)) <= cell_h
    # Where only the centre tile covers, its upsampled map is the value: no averaging down.
    from winclip_cli.model import upsample

    alone = upsample(grids[hot][None], (b - t, r - le))[0].numpy()
    assert boxes[3][2] <= x < boxes[5][0] and boxes[1][3] <= y < boxes[7][1]
    assert full[y, x] == alone[y - t, x - le] == alone.max() > 0.5


def test_stitcher_counts_overlaps_and_refuses_misuse():
    s = MapStitcher(4, 6)
    s.add((0, 0, 4, 4), torch.full((2, 2), 1.0))
    s.add((2, 0, 6, 4), torch.full((2, 2), 3.0))
    out = s.result()
    assert np.array_equal(out[:, :2], np.full((4, 2), 1.0, np.float32))
    assert np.array_equal(out[:, 2:4], np.full((4, 2), 2.0, np.float32))
    assert np.array_equal(out[:, 4:], np.full((4, 2), 3.0, np.float32))
    with pytest.raises(RuntimeError):
        s.result()
    with pytest.raises(RuntimeError):
        s.add((0, 0, 1, 1), torch.zeros(2, 2))
    bare = MapStitcher(4, 6)
    bare.add((0, 0, 3, 4), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="covered by no tile"):
        bare.result()
    with pytest.raises(ValueError, match="outside"):
        MapStitcher(4, 6).add((0, 0, 7, 4), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="boxes"):
        stitch([(0, 0, 6, 4)], [], (4, 6))


def test_stitching_holds_one_full_size_float_map():
    # 3000 x 2000 at 3x3: the sum is 24 MB, the uint8 count 6 MB. A full-resolution float
    # map per tile (or a float count) would add 24 MB or more.
    h, w = 2000, 3000
    boxes = tile_boxes(w, h, TileGrid(3, 3))
    maps = [torch.rand(15, 15) for _ in boxes]
    tracemalloc.start()
    try:
        out = stitch(boxes, maps, (h, w))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (h, w)
    assert peak < h * w * 4 + h * w + 8_000_000, peak


# ---------------------------------------------------------------- scores


def test_image_score_and_map_max_are_maxima_over_tiles():
    assert combine_scores([0.1, 0.7, 0.3]) == 0.7
    assert combine_scores([torch.tensor(0.2), np.float32(0.25)]) == pytest.approx(0.25)
    maps = [torch.zeros(3, 3), torch.full((3, 3), 0.2), torch.zeros(3, 3)]
    maps[2][1, 2] = 0.9
    assert combine_map_max(maps) == pytest.approx(0.9)
    assert combine_map_max([np.full((2, 2), 0.4)]) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        combine_scores([])
    with pytest.raises(ValueError):
        combine_map_max([])


# ---------------------------------------------------------------- decode and warn helpers


def ref_draft_scale(width, height, grid, side):
    best = 1
    for s in (2, 4, 8):
        w, h = math.ceil(width / s), math.ceil(height / s)
        xs, ys = ref_axis(w, grid.cols, grid.overlap), ref_axis(h, grid.rows, grid.overlap)
        if xs and ys and xs[0][1] >= side and ys[0][1] >= side:
            best = s
    return best


def test_draft_scale_examples():
    # 3x3 on 4000x3000: tiles 1600x1200; /4 -> 400x300 >= 240, /8 -> 200x150 < 240.
    assert draft_scale(4000, 3000, TileGrid(3, 3), 240) == 4
    # Untiled: /8 -> 500x375 >= 240.
    assert draft_scale(4000, 3000, TileGrid(1, 1), 240) == 8
    assert draft_scale(300, 300, TileGrid(1, 1), 240) == 1
    assert draft_scale(480, 480, TileGrid(1, 1), 240) == 2
    assert draft_scale(479, 480, TileGrid(1, 1), 240) == 2  # PIL decodes ceil(479/2) = 240
    assert draft_scale(478, 480, TileGrid(1, 1), 240) == 1
    assert draft_scale(4000, 3000, TileGrid(1, 1), (400, 240)) == 4  # (height, width)


def test_draft_scale_against_the_reference():
    for w, h, rows, cols, o in random_cases(seed=5, n=2000, max_side=12000):
        grid = TileGrid(rows, cols, o)
        assert draft_scale(w, h, grid, 240) == ref_draft_scale(w, h, grid, 240), (w, h, grid)


@pytest.mark.parametrize(("width", "height", "scale"), [(1001, 750, 4), (999, 757, 8), (64, 48, 2)])
def test_pil_draft_request_from_the_docstring_gives_that_reduction(tmp_path, width, height, scale):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (width, height), (120, 80, 40)).save(path, quality=90)
    with Image.open(path) as img:
        img.draft(img.mode, (width // scale, height // scale))
        assert img.size == (math.ceil(width / scale), math.ceil(height / scale))


def test_mostly_upsampled_means_more_than_half():
    big, small = (0, 0, 300, 300), (0, 0, 100, 300)
    assert mostly_upsampled([small, small, small, big], 240)
    assert not mostly_upsampled([small, small, big, big], 240)  # half is not most
    assert not mostly_upsampled([big], 240)
    assert mostly_upsampled([(0, 0, 300, 239)], 240)  # too low counts too
    assert not mostly_upsampled([(0, 0, 300, 239)], (200, 300))
