"""Mutual scoring on a loaded model: features from the encoder, the formulas of
mutual.py, pools made, recorded and checked. WinClip.predict_mutual and
WinClip.mutual_pool are this class's methods under the facade's names."""

from __future__ import annotations

import functools
from typing import Any

import torch

from .backbone import Backbone
from .encoder import WindowEncoder
from .errors import PoolMismatchError
from .mutual import (
    layer_norm_grid,
    map_maxima,
    pool_grid_maps,
    rscin,
    set_grid_maps,
    tapped_blocks,
)
from .pool import MutualPool, input_digests
from .tiling import TileGrid, grid_meta


class MutualScorer:
    """Set and pool mode (WINCLIP.md "Mutual scoring") on one encoder."""

    def __init__(self, encoder: WindowEncoder, backbone: Backbone) -> None:
        self.encoder = encoder
        self.backbone = backbone
        self.blocks = tapped_blocks(encoder.depth)
        # A pool checked against this model and moved to its device carries this mark.
        self._pool_mark = f"{backbone.weights_id}:{backbone.precision.name}:{encoder.device}"

    @property
    def matmul_dtype(self) -> torch.dtype:
        """MSM's matrix products run at the model's reduced precision, if it has one."""
        dtype = self.backbone.dtype
        return dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32

    def features(self, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image embeddings (N, D) and the tapped layers' layer-normed grids
        (layers, N, gh, gw, C): one plain forward pass per image, ``batch_size`` at a time."""
        enc, n = self.encoder, x.shape[0]
        shape = (len(self.blocks), n, *enc.grid_size, enc.visual_width)
        normed = torch.empty(shape, device=enc.device)
        embeddings = []
        for start in range(0, n, batch_size):
            feats = enc.encode_layers(x[start : start + batch_size], self.blocks)
            for index, tokens in enumerate(feats.layers):
                stop = start + tokens.shape[0]
                normed[index, start:stop] = layer_norm_grid(tokens, enc.grid_size)
            embeddings.append(feats.embedding)
        return torch.cat(embeddings), normed

    def predict(
        self, x: torch.Tensor, pool: MutualPool | None, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image scores (N,), grid maps (N, gh, gw)) on the CPU; set mode when pool is None."""
        if pool is not None:
            pool = self.check_pool(pool)
        if x.shape[0] == 0:
            return torch.zeros(0), torch.zeros(0, *self.encoder.grid_size)
        if pool is None and x.shape[0] < 2:
            raise ValueError("set mode needs at least 2 images: each is scored against the others")
        embeddings, normed = self.features(x, batch_size)
        if pool is None:
            grid = set_grid_maps(list(normed), self.matmul_dtype)
            scores = rscin(map_maxima(grid, self.encoder.input_size), embeddings)
        else:
            operands = functools.partial(pool.right_operand, dtype=self.matmul_dtype)
            grid = pool_grid_maps(list(normed), operands, pool.excluded(input_digests(x)))
            scores = map_maxima(grid, self.encoder.input_size)
        return scores.cpu(), grid.cpu()

    def make_pool(
        self, x: torch.Tensor, batch_size: int, tiles: TileGrid | None = None
    ) -> MutualPool:
        """A pool of (M, 3, H, W) preprocessed images (tiles cut by ``tiles``, recorded)."""
        if x.shape[0] == 0:
            raise ValueError("mutual_pool needs at least one image")
        _, normed = self.features(x, batch_size)
        meta = self.pool_meta(x.shape[0])
        if tiles is not None:
            meta.update(grid_meta(tiles))
        pool = MutualPool(normed, input_digests(x), meta)
        pool.checked_for = self._pool_mark
        return pool

    def pool_meta(self, num_images: int) -> dict[str, Any]:
        """What a pool made by this model records about it."""
        enc = self.encoder
        precision = self.backbone.precision.name  # resolved: fp32, bf16, fp16 or int8
        return {
            "model": self.backbone.model_name,
            "weights": self.backbone.weights_id,
            "precision": precision,
            "input_size": list(enc.input_size),
            "grid_size": list(enc.grid_size),
            "blocks": list(self.blocks),
            "width": enc.visual_width,
            "num_images": int(num_images),
        }

    def check_pool(self, pool: MutualPool) -> MutualPool:
        """The pool on this model's device; PoolMismatchError when it was made otherwise or
        its features do not match its record (a damaged or hand-made file). Checked once:
        the pool returned is marked, and is not checked again."""
        if pool.checked_for == self._pool_mark:
            return pool
        mine = self.pool_meta(pool.num_images)
        # As for banks, the model's name is not compared: the weights' hash says it all.
        if pool.meta.get("weights") != mine["weights"]:
            raise PoolMismatchError(
                f"pool was made with other weights (model {pool.meta.get('model')!r}, weights "
                f"{pool.meta.get('weights')!r}) than this model's ({mine['model']!r}, "
                f"{mine['weights']!r}): rebuild it from the images"
            )
        for field in ("precision", "input_size", "grid_size", "blocks", "width", "num_images"):
            if pool.meta.get(field) != mine[field]:
                raise PoolMismatchError(
                    f"pool was made with {field}={pool.meta.get(field)!r}, but this run has "
                    f"{mine[field]!r}: rebuild it from the images"
                )
        enc = self.encoder
        expected = (len(self.blocks), pool.num_images, *enc.grid_size, enc.visual_width)
        if tuple(pool.layers.shape) != expected or not torch.isfinite(pool.layers).all():
            raise PoolMismatchError(
                f"damaged pool: its features have shape {tuple(pool.layers.shape)}, expected "
                f"{expected} of finite values; rebuild it from the images"
            )
        checked = pool.to(enc.device)
        checked.checked_for = self._pool_mark
        return checked
