"""Mutual-scoring pool files: round trip, record, and refusal of damaged or other pools."""

from __future__ import annotations

import os

import pytest
import torch

from tests.tiny_model import TINY_NAME, make_tiny_model
from winclip_cli import WinClip
from winclip_cli.bank import bank_payload
from winclip_cli.errors import ExitCode, PoolFileError, PoolMismatchError
from winclip_cli.pool import input_digests, load_pool, pool_fingerprint, save_pool
from winclip_cli.tiling import TileGrid


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 48, 48, generator=torch.Generator().manual_seed(seed))


@pytest.fixture()
def pool(wc):
    return wc.mutual_pool(images(4, 50))


@pytest.fixture()
def saved(pool, tmp_path):
    path = tmp_path / "line.pool"
    save_pool(pool, path)
    return path


def test_round_trip_gives_identical_predictions(wc, pool, saved, tmp_path):
    assert [p.name for p in tmp_path.iterdir()] == ["line.pool"], "temporary file left"
    loaded = load_pool(saved)
    assert loaded.meta == pool.meta and loaded.digests == pool.digests
    assert torch.equal(loaded.layers, pool.layers)
    x = images(3, 51)
    a, b = wc.predict_mutual(x, pool), wc.predict_mutual(x, loaded)
    assert torch.equal(a.image_scores, b.image_scores)
    assert torch.equal(a.grid_maps, b.grid_maps)
    other = wc.predict_mutual(x, wc.mutual_pool(images(4, 52)))  # the pool matters
    assert not torch.allclose(other.grid_maps, a.grid_maps)


def test_pool_records_what_it_was_made_with(wc, pool):
    assert pool.meta["model"] == TINY_NAME
    assert pool.meta["weights"] == wc.backbone.weights_id
    assert pool.meta["precision"] == "fp32"
    assert pool.meta["input_size"] == [48, 48] and pool.meta["grid_size"] == [6, 6]
    assert pool.meta["blocks"] == [1, 1, 2, 2]
    assert pool.meta["num_images"] == pool.num_images == 4
    assert "tiles" not in pool.meta  # untiled
    assert pool.digests == input_digests(images(4, 50))
    tiled = wc.mutual_pool(images(4, 50), tiles=TileGrid(2, 2, 0.25))
    assert tiled.meta["tiles"] == "2x2" and tiled.meta["tile_overlap"] == 0.25


def test_load_refuses_missing_corrupt_and_truncated_files(tmp_path, saved, tiny):
    with pytest.raises(PoolFileError, match="not found"):
        load_pool(tmp_path / "nope.pool")
    garbage = tmp_path / "garbage.pool"
    garbage.write_bytes(os.urandom(4096))
    truncated = tmp_path / "truncated.pool"
    truncated.write_bytes(saved.read_bytes()[:3000])
    for path in (garbage, truncated, tiny["weights"], tmp_path):
        with pytest.raises(PoolFileError) as caught:
            load_pool(path)
        assert caught.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize("payload", [{"a": 1}, [1, 2], {"format": "other", "version": 1}])
def test_load_refuses_a_file_that_is_no_pool(tmp_path, payload):
    path = tmp_path / "other.pool"
    torch.save(payload, path)
    with pytest.raises(PoolFileError, match="not a winclip mutual-scoring pool"):
        load_pool(path)


def test_load_refuses_a_bank_file(wc, tmp_path):
    path = tmp_path / "bank.pt"
    torch.save(bank_payload(wc.reference_bank(images(1, 53))), path)
    with pytest.raises(PoolFileError, match="not a winclip mutual-scoring pool"):
        load_pool(path)


@pytest.mark.parametrize(
    "damage", ["version", "no_layers", "4d_layers", "digest_count", "digest_text", "meta"]
)
def test_load_refuses_a_damaged_pool(saved, damage):
    payload = torch.load(saved, weights_only=True)
    if damage == "version":
        payload["version"] = 99
    elif damage == "no_layers":
        del payload["layers"]
    elif damage == "4d_layers":
        payload["layers"] = payload["layers"][0]
    elif damage == "digest_count":
        payload["digests"] = payload["digests"][:-1]
    elif damage == "digest_text":
        payload["digests"][0] = "not a hash"
    else:
        payload["meta"] = "fp32"
    torch.save(payload, saved)
    with pytest.raises(PoolFileError):
        load_pool(saved)


def test_pool_from_other_weights_is_refused(saved, tmp_path, cache_dir):
    other = make_tiny_model(tmp_path / "other", seed=1)
    wc2 = WinClip.load(model=TINY_NAME, weights=other["weights"], cache_dir=cache_dir)
    with pytest.raises(PoolMismatchError, match="other weights") as caught:
        wc2.predict_mutual(images(1, 54), load_pool(saved))
    assert caught.value.exit_code == ExitCode.USAGE


def test_pool_at_another_precision_is_refused(saved, tiny, cache_dir):
    bf16 = WinClip.load(
        model=TINY_NAME, weights=tiny["weights"], cache_dir=cache_dir, precision="bf16"
    )
    with pytest.raises(PoolMismatchError, match="precision='fp32'"):
        bf16.predict_mutual(images(1, 55), load_pool(saved))


@pytest.mark.parametrize(
    ("field", "value"),
    [("grid_size", [7, 7]), ("blocks", [1, 2, 2, 2]), ("num_images", 5), ("width", 64)],
)
def test_pool_whose_record_does_not_fit_is_refused(wc, saved, field, value):
    loaded = load_pool(saved)
    loaded.meta[field] = value
    with pytest.raises(PoolMismatchError, match=field):
        wc.predict_mutual(images(1, 56), loaded)


@pytest.mark.parametrize("damage", ["width", "nan"])
def test_pool_whose_features_do_not_fit_is_refused(wc, saved, damage):
    payload = torch.load(saved, weights_only=True)
    layers = payload["layers"]
    if damage == "width":
        payload["layers"] = layers[..., :16]
    else:
        payload["layers"] = layers.index_fill(0, torch.tensor([1]), float("nan"))
    torch.save(payload, saved)
    with pytest.raises(PoolMismatchError, match="damaged pool"):
        wc.predict_mutual(images(1, 57), load_pool(saved))


def test_a_checked_pool_is_not_checked_again(wc, saved):
    checked = wc.check_pool(load_pool(saved))
    assert wc.check_pool(checked) is checked


def test_the_fingerprint_follows_the_members_not_the_file(wc, pool, saved):
    assert pool_fingerprint(load_pool(saved)) == pool_fingerprint(pool)
    assert pool_fingerprint(wc.mutual_pool(images(4, 58))) != pool_fingerprint(pool)
    reordered = wc.mutual_pool(images(4, 50).flip(0))
    assert pool_fingerprint(reordered) != pool_fingerprint(pool)  # members in order
