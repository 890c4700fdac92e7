"""The on-disk text-embedding cache and reference-bank files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.tiny_model import TINY_NAME, make_tiny_model
from winclip_cli.bank import BankFileError, ReferenceBank, load_bank, save_bank
from winclip_cli.cache import (
    TextEmbeddingCache,
    default_cache_dir,
)
from winclip_cli.model import BankMismatchError, WinClip
from winclip_cli.prompts import PromptSet

REPO = Path(__file__).resolve().parent.parent


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 48, 48, generator=torch.Generator().manual_seed(seed))


class CountingEncoder:
    """Wraps a WinClip's text tower and counts the calls."""

    def __init__(self, wc: WinClip) -> None:
        self.calls = 0
        self._inner = wc.backbone.clip.encode_text

        def counted(*args, **kwargs):
            self.calls += 1
            return self._inner(*args, **kwargs)

        wc.backbone.clip.encode_text = counted
        self._wc = wc

    def restore(self) -> None:
        del self._wc.backbone.clip.encode_text


@pytest.fixture()
def counter(wc):
    c = CountingEncoder(wc)
    yield c
    c.restore()


def cache_files(cache_dir: Path) -> list[Path]:
    folder = cache_dir / "text"
    return sorted(folder.glob("*.pt")) if folder.is_dir() else []


# --------------------------------------------------------------------------------------
# Text cache
# --------------------------------------------------------------------------------------


