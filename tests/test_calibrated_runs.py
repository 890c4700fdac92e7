"""Calibrated decisions end to end (issue 10): `winclip calibrate`, `--calibration` on
score / segment / fewshot, anomalous regions, `--maps anomalous`, `eval --calibrate`,
all with the tiny random model and generated images."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import make_mvtec, read_csv, run_runner
from tests.tiny_model import make_tiny_model
from winclip_cli.calibration import load_calibration
from winclip_cli.data import InputImage, find_images
from winclip_cli.outputs import CONTOUR_COLOUR, ColourScale, write_image_outputs
from winclip_cli.references import pick_references


def make_images(folder: Path, count: int, seed: int = 0, size: int = 48) -> list[Path]:
    """``count`` distinct noisy pictures (different bytes, so no duplicates)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        base = rng.integers(80, 170, size=3)
        pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def calibrate(args: list[object], model: list[str]):
    return run_runner(["calibrate", *args, *model])


@pytest.fixture()
def good(tmp_path) -> Path:
    make_images(tmp_path / "good", 24, seed=1)
    return tmp_path / "good"


@pytest.fixture()
def zero_cal(good, model, tmp_path) -> Path:
    out = tmp_path / "zero.cal"
    outcome = calibrate([good, "--class", "screw", "-o", out], model)
    assert outcome.code == 0, outcome.stderr
    return out


def test_calibrate_then_score_recomputes_every_p_value_and_label(
    zero_cal,
    model,
    tmp_path,
):
    cal = load_calibration(zero_cal)
    assert cal.n == 24 and cal.map_maxima is not None and cal.bank is None
    s = cal.settings
    assert s["class"] == "screw" and s["mode"] == "zero-shot" and s["k"] == 0
    assert s["tiles"] == "1x1" and s["scales"] == [2, 3] and s["weights"]
    assert cal.scores.dtype == np.float64
    assert any(round(float(v), 6) != float(v) for v in cal.scores)  # not rounded
    tests = tmp_path / "tests"
    make_images(tests, 12, seed=7)
    args = ["score", tests, "--calibration", zero_cal, "--false-alarm-rate", "0.2", *model]
    outcome = run_runner(args)
    assert outcome.code == 0, outcome.stderr
    header, rows = read_csv(outcome.stdout)
    assert header == ["path", "score", "p_value", "label", "status", "error"]
    assert outcome.stderr.count("anomalous above score") == 1
    k = int(np.ceil((cal.n + 1) * (1 - 0.2)))
    threshold = float(np.sort(cal.scores)[k - 1])
    assert f"{threshold:.6f}" in outcome.stderr
    for row in rows:
        score = float(row["score"])
        expected_p = (1 + sum(c >= score for c in cal.scores)) / (cal.n + 1)
        assert row["p_value"] == f"{expected_p:.6f}"
        assert row["label"] == ("anomalous" if expected_p <= 0.2 else "normal")
        assert (score > threshold) == (row["label"] == "anomalous")
    # The class comes from the file: the text side is the screw's, not 'object'.
    plain = read_csv(run_runner(["score", tests, "--class", "screw", *model]).stdout)[1]
    assert [r["score"] for r in plain] == [r["score"] for r in rows]
    gate = run_runner([*args, "--fail-on-anomaly"])
    assert gate.code == (1 if any(r["label"] == "anomalous" for r in rows) else 0)


def test_a_calibration_on_known_good_images_calls_itself_normal(zero_cal, good, model):
    outcome = run_runner(
        ["score", good, "--calibration", zero_cal, "--false-alarm-rate", "0.2", *model]
    )
    rows = read_csv(outcome.stdout)[1]
    # Each calibration image has p >= 1/(n+1) and at most n*0.2 of them are above c_(k).
    assert sum(r["label"] == "anomalous" for r in rows) <= int(0.2 * 25)
    assert all(float(r["p_value"]) >= 1 / 25 - 1e-6 for r in rows)


def test_too_few_images_calibrate_but_refuse_the_rate(model, tmp_path):
    make_images(tmp_path / "few", 5)
    out = tmp_path / "few.cal"
    outcome = calibrate([tmp_path / "few", "-o", out], model)
    assert outcome.code == 0, outcome.stderr
    assert "n=5" in outcome.stderr and "0.01 needs 99" in outcome.stderr
    refused = run_runner(["score", tmp_path / "few", "--calibration", out, *model])
    assert refused.code == 2
    assert "needs at least 99" in refused.stderr and "1/6" in refused.stderr
    allowed = run_runner(
        ["score", tmp_path / "few", "--calibration", out, "--false-alarm-rate", "0.2", *model]
    )
    assert allowed.code == 0, allowed.stderr


