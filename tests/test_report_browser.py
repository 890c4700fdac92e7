"""The HTML report in a real browser: Debian's chromium, headless, driven by Playwright.

The report is built from a real `winclip segment` run on sample_data (tiny random model)
with one unreadable image added. The test checks the cards (count and order), the
original-image toggle, keyboard moves, the table's filters and sort, the page without
JavaScript, and that nothing was requested from anywhere but file: and data: URLs. It
saves a screenshot in its temporary folder.

Playwright never downloads a browser here: it launches /usr/bin/chromium. Without
chromium or playwright the test skips, except under CI=true, where it fails (.ci/run
installs chromium, so a skip there would hide a broken page).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from winclip_cli.commands.report import build_report

REPO = Path(__file__).resolve().parent.parent
PARTS = REPO / "sample_data" / "parts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _require_browser() -> None:
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install playwright)")
    if not missing:
        return
    reason = "browser test needs " + " and ".join(missing)
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run it, not skip it")
    pytest.skip(reason)


def _segment(args: list[str], cwd: Path) -> str:
    """`winclip segment ARGS` in ``cwd`` through CliRunner; returns the rows file's text."""
    from winclip_cli.cli import app

    previous = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, ["segment", *args], env={"COLUMNS": "200"})
    finally:
        os.chdir(previous)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 3, result.stderr  # 3: the broken image has an error row
    return (cwd / args[args.index("-o") + 1]).read_text()


def _rows(text: str) -> list[dict[str, str]]:
    records = list(csv.reader(io.StringIO(text, newline="")))
    return [dict(zip(records[0], r, strict=True)) for r in records[1:]]


