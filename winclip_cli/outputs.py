"""Image outputs: heatmap overlays, saved maps, and the names they are written under."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from .atomic import atomic_write

if TYPE_CHECKING:
    import torch

    from .data import InputImage


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


def colorize(values: np.ndarray) -> np.ndarray:
    """(H, W) scores in [0, 1] -> (H, W, 3) uint8 colours; the scale is absolute, so the
    same colour means the same score in every image."""
    return COLORMAP[np.clip(np.rint(values * 255), 0, 255).astype(np.intp)]


def _draw_legend(canvas: Image.Image) -> None:
    """A small 0..1 colour bar in the bottom-right corner, when the image has room."""
    width, height = canvas.size
    if width < 96 or height < 48:
        return
    bar_w = max(48, min(width // 4, 256))
    bar_h = max(6, min(height // 40, 16))
    margin = max(4, bar_h // 2)
    x0, y1 = width - bar_w - margin - 14, height - margin
    y0 = y1 - bar_h
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([x0 - 16, y0 - 4, width - margin + 2, y1 + 4], fill=(0, 0, 0))
    gradient = colorize(np.tile(np.linspace(0, 1, bar_w), (bar_h, 1)))
    canvas.paste(Image.fromarray(gradient), (x0, y0))
    draw.text((x0 - 12, y0 + (bar_h - 10) // 2), "0", fill=(255, 255, 255))
    draw.text((x0 + bar_w + 4, y0 + (bar_h - 10) // 2), "1", fill=(255, 255, 255))


def render_overlay(image: Image.Image, anomaly_map: np.ndarray) -> Image.Image:
    """The heatmap (same size as ``image``) blended over the image, with a colour bar."""
    heat = Image.fromarray(colorize(anomaly_map))
    canvas = Image.blend(image.convert("RGB"), heat, OVERLAY_ALPHA)
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


def save_npy(array: np.ndarray, path: Path) -> None:
    """Write a .npy under a temporary name, then rename."""
    atomic_write(path, lambda f: np.save(f, array.astype(np.float32, copy=False)))


def write_image_outputs(
    image: InputImage, grid_map: torch.Tensor, out_dir: Path, save_maps: bool
) -> tuple[str, str]:
    """The overlay (and with ``save_maps`` the raw map) of one input, at the size it is
    shown; returns their paths ('' for a map not asked for)."""
    from .data import open_image
    from .scoring import upsample

    picture = open_image(image.path)
    full = upsample(grid_map[None], (picture.height, picture.width))[0].numpy()
    overlay = output_name(out_dir, image.relative, ".png")
    save_png(render_overlay(picture, full), overlay)
    saved = ""
    if save_maps:
        map_path = output_name(out_dir, image.relative, ".npy")
        save_npy(full, map_path)
        saved = str(map_path)
    return str(overlay), saved
