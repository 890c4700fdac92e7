"""The run manifest: a sidecar ``FILE.manifest.json`` beside ``-o FILE``.

It records the settings the rows were made with and each input's identity (size,
modification time, content hash), so that ``--resume`` can refuse other settings and
score again the files that changed since their row. Written atomically, while the run
holds the rows file's lock; it never holds rows, only what they were made from.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from .atomic import atomic_write
from .errors import DamagedFileError, UsageError
from .schemas import Count, FileSchema, describe
from .version import __version__

SUFFIX = ".manifest.json"
FORMAT = "winclip-run-manifest"
VERSION = 1
_CHUNK = 1 << 20

Identity = dict[str, Any]  # {"size": int, "mtime_ns": int, "sha256": str}


def manifest_path(rows: Path) -> Path:
    """Where the manifest of the rows file ``rows`` lives."""
    return rows.with_name(rows.name + SUFFIX)


def file_sha256(path: Path) -> str:
    """The content hash of a file: the one place files are hashed (OSError when
    unreadable)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_identity(path: Path) -> Identity:
    """Size, modification time and content hash of a file (OSError when unreadable)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the run forever, a device never end
        raise OSError(f"{path} is not a regular file")
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(path)}


def still_the_same(recorded: Identity | None, path: Path) -> tuple[bool, Identity | None]:
    """Whether ``path`` still holds what ``recorded`` describes, and its identity now.

    Size and mtime equal: the same (no read). Otherwise the content hash decides, so a
    file touched or copied over with the same bytes keeps its row. No record (a row from
    an older version): the same, as before manifests."""
    if recorded is None:
        return True, None
    try:
        st = os.stat(path)
        if (st.st_size, st.st_mtime_ns) == (recorded.get("size"), recorded.get("mtime_ns")):
            return True, recorded
        now = file_identity(path)
    except OSError:
        return False, None  # gone or unreadable: scoring it again makes its error row
    return now["sha256"] == recorded.get("sha256"), now


def settling(path: Path, settle: float, now: float | None = None) -> bool:
    """True when ``path`` was modified within the last ``settle`` seconds (still being
    written, perhaps); a clock a little off either way counts as recent too."""
    if settle <= 0:
        return False
    try:
        mtime = os.stat(path).st_mtime_ns / 1e9
    except OSError:
        return False  # let the run make its error row
    return abs((time.time() if now is None else now) - mtime) < settle


def digest_of(value: Any) -> str:
    """A short stable hash of JSON-able data (prompt lists, reference identities)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class RunManifest:
    """What a rows file was made with: ``settings`` (compared on --resume, by name),
    the weights' fingerprint (known once the model is loaded) and input identities."""

    settings: dict[str, Any]
    weights: str | None = None
    inputs: dict[str, Identity] = field(default_factory=dict)  # resume key -> identity
    # What a report made later from the rows shows (report_context): the header, the
    # threshold, the calibration's scores. Not compared on --resume.
    context: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        data = {
            "format": FORMAT,
            "version": VERSION,
            "winclip": __version__,
            "settings": self.settings,
            "weights": self.weights,
            "inputs": self.inputs,
            "context": self.context,
        }
        # ASCII with escapes: names that are not UTF-8 (surrogates) round-trip.
        return (json.dumps(data, ensure_ascii=True, indent=1) + "\n").encode()

    def write(self, rows: Path) -> None:
        """Replace the manifest of ``rows`` atomically (the caller holds the rows lock)."""
        data = self.to_json()
        atomic_write(manifest_path(rows), lambda f: f.write(data))


class _InputIdentity(FileSchema):
    size: Count
    mtime_ns: int
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _ManifestFile(FileSchema):
    """What ``RunManifest.to_json`` writes (version 1)."""

    format: Literal["winclip-run-manifest"]
    version: Literal[1]
    winclip: str | None = None
    settings: dict[str, Any]
    weights: str | None = None
    inputs: dict[str, _InputIdentity]
    context: dict[str, Any] | None = None  # what a later report shows (report_context)


