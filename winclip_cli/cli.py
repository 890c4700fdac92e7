"""The `winclip` command line: options -> one pipeline call -> exit code.

Heavy imports (torch, open_clip) happen inside the commands, so `--help` and
`--version` answer at once.
"""

# No `from __future__ import annotations`: Typer reads the annotations at run time.
import inspect
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from . import __version__
from .errors import ExitCode, Interrupted, WinclipError
from .options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLASS,
    DEFAULT_FALSE_ALARM_RATE,
    DEFAULT_FORMAT,
    DEFAULT_MODEL,
    DEFAULT_OUT_DIR,
    DEFAULT_PRETRAINED,
    DEFAULT_RAY_WORKERS,
    DEFAULT_SETTLE,
    DEFAULT_TILE_OVERLAP,
    DEFAULT_TILES,
    LOCAL_DIR,
    CalibrateOptions,
    ModelOptions,
    RayOptions,
    RunOptions,
)
from .prompts import PRESETS
from .rows import FORMATS, discard_stdout

app = typer.Typer(
    name="winclip",
    help="Zero- and few-shot visual anomaly detection (WinCLIP) for folders of images.\n\n"
    "Rows go to stdout (or -o FILE); progress and messages go to stderr.\n\n"
    "Exit codes: 0 every input scored; 1 --fail-on-anomaly and an anomaly; 2 usage error; "
    "3 some inputs unreadable (error rows); 4 model or weights not loaded; 75 --resume left "
    "files still being written for the next run; 70 internal error; 130/143 interrupted; "
    "141 stdout closed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

MODEL_PANEL = "Model"
OUTPUT_PANEL = "Output"
DECISION_PANEL = "Decision"
REF_PANEL = "Few-shot references"
SCALE_PANEL = "Past one machine"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"winclip {__version__}")
        raise typer.Exit()


def _reserve_standard_streams() -> None:
    """Put /dev/null on a closed stdin, stdout or stderr (`2>&-` in a cron line): else
    the next file opened takes that number, and messages or a worker's output meant for
    the terminal would land in it (the rows file, an overlay)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Zero- and few-shot visual anomaly detection (WinCLIP) for folders of images."""
    _reserve_standard_streams()


def _path(value: str | Path) -> Path:
    """A path option's value; an empty one is refused, not read as the current folder."""
    if isinstance(value, Path):  # a default
        return value
    if not value.strip():
        raise typer.BadParameter("empty path (an unset shell variable?)")
    return Path(value)


def _output(value: str | Path) -> str:
    return str(_path(value))


def _given(ctx: typer.Context) -> frozenset[str]:
    """The parameters typed on the command line (not defaults or the environment)."""
    # By name: Typer may carry its own copy of click's ParameterSource enum.
    return frozenset(
        name
        for name in ctx.params
        if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    )


def _fail(message: str, code: ExitCode) -> typer.Exit:
    from .progress import Reporter

    Reporter().error(message)
    return typer.Exit(int(code))


def _run(action: Callable[[Any], int], quiet: bool, verbose: bool) -> None:
    """Run ``action(reporter)`` and turn every outcome into the documented exit code:
    the one place where errors become messages and codes."""
    from .progress import Reporter

    reporter = Reporter(quiet=quiet)
    # Library warnings (a cache that can't be written, torch's advice) are messages like
    # ours: through the reporter, one line, silenced by --quiet.
    warnings.showwarning = lambda message, *_args, **_kw: reporter.warn(str(message))
    try:
        code = action(reporter)
    except Interrupted as stop:
        code = stop.code
    except BrokenPipeError:
        # The reader went away (`winclip score ... | head`): stop quietly, like other
        # Unix tools killed by SIGPIPE; the remaining output has nowhere to go.
        discard_stdout()
        code = ExitCode.BROKEN_PIPE
    except WinclipError as exc:
        reporter.error(str(exc))
        code = exc.exit_code
    except KeyboardInterrupt:
        reporter.error("interrupted")
        code = ExitCode.INTERRUPTED
    except Exception as exc:
        if verbose:
            import traceback

            traceback.print_exc(file=reporter.stream)  # never stdout, even with 2>&-
        reporter.error(f"internal error: {type(exc).__name__}: {exc} (--verbose shows details)")
        code = ExitCode.INTERNAL
    raise typer.Exit(int(code))


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
        parser=_path,
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
        parser=_output,
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
        parser=_path,
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

