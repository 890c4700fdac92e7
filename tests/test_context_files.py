"""Files that carry their context, end to end (issue 17): a report built later from a
calibrated run's rows shows what --report on the run showed; a calibration or bank runs
with its own model and never downloads; a whole-image anomaly says so; a resumed run
counts rows and files apart."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import winclip_cli.backbone as backbone_module
from tests.helpers import PARTS, read_csv, run_runner
from winclip_cli.conformal import load_calibration, save_calibration
from winclip_cli.decision import WHOLE_IMAGE
from winclip_cli.provenance import ModelRecord


@pytest.fixture()
def tiny_copy(tiny, tmp_path) -> str:
    """The tiny model in a folder of this test's own (its weights may be moved)."""
    folder = tmp_path / "tiny-model"
    shutil.copytree(tiny["local_dir"].removeprefix("local-dir:"), folder)
    return f"local-dir:{folder}"


@pytest.fixture()
def calibrated(tmp_path, tiny_copy, cache_dir) -> tuple[Path, list[str]]:
    """A calibration from sample_data/parts/good (tiny model) and the options of a run."""
    model = ["--model", tiny_copy, "--workers", "0"]
    cal = tmp_path / "good.cal"
    out = run_runner(["calibrate", PARTS / "good", *model, "--class", "textile", "-o", cal])
    assert out.code == 0, out.stderr
    return cal, model


def meta_and_histogram(html: str) -> tuple[list[tuple[str, str]], str]:
    """The header's facts (less the time it was made and took) and the score chart."""
    meta = re.search(r'<dl class="meta">(.*?)</dl>', html, re.S)
    chart = re.search(r'<section id="histogram">(.*?)</section>', html, re.S)
    assert meta and chart, html[:2000]
    pairs = re.findall(r"<dt>(.*?)<dd>(.*?)(?=<dt>|$)", meta.group(1), re.S)
    return [p for p in pairs if p[0] not in ("generated", "time taken")], chart.group(1)


def test_a_report_built_later_shows_the_runs_header_threshold_and_distribution(
    calibrated, tmp_path
):
    cal, model = calibrated
    rows, during = tmp_path / "rows.csv", tmp_path / "during.html"
    args = ["segment", PARTS, *model, "--calibration", cal, "--false-alarm-rate", "0.25"]
    run = run_runner([*args, "--out", tmp_path / "out", "-o", rows, "--report", during])
    assert run.code == 0, run.stderr
    later = tmp_path / "later.html"
    made = run_runner(["report", rows, "-o", later])
    assert made.code == 0, made.stderr
    header, chart = meta_and_histogram(later.read_text())
    assert (header, chart) == meta_and_histogram(during.read_text())
    assert any(k == "false-alarm rate" and "anomalous above" in v for k, v in header)
    assert "threshold" in chart.lower() or "calibration" in chart.lower()


def test_a_calibration_runs_with_its_own_model(calibrated, tmp_path):
    cal, model = calibrated
    rate = ["--false-alarm-rate", "0.25"]
    named = run_runner(["score", PARTS, *model, "--calibration", cal, *rate])
    assert named.code == 0, named.stderr
    bare = run_runner(["score", PARTS, "--workers", "0", "--calibration", cal, *rate])
    assert bare.code == 0, bare.stderr  # not the default model, not a download
    assert bare.stdout == named.stdout


def test_a_calibration_whose_weights_changed_is_exit_2_naming_them(calibrated, tiny_copy):
    cal, _model = calibrated
    folder = Path(tiny_copy.removeprefix("local-dir:"))
    weights = next(p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".safetensors"))
    weights.rename(weights.with_suffix(".moved"))
    out = run_runner(["score", PARTS, "--workers", "0", "--calibration", cal])
    assert out.code == 2, out.stderr
    assert str(weights) in " ".join(out.stderr.split()) and tiny_copy in out.stderr
    assert "Traceback" not in out.stderr


def test_a_calibration_of_hub_weights_not_here_never_downloads(calibrated, monkeypatch):
    cal, _model = calibrated
    loaded = load_calibration(cal)
    record = ModelRecord("ViT-B-16-plus-240", "laion400m_e31", "/nowhere/model.bin", "1:x")
    save_calibration(dataclasses.replace(loaded, model_record=record.to_json()), cal)
    calls: list[dict] = []

    def hub(*args, **kwargs):
        calls.append(kwargs)
        if not kwargs.get("local_files_only"):
            raise AssertionError("a download was started")
        raise FileNotFoundError("not in the cache")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    monkeypatch.setattr(backbone_module, "_hub_reachable", lambda *a, **k: True)
    out = run_runner(["score", PARTS, "--workers", "0", "--calibration", cal])
    assert out.code == 2, out.stderr
    assert "ViT-B-16-plus-240" in out.stderr and "laion400m_e31" in out.stderr
    assert all(c.get("local_files_only") for c in calls)


