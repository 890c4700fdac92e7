"""No command writes a file it reads: the one check of a command's reads against its
writes, on the files as the system resolves them.

Two names are one file when they resolve to the same path (symbolic links, ``..``
after a link, as the OS follows them) or, for files that exist, when they are the same
inode (hard links, a case-insensitive filesystem). Pure: it stats, never writes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import OverlapError


@dataclass(frozen=True)
class FileUse:
    """A file a command reads or writes, and how messages call it.

    ``role`` for a read is a noun phrase ("the --calibration file", "the input", "an
    image named in rows.csv"); for a write, the option ("-o", "--report", "--out") or
    a noun phrase ("the run manifest"). A folder among the reads protects every file
    that exists below it (a model's folder). A file read and written under the same
    role (the -o file on --resume, its manifest) is what the command means to do."""

    role: str
    path: Path


@dataclass(frozen=True)
class _Identity:
    real: str  # the path as the OS resolves it
    inode: tuple[int, int] | None  # (st_dev, st_ino) when the file exists
    folder: bool


def _identify(path: Path) -> _Identity:
    real = os.path.realpath(path)
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # missing, unreadable folder, a NUL in the name
        return _Identity(real, None, False)
    return _Identity(real, (st.st_dev, st.st_ino), stat.S_ISDIR(st.st_mode))


class _Index:
    """Uses by resolved path and by inode: each write is looked up once, not compared
    with every read (a run reads thousands of images and writes as many overlays)."""

    def __init__(self) -> None:
        self.by_real: dict[str, tuple[FileUse, _Identity]] = {}
        self.by_inode: dict[tuple[int, int], tuple[FileUse, _Identity]] = {}
        self.folders: list[tuple[FileUse, _Identity]] = []

    def add(self, use: FileUse, ident: _Identity) -> None:
        self.by_real.setdefault(ident.real, (use, ident))
        if ident.inode is not None:
            self.by_inode.setdefault(ident.inode, (use, ident))
        if ident.folder:
            self.folders.append((use, ident))

    def find(self, ident: _Identity) -> tuple[FileUse, _Identity] | None:
        if ident.inode is not None and (found := self.by_inode.get(ident.inode)):
            return found
        return self.by_real.get(ident.real)

    def folder_holding(self, ident: _Identity) -> FileUse | None:
        if ident.inode is None or ident.folder:  # only files that exist can be lost
            return None
        for use, folder in self.folders:
            if ident.real.startswith(folder.real.rstrip(os.sep) + os.sep):
                return use
        return None


def _how(a: _Identity, b: _Identity) -> str:
    """Why two different names are one file, for the message."""
    if a.real != b.real:
        return " (the same file under another name: a hard link)"
    return ""


def refuse_overlaps(reads: Iterable[FileUse], writes: Sequence[FileUse]) -> None:
    """Raise OverlapError (exit 2, naming both) when a write would replace a file that
    is read, or two writes under different roles are one file; else return None."""
    read_index = _Index()
    for use in reads:
        read_index.add(use, _identify(use.path))
    write_index = _Index()
    for write in writes:
        ident = _identify(write.path)
        found = read_index.find(ident)
        if found is not None and found[0].role != write.role:
            read, read_ident = found
            raise OverlapError(
                f"{write.role} {write.path} would overwrite an input: {read.role} "
                f"{read.path}{_how(ident, read_ident)}; write it elsewhere"
            )
        if (folder := read_index.folder_holding(ident)) is not None and folder.role != write.role:
            raise OverlapError(
                f"{write.role} {write.path} would overwrite an input: a file in "
                f"{folder.role} {folder.path}; write it elsewhere"
            )
        other = write_index.find(ident)
        if other is not None and other[0].role != write.role:
            first, first_ident = other
            raise OverlapError(
                f"{first.role} and {write.role} name the same file: {write.path}"
                f"{_how(ident, first_ident)}; give them different names"
            )
        write_index.add(write, ident)
