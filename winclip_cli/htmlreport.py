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
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path

from .histogram import histogram
from .report_parts import as_number, card, esc, rows_table, select
from .report_verdicts import VERDICT_CSS, VERDICT_SCRIPT, verdict_data
from .rows_salvage import cell_text
from .thumbnails import make_thumbnails, resolve

__all__ = ["ReportSummary", "render_page", "render_report"]

DEFAULT_GALLERY = 200
MAX_NOTES_SHOWN = 500  # more notes than this are counted, not listed
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


# ----- text and numbers ------------------------------------------------------------------


# ----- files and thumbnails --------------------------------------------------------------


# ----- pieces of the page ------------------------------------------------------------------


# The page's style and behaviour, package data beside this module (shipped in the wheel).
_ASSETS = resources.files("winclip_cli") / "report_assets"
CSS = (_ASSETS / "report.css").read_text(encoding="utf-8")
SCRIPT = (_ASSETS / "report.js").read_text(encoding="utf-8")


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Defence in depth: the page may run its own script and style only (by hash), and load
# nothing but data: images. Even markup that escaped escaping could not run or fetch.
CONTENT_POLICY = (
    f"default-src 'none'; img-src data:; style-src {_digest(CSS)} {_digest(VERDICT_CSS)}; "
    f"script-src {_digest(SCRIPT)} {_digest(VERDICT_SCRIPT)}; form-action 'none'; "
    "base-uri 'none'"
)


def render_page(
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
    """The page, the number of gallery cards, and the notes (the card's own added)."""
    notes = list(notes)
    rows = [_as_text(r) for r in rows]
    base = os.path.dirname(os.path.abspath(output)) if output is not None else os.getcwd()
    dirs = [Path(d) for d in search_dirs]
    scored = [
        (value, index)
        for index, row in enumerate(rows)
        if not _is_error(row) and (value := as_number(row.get("score"))) is not None
    ]
    errors = [i for i, r in enumerate(rows) if _is_error(r)]
    # gallery: the highest scores (ties in input order), then errors while room is left
    limit = max(gallery, 0)
    ranked = [index for _, index in sorted(scored, key=lambda s: (-s[0], s[1]))]
    chosen = ranked[:limit]
    chosen += errors[: limit - len(chosen)]
    cards = _cards(rows, chosen, dirs, base, notes, workers, progress)
    heading = title or "winclip report"
    out = _header(heading, rows, errors, incomplete, run_info, elapsed)
    out.append('<section id="histogram"><h2>Scores</h2>')
    out.append(histogram([value for value, _ in scored], calibration_scores, threshold))
    out.append("</section>")
    out.extend(_gallery_section(cards, len(ranked), len(chosen)))
    if errors:
        out.append(f'<section id="errors"><h2>Errors ({len(errors)})</h2><ul class="errors">')
        out.extend(
            f"<li>row {i + 1}: <code>{esc(rows[i].get('path', ''))}</code>: "
            f"{esc(rows[i].get('error', '') or 'error')}"
            for i in errors
        )
        out.append("</ul></section>")
    out.extend(_table_section(rows, base, dirs))
    if notes:
        out.append(f'<section id="notes"><h2>Notes ({len(notes)})</h2><ul class="notes">')
        out.extend(f"<li>{esc(n)}" for n in notes[:MAX_NOTES_SHOWN])
        if len(notes) > MAX_NOTES_SHOWN:
            out.append(f"<li>… and {len(notes) - MAX_NOTES_SHOWN} more")
        out.append("</ul></section>")
    out.append(f"</main>{verdict_data(rows, run_info)}<script>{VERDICT_SCRIPT}</script>")
    out.append(f"<script>{SCRIPT}</script></body></html>\n")
    return "".join(out), len(cards), notes


def _is_error(row: dict[str, str]) -> bool:
    return row.get("status", "") == "error"


def _cards(
    rows: list[dict[str, str]],
    chosen: list[int],
    dirs: list[Path],
    base: str,
    notes: list[str],
    workers: int | None,
    progress: Callable[[int, int], None] | None,
) -> list[str]:
    """The gallery's cards of the ``chosen`` rows, their thumbnails made in parallel."""
    plan: list[tuple[int, str | None, str, str | None, bool]] = []
    wanted: dict[str, None] = {}
    for index in chosen:
        row = rows[index]
        overlay = resolve(row.get("overlay", ""), dirs) if row.get("overlay") else None
        original = resolve(row.get("path", ""), dirs)
        if row.get("overlay"):
            plan.append((index, overlay, "overlay", original, True))
        else:
            plan.append((index, original, "input image", None, False))
        for f in (plan[-1][1], plan[-1][3]):
            if f is not None:
                wanted[f] = None
    thumbs = make_thumbnails(list(wanted), workers, progress)
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
        cards.append(card(rank, rows[index], index + 1, main, second, base, notes))
    return cards


def _header(
    heading: str,
    rows: list[dict[str, str]],
    errors: list[int],
    incomplete: bool,
    run_info: dict[str, str] | None,
    elapsed: float | None,
) -> list[str]:
    """The document's head and the page header: what was run, the counts."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_POLICY}">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{esc(heading)}</title><style>{CSS}</style><style>{VERDICT_CSS}</style>"
        "</head><body>",
        f"<header><h1>{esc(heading)}</h1>",
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
    out.extend(f"<dt>{esc(k)}<dd>{esc(v)}" for k, v in meta)
    out.append("</dl>")
    if rows:
        ok = sum(1 for r in rows if r.get("status", "") == "ok")
        anomalous = sum(1 for r in rows if r.get("label", "") == "anomalous")
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
    return out


def _gallery_section(cards: list[str], ranked: int, chosen: int) -> list[str]:
    out = ['<section id="gallery-section" aria-labelledby="gallery-title">']
    more = f", of {ranked} scored" if ranked > chosen else ""
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
    return out


def _table_section(rows: list[dict[str, str]], base: str, dirs: list[Path]) -> list[str]:
    """Every row, sortable and filterable (off screen at first: the browser lays the
    table out only when it is scrolled to)."""
    columns: list[str] = [c for c in PREFERRED if any(c in r for r in rows)]
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    out = [f'<section id="table-section" class="lazy"><h2>All rows ({len(rows)})</h2>']
    if rows:
        out.append(
            '<div class="controls" role="search">'
            '<label for="filter-name">name contains</label>'
            '<input id="filter-name" type="search" autocomplete="off">'
            + select("filter-label", "label", (r.get("label", "") for r in rows))
            + select("filter-status", "status", (r.get("status", "") for r in rows))
            + '<span id="shown-count" aria-live="polite"></span></div>'
        )
        out.append(rows_table(rows, columns, base, dirs))
        more = '<button type="button" id="more" hidden>Show more rows</button>'
        out.append(f'<p class="controls">{more}</p>')
    else:
        out.append('<p class="empty">No rows.</p>')
    out.append("</section>")
    return out


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
    text, _cards, _notes = render_page(
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


def _as_text(row: dict) -> dict[str, str]:
    """A row as strings; a run's own rows may hold numbers (printed as in the CSV) or None."""
    if all(isinstance(v, str) for v in row.values()):
        return row
    return {str(k): f"{v:.6f}" if isinstance(v, float) else cell_text(v) for k, v in row.items()}
