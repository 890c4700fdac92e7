"""What every engine runs on one batch: a loaded model with the run's text embeddings
and bank (``Scorer``), and the rule that makes one tiled image's result of its tiles."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..bank import ReferenceBank
from ..model import WinClip
from ..tiling import Box, combine_scores
from . import NOT_FINITE, ImageResult, checked_result


@dataclass
class Scorer:
    """A loaded model with what every prediction of a run shares: the class's text
    embeddings, the reference bank (WinCLIP+) or None (zero-shot), and whether maps are
    made."""

    model: WinClip
    text: torch.Tensor
    bank: ReferenceBank | None
    maps: bool

    def predict(self, pixels: torch.Tensor) -> list[ImageResult]:
        """Results for a batch of preprocessed images (B, 3, H, W)."""
        out = self.model.predict(pixels, text=self.text, bank=self.bank, maps=self.maps)
        grids = out.grid_maps
        return [
            checked_result(float(score), None if grids is None else grids[j])
            for j, score in enumerate(out.image_scores.tolist())
        ]


def tiled_result(
    boxes: list[Box], size: tuple[int, int], tiles: list[ImageResult], maps: bool
) -> ImageResult:
    """One tiled image's result from its tiles' results (WINCLIP.md, "Tiling"): the score
    is the maximum tile score; with maps, the tiles' grid maps with their boxes."""
    if any(t.score is None for t in tiles):
        return ImageResult(None, None, NOT_FINITE)
    score = combine_scores(t.score for t in tiles if t.score is not None)
    parts = [(box, t.grid_map) for box, t in zip(boxes, tiles, strict=True)]
    kept = [(box, m) for box, m in parts if m is not None] if maps else None
    return ImageResult(score, None, None, kept, size)
