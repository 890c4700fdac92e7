"""The local engine: one model in this process, inputs decoded by DataLoader workers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..cache import ReferenceBank
from ..data import InputImage, batches
from ..model import WinClip
from . import ImageResult, checked_result


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


class LocalEngine:
    """Batches of ``batch_size`` decoded by ``workers`` processes (0: in this one), so
    decoding overlaps inference; batches are pinned for a fast copy to a CUDA device."""

    def __init__(self, scorer: Scorer, batch_size: int, workers: int) -> None:
        self.scorer, self.batch_size, self.workers = scorer, batch_size, workers

    def predict(self, images: Sequence[InputImage]) -> Iterator[ImageResult]:
        wc = self.scorer.model
        pin = wc.device.type == "cuda"
        for batch in batches(images, wc.preprocessor, self.batch_size, self.workers, pin):
            scored = self.scorer.predict(batch.pixels) if batch.pixels is not None else []
            results = dict(zip(batch.readable, scored, strict=True))
            for index in batch.indices:
                error = batch.errors.get(index)
                yield ImageResult(None, None, error) if error is not None else results[index]
