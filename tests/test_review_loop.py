"""The review loop end to end (issue 20's "done when"): a calibrated segment run and its
report; in chromium a reviewer marks the flagged part "False alarm" and exports;
`review apply` teaches it back; the next run no longer flags that part."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import read_csv, run_runner
from tests.test_calibrated_runs import make_images
from tests.test_report_browser import CHROMIUM, CHROMIUM_ARGS, _require_browser
from tests.test_review_apply import make_odd_images
from winclip_cli import hardware
from winclip_cli.commands.report import build_report


@pytest.fixture(autouse=True)
def fp32_by_default(monkeypatch):
    """auto computes in fp32 here, as on a CPU without AMX: at bf16 a score rescored by
    review apply and the same image scored by a run differed in the last bits (seen on
    this AMX build machine), which flips the exact tie these tests rely on. Open issue."""
    monkeypatch.setattr(hardware, "cpu_features", lambda: {})


def flagged_parts(cal: str, model: list[str], rows: str) -> list[str]:
    args = ["segment", "cand", "--calibration", cal, "--false-alarm-rate", "0.05"]
    outcome = run_runner([*args, "--out", "out", "-o", rows, *model])
    assert outcome.code == 0, outcome.stderr
    return [r["path"] for r in read_csv(Path(rows).read_text())[1] if r["label"] == "anomalous"]


def test_mark_export_apply_and_the_part_is_no_longer_flagged(tmp_path, model, monkeypatch):
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.chdir(tmp_path)
    make_images(tmp_path / "good", 24, seed=1)
    made = run_runner(["calibrate", "good", "--class", "screw", "-o", "line.cal", *model])
    assert made.code == 0, made.stderr
    make_odd_images(tmp_path / "cand")
    flagged = flagged_parts("line.cal", model, "monday.csv")
    assert flagged
    build_report([Path("monday.csv")], Path("monday.html"))

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto((tmp_path / "monday.html").as_uri(), wait_until="load")
            for path in flagged:
                card = page.locator(".card", has=page.locator(".path code", has_text=path))
                card.get_by_role("button", name="False alarm").click()
            expect(page.locator("#verdict-count")).to_contain_text(f"{len(flagged)} reviewed")
            with page.expect_download() as download:
                page.get_by_role("button", name="Export verdicts").click()
            download.value.save_as(tmp_path / "verdicts.csv")
        finally:
            browser.close()

    args = ["review", "apply", "verdicts.csv", "--calibration", "line.cal", "-o", "line2.cal"]
    applied = run_runner([*args, "--workers", "0"])
    assert applied.code == 0, applied.stderr
    assert f"{len(flagged)} false alarm(s) added to the reference bank" in applied.stderr
    again = flagged_parts("line2.cal", model, "tuesday.csv")
    assert not set(flagged) & set(again), again
