"""Every run and model option with its default, once. No torch: the CLI imports this
for `--help`, which must answer at once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL = "ViT-B-16-plus-240"
DEFAULT_PRETRAINED = "laion400m_e31"
DEFAULT_OUT_DIR = Path("winclip-out")
DEFAULT_K = 4  # reference images taken from a --ref folder
DEFAULT_BATCH_SIZE = 8
DEFAULT_SCALES = (2, 3)
DEFAULT_CLASS = "object"
LOCAL_DIR = "local-dir:"  # --model local-dir:PATH: an open_clip model folder
DEFAULT_FORMAT = "csv"
DEFAULT_SETTLE = 2.0  # seconds: with --resume, files modified more recently wait a run
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
DEFAULT_PRECISION = "auto"  # the CLI's; the library (WinClip.load) keeps fp32
PRECISION_HELP = (
    "auto (bf16 on a CPU with AMX, fp16 on CUDA, fp32 elsewhere), fp32, bf16, fp16 (GPU) "
    "or int8 (CPU, opt-in). Recorded in banks, calibrations and the manifest."
)
DEFAULT_FALSE_ALARM_RATE = 0.01  # --false-alarm-rate with --calibration
MAP_MODES = ("all", "anomalous")  # --maps: every image, or only those decided anomalous
ENGINES = ("local", "ray")
DEFAULT_RAY_WORKERS = 2
DEFAULT_TILES = "1x1"  # ROWSxCOLUMNS; 1x1 is the untiled run
DEFAULT_TILE_OVERLAP = 0.25
OVERLAY_FORMATS = ("png", "jpg")
MAP_DTYPES = ("float32", "float16")
DEFAULT_MUTUAL_SET = 200  # --mutual: images scored against each other at once, at most


def default_workers() -> int:
    """Decoding processes: enough to keep up with inference, leaving cores for torch."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


@dataclass
class ModelOptions:
    """What loads the model and builds its text side."""

    model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    weights: Path | None = None
    device: str = "auto"
    precision: str = DEFAULT_PRECISION
    prompts: str | Path | None = None  # a preset name (prompts.PRESETS) or a JSON file
    temperature: float | None = None
    cache_dir: Path | None = None
    # Why, when the precision came from a file (a calibration's, a bank's), for the log.
    precision_reason: str | None = None


@dataclass
class RayOptions:
    """Where and how wide the Ray engine runs; None: not given (the defaults apply)."""

    address: str | None = None  # None: $RAY_ADDRESS, else a local Ray for this run
    workers: int | None = None  # actor pool size; None: DEFAULT_RAY_WORKERS
    gpus_per_worker: float | None = None  # None: 0
    verbose: bool = False  # --verbose: Ray's own log lines and its workers' output shown

    @property
    def given(self) -> list[str]:
        """The options the user set, by name (refused with --engine local)."""
        names = ("--ray-address", "--ray-workers", "--ray-gpus-per-worker")
        values = (self.address, self.workers, self.gpus_per_worker)
        return [n for n, v in zip(names, values, strict=True) if v is not None]


