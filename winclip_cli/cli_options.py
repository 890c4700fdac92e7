"""Every command-line option, declared once: the option name, its help, its panel and
its parser. The commands in cli.py list these; a new option is one alias here and one
parameter line in each command that takes it.
"""

# No `from __future__ import annotations`: Typer reads the annotations at run time.
from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import DEFAULT_FALSE_ALARM_RATE, DEFAULT_RAY_WORKERS
from .prompts import PRESETS
from .rows import FORMATS

MODEL_PANEL = "Model"
OUTPUT_PANEL = "Output"
DECISION_PANEL = "Decision"
REF_PANEL = "Few-shot references"
SCALE_PANEL = "Past one machine"


def path_arg(value: str | Path) -> Path:
    """A path option's value; an empty one is refused, not read as the current folder."""
    if isinstance(value, Path):  # a default
        return value
    if not value.strip():
        raise typer.BadParameter("empty path (an unset shell variable?)")
    return Path(value)


def output_arg(value: str | Path) -> str:
    return str(path_arg(value))


# Options shared by several commands, declared once.
ClassOpt = Annotated[
    str, typer.Option("--class", "-c", help="Name of the part, used in the text prompts.")
]
ModelOpt = Annotated[
    str, typer.Option(help="open_clip model name, or local-dir:PATH.", rich_help_panel=MODEL_PANEL)
]
PretrainedOpt = Annotated[
    str,
    typer.Option(
        help="open_clip weights tag (downloaded once, then cached).", rich_help_panel=MODEL_PANEL
    ),
]
WeightsOpt = Annotated[
    Optional[Path],  # noqa: UP045 - Typer reads these annotations at run time
    typer.Option(
        help="Local checkpoint (.pt/.bin/.safetensors); nothing is downloaded.",
        rich_help_panel=MODEL_PANEL,
        parser=path_arg,
    ),
]
DeviceOpt = Annotated[
    str, typer.Option(help="auto, cpu, cuda or mps.", rich_help_panel=MODEL_PANEL)
]
PrecisionOpt = Annotated[
    str, typer.Option(help="fp32, fp16 (GPU) or bf16.", rich_help_panel=MODEL_PANEL)
]
BatchOpt = Annotated[
    int,
    typer.Option(
        help="Images per forward pass; tiles per pass when tiling (--tiles).",
        rich_help_panel=MODEL_PANEL,
    ),
]
TILES_PANEL = "Tiling (large photos)"
TilesOpt = Annotated[
    str,
    typer.Option(
        "--tiles",
        help="Run on an RxC grid of overlapping tiles at the photo's own resolution "
        "(e.g. 3x3): small defects on large photos. Costs R*C times the time.",
        rich_help_panel=TILES_PANEL,
    ),
]
TileOverlapOpt = Annotated[
    float,
    typer.Option(
        "--tile-overlap",
        help="Fraction of a tile's side shared with its neighbour (0 to below 1).",
        rich_help_panel=TILES_PANEL,
    ),
]
PromptsOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help=f"Prompt set: {' or '.join(PRESETS)} (the default), or a JSON prompt file "
        "(normal / anomalous states, templates).",
        rich_help_panel=MODEL_PANEL,
        parser=output_arg,
        show_default=False,
    ),
]
TemperatureOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(
        help="Softmax temperature (default: the model's own).",
        rich_help_panel=MODEL_PANEL,
        show_default=False,
    ),
]
CacheOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        help="Text-embedding cache folder (or $WINCLIP_CACHE_DIR).",
        rich_help_panel=MODEL_PANEL,
        parser=path_arg,
        show_default=False,
    ),
]
WorkersOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        help="Decoding processes (0: none). Default: half the cores, at most 4.",
        rich_help_panel=MODEL_PANEL,
        show_default=False,
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show tracebacks of internal errors.")]


