"""Around the locked -o file (rows.RowsFile): who holds it, waiting for it, and the
folders made for it.

The lock is an advisory lock on the rows file itself, so who holds it is written beside
it (``.NAME.winclip-lock``: run id, pid, host, start time) right after the lock is
taken; a run that finds the file locked reads it to say which run to wait for.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from .atomic import atomic_write
from .runinfo import RunInfo, current_run

WAIT_STEP_S = 0.2  # how often a waiting run tries the lock again


def holder_path(path: Path) -> Path:
    """The sidecar naming the run that holds the rows file at ``path``."""
    return path.with_name(f".{path.name}.winclip-lock")


def write_holder(path: Path) -> RunInfo:
    """Record this run as the holder of ``path`` (we hold its lock); returns it. A folder
    where it can't be written only costs the next run the holder's name."""
    run = current_run()
    data = json.dumps(run.to_json()).encode()
    with contextlib.suppress(OSError):
        atomic_write(holder_path(path), lambda f: f.write(data))
    return run


def read_holder(path: Path) -> RunInfo | None:
    """The run recorded as holding ``path``; None when unknown (not yet written)."""
    try:
        return RunInfo.from_json(json.loads(holder_path(path).read_text()))
    except (OSError, ValueError):
        return None


def drop_holder(path: Path, run: RunInfo | None) -> None:
    """Remove the record, if it is still ``run``'s (its lock is about to go)."""
    if run is not None and read_holder(path) == run:
        holder_path(path).unlink(missing_ok=True)


def busy_message(path: Path) -> str:
    """Why a run can't have ``path``: which run holds it, and what to do."""
    holder = read_holder(path)
    who = "another winclip run" if holder is None else holder.describe()
    return (
        f"{path} is being written by {who}: try again later, wait for it with "
        "--wait SECONDS, or write to another file"
    )


class LockWait:
    """The time a run may wait for a locked rows file (``--wait SECONDS``; 0: none)."""

    def __init__(self, seconds: float = 0.0, on_wait: Callable[[str], None] | None = None):
        self.deadline = time.monotonic() + max(0.0, seconds)
        self.seconds = seconds
        self.on_wait = on_wait
        self.told = False

    def pause(self, path: Path) -> bool:
        """Sleep a step and return True while there is time left; False: give up."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            return False
        if not self.told and self.on_wait is not None:
            holder = read_holder(path)
            who = "another winclip run" if holder is None else holder.describe()
            self.on_wait(f"waiting up to {self.seconds:g} s for {who} to finish with {path}")
            self.told = True
        time.sleep(min(WAIT_STEP_S, left))
        return True


def make_parents(path: Path) -> list[Path]:
    """Create the missing folders above ``path`` (as --out does); the ones made, deepest
    first, so a run that writes nothing can remove them again."""
    made: list[Path] = []
    folder = path.parent
    while str(folder) and not folder.exists() and folder != folder.parent:
        made.append(folder)
        folder = folder.parent
    if made:
        path.parent.mkdir(parents=True, exist_ok=True)
    return made


def remove_folders(made: list[Path]) -> None:
    """Remove folders ``make_parents`` made, deepest first, as long as they are empty."""
    for folder in made:
        try:
            os.rmdir(folder)
        except OSError:
            return
