"""`review apply` on the tiny model: false alarms taught back into the bank or the
calibration set (WINCLIP.md "Review verdicts taught back"), the lineage, and every
refusal (exit 2, nothing written)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import read_csv, run_runner
from tests.test_calibrated_runs import make_images
from winclip_cli import hardware
from winclip_cli.commands.review_model import calibration_scorer
from winclip_cli.conformal import load_calibration
from winclip_cli.errors import UsageError
from winclip_cli.options import ModelOptions
from winclip_cli.progress import Reporter
from winclip_cli.review_apply import ApplyRequest, apply_verdicts
from winclip_cli.verdicts import VERDICT_COLUMNS, VerdictFileError

RATE = "0.05"  # 24 calibration images support rates from 1/25


@pytest.fixture(autouse=True)
def fp32_by_default(monkeypatch):
    """auto computes in fp32 here, as on a CPU without AMX: at bf16 a score rescored by
    review apply and the same image scored by a run differed in the last bits (seen on
    this AMX build machine), which flips the exact tie these tests rely on. Open issue."""
    monkeypatch.setattr(hardware, "cpu_features", lambda: {})


def make_odd_images(folder: Path, count: int = 8) -> None:
    """Striped pictures, unlike the calibration's noise: some of them get flagged."""
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.zeros((48, 48, 3), np.uint8)
        pixels[:] = rng.integers(0, 255, 3)
        pixels[::4] = 255 - pixels[::4]
        Image.fromarray(pixels).save(folder / f"c{i}.png")


def score_rows(cal: str, model: list[str], cwd: Path, *paths: str) -> dict[str, dict]:
    args = ["score", *(paths or ("cand",)), "--calibration", cal, "--false-alarm-rate", RATE]
    outcome = run_runner([*args, *model], cwd=cwd)
    assert outcome.code == 0, outcome.stderr
    return {row["path"]: row for row in read_csv(outcome.stdout)[1]}


