"""The compositional prompt ensemble: state words, templates and prompt files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, Field, PlainValidator

from .errors import PromptFileError
from .schemas import FileSchema, check

NORMAL_STATES: tuple[str, ...] = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ANOMALOUS_STATES: tuple[str, ...] = (
    "damaged {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)
TEMPLATES: tuple[str, ...] = (
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of a {}.",
    "a dark photo of the {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of the {}.",
    "a photo of a {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for anomaly detection.",
    "a photo of the {} for anomaly detection.",
)


@dataclass(frozen=True)
class PromptSet:
    """State words and templates; every string holds exactly one ``{}``."""

    normal: tuple[str, ...] = NORMAL_STATES
    anomalous: tuple[str, ...] = ANOMALOUS_STATES
    templates: tuple[str, ...] = TEMPLATES

    def prompts(self, class_name: str) -> tuple[list[str], list[str]]:
        """All (normal, anomalous) prompts for a class: every state in every template."""
        name = clean_class_name(class_name)

        def fill(states: tuple[str, ...]) -> list[str]:
            return [t.replace("{}", s.replace("{}", name)) for s in states for t in self.templates]

        return fill(self.normal), fill(self.anomalous)


# Prompt sets by name (--prompts NAME): the paper's ensemble, and its CLIP-AC baseline
# (two plain states in one template). A name here wins over a file of the same name;
# `./clip-ac` names the file.
PRESETS: dict[str, PromptSet] = {
    "winclip": PromptSet(),
    "clip-ac": PromptSet(
        normal=("normal {}",), anomalous=("anomalous {}",), templates=("a photo of a {}.",)
    ),
}


def resolve_prompts(value: str | Path | None) -> PromptSet:
    """The prompt set for ``--prompts``: None (the paper's), a preset name or a JSON file."""
    if value is None:
        return PRESETS["winclip"]
    if str(value) in PRESETS:
        return PRESETS[str(value)]
    return load_prompt_file(value)


def clean_class_name(class_name: str) -> str:
    """``metal_nut`` -> ``metal nut``; refuses an empty name."""
    name = " ".join(class_name.replace("_", " ").split())
    if not name:
        raise ValueError("the class name is empty: give the part's name with --class")
    return name


def _prompt_list(value: Any) -> list[str]:
    """A non-empty list of strings, each with exactly one ``{}`` (where the class or
    the state goes)."""
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of strings")
    for item in value:
        if not isinstance(item, str) or item.count("{}") != 1:
            raise ValueError(f"every entry must be a string with exactly one '{{}}', got {item!r}")
    return value


PromptList = Annotated[list[str], PlainValidator(_prompt_list)]


class PromptLists(FileSchema):
    """A prompt file, and the prompt set a calibration records: any of the three lists
    (a missing one keeps the paper's)."""

    model_config = ConfigDict(extra="forbid")

    normal: PromptList = Field(default_factory=lambda: list(NORMAL_STATES))
    anomalous: PromptList = Field(default_factory=lambda: list(ANOMALOUS_STATES))
    templates: PromptList = Field(default_factory=lambda: list(TEMPLATES))


def load_prompt_file(path: str | Path) -> PromptSet:
    """Read a JSON prompt file: ``{"normal": [...], "anomalous": [...], "templates": [...]}``.

    Each key is optional (a missing one keeps the paper's list); each list must be
    non-empty, and each string must contain ``{}`` exactly once.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: Windows editors add a BOM
    except OSError as exc:
        raise PromptFileError(f"cannot read prompt file {path}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PromptFileError(f"prompt file {path} is not valid JSON: {exc}") from exc
    checked = check(PromptLists, data, f"prompt file {path}", PromptFileError)
    given = checked.model_dump(exclude_unset=True)
    return PromptSet(**{key: tuple(value) for key, value in given.items()})
