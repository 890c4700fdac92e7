"""The model a calibration or a bank file was made with, recorded in it, so a run that
names no model uses that one: its name, pretrained tag and the weights file it read
(path and fingerprint). Never a download: a run that would need other weights than the
ones here stops with exit 2, naming the model and weights it needs.

The loaded weights' content hash (``weights_id``) is still compared after loading; the
file's fingerprint here is a cheap check, before anything is built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError
from .options import LOCAL_DIR, ModelOptions

SAMPLE_BYTES = 1 << 20  # the fingerprint hashes the first and last MiB, and the size
# CLI parameter names that choose the model: any of them typed, and the record is unused.
MODEL_OPTIONS = ("model", "pretrained", "weights")
PROVENANCE_KEY = "provenance"  # where calibrations and bank files keep the record


def weights_fingerprint(path: str | os.PathLike[str]) -> str:
    """Size and a hash of the first and last MiB of a weights file (OSError if unreadable):
    a copy keeps it, another checkpoint does not; reading 0.8 GB would cost seconds."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(SAMPLE_BYTES))
        if size > SAMPLE_BYTES:
            handle.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            digest.update(handle.read(SAMPLE_BYTES))
    return f"{size}:{digest.hexdigest()[:24]}"


@dataclass(frozen=True)
class ModelRecord:
    """What a file records of the model it was made with."""

    model: str
    pretrained: str | None  # the open_clip tag; None for --weights FILE or local-dir:
    weights_file: str  # the checkpoint read, absolute
    weights_fingerprint: str  # weights_fingerprint(weights_file) when it was read

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: object) -> ModelRecord | None:
        """The record in a file's metadata; None when there is none (an older file)."""
        if not isinstance(record, dict):
            return None
        try:
            tag = record["pretrained"]
            return cls(
                str(record["model"]),
                None if tag is None else str(tag),
                str(record["weights_file"]),
                str(record["weights_fingerprint"]),
            )
        except (KeyError, TypeError):
            return None

    def describe(self) -> str:
        """'model M with weights TAG (FILE)' or 'model M with weights FILE', for messages."""
        if self.pretrained:
            return f"model {self.model} with weights {self.pretrained} ({self.weights_file})"
        return f"model {self.model} with weights {self.weights_file}"


def record_of(model: str, pretrained: str | None, checkpoint: str) -> dict[str, Any] | None:
    """The record of a loaded model (Backbone.model_name, .pretrained, .checkpoint); None
    when the checkpoint can't be read again (it is then not recorded)."""
    try:
        fingerprint = weights_fingerprint(checkpoint)
    except OSError:
        return None
    name = model
    if name.startswith(LOCAL_DIR):  # the folder, wherever the next run starts
        name = LOCAL_DIR + os.path.abspath(name[len(LOCAL_DIR) :])
    return ModelRecord(name, pretrained, os.path.abspath(checkpoint), fingerprint).to_json()


def _unchanged(record: ModelRecord) -> bool:
    try:
        return weights_fingerprint(record.weights_file) == record.weights_fingerprint
    except OSError:
        return False


def model_from_record(
    m: ModelOptions,
    given: frozenset[str],
    record: object,
    what: str,
    cached: Callable[[str, str], Path | None],
) -> ModelOptions:
    """The model options of a run with ``what`` (e.g. "--calibration x.cal"), which
    recorded ``record``. Unchanged when the user chose a model (MODEL_OPTIONS in
    ``given``: a contradiction is refused once loaded) or the file records none.

    Else the recorded model, with the recorded weights file when it is still there and
    unchanged, else the tag's file in the local cache (``cached(model, tag)``: found
    without any download, None when absent). Neither: UsageError (exit 2) naming the
    model and weights it needs.
    """
    found = ModelRecord.from_json(record)
    if found is None or any(option in given for option in MODEL_OPTIONS):
        return m
    use = dataclasses.replace(m, model=found.model, pretrained=found.pretrained)
    if _unchanged(found):
        return dataclasses.replace(use, weights=Path(found.weights_file))
    if found.pretrained and not found.model.startswith(LOCAL_DIR):
        in_cache = cached(found.model, found.pretrained)
        if in_cache is not None:
            return dataclasses.replace(use, weights=in_cache)
        raise UsageError(
            f"{what} was made with {found.describe()}, which is not here (nothing is "
            f"downloaded for it): run `winclip download --model {found.model} --pretrained "
            f"{found.pretrained}`, or pass --weights FILE with those weights"
        )
    state = "has changed" if Path(found.weights_file).exists() else "is gone"
    raise UsageError(
        f"{what} was made with {found.describe()}, and that file {state}: pass --model "
        f"{found.model} --weights FILE with the same weights"
    )
