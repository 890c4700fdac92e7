"""Result rows (CSV / JSON lines), heatmap overlays and saved maps."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageDraw

from .cache import atomic_write

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

_BINARY = getattr(os, "O_BINARY", 0)  # Windows would write CRLF line ends otherwise

FORMATS = ("csv", "jsonl")
# Writing rows and file names with surrogateescape lets any OS file name round-trip.
ENCODING_ERRORS = "surrogateescape"


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


def columns(with_maps: bool, saved_maps: bool, threshold: float | None) -> list[str]:
    """The fixed column order for a run's options."""
    cols = ["path", "score"]
    if threshold is not None:
        cols.append("label")
    if with_maps:
        cols += ["map_max", "overlay"]
    if saved_maps:
        cols.append("map")
    return [*cols, "status", "error"]


SCORE_DECIMALS = 6


def is_anomalous(score: float | str | None, threshold: float | None) -> bool:
    """At or above the threshold, compared as printed (6 decimals), so that filtering the
    output by ``score >= T`` agrees with the label and the exit code."""
    if score in (None, "") or threshold is None:
        return False
    return round(float(score), SCORE_DECIMALS) >= threshold  # type: ignore[arg-type]


def label(score: float | None, threshold: float | None) -> str:
    """``anomalous`` at or above the threshold, ``normal`` below, empty without a score."""
    if score is None or threshold is None:
        return ""
    return "anomalous" if is_anomalous(score, threshold) else "normal"


def csv_line(values: Sequence[str]) -> str:
    """One CSV record ending in a bare newline (friendly to line tools).

    The csv module quotes only fields holding the line terminator's characters, so a
    file name with a carriage return would be written bare and split by every reader;
    such a record is written with every field quoted.
    """
    buffer = io.StringIO()
    quoting = csv.QUOTE_ALL if any("\r" in v for v in values) else csv.QUOTE_MINIMAL
    csv.writer(buffer, lineterminator="\n", quoting=quoting).writerow(values)
    return buffer.getvalue()


class RowWriter:
    """Writes rows as they come, each in one write followed by a flush, so an interrupted
    run leaves a valid file with every finished row."""

    def __init__(
        self,
        stream: IO[str],
        fmt: str,
        cols: list[str],
        threshold: float | None,
        header: bool = True,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}: use csv or jsonl")
        self.stream, self.fmt, self.cols, self.threshold = stream, fmt, cols, threshold
        if header and fmt == "csv":
            self._write(csv_line(cols))

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def record(self, row: Row) -> dict[str, Any]:
        """The row as a dict of this run's columns (numbers rounded to 6 decimals)."""
        values: dict[str, Any] = {
            "path": row.path,
            "score": None if row.score is None else round(row.score, SCORE_DECIMALS),
            "label": label(row.score, self.threshold),
            "map_max": None if row.map_max is None else round(row.map_max, SCORE_DECIMALS),
            "overlay": row.overlay,
            "map": row.map,
            "status": row.status,
            "error": row.error,
        }
        return {c: values[c] for c in self.cols}

    def write(self, row: Row) -> None:
        record = self.record(row)
        if self.fmt == "jsonl":
            self._write(json.dumps(record, ensure_ascii=False) + "\n")
            return
        cells = [
            "" if v is None else f"{v:.6f}" if isinstance(v, float) else v for v in record.values()
        ]
        self._write(csv_line(cells))


def read_finished_rows(path: Path, fmt: str, cols: list[str]) -> list[dict[str, str]]:
    """Rows already in an output file, for --resume; a torn last row is dropped and the
    file rewritten without it. Raises ValueError when the file is of another shape."""
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors=ENCODING_ERRORS)
    if not text:
        return []
    rows: list[dict[str, Any]] = []
    if fmt == "jsonl":
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
    else:
        records = list(csv.reader(io.StringIO(text, newline="")))
        if records and records[0] != cols:
            first = text.split("\n", 1)[0]
            if first.startswith("{"):
                raise ValueError(f"{path} holds JSON lines: resume it with --format jsonl")
            shown = "".join(c if c.isprintable() else "?" for c in first[:120])
            raise ValueError(
                f"{path} starts with {shown!r}, not this run's columns {','.join(cols)}"
            )
        body = records[1:]
        if body and (not text.endswith("\n") or len(body[-1]) != len(cols)):
            body = body[:-1]  # torn by a crash mid-write
        rows = [dict(zip(cols, r, strict=False)) for r in body if len(r) == len(cols)]
    _rewrite(path, raw, fmt, cols, rows)
    return rows


def _rewrite(
    path: Path, old: bytes, fmt: str, cols: list[str], rows: list[dict[str, Any]]
) -> None:
    """Make the file at ``path`` (whose bytes are ``old``) hold exactly ``rows``."""
    buffer = io.StringIO()
    if fmt == "csv":
        buffer.write(csv_line(cols))
        buffer.writelines(csv_line(["" if r[c] is None else r[c] for c in cols]) for r in rows)
    else:
        buffer.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    data = buffer.getvalue().encode("utf-8", errors=ENCODING_ERRORS)
    if data == old:
        return
    if old.startswith(data):  # a torn last row: cut it off in place (the run's lock stays)
        os.truncate(path, len(data))
    else:  # rows written otherwise (another version): rewrite them whole
        atomic_write(path, lambda f: f.write(data))


# ----- images ---------------------------------------------------------------------------

