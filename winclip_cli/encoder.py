"""The ViT window encoder: image, window and text embeddings from an open_clip model.

The only module that knows open_clip's model internals (the visual tower's layers,
its token layout, the tokenizer). Everything here returns L2-normalised float32.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .backbone import Backbone
from .hardware import Precision
from .windows import window_indices

# Window sequences run in chunks of at most this many tokens. On a CPU small chunks keep
# the working set in cache: for the default model, 1024 tokens ran 9% faster than 16384
# and peaked 0.7 GB lower (benchmarks/run.py). A GPU wants large launches.
CPU_WINDOW_TOKENS = 1024
ACCELERATOR_WINDOW_TOKENS = 32768


@dataclass
class Features:
    """Image-side features of a batch (all float32)."""

    embedding: torch.Tensor  # (B, D) projected class token, L2-normalised
    patch_tokens: torch.Tensor | None  # (B, N, W) after ln_post, L2-normalised
    windows: dict[int, torch.Tensor]  # scale -> (B, num_windows, D), L2-normalised


@dataclass
class LayerFeatures:
    """Image embeddings and intermediate patch tokens of one forward pass (all float32)."""

    embedding: torch.Tensor  # (B, D) projected class token, L2-normalised
    layers: list[torch.Tensor]  # per requested block: (B, num_patches, W) residual stream


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


@dataclass
class _FastBlock:
    """One plain block's linear layers as the fast path runs them, made once.

    fp32 uses the model's own tensors. bf16/fp16 hold copies in that format: autocast
    would cast every fp32 weight again on every call (its cache keeps only weights that
    require grad), about as much memory traffic as a window chunk's matmuls. The norms
    keep their fp32 parameters (autocast handles them as before). int8 swaps in
    dynamically quantised linear layers and computes the rest in fp32."""

    block: Any  # supplies ln_1, ls_1, ln_2, ls_2 and the head count
    in_proj: torch.nn.Module
    out_proj: torch.nn.Module
    mlp: torch.nn.Module


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Linear:
    """An nn.Linear holding these very tensors (no copy)."""
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = torch.nn.Parameter(bias, requires_grad=False)
    return layer


def quantise_int8(module: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantisation of the module's nn.Linear layers, in place (torch's own:
    int8 weights per output channel, each input quantised per call)."""
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as exc:  # announced for removal from torch; not worth a crash
        raise ValueError(
            "--precision int8 needs torch.ao.quantization, which this torch lacks: "
            "use --precision fp32 or bf16"
        ) from exc
    with warnings.catch_warnings():  # its deprecation notices are not the user's concern
        warnings.simplefilter("ignore")
        spec: dict[Any, Any] = {torch.nn.Linear: per_channel_dynamic_qconfig}
        return quantize_dynamic(module, spec, inplace=True)


