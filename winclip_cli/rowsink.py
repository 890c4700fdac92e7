"""Rows in input order, each written (and flushed) once its overlay is on disk; the
tally of a run's rows and the exit code it means."""

from __future__ import annotations

import errno
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from .data import InputImage
from .decision import ANOMALOUS, CalibratedRule, label_of
from .engines import ImageResult
from .errors import ExitCode, ImageReadError, Interrupted, OutputError
from .interrupts import CriticalSection
from .outputs import Caption, ColourScale, ImageOutputs, write_image_outputs
from .planning import Plan
from .resume import resume_key
from .rows import Row, RowWriter, discard_stdout, stdout_rows

if TYPE_CHECKING:
    pass


# Rows waiting for their overlay; beyond this the run waits, so memory stays flat.
MAX_PENDING_IMAGES = 16


# Errors writing an overlay that no later image would escape: they stop the run.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


@dataclass
class Tally:
    """Counts of the rows of a run (resumed ones included), and the exit code they mean."""

    ok: int = 0
    errors: int = 0
    anomalous: int = 0
    pending: int = 0  # inputs left for the next run (--settle): not looked at

    def add(self, status: str, label: str) -> None:
        if status == "ok":
            self.ok += 1
        else:
            self.errors += 1
        if label == ANOMALOUS:
            self.anomalous += 1

    def exit_code(self, fail_on_anomaly: bool) -> ExitCode:
        # An anomaly is what a gating job asks about, so it outranks unreadable files.
        if fail_on_anomaly and self.anomalous:
            return ExitCode.ANOMALY
        if self.errors:
            return ExitCode.UNREADABLE
        # A gate must not pass on images it never looked at.
        return ExitCode.PENDING if self.pending else ExitCode.OK


def _p(rule: object, row: Row) -> float | None:
    return rule.p_value(row.score) if isinstance(rule, CalibratedRule) else None


