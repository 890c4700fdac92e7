"""Mutual scoring on the command line: --mutual (set mode) and --pool (pool mode), on the
tiny model; the rows equal the library's predict_mutual on the same images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import GOOD, PARTS, make_mvtec, read_csv, run_runner
from winclip_cli import WinClip, hardware
from winclip_cli.pool import load_pool


@pytest.fixture(autouse=True)
def fp32_by_default(monkeypatch):
    """auto computes in fp32 here, as on a CPU without AMX, so the command line's rows can
    be compared with the library's (fp32 by default) exactly. At bf16 the tiny model's
    mutual scores move by up to 0.07: its narrow, nearly identical patches are as close
    as a bf16 product's rounding (test_mutual, mutual.py's docstring)."""
    monkeypatch.setattr(hardware, "cpu_features", lambda: {})


@pytest.fixture()
def wc(tiny, cache_dir):
    """The model the CLI loads (the folder: its own preprocessing)."""
    return WinClip.load(model=tiny["local_dir"], cache_dir=cache_dir)


def pixels(wc: WinClip, paths: list[Path]) -> torch.Tensor:
    return torch.stack([wc.preprocess(Image.open(p)) for p in paths])


def parts() -> list[Path]:
    return sorted(PARTS.rglob("*.jpg"))


def scores_of(rows_file: Path) -> list[float]:
    _, rows = read_csv(rows_file.read_text())
    return [float(r["score"]) for r in rows]


def test_segment_mutual_writes_rows_and_overlays(model, wc, tmp_path):
    out, rows = tmp_path / "out", tmp_path / "rows.csv"
    result = run_runner(["segment", PARTS, *model, "--mutual", "--out", out, "-o", rows])
    assert result.code == 0, result.stderr
    _, body = read_csv(rows.read_text())
    assert [r["status"] for r in body] == ["ok"] * 9
    assert all(Path(r["overlay"]).is_file() for r in body)
    assert "text embeddings" not in result.stderr  # mutual scoring reads no prompts
    expected = wc.predict_mutual(pixels(wc, parts()))
    assert scores_of(rows) == pytest.approx(expected.image_scores.tolist(), abs=1e-6)
    maxima = [float(r["map_max"]) for r in body]
    assert maxima == pytest.approx(expected.grid_maps.flatten(1).amax(1).tolist(), abs=1e-6)


def test_sets_are_split_evenly_in_input_order(model, wc, tmp_path):
    rows = tmp_path / "rows.csv"
    result = run_runner(["score", PARTS, *model, "--mutual", "--mutual-set", "5", "-o", rows])
    assert result.code == 0, result.stderr
    files = parts()  # 9 images: sets of 4 and 5
    first = wc.predict_mutual(pixels(wc, files[:4])).image_scores.tolist()
    second = wc.predict_mutual(pixels(wc, files[4:])).image_scores.tolist()
    assert scores_of(rows) == pytest.approx(first + second, abs=1e-6)


def test_an_unreadable_image_is_an_error_row_and_no_member(model, wc, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(PARTS / "good", folder)
    (folder / "zz_broken.png").write_bytes(b"not a png")
    rows = tmp_path / "rows.csv"
    result = run_runner(["score", folder, *model, "--mutual", "-o", rows])
    assert result.code == 3, result.stderr
    _, body = read_csv(rows.read_text())
    assert [r["status"] for r in body] == ["ok", "ok", "ok", "error"]
    expected = wc.predict_mutual(pixels(wc, sorted(folder.glob("*.jpg")))).image_scores
    assert [float(r["score"]) for r in body[:3]] == pytest.approx(expected.tolist(), abs=1e-6)


def test_a_set_of_one_readable_image_is_an_error_row(model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(PARTS / "good" / "textile_0901.jpg", folder)
    result = run_runner(["score", folder, *model, "--mutual"])
    assert result.code == 3
    assert "another readable image" in result.stdout


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--calibration", "x.cal"], "not calibrated"),
        (["--threshold", "0.5"], "fixed cut"),
        (["--shard", "1/2"], "another set"),
        (["--resume", "-o", "r.csv"], "changes every score"),
        (["--ref", str(GOOD)], "not with references"),
        (["--engine", "ray"], "one place"),
        (["--tiles", "2x2"], "whole images"),
        (["--pool", str(GOOD)], "give one"),
        (["--mutual-set", "1"], "at least 2"),
    ],
)
def test_set_mode_refuses_with_the_reason(model, tmp_path, extra, reason):
    result = run_runner(["segment", PARTS, *model, "--mutual", *extra], cwd=tmp_path)
    assert result.code == 2
    assert reason in result.stderr
    assert not list(tmp_path.glob("*.csv"))


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["score", "--mutual-set", "5"], "needs --mutual"),
        (["score", "--save-pool", "p.pool"], "needs --pool DIR"),
        (["fewshot", "--pool", str(GOOD)], "not with references"),
        (["score", "--pool", str(GOOD), "--ref", str(GOOD)], "not with references"),
        (["score", "--pool", "missing"], "no such folder"),
        (["segment", "--pool", str(GOOD), "--maps", "anomalous", "--threshold", "1"], "first"),
    ],
)
def test_mutual_options_are_checked_before_the_model(model, tmp_path, args, reason):
    result = run_runner([args[0], PARTS, *model, *args[1:]], cwd=tmp_path)
    assert result.code == 2
    assert reason in result.stderr


def test_pool_mode_equals_the_library_and_saves_its_pool(model, wc, tmp_path):
    rows, saved = tmp_path / "rows.csv", tmp_path / "line.pool"
    args = ["segment", PARTS, *model, "--pool", GOOD, "--save-pool", saved]
    result = run_runner([*args, "--out", tmp_path / "out", "-o", rows])
    assert result.code == 0, result.stderr
    pool = load_pool(saved)
    assert pool.num_images == 4 and len(pool.meta["sources"]) == 4
    expected = wc.predict_mutual(
        pixels(wc, parts()), wc.mutual_pool(pixels(wc, sorted(GOOD.iterdir())))
    )
    assert scores_of(rows) == pytest.approx(expected.image_scores.tolist(), abs=1e-6)
    again = tmp_path / "again.csv"
    result = run_runner(["score", PARTS, *model, "--pool", saved, "-o", again])
    assert result.code == 0, result.stderr
    assert scores_of(again) == scores_of(rows)


def test_a_pool_calibration_gives_p_values_and_needs_its_pool(model, tmp_path):
    saved, cal = tmp_path / "line.pool", tmp_path / "line.cal"
    good = tmp_path / "good"
    shutil.copytree(PARTS / "good", good)
    shutil.copy(GOOD / sorted(p.name for p in GOOD.iterdir())[0], good / "copy_of_pool.png")
    result = run_runner(
        [
            "calibrate",
            good,
            PARTS / "global",
            *model,
            "--pool",
            GOOD,
            "--save-pool",
            saved,
            "-o",
            cal,
        ]
    )
    assert result.code == 0, result.stderr
    assert "copy_of_pool.png: in the --pool" in result.stderr  # a member never calibrates
    rows = tmp_path / "rows.csv"
    args = ["score", PARTS / "local", *model, "--calibration", cal, "--false-alarm-rate", "0.2"]
    result = run_runner([*args, "--pool", saved, "-o", rows])
    assert result.code == 0, result.stderr
    _, body = read_csv(rows.read_text())
    assert all(0 < float(r["p_value"]) <= 1 and r["label"] for r in body)
    without = run_runner(args)
    assert without.code == 2 and "made in pool mode" in without.stderr
    other = run_runner([*args, "--pool", PARTS / "good"])
    assert other.code == 2 and "--pool" in other.stderr


def test_a_pool_file_of_another_grid_or_model_is_refused(model, tmp_path, tiny):
    saved = tmp_path / "line.pool"
    made = run_runner(["score", GOOD, *model, "--pool", GOOD, "--save-pool", saved])
    assert made.code == 0, made.stderr
    tiled = run_runner(["score", PARTS, *model, "--pool", saved, "--tiles", "2x2"])
    assert tiled.code == 2 and "tile" in tiled.stderr
    damaged = tmp_path / "damaged.pool"
    damaged.write_bytes(saved.read_bytes()[:1000])
    broken = run_runner(["score", PARTS, *model, "--pool", damaged])
    assert broken.code == 2 and "pool" in broken.stderr


def test_pool_mode_tiles_resumes_and_refuses_another_pool(model, tmp_path):
    rows = tmp_path / "rows.csv"
    args = ["segment", PARTS, *model, "--pool", GOOD, "--tiles", "2x2", "--out", tmp_path / "o"]
    first = run_runner([*args, "-o", rows])
    assert first.code == 0, first.stderr
    resumed = run_runner([*args, "-o", rows, "--resume"])
    assert resumed.code == 0, resumed.stderr
    assert len(read_csv(rows.read_text())[1]) == 9
    other = [a if a != GOOD else PARTS / "good" for a in args]
    refused = run_runner([*other, "-o", rows, "--resume"])
    assert refused.code == 2 and "--pool" in refused.stderr


def test_pool_mode_on_ray_matches_local(model, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rows = []
        for engine in ([], ["--engine", "ray", "--ray-workers", "2"]):
            target = tmp_path / f"rows{len(rows)}.csv"
            args = ["segment", PARTS, *model, "--pool", GOOD, "--out", tmp_path / "out"]
            result = run_runner([*args, *engine, "-o", target])
            assert result.code == 0, result.stderr
            rows.append(target.read_text())
        assert rows[0] == rows[1]
    finally:
        ray.shutdown()


def test_eval_mutual_and_pool_with_musc_beside_them(model, tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    out_json = tmp_path / "r.json"
    args = ["eval", root, *model, "--json", out_json, "--compare", "paper"]
    result = run_runner([*args, "--mutual"])
    assert result.code == 0, result.stderr
    figures = json.loads(out_json.read_text())
    assert figures["mode"] == "mutual-set"
    assert 0.0 <= figures["mean"]["0"]["mean"]["pixel_pro"] <= 1.0
    assert figures["paper"]["method"] == "MuSc"
    assert figures["paper"]["shots"]["0"]["paper"]["image_auroc"] == pytest.approx(0.9477)
    assert "MuSc's published figures" in result.stderr
    pool = root / "bottle" / "train" / "good"
    result = run_runner([*args, "--pool", pool, "--category", "bottle"])
    assert result.code == 0, result.stderr
    assert json.loads(out_json.read_text())["mode"] == "mutual-pool"
    for extra in (["--mutual", "--k", "1"], ["--mutual", "--calibrate", "0.1"]):
        assert run_runner([*args, *extra]).code == 2


def test_pool_mode_shards_concatenate_to_the_whole_run(model, tmp_path):
    """A pool score depends only on the image and the pool: shards are one run's rows."""
    whole = run_runner(["score", PARTS, *model, "--pool", GOOD])
    assert whole.code == 0, whole.stderr
    rows = []
    for shard in ("1/2", "2/2"):
        part = run_runner(["score", PARTS, *model, "--pool", GOOD, "--shard", shard])
        assert part.code == 0, part.stderr
        rows += part.stdout.splitlines()[1:]  # without its header
    assert rows == whole.stdout.splitlines()[1:]
