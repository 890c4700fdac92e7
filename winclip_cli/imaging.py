"""Turning any decodable picture into the RGB image a user sees, and resizing it."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Transparent pixels are shown on a neutral grey: neither black nor white reads as a defect.
NEUTRAL_BACKGROUND = (128, 128, 128)


def _wide_to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer or float greyscale to 8 bits without clipping."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and values.max(initial=0) <= 65535):
        high = 65535.0 if img.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        scaled = values / high * 255.0
    elif img.mode == "F" and values.min(initial=0) >= 0 and values.max(initial=0) <= 1:
        scaled = values * 255.0
    else:  # any other range: stretch what is there
        low, high = values.min(initial=0), values.max(initial=0)
        scaled = (values - low) / (high - low) * 255.0 if high > low else values * 0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of any PIL image: wide greyscale scaled, transparency on neutral grey."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _wide_to_8bit(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*NEUTRAL_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def resize_to_tensor_array(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Whole-image bicubic resize (no crop; PIL filters are antialiased) to (H, W, 3) float32
    in [0, 1]. ``size`` is (height, width)."""
    resized = to_rgb(img).resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.float32) / 255.0
