"""Labelled dataset layouts (MVTec AD, VisA): finding categories, test images, masks.

A new layout is a module here with ``category_dirs``/``read_category`` style readers,
and one branch in ``discover``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..data import IMAGE_EXTENSIONS
from ..errors import DatasetError, exception_reason
from . import mvtec, visa
from .samples import CategoryData, TestSample

LAYOUTS = ("mvtec", "visa")

__all__ = ["LAYOUTS", "CategoryData", "DatasetError", "TestSample", "discover", "load_mask"]


def detect_layout(root: Path) -> str:
    """'visa' when ROOT/split_csv/1cls.csv exists, 'mvtec' when a category tree is there."""
    if (root / visa.CSV).is_file():
        return "visa"
    if mvtec.category_dirs(root):
        return "mvtec"
    raise DatasetError(
        f"no dataset layout found under {root}: expected MVTec AD "
        f"(<category>/test/<defect>/, <category>/train/good/) or VisA ({visa.CSV})"
    )


def _select(available: Sequence[str], categories: Sequence[str] | None, root: Path) -> list[str]:
    """The requested categories (all by default), refusing unknown names."""
    if not available:
        raise DatasetError(f"no categories found under {root}")
    if not categories:
        return list(available)
    unknown = [c for c in categories if c not in available]
    if unknown:
        raise DatasetError(
            f"unknown category {', '.join(unknown)} under {root}; available: {', '.join(available)}"
        )
    return list(dict.fromkeys(categories))


def is_dataset_file(root: Path, path: Path) -> bool:
    """Whether ``path`` is part of the dataset under ``root``: an image, a mask or the
    VisA split CSV. Results of an earlier eval kept there (`--json data/results.json`)
    are not."""
    try:
        resolved = path.resolve()
        if not resolved.is_relative_to(root.resolve()):
            return False
        return path.suffix.lower() in IMAGE_EXTENSIONS or resolved == (root / visa.CSV).resolve()
    except OSError:
        return False


def discover(
    root: str | os.PathLike[str], layout: str = "auto", categories: Sequence[str] | None = None
) -> list[CategoryData]:
    """Find the categories of an MVTec AD or VisA tree (``layout`` 'auto', 'mvtec', 'visa').

    Only the selected ``categories`` (all when None) are read and checked. Raises
    DatasetError for an unknown layout or category, a category without test images, or
    an anomalous test image without a ground-truth mask.
    """
    root = Path(root)
    if not root.is_dir():
        why = "is not a folder" if root.exists() else "not found"
        raise DatasetError(f"dataset folder {why}: {root}")
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "mvtec":
        folders = mvtec.category_dirs(root)
        found = [
            mvtec.read_category(n, folders[n]) for n in _select(list(folders), categories, root)
        ]
    elif layout == "visa":
        if not (root / visa.CSV).is_file():
            raise DatasetError(f"not a VisA tree: {root / visa.CSV} not found")
        by_object: dict[str, list[dict[str, str]]] = {}
        for row in visa.read_csv(root):
            by_object.setdefault(row["object"], []).append(row)
        names = _select(sorted(by_object), categories, root)
        found = [visa.read_category(n, root, by_object[n]) for n in names]
    else:
        raise DatasetError(f"unknown layout {layout!r}: use auto, {', '.join(LAYOUTS)}")
    for data in found:
        if not data.test:
            raise DatasetError(f"category {data.name} has no test images")
        for sample in data.test:
            if sample.mask is not None:
                _check_mask_fits(sample.mask, sample.path)
    return found


def _check_mask_fits(mask: Path, image: Path) -> None:
    """Headers only (no decoding): a mask that is no image, or whose shape differs from its
    image's, is found before any model time is spent. A different size of the same shape
    is fine: both are resized to the model's input."""
    sizes = []
    for path, what in ((mask, "mask"), (image, "image")):
        try:
            with Image.open(path) as img:
                sizes.append(img.size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise DatasetError(f"cannot read {what} {path}: {exception_reason(err)}") from err
    (mw, mh), (iw, ih) = sizes
    if abs(mw * ih - mh * iw) > 0.01 * iw * ih:  # aspect ratios differ by over 1 %
        raise DatasetError(
            f"mask {mask} is {mw}x{mh}, its image {image} is {iw}x{ih}: the mask would not "
            "line up with the image"
        )


def load_mask(path: Path | None, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask at ``size`` (nearest-neighbour resize, > 0); all False for None.

    Read without the RGB conversion of images: 16-bit 0/1 masks would round to zero.
    """
    if path is None:
        return np.zeros(size, dtype=bool)
    try:
        with Image.open(path) as img:
            img.load()
            mask = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read mask {path}: {exception_reason(err)}") from err
    if mask.mode not in ("1", "L", "I", "I;16", "F"):
        mask = mask.convert("L")
    resized = mask.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(resized) > 0
