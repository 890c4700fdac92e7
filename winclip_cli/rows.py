"""Result rows: the columns, the row formats (one table: header, encode, parse), the
writer (each row whole), the reader that --resume uses; the held -o file is rows_file.py."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .atomic import append_whole, atomic_write
from .rows_salvage import csv_salvage, header_of, jsonl_salvage

# Writing rows and file names with surrogateescape lets any OS file name round-trip.
ENCODING_ERRORS = "surrogateescape"
SCORE_DECIMALS = 6

# Every column a run can write, in the fixed order, with what it holds (for --help).
COLUMNS: dict[str, str] = {
    "path": "the input file, as given on the command line and walked down",
    "score": "anomaly score in [0, 1], 6 decimals; empty on an error row",
    "p_value": "(1 + #{calibration scores >= score}) / (n + 1), 6 decimals (--calibration)",
    "label": "anomalous or normal (with a decision rule: --threshold or --calibration)",
    "map_max": "maximum of the anomaly map (segment, fewshot)",
    "anomalous_pixels": "pixels above the calibration's pixel threshold (maps, --calibration); "
    "0 on an anomalous row: anomalous as a whole, no localized region",
    "overlay": "the heatmap overlay written for this input (segment, fewshot)",
    "mask": "the anomalous-region mask PNG written with --save-masks",
    "map": "the raw map written with --save-maps",
    "status": "ok or error",
    "error": "why the input could not be scored; empty when ok",
}


@dataclass
class Row:
    """One output row; ``score`` is None when the input could not be scored."""

    path: str
    score: float | None = None
    status: str = "ok"
    error: str = ""
    map_max: float | None = None
    overlay: str = ""
    map: str = ""
    label: str = ""  # set by the run's decision rule, once
    p_value: float | None = None  # set by a calibrated rule
    anomalous_pixels: int | None = None  # maps with a calibration
    mask: str = ""


def columns(
    with_maps: bool,
    saved_maps: bool,
    labelled: bool,
    calibrated: bool = False,
    saved_masks: bool = False,
) -> list[str]:
    """The run's columns, in COLUMNS order."""
    wanted = {"path", "score", "status", "error"}
    wanted |= {"label"} if labelled else set()
    wanted |= {"p_value"} if calibrated else set()
    wanted |= {"map_max", "overlay"} if with_maps else set()
    wanted |= {"anomalous_pixels"} if with_maps and calibrated else set()
    wanted |= {"mask"} if saved_masks else set()
    wanted |= {"map"} if saved_maps else set()
    return [c for c in COLUMNS if c in wanted]


def csv_line(values: Sequence[str]) -> str:
    """One CSV record ending in a bare newline (friendly to line tools).

    The csv module quotes only fields holding the line terminator's characters, so a
    file name with a carriage return would be written bare and split by every reader;
    such a record is written with every field quoted.
    """
    buffer = io.StringIO()
    if any("\r" in v for v in values):
        csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL).writerow(values)
    else:
        csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


# ----- the formats ----------------------------------------------------------------------


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def _csv_parse(text: str, cols: list[str], path: Path) -> list[dict[str, Any]]:
    records = list(csv.reader(io.StringIO(text, newline="")))
    if records and records[0] != cols:
        first = text.split("\n", 1)[0]
        if first.startswith("{"):
            raise ValueError(f"{path} holds JSON lines: resume it with --format jsonl")
        shown = "".join(c if c.isprintable() else "?" for c in first[:120])
        raise ValueError(f"{path} starts with {shown!r}, not this run's columns {','.join(cols)}")
    body = records[1:]
    if body and (not text.endswith("\n") or len(body[-1]) != len(cols)):
        body = body[:-1]  # torn by a crash mid-write
    return [dict(zip(cols, r, strict=False)) for r in body if len(r) == len(cols)]


def _jsonl_parse(text: str, cols: list[str], path: Path) -> list[dict[str, Any]]:
    rows = []
    lines = text.split("\n")
    for number, line in enumerate(lines):
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) - 1:  # torn by a crash mid-write
                break
            raise ValueError(f"{path}: line {number + 1} is not JSON") from None
        if not isinstance(record, dict) or set(record) != set(cols):
            raise ValueError(f"{path} has other fields than this run would write")
        rows.append(record)
    return rows


@dataclass(frozen=True)
class RowFormat:
    """How rows of one format are written and read back."""

    header: Callable[[list[str]], str]  # text before the first row
    encode: Callable[[dict[str, Any]], str]  # one record, ending in a newline
    parse: Callable[[str, list[str], Path], list[dict[str, Any]]]  # finished rows
    # Every readable row of any columns, as text; what is not readable becomes a note
    # (text, file name, notes): the report's reading, which never fails.
    salvage: Callable[[str, str, list[str]], list[dict[str, str]]]
    looks_like: Callable[[str], bool]  # the first non-blank line is this format's


