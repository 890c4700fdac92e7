"""Schemas of the torch files winclip writes: reference banks and calibrations.

They are checked right after ``torch.load`` (weights_only), so a hand-edited or damaged
file is refused with its file and field (exit 2), never met later as a crash: a string
where a count belongs, a null where the references go, an empty class or prompt list,
a temperature that is not positive.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import AfterValidator, Field

from .atomic import atomic_write
from .errors import WinclipError
from .prompts import PromptLists, clean_class_name
from .schemas import NOT_NULL, Count, FileSchema, PositiveCount

BANK_FORMAT = "winclip-reference-bank"
BANK_VERSION = 1
CALIBRATION_FORMAT = "winclip-calibration"
CALIBRATION_VERSION = 1


def write_torch_file(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write a payload of plain tensors and strings (safe to load) through the one write
    path."""
    atomic_write(Path(path), lambda f: torch.save(payload, f))


def read_torch_file(path: Path, kind: str, error: type[WinclipError], mmap: bool = False) -> Any:
    """The payload of a file written by write_torch_file, loaded weights_only; ``error``
    naming the ``kind`` of file (e.g. "pool file") when it is missing or not one."""
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles before failing
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError as exc:
        raise error(f"{kind} {path} not found") from exc
    except Exception as exc:  # truncated, random bytes, a folder, unsafe pickle...
        raise error(f"{path} is not a readable {kind}") from exc


def _matrix(value: torch.Tensor) -> torch.Tensor:
    if value.ndim != 2 or not value.is_floating_point():
        raise ValueError(f"must be a 2-D float tensor, got shape {tuple(value.shape)}")
    return value


def _scores(value: torch.Tensor) -> torch.Tensor:
    if value.ndim != 1 or not value.is_floating_point() or value.numel() == 0:
        raise ValueError(f"must be a non-empty 1-D float tensor, got shape {tuple(value.shape)}")
    return value


Matrix = Annotated[torch.Tensor, AfterValidator(_matrix)]
Scores = Annotated[torch.Tensor, AfterValidator(_scores)]
Scale = Annotated[str, Field(pattern=r"^[1-9][0-9]*$")]  # a window side, as a dict key
Pair = Annotated[list[PositiveCount], Field(min_length=2, max_length=2)]
GridText = Annotated[str, Field(pattern=r"^[1-9][0-9]*x[1-9][0-9]*$")]  # "3x3"
Overlap = Annotated[float, Field(ge=0, lt=1)]


class BankMeta(FileSchema):
    """What a bank records about how it was built. Absent fields are allowed (older or
    hand-made banks: the model check refuses what does not fit); present ones are typed,
    and a null is not a value for any of them."""

    num_images: PositiveCount
    model: Annotated[str | None, NOT_NULL] = None
    weights: Annotated[str | None, NOT_NULL] = None
    input_size: Annotated[Pair | None, NOT_NULL] = None
    grid_size: Annotated[Pair | None, NOT_NULL] = None
    scales: Annotated[list[PositiveCount] | None, NOT_NULL] = None
    references: Annotated[PositiveCount | None, NOT_NULL] = None
    tiles: Annotated[GridText | None, NOT_NULL] = None
    tile_overlap: Annotated[Overlap | None, NOT_NULL] = None


class BankFile(FileSchema):
    """A reference bank file, or the bank inside a calibration file."""

    format: Literal["winclip-reference-bank"]
    version: Literal[1]
    meta: BankMeta
    patch_tokens: Matrix
    windows: Annotated[dict[Scale, Matrix], Field(min_length=1)]


def _positive(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a positive number, got {value!r}")
    return value


def _class_name(value: str) -> str:
    try:
        clean_class_name(value)
    except ValueError:
        raise ValueError(f"must name the part, got {value!r}") from None
    return value


ClassName = Annotated[str, AfterValidator(_class_name)]
Temperature = Annotated[float, AfterValidator(_positive)]


class CalibrationSettings(FileSchema):
    """The settings a calibration records (calibrate.fingerprint) that a run takes from
    it, checked when present (a run refuses a calibration that lacks one); the others
    are only compared with the run's."""

    class_name: Annotated[ClassName | None, NOT_NULL, Field(alias="class")] = None
    temperature: Annotated[Temperature | None, NOT_NULL] = None
    prompts: Annotated[PromptLists | None, NOT_NULL] = None
    k: Annotated[Count | None, NOT_NULL] = None


class CalibrationFile(FileSchema):
    """A calibration file: settings (a JSON text), n scores, n map maxima or none, the
    few-shot bank or none, the n images' names."""

    format: Literal["winclip-calibration"]
    version: Literal[1]
    settings: str
    scores: Scores
    map_maxima: Scores | None
    bank: dict[str, Any] | None  # checked as a BankFile, for its own message
    images: list[str]
    lineage: str = "[]"  # JSON: each `review apply` that made it (absent: none)
    model: str | None = None  # JSON: the model it was made with (provenance; absent: none)
