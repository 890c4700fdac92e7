"""Set mode of mutual scoring (--mutual): the images of a run scored against each other.

Not a Scorer on batches like the other engines: a set's images must all be decoded
before any of them can be scored, so the engine buffers one set (at most --mutual-set
images, mutual.split_sets), scores it in one predict_mutual call, and yields its
results in input order before it decodes the next set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from ..data import InputImage, batches
from ..model import WinClip
from ..mutual import split_sets
from . import EngineSpec, ImageResult, checked_result
from .scorer import Scorer

ALONE = "set mode needs another readable image in its set to compare this one with"


class MutualSetEngine:
    """Set mode (WINCLIP.md "Mutual scoring") over the inputs, in sets of at most
    ``set_size``. An unreadable image is an error row and no member of its set."""

    def __init__(
        self, model: WinClip, set_size: int, batch_size: int, workers: int, maps: bool
    ) -> None:
        self.model, self.set_size, self.maps = model, set_size, maps
        self.batch_size, self.workers = batch_size, workers

    def predict(self, images: Sequence[InputImage]) -> Iterator[ImageResult]:
        for members in split_sets(len(images), self.set_size):
            yield from self._score_set([images[i] for i in members])

    def _decode(self, images: Sequence[InputImage]) -> tuple[list[str | None], torch.Tensor]:
        """Each image's error (None when readable), and the readable ones' pixels."""
        wc = self.model
        errors: list[str | None] = [None] * len(images)
        pixels = []
        pin = wc.device.type == "cuda"
        for batch in batches(images, wc.preprocessor, self.batch_size, self.workers, pin):
            for index, error in batch.errors.items():
                errors[index] = error
            if batch.pixels is not None:
                pixels.append(batch.pixels)
        empty = torch.zeros(0, 3, *wc.input_size)
        return errors, torch.cat(pixels) if pixels else empty

    def _score_set(self, images: Sequence[InputImage]) -> Iterator[ImageResult]:
        errors, pixels = self._decode(images)
        if len(pixels) < 2:
            yield from (ImageResult(None, None, error or ALONE) for error in errors)
            return
        out = self.model.predict_mutual(pixels, None, self.batch_size)
        scores, grids = out.image_scores.tolist(), out.grid_maps
        position = 0
        for error in errors:
            if error is not None:
                yield ImageResult(None, None, error)
                continue
            grid = grids[position] if self.maps and grids is not None else None
            yield checked_result(float(scores[position]), grid)
            position += 1


def build(spec: EngineSpec, scorer: Scorer, warn: Callable[[str], None]) -> MutualSetEngine:
    """Set mode's engine of ``spec`` (planning refused what set mode can't do)."""
    assert spec.mutual_set is not None
    size, batch = spec.mutual_set, spec.batch_size
    return MutualSetEngine(scorer.model, size, batch, spec.workers, scorer.maps)
