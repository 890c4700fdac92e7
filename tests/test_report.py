"""The HTML report (winclip_cli/report.py): valid HTML, escaping of hostile names, only
decodable images embedded, notes instead of crashes, shards in order, gallery choice and
the size budget at 10,000 rows. The page in a real browser: test_report_browser.py."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import time
from pathlib import Path

import html5lib
import pytest
from PIL import Image

from winclip_cli.commands.report import build_report, read_rows
from winclip_cli.errors import UsageError
from winclip_cli.htmlreport import ReportSummary, render_report

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data" / "parts" / "local" / "textile_0001.jpg"
COLS = ["path", "score", "label", "map_max", "overlay", "status", "error"]
HOSTILE = [
    "<script>alert(1)</script>.png",
    '"><img src=x onerror=alert(1)>.png',
    "' onmouseover='alert(1)'.png",
    "javascript:alert(1).png",
    "a&amp;b <b>bold</b>.png",
]


def page_scripts(tree) -> dict:
    """The page's two scripts (the report's, the verdicts') and the verdict data block,
    which the browser never runs; returns that data."""
    scripts = list(tree.iter("script"))
    code = [s for s in scripts if s.get("type") is None]
    data = [s for s in scripts if s.get("type") == "application/json"]
    assert len(scripts) == 3 and len(code) == 2 and len(data) == 1
    assert "<" not in data[0].text and ">" not in data[0].text and "&" not in data[0].text
    return json.loads(data[0].text)


def write_csv(path: Path, rows: list[dict[str, object]], cols: list[str] = COLS) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(cols)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in cols])
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_png(path: Path, size: tuple[int, int] = (96, 64), tint: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(SAMPLE) as src:
        img = src.convert("RGB").resize(size)
    if tint:
        img = Image.blend(img, Image.new("RGB", size, (tint % 256, 40, 200)), 0.4)
    img.save(path, format="PNG")
    return path


def row(path: str, score: float | None, overlay: str = "", **extra: object) -> dict:
    status = "error" if score is None else "ok"
    values = {
        "path": path,
        "score": "" if score is None else f"{score:.6f}",
        "label": "" if score is None else ("anomalous" if score >= 0.5 else "normal"),
        "map_max": "" if score is None else f"{score:.6f}",
        "overlay": overlay,
        "status": status,
        "error": "cannot decode" if score is None else "",
    }
    values.update(extra)
    return values


def parse_strict(text: str):
    """The document tree; any HTML parse error fails the test."""
    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False)
    tree = parser.parse(text)
    assert not parser.errors, parser.errors[:5]
    return tree


def local(element) -> str:
    """An element's tag without its namespace (SVG elements have one); '' for comments."""
    return element.tag.rsplit("}", 1)[-1] if isinstance(element.tag, str) else ""


def elements(tree, name: str) -> list:
    return [e for e in tree.iter() if local(e) == name]


def cards(tree) -> list:
    return [e for e in tree.iter("article") if "card" in e.get("class", "").split()]


def table_rows(tree) -> list[list[str]]:
    table = next(e for e in tree.iter("table") if e.get("id") == "rows")
    body = table.find("tbody")
    return [["".join(td.itertext()) for td in tr.findall("td")] for tr in body.findall("tr")]


def text_of(tree) -> str:
    return (
        "".join(tree.getroot().itertext()) if hasattr(tree, "getroot") else "".join(tree.itertext())
    )


@pytest.fixture()
def run_dir(tmp_path, monkeypatch) -> Path:
    """A run's folder as the CLI leaves it: inputs, overlays, rows with relative paths."""
    monkeypatch.chdir(tmp_path)
    rows = []
    for i in range(6):
        make_png(tmp_path / "imgs" / f"im{i}.png", tint=30 * i)
        make_png(tmp_path / "out" / f"im{i}.png.png", tint=200 - 30 * i)
        rows.append(row(f"imgs/im{i}.png", 0.1 + 0.15 * i, f"out/im{i}.png.png"))
    rows.append(row("imgs/broken.png", None))
    write_csv(tmp_path / "rows.csv", rows)
    return tmp_path


# ----- the document ----------------------------------------------------------------------


