"""WinClip: text, image and window encoding, and zero-/few-shot scoring (WINCLIP.md)."""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .backbone import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    Backbone,
    WeightsUnavailableError,
    load_backbone,
)
from .cache import ReferenceBank, TextEmbeddingCache
from .imaging import Preprocessor
from .prompts import PromptSet, clean_class_name
from .windows import harmonic_aggregate, window_indices

DEFAULT_SCALES = (2, 3)
# Below this every score is 0 or 1 anyway, and tau itself would underflow in fp32.
MIN_TEMPERATURE = 1e-6


def usable_temperature(value: float) -> bool:
    return MIN_TEMPERATURE <= value < math.inf  # False for NaN too


def check_temperature(value: float) -> None:
    """ValueError unless ``value`` is a temperature the scores can be computed with."""
    if not usable_temperature(value):
        raise ValueError(
            f"the temperature must be a positive number (at least {MIN_TEMPERATURE:g})"
        )


# Window sequences run in chunks of at most this many tokens. On a CPU small chunks keep
# the working set in cache: for the default model, 1024 tokens ran 9% faster than 16384
# and peaked 0.7 GB lower (benchmarks/run.py). A GPU wants large launches.
CPU_WINDOW_TOKENS = 1024
ACCELERATOR_WINDOW_TOKENS = 32768


class BankMismatchError(ValueError):
    """A reference bank built with another model, weights, input size or scales."""


@dataclass
class Prediction:
    """Scores for a batch: ``image_scores`` (B,), ``grid_maps`` (B, gh, gw) or None."""

    image_scores: torch.Tensor
    grid_maps: torch.Tensor | None


@dataclass
class Features:
    """Image-side features of a batch (all float32)."""

    embedding: torch.Tensor  # (B, D) projected class token, L2-normalised
    patch_tokens: torch.Tensor | None  # (B, N, W) after ln_post, L2-normalised
    windows: dict[int, torch.Tensor]  # scale -> (B, num_windows, D), L2-normalised


def _is_plain_block(block: torch.nn.Module) -> bool:
    """True for open_clip's standard ResidualAttentionBlock, which the fast path re-implements."""
    from open_clip.transformer import ResidualAttentionBlock

    attn = getattr(block, "attn", None)
    return (
        type(block) is ResidualAttentionBlock
        and not hasattr(block, "ln_1_kv")
        and isinstance(attn, torch.nn.MultiheadAttention)
        and attn.in_proj_weight is not None
        and attn.bias_k is None
        and not attn.add_zero_attn
    )


