"""`--resume`: which rows of the -o file are kept, which inputs are scored (again) and which
wait for the next run, and whether the file is replaced (written beside, then renamed).

`prepare` decides it all before the model loads; the pipeline's RowSink follows it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import InputImage
from .decision import DecisionRule
from .errors import UsageError
from .manifest import (
    Identity,
    ManifestDamagedError,
    RunManifest,
    file_identity,
    manifest_path,
    read_manifest,
    rebuilt_manifest,
    refuse_other_settings,
    settling,
    still_the_same,
)
from .options import RunOptions
from .resume_rows import check_rows, gone_error_rows, one_row_per_input
from .rows import SCORE_DECIMALS, RowWriter, read_finished_rows
from .rows_file import RowsFile


@dataclass
class Resumed:
    """What --resume found beyond the rows: the manifest to write, the rows to score
    again (error rows, changed files), the files left for the next run."""

    manifest: RunManifest | None = None  # written once the weights are known; None: no sidecar
    recorded_weights: str | None = None  # the file's weights fingerprint, compared after loading
    legacy: bool = False  # a rows file without a manifest (an older version): as before
    again: dict[str, str] = field(default_factory=dict)  # key -> why ("error row", "changed")
    fresh: dict[str, Identity] = field(default_factory=dict)  # their identity now (after commit)
    pending: list[InputImage] = field(default_factory=list)  # modified within --settle
    rewrite: bool = False  # rows replaced or out of order: write a new file, then rename
    orphans: dict[str | None, list[dict[str, str]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # warnings the run says once
    repaired: bool = False  # the file held repeated rows or gone files' error rows
    rebuilt: bool = False  # --rebuild-manifest made the manifest anew

    def kept(self, done: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        """The rows of ``done`` that stay as they are (not scored again): with the rows
        this run writes, exactly the rows of the finished file (its report, its tally)."""
        return {k: r for k, r in done.items() if k not in self.again}

    def not_yet_redone(
        self, done: dict[str, dict[str, str]], written: set[str]
    ) -> list[dict[str, str]]:
        """The old rows of inputs to score again that this run did not reach (it was
        interrupted): they stay in the file, so its report holds them too."""
        return [r for k, r in done.items() if k in self.again and k not in written]


def _recorded(opts: RunOptions, out: Path, resumed: Resumed) -> tuple[RunManifest | None, bool]:
    """The file's manifest (None: none, or an older winclip's), and whether it is to be
    rebuilt: damaged, with --rebuild-manifest (else ManifestDamagedError, exit 2)."""
    try:
        return read_manifest(out), False
    except ManifestDamagedError as exc:
        if not opts.rebuild_manifest:
            raise
        resumed.notes.append(
            f"the run manifest {manifest_path(out)} is damaged ({exc.problem}): rebuilt "
            "(--rebuild-manifest) from the inputs its rows name, hashed now, and this "
            "command line's settings, which are taken on trust"
        )
        resumed.rebuilt = True
        return None, True


def _read_resume(
    opts: RunOptions,
    cols: list[str],
    rule: DecisionRule | None,
    settings: dict[str, Any],
    resumed: Resumed,
    older: dict[str, Any],
) -> tuple[dict[str, dict[str, str]], RunManifest | None]:
    """Rows already in -o FILE (--resume), one per input by resume_key (the last whole
    row wins), each checked against the row schema, and the file's manifest; refuses
    other settings than the file's (the file would contradict itself; ``older``: what a
    manifest written before a setting was recorded stands for). Sets
    ``resumed.legacy`` when the file has rows but no manifest (an older version)."""
    assert opts.output is not None
    out = Path(opts.output)
    if not (opts.resume and out.is_file()):
        return {}, None
    recorded, rebuild = _recorded(opts, out, resumed)
    if recorded is not None:
        refuse_other_settings(out, {**older, **recorded.settings}, settings)
    try:
        rows = read_finished_rows(out, opts.fmt, cols)
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot resume: {exc}") from exc
    one = one_row_per_input(check_rows(rows, opts.fmt, str(out)), resume_key)
    if one.note is not None:
        resumed.notes.append(f"{out}: {one.note}")
        resumed.repaired = True
    if rule is not None:
        _refuse_other_rule(out, list(one.rows.values()), rule)
    if rebuild:
        paths = {key: Path(key) for key in one.rows}
        recorded, _unreadable = rebuilt_manifest(settings, paths)
    resumed.legacy = bool(rows) and recorded is None
    return one.rows, recorded


def _refuse_other_rule(out: Path, rows: list[dict[str, str]], rule: DecisionRule) -> None:
    """UsageError when the rows were labelled by another decision rule than this run's."""
    for row in rows:
        score = float(row["score"]) if row.get("score") not in (None, "") else None
        if "p_value" in row and _p_text(row["p_value"]) != _p_text(rule.p_value(score)):
            raise UsageError(
                f"cannot resume: {out} was written with another calibration or "
                f"--false-alarm-rate ({row['path']} has p_value {row['p_value']!r}); "
                "resume with the first run's --calibration and --false-alarm-rate"
            )
        if row["label"] != rule.label(score):
            raise UsageError(
                f"cannot resume: {out} was labelled with another decision rule "
                f"({row['path']} is {row['label']!r} at {row['score']}); "
                "resume with the first run's --threshold, or --calibration and "
                "--false-alarm-rate"
            )


