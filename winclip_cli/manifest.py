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
from typing import Any

from .atomic import atomic_write
from .errors import UsageError
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

    def to_json(self) -> bytes:
        data = {
            "format": FORMAT,
            "version": VERSION,
            "winclip": __version__,
            "settings": self.settings,
            "weights": self.weights,
            "inputs": self.inputs,
        }
        # ASCII with escapes: names that are not UTF-8 (surrogates) round-trip.
        return (json.dumps(data, ensure_ascii=True, indent=1) + "\n").encode()

    def write(self, rows: Path) -> None:
        """Replace the manifest of ``rows`` atomically (the caller holds the rows lock)."""
        data = self.to_json()
        atomic_write(manifest_path(rows), lambda f: f.write(data))


def read_manifest(rows: Path) -> RunManifest | None:
    """The manifest of ``rows``; None when there is none or it is unreadable."""
    try:
        data = json.loads(manifest_path(rows).read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    settings, inputs = data.get("settings"), data.get("inputs")
    if not isinstance(settings, dict) or not isinstance(inputs, dict):
        return None
    weights = data.get("weights")
    return RunManifest(settings, weights if isinstance(weights, str) else None, inputs)


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
