"""What a labelled dataset is made of, whatever its layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class TestSample:
    """One test image: label 1 = anomalous (then ``mask`` is its ground-truth file)."""

    __test__ = False  # not a pytest class

    path: Path
    label: int
    mask: Path | None = None


@dataclass
class CategoryData:
    """A category's training normals (reference pool) and labelled test images."""

    name: str
    layout: str
    root: Path
    train_good: list[Path] = field(default_factory=list)
    test: list[TestSample] = field(default_factory=list)

    @property
    def num_anomalous(self) -> int:
        """Number of anomalous test images."""
        return sum(s.label for s in self.test)


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted; [] when it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