def test_broken_files_are_listed_and_skipped(model, tmp_path):
    folder = tmp_path / "good"
    make_images(folder, 4)
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "g.cal"
    outcome = calibrate([folder, "-o", out], model)
    assert outcome.code == 0, outcome.stderr
    assert "broken.png" in outcome.stderr
    cal = load_calibration(out)
    assert cal.n == 4 and "broken.png" not in {Path(p).name for p in cal.images}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"nope")
    nothing = calibrate([tmp_path / "bad", "-o", tmp_path / "b.cal"], model)
    assert nothing.code == 2 and not (tmp_path / "b.cal").exists()


@pytest.mark.parametrize("seed", [None, 3])
def test_references_never_calibrate(seed, model, tmp_path):
    folder = tmp_path / "good"
    make_images(folder, 10)
    candidates = find_images([folder])
    refs, _ = pick_references(candidates, 2, seed, lambda i: i.path, lambda i: i.display)
    more = tmp_path / "more"  # given too, so the folder the references come from is unchanged
    more.mkdir()
    shutil.copy(refs[0].path, more / "copy-of-ref.png")  # same bytes, another name
    os.link(refs[1].path, more / "link-of-ref.png")  # same file, another name
    other = next(c for c in candidates if c.path not in {r.path for r in refs})
    shutil.copy(other.path, more / "zz-duplicate.png")  # a duplicate calibration image
    out = tmp_path / "few.cal"
    extra = [] if seed is None else ["--seed", seed]
    outcome = calibrate([folder, more, "--ref", folder, "--k", 2, *extra, "-o", out], model)
    assert outcome.code == 0, outcome.stderr
    cal = load_calibration(out)
    names = {Path(p).name for p in cal.images}
    assert not names & {r.path.name for r in refs}
    assert not names & {"copy-of-ref.png", "link-of-ref.png", "zz-duplicate.png"}
    assert cal.n == 10 - 2 and cal.bank is not None and cal.bank.num_images == 2
    assert cal.settings["mode"] == "few-shot" and cal.settings["k"] == 2
    # The bank comes from the file: fewshot needs no --ref.
    applied = run_runner(
        ["fewshot", folder, "--calibration", out, "--false-alarm-rate", "0.2",
         "--out", tmp_path / "o", *model]
    )  # fmt: skip
    assert applied.code == 0, applied.stderr
    assert "p_value" in read_csv(applied.stdout)[0]


@pytest.fixture()
def other_model(tmp_path) -> str:
    return str(make_tiny_model(tmp_path / "other-model", seed=1)["local_dir"])


@pytest.mark.parametrize(
    "extra, option",
    [
        (["--class", "nut"], "--class"),
        (["--temperature", "0.5"], "--temperature"),
        (["--prompts", "clip-ac"], "--prompts"),
        (["--ref", "REF"], "--ref"),
        (["--ref", "REF", "--k", "2"], "--ref"),
        (["--threshold", "0.5"], "--threshold"),
        (["OTHER"], "--weights/--pretrained"),
    ],
)
def test_an_option_that_contradicts_the_calibration_is_refused(
    extra,
    option,
    zero_cal,
    good,
    model,
    other_model,
    tmp_path,
):
    args = ["score", good, "--calibration", zero_cal, "--false-alarm-rate", "0.2", *model]
    if extra == ["OTHER"]:
        args[args.index(model[1])] = other_model
        extra = []
    extra = [str(good) if e == "REF" else e for e in extra]
    outcome = run_runner([*args, *extra])
    assert outcome.code == 2, outcome.stderr
    assert option in outcome.stderr, outcome.stderr
    assert "Traceback" not in outcome.stderr


def test_seed_and_k_contradict_a_calibration(zero_cal, good, model):
    for extra in (["--ref", good, "--seed", "1"], ["--ref", good, "--k", "3"]):
        outcome = run_runner(["score", good, "--calibration", zero_cal, *extra, *model])
        assert outcome.code == 2 and "contradicts" in outcome.stderr


def test_a_damaged_calibration_exits_2(model, tmp_path, good):
    bad = tmp_path / "bad.cal"
    bad.write_bytes(b"garbage")
    outcome = run_runner(["score", good, "--calibration", bad, *model])
    assert outcome.code == 2 and "not a readable calibration file" in outcome.stderr


