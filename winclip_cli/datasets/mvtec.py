"""The MVTec AD layout: <category>/train/good/, <category>/test/<defect>/ and
<category>/ground_truth/<defect>/<stem>_mask.png."""

from __future__ import annotations

from pathlib import Path

from ..data import IMAGE_EXTENSIONS
from ..errors import DatasetError
from .samples import CategoryData, TestSample, image_files


def category_dirs(root: Path) -> dict[str, Path]:
    """Category name -> folder; ROOT itself when it is one category (has test/)."""
    if (root / "test").is_dir():
        return {root.resolve().name: root}
    if not root.is_dir():
        return {}
    dirs = (d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith("."))
    return {d.name: d for d in dirs if (d / "test").is_dir() or (d / "train").is_dir()}


def _find_mask(folder: Path, stem: str) -> Path | None:
    """MVTec AD names masks ``<stem>_mask.png``; accept any image extension, or ``<stem>.*``."""
    for name in (f"{stem}_mask", stem):
        for ext in (".png", *sorted(IMAGE_EXTENSIONS - {".png"})):
            if (folder / f"{name}{ext}").is_file():
                return folder / f"{name}{ext}"
    return None


def read_category(name: str, folder: Path) -> CategoryData:
    """Read one MVTec AD category folder, checking every anomalous image has a mask."""
    data = CategoryData(name, "mvtec", folder, train_good=image_files(folder / "train" / "good"))
    test_dir = folder / "test"
    defects = sorted(d for d in test_dir.iterdir() if d.is_dir()) if test_dir.is_dir() else []
    for defect in defects:
        label = 0 if defect.name == "good" else 1
        for path in image_files(defect):
            mask = _find_mask(folder / "ground_truth" / defect.name, path.stem) if label else None
            if label and mask is None:
                expected = folder / "ground_truth" / defect.name / f"{path.stem}_mask.png"
                raise DatasetError(f"category {name}: no ground-truth mask for {path} ({expected})")
            data.test.append(TestSample(path, label, mask))
    return data
