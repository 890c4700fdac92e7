"""How predictions are computed for a list of images: the engine seam.

An engine takes the inputs still to score, in input order, and yields one ImageResult
per input in that same order. The pipeline turns results into rows and image files; it
does not know where or how they were computed (this process, a Ray cluster).

An engine is built from the Plan's EngineSpec (never from options) by its entry in
engines.registry, and may take in as many images as it needs before it yields: the
pipeline pulls results lazily, so an engine that scores a set of images against each
other (up to a few hundred) buffers them and then yields their results in order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..options import ModelOptions, RayOptions
from ..prompts import PromptSet
from ..tiling import TileGrid, combine_map_max

if TYPE_CHECKING:
    import torch

    from ..data import InputImage
    from ..decision import DecisionRule
    from ..tiling import Box

NOT_FINITE = "the model gave no finite score (damaged weights?)"


@dataclass
class ImageResult:
    """One input's outcome: a score and (with maps) its grid map, or an error.

    A tiled image (grid other than 1x1) has no ``grid_map``: with maps, ``tiles`` holds
    each tile's box on the image and its (gh, gw) grid map, and ``size`` the image's
    displayed (width, height), from which the full-size map is stitched
    (tiling.MapStitcher). Plain tensors and tuples: picklable for remote engines."""

    score: float | None
    grid_map: torch.Tensor | None = None  # (gh, gw) on the patch grid
    error: str | None = None
    tiles: list[tuple[Box, torch.Tensor]] | None = None
    size: tuple[int, int] | None = None  # (width, height); set for tiled images

    @property
    def has_map(self) -> bool:
        """There is a map to draw (an overlay to write)."""
        return self.grid_map is not None or bool(self.tiles)

    @property
    def map_max(self) -> float | None:
        """The maximum of the grid map; tiled: over the tiles' grid maps (WINCLIP.md)."""
        if self.grid_map is not None:
            return float(self.grid_map.max())
        if self.tiles:
            return combine_map_max(m for _, m in self.tiles)
        return None


def checked_result(score: float, grid_map: torch.Tensor | None) -> ImageResult:
    """The result for a prediction; NaN reaches no label, JSON or colour: an error."""
    finite = math.isfinite(score) and (grid_map is None or bool(grid_map.isfinite().all()))
    return ImageResult(score, grid_map) if finite else ImageResult(None, None, NOT_FINITE)


class Engine(Protocol):
    """Predictions for images, in their order."""

    def predict(self, images: Sequence[InputImage]) -> Iterator[ImageResult]:
        """One result per image, in input order, as soon as each is known."""
        ...


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine is built from, decided by planning before the model loads."""

    name: str  # --engine: a key of engines.registry.ENGINES
    batch_size: int  # images per forward pass (tiles, when tiled)
    workers: int  # decoding processes of a local engine (0: in this one)
    grid: TileGrid  # --tiles / --tile-overlap, parsed once
    model: ModelOptions  # what a remote worker loads (the driver's model)
    prompts: PromptSet
    maps_only_anomalous: bool = False  # --maps anomalous: a second pass for those
    rule: DecisionRule | None = None  # what "anomalous" means for that pass
    ray: RayOptions = field(default_factory=RayOptions)
    mutual_set: int | None = None  # --mutual: set mode in sets of at most this many
