"""A run as one self-contained HTML file: header, score histogram, gallery, table.

``build_report(rows_files, output)`` reads rows files (CSV with a header, or JSON lines;
several shards, concatenated in the given order) and writes one HTML file that opens
offline: no URL of any kind is fetched, thumbnails are embedded as data URIs, and the
page is readable without JavaScript (the cards are plain HTML sorted by score; the
script only adds the table's sort and filters and the original-image toggle).

Everything that comes from a rows file (names, messages, values) is untrusted: it is
escaped wherever it lands, links are percent-encoded, and a file is embedded only when
Pillow decodes it as a raster image (re-encoded as a small JPEG, never copied).
Problems (an unparsable line, a missing overlay) become notes in the page, never
exceptions. Depends on Pillow, numpy and the standard library only.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageOps

from .atomic import atomic_write
from .errors import UsageError
from .report_verdicts import VERDICT_CSS, VERDICT_SCRIPT, verdict_data

__all__ = ["ReportSummary", "build_report", "read_rows", "render_report"]

THUMB_SIDE = 320  # longest side of an embedded thumbnail, pixels
THUMB_QUALITY = 80  # JPEG quality of thumbnails
DEFAULT_GALLERY = 200
MAX_NOTES_SHOWN = 500  # more notes than this are counted, not listed
# Raster formats a thumbnail may come from. No EPS/PDF (Ghostscript), no plug-in guessing.
SAFE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "PPM", "TGA")
# Decoding stops above this many pixels: a header can claim any size (decompression bomb).
MAX_PIXELS = 2**28
NEUTRAL_BACKGROUND = (128, 128, 128)  # transparent pixels, as the run shows them
NUMERIC_HINT = ("score", "p_value", "map_max", "anomalous_pixels")
# Columns shown first in the table, in this order; any other column follows as found.
PREFERRED = ("path", "score", "p_value", "label", "map_max", "anomalous_pixels", "overlay")


@dataclass
class ReportSummary:
    """What a report holds: row count, gallery cards, notes, and the file's size."""

    rows: int
    cards: int
    notes: list[str] = field(default_factory=list)
    bytes: int = 0


# ----- reading rows --------------------------------------------------------------------


def _cell(value: object) -> str:
    """A JSON value as the string a CSV cell would hold."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def _as_text(row: dict) -> dict[str, str]:
    """A row as strings; a run's own rows may hold numbers (printed as in the CSV) or None."""
    if all(isinstance(v, str) for v in row.values()):
        return row
    return {str(k): f"{v:.6f}" if isinstance(v, float) else _cell(v) for k, v in row.items()}