def test_report_is_valid_self_contained_html(run_dir):
    summary = build_report(
        [run_dir / "rows.csv"],
        run_dir / "report.html",
        threshold=0.5,
        calibration_scores=[0.2, 0.25, 0.3, 0.31],
        run_info={"command": "segment imgs", "model": "tiny", "class": "textile"},
        elapsed=12.5,
    )
    assert isinstance(summary, ReportSummary)
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    assert summary.bytes == len(text.encode())
    assert (summary.rows, summary.cards) == (7, 7)
    tree = parse_strict(text)
    # nothing from elsewhere: every src is a data URI, no URL scheme anywhere else
    for element in tree.iter():
        for attribute in ("src", "href", "srcset", "action", "data", "poster"):
            value = element.get(attribute)
            if value is None:
                continue
            if attribute == "src":
                assert value.startswith("data:image/jpeg;base64,"), value[:60]
            else:
                assert "://" not in value and not value.startswith("//"), value
    assert not re.search(r"https?://|url\(|@import|@font-face", text)
    # the page's own scripts only; the header says what was run and what came out
    data = page_scripts(tree)
    assert [r[0] for r in data["rows"]] == [r["path"] for r in read_rows([run_dir / "rows.csv"])[0]]
    words = text_of(tree)
    for expected in ("segment imgs", "textile", "12.5 s", "generated", "errors"):
        assert expected in words
    counts = {
        li.get("data-count"): int(li.find("strong").text)
        for li in tree.iter("li")
        if li.get("data-count")
    }
    assert counts == {"rows": 7, "scored ok": 6, "anomalous": 3, "errors": 1}
    assert "INCOMPLETE" not in text
    # histogram with a threshold line and the calibration beside the run
    (svg,) = elements(tree, "svg")
    assert [e for e in elements(svg, "line") if e.get("class") == "cut"]
    bars = {e.get("class") for e in elements(svg, "rect")}
    assert bars == {"bar-run", "bar-cal"}
    assert "calibration (4)" in words
    # the errors are listed with their messages
    errors = next(e for e in tree.iter("section") if e.get("id") == "errors")
    assert "imgs/broken.png" in text_of(errors) and "cannot decode" in text_of(errors)
    # every img has alt text
    images = list(tree.iter("img"))
    assert images and all(img.get("alt") for img in images)


def test_cards_link_overlays_relative_to_the_report_and_show_the_original(run_dir):
    (run_dir / "site").mkdir()
    build_report([run_dir / "rows.csv"], run_dir / "site" / "report.html")
    tree = parse_strict((run_dir / "site" / "report.html").read_text())
    first = cards(tree)[0]
    assert first.get("data-score") == "0.850000" and first.get("tabindex") == "0"
    link = next(a for a in first.iter("a") if "full" in a.get("class", ""))
    assert link.get("href") == "../out/im5.png.png"
    assert (run_dir / "site" / link.get("href")).resolve() == (run_dir / "out/im5.png.png")
    pictures = {img.get("class"): img for img in first.iter("img")}
    assert set(pictures) == {"thumb main", "thumb orig"}
    button = next(b for b in first.iter("button"))
    assert "toggle" in button.get("class") and button.get("type") == "button"
    # the thumbnails are small JPEGs re-encoded from the files
    for img in pictures.values():
        data = base64.b64decode(img.get("src").split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) <= 320