HELP = {
    "score": "Anomaly score per image (zero-shot; WinCLIP+ with --ref).\n\n"
    "Zero-shot: one forward pass per image, no windows (the fastest command). With --ref "
    "it runs the windows as segment does, at segment's speed (about 12x slower).",
    "segment": "Anomaly map per image: a heatmap overlay PNG in --out, plus the score rows.\n\n"
    "Cost: the windowed passes (about 12x score's single pass). Zero-shot by default; "
    "--ref DIR --k N for WinCLIP+ (few-shot).",
    "fewshot": "WinCLIP+ scores and overlays from K known-good reference images (--ref).\n\n"
    "Cost: as segment, plus building the bank from K images once (or reading a bank). "
    "--ref is a folder of normal images or a bank saved earlier with --save-bank.",
}


def _scoring_command(mode: str) -> Callable[..., None]:
    """One command function for score / segment / fewshot: they share every option."""

    def command(
        ctx: typer.Context,
        paths: Annotated[
            Optional[list[Path]],  # noqa: UP045
            typer.Argument(
                help="Image files and folders (walked recursively). Default: .",
                show_default=False,
                parser=_path,
            ),
        ] = None,
        class_name: ClassOpt = DEFAULT_CLASS,
        ref: Annotated[
            Optional[Path],  # noqa: UP045
            typer.Option(
                help="Folder of known-good images, or a saved bank file.",
                rich_help_panel=REF_PANEL,
                parser=_path,
            ),
        ] = None,
        k: Annotated[
            Optional[int],  # noqa: UP045
            typer.Option(
                "--k",
                help="Reference images to take from a --ref folder (default: 4).",
                rich_help_panel=REF_PANEL,
            ),
        ] = None,
        seed: Annotated[
            Optional[int],  # noqa: UP045
            typer.Option(
                help="Pick the K references at random with this seed (default: the first K).",
                rich_help_panel=REF_PANEL,
            ),
        ] = None,
        save_bank: Annotated[
            Optional[Path],  # noqa: UP045
            typer.Option(
                help="Save the reference bank to FILE, for a later --ref FILE.",
                rich_help_panel=REF_PANEL,
                parser=_path,
            ),
        ] = None,
        out: Annotated[
            Path,
            typer.Option(
                help="Folder for overlays (and maps).", rich_help_panel=OUTPUT_PANEL, parser=_path
            ),
        ] = DEFAULT_OUT_DIR,
        save_maps: Annotated[
            bool,
            typer.Option(
                "--save-maps",
                help="Also write the raw map per image (.npy, image size; see --map-dtype).",
                rich_help_panel=OUTPUT_PANEL,
            ),
        ] = False,
        map_dtype: Annotated[
            str,
            typer.Option(
                "--map-dtype",
                help="float32 or float16 (half the disk) for --save-maps.",
                rich_help_panel=OUTPUT_PANEL,
            ),
        ] = "float32",
        overlay_format: Annotated[
            str,
            typer.Option(
                "--overlay-format",
                help="png or jpg (quality 90, several times smaller on photos).",
                rich_help_panel=OUTPUT_PANEL,
            ),
        ] = "png",
        overlay_max_side: Annotated[
            Optional[int],  # noqa: UP045
            typer.Option(
                "--overlay-max-side",
                help="Downscale overlays so their longer side is at most N pixels.",
                rich_help_panel=OUTPUT_PANEL,
                show_default=False,
            ),
        ] = None,
        output: Annotated[
            Optional[str],  # noqa: UP045
            typer.Option(
                "--output",
                "-o",
                help="Write rows to FILE ('-' = stdout).",
                rich_help_panel=OUTPUT_PANEL,
                parser=_output,
            ),
        ] = None,
        fmt: Annotated[
            str,
            typer.Option("--format", help=f"{' or '.join(FORMATS)}.", rich_help_panel=OUTPUT_PANEL),
        ] = DEFAULT_FORMAT,
        threshold: Annotated[
            Optional[float],  # noqa: UP045
            typer.Option(
                help="Label rows 'anomalous' at or above this score.",
                rich_help_panel=OUTPUT_PANEL,
            ),
        ] = None,
        fail_on_anomaly: Annotated[
            bool,
            typer.Option(
                "--fail-on-anomaly",
                help="Exit 1 when any image is at or above --threshold.",
                rich_help_panel=OUTPUT_PANEL,
            ),
        ] = False,
        report: Annotated[
            Optional[Path],  # noqa: UP045
            typer.Option(
                help="Also write an HTML report of the run to FILE (when it ends).",
                rich_help_panel=OUTPUT_PANEL,
                parser=_path,
            ),
        ] = None,
        resume: Annotated[
            bool,
            typer.Option(
                "--resume",
                help="Continue a run (cron): keep the rows in -o FILE, score the rest and the "
                "files changed since their row; other settings than the file's are refused.",
                rich_help_panel=OUTPUT_PANEL,
            ),
        ] = False,
        calibration: Annotated[
            Optional[Path],  # noqa: UP045
            typer.Option(
                help="Calibration file from `winclip calibrate`: its settings and bank apply, "
                "labels and p_value come from it.",
                rich_help_panel=DECISION_PANEL,
                parser=_path,
            ),
        ] = None,
        false_alarm_rate: Annotated[
            Optional[float],  # noqa: UP045
            typer.Option(
                help="With --calibration: the share of good parts that may be called "
                f"anomalous (default {DEFAULT_FALSE_ALARM_RATE}).",
                rich_help_panel=DECISION_PANEL,
                show_default=False,
            ),
        ] = None,
        save_masks: Annotated[
            bool,
            typer.Option(
                "--save-masks",
                help="With --calibration: write the anomalous region as a binary PNG "
                "(.mask.png, image size).",
                rich_help_panel=OUTPUT_PANEL,
            ),
        ] = False,
        maps_mode: Annotated[
            str,
            typer.Option(
                "--maps",
                help="all, or anomalous: maps only for images decided anomalous (zero-shot, "
                "with --calibration or --threshold).",
                rich_help_panel=OUTPUT_PANEL,
            ),
        ] = "all",
        retry_errors: Annotated[
            bool,
            typer.Option(
                "--retry-errors/--no-retry-errors",
                help="With --resume, score error rows again (their new row replaces them).",
                rich_help_panel=OUTPUT_PANEL,
            ),
        ] = True,
        settle: Annotated[
            float,
            typer.Option(
                help="With --resume, leave files modified within SECONDS for the next run "
                "(exit 75); 0: off.",
                rich_help_panel=OUTPUT_PANEL,
                metavar="SECONDS",
            ),
        ] = DEFAULT_SETTLE,
        shard: Annotated[
            Optional[str],  # noqa: UP045
            typer.Option(
                help="Score only part I of N of the sorted inputs (job arrays), e.g. 2/8.",
                rich_help_panel=SCALE_PANEL,
                show_default=False,
            ),
        ] = None,
        engine: Annotated[
            str,
            typer.Option(
                help="local (this process) or ray (a Ray cluster).", rich_help_panel=SCALE_PANEL
            ),
        ] = "local",
        ray_address: Annotated[
            Optional[str],  # noqa: UP045
            typer.Option(
                help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).",
                rich_help_panel=SCALE_PANEL,
                show_default=False,
            ),
        ] = None,
        ray_workers: Annotated[
            Optional[int],  # noqa: UP045
            typer.Option(
                help=f"Ray actors, one model each (default: {DEFAULT_RAY_WORKERS}).",
                rich_help_panel=SCALE_PANEL,
                show_default=False,
            ),
        ] = None,
        ray_gpus_per_worker: Annotated[
            Optional[float],  # noqa: UP045
            typer.Option(
                help="GPUs per Ray actor (default: 0).",
                rich_help_panel=SCALE_PANEL,
                show_default=False,
            ),
        ] = None,
        model: ModelOpt = DEFAULT_MODEL,
        pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
        weights: WeightsOpt = None,
        device: DeviceOpt = "auto",
        precision: PrecisionOpt = "fp32",
        batch_size: BatchOpt = DEFAULT_BATCH_SIZE,
        workers: WorkersOpt = None,
        tiles: TilesOpt = DEFAULT_TILES,
        tile_overlap: TileOverlapOpt = DEFAULT_TILE_OVERLAP,
        prompts: PromptsOpt = None,
        temperature: TemperatureOpt = None,
        cache_dir: CacheOpt = None,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> None:
        from .pipeline import run

        options = RunOptions(
            inputs=list(paths) if paths else [Path(".")],
            class_name=class_name,
            maps=mode != "score",
            require_ref=mode == "fewshot",
            ref=ref,
            k=k,
            seed=seed,
            save_bank=save_bank,
            out_dir=out,
            save_maps=save_maps,
            map_dtype=map_dtype,
            overlay_format=overlay_format,
            overlay_max_side=overlay_max_side,
            batch_size=batch_size,
            workers=workers,
            tiles=tiles,
            tile_overlap=tile_overlap,
            output=output,
            fmt=fmt,
            threshold=threshold,
            fail_on_anomaly=fail_on_anomaly,
            resume=resume,
            report=report,
            command=mode,
            calibration=calibration,
            false_alarm_rate=false_alarm_rate,
            save_masks=save_masks,
            maps_mode=maps_mode,
            retry_errors=retry_errors,
            settle=settle,
            shard=shard,
            engine=engine,
            ray=RayOptions(ray_address, ray_workers, ray_gpus_per_worker),
            model=ModelOptions(
                model, pretrained, weights, device, precision, prompts, temperature, cache_dir
            ),
            given=_given(ctx),
        )
        _run(lambda reporter: run(options, reporter), quiet, verbose)

    if mode == "score":  # score makes no images: hide the image options from its help
        signature = inspect.signature(command)
        hidden = {"out", "save_maps", "save_masks", "maps_mode", "map_dtype", "overlay_format"}
        hidden.add("overlay_max_side")
        keep = [p for p in signature.parameters.values() if p.name not in hidden]
        command.__signature__ = signature.replace(parameters=keep)  # type: ignore[attr-defined]  # Typer reads it
    command.__doc__ = HELP[mode]
    return command


