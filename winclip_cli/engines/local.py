"""The local engine: one model in this process, inputs decoded by DataLoader workers."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from ..data import Batch, InputImage, batches
from ..errors import UsageError
from ..options import RunOptions
from ..tiling import Box, TileGrid
from . import EngineSpec, ImageResult
from .scorer import Scorer, tiled_result


class LocalEngine:
    """Batches of ``batch_size`` decoded by ``workers`` processes (0: in this one), so
    decoding overlaps inference; batches are pinned for a fast copy to a CUDA device.

    With a tile ``grid`` other than 1x1, ``batch_size`` counts tiles: the tiles of
    several images fill one forward pass. ``warn`` is told once per run when most tiles
    are smaller than the model input."""

    def __init__(
        self,
        scorer: Scorer,
        batch_size: int,
        workers: int,
        grid: TileGrid | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.scorer, self.batch_size, self.workers = scorer, batch_size, workers
        self.grid = None if grid is None or grid.is_single else grid
        self.warn = warn
        self._tiles_seen = self._tiles_small = 0
        self._warned = False

    def predict(self, images: Sequence[InputImage]) -> Iterator[ImageResult]:
        if self.grid is not None:
            yield from self._predict_tiled(images, self.grid)
            return
        wc = self.scorer.model
        pin = wc.device.type == "cuda"
        for batch in batches(images, wc.preprocessor, self.batch_size, self.workers, pin):
            scored = self.scorer.predict(batch.pixels) if batch.pixels is not None else []
            results = dict(zip(batch.readable, scored, strict=True))
            for index in batch.indices:
                error = batch.errors.get(index)
                yield ImageResult(None, None, error) if error is not None else results[index]

    def _predict_tiled(self, images: Sequence[InputImage], grid: TileGrid) -> Iterator[ImageResult]:
        wc = self.scorer.model
        pin = wc.device.type == "cuda"
        # Enough images per decoded batch to fill about one pass of tiles.
        per_batch = max(1, self.batch_size // grid.count)
        # Images in input order: an error, or (boxes, size, its tile count).
        waiting: deque[str | tuple[list[Box], tuple[int, int]]] = deque()
        queued: list[torch.Tensor] = []  # tiles decoded, not yet scored, in order
        scored: deque[ImageResult] = deque()  # tile results not yet claimed by an image
        for batch in batches(images, wc.preprocessor, per_batch, self.workers, pin, grid):
            self._enqueue(batch, waiting, queued)
            while sum(len(t) for t in queued) >= self.batch_size:
                scored.extend(self._score(queued, self.batch_size))
            yield from self._ready(waiting, scored)
        while queued:
            scored.extend(self._score(queued, self.batch_size))
        yield from self._ready(waiting, scored)
        assert not waiting and not scored, "every tile belongs to one image"

    def _enqueue(
        self,
        batch: Batch,
        waiting: deque[str | tuple[list[Box], tuple[int, int]]],
        queued: list[torch.Tensor],
    ) -> None:
        tiles = iter(batch.tiles or [])
        for index in batch.indices:
            error = batch.errors.get(index)
            if error is not None:
                waiting.append(error)
                continue
            boxes, size, small = next(tiles)
            waiting.append((boxes, size))
            self._note_small(len(boxes), small)
        if batch.pixels is not None:
            queued.append(batch.pixels)

    def _score(self, queued: list[torch.Tensor], count: int) -> list[ImageResult]:
        """Score the first ``count`` queued tiles (fewer at the end) in one pass."""
        pixels = torch.cat(queued) if len(queued) > 1 else queued[0]
        head, rest = pixels[:count], pixels[count:]
        queued.clear()
        if len(rest):
            queued.append(rest)
        return self.scorer.predict(head)

    def _ready(
        self,
        waiting: deque[str | tuple[list[Box], tuple[int, int]]],
        scored: deque[ImageResult],
    ) -> Iterator[ImageResult]:
        """Results of the images at the front whose tiles are all scored, in order."""
        while waiting:
            head = waiting[0]
            if isinstance(head, str):
                waiting.popleft()
                yield ImageResult(None, None, head)
                continue
            boxes, size = head
            if len(scored) < len(boxes):
                return
            waiting.popleft()
            tiles = [scored.popleft() for _ in boxes]
            yield tiled_result(boxes, size, tiles, self.scorer.maps)

    def _note_small(self, tiles: int, small: int) -> None:
        """Warn once when most tiles so far are below the model input (upsampled)."""
        self._tiles_seen += tiles
        self._tiles_small += small
        if self._warned or self.warn is None or 2 * self._tiles_small <= self._tiles_seen:
            return
        self._warned = True
        h, w = self.scorer.model.input_size
        self.warn(
            f"most tiles ({self._tiles_small} of {self._tiles_seen} so far) are smaller than "
            f"the model input ({w}x{h}) and are upsampled: tiling these images gains little; "
            "use fewer --tiles"
        )


def check(opts: RunOptions) -> None:
    """Options the local engine refuses: the Ray ones."""
    if opts.ray.given:
        raise UsageError(f"{opts.ray.given[0]} needs --engine ray")


@contextmanager
def session(spec: EngineSpec) -> Iterator[None]:
    """Nothing to connect to."""
    yield


def build(spec: EngineSpec, scorer: Scorer, warn: Callable[[str], None]) -> LocalEngine:
    """The local engine of ``spec``, on ``scorer``."""
    return LocalEngine(scorer, spec.batch_size, spec.workers, spec.grid, warn)
