"""A calibration or bank carries its model (issue 17): with no model option the run uses
the recorded model and weights file, or the tag's cached file; never a download; else
exit 2 naming what it needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from winclip_cli.errors import ExitCode, UsageError
from winclip_cli.options import ModelOptions
from winclip_cli.provenance import ModelRecord, model_from_record, record_of, weights_fingerprint


def no_cache(model: str, tag: str) -> Path | None:
    return None


def test_the_fingerprint_follows_content_not_name_or_time(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(os.urandom(3 << 20))
    b.write_bytes(a.read_bytes())
    os.utime(b, (1, 1))
    assert weights_fingerprint(a) == weights_fingerprint(b)
    data = bytearray(a.read_bytes())
    data[-1] ^= 1  # the last byte: in the sampled tail
    b.write_bytes(bytes(data))
    assert weights_fingerprint(a) != weights_fingerprint(b)
    with pytest.raises(OSError):
        weights_fingerprint(tmp_path / "gone.pt")


def test_no_model_option_runs_with_the_recorded_file(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    record = record_of("ViT-X", None, str(weights))
    run = model_from_record(ModelOptions(), frozenset(), record, "--calibration c.cal", no_cache)
    assert (run.model, run.pretrained, run.weights) == ("ViT-X", None, weights.resolve())
    # A model option typed: the record is not used (a contradiction is refused once loaded).
    mine = ModelOptions(model="Other")
    assert model_from_record(mine, frozenset({"model"}), record, "x", no_cache) is mine
    assert model_from_record(mine, frozenset(), None, "x", no_cache) is mine  # an older file


def test_a_tagged_model_uses_the_cached_file_and_never_downloads(tmp_path):
    gone = tmp_path / "hub" / "model.bin"
    record = ModelRecord("ViT-B-16-plus-240", "laion400m_e31", str(gone), "1:abc").to_json()
    asked: list[tuple[str, str]] = []
    cached = tmp_path / "cached.bin"

    def in_cache(model: str, tag: str) -> Path | None:
        asked.append((model, tag))
        return cached

    run = model_from_record(ModelOptions(), frozenset(), record, "--calibration c.cal", in_cache)
    assert run.weights == cached and run.pretrained == "laion400m_e31"
    assert asked == [("ViT-B-16-plus-240", "laion400m_e31")]
    with pytest.raises(UsageError) as info:
        model_from_record(ModelOptions(), frozenset(), record, "--calibration c.cal", no_cache)
    message = str(info.value)
    assert info.value.exit_code == ExitCode.USAGE
    assert "ViT-B-16-plus-240" in message and "laion400m_e31" in message
    assert "nothing is downloaded" in message and "winclip download --model" in message


@pytest.mark.parametrize("how", ["gone", "changed"])
def test_a_weights_file_gone_or_changed_is_exit_2_naming_it(tmp_path, how):
    weights = tmp_path / "tuned.safetensors"
    weights.write_bytes(b"first")
    record = record_of("local-dir:" + str(tmp_path), None, str(weights))
    if how == "gone":
        weights.unlink()
    else:
        weights.write_bytes(b"second")
    with pytest.raises(UsageError) as info:
        model_from_record(ModelOptions(), frozenset(), record, "--ref x.bank", no_cache)
    message = str(info.value)
    assert str(weights) in message and ("is gone" if how == "gone" else "has changed") in message
    assert "--ref x.bank" in message and "--weights FILE" in message


def test_a_damaged_record_counts_as_none():
    assert ModelRecord.from_json({"model": "x"}) is None
    assert ModelRecord.from_json("text") is None
