"""The one place files are written.

Whole files (rows' sidecars, images, banks, calibrations, reports, caches) are written
to a temporary name and renamed, so they appear whole or not at all. Rows are appended
to an open file one at a time, and a row that cannot be written whole (a full disk) is
cut off again, so the file always ends with a whole row. Every failure is a
WriteFailedError (exit 2) that names the file. All bytes go through ``_write_all``.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .errors import WriteFailedError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

# mkstemp makes 0600 files; results should get the permissions any new file gets. Read
# once at import, because reading the umask means setting it (not thread-safe).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Every byte of ``data`` to ``fd``: os.write may take only part (a disk filling up)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _RawFile(io.RawIOBase):
    """A raw binary file on ``fd`` whose writes go through ``_write_all``.

    It has no ``fileno``: Pillow and numpy would otherwise write to the descriptor in C,
    around the one write path."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        _write_all(self.fd, view)
        return len(view)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return os.lseek(self.fd, offset, whence)

    def tell(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def close(self) -> None:
        if not self.closed:
            super().close()
            os.close(self.fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it.

    Raises WriteFailedError (an OSError with the cause's errno, exit 2) naming ``path``
    when anything on the way fails: the folder, the temporary file, a write, the rename.
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A short temporary name: the final name may already be near the 255-byte limit.
        fd, tmp = tempfile.mkstemp(prefix=".winclip-", suffix=".tmp", dir=path.parent)
        with io.BufferedWriter(_RawFile(fd)) as handle:
            write(handle)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        if isinstance(exc, WriteFailedError):
            raise
        raise WriteFailedError(path, exc) from exc
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: str | None) -> None:
    if tmp is not None:
        with contextlib.suppress(OSError):  # a read-only folder: nothing was left there
            Path(tmp).unlink(missing_ok=True)


def _end_of(fd: int) -> int | None:
    """Where an append to ``fd`` starts, when it is the end of a regular file (so a failed
    append can be cut off there); None for pipes, terminals and writes mid-file."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if fcntl is not None and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
            return st.st_size  # `>>`: every write goes to the end
        position = os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return None
    return position if position == st.st_size else None


def append_whole(fd: int, data: bytes, where: str) -> None:
    """Append ``data`` (one row) to the open file ``fd``, whole or not at all.

    A write that fails part-way (a full disk, a quota) is cut back to where the file
    ended, and WriteFailedError names ``where``. On a pipe or terminal nothing can be cut
    back; a reader that went away stays a BrokenPipeError (exit 141, not an error).
    """
    start = _end_of(fd)
    try:
        _write_all(fd, data)
    except BaseException as exc:  # an exception from a signal handler too
        if start is not None:
            try:
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
            except OSError:
                pass  # the file may end torn; resume drops a torn last row
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
            raise WriteFailedError(where, exc) from exc
        raise