@dataclass
class RunOptions:
    """One run of score / segment / fewshot, as the user gave it."""

    inputs: list[Path] = field(default_factory=lambda: [Path(".")])
    class_name: str = DEFAULT_CLASS
    maps: bool = False  # segment / fewshot: an overlay per image
    require_ref: bool = False  # fewshot
    ref: Path | None = None  # folder of normal images, or a saved bank file
    k: int | None = None  # references to use from a --ref folder (default DEFAULT_K)
    seed: int | None = None
    save_bank: Path | None = None
    out_dir: Path = DEFAULT_OUT_DIR
    save_maps: bool = False
    map_dtype: str = "float32"  # of the --save-maps .npy files (MAP_DTYPES)
    overlay_format: str = "png"  # OVERLAY_FORMATS
    overlay_max_side: int | None = None  # downscale overlays to this longer side
    batch_size: int = DEFAULT_BATCH_SIZE  # images per pass; tiles per pass when tiling
    workers: int | None = None  # None: default_workers()
    tiles: str = DEFAULT_TILES  # "RxC" (tiling.TileGrid.parse)
    tile_overlap: float = DEFAULT_TILE_OVERLAP
    output: str | None = None
    fmt: str = DEFAULT_FORMAT
    threshold: float | None = None
    fail_on_anomaly: bool = False
    resume: bool = False
    report: Path | None = None  # --report FILE: the HTML report, written at the end
    command: str = "score"  # which command this is, for reports and manifests
    calibration: Path | None = None  # --calibration FILE.cal
    false_alarm_rate: float | None = None  # None: DEFAULT_FALSE_ALARM_RATE (with --calibration)
    save_masks: bool = False
    maps_mode: str = "all"  # MAP_MODES
    retry_errors: bool = True  # --resume scores error rows again
    rebuild_manifest: bool = False  # --resume over a damaged manifest: make it anew
    settle: float = DEFAULT_SETTLE  # --resume leaves files modified this recently
    shard: str | None = None  # "I/N": the I-th of N contiguous parts of the inputs
    engine: str = "local"
    ray: RayOptions = field(default_factory=RayOptions)
    mutual: bool = False  # --mutual: set mode of mutual scoring (WINCLIP.md)
    mutual_set: int = DEFAULT_MUTUAL_SET  # --mutual-set: at most this many images per set
    pool: Path | None = None  # --pool DIR|FILE: pool mode of mutual scoring
    save_pool: Path | None = None  # --save-pool FILE: keep the pool built from --pool DIR
    model: ModelOptions = field(default_factory=ModelOptions)
    # Options the user typed (CLI parameter names), so a calibration's settings can fill
    # the others and refuse only real contradictions.
    given: frozenset[str] = frozenset()
    listed: frozenset[Path] = frozenset()  # inputs read from a list on stdin (pathlists)
    header: bool = True  # --no-header: no CSV header (xargs batches appended to one file)
    wait: float = 0.0  # --wait SECONDS for an -o file another run holds (0: exit 75 at once)
    verbose: bool = False  # --verbose: tracebacks of bugs, and Ray's own log lines

    @property
    def to_stdout(self) -> bool:
        """Rows go to stdout (no -o, or -o -)."""
        return self.output in (None, "-")

    @property
    def resume_hint(self) -> str:
        """How to continue this run later, for messages ('' when rows go to stdout)."""
        return "" if self.to_stdout else f"; continue with --resume -o {self.output}"


@dataclass
class CalibrateOptions:
    """One `winclip calibrate`: known-good images -> a calibration file."""

    inputs: list[Path]
    output: Path
    class_name: str = DEFAULT_CLASS
    ref: Path | None = None
    k: int | None = None
    seed: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    tiles: str = DEFAULT_TILES
    tile_overlap: float = DEFAULT_TILE_OVERLAP
    pool: Path | None = None  # --pool DIR|FILE: calibrate pool mode
    save_pool: Path | None = None
    model: ModelOptions = field(default_factory=ModelOptions)


@dataclass
class EvalOptions:
    """One `winclip eval`: a labelled dataset, the shots and seeds, where figures go."""

    root: Path
    layout: str = "auto"
    categories: list[str] | None = None
    shots: list[int] = field(default_factory=lambda: [0])
    seeds: int = 1
    class_name: str | None = None  # None: each category's own name
    json_path: Path | None = None
    scores_path: Path | None = None
    compare: str | None = None  # 'paper'
    calibrate: float | None = None  # --calibrate A: false-alarm rate from train/good
    mutual: bool = False  # --mutual: set mode, each category's test set one set
    pool: Path | None = None  # --pool DIR|FILE: pool mode against one fixed pool
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    tiles: str = DEFAULT_TILES
    tile_overlap: float = DEFAULT_TILE_OVERLAP
    model: ModelOptions = field(default_factory=ModelOptions)
