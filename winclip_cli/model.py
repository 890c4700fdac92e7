"""WinClip: the library facade. Loads a model, preprocesses images, builds text
embeddings (cached) and reference banks (validated once), and predicts scores and maps.

The encoding is encoder.py's, the formulas are scoring.py's; this class wires them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .backbone import Backbone, load_backbone
from .bank import ReferenceBank
from .cache import TextEmbeddingCache
from .encoder import Features, WindowEncoder
from .errors import BankMismatchError, WeightsUnavailableError
from .hardware import Precision, mismatch, recorded
from .imaging import Preprocessor
from .mutual_scorer import MutualScorer
from .options import DEFAULT_MODEL, DEFAULT_PRETRAINED, DEFAULT_SCALES, ModelOptions
from .pool import MutualPool
from .prompts import PromptSet, clean_class_name
from .provenance import PROVENANCE_KEY, record_of
from .scoring import (
    association,
    check_temperature,
    few_shot_map,
    p_anomalous,
    upsample,
    usable_temperature,
    winclip_plus,
    zero_shot_map,
)
from .tiling import TileGrid

__all__ = [
    "Features",
    "MutualPool",
    "Prediction",
    "WinClip",
    "association",
    "p_anomalous",
    "upsample",
]


@dataclass
class Prediction:
    """Scores for a batch: ``image_scores`` (B,), ``grid_maps`` (B, gh, gw) or None."""

    image_scores: torch.Tensor
    grid_maps: torch.Tensor | None


class WinClip:
    """Zero-shot (WinCLIP) and few-shot (WinCLIP+) anomaly scoring on an open_clip ViT."""

    def __init__(
        self,
        backbone: Backbone,
        prompts: PromptSet | None = None,
        scales: tuple[int, ...] = DEFAULT_SCALES,
        temperature: float | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.backbone = backbone
        self.prompts = prompts or PromptSet()
        self.scales = tuple(sorted(set(scales)))
        self.encoder = WindowEncoder(backbone, self.scales)
        enc = self.encoder
        self.visual, self.device, self.windows = enc.visual, enc.device, enc.windows
        self.input_size, self.grid_size = enc.input_size, enc.grid_size
        self.num_patches, self.visual_width, self.embed_dim = (
            enc.num_patches,
            enc.visual_width,
            enc.embed_dim,
        )
        if temperature is not None:
            check_temperature(temperature)
            self.temperature = float(temperature)
        else:
            self.temperature = 1.0 / float(backbone.clip.logit_scale.exp().item())
            if not usable_temperature(self.temperature):
                raise WeightsUnavailableError(
                    f"the weights' logit_scale gives temperature {self.temperature!r} (damaged "
                    "weights?); give one with --temperature"
                )
        self.text_cache = TextEmbeddingCache(cache_dir)
        self.text_source = ""  # how the last text_embeddings came: cached or encoded (logs)
        self.preprocessor = Preprocessor(self.input_size, backbone.mean, backbone.std)
        # A bank checked against this model and moved to its device carries this mark.
        self._bank_mark = f"{backbone.weights_id}:{self.scales}:{self.device}:{self.precision}"
        self.mutual = MutualScorer(self.encoder, backbone)

    @property
    def precision(self) -> str:
        """What the vision tower computes in: fp32, bf16, fp16 or int8 (never auto)."""
        return self.backbone.precision.name

    @property
    def precision_reason(self) -> str:
        """Why that precision, for the 'model loaded' line (e.g. 'bf16: CPU has AMX')."""
        return self.backbone.precision.reason

    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        pretrained: str | None = DEFAULT_PRETRAINED,
        weights: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        precision: str | Precision = "fp32",
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        prompts: PromptSet | None = None,
        scales: tuple[int, ...] = DEFAULT_SCALES,
        temperature: float | None = None,
    ) -> WinClip:
        """Load an open_clip model (tag, local ``weights`` file or ``local-dir:``) for scoring.

        ``precision``: fp32 (the default, so a library call gives the same numbers on
        every machine), bf16, fp16 (GPU), int8 (CPU) or auto (see hardware.choose_auto).
        Scores and maps come back as float32 whatever it is.
        Raises backbone.WeightsUnavailableError when the weights can't be had.
        """
        backbone = load_backbone(model, pretrained, weights, device, precision)
        return cls(backbone, prompts, scales, temperature, cache_dir)

    @classmethod
    def from_options(cls, m: ModelOptions, prompts: PromptSet) -> WinClip:
        """``load`` with a run's model options (the CLI's --model, --weights, ...)."""
        return cls.load(
            model=m.model,
            pretrained=m.pretrained,
            weights=m.weights,
            device=m.device,
            precision=(
                m.precision
                if m.precision_reason is None
                else Precision(m.precision, m.precision_reason)
            ),
            cache_dir=m.cache_dir,
            prompts=prompts,
            temperature=m.temperature,
        )

    # ----- inputs -------------------------------------------------------------------

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """(3, H, W) model input: the picture as a viewer shows it (EXIF orientation
        applied), RGB, whole-image bicubic resize, normalised."""
        return self.preprocessor(ImageOps.exif_transpose(image))

    def _check_images(self, x: torch.Tensor, what: str) -> None:
        h, w = self.input_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, h, w):
            raise ValueError(
                f"{what} expects (B, 3, {h}, {w}) preprocessed images (see preprocess), "
                f"got {tuple(x.shape)}"
            )
        if not x.is_floating_point():  # raw pixels (uint8) would score without an error
            raise TypeError(f"{what} expects float images from preprocess, got {x.dtype}")

    # ----- text side ----------------------------------------------------------------

    def encode(self, x: torch.Tensor, windows: bool = True, patch_tokens: bool = False) -> Features:
        """Image embedding, and on request window embeddings and patch tokens, of (B, 3, H, W)."""
        return self.encoder.encode(x, windows=windows, patch_tokens=patch_tokens)

    def encode_text(self, prompts: list[str], batch_size: int = 128) -> torch.Tensor:
        """L2-normalised text embeddings (n, D) of the given prompts."""
        return self.encoder.encode_text(prompts, batch_size)

    def _text_key(self, class_name: str) -> dict[str, Any]:
        normal, anomalous = self.prompts.prompts(class_name)
        return {
            "version": 1,
            "model": self.backbone.model_name,
            "weights": self.backbone.weights_id,
            "class": clean_class_name(class_name),
            "normal": normal,
            "anomalous": anomalous,
        }

    def text_embeddings(self, class_name: str = "object") -> torch.Tensor:
        """(2, D) class embedding: row 0 normal, row 1 anomalous (cached on disk)."""
        key = self._text_key(class_name)
        cached = self.text_cache.get(key)
        if cached is not None:
            self.text_source = f"cached in {self.text_cache.root}"
            return cached.to(self.device)
        rows = []
        for group in (key["normal"], key["anomalous"]):
            rows.append(F.normalize(self.encode_text(group).mean(dim=0), dim=-1))
        text = torch.stack(rows)
        self.text_source = f"encoded {len(key['normal']) + len(key['anomalous'])} prompts"
        self.text_cache.put(key, text)
        return text

    # ----- scoring ------------------------------------------------------------------

    def reference_bank(self, refs: torch.Tensor, batch_size: int = 8) -> ReferenceBank:
        """Bank of patch tokens and window embeddings from (K, 3, H, W) normal images."""
        self._check_images(refs, "reference_bank")
        if refs.shape[0] == 0:
            raise ValueError("reference_bank needs at least one image")
        feats = [self.encode(b, windows=True, patch_tokens=True) for b in refs.split(batch_size)]
        patch = torch.cat([f.patch_tokens for f in feats if f.patch_tokens is not None])
        patch = patch.flatten(0, 1)
        wins = {k: torch.cat([f.windows[k] for f in feats]).flatten(0, 1) for k in self.scales}
        bank = ReferenceBank(patch, wins, self.bank_meta(refs.shape[0]))
        bank.checked_for = self._bank_mark
        return bank

    def bank_meta(self, num_images: int) -> dict[str, Any]:
        """What a bank built by this model records about it."""
        b = self.backbone
        return {
            "model": self.backbone.model_name,
            "weights": self.backbone.weights_id,
            "input_size": list(self.input_size),
            "grid_size": list(self.grid_size),
            "scales": list(self.scales),
            "num_images": int(num_images),
            # Resolved (never auto): the features, and so the scores, depend on it.
            "precision": self.precision,
            # The model, tag and weights file, so a run with --ref BANK and no model
            # options uses them (provenance); not compared by check_bank.
            PROVENANCE_KEY: record_of(b.model_name, b.pretrained, b.checkpoint),
        }

    def check_bank(self, bank: ReferenceBank) -> ReferenceBank:
        """The bank on this model's device; BankMismatchError when it was built otherwise
        or its tensors do not match what it claims (a damaged or hand-made file).

        Checked once: the bank returned is marked, and predict does not check it again."""
        if bank.checked_for == self._bank_mark:
            return bank
        mine = self.bank_meta(bank.num_images)
        # The model's name is not compared: `local-dir:x` and `local-dir:./x/`, or a copy
        # of the folder, are the same model, and the weights' content hash already says so.
        if bank.meta.get("weights") != mine["weights"]:
            raise BankMismatchError(
                f"reference bank was built with other weights (model "
                f"{bank.meta.get('model')!r}, weights {bank.meta.get('weights')!r}) than this "
                f"model's ({mine['model']!r}, {mine['weights']!r}): rebuild it from the images"
            )
        refused = mismatch(recorded(bank.meta), self.precision, "reference bank")
        if refused:
            raise BankMismatchError(refused)
        for field in ("input_size", "grid_size", "scales"):
            if bank.meta.get(field) != mine[field]:
                raise BankMismatchError(
                    f"reference bank was built with {field}={bank.meta.get(field)!r}, "
                    f"but this model has {mine[field]!r}: rebuild it from the images"
                )
        k = bank.num_images
        expected = {"patch tokens": (bank.patch_tokens, k * self.num_patches, self.visual_width)}
        if set(bank.windows) != set(self.scales):
            raise BankMismatchError("damaged reference bank: its window scales are missing")
        for scale in self.scales:
            rows = k * self.windows[scale].shape[0]
            expected[f"{scale}x{scale} windows"] = (bank.windows[scale], rows, self.embed_dim)
        for what, (tensor, rows, width) in expected.items():
            if tuple(tensor.shape) != (rows, width) or not torch.isfinite(tensor).all():
                raise BankMismatchError(
                    f"damaged reference bank: {what} have shape {tuple(tensor.shape)}, "
                    f"expected {(rows, width)} of finite values; rebuild it from the images"
                )
        checked = bank.to(self.device)
        checked.checked_for = self._bank_mark
        return checked

    def predict(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        bank: ReferenceBank | None = None,
        maps: bool = True,
    ) -> Prediction:
        """Anomaly scores (and grid maps) for (B, 3, H, W) preprocessed images.

        Zero-shot when ``bank`` is None; WinCLIP+ otherwise. With ``maps=False`` and no
        bank, only the ordinary forward pass runs (no windows).
        """
        self._check_images(x, "predict")
        if tuple(text.shape) != (2, self.embed_dim):
            raise ValueError(
                f"text must be the (2, {self.embed_dim}) normal/anomalous embeddings of "
                f"text_embeddings, got {tuple(text.shape)}"
            )
        if bank is not None:
            bank = self.check_bank(bank)
        if x.shape[0] == 0:
            empty = torch.zeros(0)
            return Prediction(empty, torch.zeros(0, *self.grid_size) if maps else None)
        need_windows = maps or bank is not None
        feats = self.encode(x, windows=need_windows, patch_tokens=bank is not None)
        text = text.to(self.device)
        s_img = p_anomalous(feats.embedding, text, self.temperature)
        if not need_windows:
            return Prediction(s_img.cpu(), None)

        n = self.num_patches
        window_scores = {
            k: p_anomalous(feats.windows[k], text, self.temperature) for k in self.scales
        }
        zero_shot = zero_shot_map(s_img, window_scores, self.windows, n)  # (B, N)
        if bank is None:
            grid, scores = zero_shot, s_img
        else:
            assert feats.patch_tokens is not None  # asked for with a bank
            patch_assoc = association(feats.patch_tokens, bank.patch_tokens)
            window_assoc = {k: association(feats.windows[k], bank.windows[k]) for k in self.scales}
            few_shot = few_shot_map(patch_assoc, window_assoc, self.windows, n)
            grid, scores = winclip_plus(s_img, zero_shot, few_shot)
        grid_maps = grid.view(-1, *self.grid_size).cpu() if maps else None
        return Prediction(scores.cpu(), grid_maps)

    # ----- mutual scoring (MuSc) ----------------------------------------------------

    def predict_mutual(
        self, x: torch.Tensor, pool: MutualPool | None = None, batch_size: int = 8
    ) -> Prediction:
        """Mutual scores and grid maps (WINCLIP.md "Mutual scoring") of (N, 3, H, W)
        preprocessed images; no text, no references.

        Set mode (``pool=None``, N >= 2): each image against the others, image scores
        through RsCIN (they rank the images of this set). Pool mode: each image against
        the pool (minus itself when it is a member), image score = the map's maximum.
        """
        self._check_images(x, "predict_mutual")
        scores, grid = self.mutual.predict(x, pool, batch_size)
        return Prediction(scores, grid)

    def mutual_pool(
        self, x: torch.Tensor, batch_size: int = 8, tiles: TileGrid | None = None
    ) -> MutualPool:
        """A pool for predict_mutual from (M, 3, H, W) preprocessed unlabelled images of
        the part (or their tiles, when cut by ``tiles``: the grid is recorded)."""
        self._check_images(x, "mutual_pool")
        return self.mutual.make_pool(x, batch_size, tiles)

    def check_pool(self, pool: MutualPool) -> MutualPool:
        """The pool on this model's device; PoolMismatchError when it does not fit."""
        return self.mutual.check_pool(pool)