def test_segment_with_a_calibration_writes_regions_and_masks(zero_cal, model, tmp_path):
    tests = tmp_path / "tests"
    make_images(tests, 4, seed=9, size=64)
    out = tmp_path / "out"
    outcome = run_runner(
        ["segment", tests, "--calibration", zero_cal, "--false-alarm-rate", "0.2",
         "--save-masks", "--out", out, *model]
    )  # fmt: skip
    assert outcome.code == 0, outcome.stderr
    header, rows = read_csv(outcome.stdout)
    assert header == [
        "path", "score", "p_value", "label", "map_max", "anomalous_pixels", "overlay",
        "mask", "status", "error",
    ]  # fmt: skip
    assert "pixels above" in outcome.stderr
    cal = load_calibration(zero_cal)
    pixel_threshold = float(np.sort(cal.map_maxima)[int(np.ceil(25 * 0.8)) - 1])
    for row in rows:
        mask = np.asarray(Image.open(row["mask"]))
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        assert int(row["anomalous_pixels"]) == int((mask == 255).sum())
        assert row["mask"].endswith(".png.mask.png")
        if float(row["map_max"]) <= pixel_threshold - 1e-6:
            assert row["anomalous_pixels"] == "0"


def _planted(value: float) -> torch.Tensor:
    grid = torch.full((6, 6), 0.2)
    grid[2:4, 2:4] = value
    return grid


def test_masks_and_contours_on_a_planted_region(tmp_path):
    picture = tmp_path / "p.png"
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(picture)
    image = InputImage(picture, str(picture), "p.png")
    scale = ColourScale(low=0.1, threshold=0.5, high=0.6)
    written = write_image_outputs(
        image, _planted(0.9), tmp_path / "out", False,
        pixel_threshold=0.5, scale=scale, save_mask=True,
    )  # fmt: skip
    mask = np.asarray(Image.open(written.mask)) == 255
    assert mask.shape == (120, 120)
    assert written.anomalous_pixels == int(mask.sum()) > 0
    ys, xs = np.nonzero(mask)
    assert 30 < ys.mean() < 90 and 30 < xs.mean() < 90  # the planted block, in the middle
    assert not mask[:20].any() and not mask[:, :20].any()
    overlay = np.asarray(Image.open(written.overlay)).astype(int)
    red = np.all(overlay == CONTOUR_COLOUR, axis=-1)
    border = mask & ~np.roll(mask, 1, 0) | mask & ~np.roll(mask, -1, 0)
    assert red[border].mean() > 0.9  # the outline is drawn on the region's border
    assert not red[55:65, 55:65].any()  # ...not across its inside
    normal = write_image_outputs(
        InputImage(picture, str(picture), "n.png"), _planted(0.3), tmp_path / "out", False,
        pixel_threshold=0.5, scale=scale, save_mask=True,
    )  # fmt: skip
    assert normal.anomalous_pixels == 0
    assert not (np.asarray(Image.open(normal.mask)) > 0).any()
    flat = np.asarray(Image.open(normal.overlay)).astype(int)
    assert not np.all(flat[:90] == CONTOUR_COLOUR, axis=-1).any()  # none above the legend


def test_colour_scale_puts_the_threshold_at_its_mark():
    scale = ColourScale(low=0.50, threshold=0.53, high=0.54)
    assert np.allclose(scale.positions(np.array([0.4, 0.50, 0.53, 0.54, 0.9])), [0, 0, 0.75, 1, 1])


def test_maps_anomalous_computes_windows_only_for_anomalous_images(
    model,
    tmp_path,
    monkeypatch,
):
    from winclip_cli.model import WinClip

    tests = tmp_path / "tests"
    make_images(tests, 10, seed=4)
    full = run_runner(["segment", tests, "--out", tmp_path / "full", *model])
    full_rows = read_csv(full.stdout)[1]
    cut = sorted(float(r["score"]) for r in full_rows)[6]  # 4 at or above it
    windowed: list[int] = []
    encode = WinClip.encode

    def counting(self, x, windows=True, patch_tokens=False):
        if windows:
            windowed.append(x.shape[0])
        return encode(self, x, windows=windows, patch_tokens=patch_tokens)

    monkeypatch.setattr(WinClip, "encode", counting)
    outcome = run_runner(
        ["segment", tests, "--maps", "anomalous", "--threshold", f"{cut:.6f}",
         "--out", tmp_path / "part", *model]
    )  # fmt: skip
    assert outcome.code == 0, outcome.stderr
    rows = read_csv(outcome.stdout)[1]
    anomalous = [r for r in rows if r["label"] == "anomalous"]
    assert len(anomalous) == 4 and sum(windowed) == 4
    assert [r["score"] for r in rows] == [r["score"] for r in full_rows]
    for row in rows:
        assert (row["overlay"] != "") == (row["label"] == "anomalous")
        assert (row["map_max"] != "") == (row["label"] == "anomalous")
    by_path = {r["path"]: r for r in full_rows}
    assert all(r["map_max"] == by_path[r["path"]]["map_max"] for r in anomalous)


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--ref", "REF", "--threshold", "0.5"], "zero-shot only"),
        ([], "needs a decision"),
    ],
)
def test_maps_anomalous_refusals(extra, says, good, model, tmp_path):
    extra = [str(good) if e == "REF" else e for e in extra]
    tests = tmp_path / "t"
    make_images(tests, 2)
    outcome = run_runner(["segment", tests, "--maps", "anomalous", *extra, *model])
    assert outcome.code == 2 and says in outcome.stderr