FORMATS: dict[str, RowFormat] = {
    "csv": RowFormat(
        header=csv_line,
        encode=lambda record: csv_line([_csv_cell(v) for v in record.values()]),
        parse=_csv_parse,
        salvage=csv_salvage,
        looks_like=lambda first: "path" in header_of(first),
    ),
    "jsonl": RowFormat(
        header=lambda _cols: "",
        encode=lambda record: json.dumps(record, ensure_ascii=False) + "\n",
        parse=_jsonl_parse,
        salvage=jsonl_salvage,
        looks_like=lambda first: first.lstrip().startswith("{"),
    ),
}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, SCORE_DECIMALS)


class RowWriter:
    """Writes rows as they come, each in one write that reaches the file whole or not at
    all (append_whole), so an interrupted or failed run leaves a valid file with every
    finished row.

    A stream on a file descriptor (the -o file, stdout) is written to the descriptor
    itself: nothing of a failed row stays buffered to be written again later. Other
    streams (a StringIO) get ``write`` and ``flush``."""

    def __init__(self, stream: IO[str], fmt: str, cols: list[str], header: bool = True) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}: use {' or '.join(FORMATS)}")
        self.stream, self.format, self.cols = stream, FORMATS[fmt], cols
        self._fd = _descriptor(stream)
        self._where = _stream_name(stream)
        if header and (text := self.format.header(cols)):
            self._write(text)

    def _write(self, text: str) -> None:
        if self._fd is None:
            self.stream.write(text)
            self.stream.flush()
            return
        encoding = getattr(self.stream, "encoding", None) or "utf-8"
        errors = getattr(self.stream, "errors", None) or ENCODING_ERRORS
        append_whole(self._fd, text.encode(encoding, errors), self._where)

    def record(self, row: Row) -> dict[str, Any]:
        """The row as a dict of this run's columns (numbers rounded to 6 decimals)."""
        values: dict[str, Any] = {
            "path": row.path,
            "score": _rounded(row.score),
            "p_value": _rounded(row.p_value),
            "label": row.label,
            "map_max": _rounded(row.map_max),
            "anomalous_pixels": row.anomalous_pixels,
            "overlay": row.overlay,
            "mask": row.mask,
            "map": row.map,
            "status": row.status,
            "error": row.error,
        }
        return {c: values[c] for c in self.cols}

    def write(self, row: Row) -> None:
        self._write(self.format.encode(self.record(row)))

    def copy(self, record: dict[str, Any]) -> None:
        """Write a row read back from a rows file of the same columns, as it was."""
        self._write(self.format.encode({c: record[c] for c in self.cols}))


def _descriptor(stream: IO[str]) -> int | None:
    """The descriptor under ``stream``, flushed first (what it holds goes before the
    rows); None for a stream in memory."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    stream.flush()
    return fd


def _stream_name(stream: IO[str]) -> str:
    name = getattr(stream, "name", None)
    return name if isinstance(name, str) else "the rows file"


def read_finished_rows(path: Path, fmt: str, cols: list[str]) -> list[dict[str, Any]]:
    """Rows already in an output file, for --resume; a torn last row is dropped and the
    file rewritten without it. Raises ValueError when the file is of another shape."""
    raw = path.read_bytes()  # once, as bytes: text mode would turn a quoted \r into \n
    text = raw.decode("utf-8", errors=ENCODING_ERRORS)
    if not text:
        return []
    rows = FORMATS[fmt].parse(text, cols, path)
    _rewrite(path, raw, fmt, cols, rows)
    return rows


def _rewrite(path: Path, old: bytes, fmt: str, cols: list[str], rows: list[dict[str, Any]]) -> None:
    """Make the file at ``path`` (whose bytes are ``old``) hold exactly ``rows``."""
    form = FORMATS[fmt]
    text = form.header(cols) + "".join(form.encode({c: r[c] for c in cols}) for r in rows)
    data = text.encode("utf-8", errors=ENCODING_ERRORS)
    if data == old:
        return
    if old.startswith(data):  # a torn last row: cut it off in place (the run's lock stays)
        os.truncate(path, len(data))
    else:  # rows written otherwise (another version): rewrite them whole
        atomic_write(path, lambda f: f.write(data))


# ----- where rows go --------------------------------------------------------------------


def discard_stdout() -> None:
    """Point stdout's descriptor at /dev/null: rows still buffered for a reader that went
    away, or a full disk, would otherwise fail again, noisily, when Python exits."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def stdout_rows() -> IO[str]:
    """stdout as the row stream: bytes that are not UTF-8 in names pass through."""
    stream = sys.stdout
    if hasattr(stream, "reconfigure"):
        stream.reconfigure(errors=ENCODING_ERRORS)
    return stream
