"""What every engine runs on one batch: a loaded model with the run's text embeddings
and bank (``Scorer``), and the rule that makes one tiled image's result of its tiles."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..bank import ReferenceBank
from ..model import WinClip
from ..pool import MutualPool, input_digests
from ..tiling import Box, combine_scores
from . import NOT_FINITE, ImageResult, checked_result

IN_POOL = "in the --pool: a calibration image must not be a pool member (it matches itself)"


@dataclass
class Scorer:
    """A loaded model with what every prediction of a run shares: the class's text
    embeddings, the reference bank (WinCLIP+) or None (zero-shot), and whether maps are
    made."""

    model: WinClip
    text: torch.Tensor
    bank: ReferenceBank | None
    maps: bool
    pool: MutualPool | None = None  # pool mode of mutual scoring: scored against it
    refuse_pool_members: bool = False  # calibrate: a pool member is an error, not a score

    def predict(self, pixels: torch.Tensor) -> list[ImageResult]:
        """Results for a batch of preprocessed images (B, 3, H, W)."""
        if self.pool is not None:
            return self._predict_mutual(pixels, self.pool)
        out = self.model.predict(pixels, text=self.text, bank=self.bank, maps=self.maps)
        grids = out.grid_maps
        return [
            checked_result(float(score), None if grids is None else grids[j])
            for j, score in enumerate(out.image_scores.tolist())
        ]

    def _predict_mutual(self, pixels: torch.Tensor, pool: MutualPool) -> list[ImageResult]:
        out = self.model.predict_mutual(pixels, pool, batch_size=max(1, len(pixels)))
        grids = out.grid_maps
        assert grids is not None  # mutual scores always come with their maps
        members = torch.zeros(len(pixels), dtype=torch.bool)
        if self.refuse_pool_members:
            members = pool.excluded(input_digests(pixels)).any(dim=1).cpu()
        return [
            ImageResult(None, None, IN_POOL)
            if members[j]
            else checked_result(float(score), grids[j] if self.maps else None)
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
