"""The VisA layout: split_csv/1cls.csv lists every image, its split, label and mask."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import DatasetError
from .samples import CategoryData, TestSample

CSV = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")


def read_csv(root: Path) -> list[dict[str, str]]:
    csv_path = root / CSV
    try:
        with csv_path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{csv_path} lacks the column(s) {', '.join(missing)}")
            return [{k: (row.get(k) or "").strip() for k in COLUMNS} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"cannot read {csv_path}: {err}") from err


def _visa_file(root: Path, relative: str, what: str) -> Path:
    path = root / relative
    if not relative or not path.is_file():
        raise DatasetError(f"{what} listed in {CSV} not found: {path}")
    return path


def read_category(name: str, root: Path, rows: list[dict[str, str]]) -> CategoryData:
    """One VisA object from its 1cls.csv rows, checking files and labels."""
    data = CategoryData(name, "visa", root)
    for row in rows:
        label = {"normal": 0, "anomaly": 1}.get(row["label"].lower())
        if label is None:
            raise DatasetError(f"{CSV}: unknown label {row['label']!r} for {row['image']}")
        split = row["split"].lower()
        if split == "train" and label == 0:
            data.train_good.append(_visa_file(root, row["image"], "image"))
        elif split == "test":
            image = _visa_file(root, row["image"], "image")
            mask = _visa_file(root, row["mask"], f"mask of {row['image']}") if label else None
            data.test.append(TestSample(image, label, mask))
    data.train_good.sort()
    return data
