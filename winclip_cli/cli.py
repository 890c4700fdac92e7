"""The `winclip` command line: options -> one pipeline call -> exit code.

Heavy imports (torch, open_clip) happen inside the commands, so `--help` and
`--version` answer at once.
"""

# No `from __future__ import annotations`: Typer reads the annotations at run time.
import inspect
import sys
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


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Zero- and few-shot visual anomaly detection (WinCLIP) for folders of images."""


def _fail(message: str, code: int) -> typer.Exit:
    from .report import Reporter

    Reporter().error(message)
    return typer.Exit(code)


def _run(options: Any, quiet: bool, verbose: bool) -> None:
    """Run the pipeline and turn every outcome into the documented exit code."""
    from .backbone import WeightsUnavailableError
    from .pipeline import ExitCode, UsageError, run
    from .report import Reporter

    reporter = Reporter(quiet=quiet)
    try:
        code = run(options, reporter)
    except UsageError as exc:
        reporter.error(str(exc))
        code = ExitCode.USAGE
    except WeightsUnavailableError as exc:
        reporter.error(str(exc))
        code = ExitCode.MODEL
    except KeyboardInterrupt:
        reporter.error("interrupted before any row was written")
        code = ExitCode.INTERRUPTED
    except Exception as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        reporter.error(f"internal error: {type(exc).__name__}: {exc} (--verbose shows details)")
        code = ExitCode.INTERNAL
    raise typer.Exit(int(code))


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
            Optional[list[Path]],  # noqa: UP045 - Typer reads this annotation at run time
            typer.Argument(
                help="Image files and folders (walked recursively). Default: .", show_default=False
            ),
        ] = None,
        class_name: Annotated[
            str, typer.Option("--class", "-c", help="Name of the part, used in the text prompts.")
        ] = "object",
        ref: Annotated[
            Optional[Path],  # noqa: UP045
            typer.Option(
                help="Folder of known-good images, or a saved bank file.", rich_help_panel=REF_PANEL
            ),
        ] = None,
        k: Annotated[
            int, typer.Option("--k", help="Reference images to use.", rich_help_panel=REF_PANEL)
        ] = 4,
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
            ),
        ] = None,
        out: Annotated[
            Path, typer.Option(help="Folder for overlays (and maps).", rich_help_panel=OUTPUT_PANEL)
        ] = Path("winclip-out"),
        save_maps: Annotated[
            bool,
            typer.Option(
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
            ),
        ] = None,
        fmt: Annotated[
            str, typer.Option("--format", help="csv or jsonl.", rich_help_panel=OUTPUT_PANEL)
        ] = "csv",
        threshold: Annotated[
            Optional[float],  # noqa: UP045
            typer.Option(
                help="Label rows 'anomalous' at or above this score.", rich_help_panel=OUTPUT_PANEL
            ),
        ] = None,
        fail_on_anomaly: Annotated[
            bool,
            typer.Option(
                help="Exit 1 when any image is at or above --threshold.",
                rich_help_panel=OUTPUT_PANEL,
            ),
        ] = False,
        resume: Annotated[
            bool,
            typer.Option(
                help="Continue an interrupted run: keep the rows in -o FILE, score the rest.",
                rich_help_panel=OUTPUT_PANEL,
            ),
        ] = False,
        model: Annotated[
            str,
            typer.Option(
                help="open_clip model name, or local-dir:PATH.", rich_help_panel=MODEL_PANEL
            ),
        ] = "ViT-B-16-plus-240",
        pretrained: Annotated[
            str,
            typer.Option(
                help="open_clip weights tag (downloaded once, then cached).",
                rich_help_panel=MODEL_PANEL,
            ),
        ] = "laion400m_e31",
        weights: Annotated[
            Optional[Path],  # noqa: UP045
            typer.Option(
                help="Local checkpoint (.pt/.bin/.safetensors); nothing is downloaded.",
                rich_help_panel=MODEL_PANEL,
            ),
        ] = None,
        device: Annotated[
            str, typer.Option(help="auto, cpu, cuda or mps.", rich_help_panel=MODEL_PANEL)
        ] = "auto",
        precision: Annotated[
            str, typer.Option(help="fp32, fp16 (GPU) or bf16.", rich_help_panel=MODEL_PANEL)
        ] = "fp32",
        batch_size: Annotated[
            int, typer.Option(help="Images per forward pass.", rich_help_panel=MODEL_PANEL)
        ] = 8,
        workers: Annotated[
            Optional[int],  # noqa: UP045
            typer.Option(
                help="Decoding processes (0: none). Default: half the cores, at most 4.",
                rich_help_panel=MODEL_PANEL,
                show_default=False,
            ),
        ] = None,
        prompts: Annotated[
            Optional[Path],  # noqa: UP045
            typer.Option(
                help="JSON prompt file (normal / anomalous states, templates).",
                rich_help_panel=MODEL_PANEL,
            ),
        ] = None,
        temperature: Annotated[
            Optional[float],  # noqa: UP045
            typer.Option(
                help="Softmax temperature (default: the model's own).",
                rich_help_panel=MODEL_PANEL,
                show_default=False,
            ),
        ] = None,
        cache_dir: Annotated[
            Optional[Path],  # noqa: UP045
            typer.Option(
                help="Text-embedding cache folder (or $WINCLIP_CACHE_DIR).",
                rich_help_panel=MODEL_PANEL,
                show_default=False,
            ),
        ] = None,
        quiet: Annotated[
            bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")
        ] = False,
        verbose: Annotated[bool, typer.Option(help="Show tracebacks of internal errors.")] = False,
    ) -> None:
        from .pipeline import ModelOptions, RunOptions

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
        if fmt not in ("csv", "jsonl"):
            raise _fail(f"--format {fmt!r}: use csv or jsonl", 2)
        _run(options, quiet, verbose)

    if mode == "score":  # score makes no images: hide the image options from its help
        signature = inspect.signature(command)
        keep = [p for p in signature.parameters.values() if p.name not in ("out", "save_maps")]
        command.__signature__ = signature.replace(parameters=keep)  # type: ignore[attr-defined]
    command.__doc__ = HELP[mode]
    return command


for _mode in ("score", "segment", "fewshot"):
    app.command(_mode)(_scoring_command(_mode))


@app.command()
def download(
    model: Annotated[str, typer.Option(help="open_clip model name.")] = "ViT-B-16-plus-240",
    pretrained: Annotated[str, typer.Option(help="open_clip weights tag.")] = "laion400m_e31",
) -> None:
    """Fetch weights into the local cache, for later offline runs."""
    from .backbone import WeightsUnavailableError, fetch_pretrained

    try:
        path = fetch_pretrained(model, pretrained)
    except WeightsUnavailableError as exc:
        raise _fail(str(exc), 4) from None
    typer.echo(str(path))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