CalPathsOpt = Annotated[
    list[Path],
    typer.Argument(
        help="Known-good image files and folders (walked recursively).", parser=path_arg
    ),
]
CalOutputOpt = Annotated[
    Path,
    typer.Option("--output", "-o", help="The calibration file to write (.cal).", parser=path_arg),
]
CalRefOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        help="Few-shot: a folder of known-good images (K become the bank, the rest "
        "calibrate), or a saved bank file.",
        rich_help_panel=REF_PANEL,
        parser=path_arg,
    ),
]
CalKOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--k",
        help="Reference images from a --ref folder (default: 4).",
        rich_help_panel=REF_PANEL,
    ),
]
CalSeedOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(help="Pick the K references at random with this seed.", rich_help_panel=REF_PANEL),
]
RootOpt = Annotated[
    Path, typer.Argument(help="Dataset folder (MVTec AD or VisA layout).", parser=path_arg)
]
LayoutOpt = Annotated[str, typer.Option(help="auto, mvtec or visa.")]
CategoryOpt = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(help="Category to evaluate (repeat for several). Default: all."),
]
EvalKOpt = Annotated[
    Optional[list[int]],  # noqa: UP045
    typer.Option("--k", help="Shots (repeat: --k 0 --k 1 --k 4). Default: 0."),
]
SeedsOpt = Annotated[int, typer.Option(help="Reference draws per k > 0 (mean and std).")]
EvalClassOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--class", "-c", help="Prompt class for all categories (default: each name)."),
]
JsonPathOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--json", help="Write every figure to this JSON file ('-' = stdout).", parser=path_arg
    ),
]
ScoresOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        help="Per-image rows (category, k, seed, path, label, score) to FILE ('-' = stdout).",
        parser=path_arg,
    ),
]
CompareOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="'paper': print the published WinCLIP figures beside yours."),
]
CalibrateOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(
        help="Calibrate on train/good (minus the references) at this false-alarm rate; "
        "report the realised rate on test/good (far) and the detection rate (tpr).",
        show_default=False,
    ),
]
RowsOpt = Annotated[
    list[Path],
    typer.Argument(
        help="Rows files (CSV or JSON lines; several shards in order).", parser=path_arg
    ),
]
ReportOutputOpt = Annotated[
    Path, typer.Option("--output", "-o", help="The HTML file to write.", parser=path_arg)
]
GalleryOpt = Annotated[
    int, typer.Option(help="Thumbnails in the gallery: the highest scores, then errors.")
]
TitleOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Title of the report (default: from the rows files' names)."),
]
DownloadModelOpt = Annotated[str, typer.Option(help="open_clip model name.")]
DownloadPretrainedOpt = Annotated[str, typer.Option(help="open_clip weights tag.")]
PathsOpt = Annotated[
    Optional[list[Path]],  # noqa: UP045
    typer.Argument(
        help="Image files and folders (walked recursively). Default: .",
        show_default=False,
        parser=path_arg,
    ),
]
RefOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        help="Folder of known-good images, or a saved bank file.",
        rich_help_panel=REF_PANEL,
        parser=path_arg,
    ),
]
KOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--k",
        help="Reference images to take from a --ref folder (default: 4).",
        rich_help_panel=REF_PANEL,
    ),
]
SeedOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        help="Pick the K references at random with this seed (default: the first K).",
        rich_help_panel=REF_PANEL,
    ),
]
SaveBankOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        help="Save the reference bank to FILE, for a later --ref FILE.",
        rich_help_panel=REF_PANEL,
        parser=path_arg,
    ),
]
OutOpt = Annotated[
    Path,
    typer.Option(
        help="Folder for overlays (and maps).", rich_help_panel=OUTPUT_PANEL, parser=path_arg
    ),
]
SaveMapsOpt = Annotated[
    bool,
    typer.Option(
        "--save-maps",
        help="Also write the raw map per image (.npy, image size; see --map-dtype).",
        rich_help_panel=OUTPUT_PANEL,
    ),
]
MapDtypeOpt = Annotated[
    str,
    typer.Option(
        "--map-dtype",
        help="float32 or float16 (half the disk) for --save-maps.",
        rich_help_panel=OUTPUT_PANEL,
    ),
]
OverlayFormatOpt = Annotated[
    str,
    typer.Option(
        "--overlay-format",
        help="png or jpg (quality 90, several times smaller on photos).",
        rich_help_panel=OUTPUT_PANEL,
    ),
]
OverlayMaxSideOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--overlay-max-side",
        help="Downscale overlays so their longer side is at most N pixels.",
        rich_help_panel=OUTPUT_PANEL,
        show_default=False,
    ),
]
OutputOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--output",
        "-o",
        help="Write rows to FILE ('-' = stdout).",
        rich_help_panel=OUTPUT_PANEL,
        parser=output_arg,
    ),
]
FmtOpt = Annotated[
    str,
    typer.Option("--format", help=f"{' or '.join(FORMATS)}.", rich_help_panel=OUTPUT_PANEL),
]
ThresholdOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(
        help="Label rows 'anomalous' at or above this score.",
        rich_help_panel=OUTPUT_PANEL,
    ),
]
FailOnAnomalyOpt = Annotated[
    bool,
    typer.Option(
        "--fail-on-anomaly",
        help="Exit 1 when any image is at or above --threshold.",
        rich_help_panel=OUTPUT_PANEL,
    ),
]
ReportOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        help="Also write an HTML report of the run to FILE (when it ends).",
        rich_help_panel=OUTPUT_PANEL,
        parser=path_arg,
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue a run (cron): keep the rows in -o FILE, score the rest and the "
        "files changed since their row; other settings than the file's are refused.",
        rich_help_panel=OUTPUT_PANEL,
    ),
]
CalibrationOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        help="Calibration file from `winclip calibrate`: its settings and bank apply, "
        "labels and p_value come from it.",
        rich_help_panel=DECISION_PANEL,
        parser=path_arg,
    ),
]
FalseAlarmRateOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(
        help="With --calibration: the share of good parts that may be called "
        f"anomalous (default {DEFAULT_FALSE_ALARM_RATE}).",
        rich_help_panel=DECISION_PANEL,
        show_default=False,
    ),
]
SaveMasksOpt = Annotated[
    bool,
    typer.Option(
        "--save-masks",
        help="With --calibration: write the anomalous region as a binary PNG "
        "(.mask.png, image size).",
        rich_help_panel=OUTPUT_PANEL,
    ),
]
MapsModeOpt = Annotated[
    str,
    typer.Option(
        "--maps",
        help="all, or anomalous: maps only for images decided anomalous (zero-shot, "
        "with --calibration or --threshold).",
        rich_help_panel=OUTPUT_PANEL,
    ),
]
RetryErrorsOpt = Annotated[
    bool,
    typer.Option(
        "--retry-errors/--no-retry-errors",
        help="With --resume, score error rows again (their new row replaces them).",
        rich_help_panel=OUTPUT_PANEL,
    ),
]
SettleOpt = Annotated[
    float,
    typer.Option(
        help="With --resume, leave files modified within SECONDS for the next run "
        "(exit 75); 0: off.",
        rich_help_panel=OUTPUT_PANEL,
        metavar="SECONDS",
    ),
]
ShardOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="Score only part I of N of the sorted inputs (job arrays), e.g. 2/8.",
        rich_help_panel=SCALE_PANEL,
        show_default=False,
    ),
]
EngineOpt = Annotated[
    str,
    typer.Option(help="local (this process) or ray (a Ray cluster).", rich_help_panel=SCALE_PANEL),
]
RayAddressOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).",
        rich_help_panel=SCALE_PANEL,
        show_default=False,
    ),
]
RayWorkersOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        help=f"Ray actors, one model each (default: {DEFAULT_RAY_WORKERS}).",
        rich_help_panel=SCALE_PANEL,
        show_default=False,
    ),
]
RayGpusPerWorkerOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(
        help="GPUs per Ray actor (default: 0).",
        rich_help_panel=SCALE_PANEL,
        show_default=False,
    ),
]
