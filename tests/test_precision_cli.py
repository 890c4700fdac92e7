"""Precision on the command line: `auto` is every command's default and the "model
loaded" line says what it chose and why; the manifest, banks and calibrations record the
resolved precision; a resume, a bank or a calibration at another precision is refused by
--precision, naming the one the file needs; a run that gives none takes the file's."""

from __future__ import annotations

import json

import pytest

from tests.helpers import GOOD, PARTS, run_runner
from winclip_cli import hardware
from winclip_cli.conformal import load_calibration
from winclip_cli.manifest import manifest_path

AMX = {"amx_bf16": True, "amx_tile": True}


@pytest.fixture()
def amx(monkeypatch):
    """This process's CPU reports AMX (the CLI runs in-process: auto picks bf16)."""
    monkeypatch.setattr(hardware, "cpu_features", lambda: AMX)


@pytest.fixture()
def no_amx(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_features", lambda: {"avx2": True})


def score(model, out, *extra):
    return run_runner(["score", PARTS / "local", *model, "-o", out, "--class", "textile", *extra])


def recorded_precision(rows) -> str:
    return json.loads(manifest_path(rows).read_text())["settings"]["--precision"]


def test_auto_is_the_default_and_the_log_says_why(amx, model, tmp_path):
    done = score(model, tmp_path / "rows.csv")
    assert done.code == 0, done.stderr
    assert "model loaded:" in done.stderr and "bf16: CPU has AMX" in done.stderr
    assert recorded_precision(tmp_path / "rows.csv") == "bf16"  # resolved, never "auto"


def test_without_amx_auto_is_fp32(no_amx, model, tmp_path):
    done = score(model, tmp_path / "rows.csv")
    assert done.code == 0 and "fp32: CPU has no AMX" in done.stderr
    assert recorded_precision(tmp_path / "rows.csv") == "fp32"


def test_a_resume_at_another_precision_is_refused_by_name(amx, model, tmp_path):
    rows = tmp_path / "rows.csv"
    assert score(model, rows).code == 0
    again = score(model, rows, "--resume", "--precision", "fp32")
    assert again.code == 2
    assert "another --precision: bf16 there, fp32 now" in again.stderr
    assert score(model, rows, "--resume").code == 0  # auto is bf16 again here


def test_a_resume_of_a_run_from_before_precision_was_recorded(no_amx, model, tmp_path):
    """Such a run computed in fp32 (the default then): it resumes at fp32, not at bf16."""
    rows = tmp_path / "rows.csv"
    assert score(model, rows).code == 0
    manifest = json.loads(manifest_path(rows).read_text())
    del manifest["settings"]["--precision"]
    manifest_path(rows).write_text(json.dumps(manifest))
    assert score(model, rows, "--resume").code == 0
    refused = score(model, rows, "--resume", "--precision", "bf16")
    assert refused.code == 2 and "another --precision: fp32 there" in refused.stderr


def test_a_calibration_records_the_resolved_precision_and_is_refused_at_another(
    amx, model, tmp_path
):
    cal = tmp_path / "good.cal"
    made = run_runner(["calibrate", GOOD, PARTS / "good", *model, "-o", cal, "--class", "textile"])
    assert made.code == 0, made.stderr
    assert load_calibration(cal).precision == "bf16"
    refused = score(model, tmp_path / "a.csv", "--calibration", cal, "--precision", "fp32")
    assert refused.code == 2
    assert "--precision bf16" in refused.stderr and "made at precision bf16" in refused.stderr


def test_a_run_that_gives_no_precision_takes_the_calibrations(no_amx, model, tmp_path):
    cal = tmp_path / "good.cal"
    made = run_runner(
        ["calibrate", GOOD, *model, "-o", cal, "--class", "textile", "--precision", "bf16"]
    )
    assert made.code == 0, made.stderr
    used = score(model, tmp_path / "a.csv", "--calibration", cal, "--false-alarm-rate", "0.25")
    assert used.code == 0, used.stderr  # auto would have been fp32 here
    assert f"bf16: calibration {cal} was made at it" in used.stderr
    assert recorded_precision(tmp_path / "a.csv") == "bf16"


def test_a_bank_at_another_precision(no_amx, model, tmp_path):
    bank = tmp_path / "bank.pt"
    made = run_runner(
        ["fewshot", PARTS / "good", *model, "--ref", GOOD, "--k", "2", "--save-bank", bank,
         "--out", tmp_path / "o", "--precision", "bf16", "--class", "textile"]
    )  # fmt: skip
    assert made.code == 0, made.stderr
    common = ["fewshot", PARTS / "good", *model, "--ref", bank, "--out", tmp_path / "o2"]
    refused = run_runner([*common, "--precision", "fp32"])
    assert refused.code == 2
    assert "--precision bf16" in refused.stderr and "reference bank" in refused.stderr
    taken = run_runner(common)  # auto would be fp32: the bank's bf16 is taken
    assert taken.code == 0, taken.stderr
    assert "bf16: reference bank" in taken.stderr
