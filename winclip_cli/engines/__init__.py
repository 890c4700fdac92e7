"""How predictions are computed for a list of images: the engine seam.

An engine takes the inputs still to score, in input order, and yields one ImageResult
per input in that same order. The pipeline turns results into rows and image files; it
does not know where or how they were computed (this process, a Ray cluster).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from ..data import InputImage

NOT_FINITE = "the model gave no finite score (damaged weights?)"


@dataclass
class ImageResult:
    """One input's outcome: a score and (with maps) its grid map, or an error."""

    score: float | None
    grid_map: torch.Tensor | None = None  # (gh, gw) on the patch grid
    error: str | None = None

    @property
    def map_max(self) -> float | None:
        return None if self.grid_map is None else float(self.grid_map.max())


def checked_result(score: float, grid_map: torch.Tensor | None) -> ImageResult:
    """The result for a prediction; NaN reaches no label, JSON or colour: an error."""
    finite = math.isfinite(score) and (grid_map is None or bool(grid_map.isfinite().all()))
    return ImageResult(score, grid_map) if finite else ImageResult(None, None, NOT_FINITE)


class Engine(Protocol):
    """Predictions for images, in their order."""

    def predict(self, images: Sequence[InputImage]) -> Iterator[ImageResult]:
        """One result per image, in input order, as soon as each is known."""
        ...
