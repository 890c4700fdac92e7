"""The report's pieces: text made safe for HTML, a gallery card, the table of every
row (sortable, filterable)."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from .decision import WHOLE_IMAGE, is_whole_image
from .thumbnails import Thumb, href, resolve

NUMERIC_HINT = ("score", "p_value", "map_max", "anomalous_pixels")


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


def clean_text(value: object) -> str:
    text = str(value)
    if text.isprintable():  # the common case: nothing to replace
        return text
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return _BAD_CHARS.sub(_escape_char, text)


def esc(value: object) -> str:
    """Escaped text, for an element's content or a quoted attribute."""
    return html.escape(clean_text(value), quote=True)


def as_number(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def score_text(value: str | None) -> str:
    number = as_number(value)
    return "" if number is None else f"{number:.6f}"


def card(
    rank: int,
    row: dict[str, str],
    number: int,
    main: tuple[str | None, Thumb | None, str],
    original: tuple[str | None, Thumb | None] | None,
    base: str,
    notes: list[str],
) -> str:
    path = row.get("path", "")
    status = row.get("status", "")
    label = row.get("label", "")
    score = score_text(row.get("score"))
    main_file, main_thumb, kind = main
    card_notes: list[str] = []
    pictures = []
    shown = clean_text(path) or "(no path)"
    if main_thumb is not None and main_thumb.uri:
        pictures.append(
            f'<img class="thumb main" src="{main_thumb.uri}" width="{main_thumb.width}" '
            f'height="{main_thumb.height}" alt="{esc(kind)} of {esc(shown)}">'
        )
    else:
        source = row.get("overlay") if kind == "overlay" else path
        why = main_thumb.problem if main_thumb is not None else "missing"
        if status != "error":  # an error row's own message says why its image is not shown
            card_notes.append(f"{kind} not embedded ({why}): {clean_text(source or '(none)')}")
        pictures.append(f'<div class="thumb main nothumb">no {esc(kind)}</div>')
    has_original = False
    if original is not None:
        _original_file, original_thumb = original
        if original_thumb is not None and original_thumb.uri:
            has_original = True
            pictures.append(
                f'<img class="thumb orig" src="{original_thumb.uri}" '
                f'width="{original_thumb.width}" height="{original_thumb.height}" '
                f'alt="original image {esc(shown)}">'
            )
        else:
            why = original_thumb.problem if original_thumb is not None else "missing"
            card_notes.append(f"input image not embedded ({why}): {clean_text(path or '(none)')}")
    for note in card_notes:
        notes.append(f"row {number}: {note}")
    fields = [("score", score or "—")]
    for key in ("p_value", "label", "map_max", "anomalous_pixels"):
        if key in row:
            fields.append((key.replace("_", " "), row[key] or "—"))
    fields.append(("status", status or "—"))
    listing = "".join(f"<dt>{esc(k)}<dd>{esc(v)}" for k, v in fields)
    toggle = (
        '<button type="button" class="toggle" aria-pressed="false">Show original</button>'
        if has_original
        else ""
    )
    link = ""
    if main_file is not None:
        link = f'<a class="full" href="{href(main_file, base)}">full-size {esc(kind)}</a>'
    error = row.get("error", "")
    extra = f'<p class="error">{esc(error)}</p>' if error else ""
    if is_whole_image(label, row.get("anomalous_pixels")):  # no region to outline
        extra += f'<p class="note whole">{esc(WHOLE_IMAGE)}</p>'
    extra += "".join(f'<p class="note">{esc(n)}</p>' for n in card_notes)
    css = "card error-card" if status == "error" else "card"
    if label == "anomalous":
        css += " anomalous"
    return (
        f'<article class="{css}" tabindex="0" data-score="{score}" data-label="{esc(label)}" '
        f'data-status="{esc(status)}" data-row="{number}" '
        f'aria-label="#{rank}: score {score or "none"}, {esc(label or status)}, {esc(shown)}">'
        f'<div class="pics">{"".join(pictures)}</div>{toggle}'
        f'<p class="path">#{rank} <code>{esc(shown)}</code></p><dl>{listing}</dl>'
        f"{link}{extra}</article>"
    )


def rows_table(
    rows: list[dict[str, str]], columns: list[str], base: str, search_dirs: Sequence[Path]
) -> str:
    numeric = {"#"}
    for column in columns:
        values = [r.get(column, "") for r in rows]
        present = [v for v in values if v.strip()]
        if present and (
            column in NUMERIC_HINT or all(as_number(v) is not None for v in present[:200])
        ):
            numeric.add(column)

    def th(column: str) -> str:
        kind = "num" if column in numeric else "text"
        css = ' class="num"' if kind == "num" and column != "#" else ""
        order = "descending" if column == "score" else "none"  # the rows' first order
        return (
            f'<th scope="col" data-col="{esc(column)}" data-type="{kind}"{css} '
            f'aria-sort="{order}"><button type="button">{esc(column)}</button></th>'
        )

    head = "".join(th(c) for c in ["#", *columns])
    body = []
    links = {"overlay", "mask"}  # a few links a row: the table stays light for 10,000 rows
    hrefs: dict[str, str | None] = {}  # a file named by many rows is looked up once
    for index in by_score(rows):
        number, row = index + 1, rows[index]  # "#": the row's place in the rows file
        cells = [f"<td>{number}"]
        for column in columns:
            value = row.get(column, "")
            if column == "score":
                value = score_text(value) or value
            if column in links and value:
                if value not in hrefs:
                    target = resolve(value, search_dirs)
                    hrefs[value] = href(target, base) if target is not None else None
                if hrefs[value] is not None:
                    cells.append(f'<td><a href="{hrefs[value]}">{esc(value)}</a>')
                    continue
            cells.append(f"<td>{esc(value)}")
        body.append(f"<tr>{''.join(cells)}\n")
    return f'<table id="rows"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def by_score(rows: list[dict[str, str]]) -> list[int]:
    """Row indices by score, highest first (ties and rows without one in file order,
    the latter last): the table's first order, as README promises."""

    def key(index: int) -> tuple[int, float, int]:
        value = as_number(rows[index].get("score"))
        return (1, 0.0, index) if value is None else (0, -value, index)

    return sorted(range(len(rows)), key=key)


def select(id_: str, label: str, values: Iterable[str]) -> str:
    options = ['<option value="*">all</option>']
    for value in sorted(set(values)):
        options.append(f'<option value="{esc(value)}">{esc(value) or "(empty)"}</option>')
    return (
        f'<label for="{id_}">{label}</label>'
        f'<select id="{id_}" data-col="{label}">{"".join(options)}</select>'
    )