def _parse_jsonl(text: str, name: str, notes: list[str]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            notes.append(f"{name}: line {number} is not JSON, skipped")
            continue
        if not isinstance(record, dict):
            notes.append(f"{name}: line {number} is not a JSON object, skipped")
            continue
        rows.append({str(k): _cell(v) for k, v in record.items()})
    return rows


def _parse_csv(text: str, name: str, notes: list[str]) -> list[dict[str, str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        notes.append(f"{name}: no CSV header, skipped")
        return []
    rows: list[dict[str, str]] = []
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            notes.append(f"{name}: line {reader.line_num}: {exc}, skipped")
            continue
        if not record or record == header:  # a blank line, or a shard's header repeated
            continue
        if len(record) != len(header):
            notes.append(
                f"{name}: line {reader.line_num} has {len(record)} fields, "
                f"the header {len(header)}: skipped"
            )
            continue
        rows.append(dict(zip(header, record, strict=True)))
    return rows


def _read_one(path: Path, notes: list[str]) -> list[dict[str, str]]:
    name = str(path)
    try:
        raw = path.read_bytes()
    except (OSError, ValueError) as exc:
        notes.append(f"{name}: cannot be read ({exc.__class__.__name__}: {exc})")
        return []
    text = raw.decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        notes.append(f"{name}: empty file, no rows")
        return []
    first = next(line for line in text.split("\n") if line.strip()).lstrip()
    if first.startswith("{"):
        rows = _parse_jsonl(text, name, notes)
    else:
        try:
            header = next(csv.reader([first]))
        except csv.Error:
            header = []
        if "path" not in header:
            notes.append(f"{name}: neither CSV with a 'path' column nor JSON lines, skipped")
            return []
        rows = _parse_csv(text, name, notes)
    if not rows:
        notes.append(f"{name}: no rows")
    return rows


def read_rows(paths: Sequence[Path]) -> tuple[list[dict[str, str]], list[str]]:
    """Rows of several rows files, concatenated in the given order, and notes about
    anything that could not be read. Each file is CSV with a header or JSON lines
    (detected per file); a bad line or file becomes a note, never an exception."""
    rows: list[dict[str, str]] = []
    notes: list[str] = []
    for path in paths:
        rows.extend(_read_one(Path(path), notes))
    return rows, notes


# ----- text and numbers ------------------------------------------------------------------

# Characters HTML does not allow in text (C0/C1 controls, lone surrogates left by names
# that are not UTF-8, noncharacters), and bidirectional controls that would make a name
# read as another: shown as escapes, so the page stays valid and names honest.
_BAD_CHARS = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
    "\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]"
)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _clean(value: object) -> str:
    text = str(value)
    if text.isprintable():  # the common case: nothing to replace
        return text
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return _BAD_CHARS.sub(_escape_char, text)


def _t(value: object) -> str:
    """Escaped text, for an element's content or a quoted attribute."""
    return html.escape(_clean(value), quote=True)


def _number(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _score_text(value: str | None) -> str:
    number = _number(value)
    return "" if number is None else f"{number:.6f}"


def _short(number: float) -> str:
    return f"{number:.4g}"


# ----- files and thumbnails --------------------------------------------------------------


def _resolve(name: str, search_dirs: Sequence[Path]) -> str | None:
    """The regular file a row names: as given (relative to the current folder), else
    relative to each of ``search_dirs`` (the rows files' folders)."""
    if not name:
        return None
    candidates = [name]
    if not os.path.isabs(name):
        candidates += [os.path.join(d, name) for d in search_dirs]
    for candidate in candidates:
        try:
            if stat.S_ISREG(os.stat(candidate).st_mode):  # no FIFOs, devices, folders
                return candidate
        except (OSError, ValueError):
            continue
    return None


def _href(target: str, base: str) -> str:
    """A percent-encoded link to ``target``: relative to ``base`` when possible."""
    absolute = os.path.abspath(target)
    try:
        relative = os.path.relpath(absolute, base).replace(os.sep, "/")
    except ValueError:  # another drive (Windows)
        absolute = absolute.replace(os.sep, "/")
        return "file://" + quote(
            absolute if absolute.startswith("/") else "/" + absolute,
            safe="/",
            errors="surrogateescape",
        )
    return quote(relative, safe="/", errors="surrogateescape")


def _rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        values = np.asarray(img, dtype=np.float64)
        values = np.nan_to_num(values)
        low, high = float(values.min(initial=0)), float(values.max(initial=0))
        scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
        img = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("P", "L", "1", "RGB") and "transparency" in img.info:
        try:
            img = img.convert("RGBA")
        except (ValueError, TypeError):
            img = img.copy()
            img.info.pop("transparency", None)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*NEUTRAL_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


@dataclass
class _Thumb:
    uri: str = ""
    width: int = 0
    height: int = 0
    problem: str = ""  # why there is no thumbnail


def _thumbnail(path: str) -> _Thumb:
    """A small JPEG data URI of an image file, or why there is none."""
    try:
        with Image.open(path, formats=SAFE_FORMATS) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                return _Thumb(problem=f"too large: {width}x{height}")
            img.draft("RGB", (THUMB_SIDE * 2, THUMB_SIDE * 2))  # JPEG: decode at 1/2..1/8
            img.load()
            picture = _rgb(ImageOps.exif_transpose(img))
        picture.thumbnail((THUMB_SIDE, THUMB_SIDE))  # bicubic, reducing first when large
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=THUMB_QUALITY)
    except Exception as exc:  # any decoder failure: not an image we embed
        message = str(exc).split("\n", 1)[0][:200]
        return _Thumb(problem=f"not an image ({exc.__class__.__name__}: {message})")
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return _Thumb(uri, picture.width, picture.height)


def _make_thumbnails(
    files: list[str],
    workers: int | None,
    progress: Callable[[int, int], None] | None,
) -> dict[str, _Thumb]:
    """Thumbnails of ``files`` (distinct paths), made in parallel; Pillow releases the
    GIL while decoding and encoding, so threads use several cores."""
    total = len(files)
    if progress is not None:
        progress(0, total)
    if not files:
        return {}
    count = workers if workers and workers > 0 else min(8, os.cpu_count() or 1)
    results: dict[str, _Thumb] = {}
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = {pool.submit(_thumbnail, f): f for f in files}
        for done, future in enumerate(as_completed(futures), 1):
            results[futures[future]] = future.result()
            if progress is not None:
                progress(done, total)
    return results


# ----- pieces of the page ------------------------------------------------------------------


def _histogram(
    scores: list[float], calibration: list[float] | None, threshold: float | None
) -> str:
    """Inline SVG: the run's score distribution, the calibration's beside it, the cut."""
    calibration = [c for c in (calibration or []) if math.isfinite(c)]
    if not scores and not calibration:
        return '<p class="empty">No scores to plot.</p>'
    every = scores + calibration + ([threshold] if threshold is not None else [])
    low, high = min(every), max(every)
    if high - low < 1e-6:
        low, high = low - 0.005, high + 0.005
    pad = (high - low) * 0.02
    low, high = low - pad, high + pad
    bins = int(min(40, max(10, math.sqrt(max(len(scores), len(calibration))) * 2)))
    edges = np.linspace(low, high, bins + 1)
    width, height, left, bottom, top, right = 640, 250, 48, 36, 24, 12
    plot_w, plot_h = width - left - right, height - top - bottom
    series = [("run", scores, "bar-run")]
    if calibration:
        series.append(("calibration", calibration, "bar-cal"))
    shares = []
    for _name, values, _cls in series:
        counts = np.histogram(values, bins=edges)[0] if values else np.zeros(bins)
        total = max(len(values), 1)
        shares.append(counts / total if calibration else counts.astype(float))
    peak = max(float(s.max()) for s in shares) or 1.0
    slot = plot_w / bins
    parts = [
        f'<svg class="hist" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="hist-title">',
        '<title id="hist-title">Histogram of image scores'
        + (", with the calibration scores" if calibration else "")
        + (f", threshold {threshold:.6f}" if threshold is not None else "")
        + "</title>",
    ]
    for index, ((name, _values, cls), share) in enumerate(zip(series, shares, strict=True)):
        bar_w = slot / len(series)
        for b in range(bins):
            if share[b] <= 0:
                continue
            h = share[b] / peak * plot_h
            x = left + b * slot + index * bar_w
            value = f"{share[b]:.1%}" if calibration else f"{int(share[b])}"
            parts.append(
                f'<rect class="{cls}" x="{x:.1f}" y="{top + plot_h - h:.1f}" '
                f'width="{max(bar_w - 1, 0.5):.1f}" height="{h:.1f}">'
                f"<title>{name}: {value} in {edges[b]:.4f}..{edges[b + 1]:.4f}</title></rect>"
            )
    axis_y = top + plot_h
    parts.append(
        f'<line class="axis" x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}"/>'
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}"/>'
    )
    for fraction in (0, 0.25, 0.5, 0.75, 1):
        x = left + fraction * plot_w
        tick = low + fraction * (high - low)
        parts.append(
            f'<line class="axis" x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}"/>'
            f'<text x="{x:.1f}" y="{axis_y + 16}" text-anchor="middle">{_short(tick)}</text>'
        )
    peak_text = f"{peak:.0%}" if calibration else f"{int(peak)}"
    parts.append(
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{peak_text}</text>'
        f'<text x="{left - 4}" y="{axis_y}" text-anchor="end">0</text>'
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">score'
        + (" (bars: share of each set)" if calibration else " (bars: images)")
        + "</text>"
    )
    if threshold is not None:
        x = left + (threshold - low) / (high - low) * plot_w
        right_side = x < left + plot_w * 0.7  # the label beside the line, inside the plot
        parts.append(
            f'<line class="cut" x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{axis_y}"/>'
            f'<text class="cut-label" x="{x + (3 if right_side else -3):.1f}" y="{top - 10}" '
            f'text-anchor="{"start" if right_side else "end"}">'
            f"threshold {threshold:.6f}</text>"
        )
    parts.append("</svg>")
    legend = ['<ul class="legend">', f'<li><span class="key bar-run"></span>run ({len(scores)})']
    if calibration:
        legend.append(f'<li><span class="key bar-cal"></span>calibration ({len(calibration)})')
    if threshold is not None:
        legend.append('<li><span class="key cut"></span>threshold')
    legend.append("</ul>")
    return "".join(parts) + "".join(legend)


def _card(
    rank: int,
    row: dict[str, str],
    number: int,
    main: tuple[str | None, _Thumb | None, str],
    original: tuple[str | None, _Thumb | None] | None,
    base: str,
    notes: list[str],
) -> str:
    path = row.get("path", "")
    status = row.get("status", "")
    label = row.get("label", "")
    score = _score_text(row.get("score"))
    main_file, main_thumb, kind = main
    card_notes: list[str] = []
    pictures = []
    shown = _clean(path) or "(no path)"
    if main_thumb is not None and main_thumb.uri:
        pictures.append(
            f'<img class="thumb main" src="{main_thumb.uri}" width="{main_thumb.width}" '
            f'height="{main_thumb.height}" alt="{_t(kind)} of {_t(shown)}">'
        )
    else:
        source = row.get("overlay") if kind == "overlay" else path
        why = main_thumb.problem if main_thumb is not None else "missing"
        if status != "error":  # an error row's own message says why its image is not shown
            card_notes.append(f"{kind} not embedded ({why}): {_clean(source or '(none)')}")
        pictures.append(f'<div class="thumb main nothumb">no {_t(kind)}</div>')
    has_original = False
    if original is not None:
        _original_file, original_thumb = original
        if original_thumb is not None and original_thumb.uri:
            has_original = True
            pictures.append(
                f'<img class="thumb orig" src="{original_thumb.uri}" '
                f'width="{original_thumb.width}" height="{original_thumb.height}" '
                f'alt="original image {_t(shown)}">'
            )
        else:
            why = original_thumb.problem if original_thumb is not None else "missing"
            card_notes.append(f"input image not embedded ({why}): {_clean(path or '(none)')}")
    for note in card_notes:
        notes.append(f"row {number}: {note}")
    fields = [("score", score or "—")]
    for key in ("p_value", "label", "map_max", "anomalous_pixels"):
        if key in row:
            fields.append((key.replace("_", " "), row[key] or "—"))
    fields.append(("status", status or "—"))
    listing = "".join(f"<dt>{_t(k)}<dd>{_t(v)}" for k, v in fields)
    toggle = (
        '<button type="button" class="toggle" aria-pressed="false">Show original</button>'
        if has_original
        else ""
    )
    link = ""
    if main_file is not None:
        link = f'<a class="full" href="{_href(main_file, base)}">full-size {_t(kind)}</a>'
    error = row.get("error", "")
    extra = f'<p class="error">{_t(error)}</p>' if error else ""
    extra += "".join(f'<p class="note">{_t(n)}</p>' for n in card_notes)
    css = "card error-card" if status == "error" else "card"
    if label == "anomalous":
        css += " anomalous"
    return (
        f'<article class="{css}" tabindex="0" data-score="{score}" data-label="{_t(label)}" '
        f'data-status="{_t(status)}" data-row="{number}" '
        f'aria-label="#{rank}: score {score or "none"}, {_t(label or status)}, {_t(shown)}">'
        f'<div class="pics">{"".join(pictures)}</div>{toggle}'
        f'<p class="path">#{rank} <code>{_t(shown)}</code></p><dl>{listing}</dl>'
        f"{link}{extra}</article>"
    )


def _table(
    rows: list[dict[str, str]], columns: list[str], base: str, search_dirs: Sequence[Path]
) -> str:
    numeric = {"#"}
    for column in columns:
        values = [r.get(column, "") for r in rows]
        present = [v for v in values if v.strip()]
        if present and (
            column in NUMERIC_HINT or all(_number(v) is not None for v in present[:200])
        ):
            numeric.add(column)

    def th(column: str) -> str:
        kind = "num" if column in numeric else "text"
        css = ' class="num"' if kind == "num" and column != "#" else ""
        return (
            f'<th scope="col" data-col="{_t(column)}" data-type="{kind}"{css} aria-sort="none">'
            f'<button type="button">{_t(column)}</button></th>'
        )

    head = "".join(th(c) for c in ["#", *columns])
    body = []
    links = {"overlay"}  # one link a row: the table stays light for 10,000 rows
    hrefs: dict[str, str | None] = {}  # a file named by many rows is looked up once
    for number, row in enumerate(rows, 1):
        cells = [f"<td>{number}"]
        for column in columns:
            value = row.get(column, "")
            if column == "score":
                value = _score_text(value) or value
            if column in links and value:
                if value not in hrefs:
                    target = _resolve(value, search_dirs)
                    hrefs[value] = _href(target, base) if target is not None else None
                if hrefs[value] is not None:
                    cells.append(f'<td><a href="{hrefs[value]}">{_t(value)}</a>')
                    continue
            cells.append(f"<td>{_t(value)}")
        body.append(f"<tr>{''.join(cells)}\n")
    return f'<table id="rows"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _select(id_: str, label: str, values: Iterable[str]) -> str:
    options = ['<option value="*">all</option>']
    for value in sorted(set(values)):
        options.append(f'<option value="{_t(value)}">{_t(value) or "(empty)"}</option>')
    return (
        f'<label for="{id_}">{label}</label>'
        f'<select id="{id_}" data-col="{label}">{"".join(options)}</select>'
    )


CSS = """
:root{--fg:#1a1a1a;--muted:#4d4d4d;--bg:#fff;--line:#c8c8c8;--accent:#1f4e8c;--bad:#a3141b}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg);margin:0 auto;padding:1rem 1.5rem;max-width:1600px}
h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.15rem;margin:1.6rem 0 .5rem;
border-bottom:1px solid var(--line)}
.banner{background:#fff3cd;color:#5c4000;border:2px solid #a86b00;padding:.6rem 1rem;
font-weight:700;font-size:1.1rem}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:.1rem 1rem;margin:.5rem 0}
.meta dt{color:var(--muted)}.meta dd{margin:0;word-break:break-all}
.counts{display:flex;flex-wrap:wrap;gap:.5rem;list-style:none;padding:0}
.counts li{border:1px solid var(--line);padding:.3rem .7rem;border-radius:4px}
.counts b{font-size:1.1rem}
.hist{width:100%;max-width:760px;height:auto;display:block}
.hist text{font-size:11px;fill:var(--fg)}
.axis{stroke:var(--fg);stroke-width:1}
.bar-run{fill:#2b6cb0}.bar-cal{fill:#d97706}
.cut{stroke:var(--bad);stroke-width:2;stroke-dasharray:5 3}.cut-label{fill:var(--bad)}
.legend{list-style:none;display:flex;gap:1rem;padding:0}
.key{display:inline-block;width:1em;height:1em;vertical-align:-.15em;margin-right:.3em}
.key.bar-run{background:#2b6cb0}.key.bar-cal{background:#d97706}
.key.cut{border-left:3px dashed var(--bad);width:.5em}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:.8rem}
.card{border:1px solid var(--line);border-radius:6px;padding:.5rem;background:#fafafa}
.card:focus{outline:3px solid var(--accent);outline-offset:2px}
.card.anomalous{border-color:var(--bad);border-width:2px}
.card.error-card{background:#fdf0f0}
.pics{position:relative}
.thumb{display:block;width:100%;height:auto;max-height:320px;object-fit:contain;
background:#eee}
.nothumb{height:120px;display:flex;align-items:center;justify-content:center;
color:var(--muted)}
.thumb.orig{display:none}
.card.show-original .thumb.orig{display:block}.card.show-original .thumb.main{display:none}
html:not(.js) .pics:hover .thumb.orig,html:not(.js) .toggle:focus+.pics .thumb.orig{display:block}
html:not(.js) .pics:hover .thumb.main:not(.nothumb){display:none}
.toggle{margin:.3rem 0;font:inherit;padding:.15rem .6rem;cursor:pointer}
.path{margin:.3rem 0;word-break:break-all}
.card dl{display:grid;grid-template-columns:max-content 1fr;gap:0 .6rem;margin:.2rem 0}
.card dt{color:var(--muted)}.card dd{margin:0;font-variant-numeric:tabular-nums}
.error{color:var(--bad);word-break:break-word}.note{color:#6b4e00;font-size:.9em}
.errors li{margin:.2rem 0;word-break:break-all}
.controls{display:none;flex-wrap:wrap;gap:.5rem 1rem;align-items:center;margin:.5rem 0}
.js .controls{display:flex}
#rows{border-collapse:collapse;width:100%;table-layout:fixed;font-variant-numeric:tabular-nums}
#rows th.num{width:6.5em}#rows th[data-col="#"]{width:4em}
#rows th[data-col=label],#rows th[data-col=status]{width:6.5em}
#rows th,#rows td{border-bottom:1px solid var(--line);padding:.15rem .4rem;text-align:left;
vertical-align:top;word-break:break-all}
#rows th{position:sticky;top:0;background:#eef2f7}
#rows th button{font:inherit;font-weight:700;background:none;border:0;padding:0;
cursor:pointer;color:var(--fg)}
#rows th[aria-sort=ascending] button::after{content:" \\25B2"}
#rows th[aria-sort=descending] button::after{content:" \\25BC"}
.lazy{content-visibility:auto;contain-intrinsic-size:auto 2000px}
a{color:var(--accent)}
.empty{color:var(--muted);font-style:italic}
@media print{
:root{--fg:#000;--muted:#222;--bg:#fff;--line:#555;--accent:#000;--bad:#000}
body{padding:0;max-width:none;color:#000;background:#fff}
.controls,.toggle{display:none!important}
.card{break-inside:avoid;background:#fff;border-color:#000}
.card.error-card{background:#fff}
.banner{background:#fff;color:#000;border-color:#000}
#rows th{position:static;background:#fff}
.bar-run,.key.bar-run{fill:#333;background:#333}.bar-cal,.key.bar-cal{fill:#999;background:#999}
a{color:#000;text-decoration:underline}
}
"""

SCRIPT = r"""
(function(){
document.documentElement.classList.add('js');
document.addEventListener('click',function(e){
  var b=e.target.closest('button.toggle');if(!b)return;
  var c=b.closest('.card');var on=c.classList.toggle('show-original');
  b.setAttribute('aria-pressed',on?'true':'false');
  b.textContent=on?'Show overlay':'Show original';
});
var cards=Array.prototype.slice.call(document.querySelectorAll('.card'));
document.addEventListener('keydown',function(e){
  var c=e.target;if(!c.classList||!c.classList.contains('card'))return;
  var i=cards.indexOf(c),j=-1;
  if(e.key==='ArrowRight'||e.key==='ArrowDown')j=i+1;
  else if(e.key==='ArrowLeft'||e.key==='ArrowUp')j=i-1;
  else if(e.key==='Home')j=0;else if(e.key==='End')j=cards.length-1;
  else if(e.key==='o'){var t=c.querySelector('button.toggle');if(t)t.click();return;}
  else return;
  if(j>=0&&j<cards.length){e.preventDefault();cards[j].focus();}
});
var table=document.getElementById('rows');if(!table)return;
var body=table.tBodies[0],heads=Array.prototype.slice.call(table.tHead.rows[0].cells);
var rows=Array.prototype.slice.call(body.rows);
function col(name){
  for(var i=0;i<heads.length;i++)if(heads[i].dataset.col===name)return i;
  return -1;
}
var nameCol=col('path'),shown=document.getElementById('shown-count');
var more=document.getElementById('more'),PAGE=500,limit=PAGE;
/* every select in the controls filters its column (the verdict script adds one) */
var filters=Array.prototype.map.call(document.querySelectorAll('.controls select[data-col]'),
  function(s){return [s.id,col(s.dataset.col)];});
function text(row,c){return c<0?'':row.cells[c].textContent;}
/* Only the first PAGE matching rows are laid out (hidden rows cost the browser nothing):
   sorting and filtering 10,000 rows stays quick; "show more" reveals the rest. */
function apply(){
  var q=(document.getElementById('filter-name').value||'').toLowerCase(),n=0;
  var want=filters.map(function(f){
    var s=document.getElementById(f[0]);return [s?s.value:'*',f[1]];
  });
  for(var r=0;r<rows.length;r++){
    var row=rows[r],ok=true;
    for(var k=0;k<want.length&&ok;k++)ok=want[k][0]==='*'||text(row,want[k][1])===want[k][0];
    if(ok&&q)ok=text(row,nameCol).toLowerCase().indexOf(q)>=0;
    var hide=!ok||n>=limit;if(row.hidden!==hide)row.hidden=hide;if(ok)n++;
  }
  if(shown)shown.textContent=(n>limit?'first '+limit+' of '+n+' matching, ':n+' of ')+
    rows.length+' rows shown';
  if(more)more.hidden=n<=limit;
}
function refilter(){limit=PAGE;apply();}
['filter-name'].concat(filters.map(function(f){return f[0];})).forEach(function(id){
  var el=document.getElementById(id);
  if(el){el.addEventListener('input',refilter);el.addEventListener('change',refilter);}
});
if(more)more.addEventListener('click',function(){limit+=PAGE*4;apply();});
heads.forEach(function(th,i){
  th.addEventListener('click',function(){
    var asc=th.getAttribute('aria-sort')!=='ascending',num=th.dataset.type==='num';
    heads.forEach(function(h){h.setAttribute('aria-sort','none');});
    th.setAttribute('aria-sort',asc?'ascending':'descending');
    var keyed=rows.map(function(r,p){var t=r.cells[i].textContent,v;
      if(num){v=parseFloat(t);if(isNaN(v))v=asc?Infinity:-Infinity;}else v=t.toLowerCase();
      return [v,p,r];});
    keyed.sort(function(a,b){var d=a[0]<b[0]?-1:a[0]>b[0]?1:0;return (asc?d:-d)||a[1]-b[1];});
    rows=keyed.map(function(k){return k[2];});
    limit=Math.max(limit,PAGE);apply();  /* hide first, then move: less to lay out */
    var f=document.createDocumentFragment();
    rows.forEach(function(r){f.appendChild(r);});body.appendChild(f);
  });
});
apply();
})();
"""


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Defence in depth: the page may run its own script and style only (by hash), and load
# nothing but data: images. Even markup that escaped escaping could not run or fetch.
CONTENT_POLICY = (
    f"default-src 'none'; img-src data:; style-src {_digest(CSS)} {_digest(VERDICT_CSS)}; "
    f"script-src {_digest(SCRIPT)} {_digest(VERDICT_SCRIPT)}; form-action 'none'; "
    "base-uri 'none'"
)


def _render(
    rows: list[dict[str, str]],
    notes: list[str],
    *,
    output: Path | None,
    search_dirs: Sequence[Path],
    gallery: int,
    run_info: dict[str, str] | None,
    calibration_scores: list[float] | None,
    threshold: float | None,
    incomplete: bool,
    title: str | None,
    workers: int | None,
    progress: Callable[[int, int], None] | None,
    elapsed: float | None,
) -> tuple[str, int, list[str]]:
    notes = list(notes)
    rows = [_as_text(r) for r in rows]
    base = os.path.dirname(os.path.abspath(output)) if output is not None else os.getcwd()
    dirs = [Path(d) for d in search_dirs]

    def is_error(row: dict[str, str]) -> bool:
        return row.get("status", "") == "error"

    scored = [
        (value, index)
        for index, row in enumerate(rows)
        if not is_error(row) and (value := _number(row.get("score"))) is not None
    ]
    scores = [value for value, _ in scored]
    ok = sum(1 for r in rows if r.get("status", "") == "ok")
    errors = [i for i, r in enumerate(rows) if is_error(r)]
    anomalous = sum(1 for r in rows if r.get("label", "") == "anomalous")

    # gallery: the highest scores (ties in input order), then errors while room is left
    limit = max(gallery, 0)
    ranked = [index for _, index in sorted(scored, key=lambda s: (-s[0], s[1]))]
    chosen = ranked[:limit]
    chosen += errors[: limit - len(chosen)]

    plan: list[tuple[int, str | None, str, str | None, bool]] = []
    wanted: dict[str, None] = {}
    for index in chosen:
        row = rows[index]
        overlay = _resolve(row.get("overlay", ""), dirs) if row.get("overlay") else None
        original = _resolve(row.get("path", ""), dirs)
        if row.get("overlay"):
            plan.append((index, overlay, "overlay", original, True))
        else:
            plan.append((index, original, "input image", None, False))
        for f in (plan[-1][1], plan[-1][3]):
            if f is not None:
                wanted[f] = None
    thumbs = _make_thumbnails(list(wanted), workers, progress)

    cards = []
    for rank, (index, main_file, kind, original_file, with_original) in enumerate(plan, 1):
        main = (
            main_file if main_file is not None and thumbs[main_file].uri else None,
            thumbs.get(main_file) if main_file is not None else None,
            kind,
        )
        second = (
            (original_file, thumbs.get(original_file) if original_file is not None else None)
            if with_original
            else None
        )
        cards.append(_card(rank, rows[index], index + 1, main, second, base, notes))

    columns: list[str] = [c for c in PREFERRED if any(c in r for r in rows)]
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)

    heading = title or "winclip report"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_POLICY}">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{_t(heading)}</title><style>{CSS}</style><style>{VERDICT_CSS}</style>"
        "</head><body>",
        f"<header><h1>{_t(heading)}</h1>",
    ]
    if incomplete:
        out.append(
            '<p class="banner" role="alert">INCOMPLETE (interrupted): this report holds '
            "only the rows finished before the run stopped.</p>"
        )
    info = dict(run_info or {})
    generated = datetime.now().astimezone().isoformat(timespec="seconds")
    meta = [*info.items(), ("generated", generated)]
    if elapsed is not None:
        meta.append(("time taken", f"{elapsed:.1f} s"))
    out.append('<dl class="meta">')
    out.extend(f"<dt>{_t(k)}<dd>{_t(v)}" for k, v in meta)
    out.append("</dl>")
    if rows:
        counts = [("rows", len(rows)), ("scored ok", ok), ("anomalous", anomalous)]
        counts.append(("errors", len(errors)))
        out.append(
            '<ul class="counts" id="counts">'
            + "".join(f'<li data-count="{k}"><strong>{v}</strong> {k}' for k, v in counts)
            + "</ul>"
        )
    else:
        out.append('<p class="empty" id="no-rows">This report has no rows.</p>')
    out.append("</header><main>")

    out.append('<section id="histogram"><h2>Scores</h2>')
    out.append(_histogram(scores, calibration_scores, threshold))
    out.append("</section>")

    out.append('<section id="gallery-section" aria-labelledby="gallery-title">')
    more = f", of {len(ranked)} scored" if len(ranked) > len(chosen) else ""
    out.append(
        f'<h2 id="gallery-title">Gallery: {len(cards)} images, most anomalous first{more}</h2>'
    )
    if cards:
        out.append(
            '<p class="hint">Tab or arrow keys move between cards; "Show original" (or '
            "the o key, or hovering the picture) shows the input image.</p>"
        )
        out.append(f'<div class="gallery" id="gallery">{"".join(cards)}</div>')
    else:
        out.append('<p class="empty">No images to show: no rows.</p>')
    out.append("</section>")

    if errors:
        out.append(f'<section id="errors"><h2>Errors ({len(errors)})</h2><ul class="errors">')
        out.extend(
            f"<li>row {i + 1}: <code>{_t(rows[i].get('path', ''))}</code>: "
            f"{_t(rows[i].get('error', '') or 'error')}"
            for i in errors
        )
        out.append("</ul></section>")

    # off screen at first: the browser lays the table out only when it is scrolled to
    out.append(f'<section id="table-section" class="lazy"><h2>All rows ({len(rows)})</h2>')
    if rows:
        out.append(
            '<div class="controls" role="search">'
            '<label for="filter-name">name contains</label>'
            '<input id="filter-name" type="search" autocomplete="off">'
            + _select("filter-label", "label", (r.get("label", "") for r in rows))
            + _select("filter-status", "status", (r.get("status", "") for r in rows))
            + '<span id="shown-count" aria-live="polite"></span></div>'
        )
        out.append(_table(rows, columns, base, dirs))
        more = '<button type="button" id="more" hidden>Show more rows</button>'
        out.append(f'<p class="controls">{more}</p>')
    else:
        out.append('<p class="empty">No rows.</p>')
    out.append("</section>")

    if notes:
        out.append(f'<section id="notes"><h2>Notes ({len(notes)})</h2><ul class="notes">')
        out.extend(f"<li>{_t(n)}" for n in notes[:MAX_NOTES_SHOWN])
        if len(notes) > MAX_NOTES_SHOWN:
            out.append(f"<li>… and {len(notes) - MAX_NOTES_SHOWN} more")
        out.append("</ul></section>")
    out.append(f"</main>{verdict_data(rows, run_info)}<script>{VERDICT_SCRIPT}</script>")
    out.append(f"<script>{SCRIPT}</script></body></html>\n")
    return "".join(out), len(cards), notes