def test_score_rows_without_overlays_show_the_input_image(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_png(tmp_path / "a.png")
    write_csv(tmp_path / "rows.csv", [row("a.png", 0.4)], ["path", "score", "status", "error"])
    summary = build_report([tmp_path / "rows.csv"], tmp_path / "r.html")
    tree = parse_strict((tmp_path / "r.html").read_text())
    (card,) = cards(tree)
    assert [img.get("class") for img in card.iter("img")] == ["thumb main"]
    assert not list(card.iter("button"))  # nothing to toggle to
    assert summary.notes == []


def test_print_stylesheet_and_keyboard_basics(run_dir):
    text = render_report(read_rows([run_dir / "rows.csv"])[0])
    assert "@media print" in text
    print_css = text.split("@media print", 1)[1]
    assert "color:#000" in print_css and "background:#fff" in print_css
    tree = parse_strict(text)
    assert all(card.get("tabindex") == "0" for card in cards(tree))
    assert all(card.get("aria-label") for card in cards(tree))


def test_incomplete_run_is_marked():
    text = render_report([row("a.png", 0.2)], incomplete=True)
    tree = parse_strict(text)
    banner = [p for p in tree.iter("p") if p.get("role") == "alert"]
    assert banner and "INCOMPLETE (interrupted)" in text_of(banner[0])


# ----- untrusted text ----------------------------------------------------------------------


def test_hostile_names_messages_and_run_info_show_as_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = []
    for i, name in enumerate(HOSTILE):
        make_png(tmp_path / name)
        make_png(tmp_path / f"{name}.overlay.png")
        rows.append(row(name, 0.9 - i / 10, f"{name}.overlay.png", error=""))
    rows.append(row("x\nnew\rline\x01\u202e.png", None, error="<img src=x onerror=alert(2)>"))
    rows.append(row("<svg onload=alert(3)>.png", 0.05, "missing <b>.png"))
    write_csv(tmp_path / "rows.csv", rows)
    hostile_info = {"command": "<script>alert(4)</script>", '"><b>key': "</dd><img src=x>"}
    build_report(
        [tmp_path / "rows.csv"],
        tmp_path / "r.html",
        run_info=hostile_info,
        title="</title><script>alert(5)</script>",
    )
    text = (tmp_path / "r.html").read_text()
    tree = parse_strict(text)
    # no element and no attribute came from the data: the page's scripts, imgs are thumbnails
    data = page_scripts(tree)  # the verdict data holds each path exactly, as JSON text
    assert [r[0] for r in data["rows"]] == [r["path"] for r in rows]
    assert not elements(tree, "b") and len(elements(tree, "svg")) <= 1
    for element in tree.iter():
        assert not any(a.lower().startswith("on") for a in element.attrib), element.attrib
        if element.tag == "img":
            assert element.get("src").startswith("data:image/jpeg;base64,")
    # the names are shown literally, in the cards and the table
    words = text_of(tree)
    for name in HOSTILE:
        assert name in words
        assert any(name in card.get("aria-label") for card in cards(tree))
    assert "<img src=x onerror=alert(2)>" in words
    assert "<script>alert(4)</script>" in words and "</dd><img src=x>" in words
    assert next(tree.iter("title")).text == "</title><script>alert(5)</script>"
    assert "x\\nnew\\rline\\x01\\u202e.png" in words  # controls shown as escapes
    # links are percent-encoded and relative: no scheme, nothing that leaves the folder
    hrefs = [a.get("href") for a in tree.iter("a")]
    assert hrefs and all(":" not in h and not h.startswith("/") for h in hrefs), hrefs
    assert "javascript%3Aalert%281%29.png.overlay.png" in hrefs
    for href in hrefs:
        from urllib.parse import unquote

        assert (tmp_path / unquote(href)).is_file()


def test_rows_can_embed_only_files_that_decode_as_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.png").write_text("password=hunter2\n")
    (tmp_path / "notes.txt").write_text("top secret text\n")
    svg = '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    (tmp_path / "vector.svg").write_text(svg)
    eps = "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    (tmp_path / "doc.eps").write_text(eps)
    os.mkfifo(tmp_path / "pipe.png")  # opening it would block: never opened
    (tmp_path / "folder.png").mkdir()
    rows = [
        row("notes.txt", 0.9, "/etc/passwd"),
        row("/etc/passwd", 0.8, "secret.png"),
        row("vector.svg", 0.7, "doc.eps"),
        row("pipe.png", 0.6, "folder.png"),
        row("/dev/zero", 0.5, "/dev/urandom"),
    ]
    write_csv(tmp_path / "rows.csv", rows)
    started = time.perf_counter()
    summary = build_report([tmp_path / "rows.csv"], tmp_path / "r.html")
    assert time.perf_counter() - started < 30
    text = (tmp_path / "r.html").read_text()
    tree = parse_strict(text)
    assert "data:image" not in text and not list(tree.iter("img"))
    for secret in ("hunter2", "top secret", "root:x:0", "%!PS", "alert(1)"):
        assert secret not in text
    assert summary.cards == 5
    assert sum("not an image" in n for n in summary.notes) >= 4, summary.notes
    assert sum("missing" in n for n in summary.notes) >= 2, summary.notes


def test_missing_overlay_and_unparsable_lines_become_notes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_png(tmp_path / "a.png")
    good = row("a.png", 0.7, "out/gone.png.png")
    csv_rows = write_csv(tmp_path / "rows.csv", [good, row("a.png", 0.2)])
    with csv_rows.open("a") as handle:
        handle.write("only,three,fields\n")  # a torn row
        handle.write('"unterminated,quote\n')
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(json.dumps(good) + "\nthis is not json\n[1, 2]\n" + json.dumps(good) + "\n")
    summary = build_report([csv_rows, jsonl], tmp_path / "r.html")
    assert summary.rows == 4
    notes = " | ".join(summary.notes)
    assert "line 4 has 3 fields" in notes
    assert "rows.jsonl: line 2 is not JSON" in notes
    assert "rows.jsonl: line 3 is not a JSON object" in notes
    assert "overlay not embedded (missing): out/gone.png.png" in notes
    tree = parse_strict((tmp_path / "r.html").read_text())
    listed = next(e for e in tree.iter("section") if e.get("id") == "notes")
    assert "line 2 is not JSON" in text_of(listed)
    assert "overlay not embedded (missing)" in text_of(cards(tree)[0])


def test_empty_rows_file_says_no_rows(tmp_path):
    (tmp_path / "rows.csv").write_bytes(b"")
    summary = build_report([tmp_path / "rows.csv"], tmp_path / "r.html")
    assert (summary.rows, summary.cards) == (0, 0)
    assert any("empty file" in n for n in summary.notes)
    tree = parse_strict((tmp_path / "r.html").read_text())
    assert "no rows" in text_of(tree).lower()
    assert not cards(tree)
    # a header alone, and a file that is neither format
    write_csv(tmp_path / "header.csv", [])
    (tmp_path / "junk.bin").write_bytes(b"\x00\xff\xfe junk \x89PNG")
    rows, notes = read_rows([tmp_path / "header.csv", tmp_path / "junk.bin", tmp_path / "nope"])
    assert rows == []
    assert len(notes) == 3 and "cannot be read" in notes[2]


def test_report_never_replaces_its_rows_file(run_dir):
    before = (run_dir / "rows.csv").read_bytes()
    with pytest.raises(UsageError, match="would overwrite an input: the rows file"):
        build_report([run_dir / "rows.csv"], run_dir / "rows.csv")
    assert (run_dir / "rows.csv").read_bytes() == before


# ----- shards, gallery, progress -----------------------------------------------------------


def test_shards_merge_in_the_given_order(tmp_path):
    first = [row(f"a{i}.png", 0.1 * i) for i in range(3)]
    second = [row(f"b{i}.png", 0.9 - 0.1 * i) for i in range(2)]
    write_csv(tmp_path / "1.csv", first)
    write_csv(tmp_path / "2.csv", second)
    rows, notes = read_rows([tmp_path / "2.csv", tmp_path / "1.csv"])
    assert notes == []
    assert [r["path"] for r in rows] == ["b0.png", "b1.png", "a0.png", "a1.png", "a2.png"]
    # CSV + JSON lines, the JSON with a column the CSV lacks (read by name, kept)
    extra = [{**row("c0.png", 0.33), "p_value": 0.012, "anomalous_pixels": 17}]
    write_jsonl(tmp_path / "3.jsonl", extra)
    rows, notes = read_rows([tmp_path / "1.csv", tmp_path / "3.jsonl", tmp_path / "2.csv"])
    assert notes == []
    assert [r["path"] for r in rows] == ["a0.png", "a1.png", "a2.png", "c0.png", "b0.png", "b1.png"]
    assert rows[3]["p_value"] == "0.012" and rows[3]["anomalous_pixels"] == "17"
    tree = parse_strict(render_report(rows))
    table = table_rows(tree)
    # The table starts highest score first; its "#" column keeps the files' order.
    assert [float(r[2]) for r in table] == sorted((float(r[2]) for r in table), reverse=True)
    in_file_order = sorted(table, key=lambda r: int(r[0]))
    assert [r[1] for r in in_file_order] == [r["path"] for r in rows]
    heads = [th.get("data-col") for th in next(tree.iter("thead")).iter("th")]
    assert heads[:4] == ["#", "path", "score", "p_value"] and "anomalous_pixels" in heads
    # the same shards concatenated by hand (headers kept in the middle) read the same
    joined = tmp_path / "joined.csv"
    joined.write_text((tmp_path / "1.csv").read_text() + (tmp_path / "2.csv").read_text())
    assert read_rows([joined])[0] == read_rows([tmp_path / "1.csv", tmp_path / "2.csv"])[0]


def test_gallery_takes_the_highest_scores_then_errors(tmp_path):
    scores = [0.31, 0.77, 0.05, 0.5, 0.77, 0.12, 0.9, 0.4, 0.66, 0.2]
    rows = [row(f"s{i}.png", s) for i, s in enumerate(scores)]
    rows.insert(3, row("e0.png", None))
    rows.append(row("e1.png", None))
    rows.append(row("e2.png", None, error="disk <full>"))
    tree = parse_strict(render_report(rows, gallery=4))
    shown = cards(tree)
    assert [c.get("data-score") for c in shown] == ["0.900000", "0.770000", "0.770000", "0.660000"]
    # ties keep input order; every error is still listed with its message
    assert "s1.png" in text_of(shown[1]) and "s4.png" in text_of(shown[2])
    errors = next(e for e in tree.iter("section") if e.get("id") == "errors")
    assert [text_of(li).split(":")[0] for li in errors.iter("li")] == ["row 4", "row 12", "row 13"]
    assert "disk <full>" in text_of(errors)
    assert len(table_rows(tree)) == 13  # the table lists every row
    # room for all: scores descending, then the errors in input order
    shown = cards(parse_strict(render_report(rows, gallery=200)))
    assert len(shown) == 13
    values = [float(c.get("data-score")) for c in shown[:10]]
    assert values == sorted(scores, reverse=True)
    assert [c.get("data-status") for c in shown[10:]] == ["error"] * 3
    assert [c.get("data-score") for c in shown[10:]] == [""] * 3
    assert not cards(parse_strict(render_report(rows, gallery=0)))


def test_thumbnails_report_progress(run_dir):
    calls = []
    build_report(
        [run_dir / "rows.csv"],
        run_dir / "r.html",
        workers=3,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls[0] == (0, 12) and calls[-1] == (12, 12)
    assert [d for d, _ in calls] == list(range(13))


def test_ten_thousand_rows_stay_within_budget(tmp_path, monkeypatch):
    """10,000 rows, 200 of them with real overlays and inputs: under 25 MB."""
    monkeypatch.chdir(tmp_path)
    with Image.open(SAMPLE) as src:
        base = src.convert("RGB").resize((400, 300))
    for i in range(200):  # small real images, quick to write: the budget is the report's
        tint = Image.new("RGB", base.size, ((i * 37) % 256, (i * 11) % 256, 128))
        Image.blend(base, tint, 0.35).save(tmp_path / f"in{i:03d}.png", compress_level=1)
        Image.blend(base, tint, 0.6).save(tmp_path / f"ov{i:03d}.png", compress_level=1)
    rows = []
    for i in range(10_000):
        score = 0.9 - i * 1e-5 if i < 200 else 0.1 + (i * 7919 % 10_000) * 3e-5
        if i % 997 == 0 and i >= 200:
            rows.append(row(f"parts/line-{i:05d}/image_{i:05d}.jpg", None))
            continue
        extra = {"p_value": f"{1 - score:.6f}", "anomalous_pixels": str(i % 5000)}
        rows.append(row(f"in{i % 200:03d}.png", score, f"ov{i % 200:03d}.png", **extra))
    cols = [*COLS[:2], "p_value", *COLS[2:5], "anomalous_pixels", *COLS[5:]]
    write_csv(tmp_path / "rows.csv", rows, cols)
    started = time.perf_counter()
    summary = build_report([tmp_path / "rows.csv"], tmp_path / "r.html", threshold=0.5)
    seconds = time.perf_counter() - started
    megabytes = summary.bytes / 1e6
    print(f"\n10,000 rows: {seconds:.2f} s, {megabytes:.2f} MB")
    assert summary.rows == 10_000 and summary.cards == 200
    assert summary.bytes == (tmp_path / "r.html").stat().st_size
    assert summary.bytes < 25_000_000
    assert [n for n in summary.notes] == []
    text = (tmp_path / "r.html").read_text()
    assert text.count("data:image/jpeg") == 400
    assert text.count("<tr><td>") == 10_000  # every row in the table, no images there


def test_a_runs_own_rows_may_hold_numbers_and_none():
    rows = [
        {"path": "a.png", "score": 0.123456789, "map_max": None, "status": "ok", "error": ""},
        {"path": "b.png", "score": None, "status": "error", "error": "unreadable"},
    ]
    tree = parse_strict(render_report(rows))
    assert table_rows(tree)[0][1:4] == ["a.png", "0.123457", ""]
    assert [c.get("data-score") for c in cards(tree)] == ["0.123457", ""]


def test_paths_resolve_from_the_rows_files_folder_and_odd_bytes_show(tmp_path, monkeypatch):
    """Rows written in another folder still find their files; a name that is not UTF-8
    shows its bytes as escapes and links to the file by its bytes."""
    run = tmp_path / "run"
    make_png(run / "in.png")
    odd = os.fsdecode(b"odd-\xff\xfe.png")
    make_png(run / odd)
    rows_file = run / "rows.csv"
    rows_file.write_bytes(
        b"path,score,overlay,status,error\nin.png,0.5," + os.fsencode(odd) + b",ok,\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    summary = build_report([rows_file], tmp_path / "r.html")
    assert summary.notes == []
    tree = parse_strict((tmp_path / "r.html").read_text(encoding="utf-8"))
    (card,) = cards(tree)
    assert len(list(card.iter("img"))) == 2
    assert next(a for a in card.iter("a")).get("href") == "run/odd-%FF%FE.png"
    assert "odd-\\xff\\xfe.png" in text_of(tree)
