"""Checks on what a run may write: a file that can be written, a folder that can be
created. That no output is a file the command reads is overlaps.refuse_overlaps."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError


def check_writable_file(path: Path) -> None:
    """UsageError unless ``path`` can be written (and replaced, when a regular file)."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"output {path} is a folder, not a file")
    if not folder.is_dir():
        raise UsageError(f"cannot write {path}: folder {folder} does not exist")
    if path.exists() and not path.is_file():  # a FIFO or device (/dev/stdout): written in place
        writable = os.access(path, os.W_OK)
    else:
        writable = os.access(folder, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))
    if not writable:
        raise UsageError(f"cannot write {path}: permission denied")


def check_rows_file(path: Path) -> None:
    """check_writable_file for -o FILE, whose folder may be new: then it must be one
    that can be created (RowsFile makes it, as --out's is made)."""
    folder = path.parent if str(path.parent) else Path(".")
    if folder.exists() or folder == folder.parent:
        check_writable_file(path)
    else:
        check_out_dir(folder)


def check_out_dir(out_dir: Path) -> None:
    """The folder exists and is writable, or can be created: checked, not created, so a
    run that stops early leaves no empty folder behind."""
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot create output folder {out_dir}: {existing} is a file")
    if not os.access(existing, os.W_OK):
        raise UsageError(f"cannot write to output folder {out_dir}: permission denied")


def is_within(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False
