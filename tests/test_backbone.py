"""Weights resolution, offline behaviour, device and precision, and the cost of predict()."""

from __future__ import annotations

import io
import json
import socket
import time
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

import winclip_cli.backbone as backbone_module
from tests.tiny_model import TINY_CFG, TINY_NAME
from winclip_cli.backbone import (
    WeightsUnavailableError,
    _hub_reachable,
    fetch_pretrained,
    load_backbone,
    resolve_device,
)
from winclip_cli.hardware import resolve
from winclip_cli.model import WinClip


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 48, 48, generator=torch.Generator().manual_seed(seed))


@pytest.fixture()
def state_dict(tiny) -> dict[str, torch.Tensor]:
    return torch.load(tiny["weights"], map_location="cpu", weights_only=True)


@pytest.fixture()
def no_hub(monkeypatch):
    """Any use of the hub client fails the test (loading local weights must not touch it)."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"hub client called: {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


def embeddings(wc: WinClip, seed: int = 0) -> torch.Tensor:
    return wc.encode(images(2, seed), windows=False).embedding


def register_config(folder: Path, name: str, cfg: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)


# --------------------------------------------------------------------------------------
# Weights files
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pt", "bin", "pth", "safetensors", "legacy-pt"])
def test_weights_file_formats(wc, state_dict, tmp_path, cache_dir, no_hub, fmt):
    if fmt == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    elif fmt == "legacy-pt":
        path = tmp_path / "model.pt"
        torch.save(state_dict, path, _use_new_zipfile_serialization=False)
    else:
        path = tmp_path / f"model.{fmt}"
        torch.save(state_dict, path)
    loaded = WinClip.load(model=TINY_NAME, weights=path, cache_dir=cache_dir)
    torch.testing.assert_close(embeddings(loaded), embeddings(wc), atol=1e-6, rtol=0)
    assert loaded.temperature == pytest.approx(wc.temperature)
    # the identity of the weights is their content, not the file's name or format:
    # the text cache and reference banks carry over
    assert loaded.backbone.weights_id == wc.backbone.weights_id
    bank = wc.reference_bank(images(1, seed=1))
    text = wc.text_embeddings("screw")
    torch.testing.assert_close(
        loaded.predict(images(1, seed=2), text=text, bank=bank).grid_maps,
        wc.predict(images(1, seed=2), text=text, bank=bank).grid_maps,
        atol=1e-6,
        rtol=0,
    )


@pytest.mark.parametrize("wrapping", ["state_dict", "module", "state_dict+module"])
def test_wrapped_state_dicts(wc, state_dict, tmp_path, cache_dir, no_hub, wrapping):
    payload: dict = state_dict
    if "module" in wrapping:
        payload = {f"module.{k}": v for k, v in payload.items()}
    if wrapping.startswith("state_dict"):
        payload = {"state_dict": payload, "epoch": 31, "name": "run"}
    path = tmp_path / "checkpoint.pt"
    torch.save(payload, path)
    loaded = WinClip.load(model=TINY_NAME, weights=path, cache_dir=cache_dir)
    torch.testing.assert_close(embeddings(loaded), embeddings(wc), atol=1e-6, rtol=0)


def test_weights_are_really_used(wc, tmp_path, cache_dir):
    from tests.tiny_model import make_tiny_model

    other = make_tiny_model(tmp_path / "other", seed=5)
    loaded = WinClip.load(model=TINY_NAME, weights=other["weights"], cache_dir=cache_dir)
    assert (embeddings(loaded) - embeddings(wc)).abs().max() > 1e-3
    assert loaded.backbone.weights_id != wc.backbone.weights_id


def test_local_dir(wc, tiny, cache_dir, no_hub):
    loaded = WinClip.load(model=tiny["local_dir"], cache_dir=cache_dir)
    # the folder's preprocess_cfg wins over the model's defaults
    assert loaded.backbone.mean == (0.5, 0.5, 0.5)
    assert loaded.backbone.std == (0.25, 0.25, 0.25)
    assert loaded.grid_size == (6, 6)
    torch.testing.assert_close(embeddings(loaded), embeddings(wc), atol=1e-6, rtol=0)
    text = loaded.text_embeddings("screw")
    assert text.shape == (2, 32)
    torch.testing.assert_close(text, wc.text_embeddings("screw"), atol=1e-5, rtol=0)


def test_local_dir_without_config(tmp_path):
    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(WeightsUnavailableError, match=r"open_clip_config\.json"):
        WinClip.load(model=f"local-dir:{tmp_path}")


def test_local_dir_without_weights(tiny, tmp_path):
    src = Path(tiny["local_dir"].removeprefix("local-dir:"))
    (tmp_path / "open_clip_config.json").write_text((src / "open_clip_config.json").read_text())
    with pytest.raises(WeightsUnavailableError, match="no weights file"):
        WinClip.load(model=f"local-dir:{tmp_path}")


def test_missing_weights_file(tmp_path, no_hub):
    path = tmp_path / "missing.pt"
    with pytest.raises(WeightsUnavailableError, match="not found") as info:
        WinClip.load(model=TINY_NAME, weights=path)
    assert "missing.pt" in str(info.value)


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors"])
def test_garbage_weights_file(tmp_path, no_hub, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"this is not a checkpoint\x00\x01\x02" * 100)
    with pytest.raises(WeightsUnavailableError, match="cannot read weights file") as info:
        WinClip.load(model=TINY_NAME, weights=path)
    assert path.name in str(info.value)


@pytest.mark.parametrize("payload", [{}, {"state_dict": {}}, [1, 2, 3], torch.zeros(4)])
def test_weights_file_without_a_state_dict(tmp_path, no_hub, payload):
    path = tmp_path / "empty.pt"
    torch.save(payload, path)
    with pytest.raises(WeightsUnavailableError, match="state dict"):
        WinClip.load(model=TINY_NAME, weights=path)


@pytest.mark.parametrize("damage", ["missing_key", "extra_key", "wrong_shape"])
def test_state_dict_that_does_not_fit(state_dict, tmp_path, no_hub, damage):
    if damage == "missing_key":
        del state_dict["visual.proj"]
    elif damage == "extra_key":
        state_dict["visual.something_else"] = torch.zeros(3)
    else:
        state_dict["visual.conv1.weight"] = torch.zeros(32, 3, 4, 4)
    path = tmp_path / "bad.pt"
    torch.save(state_dict, path)
    with pytest.raises(WeightsUnavailableError, match="do not fit --model") as info:
        WinClip.load(model=TINY_NAME, weights=path)
    assert "bad.pt" in str(info.value)


def test_other_architecture_state_dict(tmp_path, no_hub):
    name = "winclip-test-wide-vit"
    cfg = json.loads(json.dumps(TINY_CFG))
    cfg["vision_cfg"]["width"] = 64
    register_config(tmp_path, name, cfg)
    wide = open_clip.create_model(name)
    path = tmp_path / "wide.pt"
    torch.save(wide.state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="do not fit --model") as info:
        WinClip.load(model=TINY_NAME, weights=path)
    assert f"try --model {name}" in str(info.value)
    # the same file on its own architecture loads
    assert WinClip.load(model=name, weights=path).visual.conv1.out_channels == 64


def test_unknown_model_name(tiny):
    with pytest.raises(WeightsUnavailableError, match="unknown model"):
        WinClip.load(model="no-such-model-anywhere", weights=tiny["weights"])


def test_no_weights_at_all():
    with pytest.raises(WeightsUnavailableError, match="--weights"):
        WinClip.load(model=TINY_NAME, pretrained=None, weights=None)


def test_unknown_pretrained_tag(no_hub):
    with pytest.raises(WeightsUnavailableError, match="unknown weights tag") as info:
        WinClip.load(model="ViT-B-16-plus-240", pretrained="no_such_tag")
    assert "laion400m_e31" in str(info.value)  # the known tags are listed
    assert "--weights" in str(info.value)


def test_model_without_class_token(state_dict, tmp_path):
    name = "winclip-test-avgpool-vit"
    cfg = json.loads(json.dumps(TINY_CFG))
    cfg["vision_cfg"]["pool_type"] = "avg"
    register_config(tmp_path, name, cfg)
    path = tmp_path / "w.pt"
    torch.save(open_clip.create_model(name).state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="class token"):
        WinClip.load(model=name, weights=path)


def test_a_model_winclip_cannot_use_is_refused_before_any_download(monkeypatch):
    """RN50 has no class token: say so at once, not after (or instead of) fetching
    a checkpoint that could never be used."""
    import winclip_cli.backbone as backbone

    def no_download(*args, **kwargs):
        raise AssertionError("weights fetched for a model that can't be used")

    monkeypatch.setattr(backbone, "fetch_pretrained", no_download)
    with pytest.raises(WeightsUnavailableError, match="not a ViT with a class token"):
        WinClip.load(model="RN50", pretrained="openai")


@pytest.mark.parametrize(
    "name",
    ["ViT-B-16-plus-240", "ViT-B-32", "RN50", "convnext_base", "ViT-B-16-SigLIP", "EVA02-B-16"],
)
def test_the_config_check_agrees_with_the_built_model(name):
    """The early check (config only) refuses exactly the models the check on the built
    model refuses: ResNets, timm towers, attention pooling."""
    import winclip_cli.backbone as backbone

    with torch.device("meta"):
        visual = open_clip.create_model(name, load_weights=False, device="meta").visual
    usable = getattr(visual, "pool_type", None) == "tok" and not getattr(visual, "attn_pool", None)
    try:
        backbone._check_class_token_config(name, open_clip.get_model_config(name))
        passed = True
    except WeightsUnavailableError:
        passed = False
    assert passed == usable


# --------------------------------------------------------------------------------------
# Offline behaviour for pretrained tags
# --------------------------------------------------------------------------------------


class FakeHub:
    """Stands in for huggingface_hub.hf_hub_download: nothing is cached, no network."""

    def __init__(self, cached: dict[str, str] | None = None) -> None:
        self.calls: list[dict] = []
        self.cached = cached or {}

    def __call__(self, repo_id, filename, **kwargs):
        from huggingface_hub.errors import LocalEntryNotFoundError

        self.calls.append({"repo_id": repo_id, "filename": filename, **kwargs})
        if kwargs.get("local_files_only"):
            if filename in self.cached:
                return self.cached[filename]
            raise LocalEntryNotFoundError(f"{repo_id}/{filename} not in cache")
        raise ConnectionError("network download attempted")


def test_offline_pretrained_tag_fails_fast_with_help(monkeypatch):
    import huggingface_hub

    hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    probes = []
    monkeypatch.setattr(
        backbone_module, "_hub_reachable", lambda *a, **k: probes.append(1) or False
    )

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before the weights were found")

    monkeypatch.setattr(backbone_module, "_build_on_meta", no_build)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        WinClip.load(model="ViT-B-16-plus-240", pretrained="laion400m_e31")
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "--weights" in message
    assert "winclip download" in message
    assert "ViT-B-16-plus-240" in message
    assert hub.calls, "the local cache was never consulted"
    assert all(call.get("local_files_only") is True for call in hub.calls)
    assert probes == [1]
    assert elapsed < 10


def test_download_error_names_weights_option(monkeypatch):
    import huggingface_hub

    hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    monkeypatch.setattr(backbone_module, "_hub_reachable", lambda *a, **k: True)
    with pytest.raises(WeightsUnavailableError, match="--weights") as info:
        fetch_pretrained("ViT-B-16-plus-240", "laion400m_e31")
    assert "could not download" in str(info.value)
    assert any(not call.get("local_files_only") for call in hub.calls)


def test_fetch_pretrained_prefers_cached_files(monkeypatch, tmp_path):
    import huggingface_hub

    cached = tmp_path / "open_clip_pytorch_model.bin"
    hub = FakeHub(cached={"open_clip_pytorch_model.bin": str(cached)})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    monkeypatch.setattr(backbone_module, "_hub_reachable", lambda *a, **k: 1 / 0)
    assert fetch_pretrained("ViT-B-16-plus-240", "laion400m_e31") == cached
    assert all(call.get("local_files_only") is True for call in hub.calls)
    assert {c["repo_id"] for c in hub.calls} == {
        "timm/vit_base_patch16_plus_clip_240.laion400m_e31"
    }


def test_fetch_pretrained_without_download_allowed(monkeypatch):
    import huggingface_hub

    hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    monkeypatch.setattr(backbone_module, "_hub_reachable", lambda *a, **k: True)
    with pytest.raises(WeightsUnavailableError, match="winclip download"):
        fetch_pretrained("ViT-B-16-plus-240", "laion400m_e31", allow_download=False)
    assert all(call.get("local_files_only") is True for call in hub.calls)


def test_hub_reachable_respects_offline_flag(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_socket(*args, **kwargs):
        raise AssertionError("socket opened although HF_HUB_OFFLINE=1")

    monkeypatch.setattr(socket, "create_connection", no_socket)
    assert _hub_reachable() is False


def test_hub_reachable_probes_the_endpoint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert _hub_reachable(timeout=2) is True
    # the port is closed now: refused at once
    start = time.monotonic()
    assert _hub_reachable(timeout=2) is False
    assert time.monotonic() - start < 5


# --------------------------------------------------------------------------------------
# predict() pays only for what it returns
# --------------------------------------------------------------------------------------


class TransformerCalls:
    def __init__(self, wc: WinClip) -> None:
        self.lengths: list[tuple[int, int]] = []
        inner = wc.encoder._transformer

        def counted(x, *args, **kwargs):
            self.lengths.append((x.shape[0], x.shape[1]))
            return inner(x, *args, **kwargs)

        wc.encoder._transformer = counted


def test_predict_without_maps_runs_no_windows(wc):
    text = wc.text_embeddings("screw")
    calls = TransformerCalls(wc)
    window_pass = wc.encoder._window_embeddings

    def refuse(*args, **kwargs):
        raise AssertionError("windows computed for maps=False")

    wc.encoder._window_embeddings = refuse
    out = wc.predict(images(3), text=text, maps=False)
    assert out.grid_maps is None
    assert out.image_scores.shape == (3,)
    assert calls.lengths == [(3, 37)]  # one full pass for the whole batch
    wc.encoder._window_embeddings = window_pass
    calls.lengths.clear()
    with_maps = wc.predict(images(3), text=text, maps=True)
    assert len(calls.lengths) > 1
    assert (3, 37) in calls.lengths
    assert {length for _, length in calls.lengths} == {37, 5, 10}
    torch.testing.assert_close(with_maps.image_scores, out.image_scores, atol=1e-6, rtol=0)


def test_predict_with_bank_computes_windows_even_without_maps(wc):
    text = wc.text_embeddings("screw")
    bank = wc.reference_bank(images(1, seed=9))
    calls = TransformerCalls(wc)
    out = wc.predict(images(2), text=text, bank=bank, maps=False)
    assert out.grid_maps is None
    assert {length for _, length in calls.lengths} == {37, 5, 10}


# --------------------------------------------------------------------------------------
# Device and precision
# --------------------------------------------------------------------------------------


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    if torch.cuda.is_available():
        assert auto.type == "cuda"
        assert resolve_device("cuda").type == "cuda"
    else:
        assert auto.type in ("cpu", "mps")
        with pytest.raises(ValueError, match="cuda"):
            resolve_device("cuda")
    for bad in ("nonsense", "tpu", "meta"):
        with pytest.raises(ValueError):
            resolve_device(bad)


def test_a_gpu_this_machine_does_not_have(monkeypatch):
    """`--device cuda:1` on a one-GPU machine: said plainly, naming what was asked."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"--device cuda:1: this machine has 1 GPU"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda:1 was asked for"):
        resolve_device("cuda:1")


