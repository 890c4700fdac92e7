"""`--shard I/N`: contiguous parts of the sorted inputs that add up to the whole run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import PARTS, run_runner
from winclip_cli.shards import parse_shard, shard_bounds, shard_of


@pytest.mark.parametrize("total", [0, 1, 5, 9, 10, 17])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 12])
def test_shards_cut_like_numpy_array_split(total, count):
    items = list(range(total))
    expected = [list(part) for part in np.array_split(np.array(items, dtype=int), count)]
    got = [shard_of(items, i, count) for i in range(1, count + 1)]
    assert got == expected
    assert [shard_bounds(total, i, count)[0] for i in range(1, count + 1)] == [
        sum(len(p) for p in expected[:i]) for i in range(count)
    ]


@pytest.mark.parametrize("text", ["0/3", "4/3", "a/b", "1/0", "1", "-1/3", "1/3/4", ""])
def test_bad_shards_are_refused(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_good_shard_parses():
    assert parse_shard("2/8") == (2, 8)
    assert parse_shard(" 3 / 3 ") == (3, 3)


@pytest.fixture()
def inputs(tmp_path) -> Path:
    """10 inputs in two folders (same file names in both: overlays must not collide),
    one of them unreadable."""
    root = tmp_path / "in"
    shutil.copytree(PARTS, root)
    (root / "local" / "zz_broken.png").write_bytes(b"not a png")
    return root


def body(path: Path) -> str:
    """The rows of a CSV file without its header."""
    return "".join(path.read_text().splitlines(keepends=True)[1:])


@pytest.mark.parametrize("shard", ["0/3", "4/3", "a/b", "1/0"])
def test_cli_refuses_bad_shard(inputs, model, shard):
    out = run_runner(["score", inputs, *model, "--shard", shard])
    assert out.code == 2
    assert "--shard" in out.stderr


def test_segment_shards_concatenate_to_the_whole_run(inputs, model, tmp_path):
    whole = tmp_path / "whole.csv"
    args = ["segment", inputs, *model, "--batch-size", "3"]
    assert run_runner([*args, "--out", tmp_path / "o1", "-o", whole]).code == 3
    overlays = {
        p.relative_to(tmp_path / "o1"): p.read_bytes() for p in (tmp_path / "o1").rglob("*.png")
    }
    parts = []
    for i in (1, 2, 3):
        part = tmp_path / f"part{i}.csv"
        out = run_runner([*args, "--out", tmp_path / "o2", "-o", part, "--shard", f"{i}/3"])
        assert out.code in (0, 3), out.stderr
        assert part.read_text().splitlines()[0] == whole.read_text().splitlines()[0]
        parts.append(body(part))
    assert [len(p.splitlines()) for p in parts] == [4, 3, 3]
    # Same --out name for the shards, so the overlay column matches after renaming o1.
    assert "".join(parts) == body(whole).replace(str(tmp_path / "o1"), str(tmp_path / "o2"))
    sharded = {
        p.relative_to(tmp_path / "o2"): p.read_bytes() for p in (tmp_path / "o2").rglob("*.png")
    }
    assert sharded == overlays  # no overlay overwrote another; all are there
    assert len(overlays) == 9


def test_surplus_shards_are_empty_with_a_header(inputs, model, tmp_path):
    part = tmp_path / "part.csv"
    out = run_runner(["score", inputs, *model, "-o", part, "--shard", "12/12"])
    assert out.code == 0, out.stderr
    assert part.read_text() == "path,score,status,error\n"
    assert "shard 12/12 is empty" in out.stderr
    jsonl = tmp_path / "part.jsonl"
    out = run_runner(
        ["score", inputs, *model, "-o", jsonl, "--format", "jsonl", "--shard", "11/12"]
    )
    assert out.code == 0 and jsonl.read_text() == ""
    out = run_runner(
        ["score", inputs, *model, "--shard", "11/12", "--threshold", "0.1", "--fail-on-anomaly"]
    )
    assert out.code == 0 and out.stdout.splitlines() == ["path,score,label,status,error"]
    assert run_runner(["score", inputs, *model, "--shard", "10/12"]).stdout.count("\n") == 2


def test_resume_works_per_shard(inputs, model, tmp_path):
    args = ["score", inputs, *model, "--shard", "2/3"]
    full = tmp_path / "full.csv"
    assert run_runner([*args, "-o", full]).code == 0
    part = tmp_path / "part.csv"
    lines = full.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:2]))  # the header and the first row: an interrupted run
    out = run_runner([*args, "-o", part, "--resume"])
    assert out.code == 0, out.stderr
    assert part.read_text() == full.read_text()
    assert "1 row(s) already written, 2 to go" in out.stderr