class ManifestDamagedError(DamagedFileError):
    """A manifest that is not one (cut off, not text, an entry of the wrong kind);
    ``problem`` says what is wrong with it."""

    def __init__(self, message: str, problem: str) -> None:
        super().__init__(message)
        self.problem = problem


def _damaged(rows: Path, problem: str) -> ManifestDamagedError:
    return ManifestDamagedError(
        f"cannot resume: the run manifest {manifest_path(rows)} is damaged ({problem}), so "
        f"the settings and files of {rows} cannot be checked; resume with "
        "--rebuild-manifest to rehash the inputs its rows name and record this command "
        "line's settings, or remove both files to start over",
        problem,
    )


def _manifest_data(rows: Path) -> Any:
    """The manifest's JSON value; None when there is none; ManifestDamagedError when the
    bytes are not JSON text (cut off mid-write by hand, a stray byte)."""
    path = manifest_path(rows)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read the run manifest {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("ascii")  # written with escapes: any other byte is damage
    except UnicodeDecodeError as exc:
        raise _damaged(rows, f"byte {exc.start} is not text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _damaged(rows, f"not JSON at line {exc.lineno} column {exc.colno}") from None


def read_manifest(rows: Path) -> RunManifest | None:
    """The manifest of ``rows``. None when there is none, or when an older winclip wrote
    it (its ``version`` says so: resumed as before manifests). A damaged one raises
    ManifestDamagedError, one from a newer winclip UsageError (both exit 2): neither
    may switch the resume checks off."""
    data = _manifest_data(rows)
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _damaged(rows, "not a winclip run manifest")
    version = data.get("version")
    if isinstance(version, int) and not isinstance(version, bool):
        if version > VERSION:
            raise UsageError(
                f"cannot resume: {manifest_path(rows)} was written by a newer winclip "
                f"(manifest version {version}; this one reads {VERSION}): resume with it"
            )
        if version < VERSION:
            return None
    try:
        checked = _ManifestFile.model_validate(data)
    except ValidationError as exc:
        raise _damaged(rows, describe(exc)) from None
    inputs = {
        key: entry.model_dump(include={"size", "mtime_ns", "sha256"})
        for key, entry in checked.inputs.items()
    }
    return RunManifest(checked.settings, checked.weights, inputs, checked.context)


def rebuilt_manifest(
    settings: dict[str, Any], inputs: dict[str, Path], weights: str | None = None
) -> tuple[RunManifest, list[str]]:
    """A manifest made anew for rows whose manifest is damaged (--rebuild-manifest):
    ``settings`` from this command line, each input the rows name (resume key -> path)
    hashed as it is now. Also the keys of inputs that could not be read (their rows are
    scored again). The caller warns: the rows' real settings are taken on trust."""
    manifest = RunManifest(settings, weights)
    unreadable = []
    for key, path in inputs.items():
        try:
            manifest.inputs[key] = file_identity(path)
        except OSError:
            unreadable.append(key)
    return manifest, unreadable


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    return json.dumps(value) if not isinstance(value, str) else value


def refuse_other_settings(rows: Path, recorded: dict[str, Any], current: dict[str, Any]) -> None:
    """UsageError naming the first setting in which this run differs from the file's."""
    names = [*current, *(k for k in recorded if k not in current)]
    for name in names:
        old, new = recorded.get(name), current.get(name)
        if old != new:
            raise UsageError(
                f"cannot resume: {rows} was written with another {name}: {_shown(old)} "
                f"there, {_shown(new)} now; resume with the first run's settings, or write "
                "to another file"
            )


def refuse_other_weights(rows: Path, recorded: str | None, loaded: str) -> None:
    """UsageError when the rows were made with other weights than the ones loaded."""
    if recorded is not None and recorded != loaded:
        raise UsageError(
            f"cannot resume: {rows} was written with other weights (fingerprint {recorded} "
            f"there, {loaded} now); resume with the first run's --model/--weights/--pretrained"
        )
