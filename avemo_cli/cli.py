"""The ``avemo`` command line: a thin layer over the Python API (pipeline.py, batch.py)."""
from __future__ import annotations

import sys
import time

import click

from . import __version__

_START = time.perf_counter()


def _fail(message: str, code: int = 2):
    click.echo(f"avemo: error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="avemo")
def main():
    """Per-frame emotional valence/arousal annotation of talking-face videos."""


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-o", "--output-dir", default=".", show_default=True, type=click.Path(),
              help="Folder for <stem>.avemo.csv outputs (mirrors input folders).")
@click.option("--weights", default=None, metavar="NAME|PATH",
              help="Checkpoint file, or the name of a shipped model [default: default].")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]")
@click.option("--faces", "faces_backend", default="dlib", show_default=True,
              type=click.Choice(["dlib", "fan"]), help="Face detection/landmark backend.")
@click.option("--stride", default=1, show_default=True, type=click.IntRange(min=1),
              help="Predict every Nth analysis step and interpolate between (faster).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--detect-every", default=8, show_default=True, type=click.IntRange(min=1),
              help="Re-run the face detector at least every N steps (tracking in between).")
@click.option("--overwrite", is_flag=True, help="Redo inputs whose output already exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no skip notices.")
@click.option("--profile", is_flag=True, help="Print seconds per stage and the real-time factor.")
def annotate(inputs, output_dir, weights, device, faces_backend, stride, batch_size, detect_every,
             overwrite, quiet, profile):
    """Annotate videos, audio files and folders of them (searched recursively).

    Writes one CSV per input (frame, time, valence, arousal, face, voice). Prints each written
    file on stdout; notices, progress and errors go to stderr. Exit status 1 if any input failed.
    """
    from rich.console import Console

    from .batch import annotate_files
    from .errors import AvemoError
    from .pipeline import Annotator

    console = Console(stderr=True)
    try:
        annotator = Annotator(weights, device=device, faces_backend=faces_backend, stride=stride,
                              batch_size=batch_size, detect_every=detect_every)
    except (AvemoError, ValueError) as err:
        _fail(str(err))
    loaded = time.perf_counter()

    with _Progress(console, enabled=not quiet) as prog:
        def on_done(job, status, detail):
            if status == "written":
                print(detail, flush=True)  # stdout: results only (rich keeps it off its display)
            elif status == "skipped":
                if not quiet:
                    prog.print(f"skip: {detail}")
            else:
                prog.print(f"avemo: error: {detail}")
            prog.advance()

        try:
            report = annotate_files(inputs, annotator, output_dir, overwrite,
                                    on_start=prog.start, on_stage=prog.stage, on_done=on_done)
        except KeyboardInterrupt:
            prog.print("avemo: interrupted; outputs already written are complete, "
                       "the one in progress was not written (re-run to resume)")
            sys.exit(130)
    if profile:
        _print_profile(console, report, loaded - _START, time.perf_counter() - _START)
    if report.failed:
        n = len(report.failed)
        console.print(f"avemo: {n} input{'s' if n > 1 else ''} failed", highlight=False, soft_wrap=True)
        sys.exit(1)


class _Progress:
    """rich progress on stderr: files done of all, and the current file's pipeline stage."""

    def __init__(self, console, enabled: bool):
        self.console = console
        self.enabled = enabled and console.is_terminal
        self.progress = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
                TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TimeElapsedColumn(),
                                     console=self.console, transient=True)
            self.progress.__enter__()
            self.task = self.progress.add_task("files", total=None)
            self.file_task = self.progress.add_task("", total=5)  # stages reported per file
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start(self, job, i, n):
        if self.progress is not None:
            self.progress.update(self.task, total=n)
            self.name = job.source.name
            self.done_stages = 0
            self.progress.update(self.file_task, description=self.name, completed=0)

    def stage(self, stage):
        if self.progress is not None:
            self.progress.update(self.file_task, description=f"{self.name}: {stage}",
                                 completed=self.done_stages)
            self.done_stages += 1

    def advance(self):
        if self.progress is not None:
            self.progress.advance(self.task)

    def print(self, text):
        (self.progress.console if self.progress is not None else self.console).print(
            text, highlight=False, markup=False, soft_wrap=True)


def _print_profile(console, report, startup: float, wall: float) -> None:
    from rich.table import Table

    from .pipeline import STAGES

    media = report.media_seconds
    table = Table(title="avemo profile", show_lines=False)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("s per s of media", justify="right")
    table.add_row("start-up (imports, model)", f"{startup:.2f}", "")
    for stage in STAGES:
        sec = report.timings[stage]
        table.add_row(stage, f"{sec:.2f}", f"{sec / media:.3f}" if media else "-")
    table.add_row("total (wall, incl. start-up)", f"{wall:.2f}", f"{wall / media:.3f}" if media else "-")
    console.print(table)
    if media:
        console.print(f"media: {media:.1f} s in {len(report.written)} file(s); real-time factor "
                      f"{media / wall:.1f}x (media seconds per wall second, start-up included)",
                      highlight=False, soft_wrap=True)
