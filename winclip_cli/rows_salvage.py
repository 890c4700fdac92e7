"""Reading any rows file as far as it goes, for the report: every readable row as text,
whatever its columns; what can't be read becomes a note, never an exception. Each
format's reader is its ``salvage`` entry in rows.FORMATS."""

from __future__ import annotations

import csv
import io
import json


def cell_text(value: object) -> str:
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


def jsonl_salvage(text: str, name: str, notes: list[str]) -> list[dict[str, str]]:
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
        rows.append({str(k): cell_text(v) for k, v in record.items()})
    return rows


def csv_salvage(text: str, name: str, notes: list[str]) -> list[dict[str, str]]:
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


def header_of(line: str) -> list[str]:
    try:
        return next(csv.reader([line]))
    except (csv.Error, StopIteration):
        return []
