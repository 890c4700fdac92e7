"""Precision: what `auto` picks and why, the fast paths' fidelity against fp32 on the tiny
model, rows that do not depend on the batch, and the precision banks and calibrations
record (and refuse at another precision).

Stated tolerances (tiny random model, measured: bf16 1.4e-3, int8 1.3e-3 on scores;
bf16 1.3e-3, int8 2.5e-3 on maps): scores within 3e-3 of fp32, grid maps within 5e-3.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from tests.tiny_model import TINY_NAME
from winclip_cli import hardware
from winclip_cli.bank import load_bank, save_bank
from winclip_cli.conformal import (
    CALIBRATION_FORMAT,
    CALIBRATION_VERSION,
    Calibration,
    load_calibration,
    p_values,
    save_calibration,
)
from winclip_cli.errors import BankMismatchError, CalibrationError
from winclip_cli.hardware import Precision, choose_auto, describe_features, resolve
from winclip_cli.model import WinClip

SAMPLES = Path(__file__).resolve().parent.parent / "sample_data"
GOOD = sorted((SAMPLES / "good").glob("*.jpg")) + sorted((SAMPLES / "parts" / "good").glob("*.jpg"))
PARTS = sorted((SAMPLES / "parts").rglob("*.jpg"))
SCORE_TOLERANCE = 3e-3
MAP_TOLERANCE = 5e-3
CPU = torch.device("cpu")
AMX = {"amx_bf16": True, "amx_tile": True, "avx512_bf16": True, "avx2": True}
NO_AMX = {"amx_bf16": False, "avx512_bf16": True, "avx512_vnni": True, "avx2": True}


def load(tiny, cache_dir, precision: str) -> WinClip:
    return WinClip.load(
        model=TINY_NAME, weights=tiny["weights"], precision=precision, cache_dir=cache_dir
    )


def pixels(wc: WinClip, paths: list[Path]) -> torch.Tensor:
    return torch.stack([wc.preprocess(Image.open(p)) for p in paths])


@pytest.fixture(scope="module")
def models(tiny, tmp_path_factory):
    cache = tmp_path_factory.mktemp("text-cache")
    return {p: load(tiny, cache, p) for p in ("fp32", "bf16", "int8")}


# ----------------------------------------------------------------------- auto


def test_auto_is_bf16_on_a_cpu_with_amx_and_says_why():
    assert choose_auto(CPU, AMX) == Precision("bf16", "bf16: CPU has AMX")


def test_auto_is_fp32_without_amx_even_with_avx512_bf16():
    """AVX512-BF16 alone measured slower than fp32 (benchmarks/precision.py)."""
    chosen = choose_auto(CPU, NO_AMX)
    assert chosen.name == "fp32"
    assert "no AMX" in chosen.reason


def test_auto_is_fp16_on_cuda_and_fp32_on_mps():
    assert choose_auto(torch.device("cuda"), {}).name == "fp16"
    assert choose_auto(torch.device("mps"), AMX).name == "fp32"


def test_auto_reads_the_features_torch_reports(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_features", lambda: AMX)
    assert resolve("auto", CPU).name == "bf16"
    monkeypatch.setattr(hardware, "cpu_features", lambda: NO_AMX)
    assert resolve("auto", CPU).name == "fp32"


def test_this_machines_features_are_read():
    features = hardware.cpu_features()
    assert features and all(isinstance(v, bool) for v in features.values())
    assert describe_features(features)


def test_explicit_precisions_and_refusals():
    assert resolve("bf16", CPU) == Precision("bf16", "bf16: asked for")
    assert resolve("int8", CPU).dtype == torch.float32  # int8 matmuls, fp32 elsewhere
    for name, device, words in (
        ("fp16", CPU, "fp16 is not supported on the CPU"),
        ("int8", torch.device("cuda"), "int8 runs on the CPU only"),
        ("fp8", CPU, "unknown precision 'fp8'"),
    ):
        with pytest.raises(ValueError, match=words):
            resolve(name, device)


def test_library_default_stays_fp32_and_auto_resolves(tiny, cache_dir, monkeypatch):
    assert load(tiny, cache_dir, "fp32").precision == "fp32"
    plain = WinClip.load(model=TINY_NAME, weights=tiny["weights"], cache_dir=cache_dir)
    assert plain.precision == "fp32"
    monkeypatch.setattr(hardware, "cpu_features", lambda: AMX)
    auto = load(tiny, cache_dir, "auto")
    assert (auto.precision, auto.precision_reason) == ("bf16", "bf16: CPU has AMX")
    assert auto.bank_meta(1)["precision"] == "bf16"  # what files record: never "auto"


def test_fast_precisions_leave_the_model_in_fp32(models):
    """The bf16 copies and int8 layers are the encoder's own: the text tower, the generic
    path and anything else reading the model still see its fp32 weights."""
    for wc in models.values():
        dtypes = {p.dtype for p in wc.backbone.clip.parameters()}
        assert dtypes == {torch.float32}


# ------------------------------------------------------------------- fidelity


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_scores_and_maps_stay_close_to_fp32(models, precision):
    full, low = models["fp32"], models[precision]
    text = full.text_embeddings("textile")
    x = pixels(full, PARTS)
    for bank_images in (None, GOOD[:2]):
        bank32 = full.reference_bank(pixels(full, bank_images)) if bank_images else None
        bank_low = low.reference_bank(pixels(low, bank_images)) if bank_images else None
        a = full.predict(x, text=text, bank=bank32)
        b = low.predict(x, text=text, bank=bank_low)
        assert b.image_scores.dtype == torch.float32 and b.grid_maps.dtype == torch.float32
        assert (a.image_scores - b.image_scores).abs().max() <= SCORE_TOLERANCE
        assert (a.grid_maps - b.grid_maps).abs().max() <= MAP_TOLERANCE
        assert (a.image_scores != b.image_scores).any(), "the precision did not apply"


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_a_row_does_not_depend_on_its_batch(models, precision):
    """int8 quantises a whole tensor with one scale: images passed together would move
    each other's scores, so it encodes one image at a time."""
    wc = models[precision]
    text = wc.text_embeddings("textile")
    x = pixels(wc, PARTS[:4])
    together = wc.predict(x, text=text, maps=True)
    for i in range(4):
        alone = wc.predict(x[i : i + 1], text=text, maps=True)
        assert torch.allclose(alone.image_scores[0], together.image_scores[i], atol=1e-6)
        assert torch.allclose(alone.grid_maps[0], together.grid_maps[i], atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_same_labels_at_a_calibrated_rate_on_sample_data(models, precision):
    """Each precision calibrated on the known-good samples (its own scores, as a
    calibration is refused at another precision) labels the samples as fp32 does."""
    alpha = 0.25  # 7 known-good images support rates down to 1/8
    labels, p = {}, {}
    for name in ("fp32", precision):
        wc = models[name]
        text = wc.text_embeddings("textile")
        good = wc.predict(pixels(wc, GOOD), text=text, maps=False).image_scores.numpy()
        parts = wc.predict(pixels(wc, PARTS), text=text, maps=False).image_scores.numpy()
        p[name] = p_values(parts, good)
        labels[name] = p[name] <= alpha
    assert (labels[precision] == labels["fp32"]).all()
    # p-values are ranks among 7 scores: at most one rank apart.
    assert np.abs(p[precision] - p["fp32"]).max() <= 1 / 8 + 1e-12


class MatmulCensus(TorchDispatchMode):
    """FLOPs of every matrix product, by the dtype it ran in (and quantised linears), and
    how many fp32 values were converted to bf16."""

    def __init__(self) -> None:
        super().__init__()
        self.flops: dict[str, float] = {}
        self.converted = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if name in ("to", "_to_copy") and tensors[0].dtype == torch.float32:
            self.converted += tensors[0].numel() if out.dtype == torch.bfloat16 else 0
            return out
        if name in ("linear_dynamic", "linear", "_linear_pointwise"):  # (..., in) -> (..., out)
            flops, key = 2.0 * tensors[0].numel() * out.shape[-1], str(tensors[0].dtype)
            key = "int8" if name == "linear_dynamic" else key
        elif name in ("mm", "addmm", "bmm", "baddbmm", "matmul"):
            a, b = tensors[-2], tensors[-1]
            flops, key = 2.0 * a.numel() * b.shape[-1], str(a.dtype)
        else:
            return out
        self.flops[key] = self.flops.get(key, 0.0) + flops
        return out


@pytest.mark.parametrize(("precision", "kind"), [("bf16", "torch.bfloat16"), ("int8", "int8")])
def test_the_hot_path_has_no_fp32_matmuls(models, precision, kind):
    """Nearly every FLOP of a few-shot segment pass runs at the chosen precision; what
    stays fp32 is the formulas on embeddings (text and bank similarities)."""
    wc = models[precision]
    text = wc.text_embeddings("textile")
    bank = wc.reference_bank(pixels(wc, GOOD[:1]))
    census = MatmulCensus()
    with census:
        wc.predict(pixels(wc, PARTS[:2]), text=text, bank=bank, maps=True)
    total = sum(census.flops.values())
    assert census.flops.get(kind, 0.0) / total > 0.75, census.flops


def test_weights_are_not_cast_on_every_call(models):
    """Autocast alone converts each fp32 weight again in every window chunk; the bf16
    path holds converted copies, so one image's pass converts fewer values than the
    blocks' weight matrices hold (only the image, its tokens and the small tensors)."""
    wc = models["bf16"]
    text = wc.text_embeddings("textile")
    blocks = wc.visual.transformer.resblocks
    weights = sum(p.numel() for b in blocks for p in b.parameters() if p.ndim == 2)
    census = MatmulCensus()
    with census:
        wc.predict(pixels(wc, PARTS[:1]), text=text, maps=True)
    assert 0 < census.converted < weights


# ------------------------------------------------------------- banks and files


def test_a_bank_records_and_needs_its_precision(models, tmp_path):
    full, half = models["fp32"], models["bf16"]
    bank = half.reference_bank(pixels(half, GOOD[:1]))
    assert bank.meta["precision"] == "bf16"
    save_bank(bank, tmp_path / "bank.pt")
    loaded = load_bank(tmp_path / "bank.pt")
    half.check_bank(loaded)
    with pytest.raises(BankMismatchError, match=r"made at precision bf16.*--precision bf16"):
        full.check_bank(loaded)


def test_an_old_bank_without_a_precision_counts_as_fp32(models):
    """Banks from before precision was recorded were made at the CLI's default, fp32."""
    full, half = models["fp32"], models["bf16"]
    bank = full.reference_bank(pixels(full, GOOD[:1]))
    del bank.meta["precision"]
    full.check_bank(bank)
    with pytest.raises(BankMismatchError, match="--precision fp32"):
        half.check_bank(bank)


def calibration(precision: str = "fp32") -> Calibration:
    scores = np.array([0.1, 0.2, 0.3])
    settings = {"class": "x", "precision": precision}
    return Calibration(settings, scores, None, None, ["a", "b", "c"])


def test_a_calibration_records_its_precision(tmp_path):
    save_calibration(calibration("bf16"), tmp_path / "x.cal")
    assert load_calibration(tmp_path / "x.cal").precision == "bf16"


def test_a_calibration_never_records_auto():
    with pytest.raises(CalibrationError, match="auto"):
        calibration("auto")


def test_an_old_calibration_without_a_precision_loads_as_fp32(tmp_path):
    payload = {
        "format": CALIBRATION_FORMAT,
        "version": CALIBRATION_VERSION,
        "settings": '{"class": "x"}',
        "scores": torch.tensor([0.1, 0.2], dtype=torch.float64),
        "map_maxima": None,
        "bank": None,
        "images": ["a", "b"],
    }
    torch.save(payload, tmp_path / "old.cal")
    cal = load_calibration(tmp_path / "old.cal")
    assert cal.precision == "fp32" and cal.settings["precision"] == "fp32"


# ------------------------------------------------------- against open_clip's blocks

VARIANTS = {
    "plain": ({}, {}),
    "quick-gelu": ({"quick_gelu": True}, {}),  # OpenAI weights: GELU not fused
    "layer-scale": ({}, {"ls_init_value": 0.5}),
}


def variant_model(tmp_path, cache_dir, variant: str, precision: str) -> WinClip:
    import json

    import open_clip

    from tests.tiny_model import TINY_CFG

    top, vision = VARIANTS[variant]
    name = f"winclip-precision-{variant}"
    cfg = {**json.loads(json.dumps(TINY_CFG)), **top}
    cfg["vision_cfg"].update(vision)
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    torch.manual_seed(0)
    clip = open_clip.create_model(name)
    weights = tmp_path / "w.pt"
    torch.save(clip.state_dict(), weights)
    return WinClip.load(model=name, weights=weights, precision=precision, cache_dir=cache_dir)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fast_blocks_match_open_clips_own(tmp_path, cache_dir, variant, precision):
    """The fast path's layers (oneDNN-fused bf16, quantised int8) against open_clip's own
    blocks, which run under autocast at bf16 and in fp32 for int8."""
    wc = variant_model(tmp_path, cache_dir, variant, precision)
    x = pixels(wc, PARTS[:2])
    fast = wc.encode(x, patch_tokens=True)
    wc.encoder.fast_blocks = False
    slow = wc.encode(x, patch_tokens=True)
    pairs = [(fast.embedding, slow.embedding), (fast.patch_tokens, slow.patch_tokens)]
    pairs += [(fast.windows[k], slow.windows[k]) for k in wc.scales]
    distances = [(1 - (a * b).sum(-1)).max().item() for a, b in pairs]  # unit vectors
    assert max(distances) < 5e-4  # measured: bf16 2.3e-5, int8 1.1e-4
    assert max(distances) > 0 or precision == "bf16"  # int8's differ from fp32's
