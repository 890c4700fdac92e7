"""The inputs of a run as the user gives them: PATHs on the command line, or a list of
paths on stdin (``find ... | winclip score``), as ripgrep reads its input.

- ``-`` as a PATH: the list on stdin, one path a line (``null``: NUL-separated, for
  ``find -print0`` and names holding a newline).
- No PATH: the list on stdin when stdin is a pipe, a regular file or a socket (not a
  terminal, not /dev/null); else the current folder.
- A list that turns out empty is a usage error: cron hands its jobs an empty pipe, and a
  run that scores nothing, or the wrong folder, must not pass silently.

Nothing here imports torch: the command line resolves its inputs before the model.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import UsageError

STDIN_PATH = "-"
EMPTY_LIST = (
    "the list of paths on stdin is empty (cron and some CI runners hand jobs an empty "
    "pipe): pass . to inspect the current folder, or the files and folders to score"
)


@dataclass(frozen=True)
class Inputs:
    """The run's PATHs in the order given; ``listed``: those read from a list on stdin
    (one that does not exist is an error row, not the end of the run)."""

    paths: list[Path]
    listed: frozenset[Path] = field(default_factory=frozenset)
    from_stdin: bool = False


def stdin_holds_a_list(stream: Any) -> bool:
    """Whether ``stream`` (stdin) is a pipe, a regular file or a socket: then a run with
    no PATH reads its list from it. A terminal, /dev/null, a closed stdin or a stream
    without a descriptor (a test runner's) do not."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)


def parse_path_list(data: bytes, null: bool = False) -> list[Path]:
    """The paths in a list's bytes, in order: one a line (a trailing carriage return is
    dropped: lists written on Windows), or NUL-separated with ``null``. Empty entries are
    skipped; names that are not UTF-8 keep their bytes (os.fsdecode)."""
    if null:
        entries = data.split(b"\0")
    else:
        entries = [line.removesuffix(b"\r") for line in data.split(b"\n")]
    return [Path(os.fsdecode(entry)) for entry in entries if entry]


def read_path_list(stream: Any, null: bool = False) -> list[Path]:
    """The list of paths on ``stream`` (a binary stream, or a text one with a buffer)."""
    binary: IO[bytes] = getattr(stream, "buffer", stream)
    data = binary.read()
    if isinstance(data, str):  # a text stream without a buffer
        data = os.fsencode(data)
    return parse_path_list(data, null)


def resolve_inputs(paths: Sequence[str | Path] | None, stdin: Any, null: bool = False) -> Inputs:
    """The run's inputs from its PATHs and stdin (see the module's rules).

    ``-`` may stand among other PATHs (once); its list takes its place. Raises
    UsageError for an empty list, a second ``-``, or ``--null`` with no list to read.
    """
    given = [Path(p) for p in paths or []]
    if not given:
        if not stdin_holds_a_list(stdin):
            if null:
                raise UsageError("--null reads a list of paths on stdin: pipe one, or give -")
            return Inputs([Path(".")])
        given = [Path(STDIN_PATH)]
    dashes = sum(1 for p in given if str(p) == STDIN_PATH)
    if dashes > 1:
        raise UsageError("- (the list on stdin) is given twice: stdin can be read once")
    if dashes == 0:
        if null:
            raise UsageError("--null reads a list of paths on stdin: give - as a PATH")
        return Inputs(given)
    if stdin is None:
        raise UsageError("- reads a list of paths on stdin, and stdin is closed")
    listed = read_path_list(stdin, null)
    if not listed and len(given) == 1:
        raise UsageError(EMPTY_LIST)
    out: list[Path] = []
    for path in given:
        out.extend(listed if str(path) == STDIN_PATH else [path])
    return Inputs(out, frozenset(listed), from_stdin=True)
