"""`--maps anomalous`: maps only for the images decided anomalous (zero-shot), over any
engine (local, Ray; tiled or not).

A zero-shot image score needs no windows, so a plain pass (the engine built without
maps) decides every image first; the window pass (the same engine with maps) then runs
only on the anomalous ones. On a line where most parts are good a run costs about one
score pass plus that fraction of a segment pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from ..decision import ANOMALOUS
from . import Engine, ImageResult

if TYPE_CHECKING:
    from ..data import InputImage
    from ..decision import DecisionRule

# Images decided per round before their maps are made: rows keep coming while memory
# holds at most this many results.
CHUNK = 64


class AnomalousMapsEngine:
    """Scores every image with ``first`` (no maps), then maps the anomalous ones with
    ``second``; one result per image, in input order."""

    def __init__(
        self, first: Engine, second: Engine, rule: DecisionRule, chunk: int = CHUNK
    ) -> None:
        # Each pass is finished before the next starts (a Ray pass holds its actors until
        # then). An engine that scores images as a set must get whole sets: a ``chunk``
        # of at least its set size.
        self.first, self.second, self.rule, self.chunk = first, second, rule, chunk

    def predict(self, images: Sequence[InputImage]) -> Iterator[ImageResult]:
        """One result per image in input order; a map only where anomalous."""
        for start in range(0, len(images), self.chunk):
            chunk = images[start : start + self.chunk]
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
                    dataclasses.replace(
                        results[i],
                        grid_map=mapped.grid_map,
                        tiles=mapped.tiles,
                        size=mapped.size or results[i].size,
                    )
                    if mapped.error is None
                    else mapped
                )
            yield from results