def test_text_cache_hit_in_a_new_process(wc, tiny, cache_dir):
    text = wc.text_embeddings("screw")
    assert len(cache_files(cache_dir)) == 1
    expected = cache_dir.parent / "expected.pt"
    torch.save(text, expected)
    out = cache_dir.parent / "got.pt"
    config = Path(tiny["weights"]).parent / f"{TINY_NAME}.json"
    script = textwrap.dedent(
        f"""
        import open_clip, torch
        open_clip.add_model_config({str(config)!r})
        from winclip_cli import WinClip
        wc = WinClip.load(model={TINY_NAME!r}, weights={str(tiny["weights"])!r})
        def refuse(*args, **kwargs):
            raise RuntimeError("text encoder called despite a cached entry")
        wc.backbone.clip.encode_text = refuse
        wc.encode_text = refuse
        torch.save(wc.text_embeddings("screw"), {str(out)!r})
        """
    )
    # The cache location comes from WINCLIP_CACHE_DIR (set by the cache_dir fixture).
    env = dict(os.environ, WINCLIP_CACHE_DIR=str(cache_dir), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert torch.equal(torch.load(out), torch.load(expected))


def test_text_cache_miss_encodes_and_hit_does_not(wc, counter, cache_dir):
    assert cache_files(cache_dir) == []
    first = wc.text_embeddings("screw")
    assert counter.calls > 0
    assert len(cache_files(cache_dir)) == 1
    calls = counter.calls
    again = wc.text_embeddings("screw")
    assert counter.calls == calls
    assert torch.equal(first, again)
    # another class is another entry
    other = wc.text_embeddings("metal_nut")
    assert counter.calls > calls
    assert len(cache_files(cache_dir)) == 2
    assert not torch.allclose(first, other)
    # the same class with other prompts is another entry
    calls = counter.calls
    custom = WinClip(wc.backbone, prompts=PromptSet(templates=("a {}.",)), cache_dir=cache_dir)
    custom_text = custom.text_embeddings("screw")
    assert counter.calls > calls
    assert len(cache_files(cache_dir)) == 3
    assert not torch.allclose(first, custom_text)


def test_underscored_and_spaced_class_share_an_entry(wc, counter, cache_dir):
    a = wc.text_embeddings("metal_nut")
    calls = counter.calls
    b = wc.text_embeddings("metal nut")
    assert counter.calls == calls
    assert torch.equal(a, b)


def test_other_weights_do_not_share_the_cache(wc, tmp_path, cache_dir):
    text = wc.text_embeddings("screw")
    other = make_tiny_model(tmp_path / "other", seed=1)
    wc2 = WinClip.load(model=TINY_NAME, weights=other["weights"], cache_dir=cache_dir)
    text2 = wc2.text_embeddings("screw")
    assert len(cache_files(cache_dir)) == 2
    assert not torch.allclose(text, text2, atol=1e-3)


def test_corrupt_cache_entry_is_rebuilt(wc, counter, cache_dir):
    expected = wc.text_embeddings("screw")
    (entry,) = cache_files(cache_dir)
    entry.write_bytes(b"\x00garbage, not a torch file" * 10)
    calls = counter.calls
    fresh = WinClip(wc.backbone, cache_dir=cache_dir)
    rebuilt = fresh.text_embeddings("screw")
    assert counter.calls > calls, "the corrupt entry was trusted"
    torch.testing.assert_close(rebuilt, expected, atol=1e-6, rtol=0)
    # the entry was rewritten and is now a hit again
    calls = counter.calls
    third = WinClip(wc.backbone, cache_dir=cache_dir).text_embeddings("screw")
    assert counter.calls == calls
    assert torch.equal(third, rebuilt)


def test_truncated_cache_entry_is_rebuilt(wc, counter, cache_dir):
    expected = wc.text_embeddings("screw")
    (entry,) = cache_files(cache_dir)
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    calls = counter.calls
    rebuilt = WinClip(wc.backbone, cache_dir=cache_dir).text_embeddings("screw")
    assert counter.calls > calls
    torch.testing.assert_close(rebuilt, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "damage",
    [
        "other_key",
        "zeros_other_key",
        "nan",
        "wrong_shape",
        "no_text",
        "not_a_dict",
    ],
)
def test_mismatched_or_damaged_entry_is_rebuilt(wc, counter, cache_dir, damage):
    expected = wc.text_embeddings("screw")
    (entry,) = cache_files(cache_dir)
    stored = torch.load(entry, weights_only=True)
    key = dict(stored["key"])
    if damage == "other_key":
        # a valid entry for another class, stored under this key's file name
        key["class"] = "bottle"
        payload = {"key": key, "text": torch.randn(2, 32)}
    elif damage == "zeros_other_key":
        key["weights"] = "tag:something_else"
        payload = {"key": key, "text": torch.zeros(2, 32)}
    elif damage == "nan":
        payload = {"key": key, "text": torch.full((2, 32), float("nan"))}
    elif damage == "wrong_shape":
        payload = {"key": key, "text": torch.randn(3, 32)}
    elif damage == "no_text":
        payload = {"key": key}
    else:
        payload = [key, torch.randn(2, 32)]
    torch.save(payload, entry)
    calls = counter.calls
    rebuilt = WinClip(wc.backbone, cache_dir=cache_dir).text_embeddings("screw")
    assert counter.calls > calls, f"a {damage} entry was trusted"
    torch.testing.assert_close(rebuilt, expected, atol=1e-6, rtol=0)


def test_unwritable_cache_warns_but_works(wc, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    broken = WinClip(wc.backbone, cache_dir=blocker / "cache")
    with pytest.warns(UserWarning, match="cache"):
        text = broken.text_embeddings("screw")
    assert text.shape == (2, 32)
    torch.testing.assert_close(text, wc.text_embeddings("screw"), atol=1e-6, rtol=0)


def test_cache_location_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WINCLIP_CACHE_DIR", str(tmp_path / "somewhere"))
    assert default_cache_dir() == tmp_path / "somewhere"
    assert TextEmbeddingCache().root == tmp_path / "somewhere"
    monkeypatch.delenv("WINCLIP_CACHE_DIR")
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert default_cache_dir() == tmp_path / "xdg" / "winclip"


# --------------------------------------------------------------------------------------
# Reference banks
# --------------------------------------------------------------------------------------


@pytest.fixture()
def bank(wc) -> ReferenceBank:
    return wc.reference_bank(images(2, seed=40))


def test_bank_round_trip_gives_identical_predictions(wc, bank, tmp_path):
    path = tmp_path / "bank.pt"
    save_bank(bank, path)
    assert path.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name != "bank.pt"], "temporary file left"
    loaded = load_bank(path)
    assert loaded.meta == bank.meta
    assert loaded.num_images == 2
    assert torch.equal(loaded.patch_tokens, bank.patch_tokens)
    assert set(loaded.windows) == {2, 3}
    for k in (2, 3):
        assert torch.equal(loaded.windows[k], bank.windows[k])
    x = images(2, seed=41)
    text = wc.text_embeddings("screw")
    a = wc.predict(x, text=text, bank=bank)
    b = wc.predict(x, text=text, bank=loaded)
    assert torch.equal(a.image_scores, b.image_scores)
    assert torch.equal(a.grid_maps, b.grid_maps)
    # and the bank matters: zero-shot differs
    z = wc.predict(x, text=text)
    assert not torch.allclose(z.grid_maps, a.grid_maps)


def test_bank_meta_records_the_model(wc, bank, tiny):
    assert bank.meta["model"] == TINY_NAME
    assert bank.meta["weights"] == wc.backbone.weights_id
    assert bank.meta["input_size"] == [48, 48]
    assert bank.meta["grid_size"] == [6, 6]
    assert bank.meta["scales"] == [2, 3]
    assert bank.meta["num_images"] == 2


def test_reference_bank_needs_images(wc):
    with pytest.raises(ValueError):
        wc.reference_bank(torch.zeros(0, 3, 48, 48))
    with pytest.raises(ValueError):
        wc.reference_bank(torch.zeros(3, 48, 48))


def test_load_refuses_a_missing_file(tmp_path):
    with pytest.raises(BankFileError, match="not found"):
        load_bank(tmp_path / "nope.pt")


def test_load_refuses_a_corrupt_file(tmp_path, wc, bank):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(BankFileError):
        load_bank(garbage)
    truncated = tmp_path / "truncated.pt"
    save_bank(bank, truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(BankFileError):
        load_bank(truncated)


@pytest.mark.parametrize(
    "payload",
    [
        {"a": 1},
        torch.zeros(3),
        [1, 2, 3],
        {"format": "something-else", "version": 1},
        {"key": {"class": "screw"}, "text": torch.zeros(2, 32)},  # a text cache entry
    ],
)
def test_load_refuses_a_non_bank_file(tmp_path, payload):
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    with pytest.raises(BankFileError, match="not a winclip reference bank"):
        load_bank(path)


def test_load_refuses_a_checkpoint(tiny):
    with pytest.raises(BankFileError):
        load_bank(tiny["weights"])


@pytest.mark.parametrize("damage", ["version", "no_windows", "windows_not_dict", "1d_patches"])
def test_load_refuses_a_damaged_bank(tmp_path, bank, damage):
    path = tmp_path / "bank.pt"
    save_bank(bank, path)
    payload = torch.load(path, weights_only=True)
    if damage == "version":
        payload["version"] = 99
    elif damage == "no_windows":
        del payload["windows"]
    elif damage == "windows_not_dict":
        payload["windows"] = [1, 2]
    else:
        payload["patch_tokens"] = torch.zeros(5)
    torch.save(payload, path)
    with pytest.raises(BankFileError):
        load_bank(path)


def test_bank_from_other_weights_is_refused(wc, bank, tmp_path, cache_dir):
    other = make_tiny_model(tmp_path / "other", seed=1)
    wc2 = WinClip.load(model=TINY_NAME, weights=other["weights"], cache_dir=cache_dir)
    path = tmp_path / "bank.pt"
    save_bank(bank, path)
    text = wc2.text_embeddings("screw")
    with pytest.raises(BankMismatchError, match="weights"):
        wc2.predict(images(1, seed=42), text=text, bank=load_bank(path))
    with pytest.raises(BankMismatchError):
        wc2.predict(images(1, seed=42), text=text, bank=bank, maps=False)
    assert issubclass(BankMismatchError, ValueError)


def test_bank_with_other_scales_is_refused(wc, bank, tmp_path, cache_dir):
    path = tmp_path / "bank.pt"
    save_bank(bank, path)
    loaded = load_bank(path)
    text = wc.text_embeddings("screw")
    for scales in [(2,), (2, 3, 4)]:
        other = WinClip(wc.backbone, scales=scales, cache_dir=cache_dir)
        with pytest.raises(BankMismatchError, match="scales"):
            other.predict(images(1, seed=43), text=text, bank=loaded)
    # and the other way round: a single-scale bank on the two-scale model
    small = WinClip(wc.backbone, scales=(2,), cache_dir=cache_dir).reference_bank(images(1, 44))
    with pytest.raises(BankMismatchError, match="scales"):
        wc.predict(images(1, seed=43), text=text, bank=small)


def test_bank_from_another_architecture_is_refused(wc, bank, tmp_path, cache_dir):
    meta = dict(bank.meta, model="ViT-B-16-plus-240", input_size=[240, 240])
    foreign = ReferenceBank(bank.patch_tokens, bank.windows, meta)
    with pytest.raises(BankMismatchError, match="input_size"):
        wc.predict(images(1, seed=45), text=wc.text_embeddings("screw"), bank=foreign)


def test_bank_is_accepted_whatever_the_model_was_called(wc, bank):
    """`local-dir:x` and `local-dir:./x/`, or a copy of the folder: the same weights are
    the same model, and give the same scores."""
    renamed = ReferenceBank(bank.patch_tokens, bank.windows, dict(bank.meta, model="local-dir:y"))
    text = wc.text_embeddings("screw")
    x = images(2, seed=47)
    expected = wc.predict(x, text=text, bank=bank)
    got = wc.predict(x, text=text, bank=renamed)
    assert torch.equal(got.image_scores, expected.image_scores)


@pytest.mark.parametrize("damage", ["missing_scale", "narrow_patches", "narrow_windows", "nan"])
def test_inconsistent_bank_is_refused_not_crashing(wc, bank, tmp_path, damage):
    """A bank whose tensors do not match its own meta is damaged: refuse it with a clear
    error (BankFileError on load, or BankMismatchError on use), never a KeyError, a shape
    error deep in torch, or NaN scores."""
    windows = dict(bank.windows)
    patches = bank.patch_tokens
    if damage == "missing_scale":
        del windows[3]
    elif damage == "narrow_patches":
        patches = patches[:, :16]
    elif damage == "narrow_windows":
        windows[2] = windows[2][:, :16]
    else:
        patches = torch.full_like(patches, float("nan"))
    path = tmp_path / "bank.pt"
    save_bank(ReferenceBank(patches, windows, dict(bank.meta)), path)
    text = wc.text_embeddings("screw")
    with pytest.raises((BankFileError, BankMismatchError)):
        wc.predict(images(1, seed=46), text=text, bank=load_bank(path))
