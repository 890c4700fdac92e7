"""`review stats` and `review apply` from their options to an exit code (review.py):
the files they read (verdicts, rows and their manifests, the calibration), the promised
rate taken from the runs' manifests, JSON output, --fail-on-drift, and apply taking the
calibration's own model when none is given."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.helpers import read_csv, run_runner
from tests.test_calibrated_runs import make_images
from tests.test_review_apply import make_odd_images, write_verdicts
from winclip_cli.calibration import load_calibration
from winclip_cli.commands.review import (
    ReviewApplyOptions,
    ReviewStatsOptions,
    run_review_apply,
    run_review_stats,
)
from winclip_cli.errors import ExitCode, UsageError
from winclip_cli.manifest import RunManifest
from winclip_cli.progress import Reporter
from winclip_cli.verdicts import VERDICT_COLUMNS


def quiet() -> tuple[Reporter, io.StringIO]:
    stream = io.StringIO()
    return Reporter(stream=stream), stream


def stats(opts: ReviewStatsOptions) -> tuple[ExitCode, str]:
    out = io.StringIO()
    code = run_review_stats(opts, quiet()[0], out)
    return code, out.getvalue()


def week(folder: Path, days: int, flagged: int, images: int, rate: float) -> list[Path]:
    """Rows files of ``days`` runs, each with its manifest recording ``rate``."""
    files = []
    for day in range(days):
        path = folder / f"day{day}.csv"
        lines = ["path,score,p_value,label,status,error"]
        for i in range(images):
            label = "anomalous" if i < flagged else "normal"
            lines.append(f"d{day}/{i:03d}.png,0.5,0.5,{label},ok,")
        path.write_text("\n".join(lines) + "\n")
        RunManifest({"--false-alarm-rate": rate, "--calibration": None}).write(path)
        files.append(path)
    return files


def verdicts_for(folder: Path, days: int, false_alarms: int, defects: int) -> Path:
    lines = [",".join(VERDICT_COLUMNS)]
    for day in range(days):
        for i in range(false_alarms + defects):
            verdict = "false_alarm" if i < false_alarms else "defect"
            lines.append(f"d{day}/{i:03d}.png,{verdict},0.5,anomalous,0.5,,")
    path = folder / "verdicts.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_week_that_kept_its_promise(tmp_path):
    rows = week(tmp_path, days=5, flagged=3, images=200, rate=0.01)
    verdicts = verdicts_for(tmp_path, days=5, false_alarms=1, defects=2)
    code, text = stats(ReviewStatsOptions([verdicts], rows, fail_on_drift=True))
    assert code == ExitCode.OK
    assert "false-alarm rate promised   0.01 (1%)" in text and "promise held" in text
    assert "5 of 990" in text  # F = 5 false alarms among G = 1000 - 10 defects


def test_a_drifted_week_says_so_and_fails_on_request(tmp_path):
    rows = week(tmp_path, days=5, flagged=8, images=200, rate=0.01)
    verdicts = verdicts_for(tmp_path, days=5, false_alarms=6, defects=1)
    code, text = stats(ReviewStatsOptions([verdicts], rows))
    assert code == ExitCode.OK  # without --fail-on-drift: only said
    assert "drifted" in text and "recalibrate" in text and "broken at the 5% level" in text
    code, _ = stats(ReviewStatsOptions([verdicts], rows, fail_on_drift=True))
    assert code == ExitCode.ANOMALY
    code, text = stats(ReviewStatsOptions([verdicts], rows, fmt="json"))
    data = json.loads(text)
    assert data["drift"]["observed"]["count"] == 30 and data["drift"]["observed"]["total"] == 995
    assert data["drift"]["broken"] is True and data["drift"]["promised"] == 0.01


def test_rates_that_differ_or_are_missing(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = week(tmp_path / "a", 1, 1, 50, rate=0.01)
    second = week(tmp_path / "b", 1, 1, 50, rate=0.05)
    verdicts = verdicts_for(tmp_path, 1, 1, 0)
    with pytest.raises(UsageError, match="different false-alarm rates"):
        stats(ReviewStatsOptions([verdicts], first + second))
    code, text = stats(ReviewStatsOptions([verdicts], first + second, false_alarm_rate=0.05))
    assert code == ExitCode.OK and "promised   0.05 (5%)" in text
    for path in first:
        path.with_name(path.name + ".manifest.json").unlink()
    _code, text = stats(ReviewStatsOptions([verdicts], first))
    assert "the default 0.01 is assumed" in text


def test_stats_refusals(tmp_path):
    verdicts = verdicts_for(tmp_path, 1, 1, 0)
    with pytest.raises(UsageError, match="--format"):
        stats(ReviewStatsOptions([verdicts], fmt="yaml"))
    with pytest.raises(UsageError, match="--fail-on-drift needs --rows"):
        stats(ReviewStatsOptions([verdicts], fail_on_drift=True))
    with pytest.raises(UsageError, match="not found"):
        stats(ReviewStatsOptions([verdicts], [tmp_path / "nope.csv"]))
    code, text = stats(ReviewStatsOptions([verdicts]))  # verdicts alone: the alarm figures
    assert code == ExitCode.OK and "images reviewed" in text and "observed" not in text


def test_a_real_calibrated_week_then_apply_with_the_calibrations_own_model(
    tmp_path,
    model,
    monkeypatch,
):
    """Runs with a calibration write manifests that name the rate; stats reads them; apply
    loads the model the calibration names when no model option is given."""
    monkeypatch.chdir(tmp_path)
    make_images(tmp_path / "good", 24, seed=1)
    made = run_runner(["calibrate", "good", "--class", "screw", "-o", "zero.cal", *model])
    assert made.code == 0, made.stderr
    make_odd_images(tmp_path / "cand")
    args = ["score", "cand", "--calibration", "zero.cal", "--false-alarm-rate", "0.05"]
    scored = run_runner([*args, "-o", "day.csv", *model])
    assert scored.code == 0, scored.stderr
    flagged = [r["path"] for r in read_csv((tmp_path / "day.csv").read_text())[1]
               if r["label"] == "anomalous"]  # fmt: skip
    verdicts = write_verdicts(tmp_path / "v.csv", *((p, "false_alarm") for p in flagged))
    code, text = stats(
        ReviewStatsOptions([verdicts], [tmp_path / "day.csv"], tmp_path / "zero.cal")
    )
    assert code == ExitCode.OK
    assert "false-alarm rate promised   0.05 (5%), from a calibration of n = 24" in text
    assert f"{len(flagged)} of 8" in text

    reporter, said = quiet()
    opts = ReviewApplyOptions([verdicts], Path("zero.cal"), Path("new.cal"), workers=0)
    assert run_review_apply(opts, reporter) == ExitCode.OK
    assert "added to the reference bank" in said.getvalue()
    assert "WinCLIP+" in said.getvalue()
    assert load_calibration("new.cal").settings["mode"] == "few-shot"
    with pytest.raises(UsageError, match="--false-alarm-rate applies to --into calibration"):
        run_review_apply(
            ReviewApplyOptions([verdicts], Path("zero.cal"), Path("x.cal"), false_alarm_rate=0.1),
            reporter,
        )
    with pytest.raises(UsageError, match="--root"):
        run_review_apply(
            ReviewApplyOptions([verdicts], Path("zero.cal"), Path("x.cal"), root=Path("nope")),
            reporter,
        )
