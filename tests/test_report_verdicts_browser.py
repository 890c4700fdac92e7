"""Review verdicts in the report, in Debian's chromium through Playwright (as
test_report_browser.py does): click and key verdicts, a note, the table's verdict column
and filter, a reload, "Export verdicts" (the download read back and checked against the
verdict schema) and "Import verdicts" in a fresh browser. Nothing may be requested from
anywhere, and the page's Content-Security-Policy must let the verdict script run (a
blocked script is a console error here)."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path

from tests.test_report_browser import (  # noqa: F401 - segment_run is a fixture
    CHROMIUM,
    CHROMIUM_ARGS,
    _require_browser,
    segment_run,
)
from winclip_cli.commands.report import build_report
from winclip_cli.verdicts import VERDICT_COLUMNS, read_verdict_file

HOSTILE_NOTE = '<img src=x onerror=alert(1)>, "glare", again'


def open_page(browser, report: Path, requests: list[str], problems: list[str], context=None):
    context = context or browser.new_context(viewport={"width": 1280, "height": 900})
    context.on("request", lambda request: requests.append(request.url))
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda m: (
            problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning")
            else None
        ),
    )
    page.on("dialog", lambda dialog: problems.append(f"dialog: {dialog.message}"))
    page.goto(report.as_uri(), wait_until="load")
    return context, page


def test_review_verdicts_click_reload_export_import(segment_run, monkeypatch, tmp_path):  # noqa: F811
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    folder, rows = segment_run
    monkeypatch.chdir(folder)
    report = folder / "report.html"
    flagged = [float(r["score"]) for r in rows if r["label"] == "anomalous"]
    build_report([folder / "rows.csv"], report, threshold=min(flagged), run_info={"class": "x"})
    by_path = {r["path"]: r for r in rows}
    requests: list[str] = []
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context, page = open_page(browser, report, requests, problems)
            cards = page.locator(".card")
            expect(cards).to_have_count(10)
            # every scored card has the two toggles by their accessible names; the error not
            expect(page.get_by_role("button", name="Defect", exact=True)).to_have_count(9)
            expect(page.get_by_role("button", name="False alarm", exact=True)).to_have_count(9)
            expect(cards.nth(9).locator(".verdict")).to_have_count(0)
            paths = cards.locator(".path code").all_inner_texts()

            first = cards.nth(0)
            first.get_by_role("button", name="False alarm").click()
            expect(first.get_by_role("button", name="False alarm")).to_have_attribute(
                "aria-pressed", "true"
            )
            expect(first.locator(".v-shown")).to_have_text("Verdict: false alarm")
            first.locator(".v-note").fill(HOSTILE_NOTE)
            first.locator(".v-note").press("Enter")
            first.locator(".v-note").blur()
            # keys on a focused card: d, then f switches; the same key twice clears
            cards.nth(1).focus()
            page.keyboard.press("d")
            expect(cards.nth(1)).to_have_class("card anomalous v-defect")
            cards.nth(2).focus()
            page.keyboard.press("d")
            page.keyboard.press("f")
            expect(cards.nth(2).locator(".v-shown")).to_have_text("Verdict: false alarm")
            cards.nth(3).focus()
            page.keyboard.press("d")
            page.keyboard.press("d")
            expect(cards.nth(3).locator(".v-shown")).to_have_text("")
            expect(page.locator("#verdict-count")).to_have_text(
                "3 reviewed: 1 defect, 2 false alarms"
            )
            # the note is text: no element came from it
            expect(first.locator("img")).to_have_count(first.locator("img.thumb").count())

            # the table: a verdict column, and its filter
            visible = page.locator("table#rows tbody tr:visible")
            page.select_option("select#filter-verdict", "false alarm")
            expect(visible).to_have_count(2)
            page.select_option("select#filter-verdict", "")
            expect(visible).to_have_count(7)
            page.select_option("select#filter-verdict", "*")
            expect(visible).to_have_count(10)

            # a reload keeps them (localStorage, keyed by the run id)
            page.reload(wait_until="load")
            expect(page.locator("#verdict-count")).to_have_text(
                "3 reviewed: 1 defect, 2 false alarms"
            )
            expect(cards.nth(0).locator(".v-note")).to_have_value(HOSTILE_NOTE)
            expect(cards.nth(1).locator(".v-shown")).to_have_text("Verdict: defect")

            with page.expect_download() as download:
                page.get_by_role("button", name="Export verdicts").click()
            assert download.value.suggested_filename == "verdicts.csv"
            exported = tmp_path / "verdicts.csv"
            download.value.save_as(exported)
            page.screenshot(path=str(tmp_path / "reviewed.png"), full_page=True)
            context.close()

            # a fresh browser has none; "Import verdicts" brings them back
            fresh, page = open_page(browser, report, requests, problems)
            expect(page.locator("#verdict-count")).to_have_text(
                "0 reviewed: 0 defects, 0 false alarms"
            )
            with page.expect_file_chooser() as chooser:
                page.get_by_role("button", name="Import verdicts").click()
            chooser.value.set_files(str(exported))
            expect(page.locator("#verdict-status")).to_have_text("3 verdicts imported.")
            expect(page.locator("#verdict-count")).to_have_text(
                "3 reviewed: 1 defect, 2 false alarms"
            )
            expect(page.locator(".card").nth(0).locator(".v-note")).to_have_value(HOSTILE_NOTE)
            fresh.close()
        finally:
            browser.close()

    text = exported.read_text(encoding="utf-8")
    records = list(csv.DictReader(io.StringIO(text, newline="")))
    assert text.splitlines()[0] == ",".join(VERDICT_COLUMNS)
    expected = {paths[0]: "false_alarm", paths[1]: "defect", paths[2]: "false_alarm"}
    # in the rows file's order, each path exactly as the rows file has it
    assert [r["path"] for r in records] == [r["path"] for r in rows if r["path"] in expected]
    assert {r["path"]: r["verdict"] for r in records} == expected
    for record in records:
        row = by_path[record["path"]]  # the path exactly as the rows file has it
        assert (record["score"], record["label"]) == (row["score"], row["label"])
        assert datetime.fromisoformat(record["reviewed_at"].replace("Z", "+00:00")).year >= 2024
    assert next(r["note"] for r in records if r["path"] == paths[0]) == HOSTILE_NOTE
    assert f'"{HOSTILE_NOTE.replace(chr(34), chr(34) * 2)}"' in text  # quoted in the CSV
    verdicts = read_verdict_file(exported)  # the schema review apply reads
    assert {v.path: v.verdict for v in verdicts.verdicts} == expected
    assert not problems, problems
    assert all(u.startswith(("file://", "data:", "blob:")) for u in requests), requests
