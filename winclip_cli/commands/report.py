"""`winclip report`: the HTML report of rows files written earlier (read through
rows.FORMATS)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..atomic import atomic_write
from ..errors import ExitCode, UsageError
from ..htmlreport import DEFAULT_GALLERY, ReportSummary, render_page
from ..overlaps import FileUse, refuse_overlaps
from ..paths import check_writable_file
from ..progress import Reporter
from ..report_context import context_of
from ..rows import FORMATS
from ..thumbnails import resolve


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
    # JSON lines first: a JSON line could pass for a one-column CSV header.
    fmt = next((f for f in (FORMATS["jsonl"], FORMATS["csv"]) if f.looks_like(first)), None)
    if fmt is None:
        notes.append(f"{name}: neither CSV with a 'path' column nor JSON lines, skipped")
        return []
    rows = fmt.salvage(text, name, notes)
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


# Columns that name files a report reads (thumbnails, links).
FILE_COLUMNS = ("path", "overlay", "mask", "map")


def report_files(
    rows_files: Sequence[Path], rows: list[dict[str, str]], search_dirs: Sequence[Path]
) -> list[FileUse]:
    """What a report reads: the rows files and each file a row names, found where the
    report looks for it (thumbnails.resolve), for the overlap check."""
    reads = [FileUse("the rows file", path) for path in rows_files]
    for row in rows:
        for column in FILE_COLUMNS:
            target = resolve(str(row.get(column) or ""), search_dirs)
            if target is not None:
                reads.append(FileUse(f"the file a row names ({column})", Path(target)))
    return reads


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
    notes: Sequence[str] = (),
) -> ReportSummary:
    """Read ``rows_files`` (in order) and write the report to ``output`` (replaced whole,
    through a temporary file). Raises OverlapError (exit 2) when ``output`` is one of
    the rows files or a file they name, WriteFailedError (exit 2) when it cannot be
    written; anything wrong in the rows is a note, as are ``notes``."""
    output = Path(output)
    rows_files = [Path(p) for p in rows_files]
    rows, found = read_rows(rows_files)
    notes = [*notes, *found]
    search_dirs = list(dict.fromkeys(Path(os.path.abspath(p)).parent for p in rows_files))
    refuse_overlaps(report_files(rows_files, rows, search_dirs), [FileUse("-o", output)])
    text, cards, notes = render_page(
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


def report_command(
    rows: Sequence[Path], output: Path, gallery: int, title: str | None, reporter: Reporter
) -> ExitCode:
    """`winclip report`: check the arguments, write the report, say what it holds."""
    if gallery < 0:
        raise UsageError("--gallery must be 0 or more")
    missing = [str(p) for p in rows if not p.is_file()]
    if missing:
        raise UsageError(f"rows file not found: {missing[0]}")
    check_writable_file(output)
    context = context_of(rows)  # the manifests beside the rows: header, threshold, scores
    try:
        summary = build_report(
            rows,
            output,
            gallery=gallery,
            title=title,
            progress=reporter.counter("thumbnails"),
            run_info=context.run_info,
            threshold=context.threshold,
            calibration_scores=context.calibration_scores,
            notes=context.notes,
        )
    finally:
        reporter.stop()
    for note in summary.notes:
        reporter.warn(note)
    reporter.info(f"{summary.rows} row(s), {summary.cards} card(s): {output}")
    return ExitCode.OK
