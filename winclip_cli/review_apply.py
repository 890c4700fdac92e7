"""`winclip review apply`: a reviewer's false alarms taught back into a calibration.

WINCLIP.md, "Review verdicts taught back". ``into="bank"`` (the default): each false
alarm joins the few-shot reference bank (tiled as the calibration is), then every
calibration image is scored again under the new bank and the threshold follows; the
calibration images never join the bank, so they stay exchangeable with new good images
and the guarantee holds. A zero-shot calibration that gains a bank becomes WinCLIP+.
``into="calibration"``: the false alarms join the calibration set with their scores
under the unchanged bank; only images scoring above the old threshold ``c_(k)`` at the
run's rate are added, so ``k' >= k`` and the threshold never goes down at that rate.

``defect`` verdicts are never added. The new file's lineage records the old file's
fingerprint, each verdict file's sha256, every verdict, and each image added and how.
Everything is checked before the model loads, and nothing is written on an error.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .bank import ReferenceBank
from .conformal import Calibration, load_calibration, save_calibration
from .data import InputImage, open_image
from .errors import CalibrationError, ImageReadError, UsageError, exception_reason
from .manifest import file_identity
from .options import DEFAULT_FALSE_ALARM_RATE
from .overlaps import FileUse, refuse_overlaps
from .review_lineage import added_before, lineage_record
from .scoring import association
from .verdicts import DEFECT, FALSE_ALARM, Verdict, VerdictSet, read_verdicts

INTO = ("bank", "calibration")
# A bank entry this close (in (1 - cos) / 2) to one already there, for every patch of
# every tile, is the same image encoded again: different pictures are never this close.
SAME_FEATURES = 1e-5
MAX_NAMED = 10  # images named in one message


@dataclass
class ApplyRequest:
    """One `review apply`: verdict files, the old calibration, the new file, the mode.

    ``root``: the folder the rows' relative paths are relative to (default: the current
    one). ``false_alarm_rate``: the runs' rate, for ``into="calibration"``."""

    verdict_files: list[Path]
    calibration: Path
    output: Path
    into: str = "bank"
    root: Path | None = None
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE


@dataclass
class Candidate:
    """A false alarm to add: its verdict, its file, and its content hash."""

    verdict: Verdict
    path: Path
    sha256: str


@dataclass
class ApplyResult:
    """The new calibration (already written) and what happened on the way."""

    calibration: Calibration
    added: list[str]
    notes: list[str] = field(default_factory=list)
    thresholds: tuple[float, float] | None = None  # old, new at false_alarm_rate


class Scoring(Protocol):
    """The model side of `review apply`."""

    def settings(self, bank: ReferenceBank | None) -> dict[str, Any]:
        """The calibration fingerprint of runs with this model and ``bank``."""
        ...

    def bank_part(self, path: Path) -> ReferenceBank:
        """One image's bank entries: each of its tiles, as the calibration tiles."""
        ...

    def score(
        self, images: Sequence[InputImage], bank: ReferenceBank | None
    ) -> list[tuple[float, float]]:
        """(image score, map maximum) of each image under ``bank``; UsageError naming an
        image that cannot be read or scored."""
        ...


def resolve(name: str, root: Path | None) -> Path:
    """A path as the rows file wrote it: relative to ``root`` when given, else as is."""
    path = Path(name)
    return path if root is None or path.is_absolute() else root / path


def _named(problems: Sequence[str]) -> str:
    more = f"; and {len(problems) - MAX_NAMED} more" if len(problems) > MAX_NAMED else ""
    return "; ".join(problems[:MAX_NAMED]) + more


def _refuse_overwriting(request: ApplyRequest) -> None:
    """No command overwrites a file it reads: -o is neither OLD.cal nor a verdict file
    (overlaps.refuse_overlaps: under any name)."""
    reads = [FileUse("the --calibration file", request.calibration)]
    reads += [FileUse("the verdict file", path) for path in request.verdict_files]
    refuse_overlaps(reads, [FileUse("-o", request.output)])


def _source_files(verdicts: VerdictSet, verdict: Verdict) -> str:
    key = os.path.normpath(verdict.path)
    return ", ".join(str(p) for p in verdicts.sources.get(key, []))


