"""The -o file: held for the whole run by an exclusive advisory lock (flock), never
by a forked child, and replaced whole (written beside, then renamed) when resume
rewrites it."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import IO

from . import rows_lock
from .errors import FileBusyError
from .rows import ENCODING_ERRORS
from .rows_lock import LockWait
from .runinfo import RunInfo

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]  # no locking there (see RowsFile)

_BINARY = getattr(os, "O_BINARY", 0)  # Windows would write CRLF line ends otherwise

# Descriptors of -o files (and their replacements) this process holds locked.
_HELD: set[int] = set()


def _open_held(path: Path, flags: int) -> int:
    fd = os.open(path, flags | _BINARY, 0o666)
    _HELD.add(fd)
    return fd


def _close_held(fd: int) -> None:
    _HELD.discard(fd)
    os.close(fd)


def _let_go_in_child() -> None:
    """In a forked child (a DataLoader worker), close the inherited -o descriptors.

    A flock lock belongs to the open file description, which fork shares: a child still
    holding a copy would keep the lock after this process released it or was killed,
    and refuse the next run (a --resume just after a SIGKILL)."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):  # POSIX; spawned children inherit nothing anyway
    os.register_at_fork(after_in_child=_let_go_in_child)


class RowsFile:
    """The -o file, held for the whole run by an exclusive advisory lock: a second run on
    the same file (an overlapping cron job) is refused, rather than both writing rows
    into it. Opened without truncating: a refused run leaves the file as it was.

    A FIFO or device (`-o /dev/stdout`) is just opened for writing: nothing to lock."""

    def __init__(self, path: Path, wait: LockWait | None = None) -> None:
        self.path = path
        self.fd: int | None = None
        self.new_fd: int | None = None  # the replacement being written (see replacement)
        self.wait = wait or LockWait()  # --wait: how long another run's lock is waited for
        try:
            special = not stat.S_ISREG(os.stat(path).st_mode)
        except FileNotFoundError:
            special = False
        self.regular = not special
        self.made_folders: list[Path] = []
        self.holder: RunInfo | None = None  # this run, once it holds the lock
        if special:
            self.created = False
            self.fd = _open_held(path, os.O_WRONLY)
            return
        self.made_folders = rows_lock.make_parents(path)  # -o into a new folder, as --out does
        for _attempt in range(5):
            self.created = not path.exists()
            self.fd = _open_held(path, os.O_RDWR | os.O_CREAT)
            self._lock()
            if self._still_the_file():
                # A replacement left by a run that was killed: ours to drop (we hold the lock).
                self.replacement_path.unlink(missing_ok=True)
                return
            # Removed or replaced between open and lock (a run that failed before
            # writing removes the file it created): hold the file now at the path.
            _close_held(self.fd)
        raise FileBusyError(
            f"{path} keeps being replaced by another program: wait for it, or write to another file"
        )

    def _lock(self) -> None:
        if fcntl is None:  # Windows: no flock; runs on one file are the user's to keep apart
            return
        fd = self.fd
        assert fd is not None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                if self.wait.pause(self.path):  # --wait: try again until the deadline
                    continue
                _close_held(fd)
                self.fd = None
                rows_lock.remove_folders(self.made_folders)
                raise FileBusyError(rows_lock.busy_message(self.path)) from exc
            except OSError:  # no locking on this filesystem (NFS without lockd, some FUSE)
                return
            self.holder = rows_lock.write_holder(self.path)  # a second run can say who holds it
            return

    def _still_the_file(self) -> bool:
        try:
            assert self.fd is not None
            return os.path.samestat(os.fstat(self.fd), os.stat(self.path))
        except FileNotFoundError:
            return False

    def follow(self) -> None:
        """Hold the file at the path again after it was replaced whole (a resume repair
        of a file this version did not write)."""
        if self.regular and not self._still_the_file():
            assert self.fd is not None
            _close_held(self.fd)
            self.fd = _open_held(self.path, os.O_RDWR)
            self._lock()

    def stream(self, append: bool) -> IO[str]:
        """The row stream on the held file: at its end (append) or emptied first."""
        assert self.fd is not None
        if self.regular and append:
            os.lseek(self.fd, 0, os.SEEK_END)
        elif self.regular:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
        return open(
            self.fd, "w", encoding="utf-8", errors=ENCODING_ERRORS, newline="", closefd=False
        )

    def keep(self) -> None:
        """Keep the file even if nothing is written to it (an empty shard's JSON lines)."""
        self.created = False

    @property
    def replacement_path(self) -> Path:
        """Where a new version of the file is written before it replaces the file."""
        return self.path.with_name(f".{self.path.name}.winclip-new")

    def replacement(self) -> IO[str]:
        """A row stream on a new, empty file beside this one: the file at the path stays
        whole until ``commit`` renames the new one over it (a crash loses nothing)."""
        assert self.regular and self.new_fd is None
        self.new_fd = _open_held(self.replacement_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        return open(
            self.new_fd, "w", encoding="utf-8", errors=ENCODING_ERRORS, newline="", closefd=False
        )

    def commit(self) -> None:
        """Rename the replacement over the file, holding it locked before it is visible
        (another run must never find it unlocked), with the old file's permissions."""
        assert self.fd is not None and self.new_fd is not None
        os.fsync(self.new_fd)
        if hasattr(os, "fchmod"):  # POSIX
            os.fchmod(self.new_fd, stat.S_IMODE(os.fstat(self.fd).st_mode))
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.new_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(self.replacement_path, self.path)
        _close_held(self.fd)
        self.fd, self.new_fd = self.new_fd, None
        self.created = False  # it holds rows now

    def discard(self) -> None:
        """Drop an uncommitted replacement: the file stays as it was."""
        if self.new_fd is not None:
            _close_held(self.new_fd)
            self.new_fd = None
            self.replacement_path.unlink(missing_ok=True)

    def release(self) -> bool:
        """Unlock; a file this run created and never wrote to is removed again (True)."""
        self.discard()
        if self.fd is None:
            return False
        empty = self.created and os.fstat(self.fd).st_size == 0
        if self.regular:
            rows_lock.drop_holder(self.path, self.holder)  # before the lock goes
        _close_held(self.fd)  # first: Windows can't remove an open file
        self.fd = None
        if empty:
            self.path.unlink(missing_ok=True)
            rows_lock.remove_folders(self.made_folders)
        return empty
