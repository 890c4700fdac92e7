"""The Ray engine: a pool of Ray actors (Ray Data), one model each, scores the inputs.

Why this shape:

- One dataset record is one model batch (``batch_size`` consecutive inputs, the same
  groups as the local engine), so the numbers are the local engine's and a killed
  actor's batch is retried whole.
- The driver loads the model too (``pipeline.load_scorer``): it computes the text
  embeddings and builds (or checks, or saves) the bank exactly as a local run does, and
  hands both to the actors as CPU tensors. The actors decode the images themselves; the
  driver only sees paths going out and scores and grid maps coming back.
- Results come back in input order (``preserve_order``) and are yielded at once, so the
  pipeline writes each row as it arrives: Ctrl-C leaves a valid file for --resume.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..bank import bank_payload
from ..errors import ClusterError, MissingDependencyError, UsageError
from ..hardware import resolve, resolve_device
from ..options import DEFAULT_RAY_WORKERS, LOCAL_DIR, ModelOptions, RunOptions
from ..pool import pool_payload
from . import EngineSpec, ImageResult
from .ray_actor import Predictor
from .ray_logs import ray_lines_dropped
from .scorer import Scorer

if TYPE_CHECKING:
    from ..data import InputImage

RAY_MISSING = "--engine ray needs Ray: pip install 'winclip[ray]'"
CONNECT_TIMEOUT_S = 5.0  # an unreachable cluster is an answer within seconds, not a hang
MAX_BLOCKS = 20_000  # records (batches) are grouped into at most this many blocks
# Test hooks, read by the driver and handed to the actors (whose environment is the
# cluster's, not this process's):
KILL_HOOK = "WINCLIP_TEST_KILL_ACTOR_AT"  # "N:FILE": die on batch N unless FILE exists
LOAD_FAIL_HOOK = "WINCLIP_TEST_ACTOR_LOAD_FAIL"  # set: the actors' model load fails
DELAY_HOOK = "WINCLIP_TEST_BATCH_DELAY_S"  # seconds each batch takes longer (Ctrl-C tests)
HOOKS = (KILL_HOOK, LOAD_FAIL_HOOK, DELAY_HOOK)


def require_ray() -> None:
    """MissingDependencyError (exit 2) naming the extra, unless Ray Data imports."""
    try:
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(RAY_MISSING) from exc


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a "host:port" or "ray://host:port" address; None for "auto" etc."""
    bare = address.split("://", 1)[-1]
    host, sep, port = bare.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


# Ray's GCS and its client server speak gRPC, that is HTTP/2: a server answers the
# client's connection preface with a SETTINGS frame (frame type 4), at once.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS_FRAME = 4


def _speaks_grpc(sock: socket.socket, deadline: float) -> bool:
    """Whether the server on ``sock`` answers an HTTP/2 preface with a SETTINGS frame
    before ``deadline`` (time.monotonic); silence or other bytes: False."""
    sock.sendall(_HTTP2_PREFACE)
    header = b""
    while len(header) < 9:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            chunk = sock.recv(9 - len(header))
        except TimeoutError:
            return False
        if not chunk:  # closed without a frame
            return False
        header += chunk
    return header[3] == _SETTINGS_FRAME


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """ClusterError unless a Ray cluster (a gRPC server) answers at the address within
    ``timeout`` seconds in all: ray.init alone takes a minute to give up on a dead one,
    and hangs on a port where something else listens."""
    target = _host_port(address)
    if target is None:
        return
    deadline = time.monotonic() + timeout
    hint = "is `ray start --head` running there, and the port open?"
    try:
        with socket.create_connection(target, timeout=timeout) as sock:
            if _speaks_grpc(sock, deadline):
                return
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} ({hint})"
        ) from exc
    raise ClusterError(
        f"cannot reach the Ray cluster at {address}: something listens there but does not "
        f"answer as Ray does within {timeout:g} s (the GCS port of `ray start --head`, "
        "6379 by default, or ray://HOST:10001?)"
    )


def quiet_ray(verbose: bool) -> dict[str, Any]:
    """Keep Ray's Python warnings and log records out of the run's log (unless
    ``verbose``); returns ray.init's logging arguments. The workers' output stays on
    the cluster (log_to_driver) unless verbose; ray_lines_dropped does the rest."""
    if verbose:
        return {"log_to_driver": True, "logging_level": logging.WARNING}
    warnings.filterwarnings("ignore", module=r"ray(\.|$)")
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return {"log_to_driver": False, "logging_level": logging.ERROR}