def check_false_alarms(verdicts: VerdictSet, root: Path | None) -> list[Candidate]:
    """Every false alarm's file, read and decoded now; UsageError naming each image that
    is missing or unreadable and the verdict files that name it."""
    candidates, problems = [], []
    for verdict in verdicts.with_verdict(FALSE_ALARM):
        path = resolve(verdict.path, root)
        try:
            open_image(path).close()
            digest = file_identity(path)["sha256"]
        except (OSError, ImageReadError) as exc:
            problems.append(
                f"{verdict.path} ({_source_files(verdicts, verdict)}): {exception_reason(exc)}"
            )
            continue
        candidates.append(Candidate(verdict, path, digest))
    if problems:
        where = " against --root " + str(root) if root is not None else ""
        raise UsageError(
            f"verdicts name images that cannot be read{where}: {_named(problems)}; nothing written"
        )
    return candidates


def _calibration_hashes(cal: Calibration, root: Path | None) -> dict[str, str]:
    """Content hash -> name of the calibration images that can be read."""
    hashes = {}
    for name in cal.images:
        try:
            hashes[file_identity(resolve(name, root))["sha256"]] = name
        except OSError:
            continue
    return hashes


def sort_out(
    candidates: list[Candidate], cal: Calibration, root: Path | None
) -> tuple[list[Candidate], list[str]]:
    """The candidates to add, and a note for each one skipped: a second name of one
    file, a calibration image (by name or content), or an image added before."""
    in_set = _calibration_hashes(cal, root)
    names = {os.path.normpath(n) for n in cal.images}
    before = added_before(cal)
    kept: list[Candidate] = []
    seen: dict[str, str] = {}
    notes = []
    for c in candidates:
        name = c.verdict.path
        if c.sha256 in seen:
            notes.append(f"{name}: the same image as {seen[c.sha256]}, skipped")
        elif c.sha256 in in_set or os.path.normpath(name) in names:
            notes.append(f"{name}: already in the calibration set, skipped")
        elif c.sha256 in before:
            notes.append(f"{name}: already added (into the {before[c.sha256]}), skipped")
        else:
            kept.append(c)
        seen.setdefault(c.sha256, name)
    return kept, notes


# ----------------------------------------------------------------------------- banks


def already_in(part: ReferenceBank, bank: ReferenceBank | None) -> bool:
    """Whether every patch of ``part`` is already in ``bank`` (the same image again)."""
    if bank is None:
        return False
    tokens = part.patch_tokens.detach().float().cpu()
    distances = association(tokens, bank.patch_tokens.detach().float().cpu())
    return bool(distances.max() <= SAME_FEATURES)


def merge_banks(old: ReferenceBank | None, parts: Sequence[ReferenceBank]) -> ReferenceBank:
    """One bank holding ``old``'s entries and then each part's, pooled as WINCLIP.md's
    bank is (patch tokens and each scale's windows, all references together)."""
    banks = ([old] if old is not None else []) + list(parts)
    if not banks:
        raise ValueError("no bank to merge")
    meta = dict(banks[0].meta)
    meta["num_images"] = sum(b.num_images for b in banks)
    if any("references" in b.meta for b in banks):
        meta["references"] = sum(int(b.meta.get("references", 1)) for b in banks)
    cpu = [b.to("cpu") for b in banks]
    windows = {k: torch.cat([b.windows[k] for b in cpu]) for k in cpu[0].windows}
    return ReferenceBank(torch.cat([b.patch_tokens for b in cpu]), windows, meta)


# ----------------------------------------------------------------------------- the modes


def _inputs(named: Sequence[tuple[str, Path]]) -> list[InputImage]:
    return [InputImage(path, name, name) for name, path in named]


def _rescored_images(cal: Calibration, root: Path | None) -> list[InputImage]:
    """The calibration images, every one readable, or UsageError naming those that are not."""
    named = [(name, resolve(name, root)) for name in cal.images]
    missing = [name for name, path in named if not path.is_file()]
    if missing:
        where = f"--root {root}" if root is not None else "the current folder"
        raise UsageError(
            f"--into bank scores every calibration image again; not found from {where}: "
            f"{_named(missing)}; nothing written"
        )
    return _inputs(named)


def into_bank(
    cal: Calibration, kept: list[Candidate], scoring: Scoring, root: Path | None
) -> tuple[Calibration, list[Candidate], list[str]]:
    """The calibration with ``kept`` in its bank and every image scored again."""
    images = _rescored_images(cal, root)
    parts, added, notes = [], [], []
    for c in kept:
        part = scoring.bank_part(c.path)
        if already_in(part, cal.bank):
            notes.append(f"{c.verdict.path}: already in the reference bank, skipped")
            continue
        parts.append(part)
        added.append(c)
    if not parts:
        return cal, added, notes
    bank = merge_banks(cal.bank, parts)
    scored = scoring.score(images, bank)
    scores = np.array([s for s, _ in scored])
    maxima = np.array([m for _, m in scored])
    new = Calibration(
        scoring.settings(bank),
        scores,
        maxima,
        bank,
        list(cal.images),
        model_record=cal.model_record,
    )
    return new, added, notes


