"""End to end on the real default architecture (ViT-B-16-plus-240), with random weights."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from winclip_cli.model import WinClip
from winclip_cli.prompts import PromptSet


def test_default_architecture_end_to_end(tmp_path, cache_dir):
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-plus-240")
    weights = tmp_path / "vit-b-16-plus-240-random.pt"
    torch.save(model.state_dict(), weights)
    del model

    prompts = PromptSet(normal=("{}",), anomalous=("damaged {}",), templates=("a photo of a {}.",))
    wc = WinClip.load(weights=weights, prompts=prompts, cache_dir=cache_dir)
    assert wc.backbone.model_name == "ViT-B-16-plus-240"
    assert wc.input_size == (240, 240)
    assert wc.grid_size == (15, 15)
    assert wc.num_patches == 225
    assert wc.windows[2].shape == (196, 4)
    assert wc.windows[3].shape == (169, 9)
    assert wc.temperature == pytest.approx(0.07, rel=1e-4)  # random init

    text = wc.text_embeddings("screw")
    assert text.shape == (2, 640)
    assert torch.isfinite(text).all()

    rng = np.random.default_rng(0)
    ref_img = Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8))
    query_img = Image.fromarray(rng.integers(0, 256, (180, 320, 3), dtype=np.uint8))
    ref = wc.preprocess(ref_img)[None]
    query = wc.preprocess(query_img)[None]
    assert ref.shape == (1, 3, 240, 240)

    bank = wc.reference_bank(ref)
    assert bank.patch_tokens.shape == (225, 896)
    assert bank.windows[2].shape == (196, 640)
    assert bank.windows[3].shape == (169, 640)

    out = wc.predict(query, text=text, bank=bank, maps=True)
    assert out.image_scores.shape == (1,)
    assert out.grid_maps.shape == (1, 15, 15)
    for values in (out.image_scores, out.grid_maps):
        assert values.dtype == torch.float32
        assert torch.isfinite(values).all()
        assert values.min() >= 0
        assert values.max() <= 1
    assert out.grid_maps.std() > 0  # not a constant map