class _OneDnnLinear(torch.nn.Module):
    """A bf16 linear layer, and a GELU after it when asked, in one oneDNN call on the CPU.

    aten's bf16 linear first copies the bias into every output row and runs GELU as a
    pass of its own; profiled, those took about a third of a bf16 window pass. oneDNN
    adds the bias and applies the GELU inside its matmul."""

    def __init__(self, linear: torch.nn.Linear, gelu: str | None = None) -> None:
        super().__init__()
        self.weight = linear.weight.detach().to(torch.bfloat16)
        bias = linear.bias
        self.bias = None if bias is None else bias.detach().to(torch.bfloat16)
        self.attr, self.algorithm = ("none", "") if gelu is None else ("gelu", gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x is fp32 after an fp32 LayerScale (autocast cast it for aten's linear).
        return torch.ops.mkldnn._linear_pointwise(
            x.to(torch.bfloat16), self.weight, self.bias, self.attr, [], self.algorithm
        )


def _onednn_usable(block: Any, precision: Precision) -> bool:
    """bf16 on a CPU whose torch has oneDNN's fused linear, and the usual MLP layout."""
    mlp = block.mlp
    return (
        precision.name == "bf16"
        and block.attn.in_proj_weight.device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and isinstance(mlp, torch.nn.Sequential)
        and [type(m) for m in (getattr(mlp, "c_fc", None), getattr(mlp, "c_proj", None))]
        == [torch.nn.Linear, torch.nn.Linear]
        and len(mlp) == 3
    )


def _onednn_block(block: Any) -> _FastBlock:
    attn, mlp = block.attn, block.mlp
    in_proj = _OneDnnLinear(_linear(attn.in_proj_weight, attn.in_proj_bias))
    act = mlp[1]
    if type(act) is torch.nn.GELU and act.approximate in ("none", "tanh"):
        layers = [_OneDnnLinear(mlp.c_fc, gelu=act.approximate), _OneDnnLinear(mlp.c_proj)]
    else:  # QuickGELU (OpenAI weights) and others stay a pass of their own
        layers = [_OneDnnLinear(mlp.c_fc), act, _OneDnnLinear(mlp.c_proj)]
    mlp_fast = torch.nn.Sequential(*layers)
    return _FastBlock(block, in_proj, _OneDnnLinear(attn.out_proj), mlp_fast)


def _fast_block(block: Any, precision: Precision) -> _FastBlock:
    """A plain block's linear layers made ready for ``precision`` (see _FastBlock)."""
    attn = block.attn
    if _onednn_usable(block, precision):
        return _onednn_block(block)
    if precision.name == "fp32":
        in_proj = _linear(attn.in_proj_weight, attn.in_proj_bias)
        return _FastBlock(block, in_proj, attn.out_proj, block.mlp)
    # New modules around the model's tensors: converting them leaves the model as it is.
    layers: Any = torch.nn.ModuleList(
        [
            _linear(attn.in_proj_weight, attn.in_proj_bias),
            _linear(attn.out_proj.weight, attn.out_proj.bias),
            copy.deepcopy(block.mlp),
        ]
    )
    layers = quantise_int8(layers) if precision.quantised else layers.to(precision.dtype)
    return _FastBlock(block, layers[0], layers[1], layers[2])


def _plain_block_forward(fast: _FastBlock, x: torch.Tensor, class_token_only: bool) -> torch.Tensor:
    """ResidualAttentionBlock.forward on batch-first (S, L, W) sequences.

    The same arithmetic as open_clip's block, through scaled_dot_product_attention; with
    ``class_token_only`` only the class token's output (S, 1, W) is computed, which is all
    the last layer of a window pass needs.
    """
    block = fast.block
    heads = block.attn.num_heads
    seqs, length, width = x.shape
    q, k, v = fast.in_proj(block.ln_1(x)).chunk(3, dim=-1)
    if class_token_only:
        q, x = q[:, :1], x[:, :1]
    q_len = q.shape[1]
    q = q.reshape(seqs, q_len, heads, -1).transpose(1, 2)
    k = k.reshape(seqs, length, heads, -1).transpose(1, 2)
    v = v.reshape(seqs, length, heads, -1).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)
    out = fast.out_proj(out.transpose(1, 2).reshape(seqs, q_len, width))
    x = x + block.ls_1(out)
    return x + block.ls_2(fast.mlp(block.ln_2(x)))


def _concat(parts: list[Features]) -> Features:
    """The features of several batches as one."""
    first = parts[0]
    patches = None
    if first.patch_tokens is not None:
        patches = torch.cat([p.patch_tokens for p in parts if p.patch_tokens is not None])
    wins = {k: torch.cat([p.windows[k] for p in parts]) for k in first.windows}
    return Features(torch.cat([p.embedding for p in parts]), patches, wins)


class WindowEncoder:
    """Image embeddings, patch tokens and window embeddings (WINCLIP.md, token masking)
    of a ViT with a class token; its geometry is read from the model."""

    def __init__(self, backbone: Backbone, scales: tuple[int, ...]) -> None:
        self.backbone = backbone
        self.visual: Any = backbone.clip.visual
        self.device = backbone.device
        v = self.visual
        self.input_size: tuple[int, int] = (int(v.image_size[0]), int(v.image_size[1]))
        self.grid_size: tuple[int, int] = (int(v.grid_size[0]), int(v.grid_size[1]))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.visual_width = int(v.conv1.out_channels)
        self.embed_dim = int(v.proj.shape[1]) if v.proj is not None else self.visual_width
        self.scales = scales
        cpu = self.device.type == "cpu"
        self.window_token_budget = CPU_WINDOW_TOKENS if cpu else ACCELERATOR_WINDOW_TOKENS
        self.windows = {k: window_indices(*self.grid_size, k).to(self.device) for k in scales}
        self.fast_blocks = all(_is_plain_block(b) for b in v.transformer.resblocks)
        self.precision = backbone.precision
        if self.precision.quantised and not self.fast_blocks:
            raise ValueError(
                "--precision int8 needs open_clip's standard transformer blocks, which this "
                "model does not have: use --precision fp32 or bf16"
            )
        blocks = v.transformer.resblocks if self.fast_blocks else []
        self.blocks = [_fast_block(b, self.precision) for b in blocks]
        self._tokenizer: Any = None

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = self.backbone.dtype
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    # ----- text -----------------------------------------------------------------------

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

    # ----- images ---------------------------------------------------------------------

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
        if not self.fast_blocks:  # open_clip's own forward handles its layout
            out = self.visual.transformer(x)
            return out[:, :1] if class_token_only else out
        last = len(self.blocks) - 1
        x = x.to(self.precision.dtype)  # the residual stream in bf16/fp16, as autocast had it
        for i, fast in enumerate(self.blocks):
            x = _plain_block_forward(fast, x, class_token_only and i == last)
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
        if self.precision.quantised and x.shape[0] > 1:
            # int8 quantises each linear layer's input with one scale for the whole tensor:
            # images passed together would move each other's scores (by 2e-3 on the tiny
            # model), so a row would depend on its batch. One image at a time, it doesn't.
            parts = [self.encode(one, windows, patch_tokens) for one in x.split(1)]
            return _concat(parts)
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

    # ----- intermediate layers (mutual scoring) ---------------------------------------

    @property
    def depth(self) -> int:
        """Number of transformer blocks of the visual tower."""
        return len(self.visual.transformer.resblocks)

    def _run_block(self, index: int, block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One transformer block (the ``index``-th) on batch-first (B, L, W) tokens."""
        if self.fast_blocks:  # in the run's precision, as _transformer runs it
            fast = self.blocks[index]
            return _plain_block_forward(fast, x.to(self.precision.dtype), class_token_only=False)
        if getattr(self.visual.transformer, "batch_first", True):
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)

    @torch.inference_mode()
    def encode_layers(self, x: torch.Tensor, blocks: tuple[int, ...]) -> LayerFeatures:
        """Image embedding of (B, 3, H, W), and the patch tokens of the residual stream
        (before ln_post, class token dropped) after each of ``blocks`` (1-based), all
        from one plain forward pass (no windows)."""
        if not blocks or min(blocks) < 1 or max(blocks) > self.depth:
            raise ValueError(f"blocks must lie in 1..{self.depth}, got {blocks}")
        x = x.to(self.device, non_blocking=True)
        taps: dict[int, torch.Tensor] = {}
        with self._autocast():
            tokens = self._embed_tokens(x.to(self.visual.conv1.weight.dtype))
            for number, block in enumerate(self.visual.transformer.resblocks, start=1):
                tokens = self._run_block(number - 1, block, tokens)
                if number in blocks:
                    taps[number] = tokens[:, 1:].float()
            embedding = self._project(tokens[:, 0])
        return LayerFeatures(embedding, [taps[b] for b in blocks])