def _plain_block_forward(block: Any, x: torch.Tensor, class_token_only: bool) -> torch.Tensor:
    """ResidualAttentionBlock.forward on batch-first (S, L, W) sequences.

    The same arithmetic as open_clip's block, through scaled_dot_product_attention; with
    ``class_token_only`` only the class token's output (S, 1, W) is computed, which is all
    the last layer of a window pass needs.
    """
    attn = block.attn
    heads = attn.num_heads
    seqs, length, width = x.shape
    h = block.ln_1(x)
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    if class_token_only:
        q, x = q[:, :1], x[:, :1]
    q_len = q.shape[1]
    q = q.reshape(seqs, q_len, heads, -1).transpose(1, 2)
    k = k.reshape(seqs, length, heads, -1).transpose(1, 2)
    v = v.reshape(seqs, length, heads, -1).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)
    out = attn.out_proj(out.transpose(1, 2).reshape(seqs, q_len, width))
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def p_anomalous(embeddings: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(cos(f, T0) / tau, cos(f, T1) / tau)[1] for L2-normalised embeddings (..., D).

    Computed as sigmoid((cos1 - cos0) / tau), the same value: a softmax of two logits
    that overflow (a tiny tau) would give inf - inf = NaN."""
    cosines = embeddings.float() @ F.normalize(text.float(), dim=-1).T
    return torch.sigmoid((cosines[..., 1] - cosines[..., 0]) / temperature)


def association(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """min over bank of (1 - cos(q, b)) / 2, for L2-normalised queries (..., C) and bank (M, C)."""
    best = (queries.float() @ bank.float().T).amax(dim=-1)
    # Rounding can push a cosine a hair past 1; a negative distance would break 1/s.
    return ((1.0 - best) / 2.0).clamp_min(0.0)


def upsample(grid_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (B, gh, gw) maps to (B, H, W)."""
    return F.interpolate(
        grid_maps[:, None].float(), size=size, mode="bilinear", align_corners=False
    )[:, 0]


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
        self.visual = backbone.clip.visual
        self.device = backbone.device
        self.input_size: tuple[int, int] = tuple(self.visual.image_size)  # type: ignore[assignment]
        self.grid_size: tuple[int, int] = tuple(self.visual.grid_size)  # type: ignore[assignment]
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.visual_width = int(self.visual.conv1.out_channels)
        self.embed_dim = (
            int(self.visual.proj.shape[1]) if self.visual.proj is not None else self.visual_width
        )
        self.scales = tuple(sorted(set(scales)))
        cpu = self.device.type == "cpu"
        self.window_token_budget = CPU_WINDOW_TOKENS if cpu else ACCELERATOR_WINDOW_TOKENS
        self.windows = {k: window_indices(*self.grid_size, k).to(self.device) for k in self.scales}
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
        self.preprocessor = Preprocessor(self.input_size, backbone.mean, backbone.std)
        blocks = self.visual.transformer.resblocks
        self._fast_blocks = all(_is_plain_block(b) for b in blocks)
        self._tokenizer: Any = None

    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        pretrained: str | None = DEFAULT_PRETRAINED,
        weights: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        prompts: PromptSet | None = None,
        scales: tuple[int, ...] = DEFAULT_SCALES,
        temperature: float | None = None,
    ) -> WinClip:
        """Load an open_clip model (tag, local ``weights`` file or ``local-dir:``) for scoring.

        Raises backbone.WeightsUnavailableError when the weights can't be had.
        """
        backbone = load_backbone(model, pretrained, weights, device, precision)
        return cls(backbone, prompts, scales, temperature, cache_dir)

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

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = self.backbone.dtype
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    # ----- text side ----------------------------------------------------------------

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

    @torch.inference_mode()
    def encode_text(self, prompts: list[str], batch_size: int = 128) -> torch.Tensor:
        """L2-normalised text embeddings (n, D) of the given prompts."""
        if self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.backbone.model_name)
        # Always fp32, without autocast: the result is cached and shared by every precision.
        chunks = []
        for start in range(0, len(prompts), batch_size):
            tokens = self._tokenizer(prompts[start : start + batch_size]).to(self.device)
            chunks.append(self.backbone.clip.encode_text(tokens).float())
        return F.normalize(torch.cat(chunks), dim=-1)

    def text_embeddings(self, class_name: str = "object") -> torch.Tensor:
        """(2, D) class embedding: row 0 normal, row 1 anomalous (cached on disk)."""
        key = self._text_key(class_name)
        cached = self.text_cache.get(key)
        if cached is not None:
            return cached.to(self.device)
        rows = []
        for group in (key["normal"], key["anomalous"]):
            rows.append(F.normalize(self.encode_text(group).mean(dim=0), dim=-1))
        text = torch.stack(rows)
        self.text_cache.put(key, text)
        return text

    # ----- image side ---------------------------------------------------------------

    def _embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + class token + positions, then ln_pre: (B, 1 + N, W).

        ln_pre acts on each token alone, so applying it before gathering window tokens
        gives the same sequences as applying it to each gathered window.
        """
        v = self.visual
        x = v.conv1(x).flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.ln_pre(x)

    def _transformer(self, x: torch.Tensor, class_token_only: bool = False) -> torch.Tensor:
        """The visual transformer on batch-first (S, L, W) sequences, each on its own."""
        if not self._fast_blocks:  # open_clip's own forward handles its layout
            out = self.visual.transformer(x)
            return out[:, :1] if class_token_only else out
        blocks = self.visual.transformer.resblocks
        last = len(blocks) - 1
        for i, block in enumerate(blocks):
            x = _plain_block_forward(block, x, class_token_only and i == last)
        return x

    def _project(self, class_tokens: torch.Tensor) -> torch.Tensor:
        v = self.visual
        projected = v.ln_post(class_tokens)
        if v.proj is not None:
            projected = projected @ v.proj
        return F.normalize(projected.float(), dim=-1)

    def _window_embeddings(self, tokens: torch.Tensor, k: int) -> torch.Tensor:
        """(B, num_windows, D): each window's class token + k*k patches, run on their own."""
        idx = self.windows[k]
        batch, num_windows = tokens.shape[0], idx.shape[0]
        patches = tokens[:, 1:][:, idx]  # (B, Nw, k*k, W)
        cls = tokens[:, :1, None].expand(-1, num_windows, -1, -1)
        seqs = torch.cat([cls, patches], dim=2).flatten(0, 1)  # (B*Nw, 1+k*k, W)
        per_chunk = max(1, self.window_token_budget // seqs.shape[1])
        outs = [
            self._transformer(chunk, class_token_only=True)[:, 0] for chunk in seqs.split(per_chunk)
        ]
        return self._project(torch.cat(outs)).view(batch, num_windows, -1)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor, windows: bool = True, patch_tokens: bool = False) -> Features:
        """Image embedding, and on request window embeddings and patch tokens, of (B, 3, H, W)."""
        x = x.to(self.device, non_blocking=True)
        with self._autocast():
            tokens = self._embed_tokens(x.to(self.visual.conv1.weight.dtype))
            out = self._transformer(tokens, class_token_only=not patch_tokens)
            embedding = self._project(out[:, 0])
            patches = None
            if patch_tokens:
                patches = F.normalize(self.visual.ln_post(out[:, 1:]).float(), dim=-1)
            wins = {k: self._window_embeddings(tokens, k) for k in self.scales} if windows else {}
        return Features(embedding, patches, wins)

    # ----- scoring ------------------------------------------------------------------

    def reference_bank(self, refs: torch.Tensor, batch_size: int = 8) -> ReferenceBank:
        """Bank of patch tokens and window embeddings from (K, 3, H, W) normal images."""
        self._check_images(refs, "reference_bank")
        if refs.shape[0] == 0:
            raise ValueError("reference_bank needs at least one image")
        feats = [self.encode(b, windows=True, patch_tokens=True) for b in refs.split(batch_size)]
        patch = torch.cat([f.patch_tokens for f in feats]).flatten(0, 1)  # type: ignore[misc]
        wins = {k: torch.cat([f.windows[k] for f in feats]).flatten(0, 1) for k in self.scales}
        return ReferenceBank(patch, wins, self.bank_meta(refs.shape[0]))

    def bank_meta(self, num_images: int) -> dict[str, Any]:
        """What a bank built by this model records about it."""
        return {
            "model": self.backbone.model_name,
            "weights": self.backbone.weights_id,
            "input_size": list(self.input_size),
            "grid_size": list(self.grid_size),
            "scales": list(self.scales),
            "num_images": int(num_images),
        }

    def check_bank(self, bank: ReferenceBank) -> ReferenceBank:
        """The bank on this model's device; BankMismatchError when it was built otherwise
        or its tensors do not match what it claims (a damaged or hand-made file)."""
        mine = self.bank_meta(bank.num_images)
        # The model's name is not compared: `local-dir:x` and `local-dir:./x/`, or a copy
        # of the folder, are the same model, and the weights' content hash already says so.
        if bank.meta.get("weights") != mine["weights"]:
            raise BankMismatchError(
                f"reference bank was built with other weights (model "
                f"{bank.meta.get('model')!r}, weights {bank.meta.get('weights')!r}) than this "
                f"model's ({mine['model']!r}, {mine['weights']!r}): rebuild it from the images"
            )
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
        return bank.to(self.device)

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
        zs_inverse = 1.0 / s_img[:, None]
        for k in self.scales:
            window_scores = p_anomalous(feats.windows[k], text, self.temperature)
            zs_inverse = zs_inverse + 1.0 / harmonic_aggregate(window_scores, self.windows[k], n)
        zero_shot = (1 + len(self.scales)) / zs_inverse  # (B, N)

        if bank is None:
            grid, scores = zero_shot, s_img
        else:
            few_shot = association(feats.patch_tokens, bank.patch_tokens)  # type: ignore[arg-type]
            for k in self.scales:
                a_w = association(feats.windows[k], bank.windows[k])
                few_shot = few_shot + harmonic_aggregate(a_w, self.windows[k], n)
            few_shot = few_shot / (1 + len(self.scales))
            grid = (zero_shot + few_shot) / 2
            scores = (s_img + few_shot.amax(dim=1)) / 2
        grid_maps = grid.view(-1, *self.grid_size).cpu() if maps else None
        return Prediction(scores.cpu(), grid_maps)
