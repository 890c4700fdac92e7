"""Exit codes and the one family of errors that carry them.

Every error a user can cause is a WinclipError whose class says its exit code; the CLI
maps them to messages and codes in one place (cli._run). Nothing here imports torch.
"""

from __future__ import annotations

from enum import IntEnum


def exception_reason(exc: BaseException, limit: int = 300) -> str:
    """A library exception as one short line for a message or an `error` cell: its first
    non-empty line, whitespace collapsed, at most ``limit`` characters; the type's name
    when it says nothing."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    first = next((line for line in lines if line), "")
    return first[:limit] or type(exc).__name__


class ExitCode(IntEnum):
    """The process exit codes of DESIGN.md, and the signal-style ones."""

    OK = 0
    ANOMALY = 1  # --fail-on-anomaly and an anomalous input
    USAGE = 2  # bad option, missing path, no images, or the output can't be written
    UNREADABLE = 3  # some inputs have error rows; all others were scored
    MODEL = 4  # the model or its weights could not be loaded
    PENDING = 75  # --resume left files still being written for the next run (EX_TEMPFAIL)
    INTERNAL = 70  # a bug
    INTERRUPTED = 130
    BROKEN_PIPE = 141
    TERMINATED = 143


class WinclipError(Exception):
    """A failure the user can act on; the message is one line, ``exit_code`` its code."""

    exit_code: ExitCode = ExitCode.USAGE


class UsageError(WinclipError):
    """A mistake in the command line or its inputs, found before anything is scored."""


class OutputError(WinclipError):
    """Rows or images can't be written (a full disk, stdout closed): the run stops.

    Exit 2, like a usage error, since the fix is the user's (room, another path); rows
    already written stay valid."""


class PromptFileError(WinclipError, ValueError):
    """A prompt file that cannot be used; the message names the file and the problem."""


class DatasetError(WinclipError, ValueError):
    """A dataset tree that cannot be evaluated; the message names the problem."""


class BankFileError(WinclipError, ValueError):
    """A reference-bank file that is unreadable or damaged."""


class BankMismatchError(WinclipError, ValueError):
    """A reference bank built with another model, weights, input size or scales."""


class CalibrationError(WinclipError, ValueError):
    """A calibration that can't be used: a damaged file, other settings, too few images."""


class MissingDependencyError(WinclipError, ImportError):
    """An optional extra (eval: scikit-learn, scipy) is not installed."""


class WeightsUnavailableError(WinclipError, RuntimeError):
    """The model or its weights could not be loaded; the message says how to fix it."""

    exit_code = ExitCode.MODEL


class ClusterError(WinclipError, RuntimeError):
    """The Ray cluster can't be reached, or its workers can't load the model (exit 4)."""

    exit_code = ExitCode.MODEL


class ImageReadError(Exception):
    """An input that can't be decoded: an error row (one-line message), not a stop."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; ``code`` is the exit code (130 or 143).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way
    (a decoder guard, a cache read) can swallow it and carry on."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class FileBusyError(UsageError):
    """Another process holds the rows file (an overlapping run on the same -o FILE)."""


class PoolFileError(WinclipError, ValueError):
    """A mutual-scoring pool file that is unreadable or damaged."""


class PoolMismatchError(WinclipError, ValueError):
    """A mutual-scoring pool made with another model, weights, precision or input size."""
