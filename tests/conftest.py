from __future__ import annotations

import os

import pytest

from tests.tiny_model import make_tiny_model

# Tests must never reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
