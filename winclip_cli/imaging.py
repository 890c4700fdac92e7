"""Turning any decodable picture into the RGB image a user sees, and resizing it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# Transparent pixels are shown on a neutral grey: neither black nor white reads as a defect.
NEUTRAL_BACKGROUND = (128, 128, 128)


def _wide_to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer or float greyscale to 8 bits without clipping."""
    with np.errstate(all="ignore"):  # signalling NaNs in float files warn on any touch
        return Image.fromarray(_scaled_to_8bit(img), mode="L")


def _scaled_to_8bit(img: Image.Image) -> np.ndarray:
    values = np.asarray(img, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():  # float images may hold NaN or infinities: put them at the ends
        real = values[finite]
        low, high = (real.min(), real.max()) if real.size else (0.0, 0.0)
        values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    low, high = values.min(initial=0), values.max(initial=0)  # low <= 0 <= high
    if img.mode.startswith("I;16"):
        scaled = values / 65535.0 * 255.0
    elif img.mode == "I" and low >= 0 and high <= 65535:
        scaled = values / (65535.0 if high > 255 else 255.0) * 255.0
    elif img.mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255.0
    else:  # any other range (negative values, 32-bit): stretch what is there
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of any PIL image: wide greyscale scaled, transparency on neutral grey."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _wide_to_8bit(img)
    if img.mode in ("P", "L", "1", "RGB") and "transparency" in img.info:
        try:  # a palette entry or colour key marked transparent
            img = img.convert("RGBA")
        except (ValueError, TypeError):  # a malformed key: show the picture without it
            img = img.copy()
            img.info.pop("transparency", None)
    if img.mode == "La":  # premultiplied; PIL converts it to nothing but LA
        img = img.convert("LA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*NEUTRAL_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


@dataclass(frozen=True)
class Preprocessor:
    """PIL image -> (3, H, W) model input: RGB, whole-image bicubic resize, normalised.

    No centre crop, which would hide defects at the edges; PIL's bicubic filter is
    antialiased. Picklable, so DataLoader workers can run it.
    """

    size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        resized = to_rgb(image).resize((self.size[1], self.size[0]), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return ((x - mean) / std).contiguous()
