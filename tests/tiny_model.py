"""A tiny open_clip ViT with random weights (fixed seed), made in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch

TINY_NAME = "winclip-tiny-vit"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 48, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def make_tiny_model(folder: Path, seed: int = 0) -> dict[str, Path | str]:
    """Write config + weights; returns the paths and the ``local-dir:`` model string.

    The config is also registered with open_clip under TINY_NAME, so it can be used by
    name with ``weights=``. Logit scale is open_clip's default init (tau = 0.07).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TINY_NAME}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(folder / f"{TINY_NAME}.json")
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_NAME)
    # Random init leaves some parts at exactly zero/one; spread them so tests see real math.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    weights = folder / "weights.pt"
    torch.save(model.state_dict(), weights)
    local = folder / "local"
    local.mkdir(exist_ok=True)
    (local / "open_clip_config.json").write_text(
        json.dumps(
            {"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}
        )
    )
    torch.save(model.state_dict(), local / "open_clip_pytorch_model.bin")
    return {"weights": weights, "local_dir": f"local-dir:{local}", "name": TINY_NAME}
