"""Image outputs: heatmap overlays, saved maps, and the names they are written under."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_write

if TYPE_CHECKING:
    import torch

    from .data import InputImage
    from .tiling import Box


# Polynomial fit of matplotlib's perceptually uniform 'viridis' colormap (max error < 1%).
_VIRIDIS = np.array(
    [
        [0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
        [0.1050930431085774, 1.404613529898575, 1.384590162594685],
        [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
        [-4.634230498983486, -5.799100973351585, -19.33244095627987],
        [6.228269936347081, 14.17993336680509, 56.69055260068105],
        [4.776384997670288, -13.74514537774601, -65.35303263337234],
        [-5.435455855934631, 4.645852612178535, 26.3124352495832],
    ]
)
_LUT = np.clip(
    np.stack([np.polynomial.polynomial.polyval(np.linspace(0, 1, 256), c) for c in _VIRIDIS.T], 1),
    0,
    1,
)
COLORMAP = (_LUT * 255).round().astype(np.uint8)  # (256, 3)
OVERLAY_ALPHA = 0.5


# Rows colourised at a time: a 6000x4000 map never has a second full-size float copy.
_COLOR_ROWS = 64
# Up to this shorter side the legend has its original size (about 290x30 px); above it,
# bar and text grow with the image, so the legend stays readable on a whole-photo view.
LEGEND_BASE_SIDE = 720
JPEG_QUALITY = 90


@dataclass(frozen=True)
class OverlayStyle:
    """How image outputs are written: overlay format (png | jpg), the longer side overlays
    are downscaled to (None: the image's size), and the dtype of saved maps."""

    fmt: str = "png"
    max_side: int | None = None
    map_dtype: str = "float32"

    @property
    def suffix(self) -> str:
        return "." + self.fmt


def colorize(values: np.ndarray) -> np.ndarray:
    """(H, W) scores in [0, 1] -> (H, W, 3) uint8 colours; the scale is absolute, so the
    same colour means the same score in every image."""
    out = np.empty((*values.shape, 3), np.uint8)
    for start in range(0, max(1, values.shape[0]), _COLOR_ROWS):
        part = values[start : start + _COLOR_ROWS]
        out[start : start + _COLOR_ROWS] = COLORMAP[
            np.clip(np.rint(part * 255), 0, 255).astype(np.intp)
        ]
    return out


def legend_scale(width: int, height: int) -> int:
    """Multiplier of the legend's size: 1 up to LEGEND_BASE_SIDE, then proportional."""
    return max(1, round(min(width, height) / LEGEND_BASE_SIDE))


def _draw_legend(canvas: Image.Image) -> None:
    """A 0..1 colour bar in the bottom-right corner, when the image has room; it grows
    with the image (legend_scale)."""
    width, height = canvas.size
    if width < 96 or height < 48:
        return
    s = legend_scale(width, height)
    bar_w = max(48, min(width // 4, 256 * s))
    bar_h = max(6, min(height // 40, 16 * s))
    margin = max(4, bar_h // 2)
    text_w = 14 * s
    x0, y1 = width - bar_w - margin - text_w, height - margin
    y0 = y1 - bar_h
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([x0 - 16 * s, y0 - 4 * s, width - margin + 2 * s, y1 + 4 * s], fill=(0, 0, 0))
    gradient = colorize(np.tile(np.linspace(0, 1, bar_w), (bar_h, 1)))
    canvas.paste(Image.fromarray(gradient), (x0, y0))
    # s == 1: PIL's default font, exactly as before (overlays of small images unchanged).
    font = None if s == 1 else ImageFont.load_default(size=11 * s)
    text_y = y0 + (bar_h - 10 * s) // 2
    draw.text((x0 - 12 * s, text_y), "0", fill=(255, 255, 255), font=font)
    draw.text((x0 + bar_w + 4 * s, text_y), "1", fill=(255, 255, 255), font=font)


def render_overlay(
    image: Image.Image, anomaly_map: np.ndarray, max_side: int | None = None
) -> Image.Image:
    """The heatmap (same size as ``image``) blended over the image, with a colour bar;
    downscaled so that its longer side is at most ``max_side`` (legend drawn after)."""
    heat = Image.fromarray(colorize(anomaly_map))
    canvas = Image.blend(image.convert("RGB"), heat, OVERLAY_ALPHA)
    del heat
    if max_side is not None and max(canvas.size) > max_side:
        ratio = max_side / max(canvas.size)
        size = (max(1, round(canvas.width * ratio)), max(1, round(canvas.height * ratio)))
        canvas = canvas.resize(size, Image.Resampling.LANCZOS)
    _draw_legend(canvas)
    return canvas


def output_name(out_dir: Path, relative: str, suffix: str) -> Path:
    """File under ``out_dir`` mirroring the input's relative path (extension kept, so
    a.jpg and a.png never collide); '..' parts are neutralised."""
    parts = [
        p if p not in ("..", ".") else "__" for p in Path(relative).parts if p not in ("/", "")
    ]
    return out_dir.joinpath(*parts).with_name(parts[-1] + suffix)


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG under a temporary name, then rename: never a half-written file."""
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def save_overlay(image: Image.Image, path: Path, fmt: str = "png") -> None:
    """Write an overlay as PNG or JPEG (quality JPEG_QUALITY), atomically."""
    if fmt == "png":
        save_png(image, path)
        return
    atomic_write(path, lambda f: image.save(f, format="JPEG", quality=JPEG_QUALITY))


def _write_npy(f: IO[bytes], array: np.ndarray, dtype: np.dtype) -> None:
    # Header, then the rows converted a band at a time: no second full-size copy.
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
    np.lib.format.write_array_header_1_0(f, {**header, "shape": array.shape})
    for start in range(0, array.shape[0], _COLOR_ROWS):
        f.write(np.ascontiguousarray(array[start : start + _COLOR_ROWS], dtype=dtype).tobytes())


def save_npy(array: np.ndarray, path: Path, dtype: str = "float32") -> None:
    """Write a .npy (float32 or float16) under a temporary name, then rename."""
    if dtype == "float32" and array.dtype == np.float32:
        atomic_write(path, lambda f: np.save(f, array))
        return
    atomic_write(path, lambda f: _write_npy(f, array, np.dtype(dtype)))


def full_map(
    grid_map: torch.Tensor | None,
    tiles: list[tuple[Box, torch.Tensor]] | None,
    height: int,
    width: int,
) -> np.ndarray:
    """The (H, W) float32 map at the image's size: the grid map upsampled, or the tiles'
    grid maps stitched (each upsampled to its tile only)."""
    if tiles:
        from .tiling import MapStitcher

        stitcher = MapStitcher(height, width)
        for box, tile_map in tiles:
            stitcher.add(box, tile_map)
        return stitcher.result()
    from .scoring import upsample

    assert grid_map is not None
    return upsample(grid_map[None], (height, width))[0].numpy()


def write_image_outputs(
    image: InputImage,
    grid_map: torch.Tensor | None,
    out_dir: Path,
    save_maps: bool,
    tiles: list[tuple[Box, torch.Tensor]] | None = None,
    style: OverlayStyle | None = None,
) -> tuple[str, str]:
    """The overlay (and with ``save_maps`` the raw map) of one input, at the size it is
    shown; returns their paths ('' for a map not asked for). ``tiles``: a tiled image's
    boxes and grid maps (then ``grid_map`` is None). Holds one full-size float map and
    the decoded picture at a time."""
    from .data import open_image

    style = style or OverlayStyle()
    picture = open_image(image.path)
    full = full_map(grid_map, tiles, picture.height, picture.width)
    overlay = output_name(out_dir, image.relative, style.suffix)
    rendered = render_overlay(picture, full, style.max_side)
    del picture
    save_overlay(rendered, overlay, style.fmt)
    del rendered
    saved = ""
    if save_maps:
        map_path = output_name(out_dir, image.relative, ".npy")
        save_npy(full, map_path, style.map_dtype)
        saved = str(map_path)
    return str(overlay), saved