def write_verdicts(path: Path, *rows: tuple[str, str]) -> Path:
    lines = [",".join(VERDICT_COLUMNS)]
    lines += [f"{name},{verdict},,anomalous,,,2026-12-02T10:00:00Z" for name, verdict in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def line(tmp_path, model, monkeypatch):
    """A zero-shot calibration on 24 good images, and striped parts some of which it flags;
    the current folder is the run's (rows name files relative to it)."""
    monkeypatch.chdir(tmp_path)
    make_images(tmp_path / "good", 24, seed=1)
    made = run_runner(["calibrate", "good", "--class", "screw", "-o", "zero.cal", *model])
    assert made.code == 0, made.stderr
    make_odd_images(tmp_path / "cand")
    rows = score_rows("zero.cal", model, tmp_path)
    flagged = sorted(
        (r for r in rows.values() if r["label"] == "anomalous"), key=lambda r: r["score"]
    )
    assert flagged, rows
    return tmp_path, flagged[-1]["path"], [r["path"] for r in rows.values() if r not in flagged]


def apply(tiny, *files: Path, cal: str = "zero.cal", out: str = "new.cal", said=None, **kw):
    request = ApplyRequest(list(files), Path(cal), Path(out), false_alarm_rate=float(RATE), **kw)
    said = [] if said is None else said
    reporter = Reporter(stream=io.StringIO())
    scoring = calibration_scorer(ModelOptions(model=tiny["local_dir"]), Path(cal), reporter)
    return apply_verdicts(request, scoring, said.append), said


def test_into_bank_the_false_alarm_is_no_longer_flagged(line, tiny, model):
    folder, false_alarm, normal = line
    verdicts = write_verdicts(
        folder / "verdicts.csv", (false_alarm, "false_alarm"), (normal[0], "defect")
    )
    result, said = apply(tiny, verdicts)
    assert result.added == [false_alarm]
    new = load_calibration(folder / "new.cal")
    old = load_calibration(folder / "zero.cal")
    # the zero-shot calibration became WinCLIP+, its bank holds only the false alarm
    assert new.settings["mode"] == "few-shot" and new.settings["k"] == 1
    assert new.bank is not None and new.bank.num_images == 1
    assert new.images == old.images and new.n == old.n  # the calibration set is unchanged
    assert not np.allclose(new.scores, old.scores)  # ... but scored again under the bank
    (record,) = new.lineage
    assert record["into"] == "bank" and record["from"]["sha256"] and record["from"]["n"] == 24
    assert record["mode_change"].startswith("zero-shot -> few-shot")
    assert [a["path"] for a in record["added"]] == [false_alarm]
    assert {v["path"]: v["verdict"] for v in record["verdicts"]} == {
        false_alarm: "false_alarm",
        normal[0]: "defect",
    }
    assert record["verdict_files"][0]["file"] == str(verdicts)
    assert any("defect verdict" in s for s in said)
    rows = score_rows("new.cal", model, folder, false_alarm)
    assert rows[false_alarm]["label"] == "normal", rows


def test_into_calibration_raises_the_threshold_and_keeps_the_bank(line, tiny, model):
    folder, false_alarm, _normal = line
    verdicts = write_verdicts(folder / "v.csv", (false_alarm, "false_alarm"))
    result, _said = apply(tiny, verdicts, into="calibration")
    new = load_calibration(folder / "new.cal")
    old = load_calibration(folder / "zero.cal")
    assert new.n == old.n + 1 and new.images == [*old.images, false_alarm]
    assert new.settings == old.settings and new.bank is None
    np.testing.assert_array_equal(new.scores[:-1], old.scores)  # only the new one scored
    assert new.scores[-1] > old.threshold(float(RATE))
    assert result.thresholds is not None
    before, after = result.thresholds
    assert after >= before == old.threshold(float(RATE))
    assert new.lineage[0]["false_alarm_rate"] == float(RATE)
    assert score_rows("new.cal", model, folder, false_alarm)[false_alarm]["label"] == "normal"


def test_into_calibration_skips_an_image_below_the_threshold(line, tiny):
    folder, false_alarm, normal = line
    verdicts = write_verdicts(
        folder / "v.csv", (false_alarm, "false_alarm"), (normal[0], "false_alarm")
    )
    result, said = apply(tiny, verdicts, into="calibration")
    assert result.added == [false_alarm]
    assert any(normal[0] in s and "could lower the threshold" in s for s in said)


def test_a_few_shot_bank_grows_and_knows_itself(tmp_path, tiny, model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_images(tmp_path / "good", 24, seed=1)
    args = ["calibrate", "good", "--ref", "good", "--k", "2", "--class", "screw", "-o", "few.cal"]
    made = run_runner([*args, *model])
    assert made.code == 0, made.stderr
    make_odd_images(tmp_path / "cand", 2)
    old = load_calibration("few.cal")
    assert old.bank is not None and old.bank.num_images == 2
    # a copy of a reference under another name is already in the bank (by its features)
    references = sorted(set(f"good/{i:03d}.png" for i in range(24)) - set(old.images))
    shutil.copy(references[0], "cand/ref-copy.png")
    verdicts = write_verdicts(
        tmp_path / "v.csv",
        ("cand/c0.png", "false_alarm"),
        ("cand/ref-copy.png", "false_alarm"),
        (old.images[0], "false_alarm"),  # a calibration image: never into the bank
    )
    result, said = apply(tiny, verdicts, cal="few.cal")
    assert result.added == ["cand/c0.png"]
    assert any("ref-copy.png: already in the reference bank" in s for s in said)
    assert any(f"{old.images[0]}: already in the calibration set" in s for s in said)
    new = load_calibration("new.cal")
    assert new.bank is not None and new.bank.num_images == 3
    assert new.settings["k"] == 3 and "mode_change" not in new.lineage[0]
    # into the calibration set, a reference never goes either (it would score low)
    said = []
    try:
        apply(tiny, verdicts, cal="few.cal", out="cal.cal", into="calibration", said=said)
    except UsageError:  # c0 may not be above the threshold: then nothing is left to add
        assert not Path("cal.cal").exists()
    else:
        assert "cand/ref-copy.png" not in load_calibration("cal.cal").images
    assert any("ref-copy.png: a reference image of the bank" in s for s in said)
    # once added, the image is skipped by the next apply (the lineage remembers it)
    with pytest.raises(UsageError, match="no false alarm left to add"):
        apply(tiny, write_verdicts(tmp_path / "w.csv", ("cand/c0.png", "false_alarm")),
              cal="new.cal", out="newer.cal")  # fmt: skip
    assert not Path("newer.cal").exists()


def test_a_tiled_calibration_adds_every_tile(tmp_path, tiny, model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_images(tmp_path / "good", 24, seed=1, size=64)
    made = run_runner(["calibrate", "good", "--tiles", "2x2", "-o", "tiled.cal", *model])
    assert made.code == 0, made.stderr
    make_odd_images(tmp_path / "cand", 1)
    verdicts = write_verdicts(tmp_path / "v.csv", ("cand/c0.png", "false_alarm"))
    apply(tiny, verdicts, cal="tiled.cal")
    new = load_calibration("new.cal")
    assert new.bank is not None and new.bank.num_images == 4  # 2x2 tiles of one image
    assert new.bank.meta["tiles"] == "2x2" and new.bank.meta["references"] == 1
    assert new.settings["tiles"].startswith("2x2")


def test_paths_resolve_against_root(line, tiny, tmp_path, monkeypatch):
    folder, false_alarm, _normal = line
    verdicts = write_verdicts(folder / "v.csv", (false_alarm, "false_alarm"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(UsageError, match="cannot be read"):
        apply(tiny, verdicts, cal=str(folder / "zero.cal"), out="new.cal")
    result, _ = apply(tiny, verdicts, cal=str(folder / "zero.cal"), out="new.cal", root=folder)
    assert result.added == [false_alarm]


@pytest.mark.parametrize("problem", ["missing", "not an image"])
def test_an_unusable_image_is_named_and_nothing_is_written(line, tiny, problem):
    folder, false_alarm, _normal = line
    bad = "cand/gone.png"
    if problem == "not an image":
        (folder / bad).write_text("text\n")
    verdicts = write_verdicts(folder / "v.csv", (false_alarm, "false_alarm"), (bad, "false_alarm"))
    with pytest.raises(UsageError) as caught:
        apply(tiny, verdicts)
    message = str(caught.value)
    assert bad in message and str(verdicts) in message and "nothing written" in message
    assert false_alarm not in message
    assert not (folder / "new.cal").exists()


def test_disagreeing_verdicts_and_bad_files_exit_2_before_the_model(line, tiny):
    folder, false_alarm, _normal = line
    one = write_verdicts(folder / "one.csv", (false_alarm, "false_alarm"))
    two = write_verdicts(folder / "two.csv", (false_alarm, "defect"))
    with pytest.raises(VerdictFileError, match="disagree"):
        apply(tiny, one, two)
    (folder / "bad.csv").write_text("path,verdict\nx.png,perhaps\n")
    with pytest.raises(VerdictFileError, match="line 2: field 'verdict'"):
        apply(tiny, folder / "bad.csv")
    assert not (folder / "new.cal").exists()


def test_a_file_twice_is_skipped_and_no_input_is_overwritten(line, tiny):
    folder, false_alarm, _normal = line
    verdicts = write_verdicts(folder / "v.csv", (false_alarm, "false_alarm"))
    result, said = apply(tiny, verdicts, verdicts)
    assert result.added == [false_alarm] and any("the same file as" in s for s in said)
    for target in ("zero.cal", "v.csv"):
        with pytest.raises(UsageError, match="would overwrite an input"):
            apply(tiny, verdicts, out=target)
    assert load_calibration(folder / "zero.cal").lineage == []


def test_defects_alone_write_nothing(line, tiny):
    folder, false_alarm, _normal = line
    verdicts = write_verdicts(folder / "v.csv", (false_alarm, "defect"))
    with pytest.raises(UsageError, match="no false alarm left to add"):
        apply(tiny, verdicts)
    assert not (folder / "new.cal").exists()
