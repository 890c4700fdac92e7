"""Review verdicts: the `verdicts.csv` a report exports, read and checked against a schema.

A verdict file is CSV with a header; its columns are ``VERDICT_COLUMNS`` (the report
writes all of them; ``path`` and ``verdict`` are required, the others may be absent or
empty, and extra columns are ignored). ``path`` is the row's path exactly as the rows
file has it; ``verdict`` is ``defect`` or ``false_alarm``; ``reviewed_at`` is ISO 8601.
Notes are untrusted text and are never interpreted.

Several files are combined into one set: a file given twice (the same bytes) is read
once, the same image with the same verdict in two files is one verdict, and the same
image with two different verdicts is refused (exit 2, naming both files). Pure code:
pydantic and the standard library.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .errors import UsageError

VERDICT_COLUMNS = ("path", "verdict", "score", "label", "p_value", "note", "reviewed_at")
REQUIRED_COLUMNS = ("path", "verdict")
DEFECT = "defect"
FALSE_ALARM = "false_alarm"
MAX_VERDICT_FILE_BYTES = 256 * 2**20  # a verdict file is a review's worth of rows


class VerdictFileError(UsageError):
    """A verdict file that cannot be used (exit 2): the message names the file and field."""


class Verdict(BaseModel):
    """One reviewed image, as one line of a verdict file."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=False)

    path: str
    verdict: Literal["defect", "false_alarm"]
    score: float | None = None
    label: str = ""
    p_value: float | None = None
    note: str = ""
    reviewed_at: datetime | None = None

    @field_validator("path")
    @classmethod
    def _path_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name an image")
        return value

    @field_validator("score", "p_value", "reviewed_at", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("score")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("p_value")
    @classmethod
    def _probability(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value <= 1:
            raise ValueError("must be a p-value in (0, 1]")
        return value


@dataclass
class VerdictFile:
    """One verdict file: where it is, its content's sha256, and its verdicts in order."""

    path: Path
    sha256: str
    verdicts: list[Verdict]


@dataclass
class VerdictSet:
    """Verdicts of several files, one per image (by its path as the rows wrote it)."""

    files: list[VerdictFile]
    by_path: dict[str, Verdict]
    sources: dict[str, list[Path]]  # which files gave each image's verdict
    notes: list[str] = field(default_factory=list)  # files and lines skipped, and why

    def with_verdict(self, verdict: str) -> list[Verdict]:
        """The verdicts of one kind (``defect`` or ``false_alarm``), in file order."""
        return [v for v in self.by_path.values() if v.verdict == verdict]


def _field_message(exc: ValidationError) -> str:
    error = exc.errors()[0]
    name = ".".join(str(part) for part in error.get("loc", ())) or "line"
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" (got {str(value)[:60]!r})"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"field {name!r}: {message}{shown}"


def _text(path: Path) -> tuple[str, str]:
    """The file's text (UTF-8, BOM dropped) and the sha256 of its bytes."""
    where = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_VERDICT_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise VerdictFileError(f"verdict file {where} not found") from exc
    except (OSError, ValueError) as exc:
        raise VerdictFileError(f"verdict file {where} cannot be read: {exc}") from exc
    if len(raw) > MAX_VERDICT_FILE_BYTES:
        raise VerdictFileError(f"{where}: larger than {MAX_VERDICT_FILE_BYTES >> 20} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VerdictFileError(f"{where}: not UTF-8 text (byte {exc.start})") from exc
    return text.removeprefix("\ufeff"), hashlib.sha256(raw).hexdigest()


def read_verdict_file(path: Path) -> VerdictFile:
    """Read and validate one verdict file; VerdictFileError names the file, the line and
    the field that is wrong. Blank lines are skipped."""
    path = Path(path)
    text, digest = _text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise VerdictFileError(f"{path}: empty file, no verdict header") from None
    except csv.Error as exc:
        raise VerdictFileError(f"{path}: line 1: {exc}") from exc
    header = [name.strip() for name in header]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise VerdictFileError(
            f"{path}: not a verdict file: no {', '.join(repr(m) for m in missing)} column "
            f"(expected {','.join(VERDICT_COLUMNS)})"
        )
    verdicts: list[Verdict] = []
    try:
        for record in reader:
            if not record or record == [""]:
                continue
            line = reader.line_num
            if len(record) != len(header):
                raise VerdictFileError(
                    f"{path}: line {line} has {len(record)} fields, the header {len(header)}"
                )
            try:
                verdicts.append(Verdict.model_validate(dict(zip(header, record, strict=True))))
            except ValidationError as exc:
                raise VerdictFileError(f"{path}: line {line}: {_field_message(exc)}") from None
    except csv.Error as exc:
        raise VerdictFileError(f"{path}: line {reader.line_num}: {exc}") from exc
    return VerdictFile(path, digest, verdicts)


def _same_image(name: str) -> str:
    """The key two spellings of one relative path share (``./a.png`` and ``a.png``)."""
    return os.path.normpath(name)


def combine_verdicts(files: Sequence[VerdictFile]) -> VerdictSet:
    """One verdict per image from several files, in file order.

    A file whose bytes were already read is skipped with a note; the same image with
    the same verdict again keeps the first; with another verdict: VerdictFileError naming
    the image and the files that disagree."""
    kept: list[VerdictFile] = []
    seen_hashes: dict[str, Path] = {}
    by_path: dict[str, Verdict] = {}
    sources: dict[str, list[Path]] = {}
    notes: list[str] = []
    for vf in files:
        if vf.sha256 in seen_hashes:
            notes.append(f"{vf.path}: the same file as {seen_hashes[vf.sha256]}, skipped")
            continue
        seen_hashes[vf.sha256] = vf.path
        kept.append(vf)
        for verdict in vf.verdicts:
            key = _same_image(verdict.path)
            first = by_path.get(key)
            if first is None:
                by_path[key] = verdict
                sources[key] = [vf.path]
            elif first.verdict != verdict.verdict:
                where = ", ".join(str(p) for p in dict.fromkeys([*sources[key], vf.path]))
                raise VerdictFileError(
                    f"verdicts disagree on {verdict.path}: {first.verdict} and "
                    f"{verdict.verdict} ({where})"
                )
            elif vf.path not in sources[key]:
                sources[key].append(vf.path)
    return VerdictSet(kept, by_path, sources, notes)


def read_verdicts(paths: Sequence[Path]) -> VerdictSet:
    """Read, validate and combine verdict files (see combine_verdicts)."""
    if not paths:
        raise VerdictFileError("no verdict file given")
    return combine_verdicts([read_verdict_file(Path(p)) for p in paths])