def render_report(
    rows: list[dict[str, str]],
    notes: Sequence[str] = (),
    *,
    output: Path | None = None,
    search_dirs: Sequence[Path] = (),
    gallery: int = DEFAULT_GALLERY,
    run_info: dict[str, str] | None = None,
    calibration_scores: list[float] | None = None,
    threshold: float | None = None,
    incomplete: bool = False,
    title: str | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    elapsed: float | None = None,
) -> str:
    """The report's HTML from rows already parsed (``read_rows``, or a run's own rows:
    values are strings, or numbers and None, shown as the CSV would show them).

    The gallery holds at most ``gallery`` cards: the highest scores (ties in input
    order), then error rows while room is left; every error row is also listed with its
    message in the Errors section, and every row is in the table.

    Links are relative to ``output``'s folder (else the current one); relative paths in
    rows are looked up from the current folder, then ``search_dirs``. Notes found on the
    way (a missing overlay) are listed in the page."""
    text, _cards, _notes = _render(
        rows,
        list(notes),
        output=output,
        search_dirs=search_dirs,
        gallery=gallery,
        run_info=run_info,
        calibration_scores=calibration_scores,
        threshold=threshold,
        incomplete=incomplete,
        title=title,
        workers=workers,
        progress=progress,
        elapsed=elapsed,
    )
    return text