def _drop_gone(done: dict[str, dict[str, str]], images: list[InputImage], resumed: Resumed) -> None:
    """Error rows of files that are gone (not an input, not on disk) leave the file: said
    once, here, rather than keeping every later run at exit 3."""
    inputs = {resume_key(im.display) for im in images}
    orphans = {k: r for k, r in done.items() if k not in inputs}
    gone = gone_error_rows(orphans, os.path.exists)
    if not gone:
        return
    for key in gone:
        del done[key]
    names = ", ".join(gone[:5]) + (f" and {len(gone) - 5} more" if len(gone) > 5 else "")
    resumed.notes.append(f"{len(gone)} error row(s) of files that are gone, dropped: {names}")
    resumed.repaired = True


def _repair(rows_file: RowsFile, fmt: str, cols: list[str], rows: list[dict[str, str]]) -> None:
    """Write the -o file anew with exactly ``rows`` (beside it, then renamed over it: a
    crash keeps the old file; the lock stays held)."""
    stream = rows_file.replacement()
    try:
        writer = RowWriter(stream, fmt, cols)
        for record in rows:
            writer.copy(record)
        rows_file.commit()
    except BaseException:
        rows_file.discard()
        raise
    finally:
        stream.close()


def _sort_out(
    opts: RunOptions,
    images: list[InputImage],
    done: dict[str, dict[str, str]],
    recorded: RunManifest | None,
    resumed: Resumed,
) -> list[InputImage]:
    """Decide per input: keep its row, score it (again), or leave it for the next run;
    fills ``resumed`` and the manifest's identities; returns what to score."""
    manifest = resumed.manifest
    known = recorded.inputs if recorded is not None else {}
    todo: list[InputImage] = []
    for image in images:
        key = resume_key(image.display)
        if opts.resume and settling(image.path, opts.settle):
            resumed.pending.append(image)  # still being written, perhaps: next run
            if manifest is not None and key in known:
                manifest.inputs[key] = known[key]
            continue
        if key in done and done[key].get("status") == "ok" and not os.path.lexists(key):
            # Deleted since its row was written (a camera folder archives old photos):
            # the row stays, as it would for a file no longer given.
            if manifest is not None and key in known:
                manifest.inputs[key] = known[key]
            continue
        if key in done and not resumed.legacy:
            same, now = still_the_same(known.get(key), image.path)
            error = done[key].get("status") == "error" and opts.retry_errors
            if same and not error:
                if manifest is not None and now is not None:
                    manifest.inputs[key] = now
                continue
            resumed.again[key] = "error row" if error and same else "changed"
            if manifest is not None and key in known:  # until the new row is in place
                manifest.inputs[key] = known[key]
        elif key in done:
            continue  # an older version's row: kept, as before manifests
        todo.append(image)
        try:
            identity = file_identity(image.path)
        except OSError:
            continue  # unreadable: its error row is scored again next time anyway
        if key in resumed.again:
            resumed.fresh[key] = identity
        elif manifest is not None:
            manifest.inputs[key] = identity
    return todo


def _layout(
    images: list[InputImage],
    todo: list[InputImage],
    done: dict[str, dict[str, str]],
    resumed: Resumed,
) -> None:
    """Whether the file must be written anew (a row replaced, or a new input before a
    kept row: one row per input, in input order), and where rows of no input go."""
    position = {resume_key(im.display): i for i, im in enumerate(images)}
    kept = [position[k] for k in done if k in position and k not in resumed.again]
    first_new = min((position[resume_key(im.display)] for im in todo), default=len(images))
    resumed.rewrite = bool(resumed.again) or (
        not resumed.legacy and bool(kept) and first_new < max(kept)
    )
    previous: str | None = None
    for key, row in done.items():  # rows of files no longer given: kept, where they were
        if key in position:
            previous = key
        else:
            resumed.orphans.setdefault(previous, []).append(row)


def _p_text(value: object) -> str:
    """A p-value as the rows print it, to compare a resumed file's with this run's."""
    if value in (None, ""):
        return ""
    return f"{float(str(value)):.{SCORE_DECIMALS}f}"


def resume_key(path: str) -> str:
    """Rows match inputs by absolute path, so `./a.png`, `a.png` and `/abs/a.png` are one;
    symbolic links are not resolved: two names of one file are two inputs, two rows."""
    return os.path.abspath(path)


def prepare(
    opts: RunOptions,
    images: list[InputImage],
    cols: list[str],
    rule: DecisionRule | None,
    settings: dict[str, Any],
    rows_file: RowsFile,
    older: dict[str, Any] | None = None,
) -> tuple[dict[str, dict[str, str]], list[InputImage], Resumed]:
    """What --resume keeps of -o FILE (held by ``rows_file``) and what this run scores:
    (rows already there by resume_key, inputs to score, the rest of the decision).
    Without --resume (or a new file): nothing kept, every input scored."""
    resumed = Resumed()
    done, recorded = _read_resume(opts, cols, rule, settings, resumed, older or {})
    rows_file.follow()  # a repair may have replaced the file
    if done and images and not any(resume_key(im.display) in done for im in images):
        raise UsageError(
            f"cannot resume: none of the {len(done)} row(s) in {opts.output} is an input "
            "of this run (other inputs, or relative paths from another folder?)"
        )
    _drop_gone(done, images, resumed)
    if resumed.repaired and rows_file.regular:
        _repair(rows_file, opts.fmt, cols, list(done.values()))
    if rows_file.regular:
        resumed.manifest = RunManifest(settings)
        resumed.recorded_weights = recorded.weights if recorded is not None else None
    todo = _sort_out(opts, images, done, recorded, resumed)
    _layout(images, todo, done, resumed)
    return done, todo, resumed