def into_calibration(
    cal: Calibration, kept: list[Candidate], scoring: Scoring, rate: float
) -> tuple[Calibration, list[Candidate], list[str]]:
    """The calibration with ``kept`` among its known-good images, each scored under the
    unchanged bank; an image not above the old threshold at ``rate`` is skipped (it
    could lower the threshold)."""
    notes = []
    if cal.bank is not None:  # a reference matches itself: its score would be biased low
        references = [c for c in kept if already_in(scoring.bank_part(c.path), cal.bank)]
        notes += [f"{c.verdict.path}: a reference image of the bank, skipped" for c in references]
        kept = [c for c in kept if c not in references]
    if not kept:
        return cal, [], notes
    cut = cal.threshold(rate)
    scored = scoring.score(_inputs([(c.verdict.path, c.path) for c in kept]), cal.bank)
    added, scores, maxima = [], [], []
    for c, (score, peak) in zip(kept, scored, strict=True):
        if score <= cut:
            notes.append(
                f"{c.verdict.path}: scores {score:.6f}, not above the threshold {cut:.6f} at "
                f"false-alarm rate {rate:g}: adding it could lower the threshold, skipped"
            )
            continue
        added.append(c)
        scores.append(score)
        maxima.append(peak)
    if not added:
        return cal, added, notes
    new_maxima = None if cal.map_maxima is None else np.concatenate([cal.map_maxima, maxima])
    new = Calibration(
        dict(cal.settings),
        np.concatenate([cal.scores, scores]),
        new_maxima,
        cal.bank,
        [*cal.images, *(c.verdict.path for c in added)],
        model_record=cal.model_record,  # the same model: a later run still finds it
    )
    return new, added, notes


def _thresholds(old: Calibration, new: Calibration, rate: float) -> tuple[float, float] | None:
    try:
        return old.threshold(rate), new.threshold(rate)
    except CalibrationError:  # too few images for this rate: nothing to compare
        return None


def apply_verdicts(
    request: ApplyRequest,
    make_scoring: Callable[[Calibration], Scoring],
    say: Callable[[str], None] = lambda _line: None,
) -> ApplyResult:
    """Teach the false alarms of ``request.verdict_files`` back into a new calibration
    file (see the module doc); returns what was done. Raises UsageError (exit 2) for bad
    verdict files, unreadable images or calibration images, and writes nothing then."""
    if request.into not in INTO:
        raise UsageError(f"--into {request.into!r}: use {' or '.join(INTO)}")
    _refuse_overwriting(request)
    verdicts = read_verdicts(request.verdict_files)
    old = load_calibration(request.calibration)
    old_sha256 = file_identity(request.calibration)["sha256"]
    candidates = check_false_alarms(verdicts, request.root)
    kept, notes = sort_out(candidates, old, request.root)
    notes = [*verdicts.notes, *notes]
    defects = len(verdicts.with_verdict(DEFECT))
    if defects:
        notes.append(f"{defects} defect verdict(s): never added, kept in the lineage")
    for line in notes:
        say(line)
    if kept:
        scoring = make_scoring(old)
        if request.into == "bank":
            new, added, more = into_bank(old, kept, scoring, request.root)
        else:
            new, added, more = into_calibration(old, kept, scoring, request.false_alarm_rate)
        notes += more
        for line in more:
            say(line)
    else:
        new, added = old, []
    if not added:
        raise UsageError(
            f"no false alarm left to add ({len(candidates)} false alarm(s), "
            f"{defects} defect(s)): {request.output} not written"
        )
    record = lineage_record(
        request.into,
        request.calibration,
        old,
        old_sha256,
        verdicts,
        [(c.verdict.path, c.sha256) for c in added],
        notes,
        request.false_alarm_rate,
    )
    new.lineage = [*old.lineage, record]
    save_calibration(new, request.output)
    result = ApplyResult(new, [c.verdict.path for c in added], notes)
    result.thresholds = _thresholds(old, new, request.false_alarm_rate)
    return result