@pytest.fixture()
def segment_run(tmp_path, tiny, cache_dir) -> tuple[Path, list[dict[str, str]]]:
    """A real segment run on sample_data/parts plus one unreadable file, with a threshold
    at the median score so that both labels occur; rows and overlays in tmp_path."""
    shutil.copytree(PARTS, tmp_path / "parts")
    (tmp_path / "parts" / "broken.png").write_text("not an image\n")
    model = ["--model", tiny["local_dir"], "--workers", "0", "--class", "textile"]
    first = _rows(_segment(["parts", *model, "--out", "out0", "-o", "rows0.csv"], tmp_path))
    scores = sorted(float(r["score"]) for r in first if r["status"] == "ok")
    threshold = scores[len(scores) // 2]
    args = ["parts", *model, "--out", "out", "-o", "rows.csv", "--threshold", f"{threshold:.6f}"]
    rows = _rows(_segment(args, tmp_path))
    labels = {r["label"] for r in rows if r["status"] == "ok"}
    assert labels == {"anomalous", "normal"}, rows
    return tmp_path, rows


def test_report_of_a_segment_run_in_chromium(segment_run, monkeypatch):
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    folder, rows = segment_run
    monkeypatch.chdir(folder)  # rows name files relative to the run's folder
    (folder / "report").mkdir()
    report = folder / "report" / "index.html"
    summary = build_report(
        [folder / "rows.csv"],
        report,
        threshold=float(min(float(r["score"]) for r in rows if r["label"] == "anomalous")),
        run_info={"command": "segment parts", "model": "tiny", "class": "textile"},
    )
    assert summary.rows == len(rows) == 10 and summary.cards == 10
    ok = [r for r in rows if r["status"] == "ok"]
    expected_order = [r["path"] for r in sorted(ok, key=lambda r: -float(r["score"]))]

    requests: list[str] = []
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
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
            page.goto(report.as_uri(), wait_until="load")

            # cards: one per row, highest score first, the error last
            cards = page.locator(".card")
            expect(cards).to_have_count(10)
            values = cards.evaluate_all("cs => cs.map(c => c.dataset.score)")
            assert values[-1] == "" and cards.nth(9).get_attribute("data-status") == "error"
            numbers = [float(v) for v in values[:-1]]
            assert numbers == sorted(numbers, reverse=True)
            assert numbers == sorted((float(r["score"]) for r in ok), reverse=True)
            paths = cards.locator(".path code").all_inner_texts()
            assert paths[:-1] == expected_order and paths[-1] == "parts/broken.png"

            # the toggle shows the original image, and back
            first = cards.first
            overlay, original = first.locator("img.thumb.main"), first.locator("img.thumb.orig")
            expect(overlay).to_be_visible()
            expect(original).to_be_hidden()
            first.locator("button.toggle").click()
            expect(original).to_be_visible()
            expect(overlay).to_be_hidden()
            expect(first.locator("button.toggle")).to_have_attribute("aria-pressed", "true")
            first.locator("button.toggle").click()
            expect(overlay).to_be_visible()
            expect(original).to_be_hidden()
            natural = original.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            assert min(natural) > 0 and max(natural) <= 320  # decoded from its data URI

            # the keyboard moves between cards
            first.focus()
            page.keyboard.press("ArrowRight")
            assert page.evaluate("document.activeElement.dataset.row") == cards.nth(
                1
            ).get_attribute("data-row")
            page.keyboard.press("Home")
            assert page.evaluate("document.activeElement === document.querySelector('.card')")

            # the table: every row; filters by label, status and name hide the others
            visible = page.locator("table#rows tbody tr:visible")
            expect(visible).to_have_count(10)
            anomalous = sum(r["label"] == "anomalous" for r in rows)
            page.select_option("select#filter-label", "anomalous")
            expect(visible).to_have_count(anomalous)
            page.select_option("select#filter-label", "*")
            page.select_option("select#filter-status", "error")
            expect(visible).to_have_count(1)
            expect(visible.first).to_contain_text("parts/broken.png")
            page.select_option("select#filter-status", "*")
            page.fill("input#filter-name", "LOCAL/")
            expect(visible).to_have_count(3)
            assert all("parts/local/" in t for t in visible.all_inner_texts())
            page.fill("input#filter-name", "")
            expect(visible).to_have_count(10)
            expect(page.locator("#shown-count")).to_have_text("10 of 10 rows shown")

            # the sort: highest score first at the start; a click turns it up, then
            # down; the first click on another column sorts it highest first
            column = page.locator("table#rows thead th").all_inner_texts().index("score")

            def score_cells() -> list[str]:
                return page.locator(
                    f"table#rows tbody tr td:nth-child({column + 1})"
                ).all_inner_texts()

            expect(page.locator("th[data-col=score]")).to_have_attribute("aria-sort", "descending")
            first_order = [float(s) for s in score_cells() if s]
            assert first_order == sorted(first_order, reverse=True) and len(first_order) == 9
            page.click("th[data-col=score]")
            expect(page.locator("th[data-col=score]")).to_have_attribute("aria-sort", "ascending")
            up = score_cells()
            assert [float(s) for s in up[:-1]] == sorted(float(s) for s in up[:-1])
            assert up[-1] == ""  # no score: last
            page.click("th[data-col=score] button")
            expect(page.locator("th[data-col=score]")).to_have_attribute("aria-sort", "descending")
            down = [float(s) for s in score_cells() if s]
            assert down == sorted(down, reverse=True)
            page.click("th[data-col=path]")
            expect(page.locator("th[data-col=path]")).to_have_attribute("aria-sort", "descending")
            paths_sorted = page.locator("table#rows tbody tr td:nth-child(2)").all_inner_texts()
            assert paths_sorted == sorted(paths_sorted, key=str.lower, reverse=True)

            # the overlay link points at the full-size file beside the run
            href = first.locator("a.full").get_attribute("href")
            assert href.startswith("../out/") and (report.parent / href).resolve().is_file()

            page.screenshot(path=str(folder / "report.png"), full_page=True)

            # without JavaScript: the same cards, in the same order, pictures shown
            plain = browser.new_context(java_script_enabled=False)
            plain.on("request", lambda request: requests.append(request.url))
            static = plain.new_page()
            static.goto(report.as_uri(), wait_until="load")
            expect(static.locator(".card")).to_have_count(10)
            assert static.locator(".card .path code").all_inner_texts() == paths
            expect(static.locator(".card img.thumb.main").first).to_be_visible()
            expect(static.locator("table#rows tbody tr")).to_have_count(10)
            plain.close()
        finally:
            browser.close()

    assert (folder / "report.png").stat().st_size > 10_000
    assert requests and all(u.startswith(("file://", "data:")) for u in requests), requests
    assert sum(u.startswith("file://") for u in requests) == 2  # the page, twice
    assert not problems, problems


def test_large_table_pages_rows_and_sorts_them_all(tmp_path):
    """1,200 rows: 500 drawn at first, "show more" draws the rest; sort and filter work on
    every row, not only the drawn ones; no request leaves the page."""
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    from winclip_cli.htmlreport import render_report

    rows = [
        {
            "path": f"line{i % 3}/img{i:04d}.png",
            "score": f"{(i * 7919 % 1200) / 1200:.6f}",
            "label": "anomalous" if i % 4 == 0 else "normal",
            "status": "ok",
            "error": "",
        }
        for i in range(1200)
    ]
    report = tmp_path / "big.html"
    report.write_text(render_report(rows, gallery=0), encoding="utf-8")
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report.as_uri(), wait_until="load")
            visible = page.locator("table#rows tbody tr:visible")
            expect(visible).to_have_count(500)
            expect(page.locator("#shown-count")).to_contain_text("first 500 of 1200 matching")
            # sorting takes every row into account: the top score is row 0's neighbour
            page.click("th[data-col=score]")
            page.click("th[data-col=score]")
            expect(page.locator("th[data-col=score]")).to_have_attribute("aria-sort", "descending")
            top = page.locator("table#rows tbody tr:visible td:nth-child(3)").first
            expect(top).to_have_text(max(r["score"] for r in rows))
            page.click("button#more")
            expect(visible).to_have_count(1200)
            expect(page.locator("button#more")).to_be_hidden()
            # a filter counts every matching row and shows the first page of them
            page.select_option("select#filter-label", "anomalous")
            expect(visible).to_have_count(300)
            page.fill("input#filter-name", "line1/")
            expect(visible).to_have_count(100)
            expect(page.locator("#shown-count")).to_have_text("100 of 1200 rows shown")
        finally:
            browser.close()
    assert requests == [report.as_uri()]