def test_resume_refuses_another_calibration_or_rate(zero_cal, model, tmp_path):
    tests = tmp_path / "tests"
    make_images(tests, 6, seed=5)
    rows = tmp_path / "rows.csv"
    base = ["score", tests, "--calibration", zero_cal, "-o", rows, "--settle", "0", *model]
    assert run_runner([*base, "--false-alarm-rate", "0.2"]).code == 0
    text = rows.read_text()
    short = text.rsplit("\n", 2)[0] + "\n"  # one row short: something to resume
    rows.write_text(short)
    again = run_runner([*base, "--false-alarm-rate", "0.2", "--resume"])
    assert again.code == 0, again.stderr
    assert rows.read_text() == text
    # Another rate: refused (the run manifest records it), naming the option.
    rows.write_text(short)
    other = run_runner([*base, "--false-alarm-rate", "0.9", "--resume"])
    assert other.code == 2 and "--false-alarm-rate" in other.stderr, other.stderr
    # Another calibration (other n): the p-values differ, refused.
    make_images(tmp_path / "g2", 9, seed=11)
    second = tmp_path / "second.cal"
    assert calibrate([tmp_path / "g2", "--class", "screw", "-o", second], model).code == 0
    rows.write_text(short)
    swapped = [*base, "--false-alarm-rate", "0.2", "--resume"]
    swapped[swapped.index(str(zero_cal)) if str(zero_cal) in swapped else 3] = second
    refused = run_runner(swapped)
    assert refused.code == 2 and "another --calibration" in refused.stderr, refused.stderr


def test_eval_calibrate_reports_far_and_tpr(model, tmp_path):
    root = make_mvtec(tmp_path / "mvtec", categories=("bottle",), train=6, good=3, bad=3)
    out = tmp_path / "r.json"
    args = ["eval", root, "--k", "0", "--k", "1", "--calibrate", "0.2", "--json", out, *model]
    outcome = run_runner(args)
    assert outcome.code == 0, outcome.stderr
    assert "FAR" in outcome.stderr and "TPR" in outcome.stderr
    results = json.loads(out.read_text())
    zero = results["categories"]["bottle"]["shots"]["0"]["runs"][0]
    one = results["categories"]["bottle"]["shots"]["1"]["runs"][0]
    assert zero["n_cal"] == 6 and one["n_cal"] == 5  # the reference does not calibrate
    for run in (zero, one):
        assert 0 <= run["far"] <= 1 and 0 <= run["tpr"] <= 1
        assert isinstance(run["threshold"], float)
    few = run_runner(["eval", root, "--calibrate", "0.01", *model])
    assert few.code == 2 and "needs at least 99" in few.stderr


def test_the_report_of_a_calibrated_run_shows_the_calibration(
    zero_cal,
    model,
    tmp_path,
):
    tests = tmp_path / "tests"
    make_images(tests, 6, seed=9)
    report = tmp_path / "r.html"
    args = ["score", tests, "--calibration", zero_cal, "--false-alarm-rate", "0.2", *model]
    assert run_runner([*args, "--report", report]).code in (0, 1)
    text = report.read_text()
    assert "with the calibration scores" in text  # its distribution beside the run's
    assert "false-alarm rate" in text and "n = 24" in text


def test_a_tiled_calibration_records_its_grid_and_refuses_another(model, tmp_path):
    good = tmp_path / "good"
    make_images(good, 5, seed=21, size=96)
    cal = tmp_path / "tiled.cal"
    made = calibrate([good, "--tiles", "2x2", "-o", cal], model)
    assert made.code == 0, made.stderr
    assert load_calibration(cal).settings["tiles"] == "2x2 overlap 0.25"
    tests = tmp_path / "tests"
    make_images(tests, 3, seed=22, size=96)
    base = ["score", tests, "--calibration", cal, "--false-alarm-rate", "0.2", *model]
    tiled = run_runner([*base, "--tiles", "2x2"])
    assert tiled.code in (0, 1), tiled.stderr
    # The calibration's scores are tile maxima: an untiled run may not use them.
    untiled = run_runner(base)
    assert untiled.code == 2 and "--tiles" in untiled.stderr, untiled.stderr
