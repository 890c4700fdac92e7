"""The Ray actor of the Ray engine: loads one model, then decodes and scores batches.

Imported on the Ray workers (winclip must be installed on every node), so it imports
nothing of Ray itself.
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bank import bank_from_payload
from ..data import InputImage
from ..model import WinClip
from ..pool import pool_from_payload
from ..tiling import TileGrid
from . import ImageResult
from .local import LocalEngine
from .scorer import Scorer


class Predictor:
    """A Ray Data callable class: one model per actor, loaded once.

    ``setup``: the run's ModelOptions (absolute paths), PromptSet, text embeddings, bank
    and pool payloads (or None), whether maps are made, and test hooks. A model that can't
    be loaded is reported in the ``fatal`` column of every row (the driver stops the run
    with exit 4), not raised: a constructor that raises would leave Ray retrying it.
    """

    def __init__(self, setup: dict[str, Any]) -> None:

        torch.set_num_threads(1)  # one core per actor (num_cpus=1): no oversubscription
        self.hooks: dict[str, str] = setup["hooks"]
        self.maps: bool = setup["maps"]
        self.grid: TileGrid = setup["grid"]
        self.fatal = ""
        try:
            self.engine = self._load(setup)
        except Exception as exc:  # any failure here means: this node can't run the model
            self.fatal = " ".join(str(exc).split()) or type(exc).__name__

    def _load(self, setup: dict[str, Any]) -> Any:
        if "WINCLIP_TEST_ACTOR_LOAD_FAIL" in self.hooks:
            raise RuntimeError("weights not found on this node (test hook)")
        wc = WinClip.from_options(setup["model"], setup["prompts"])
        payload = setup["bank"]
        bank = None if payload is None else wc.check_bank(bank_from_payload(payload, "bank"))
        pooled = setup.get("pool")
        pool = None if pooled is None else wc.check_pool(pool_from_payload(pooled, "pool"))
        text = setup["text"].to(wc.device)
        self.grid_size = tuple(wc.grid_size)
        # The local engine's own loop, on one batch at a time, decoding in this actor.
        scorer = Scorer(wc, text, bank, self.maps, pool)
        # The upsampled-tiles warning is the driver's to give; here it would be lost.
        return lambda size: LocalEngine(scorer, size, 0, self.grid, lambda _message: None)

    def _maybe_die(self, batch: int) -> None:
        if delay := self.hooks.get("WINCLIP_TEST_BATCH_DELAY_S"):
            time.sleep(float(delay))
        hook = self.hooks.get("WINCLIP_TEST_KILL_ACTOR_AT")
        if hook is None:
            return
        at, _, marker = hook.partition(":")
        if int(at) == batch and not Path(marker).exists():
            Path(marker).touch()  # the retry, in a new actor, goes through
            os._exit(1)

    def __call__(self, records: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows (index, score, error, fatal[, grid]) for a few records of paths."""
        rows: list[tuple[int, ImageResult]] = []
        columns = (records["batch"].tolist(), records["start"].tolist(), records["paths"])
        for batch, first, paths in zip(*columns, strict=True):
            self._maybe_die(int(batch))
            images = [InputImage(Path(str(p)), str(p), str(p)) for p in paths]
            if self.fatal:
                results = [ImageResult(None) for _ in images]
            else:
                results = list(self.engine(len(images)).predict(images))
            rows.extend((int(first) + j, r) for j, r in enumerate(results))
        return self._columns(rows)

    def _columns(self, rows: list[tuple[int, ImageResult]]) -> dict[str, np.ndarray]:
        n = len(rows)
        out = {
            "index": np.array([i for i, _ in rows], dtype=np.int64),
            "score": np.array([np.nan if r.score is None else r.score for _, r in rows]),
            "error": np.array([r.error or "" for _, r in rows], dtype=object),
            "fatal": np.array([self.fatal] * n, dtype=object),
        }
        if self.maps and not self.grid.is_single:  # per-tile maps: boxes and tensors
            out["tiled"] = np.array(
                [pickle.dumps((r.tiles, r.size)) for _, r in rows], dtype=object
            )
        elif self.maps:
            shape = (1, 1) if self.fatal else self.grid_size
            grids = [
                np.zeros(shape, np.float32) if r.grid_map is None else r.grid_map.float().numpy()
                for _, r in rows
            ]
            out["grid"] = np.stack(grids)
        return out