def test_a_bank_file_runs_with_its_own_model(model, tmp_path):
    bank = tmp_path / "good.bank"
    made = run_runner(
        ["fewshot", PARTS / "local", "--ref", PARTS / "good", "--k", "2", "--save-bank", bank,
         "--out", tmp_path / "out", *model]
    )  # fmt: skip
    assert made.code == 0, made.stderr
    named = run_runner(["score", PARTS / "local", "--ref", bank, *model])
    bare = run_runner(["score", PARTS / "local", "--ref", bank, "--workers", "0"])
    assert named.code == bare.code == 0, bare.stderr
    assert bare.stdout == named.stdout


def test_an_anomaly_of_the_whole_image_says_so(calibrated, tmp_path):
    cal, model = calibrated
    loaded = load_calibration(cal)
    assert loaded.map_maxima is not None
    # Every score anomalous at rate 0.25, no pixel above the pixel threshold.
    whole = dataclasses.replace(
        loaded, scores=np.zeros(loaded.n), map_maxima=np.full(loaded.n, 1e6)
    )
    save_calibration(whole, cal)
    rows, report = tmp_path / "rows.csv", tmp_path / "report.html"
    args = ["segment", PARTS / "local", *model, "--calibration", cal, "--false-alarm-rate", "0.25"]
    out = run_runner([*args, "--out", tmp_path / "out", "-o", rows, "--report", report])
    assert out.code == 0, out.stderr
    got = read_csv(rows.read_text())[1]
    assert {r["label"] for r in got} == {"anomalous"}
    assert {r["anomalous_pixels"] for r in got} == {"0"}
    assert report.read_text().count(WHOLE_IMAGE) >= len(got)


def test_a_resumed_run_keeps_the_row_of_a_deleted_file_and_counts_apart(model, tmp_path):
    folder = tmp_path / "camera"
    shutil.copytree(PARTS, folder)
    (folder / "good" / "extra.jpg").write_bytes((PARTS / "good" / "textile_0901.jpg").read_bytes())
    rows = tmp_path / "rows.csv"
    assert run_runner(["score", folder, *model, "-o", rows]).code == 0
    (folder / "good" / "extra.jpg").unlink()  # archived
    out = run_runner(["score", folder, *model, "-o", rows, "--resume"])
    assert out.code == 0, out.stderr
    assert "10 rows (9 files present, 1 no longer on disk)" in out.stderr
    assert len(read_csv(rows.read_text())[1]) == 10


def test_the_report_table_starts_by_score_and_links_masks(calibrated, tmp_path):
    cal, model = calibrated
    rows, report = tmp_path / "rows.csv", tmp_path / "report.html"
    args = ["segment", PARTS, *model, "--calibration", cal, "--false-alarm-rate", "0.25"]
    out = run_runner([*args, "--save-masks", "--out", tmp_path / "out", "-o", rows])
    assert out.code == 0, out.stderr
    assert run_runner(["report", rows, "-o", report]).code == 0
    html = report.read_text()
    table = html[html.index('<table id="rows">') :]
    assert 'data-col="score" data-type="num" class="num" aria-sort="descending"' in table
    body = table[table.index("<tbody>") : table.index("</tbody>")]
    listed = re.findall(r"<tr>(.*?)\n", body)
    column = [c for c in re.findall(r'data-col="([^"]+)"', table)].index("score")
    values = [float(re.findall(r"<td>([^<]*)", row)[column]) for row in listed]
    assert values == sorted(values, reverse=True)
    masks = [r["mask"] for r in read_csv(rows.read_text())[1] if r["mask"]]
    assert masks and all(f">{m}</a>" in body for m in masks)


def test_help_reads_right(monkeypatch):
    out = run_runner(["segment", "--help"], env={"COLUMNS": "100"})
    assert out.code == 0
    output_panel = out.stdout[out.stdout.index("─ Output ") :]
    output_panel = output_panel[: output_panel.index("╰")]
    line = next(x for x in output_panel.splitlines() if "--output" in x)
    assert "Write rows to FILE ('-' = stdout)." in line, output_panel  # not squeezed
    prompts = out.stdout[out.stdout.index("--prompts") :][:300]
    words = " ".join(prompts.split())
    assert "Prompt set: winclip (the default" in words and "clip-ac (the default" not in words


def test_download_offline_does_not_say_run_download(monkeypatch):
    import huggingface_hub

    def hub(*args, **kwargs):
        raise FileNotFoundError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    monkeypatch.setattr(backbone_module, "_hub_reachable", lambda *a, **k: False)
    out = run_runner(["download"])
    assert out.code == 4
    assert "winclip download" not in out.stderr and "connected machine" in out.stderr