# Polynomial fit of matplotlib's perceptually uniform 'viridis' colormap (max error < 1%).
_VIRIDIS = np.array(
    [
        [0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
        [0.1050930431085774, 1.404613529898575, 1.384590162594685],
        [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
        [-4.634230498983486, -5.799100973351585, -19.33244095627987],
        [6.228269936347081, 14.17993336680509, 56.69055260068105],
        [4.776384997670288, -13.74514537774601, -65.35303263337234],
        [-5.435455855934631, 4.645852612178535, 26.3124352495832],
    ]
)
_LUT = np.clip(
    np.stack([np.polynomial.polynomial.polyval(np.linspace(0, 1, 256), c) for c in _VIRIDIS.T], 1),
    0,
    1,
)
COLORMAP = (_LUT * 255).round().astype(np.uint8)  # (256, 3)
OVERLAY_ALPHA = 0.5


def colorize(values: np.ndarray) -> np.ndarray:
    """(H, W) scores in [0, 1] -> (H, W, 3) uint8 colours; the scale is absolute, so the
    same colour means the same score in every image."""
    return COLORMAP[np.clip(np.rint(values * 255), 0, 255).astype(np.intp)]


def _draw_legend(canvas: Image.Image) -> None:
    """A small 0..1 colour bar in the bottom-right corner, when the image has room."""
    width, height = canvas.size
    if width < 96 or height < 48:
        return
    bar_w = max(48, min(width // 4, 256))
    bar_h = max(6, min(height // 40, 16))
    margin = max(4, bar_h // 2)
    x0, y1 = width - bar_w - margin - 14, height - margin
    y0 = y1 - bar_h
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([x0 - 16, y0 - 4, width - margin + 2, y1 + 4], fill=(0, 0, 0))
    gradient = colorize(np.tile(np.linspace(0, 1, bar_w), (bar_h, 1)))
    canvas.paste(Image.fromarray(gradient), (x0, y0))
    draw.text((x0 - 12, y0 + (bar_h - 10) // 2), "0", fill=(255, 255, 255))
    draw.text((x0 + bar_w + 4, y0 + (bar_h - 10) // 2), "1", fill=(255, 255, 255))


def render_overlay(image: Image.Image, anomaly_map: np.ndarray) -> Image.Image:
    """The heatmap (same size as ``image``) blended over the image, with a colour bar."""
    heat = Image.fromarray(colorize(anomaly_map))
    canvas = Image.blend(image.convert("RGB"), heat, OVERLAY_ALPHA)
    _draw_legend(canvas)
    return canvas


def output_name(out_dir: Path, relative: str, suffix: str) -> Path:
    """File under ``out_dir`` mirroring the input's relative path (extension kept, so
    a.jpg and a.png never collide); '..' parts are neutralised."""
    parts = [
        p if p not in ("..", ".") else "__" for p in Path(relative).parts if p not in ("/", "")
    ]
    return out_dir.joinpath(*parts).with_name(parts[-1] + suffix)


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG under a temporary name, then rename: never a half-written file."""
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def save_npy(array: np.ndarray, path: Path) -> None:
    """Write a .npy under a temporary name, then rename."""
    atomic_write(path, lambda f: np.save(f, array.astype(np.float32, copy=False)))


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


class FileBusyError(Exception):
    """Another process holds the rows file (an overlapping run on the same -o FILE)."""


class RowsFile:
    """The -o file, held for the whole run by an exclusive advisory lock: a second run on
    the same file (an overlapping cron job) is refused, rather than both writing rows
    into it. Opened without truncating: a refused run leaves the file as it was.

    A FIFO or device (`-o /dev/stdout`) is just opened for writing: nothing to lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        try:
            special = not stat.S_ISREG(os.stat(path).st_mode)
        except FileNotFoundError:
            special = False
        self.regular = not special
        if special:
            self.created = False
            self.fd = os.open(path, os.O_WRONLY | _BINARY)
            return
        for _attempt in range(5):
            self.created = not path.exists()
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | _BINARY, 0o666)
            self._lock()
            if self._still_the_file():
                return
            # Removed or replaced between open and lock (a run that failed before
            # writing removes the file it created): hold the file now at the path.
            os.close(self.fd)
        raise FileBusyError(f"{path} keeps being replaced by another program")

    def _lock(self) -> None:
        if fcntl is None:  # Windows: no flock; runs on one file are the user's to keep apart
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self.fd)  # type: ignore[arg-type]
            self.fd = None
            raise FileBusyError(f"{self.path} is being written by another winclip run") from exc
        except OSError:  # no locking on this filesystem (NFS without lockd, some FUSE)
            pass

    def _still_the_file(self) -> bool:
        try:
            return os.path.samestat(os.fstat(self.fd), os.stat(self.path))  # type: ignore[arg-type]
        except FileNotFoundError:
            return False

    def follow(self) -> None:
        """Hold the file at the path again after it was replaced whole (a resume repair
        of a file this version did not write)."""
        if self.regular and not self._still_the_file():
            os.close(self.fd)  # type: ignore[arg-type]
            self.fd = os.open(self.path, os.O_RDWR | _BINARY)
            self._lock()

    def stream(self, append: bool) -> IO[str]:
        """The row stream on the held file: at its end (append) or emptied first."""
        assert self.fd is not None
        if self.regular and append:
            os.lseek(self.fd, 0, os.SEEK_END)
        elif self.regular:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
        return open(
            self.fd, "w", encoding="utf-8", errors=ENCODING_ERRORS, newline="", closefd=False
        )

    def release(self) -> None:
        """Unlock; a file this run created and never wrote to is removed again."""
        if self.fd is None:
            return
        empty = self.created and os.fstat(self.fd).st_size == 0
        os.close(self.fd)  # first: Windows can't remove an open file
        self.fd = None
        if empty:
            self.path.unlink(missing_ok=True)
