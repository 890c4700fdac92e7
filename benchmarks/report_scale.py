"""Size and speed of the HTML report at scale (by hand, not a test).

    python benchmarks/report_scale.py                 # 10,000 rows, 200-card gallery
    python benchmarks/report_scale.py --rows 50000 --gallery 500 --browser

Makes a run folder of N rows in a temporary folder (the top ``--gallery`` rows with real
512x512 overlays and inputs, the rest naming them too, one row in ~1000 an error),
builds the report and prints the build time, the thumbnails' share of it and the file
size. With ``--browser``, also the time Debian's chromium (headless, driven by
Playwright; nothing downloaded) takes to load the page and to sort and filter its table.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "sample_data" / "parts" / "local" / "textile_0001.jpg"
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
COLS = [
    "path", "score", "p_value", "label", "map_max", "overlay", "anomalous_pixels", "status",
    "error",
]  # fmt: skip


def make_run(folder: Path, rows: int, images: int) -> Path:
    """``images`` input/overlay pairs and a rows file of ``rows`` rows naming them."""
    with Image.open(SAMPLE) as src:
        base = src.convert("RGB").resize((512, 512))
    for i in range(images):
        tint = Image.new("RGB", base.size, ((i * 37) % 256, (i * 11) % 256, 128))
        Image.blend(base, tint, 0.35).save(folder / f"in{i:04d}.png")
        Image.blend(base, tint, 0.6).save(folder / f"ov{i:04d}.png")
    path = folder / "rows.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLS)
        for i in range(rows):
            if i >= images and i % 997 == 0:
                name = f"parts/line-{i:05d}/image_{i:05d}.jpg"
                writer.writerow([name, "", "", "", "", "", "", "error", "cannot identify image"])
                continue
            score = 0.9 - i * 1e-6 if i < images else 0.1 + (i * 7919 % rows) * 3e-5
            label = "anomalous" if score >= 0.5 else "normal"
            k = i % images
            writer.writerow(
                [
                    f"in{k:04d}.png",
                    f"{score:.6f}",
                    f"{1 - score:.6f}",
                    label,
                    f"{score:.6f}",
                    f"ov{k:04d}.png",
                    i % 5000,
                    "ok",
                    "",
                ]
            )
    return path


FRAME = "new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)))"  # drawn


def browser_times(report: Path) -> dict[str, float]:
    """Seconds to load and draw the page, to draw the table once scrolled to, to sort it
    by score and to filter it by name."""
    from playwright.sync_api import sync_playwright

    times = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        for name, action in [
            ("load", lambda: page.goto(report.as_uri(), wait_until="load")),
            ("table", lambda: page.locator("#rows").scroll_into_view_if_needed()),
            ("sort", lambda: page.click("th[data-col=score] button")),
            ("filter", lambda: page.fill("input#filter-name", "in0001")),
        ]:
            started = time.perf_counter()
            action()
            page.evaluate(FRAME)
            times[name] = time.perf_counter() - started
        browser.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--gallery", type=int, default=200)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--browser", action="store_true")
    args = parser.parse_args()

    from winclip_cli.commands.report import build_report

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows_file = make_run(folder, args.rows, args.gallery)
        os.chdir(folder)
        progress: list[float] = []
        started = time.perf_counter()

        def tick(done: int, total: int) -> None:
            if done == total:
                progress.append(time.perf_counter() - started)

        summary = build_report(
            [rows_file],
            folder / "report.html",
            gallery=args.gallery,
            threshold=0.5,
            workers=args.workers,
            progress=tick,
        )
        seconds = time.perf_counter() - started
        print("| rows | gallery | build s | thumbnails s | MB | cpus |")
        print("|---|---|---|---|---|---|")
        print(
            f"| {summary.rows} | {summary.cards} | {seconds:.2f} | "
            f"{progress[-1] if progress else 0:.2f} | {summary.bytes / 1e6:.2f} | "
            f"{os.cpu_count()} |"
        )
        if args.browser:
            times = browser_times(folder / "report.html")
            shown = ", ".join(f"{k} {v:.2f}" for k, v in times.items())
            print(f"\nchromium headless, seconds: {shown}")


if __name__ == "__main__":
    main()
