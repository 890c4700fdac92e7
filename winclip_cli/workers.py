"""DataLoader worker processes: how they start, and how they are stopped.

Workers die with their parent (also after a SIGKILL of it), never hold the -o file's
lock (rows.py closes it in every forked child), and a run that stops for any reason
never waits on one: they ignore SIGTERM, so they are killed once asked to stop.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import time
import weakref
from types import TracebackType
from typing import TypeVar

import torch

_Iterator = TypeVar("_Iterator")


def _quiet_handover_errors(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    """A worker's sys.excepthook, which only multiprocessing's resource sharer calls.

    A batch's shared memory reaches the main process through a short socket handshake
    with the worker. Ctrl-C can stop the main process mid-handshake; the worker then sees
    the connection drop and would print a traceback under the one-line interrupt message.
    """
    if not issubclass(kind, (ConnectionError, EOFError)):
        sys.__excepthook__(kind, value, tb)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# How long stopped workers get to finish the batch in hand before they are killed.
STOP_GRACE_S = 0.5


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the process that started it dies,
    even by SIGKILL (no cleanup runs there), instead of the DataLoader's watchdog
    noticing seconds later. The signal follows the thread (or fork server) that forked
    the worker: the one iterating the loader, which outlives it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    # It may have died before prctl. Asked of the process that started the worker, not
    # of os.getppid(): with the forkserver start method the parent is the server.
    parent = multiprocessing.parent_process()
    if parent is not None and not parent.is_alive():
        os._exit(1)


def init_worker(_worker_id: int) -> None:
    _die_with_parent()
    sys.excepthook = _quiet_handover_errors
    # Ctrl-C reaches the whole process group; only the main process should react to it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A SIGTERM to the group (systemd, CI cancel, `timeout`) too: the main process
    # decides, then shuts the workers down itself; a worker killed mid-shutdown makes
    # the DataLoader print a traceback.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)


# Loader iterators whose workers may still run, stopped at the latest when Python exits:
# multiprocessing's own exit hook sends SIGTERM, which workers ignore, then waits.
_RUNNING: weakref.WeakSet[object] = weakref.WeakSet()


def track(iterator: _Iterator) -> _Iterator:
    """Remember a loader iterator, so its workers are stopped when Python exits."""
    _RUNNING.add(iterator)
    return iterator


def stop_workers(iterator: object, grace: float = STOP_GRACE_S) -> None:
    """Stop the workers of a DataLoader iterator now: asked to finish, given ``grace``
    seconds, then killed (they ignore SIGTERM, and their batches are not wanted).

    Reaches into the iterator's workers and queues: torch's own shutdown waits 5 s per
    worker, and at interpreter exit does nothing at all."""
    workers = list(getattr(iterator, "_workers", ()))
    done = getattr(iterator, "_workers_done_event", None)
    if done is not None and not getattr(iterator, "_shutdown", True):
        done.set()
        for queue in getattr(iterator, "_index_queues", ()):
            with contextlib.suppress(OSError, ValueError):  # closed already
                queue.put(None)  # wakes a worker waiting for work: it exits
    deadline = time.monotonic() + grace
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    if any(w.is_alive() for w in workers) and getattr(iterator, "_worker_pids_set", False):
        # Killed on purpose: the loader's SIGCHLD watch must not report it as a crash.
        torch.utils.data._utils.signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False  # type: ignore[attr-defined]
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join(1.0)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()  # closes the queues; no-op when already done (or Python is exiting)
    _RUNNING.discard(iterator)


@atexit.register
def _stop_all_workers() -> None:
    for iterator in list(_RUNNING):
        stop_workers(iterator)