def test_auto_device_loads(tiny, cache_dir):
    wc = WinClip.load(model=TINY_NAME, weights=tiny["weights"], device="auto", cache_dir=cache_dir)
    assert wc.device == resolve_device("auto")
    assert wc.visual.conv1.weight.device.type == wc.device.type


def test_precision_checks():
    cpu = torch.device("cpu")
    assert resolve("fp32", cpu).dtype == torch.float32
    assert resolve("bf16", cpu).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp16"):
        resolve("fp16", cpu)
    with pytest.raises(ValueError, match="precision"):
        resolve("fp8", cpu)


def test_fp16_on_cpu_is_refused(tiny):
    with pytest.raises(ValueError, match="fp16"):
        WinClip.load(model=TINY_NAME, weights=tiny["weights"], device="cpu", precision="fp16")
    with pytest.raises(ValueError):
        load_backbone(TINY_NAME, None, tiny["weights"], "cpu", "fp16")


def test_bf16_on_cpu_is_close_to_fp32(wc, tiny, cache_dir):
    half = WinClip.load(
        model=TINY_NAME, weights=tiny["weights"], precision="bf16", cache_dir=cache_dir
    )
    assert half.backbone.dtype == torch.bfloat16
    x = images(2, seed=3)
    text = wc.text_embeddings("screw")
    bank = wc.reference_bank(images(1, seed=4))
    half_bank = half.reference_bank(images(1, seed=4))
    assert half_bank.patch_tokens.dtype == torch.float32
    for b32, b16 in ((None, None), (bank, half_bank)):
        full = wc.predict(x, text=text, bank=b32)
        low = half.predict(x, text=text, bank=b16)
        assert low.image_scores.dtype == torch.float32
        assert low.grid_maps.dtype == torch.float32
        torch.testing.assert_close(low.image_scores, full.image_scores, atol=0.05, rtol=0)
        torch.testing.assert_close(low.grid_maps, full.grid_maps, atol=0.05, rtol=0)
    half_text = half.text_embeddings("screw")
    assert half_text.dtype == torch.float32
    torch.testing.assert_close(half_text, text, atol=0.05, rtol=0)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf"), 1e-300])
