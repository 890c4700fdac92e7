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

app = typer.Typer(
    name="winclip",
    help="Zero- and few-shot visual anomaly detection (WinCLIP) for folders of images.\n\n"
    "Rows go to stdout (or -o FILE); progress and messages go to stderr.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

MODEL_PANEL = "Model"
OUTPUT_PANEL = "Output"
REF_PANEL = "Few-shot references"


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


def _fail(message: str, code: int) -> typer.Exit:
    from .progress import Reporter

    Reporter().error(message)
    return typer.Exit(code)


def _run(action: Callable[[Any], int], quiet: bool, verbose: bool) -> None:
    """Run ``action(reporter)`` and turn every outcome into the documented exit code."""
    from .backbone import WeightsUnavailableError
    from .outputs import discard_stdout
    from .pipeline import ExitCode, Interrupted
    from .planning import UsageError
    from .progress import Reporter

    reporter = Reporter(quiet=quiet)
    from .evaluate import DatasetError
    from .metrics import MissingDependencyError
    from .prompts import PromptFileError

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
    except (UsageError, DatasetError, PromptFileError, MissingDependencyError) as exc:
        reporter.error(str(exc))
        code = ExitCode.USAGE
    except WeightsUnavailableError as exc:
        reporter.error(str(exc))
        code = ExitCode.MODEL
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
    int, typer.Option(help="Images per forward pass.", rich_help_panel=MODEL_PANEL)
]
PromptsOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        help="JSON prompt file (normal / anomalous states, templates).",
        rich_help_panel=MODEL_PANEL,
        parser=_path,
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
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show tracebacks of internal errors.")]

# The same values as backbone.DEFAULT_MODEL / DEFAULT_PRETRAINED, spelled here because
# importing backbone loads torch, and `--help` must answer at once (a test keeps them equal).
DEFAULT_MODEL = "ViT-B-16-plus-240"
DEFAULT_PRETRAINED = "laion400m_e31"

HELP = {
    "score": "Anomaly score per image (zero-shot; WinCLIP+ with --ref).\n\n"
    "One forward pass per image, no windows: the fastest command.",
    "segment": "Anomaly map per image: a heatmap overlay PNG in --out, plus the score rows.\n\n"
    "Zero-shot by default; --ref DIR --k N for WinCLIP+ (few-shot).",
    "fewshot": "WinCLIP+ scores and overlays from K known-good reference images (--ref).\n\n"
    "--ref is a folder of normal images or a bank saved earlier with --save-bank.",
}


def _scoring_command(mode: str) -> Callable[..., None]:
    """One command function for score / segment / fewshot: they share every option."""

    def command(
        paths: Annotated[
            Optional[list[Path]],  # noqa: UP045
            typer.Argument(
                help="Image files and folders (walked recursively). Default: .",
                show_default=False,
                parser=_path,
            ),
        ] = None,
        class_name: ClassOpt = "object",
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
        ] = Path("winclip-out"),
        save_maps: Annotated[
            bool,
            typer.Option(
                "--save-maps",
                help="Also write the raw map per image (.npy, float32, image size).",
                rich_help_panel=OUTPUT_PANEL,
            ),
        ] = False,
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
            str, typer.Option("--format", help="csv or jsonl.", rich_help_panel=OUTPUT_PANEL)
        ] = "csv",
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
        resume: Annotated[
            bool,
            typer.Option(
                "--resume",
                help="Continue an interrupted run: keep the rows in -o FILE, score the rest.",
                rich_help_panel=OUTPUT_PANEL,
            ),
        ] = False,
        model: ModelOpt = DEFAULT_MODEL,
        pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
        weights: WeightsOpt = None,
        device: DeviceOpt = "auto",
        precision: PrecisionOpt = "fp32",
        batch_size: BatchOpt = 8,
        workers: Annotated[
            Optional[int],  # noqa: UP045
            typer.Option(
                help="Decoding processes (0: none). Default: half the cores, at most 4.",
                rich_help_panel=MODEL_PANEL,
                show_default=False,
            ),
        ] = None,
        prompts: PromptsOpt = None,
        temperature: TemperatureOpt = None,
        cache_dir: CacheOpt = None,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> None:
        from .pipeline import run
        from .planning import ModelOptions, RunOptions

        if fmt not in ("csv", "jsonl"):
            raise _fail(f"--format {fmt!r}: use csv or jsonl", 2)
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
            batch_size=batch_size,
            workers=workers,
            output=output,
            fmt=fmt,
            threshold=threshold,
            fail_on_anomaly=fail_on_anomaly,
            resume=resume,
            model=ModelOptions(
                model, pretrained, weights, device, precision, prompts, temperature, cache_dir
            ),
        )
        _run(lambda reporter: run(options, reporter), quiet, verbose)

    if mode == "score":  # score makes no images: hide the image options from its help
        signature = inspect.signature(command)
        keep = [p for p in signature.parameters.values() if p.name not in ("out", "save_maps")]
        command.__signature__ = signature.replace(parameters=keep)  # type: ignore[attr-defined]
    command.__doc__ = HELP[mode]
    return command


