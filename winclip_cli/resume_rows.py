"""What --resume may keep of a rows file: each row checked against the row schema, one
row per input (the last whole row wins), and error rows of files that are gone.

Pure functions on the records ``rows.FORMATS`` parses; resume.py decides with them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field

from .errors import DamagedFileError
from .schemas import NOT_NULL, Count, FileSchema, Text, check

Unit = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
# Columns that hold numbers: an empty CSV cell is "no value" (an error row's score).
NUMERIC = ("score", "p_value", "map_max", "anomalous_pixels")


class RowRecord(FileSchema):
    """One row as a rows file holds it; columns a run did not write are absent."""

    path: Text
    status: Literal["ok", "error"]
    error: str = ""
    score: Unit | None = None
    p_value: Unit | None = None
    label: Literal["", "anomalous", "normal"] = ""  # decision.ANOMALOUS, NORMAL
    map_max: Finite | None = None
    anomalous_pixels: Count | None = None
    overlay: Annotated[str, NOT_NULL] = ""
    mask: Annotated[str, NOT_NULL] = ""
    map: Annotated[str, NOT_NULL] = ""


def _as_typed(record: dict[str, Any], fmt: str) -> dict[str, Any]:
    """A CSV record's empty numeric cells as None (JSON lines carry null already)."""
    if fmt != "csv":
        return record
    return {k: (None if k in NUMERIC and v == "" else v) for k, v in record.items()}


def check_rows(records: Iterable[dict[str, Any]], fmt: str, source: str) -> list[dict[str, Any]]:
    """The records, each checked against RowRecord (CSV cells read as numbers where a
    number belongs); DamagedFileError (exit 2) naming the file, the row and the field.
    An ok row needs its score; the records are returned as they were."""
    kept = []
    for number, record in enumerate(records, start=1):
        where = f"{source}, row {number}"
        checked = check(RowRecord, _as_typed(record, fmt), where, strict=fmt != "csv")
        if checked.status == "ok" and checked.score is None:
            raise DamagedFileError(f"{where}: field score: an ok row needs a score")
        kept.append(record)
    return kept


@dataclass
class OnePerInput:
    """The rows of a file, one per input: ``rows`` by key in the file's order (each
    input where its last row was), ``dropped`` how many earlier rows gave way."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    dropped: int = 0

    @property
    def note(self) -> str | None:
        """What a resume says about the repair, once; None when nothing was dropped."""
        if not self.dropped:
            return None
        return (
            f"{self.dropped} row(s) repeated an input's row: kept the last whole row of each "
            "input (one row per input)"
        )


def one_row_per_input(records: Iterable[dict[str, Any]], key: Callable[[str], str]) -> OnePerInput:
    """One row per input (``key`` of the path column): the last whole row wins, in the
    place of that last row."""
    result = OnePerInput()
    for record in records:
        name = key(record["path"])
        if name in result.rows:
            del result.rows[name]  # re-inserted: the input moves to its last row's place
            result.dropped += 1
        result.rows[name] = record
    return result


def gone_error_rows(rows: dict[str, dict[str, Any]], exists: Callable[[str], bool]) -> list[str]:
    """The keys of error rows whose file is gone: reported once, then no longer counted
    (a deleted broken photo must not keep every later run at exit 3)."""
    return [k for k, r in rows.items() if r.get("status") == "error" and not exists(k)]