def test_temperature_must_be_a_positive_number(wc, value):
    with pytest.raises(ValueError, match="temperature"):
        WinClip(wc.backbone, temperature=value)


@pytest.mark.parametrize("maps", [False, True])
def test_predict_on_an_empty_batch(wc, maps):
    """A batch whose every file failed to decode is empty: no scores, no crash."""
    text = wc.text_embeddings("screw")
    out = wc.predict(torch.zeros(0, 3, 48, 48), text=text, maps=maps)
    assert out.image_scores.shape == (0,)
    if maps:
        assert out.grid_maps.shape == (0, 6, 6)
    else:
        assert out.grid_maps is None


def test_api_misuse_gets_a_clear_error_not_garbage(wc):
    """Raw uint8 pixels, text of the wrong shape, or references of the wrong size: a
    ValueError/TypeError naming what was expected, never scores or a deep torch error."""
    text = wc.text_embeddings("screw")
    x = images(2)
    with pytest.raises(TypeError, match="float images from preprocess"):
        wc.predict((x * 50).to(torch.uint8), text=text)
    for bad in (text[:1], text[0], torch.cat([text, text[:1]]), text[:, :8]):
        with pytest.raises(ValueError, match=r"text must be the \(2, "):
            wc.predict(x, text=bad)
    with pytest.raises(ValueError, match=r"reference_bank expects \(B, 3, 48, 48\)"):
        wc.reference_bank(torch.zeros(1, 3, 32, 32))
    with pytest.raises(TypeError, match="float images"):
        wc.reference_bank(torch.zeros(1, 3, 48, 48, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least one image"):
        wc.reference_bank(torch.zeros(0, 3, 48, 48))


def test_preprocess_shows_the_picture_as_a_viewer_does(wc):
    """An EXIF-rotated photo is scored upright, as the command line scores it."""
    from PIL import Image

    upright = Image.fromarray((torch.rand(40, 24, 3) * 255).to(torch.uint8).numpy())
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a camera stores it
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    stored.save(buffer, format="PNG", exif=exif)
    buffer.seek(0)
    assert torch.equal(wc.preprocess(Image.open(buffer)), wc.preprocess(upright))


@pytest.mark.parametrize(
    ("change", "looks"),
    [
        ({"width": 64}, "width 64, 2 layers, patch 8, input 48"),
        ({"layers": 3}, "width 32, 3 layers, patch 8, input 48"),
        ({"patch_size": 16, "image_size": 64}, "width 32, 2 layers, patch 16, input 64"),
    ],
    ids=["wider", "deeper", "patch16"],
)
def test_a_checkpoint_of_another_architecture_is_named(tmp_path, no_hub, change, looks):
    """The error names the shape the checkpoint has and the open_clip names that fit it,
    in one line, so `--model` is the obvious fix."""
    name = "winclip-test-" + "-".join(f"{k}{v}" for k, v in change.items()).replace("_", "")
    cfg = json.loads(json.dumps(TINY_CFG))
    cfg["vision_cfg"].update(change)
    register_config(tmp_path, name, cfg)
    path = tmp_path / "other.pt"
    torch.save(open_clip.create_model(name).state_dict(), path)
    with pytest.raises(WeightsUnavailableError) as info:
        WinClip.load(model=TINY_NAME, weights=path)
    message = str(info.value)
    assert "\n" not in message and looks in message and name in message, message
    assert TINY_NAME in message  # the --model that was given


def test_a_checkpoint_no_model_has_gets_told_so(state_dict, tmp_path, no_hub):
    from winclip_cli.backbone import architecture_hint

    state = {k: v for k, v in state_dict.items() if not k.startswith("visual.transformer")}
    assert "no open_clip model has that shape" in architecture_hint(state)
    assert "not an open_clip ViT" in architecture_hint({"x": torch.zeros(1)})
