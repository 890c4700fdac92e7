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