for _mode in ("score", "segment", "fewshot"):
    app.command(_mode)(_scoring_command(_mode))


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
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    batch_size: BatchOpt = 8,
    prompts: PromptsOpt = None,
    temperature: TemperatureOpt = None,
    cache_dir: CacheOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Image and pixel metrics (AUROC, AP, F1-max, PRO) on a labelled dataset.

    The table goes to stderr; --json and --scores keep every figure.
    """
    if compare not in (None, "paper"):
        raise _fail(f"--compare {compare!r}: the only comparison is 'paper'", 2)

    def action(reporter: Any) -> int:
        from . import evaluate
        from .model import WinClip
        from .planning import (
            ModelOptions,
            UsageError,
            check_class_name,
            check_model_options,
            check_writable_file,
            refuse_overwriting,
        )

        shots = k or [0]
        # Check the tree and the options before paying for the model.
        if seeds < 1 or any(shot < 0 for shot in shots):
            raise UsageError("--seeds must be at least 1 and every --k at least 0")
        if batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if class_name is not None:
            check_class_name(class_name)
        for option, path in (("--json", json_path), ("--scores", scores)):
            if path is not None and str(path) != "-":
                check_writable_file(path)
                inputs = [p for p in (weights, prompts) if p is not None]
                if evaluate.is_dataset_file(root, path):
                    inputs.append(path)
                refuse_overwriting(option, path, inputs)
        both = json_path is not None and scores is not None
        if both and os.path.abspath(json_path) == os.path.abspath(scores):  # type: ignore[arg-type]
            raise UsageError("--json and --scores name the same file")
        options = ModelOptions(
            model, pretrained, weights, device, precision, prompts, temperature, cache_dir
        )
        prompt_set = check_model_options(options)
        evaluate.discover(root, layout=layout, categories=category)
        wc = WinClip.load(
            model=model,
            pretrained=pretrained,
            weights=weights,
            device=device,
            precision=precision,
            cache_dir=cache_dir,
            prompts=prompt_set,
            temperature=temperature,
        )

        def progress(p: Any) -> None:
            if p.done == p.total:
                reporter.info(f"{p.category} k={p.k} seed={p.seed}: {p.total} images")

        evaluate.run_evaluation(
            wc,
            root,
            layout=layout,
            categories=category,
            shots=shots,
            seeds=seeds,
            class_name=class_name,
            batch_size=batch_size,
            scores_path=scores,
            json_path=json_path,
            compare=compare == "paper",
            table_stream=None if quiet else reporter.stream,
            progress=progress,
        )
        return 0

    _run(action, quiet, verbose)


@app.command()
def download(
    model: Annotated[str, typer.Option(help="open_clip model name.")] = DEFAULT_MODEL,
    pretrained: Annotated[str, typer.Option(help="open_clip weights tag.")] = DEFAULT_PRETRAINED,
) -> None:
    """Fetch weights into the local cache, for later offline runs."""
    from .backbone import LOCAL_DIR, WeightsUnavailableError, fetch_pretrained

    if model.startswith(LOCAL_DIR):
        raise _fail(f"nothing to download: {model} is read from its folder", 2)
    try:
        path = fetch_pretrained(model, pretrained)
    except WeightsUnavailableError as exc:
        raise _fail(str(exc), 4) from None
    typer.echo(str(path))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