def build_report(
    rows_files: Sequence[Path],
    output: Path,
    *,
    gallery: int = DEFAULT_GALLERY,
    run_info: dict[str, str] | None = None,
    calibration_scores: list[float] | None = None,
    threshold: float | None = None,
    incomplete: bool = False,
    title: str | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    elapsed: float | None = None,
) -> ReportSummary:
    """Read ``rows_files`` (in order) and write the report to ``output`` (replaced whole,
    through a temporary file). Raises UsageError when ``output`` is one of the rows
    files, OSError when it cannot be written; anything wrong in the rows is a note."""
    output = Path(output)
    rows_files = [Path(p) for p in rows_files]
    for path in rows_files:
        if output.exists() and path.exists() and os.path.samefile(path, output):
            raise UsageError(f"the report {output} would replace its rows file {path}")
    rows, notes = read_rows(rows_files)
    search_dirs = list(dict.fromkeys(Path(os.path.abspath(p)).parent for p in rows_files))
    text, cards, notes = _render(
        rows,
        notes,
        output=output,
        search_dirs=search_dirs,
        gallery=gallery,
        run_info=run_info,
        calibration_scores=calibration_scores,
        threshold=threshold,
        incomplete=incomplete,
        title=title,
        workers=workers,
        progress=progress,
        elapsed=elapsed,
    )
    data = text.encode("utf-8", errors="replace")
    atomic_write(output, lambda f: f.write(data))
    return ReportSummary(rows=len(rows), cards=cards, notes=notes, bytes=len(data))