for _mode in ("score", "segment", "fewshot"):
    app.command(_mode)(_scoring_command(_mode))


@app.command("calibrate")
def calibrate_command(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Known-good image files and folders (walked recursively).", parser=_path
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="The calibration file to write (.cal).", parser=_path),
    ],
    class_name: ClassOpt = DEFAULT_CLASS,
    ref: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Few-shot: a folder of known-good images (K become the bank, the rest "
            "calibrate), or a saved bank file.",
            rich_help_panel=REF_PANEL,
            parser=_path,
        ),
    ] = None,
    k: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--k",
            help="Reference images from a --ref folder (default: 4).",
            rich_help_panel=REF_PANEL,
        ),
    ] = None,
    seed: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            help="Pick the K references at random with this seed.", rich_help_panel=REF_PANEL
        ),
    ] = None,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    batch_size: BatchOpt = DEFAULT_BATCH_SIZE,
    workers: WorkersOpt = None,
    tiles: TilesOpt = DEFAULT_TILES,
    tile_overlap: TileOverlapOpt = DEFAULT_TILE_OVERLAP,
    prompts: PromptsOpt = None,
    temperature: TemperatureOpt = None,
    cache_dir: CacheOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Score known-good images and write a calibration: a threshold with a guaranteed
    false-alarm rate, and a p-value for every score (use it with --calibration).

    Zero-shot, or few-shot with --ref. The summary says which rates the images support.
    """
    from .calibrate import run_calibrate

    options = CalibrateOptions(
        inputs=list(paths),
        output=output,
        class_name=class_name,
        ref=ref,
        k=k,
        seed=seed,
        batch_size=batch_size,
        workers=workers,
        tiles=tiles,
        tile_overlap=tile_overlap,
        model=ModelOptions(
            model, pretrained, weights, device, precision, prompts, temperature, cache_dir
        ),
    )
    _run(lambda reporter: run_calibrate(options, reporter), quiet, verbose)


@app.command("eval")
def eval_command(
    root: Annotated[
        Path, typer.Argument(help="Dataset folder (MVTec AD or VisA layout).", parser=_path)
    ],
    layout: Annotated[str, typer.Option(help="auto, mvtec or visa.")] = "auto",
    category: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="Category to evaluate (repeat for several). Default: all."),
    ] = None,
    k: Annotated[
        Optional[list[int]],  # noqa: UP045
        typer.Option("--k", help="Shots (repeat: --k 0 --k 1 --k 4). Default: 0."),
    ] = None,
    seeds: Annotated[int, typer.Option(help="Reference draws per k > 0 (mean and std).")] = 1,
    class_name: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--class", "-c", help="Prompt class for all categories (default: each name)."),
    ] = None,
    json_path: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--json", help="Write every figure to this JSON file ('-' = stdout).", parser=_path
        ),
    ] = None,
    scores: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Per-image rows (category, k, seed, path, label, score) to FILE ('-' = stdout).",
            parser=_path,
        ),
    ] = None,
    compare: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="'paper': print the published WinCLIP figures beside yours."),
    ] = None,
    calibrate: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            help="Calibrate on train/good (minus the references) at this false-alarm rate; "
            "report the realised rate on test/good (far) and the detection rate (tpr).",
            show_default=False,
        ),
    ] = None,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    batch_size: BatchOpt = DEFAULT_BATCH_SIZE,
    workers: WorkersOpt = None,
    tiles: TilesOpt = DEFAULT_TILES,
    tile_overlap: TileOverlapOpt = DEFAULT_TILE_OVERLAP,
    prompts: PromptsOpt = None,
    temperature: TemperatureOpt = None,
    cache_dir: CacheOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Image and pixel metrics (AUROC, AP, F1-max, PRO) on a labelled dataset.

    The table goes to stderr; --json and --scores keep every figure.
    """
    from .options import EvalOptions

    options = EvalOptions(
        root=root,
        layout=layout,
        categories=category,
        shots=k or [0],
        seeds=seeds,
        class_name=class_name,
        json_path=json_path,
        scores_path=scores,
        compare=compare,
        calibrate=calibrate,
        batch_size=batch_size,
        workers=workers,
        tiles=tiles,
        tile_overlap=tile_overlap,
        model=ModelOptions(
            model, pretrained, weights, device, precision, prompts, temperature, cache_dir
        ),
    )

    def action(reporter: Any) -> int:
        from .evaluate import evaluate_command

        def progress(p: Any) -> None:
            if p.done == p.total:
                reporter.info(f"{p.category} k={p.k} seed={p.seed}: {p.total} images")

        table = None if quiet else reporter.stream
        return evaluate_command(options, table_stream=table, progress=progress)

    _run(action, quiet, verbose)


