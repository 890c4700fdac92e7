"""The report's pictures: the files a row names, found beside the rows files, and
their thumbnails as data: URIs (decoded safely: known formats, a pixel limit)."""

from __future__ import annotations

import base64
import io
import os
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageOps

THUMB_SIDE = 320  # longest side of an embedded thumbnail, pixels


THUMB_QUALITY = 80  # JPEG quality of thumbnails


# Raster formats a thumbnail may come from. No EPS/PDF (Ghostscript), no plug-in guessing.
SAFE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "PPM", "TGA")


# Decoding stops above this many pixels: a header can claim any size (decompression bomb).
MAX_PIXELS = 2**28


NEUTRAL_BACKGROUND = (128, 128, 128)  # transparent pixels, as the run shows them


def resolve(name: str, search_dirs: Sequence[Path]) -> str | None:
    """The regular file a row names: as given (relative to the current folder), else
    relative to each of ``search_dirs`` (the rows files' folders)."""
    if not name:
        return None
    candidates = [name]
    if not os.path.isabs(name):
        candidates += [os.path.join(d, name) for d in search_dirs]
    for candidate in candidates:
        try:
            if stat.S_ISREG(os.stat(candidate).st_mode):  # no FIFOs, devices, folders
                return candidate
        except (OSError, ValueError):
            continue
    return None


def href(target: str, base: str) -> str:
    """A percent-encoded link to ``target``: relative to ``base`` when possible."""
    absolute = os.path.abspath(target)
    try:
        relative = os.path.relpath(absolute, base).replace(os.sep, "/")
    except ValueError:  # another drive (Windows)
        absolute = absolute.replace(os.sep, "/")
        return "file://" + quote(
            absolute if absolute.startswith("/") else "/" + absolute,
            safe="/",
            errors="surrogateescape",
        )
    return quote(relative, safe="/", errors="surrogateescape")


def _rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        values = np.asarray(img, dtype=np.float64)
        values = np.nan_to_num(values)
        low, high = float(values.min(initial=0)), float(values.max(initial=0))
        scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
        img = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("P", "L", "1", "RGB") and "transparency" in img.info:
        try:
            img = img.convert("RGBA")
        except (ValueError, TypeError):
            img = img.copy()
            img.info.pop("transparency", None)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*NEUTRAL_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


@dataclass
class Thumb:
    uri: str = ""
    width: int = 0
    height: int = 0
    problem: str = ""  # why there is no thumbnail


def _thumbnail(path: str) -> Thumb:
    """A small JPEG data URI of an image file, or why there is none."""
    try:
        with Image.open(path, formats=SAFE_FORMATS) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                return Thumb(problem=f"too large: {width}x{height}")
            img.draft("RGB", (THUMB_SIDE * 2, THUMB_SIDE * 2))  # JPEG: decode at 1/2..1/8
            img.load()
            picture = _rgb(ImageOps.exif_transpose(img))
        picture.thumbnail((THUMB_SIDE, THUMB_SIDE))  # bicubic, reducing first when large
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=THUMB_QUALITY)
    except Exception as exc:  # any decoder failure: not an image we embed
        message = str(exc).split("\n", 1)[0][:200]
        return Thumb(problem=f"not an image ({exc.__class__.__name__}: {message})")
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return Thumb(uri, picture.width, picture.height)


def make_thumbnails(
    files: list[str],
    workers: int | None,
    progress: Callable[[int, int], None] | None,
) -> dict[str, Thumb]:
    """Thumbnails of ``files`` (distinct paths), made in parallel; Pillow releases the
    GIL while decoding and encoding, so threads use several cores."""
    total = len(files)
    if progress is not None:
        progress(0, total)
    if not files:
        return {}
    count = workers if workers and workers > 0 else min(8, os.cpu_count() or 1)
    results: dict[str, Thumb] = {}
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = {pool.submit(_thumbnail, f): f for f in files}
        for done, future in enumerate(as_completed(futures), 1):
            results[futures[future]] = future.result()
            if progress is not None:
                progress(done, total)
    return results