@contextmanager
def ray_session(address: str | None, verbose: bool = False) -> Iterator[None]:
    """Connected to Ray for the run: an existing connection (tests, a notebook) is used
    and left open; else ``address`` or $RAY_ADDRESS, else a local Ray stopped at the end.
    Ray's own log lines stay out of the run's unless ``verbose``."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        check_reachable(address)
    logs = quiet_ray(verbose)
    with ray_lines_dropped(keep=verbose):  # its C++ lines: levels don't reach them
        try:
            if address is None:
                ray.init(include_dashboard=False, **logs)
            else:
                ray.init(address=address, **logs)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ...
            where = address or "a local Ray"
            raise ClusterError(f"cannot start or reach {where}: {exc}") from exc
        try:
            yield
        finally:
            ray.shutdown()


def portable_model(model: ModelOptions) -> ModelOptions:
    """The model options with absolute paths: actors do not run in this folder."""

    def absolute(path: Path | None) -> Path | None:
        return None if path is None else Path(os.path.abspath(path))

    name = model.model
    if name.startswith(LOCAL_DIR):
        name = LOCAL_DIR + os.path.abspath(name[len(LOCAL_DIR) :])
    return replace(
        model,
        model=name,
        # Resolved here: actors compute in what the manifest records, whatever they run on.
        precision=resolve(model.precision, resolve_device(model.device)).name,
        weights=absolute(model.weights),
        cache_dir=absolute(model.cache_dir),
        prompts=None,  # the resolved PromptSet goes to the actors instead
    )


def check(opts: RunOptions) -> None:
    """The Ray options' values, and Ray itself (exit 2 when it is not installed)."""
    ray = opts.ray
    if ray.workers is not None and ray.workers < 1:
        raise UsageError("--ray-workers must be at least 1")
    gpus = ray.gpus_per_worker
    if gpus is not None and not (math.isfinite(gpus) and gpus >= 0):
        raise UsageError("--ray-gpus-per-worker must be 0 or more")
    if ray.address is not None and not ray.address.strip():
        raise UsageError("--ray-address is empty (an unset shell variable?)")
    require_ray()


@contextmanager
def session(spec: EngineSpec) -> Iterator[None]:
    """Connected to the cluster (before the model loads: an unreachable one fails fast)."""
    with ray_session(spec.ray.address, spec.ray.verbose):
        yield


def build(spec: EngineSpec, scorer: Scorer, warn: Callable[[str], None]) -> RayEngine:
    """The Ray engine of ``spec`` (inside ``session``); tile warnings are the driver's,
    and a remote actor has no one to tell."""
    return RayEngine(spec, scorer)


class RayEngine:
    """Results from a Ray actor pool of ``workers`` actors, in input order."""

    def __init__(self, spec: EngineSpec, scorer: Scorer) -> None:
        self.batch_size = spec.batch_size
        self.workers = spec.ray.workers or DEFAULT_RAY_WORKERS
        self.gpus = spec.ray.gpus_per_worker or 0.0
        self.setup: dict[str, Any] = {
            "model": portable_model(spec.model),
            "prompts": spec.prompts,
            "text": scorer.text.detach().float().cpu(),
            "bank": None if scorer.bank is None else bank_payload(scorer.bank),
            "pool": None if scorer.pool is None else pool_payload(scorer.pool),
            "maps": scorer.maps,
            "grid": spec.grid,
            "hooks": {k: os.environ[k] for k in HOOKS if k in os.environ},
        }

    def predict(self, images: Sequence[InputImage]) -> Iterator[ImageResult]:
        """One result per image, in input order, as Ray delivers them."""
        import ray.data

        if not images:
            return
        size = self.batch_size
        paths = [os.path.abspath(im.path) for im in images]  # actors run in another folder
        records = [
            {"batch": b, "start": s, "paths": paths[s : s + size]}
            for b, s in enumerate(range(0, len(images), size))
        ]
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # blocks come back in input order
        ctx.enable_progress_bars = False  # the pipeline has its own progress line
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its INFO lines are noise here
        items = ray.data.from_items(records, override_num_blocks=min(len(records), MAX_BLOCKS))
        ds = items.map_batches(
            Predictor,
            batch_size=1,  # one record: one model batch
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            num_cpus=1,
            num_gpus=self.gpus,
            fn_constructor_kwargs={"setup": self.setup},
            # No max_restarts / max_task_retries here: Ray Data's actor pools default to
            # -1 for both (restart a dead actor, retry its batch), and passing them is
            # deprecated in Ray 2.60. test_ray_engine kills an actor to hold Ray to it.
        )
        expected = 0
        stream = ds.iter_batches(batch_size=None, batch_format="numpy")
        try:
            for block in stream:
                fatal = [str(f) for f in block["fatal"] if str(f)]
                if fatal:
                    raise ClusterError(f"a Ray worker cannot load the model: {fatal[0]}")
                for j, index in enumerate(block["index"].tolist()):
                    if index < expected:  # delivered twice (a retry): the first one stands
                        continue
                    if index != expected:
                        raise ClusterError(f"Ray lost input {expected} ({images[expected].path})")
                    error = str(block["error"][j])
                    if error:
                        yield ImageResult(None, None, error)
                    else:
                        score = float(block["score"][j])
                        if "tiled" in block:  # boxes and tile maps, pickled by the actor
                            tiles, size = pickle.loads(block["tiled"][j])
                            yield ImageResult(score, None, None, tiles, size)
                            expected += 1
                            continue
                        grid = None
                        if "grid" in block:
                            grid = torch.from_numpy(np.array(block["grid"][j]))
                        yield ImageResult(score, grid)
                    expected += 1
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        if expected != len(images):
            raise ClusterError(f"Ray returned {expected} of {len(images)} results")
