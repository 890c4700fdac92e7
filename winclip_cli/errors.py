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
    # Try again later (EX_TEMPFAIL): --resume left files still being written for the next
    # run, or another run holds the -o file.
    PENDING = 75
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


class WriteFailedError(OutputError, OSError):
    """A file could not be written (a full disk, a read-only filesystem, no permission).

    Raised by the one write path (atomic.py) and by nothing else. Also an OSError with
    the cause's ``errno``, so code that tells a full disk from other failures still can;
    its message names the file: ``cannot write PATH: No space left on device``."""

    def __init__(self, path: object, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.path = str(path)
        self.reason = cause.strerror or exception_reason(cause)

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.reason}"

    def __reduce__(self) -> tuple[object, ...]:  # picklable (a worker may raise it)
        return (_rebuild_write_failed, (self.path, self.errno, self.reason))


def _rebuild_write_failed(path: str, number: int | None, reason: str) -> WriteFailedError:
    return WriteFailedError(path, OSError(number, reason))


class DamagedFileError(UsageError):
    """A file the tool reads that breaks its schema (cut off, not UTF-8, a field of the
    wrong type): exit 2, the message names the file and the field."""


class OverlapError(UsageError):
    """An output of a command names a file that the command reads (or another output)."""


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


class FileBusyError(WinclipError):
    """Another process holds the rows file (an overlapping run on the same -o FILE): not
    a usage error but "try again later" (exit 75), which a cron recipe skips quietly."""

    exit_code = ExitCode.PENDING


class PoolFileError(WinclipError, ValueError):
    """A mutual-scoring pool file that is unreadable or damaged."""


class PoolMismatchError(WinclipError, ValueError):
    """A mutual-scoring pool made with another model, weights, precision or input size."""
