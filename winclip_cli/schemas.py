"""Checking a file the tool reads against its schema, at load time (pydantic).

Each file's module declares its schema next to its loader, as a ``FileSchema`` (strict:
a string where a count belongs is refused, not converted), and loads through ``check``:
a violation is one error (exit 2) naming the file and the field, never a crash later.

    class Verdict(FileSchema):
        path: str
        verdict: Literal["defect", "false alarm"]

    row = check(Verdict, record, "verdicts.csv, line 3")
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .errors import DamagedFileError, WinclipError

Schema = TypeVar("Schema", bound=BaseModel)

# Types that say what a field holds, shared by the schemas.
Count = Annotated[int, Field(ge=0)]  # strict: True or "4" is not a count
PositiveCount = Annotated[int, Field(ge=1)]
Text = Annotated[str, Field(min_length=1)]


def _refuse_null(value: Any) -> Any:
    if value is None:
        raise ValueError("must not be null")
    return value


# A field that may be absent (its default, None) but not given as null:
# ``references: Annotated[PositiveCount | None, NOT_NULL] = None``.
NOT_NULL = BeforeValidator(_refuse_null)


class FileSchema(BaseModel):
    """The base of every file schema: strict types; fields a newer version may add are
    kept (``extra="allow"``) unless a schema forbids them."""

    model_config = ConfigDict(strict=True, extra="allow", arbitrary_types_allowed=True)


def field_name(location: tuple[int | str, ...]) -> str:
    """A pydantic error location as the file shows it: ``meta.num_images``, ``inputs[3]``."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Pydantic's wording, where a file's reader needs plainer words.
_PLAIN = {
    "missing": "is missing",
    "extra_forbidden": "is an unknown key",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
}


def describe(error: ValidationError) -> str:
    """The first violation as ``field FIELD: what is wrong (got VALUE)``, and how many more."""
    problems = error.errors(include_url=False)
    first = problems[0]
    kind = str(first["type"])
    message = str(first["msg"]).removeprefix("Value error, ")
    message = _PLAIN.get(kind, message[:1].lower() + message[1:])
    location = tuple(first["loc"])
    text = f"field {field_name(location)}: {message}" if location else f"the file {message}"
    if kind not in ("missing", "extra_forbidden", "value_error") and "input" in first:
        text += f" (got {_shown(first['input'])})"
    if len(problems) > 1:
        text += f"; {len(problems) - 1} more problem(s)"
    return text


def check(
    schema: type[Schema],
    data: Any,
    source: str,
    error: type[WinclipError] = DamagedFileError,
    strict: bool | None = None,
) -> Schema:
    """``data`` (read from ``source``) as ``schema``; ``error`` (exit 2 unless the class
    says otherwise) with the file and the field when it does not fit. ``strict=False``
    reads numbers from text (CSV cells)."""
    try:
        return schema.model_validate(data, strict=strict)
    except ValidationError as exc:
        raise error(f"{source}: {describe(exc)}") from None
