"""Image outputs: heatmap overlays, saved maps, and the names they are written under."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_write
from .data import open_image
from .decision import ANOMALOUS, WHOLE_IMAGE
from .scoring import upsample
from .tiling import stitch

if TYPE_CHECKING:
    import torch

    from .conformal import Calibration
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


CONTOUR_COLOUR = (255, 40, 40)  # red: no viridis colour is close to it
LEGEND_TITLE = "map vs known-good images"
THRESHOLD_MARK = 0.75  # where the pixel threshold sits on a calibrated colour bar


@dataclass(frozen=True)
class ColourScale:
    """Colours anchored on a calibration: map value v is shown at colour position
    ``(v - low) / (high - low)`` (clipped to 0..1), with ``low`` the smallest map maximum
    of the known-good images, ``threshold`` the pixel threshold m_(k) at 3/4 of the bar
    and ``high = threshold + (threshold - low) / 3``. So every pixel darker than the
    best known-good image's peak is dark blue, the top quarter of the bar (green to
    yellow) is the anomalous region, and maps that bunch within hundredths still spread
    over the bar."""

    low: float
    threshold: float
    high: float

    @classmethod
    def of(cls, cal: Calibration | None, rule: object) -> ColourScale | None:
        """The scale of a run with a calibration and maps; None otherwise (absolute 0..1)."""
        threshold = getattr(rule, "pixel_threshold", None)
        if cal is None or cal.map_maxima is None or threshold is None:
            return None
        low = min(float(cal.map_maxima.min()), threshold)
        span = max(threshold - low, 1e-3)  # all maxima equal: still a readable bar
        low = threshold - span
        return cls(low, threshold, threshold + span * (1 - THRESHOLD_MARK) / THRESHOLD_MARK)

    def positions(self, values: np.ndarray) -> np.ndarray:
        """Map values -> colour positions in [0, 1]."""
        return np.clip((values - self.low) / (self.high - self.low), 0.0, 1.0)


@dataclass(frozen=True)
class Caption:
    """What an overlay says about its image: score, label, p-value; ``whole_image``: an
    anomalous image without an anomalous region (decision.WHOLE_IMAGE)."""

    score: float | None
    label: str
    p_value: float | None
    whole_image: bool = False

    def text(self) -> str:
        parts = [] if self.score is None else [f"score {self.score:.6f}"]
        label = WHOLE_IMAGE if self.whole_image else self.label
        parts += [label] if label else []
        parts += [] if self.p_value is None else [f"p {self.p_value:.6f}"]
        return "  ".join(parts)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def text_size(image: Image.Image) -> int:
    """A font size readable when the whole image fits a screen: ~1/30 of its short side."""
    return max(10, min(image.size) // 30)


def _draw_caption(canvas: Image.Image, caption: Caption) -> None:
    size = text_size(canvas)
    font = _font(size)
    draw = ImageDraw.Draw(canvas)
    pad = max(2, size // 4)
    box = draw.textbbox((pad, pad), caption.text(), font=font)
    draw.rectangle([0, 0, box[2] + pad, box[3] + pad], fill=(0, 0, 0))
    colour = CONTOUR_COLOUR if caption.label == ANOMALOUS else (255, 255, 255)
    draw.text((pad, pad), caption.text(), fill=colour, font=font)


def _draw_calibrated_legend(canvas: Image.Image, scale: ColourScale) -> None:
    """The colour bar of a ColourScale: its ends and the marked pixel threshold."""
    width, height = canvas.size
    size = max(8, text_size(canvas) * 3 // 4)
    font = _font(size)
    bar_w = max(64, min(width // 3, 600))
    bar_h = max(6, size // 2)
    margin = max(4, size // 2)
    draw = ImageDraw.Draw(canvas)
    # The box holds the title too: on a small image it is wider than the bar.
    title_w = round(draw.textlength(LEGEND_TITLE, font=font))
    x0 = width - max(bar_w, title_w) - margin * 3
    if x0 < 0 or height < 4 * size:
        return
    y1 = height - margin - size - 2
    y0 = y1 - bar_h
    draw.rectangle([x0 - margin, y0 - size - margin, width, height], fill=(0, 0, 0))
    canvas.paste(Image.fromarray(colorize(np.tile(np.linspace(0, 1, bar_w), (bar_h, 1)))), (x0, y0))
    mark = x0 + round(THRESHOLD_MARK * (bar_w - 1))
    draw.rectangle([mark - 1, y0 - 3, mark + 1, y1 + 3], fill=CONTOUR_COLOUR)
    white = (255, 255, 255)
    draw.text((x0, y0 - size - 2), LEGEND_TITLE, fill=white, font=font)
    draw.text((x0, y1 + 2), f"{scale.low:.3f}", fill=white, font=font)
    draw.text(
        (mark, y1 + 2), f"{scale.threshold:.3f} region", fill=CONTOUR_COLOUR, font=font, anchor="ma"
    )


def region_outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The pixels of ``mask`` on its border (4-neighbourhood), grown to ``thickness``."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    edge = mask & ~inner
    for _ in range(thickness - 1):
        grown = np.pad(edge, 1, constant_values=False)
        edge = edge | grown[:-2, 1:-1] | grown[2:, 1:-1] | grown[1:-1, :-2] | grown[1:-1, 2:]
    return edge


def _mark_point(canvas: Image.Image, point: tuple[int, int]) -> None:
    """A red ring with a cross at ``point``: where a reviewer looks first."""
    radius = max(6, min(canvas.size) // 20)
    width = max(2, radius // 5)
    (x, y), arm = point, radius // 2
    draw = ImageDraw.Draw(canvas)
    ring = [x - radius, y - radius, x + radius, y + radius]
    draw.ellipse(ring, outline=CONTOUR_COLOUR, width=width)
    draw.line([x - arm, y, x + arm, y], fill=CONTOUR_COLOUR, width=width)
    draw.line([x, y - arm, x, y + arm], fill=CONTOUR_COLOUR, width=width)


def render_overlay(
    image: Image.Image,
    anomaly_map: np.ndarray,
    scale: ColourScale | None = None,
    region: np.ndarray | None = None,
    caption: Caption | None = None,
    max_side: int | None = None,
    hotspot: tuple[int, int] | None = None,
) -> Image.Image:
    """The heatmap (same size as ``image``) blended over the image, with a colour bar.

    Without ``scale`` the colours are absolute (0..1); with it they are anchored on a
    calibration. ``region``: the anomalous pixels, outlined; ``caption``: drawn top left;
    ``max_side``: downscaled so its longer side is at most that (legend drawn after);
    ``hotspot``: (x, y) on the image to mark (a whole-image anomaly's hottest point).
    """
    values = anomaly_map if scale is None else scale.positions(anomaly_map)
    heat = Image.fromarray(colorize(values))
    canvas = Image.blend(image.convert("RGB"), heat, OVERLAY_ALPHA)
    if region is not None and region.any():
        outline = region_outline(region, max(1, min(canvas.size) // 150))
        pixels = np.asarray(canvas).copy()
        pixels[outline] = CONTOUR_COLOUR
        canvas = Image.fromarray(pixels)
    if max_side is not None and max(canvas.size) > max_side:
        ratio = max_side / max(canvas.size)
        size = (max(1, round(canvas.width * ratio)), max(1, round(canvas.height * ratio)))
        canvas = canvas.resize(size, Image.Resampling.LANCZOS)
    if hotspot is not None:
        fx, fy = canvas.width / image.width, canvas.height / image.height
        _mark_point(canvas, (round(hotspot[0] * fx), round(hotspot[1] * fy)))
    if scale is None:
        _draw_legend(canvas)
    else:
        _draw_calibrated_legend(canvas, scale)
    if caption is not None:
        _draw_caption(canvas, caption)
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
        return stitch([box for box, _ in tiles], [m for _, m in tiles], (height, width))

    assert grid_map is not None
    return upsample(grid_map[None], (height, width))[0].numpy()


@dataclass(frozen=True)
class ImageOutputs:
    """What was written for one input: paths ('' when not asked for) and the region size."""

    overlay: str
    map: str = ""
    mask: str = ""
    anomalous_pixels: int | None = None  # with a pixel threshold


def anomalous_region(full_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """The pixels of the full-size map above the pixel threshold (WINCLIP.md)."""
    return full_map > pixel_threshold


def write_mask(region: np.ndarray, path: Path) -> None:
    """A binary PNG at the image's size: 255 in the anomalous region, 0 elsewhere."""
    save_png(Image.fromarray(region.astype(np.uint8) * 255), path)


def write_image_outputs(
    image: InputImage,
    grid_map: torch.Tensor | None,
    out_dir: Path,
    save_maps: bool,
    tiles: list[tuple[Box, torch.Tensor]] | None = None,
    style: OverlayStyle | None = None,
    *,
    pixel_threshold: float | None = None,
    scale: ColourScale | None = None,
    caption: Caption | None = None,
    save_mask: bool = False,
) -> ImageOutputs:
    """The overlay (and with ``save_maps`` the raw map, with ``save_mask`` the region's
    mask) of one input, at the size it is shown. ``tiles``: a tiled image's boxes and
    grid maps (then ``grid_map`` is None). Holds one full-size float map and the decoded
    picture at a time."""

    style = style or OverlayStyle()
    picture = open_image(image.path)
    full = full_map(grid_map, tiles, picture.height, picture.width)
    region = None if pixel_threshold is None else anomalous_region(full, pixel_threshold)
    hotspot = None
    if caption is not None and caption.label == ANOMALOUS and not (region is None or region.any()):
        # Anomalous as a whole: say so, and mark the map's hottest point (look there first).
        caption = dataclasses.replace(caption, whole_image=True)
        row, col = np.unravel_index(int(np.argmax(full)), full.shape)
        hotspot = (int(col), int(row))
    overlay = output_name(out_dir, image.relative, style.suffix)
    rendered = render_overlay(picture, full, scale, region, caption, style.max_side, hotspot)
    del picture
    save_overlay(rendered, overlay, style.fmt)
    del rendered
    saved = mask = ""
    if save_maps:
        map_path = output_name(out_dir, image.relative, ".npy")
        save_npy(full, map_path, style.map_dtype)
        saved = str(map_path)
    if save_mask and region is not None:
        mask_path = output_name(out_dir, image.relative, ".mask.png")
        write_mask(region, mask_path)
        mask = str(mask_path)
    count = None if region is None else int(region.sum())
    return ImageOutputs(str(overlay), saved, mask, count)
