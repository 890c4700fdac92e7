"""Every command-line option, declared once: the option name, its help, its panel and
its parser. The commands in cli.py list these; a new option is one alias here and one
parameter line in each command that takes it.
"""

# No `from __future__ import annotations`: Typer reads the annotations at run time.
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import (
    DEFAULT_OUT_DIR,
    PRECISION_HELP,
    ModelOptions,
    RayOptions,
    RunOptions,
)
from .pathlists import resolve_inputs
from .prompts import PRESETS
from .runinfo import settings_line

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
PrecisionOpt = Annotated[str, typer.Option(help=PRECISION_HELP, rich_help_panel=MODEL_PANEL)]
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
_DEFAULT_PRESET, *_OTHER_PRESETS = PRESETS  # the first preset is the default
PromptsOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help=f"Prompt set: {_DEFAULT_PRESET} (the default, the paper's ensemble), "
        f"{', '.join(_OTHER_PRESETS)}, or a JSON prompt file (normal / anomalous states, "
        "templates).",
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
MUTUAL_PANEL = "Mutual scoring (no prompts, no references)"
MutualOpt = Annotated[
    bool,
    typer.Option(
        "--mutual",
        help="Score the images against each other (MuSc set mode): a patch no other image "
        "has anything like is anomalous. Scores rank this run's images; not calibrated.",
        rich_help_panel=MUTUAL_PANEL,
    ),
]
MutualSetOpt = Annotated[
    int,
    typer.Option(
        "--mutual-set",
        help="With --mutual: at most N images scored together; more are split in input "
        "order into even sets.",
        rich_help_panel=MUTUAL_PANEL,
    ),
]
PoolOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--pool",
        help="Score each image against a pool of unlabelled images of the part (MuSc pool "
        "mode): a folder, or a file from --save-pool. Calibrates like any other mode.",
        rich_help_panel=MUTUAL_PANEL,
        parser=path_arg,
        show_default=False,
    ),
]
SavePoolOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--save-pool",
        help="Save the pool built from --pool DIR to FILE, for later --pool FILE.",
        rich_help_panel=MUTUAL_PANEL,
        parser=path_arg,
        show_default=False,
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show tracebacks of internal errors.")]


def model_options(v: dict[str, Any]) -> ModelOptions:
    """The ModelOptions of a command's parsed parameters (click's ``ctx.params``)."""
    return ModelOptions(
        v["model"],
        v["pretrained"],
        v["weights"],
        v["device"],
        v["precision"],
        v["prompts"],
        v["temperature"],
        v["cache_dir"],
    )


# What `score` hides from its help (it makes no images): their defaults apply.
IMAGE_OPTIONS: dict[str, Any] = {
    "out": DEFAULT_OUT_DIR,
    "save_maps": False,
    "save_masks": False,
    "maps_mode": "all",
    "map_dtype": "float32",
    "overlay_format": "png",
    "overlay_max_side": None,
}


def run_options(mode: str, params: dict[str, Any], given: frozenset[str]) -> RunOptions:
    """The RunOptions of score / segment / fewshot from their parsed parameters; the
    inputs may be a list read from stdin (pathlists: UsageError when it is empty)."""
    v = {**IMAGE_OPTIONS, **params}
    inputs = resolve_inputs(v["paths"], sys.stdin, v["null"])
    return RunOptions(
        inputs=inputs.paths,
        listed=inputs.listed,
        header=not v["no_header"],
        wait=v["wait"],
        verbose=v["verbose"],
        class_name=v["class_name"],
        maps=mode != "score",
        require_ref=mode == "fewshot",
        ref=v["ref"],
        k=v["k"],
        seed=v["seed"],
        save_bank=v["save_bank"],
        out_dir=v["out"],
        save_maps=v["save_maps"],
        map_dtype=v["map_dtype"],
        overlay_format=v["overlay_format"],
        overlay_max_side=v["overlay_max_side"],
        batch_size=v["batch_size"],
        workers=v["workers"],
        tiles=v["tiles"],
        tile_overlap=v["tile_overlap"],
        output=v["output"],
        fmt=v["fmt"],
        threshold=v["threshold"],
        fail_on_anomaly=v["fail_on_anomaly"],
        resume=v["resume"],
        report=v["report"],
        command=mode,
        calibration=v["calibration"],
        false_alarm_rate=v["false_alarm_rate"],
        save_masks=v["save_masks"],
        maps_mode=v["maps_mode"],
        retry_errors=not v["no_retry_errors"],
        rebuild_manifest=v["rebuild_manifest"],
        settle=v["settle"],
        shard=v["shard"],
        engine=v["engine"],
        ray=RayOptions(v["ray_address"], v["ray_workers"], v["ray_gpus_per_worker"], v["verbose"]),
        mutual=v["mutual"],
        mutual_set=v["mutual_set"],
        pool=v["pool"],
        save_pool=v["save_pool"],
        model=model_options(v),
        given=given,
    )


def typed(ctx: typer.Context) -> frozenset[str]:
    """The parameters typed on the command line (not defaults or the environment)."""
    # By name: Typer may carry its own copy of click's ParameterSource enum.
    return frozenset(
        name
        for name in ctx.params
        if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    )


def command_settings(ctx: typer.Context) -> str:
    """A command's parameters as its log's first line shows them: the arguments, then
    each option with a value by its longest name (``--class screw``)."""
    pairs: list[tuple[str, object]] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        name = "" if param.param_type_name == "argument" else max(param.opts, key=len)
        pairs.append((name, [str(v) for v in value] if isinstance(value, list) else value))
    return settings_line(pairs)


def reserve_standard_streams() -> None:
    """Put /dev/null on a closed stdin, stdout or stderr (`2>&-` in a cron line): else
    the next file opened takes that number, and messages or a worker's output meant for
    the terminal would land in it (the rows file, an overlay). A closed stdin is then
    no list of paths (pathlists)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
