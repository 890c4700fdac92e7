from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import COUNT, WEIRD
from tests.tiny_model import make_tiny_model
from winclip_cli.model import WinClip

# Tests must never reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A suite started as a script's background job (`.ci/run &`) inherits SIGINT ignored, and
# winclip rightly keeps an inherited SIG_IGN (test_pipeline). The interrupt tests send
# SIGINT as a terminal's Ctrl-C would: their runs must start with it at its default,
# which a handler here gives them (exec resets a handled signal, not an ignored one).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Paths of a tiny random open_clip ViT: 'weights', 'local_dir', 'name'."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    """An empty text cache for this test, also through the environment (for subprocesses)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("WINCLIP_CACHE_DIR", str(path))
    return path


@pytest.fixture()
def wc(tiny, cache_dir):
    from winclip_cli import WinClip

    return WinClip.load(model=tiny["name"], weights=tiny["weights"], cache_dir=cache_dir)


@pytest.fixture()
def no_model(monkeypatch):
    """Planning never loads the model: a test that uses this fails if it does."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("planning loaded the model")

    monkeypatch.setattr(WinClip, "load", refuse)
    monkeypatch.setattr(WinClip, "from_options", refuse)


@pytest.fixture()
def model(tiny, cache_dir) -> list[str]:
    """Options that select the tiny model (by folder, so subprocesses can load it too)."""
    return ["--model", tiny["local_dir"], "--workers", "0"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-resume"))["local_dir"])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("resume") / "parts"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(COUNT):
        pixels = rng.integers(0, 256, (36 + i % 7, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"part{i:03d}.png")
    (folder / "000_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # an error row, early
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(folder / WEIRD)
    return folder