@app.command("report")
def report_command(
    rows: Annotated[
        list[Path],
        typer.Argument(
            help="Rows files (CSV or JSON lines; several shards in order).", parser=_path
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The HTML file to write.", parser=_path)
    ] = Path("report.html"),
    gallery: Annotated[
        int, typer.Option(help="Thumbnails in the gallery: the highest scores, then errors.")
    ] = 200,
    title: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Title of the report (default: from the rows files' names)."),
    ] = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """One self-contained HTML file from rows files and the overlays they name.

    Opens offline; thumbnails are embedded; works without JavaScript."""

    def action(reporter: Any) -> int:
        from .errors import UsageError
        from .planning import check_writable_file
        from .report import build_report

        if gallery < 0:
            raise UsageError("--gallery must be 0 or more")
        missing = [str(p) for p in rows if not p.is_file()]
        if missing:
            raise UsageError(f"rows file not found: {missing[0]}")
        check_writable_file(output)
        try:
            summary = build_report(
                rows, output, gallery=gallery, title=title, progress=reporter.counter("thumbnails")
            )
        finally:
            reporter.stop()
        for note in summary.notes:
            reporter.warn(note)
        reporter.info(f"{summary.rows} row(s), {summary.cards} card(s): {output}")
        return ExitCode.OK

    _run(action, quiet, verbose)


@app.command()
def download(
    model: Annotated[str, typer.Option(help="open_clip model name.")] = DEFAULT_MODEL,
    pretrained: Annotated[str, typer.Option(help="open_clip weights tag.")] = DEFAULT_PRETRAINED,
) -> None:
    """Fetch weights into the local cache, for later offline runs."""
    from .backbone import fetch_pretrained
    from .errors import WeightsUnavailableError

    if model.startswith(LOCAL_DIR):
        raise _fail(f"nothing to download: {model} is read from its folder", ExitCode.USAGE)
    try:
        path = fetch_pretrained(model, pretrained)
    except WeightsUnavailableError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    typer.echo(str(path))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