class RowSink:
    """Rows in input order, each written (and flushed) once its overlay is on disk.

    Overlays are rendered by two threads while the model works on the next batch; at
    most MAX_PENDING_IMAGES rows wait for theirs, so memory stays flat."""

    def __init__(
        self,
        p: Plan,
        tally: Tally,
        section: CriticalSection,
        on_row: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.plan, self.tally, self.section, self.on_row = p, tally, section, on_row
        self.out = out = p.outputs
        # Rows replaced or out of order: a new file, renamed over the old one at the end.
        self.rewriting = p.resume.rewrite and p.rows_file is not None
        self.cursor = 0  # rewriting: p.images[:cursor] have their row in the new file
        self.scored_again: set[str] = set()
        self.broken = False
        appending = out.appending and bool(p.done) and not self.rewriting
        with self._writing_rows():
            stream: IO[str]
            if p.rows_file is None:
                stream = stdout_rows()
            elif self.rewriting:
                stream = p.rows_file.replacement()
            else:
                stream = p.rows_file.stream(appending)
            self.stream = stream
            self.writer = RowWriter(stream, out.fmt, p.cols, header=not appending and out.header)
            if self.rewriting:
                self._orphans_after(None)
        self.pending: deque[tuple[Row, Future[ImageOutputs] | None]] = deque()
        self.scale = ColourScale.of(p.calibration, p.rule)
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="winclip-images")
        if out.maps:
            out.out_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> RowSink:
        return self

    def __exit__(self, kind: object, *_exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.rewriting:
            self._commit(failed=kind is not None and kind is not Interrupted)
        if self.stream is not sys.stdout:
            with self._writing_rows():
                self.stream.close()

    def _commit(self, failed: bool) -> None:
        """Finish the new file with every row not yet in it (the old row of an input not
        scored again yet included) and rename it over the old one; then the manifest
        learns the new identities. On a failure writing it, the old file stays."""
        rows_file = self.plan.rows_file
        assert rows_file is not None
        if self.broken:
            rows_file.discard()
            return
        try:
            with self.section(), self._writing_rows():
                self._copy_until(None)
                self.stream.flush()
                rows_file.commit()
        except BaseException:
            rows_file.discard()
            if not failed:
                raise
            return
        manifest = self.plan.resume.manifest
        if manifest is not None and self.scored_again:
            fresh = self.plan.resume.fresh
            manifest.inputs.update({k: fresh[k] for k in self.scored_again if k in fresh})
            with self.section(), self._writing_rows():
                manifest.write(rows_file.path)

    def _orphans_after(self, key: str | None) -> None:
        for record in self.plan.resume.orphans.get(key, []):
            self.writer.copy(record)

    def _copy_until(self, key: str | None) -> None:
        """Rewriting: copy the kept rows of the inputs before ``key`` (None: all)."""
        images, done = self.plan.images, self.plan.done
        while self.cursor < len(images):
            current = resume_key(images[self.cursor].display)
            if current == key:
                return
            if current in done:
                self.writer.copy(done[current])
                self._orphans_after(current)
            self.cursor += 1

    def _write(self, row: Row) -> None:
        if not self.rewriting:
            self.writer.write(row)
            return
        key = resume_key(row.path)
        self._copy_until(key)
        self.writer.write(row)
        self._orphans_after(key)
        self.cursor += 1
        if key in self.plan.resume.again:
            self.scored_again.add(key)

    @contextmanager
    def _writing_rows(self) -> Iterator[None]:
        """A row that can't be written (disk full, I/O error) stops the run: one line."""
        try:
            yield
        except BrokenPipeError:
            raise
        except OSError as exc:
            self.broken = True  # a row may be torn: a replacement must not be committed
            if self.out.to_stdout:  # what is still buffered would fail again, at exit
                discard_stdout()
            raise OutputError(
                f"cannot write rows to {self.out.where}: {exc.strerror or exc}"
            ) from exc

    def add(self, image: InputImage, result: ImageResult) -> None:
        """Queue the row of one result (its overlay starts rendering); write what is ready."""
        if result.error is not None:
            row = Row(image.display, status="error", error=result.error)
            self.pending.append((row, None))
        else:
            row = Row(image.display, score=result.score, map_max=result.map_max)
            job = None
            if result.has_map:
                out, rule = self.out, self.plan.rule
                caption = Caption(result.score, label_of(rule, result.score), _p(rule, row))
                job = self.pool.submit(
                    write_image_outputs,
                    image,
                    result.grid_map,
                    out.out_dir,
                    out.save_maps,
                    result.tiles,
                    out.style,
                    pixel_threshold=None if rule is None else rule.pixel_threshold,
                    scale=self.scale,
                    caption=caption if rule is not None else None,
                    save_mask=out.save_masks,
                )
            self.pending.append((row, job))
        self.flush(block=len(self.pending) > MAX_PENDING_IMAGES)

    def flush(self, block: bool) -> None:
        """Write rows in input order as soon as their images are on disk."""
        while self.pending:
            row, job = self.pending[0]
            if job is not None and not (block or job.done()):
                return
            if job is not None:
                self._collect(row, job)
            row.label = label_of(self.plan.rule, row.score)
            row.p_value = _p(self.plan.rule, row)
            # The report's copy too: a Ctrl-C at the section's end must not leave a
            # written row out of the report.
            with self.section(), self._writing_rows():
                self._write(row)
                self.pending.popleft()
                self.tally.add(row.status, row.label)
                if self.on_row is not None:
                    self.on_row(self.writer.record(row))

    def _collect(self, row: Row, job: Future[ImageOutputs]) -> None:
        try:
            written = job.result()
            row.overlay, row.map, row.mask = written.overlay, written.map, written.mask
            row.anomalous_pixels = written.anomalous_pixels
        except (ImageReadError, OSError) as exc:
            if getattr(exc, "errno", None) in DISK_FULL:  # every next image would fail
                hint = self.out.resume_hint
                raise OutputError(
                    f"cannot write to --out {self.out.out_dir}: {getattr(exc, 'strerror', exc)}"
                    + (f"; make room{hint}" if hint else "")
                ) from exc
            # An error row has no score: this one could not be delivered whole.
            row.status, row.error = "error", f"overlay not written: {exc}"
            row.score = row.map_max = None
            row.anomalous_pixels = None
