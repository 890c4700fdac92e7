"""`--maps anomalous`: maps only for the images decided anomalous (zero-shot).

A zero-shot image score needs no windows, so a plain forward pass decides every image
first; the window pass then runs only on the anomalous ones. On a line where most parts
are good a run costs about one score pass plus that fraction of a segment pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from ..decision import ANOMALOUS
from . import ImageResult
from .local import LocalEngine
from .scorer import Scorer

if TYPE_CHECKING:
    from ..data import InputImage
    from ..decision import DecisionRule

# Images decided per round before their maps are made: rows keep coming while memory
# holds at most this many results.
CHUNK = 64


class AnomalousMapsEngine:
    """Scores every image without windows, then maps the anomalous ones; same order."""

    def __init__(self, scorer: Scorer, batch_size: int, workers: int, rule: DecisionRule) -> None:
        if scorer.bank is not None:
            raise ValueError("maps for anomalous images only is zero-shot only")
        plain = dataclasses.replace(scorer, maps=False)
        mapped = dataclasses.replace(scorer, maps=True)
        self.first = LocalEngine(plain, batch_size, workers)
        self.second = LocalEngine(mapped, batch_size, workers)
        self.rule = rule

    def predict(self, images: Sequence[InputImage]) -> Iterator[ImageResult]:
        """One result per image in input order; a grid map only where anomalous."""
        for start in range(0, len(images), CHUNK):
            chunk = images[start : start + CHUNK]
            results = list(self.first.predict(chunk))
            wanted = [
                i
                for i, r in enumerate(results)
                if r.error is None and self.rule.label(r.score) == ANOMALOUS
            ]
            maps = self.second.predict([chunk[i] for i in wanted])
            for i, mapped in zip(wanted, maps, strict=True):
                # The decision stands on the first pass's score; the map is added to it.
                results[i] = (
                    dataclasses.replace(results[i], grid_map=mapped.grid_map)
                    if mapped.error is None
                    else mapped
                )
            yield from results
