"""The ``avemo`` command line: a thin layer over the Python API (batch.py, evaluate.py,
train.py): options are parsed here and passed on whole; the work is done there."""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import plural, printable
from .outputs import FORMATS_HELP  # (the registry's names; numpy, no torch)

_START = time.perf_counter()


def _fail(message: str, code: int = 2):
    click.echo(f"avemo: error: {printable(message)}", err=True)
    sys.exit(code)


_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Avemo(click.Group):
    """The command group, with the boundary guard: whatever a user can cause (bad options,
    unreadable or unwritable files, an unusable checkpoint or device) ends in one line on stderr
    and exit status 2 (130 for Ctrl-C, 143 for SIGTERM), never a traceback."""

    def main(self, *args, **kwargs):
        from .errors import AvemoError

        kwargs.pop("standalone_mode", None)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as done:  # --help, --version
            sys.exit(done.exit_code)
        except _NO_ARGS as err:  # bare "avemo": the help
            click.echo(err.format_message(), err=True)
            sys.exit(2)
        except click.ClickException as err:
            where = getattr(err, "ctx", None)
            hint = f" (see '{where.command_path} -h')" if where is not None else ""
            _fail(f"{err.format_message()}{hint}", err.exit_code)
        except (click.Abort, KeyboardInterrupt) as stop:
            _fail(*_stopped(stop))
        except AvemoError as err:
            _fail(str(err))
        except OSError as err:  # a file the user named: unreadable, unwritable, disk full
            name = f"{err.filename}: " if err.filename else ""
            _fail(f"{name}{err.strerror or err}")


def _stopped(stop: BaseException) -> tuple[str, int]:
    """What a stop is called and the exit status it gives: Ctrl-C 130, SIGTERM 143."""
    from .workers import Terminated

    if isinstance(stop, Terminated) or isinstance(stop.__cause__, Terminated):  # (click turns
        # a KeyboardInterrupt in a command into Abort)
        return "terminated (SIGTERM)", 143
    return "interrupted", 130


_CONSOLE = False  # set by run(): the command runs as the avemo script / python -m avemo_cli


def run() -> None:
    """The console entry point (``avemo``, ``python -m avemo_cli``): ``main``, then an
    immediate exit once stdout and stderr are flushed. Every output is complete by then
    (written atomically, manifests closed, worker pools shut down); what is skipped is the
    interpreter's teardown of torch and the other libraries, ~0.3-0.7 s per command."""
    global _CONSOLE
    _CONSOLE = True
    _hold_standard_fds()
    code: int = 0
    from . import workers

    workers.stop_signals()  # SIGTERM (a scheduler's stop) ends the command as Ctrl-C does
    try:
        main(prog_name="avemo")
    except SystemExit as done:
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
            code = 1
        else:
            code = done.code or 0
    finally:
        workers.end_all()  # a process begun for an input, if the command ended early
    _finalize_pools()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # (a stdout closed under us: said already)
            pass
    os._exit(code)


def _hold_standard_fds() -> None:
    """A standard stream started closed (``avemo ... >&-``): /dev/null takes its descriptor, so
    that no pipe of a process pool is given that number (stdout's later silencing would
    replace the pipe, and the pool would wait for ever). Python's ``sys.stdout`` stays None:
    the names are still said to be unprinted."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # (the lowest free number: fd itself)
                os.dup2(null, fd)
                os.close(null)


def _silence_stdout() -> None:
    """stdout to /dev/null from now on (its reader has gone), so that nothing written or
    flushed later fails."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    except OSError:
        pass


def _finalize_pools() -> None:
    """What the interpreter's exit would do for process pools' queues (close them, unlink their
    semaphores), which ``os._exit`` skips: else multiprocessing's resource tracker warns of
    "leaked semaphore objects" after the command has ended."""
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        try:
            util._run_finalizers(0)
        except Exception:
            pass


QUIET = click.option("-q", "--quiet", is_flag=True, help="No progress and no notices.")
DEVICE = click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
                      help="Where the networks run.")
FACES = click.option("--faces", "faces_backend", default="dlib", show_default=True,
                     type=click.Choice(["dlib", "fan"]), help="Face detection/landmark backend.")


@click.group(cls=_Avemo, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="avemo")
def main():
    """Per-frame emotional valence/arousal annotation of talking-face videos."""
    _one_line_warnings()


@main.command(short_help="Annotate videos, audio files and folders: a table (and more) per "
                         "input.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-o", "--output-dir", default=".", show_default=True, type=click.Path(),
              help="Folder for <stem>.avemo.csv outputs (mirrors input folders).")
@click.option("--weights", default=None, metavar="NAME|PATH",
              help="Checkpoint file, or the name of a shipped model [default: default].")
@DEVICE
@FACES
@click.option("--stride", default=1, show_default=True, type=click.IntRange(min=1),
              help="Predict every Nth analysis step and interpolate between (faster).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--detect-every", default=8, show_default=True, type=click.IntRange(min=1),
              help="Re-run the face detector at least every N steps (tracking in between).")
@click.option("--analysis-size", "max_side", default=480, show_default=True,
              type=click.IntRange(min=64, max=4096), metavar="PX",
              help="Long side of the frames faces are found in (a wide shot whose faces are "
                   "too small there is searched at up to 1920 px).")
@click.option("--overwrite", is_flag=True, help="Redo inputs whose output already exists.")
@QUIET
@click.option("--profile", is_flag=True, help="Print seconds per stage and the real-time factor.")
@click.option("--plot", is_flag=True,
              help="Also write <stem>.avemo.png: valence/arousal over time.")
@click.option("--overlay", is_flag=True,
              help="Also write <stem>.avemo.mp4: the input with face box, visual attention heat "
                   "map, audio attention and valence/arousal gauges.")
@click.option("--jobs", "jobs", default="1", show_default=True, metavar="N|auto",
              help="Files at once (auto: one per core). A folder with one model (--jobs 1, "
                   "and always on CUDA) is fed by that many extraction processes (at most one "
                   "per core but one, and what memory holds): the next files are extracted "
                   "while the model works. Above 1 on the CPU each file goes to a worker "
                   "process with its own model.")
@click.option("--one-model/--model-per-job", "one_model", default=None,
              help="One model fed by extraction processes (the default on CUDA and with "
                   "--jobs 1; less memory), or a model in every worker (the default on the "
                   "CPU with --jobs above 1; --model-per-job with --jobs 1: one file after "
                   "the other in one process).")
@click.option("--shard", default=None, metavar="I/N",
              help="Annotate only shard I of N (0 <= I < N) of the inputs, chosen by a hash of "
                   "each input's path; default: from a SLURM, Kubernetes or AWS Batch job array.")
@click.option("--max-faces", default=1, show_default=True, type=click.IntRange(min=1),
              help="Track up to N people, each with a face_id that follows the person (face "
                   "descriptors); the voice goes to the face that speaks.")
@click.option("--format", "formats", default="csv", show_default=True, metavar=FORMATS_HELP,
              help="Outputs to write, a comma list: <stem>.avemo.<format> each (all: every "
                   "format but png and mp4; png is --plot, mp4 is --overlay; segments: "
                   "<stem>.avemo.segments.csv, the utterances).")
@click.option("--pause", default=0.5, show_default=True, type=click.FloatRange(0, 60),
              metavar="SECONDS", help="Speech across a shorter pause is one utterance.")
@click.option("--vtt-cues", "cues", default="seconds", show_default=True,
              type=click.Choice(["seconds", "utterances"]),
              help="The subtitles (--format vtt): a cue per second, or per utterance.")
def annotate(inputs, output_dir, weights, device, faces_backend, stride, batch_size, detect_every,
             max_side, overwrite, quiet, profile, plot, overlay, jobs, one_model, shard, max_faces,
             formats, pause, cues):
    """Annotate videos, audio files and folders of them (searched recursively).

    Writes one table per input (one row per frame per face: frame, time, face_id, valence,
    arousal, face, voice, speaking, confidence, box_x, box_y, box_w, box_h) in each --format,
    and with segments its utterances (a row per stretch of one speaker's speech).
    Prints each written file on stdout; notices, progress and errors go to stderr. Exit status
    1 if any input failed.
    """
    from .batch import AnnotateOptions, annotate_files
    from .outputs import WRITERS, parse_formats
    from .settings import AnnotatorSettings

    try:
        chosen = parse_formats(formats + ",png" * plot + ",mp4" * overlay)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--format'") from None
    part = _shard(shard)
    options = AnnotateOptions(
        output_dir=output_dir, formats=chosen, overwrite=overwrite, weights=weights,
        settings=AnnotatorSettings(device=device, faces_backend=faces_backend, stride=stride,
                                   batch_size=batch_size, detect_every=detect_every,
                                   max_side=max_side, max_faces=max_faces, pause=pause,
                                   cues=cues),
        jobs=_jobs(jobs), one_model=one_model, shard=part, early=_CONSOLE)
    from rich.console import Console

    console = Console(stderr=True)
    stages = 5 + sum(WRITERS[f].stage != "write" for f in chosen)
    with _Progress(console, enabled=not quiet, stages_per_file=stages, quiet=quiet) as prog:
        try:
            report = annotate_files(inputs, options, progress=prog)
        except KeyboardInterrupt as stop:
            how, code = _stopped(stop)
            prog.print(f"avemo: {how}; outputs already written are complete, "
                       f"the one in progress was not written (re-run to resume)")
            sys.exit(code)
    if profile:
        _print_profile(console, report, prog.loaded - _START, time.perf_counter() - _START)
    if report.failed:
        total = len(report.failed) + len(report.written) + len(report.skipped)
        if total > 1:  # one input's failure is its own error line
            console.print(f"avemo: {len(report.failed)} of {plural(total, 'input')} failed",
                          highlight=False, soft_wrap=True)
        sys.exit(1)


def _one_line(path: str) -> str:
    """A path as one line of output: quoted and escaped (as JSON writes strings) when its name
    holds a line break or another control character, as it is otherwise."""
    import json

    if any(0xD800 <= ord(c) < 0xE000 for c in path):  # a name that is not UTF-8: escaped
        return json.dumps(path)
    return json.dumps(path, ensure_ascii=False) if any(ord(c) < 32 for c in path) else path


def _shard(text: str | None):
    """The shard this run annotates: ``--shard I/N``, else the job array's; said on stderr
    (with the array's own, if the option overrides one)."""
    from .shards import ShardError, parse_shard, shard_from_env

    if text is not None and not text.strip():
        raise click.BadParameter("expected I/N, e.g. 0/4", param_hint="'--shard'")
    if not text:
        from_env = part = shard_from_env()
    else:
        part = parse_shard(text)
        try:
            from_env = shard_from_env()
        except ShardError:  # (the option decides; a malformed array environment is moot)
            from_env = None
    if part is None:
        return None
    where = part.origin if part.origin.startswith("--") else f"the {part.origin}"
    told = f"avemo: shard {part.index}/{part.count} (from {where})"
    if text and from_env is not None and (from_env.index, from_env.count) != \
            (part.index, part.count):
        told += f"; the {from_env.origin} is overridden"
    click.echo(told, err=True)
    return part


class _Progress:
    """rich progress on stderr: files done of all, and the current file's pipeline stage; each
    file's outcome (``batch.Progress``): written paths on stdout, skips and errors on stderr."""

    def __init__(self, console, enabled: bool, stages_per_file: int = 5, quiet: bool = False):
        self.console = console
        self.stages_per_file = stages_per_file
        self.enabled = enabled and console.is_terminal
        self.quiet = quiet
        self.progress = None
        self.media = 0.0
        self.loaded: float | None = None  # when the first file began (the model was loaded)
        self.stdout_gone = False  # stdout was closed under us (say)

    def __enter__(self):
        self.began = time.perf_counter()
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
                TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TimeElapsedColumn(),
                                     console=self.console, transient=True)
            self.progress.__enter__()
            self.task = self.progress.add_task("files", total=None)
            self.file_task = self.progress.add_task("", total=None)
        return self

    def __exit__(self, *exc):
        if self.loaded is None:
            self.loaded = time.perf_counter()
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start(self, job, i, n):
        if self.loaded is None:
            self.loaded = time.perf_counter()
        if self.progress is not None:
            self.progress.update(self.task, total=n)
            self.name = job.source.name
            self.done_stages = 0
            self.progress.update(self.file_task, description=self.name, completed=0,
                                 total=self.stages_per_file)

    def stage(self, stage):
        if self.progress is not None:
            self.progress.update(self.file_task, description=f"{self.name}: {stage}",
                                 completed=self.done_stages)
            self.done_stages += 1

    def done(self, job, outcome):
        """Aggregate rate (media seconds annotated per wall second since the first file),
        then the outcome: written paths on stdout, the rest on stderr."""
        self.media += outcome.record.media_seconds
        if self.progress is not None:
            rate = self.media / max(1e-9, time.perf_counter() - self.began)
            self.progress.update(self.task, description=f"files ({rate:.1f}x real time)")
        for warning in outcome.warnings:
            self.print(f"avemo: warning: {warning}")
        if outcome.status == "written":  # stdout: results only (rich keeps it apart), a line
            self.say("\n".join(_one_line(p) for p in outcome.record.outputs))  # each
        elif outcome.status == "skipped":
            if not self.quiet:
                self.print(f"skip: {outcome.detail}")
        else:
            self.print(f"avemo: error: {outcome.detail}")
        if self.progress is not None:
            self.progress.advance(self.task)

    def say(self, text: str) -> None:
        """A result line on stdout. A stdout that is closed (``| head -n 1`` has ended, the
        command was run with ``>&-``) stops the lines, not the work: it is said once on
        stderr, and every input is still annotated and recorded."""
        if self.stdout_gone:
            return
        try:
            if sys.stdout is None:
                raise BrokenPipeError("stdout is closed")
            print(text, flush=True)
        except (BrokenPipeError, ValueError, OSError) as exc:
            self.stdout_gone = True
            _silence_stdout()
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "it is closed"
            self.print(f"avemo: warning: stdout: {why}; the outputs are written, their names "
                       f"no longer printed (see the manifest)")

    def print(self, text):
        (self.progress.console if self.progress is not None else self.console).print(
            printable(text), highlight=False, markup=False, soft_wrap=True)


def _jobs(text: str) -> int:
    """--jobs: a count, or auto (one per core)."""
    if text == "auto":
        return os.cpu_count() or 1
    if not text.isdigit() or int(text) < 1:
        raise click.BadParameter(f"{text!r} is not a count of 1 or more, or auto",
                                 param_hint="'--jobs'")
    cores = os.cpu_count() or 1
    if int(text) > cores:  # (more processes than cores only share them, with more memory)
        click.echo(f"avemo: --jobs {text}: {plural(cores, 'core')} here, so {cores} at once",
                   err=True)
        return cores
    return int(text)


def _print_profile(console, report, startup: float, wall: float) -> None:
    from rich.table import Table

    from .features import STAGES

    media = report.media_seconds
    table = Table(title="avemo profile", show_lines=False)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("s per s of media", justify="right")
    table.add_row("start-up (imports, model)", f"{startup:.2f}", "")
    for stage in STAGES:
        sec = report.timings[stage]
        table.add_row(stage, f"{sec:.2f}", f"{sec / media:.3f}" if media else "-")
    table.add_row("total (wall, incl. start-up)", f"{wall:.2f}",
                  f"{wall / media:.3f}" if media else "-")
    console.print(table)
    if media:
        console.print(f"media: {media:.1f} s in {len(report.written)} file(s); real-time factor "
                      f"{media / wall:.1f}x (media seconds per wall second, start-up included)",
                      highlight=False, soft_wrap=True)


@main.command(short_help="Totals of a folder's annotate runs (every shard); --html: a report "
                         "page.")
@click.argument("folder", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="The totals as JSON on stdout.")
@click.option("--html", "as_html", is_flag=True,
              help="Also write FOLDER/avemo-report.html: a sortable page of every input with "
                   "its status, values, sparkline and a link to its --format html page.")
def status(folder, as_json, as_html):
    """Totals of the annotate runs whose manifests are in FOLDER (every shard of a job array):
    done, skipped, failed with reasons, hours of media, rate, shards missing."""
    import json

    from .manifests import summarise

    summary = summarise(folder)
    if as_html:
        from .files import write_text
        from .pages import folder_report

        report = write_text(Path(folder) / "avemo-report.html",
                            folder_report(summary, Path(folder)))
        click.echo(f"avemo: report written to {report}", err=True)
    for note in summary.warnings:
        click.echo(f"avemo: warning: {note}", err=True)
    failed = sorted((r.input, r.error) for r in summary.records.values()
                    if r.status == "failed")
    partial = sorted((r.input, r.warning) for r in summary.records.values()
                     if r.status == "partial")
    makers = summary.makers()
    totals = {"inputs": len(summary.records), "ok": summary.count("ok"),
              "partial": len(partial), "skipped": summary.count("skipped"),
              "failed": len(failed), "media_hours": round(summary.media_hours, 3),
              "rate_x_real_time": round(summary.rate, 1),
              "manifests": len(summary.manifests),
              "missing_shards": summary.missing_shards(),
              "failures": [{"input": i, "error": e} for i, e in failed],
              "partials": [{"input": i, "warning": w} for i, w in partial],
              "made_by": makers, "unreadable_lines": summary.unreadable}
    if as_json:
        click.echo(json.dumps(totals, indent=2))
    else:
        click.echo(f"{folder}: {plural(totals['inputs'], 'input')} in "
                   f"{plural(totals['manifests'], 'manifest')}: {totals['ok']} annotated, "
                   f"{totals['partial']} annotated in part, {totals['skipped']} skipped "
                   f"(already done), {totals['failed']} failed")
        click.echo(f"media annotated: {_span(summary.media_hours * 3600)} at "
                   f"{totals['rate_x_real_time']:.1f}x real time per worker")
        if len(makers) > 1:  # outputs of several versions or models side by side
            for who, n in sorted(makers.items()):
                click.echo(f"made by {who}: {plural(n, 'input')}")
        for shard in totals["missing_shards"]:
            click.echo(f"missing: the manifest of shard {shard} (not run, or still running)")
        for i, w in partial:
            click.echo(f"partial: {w if i in w else f'{i}: {w}'}")
        for i, e in failed:
            click.echo(f"failed: {e if i in e else f'{i}: {e}'}")
    sys.exit(1 if failed or totals["missing_shards"] else 0)


@main.command(short_help="One Parquet dataset of every input annotated in a folder tree.")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output-dir", "out", default=None, type=click.Path(file_okay=False),
              help="The dataset's folder [default: FOLDER/avemo-dataset].")
@QUIET
def collect(folder, out, quiet):
    """Collect every input annotated under FOLDER (each folder's manifests, every shard of a
    job array) into one Parquet dataset: inputs.parquet (a row per input), frames/ (the
    per-frame rows, with an input column) and segments/ (the utterances). A re-run brings it
    up to date. Outputs that are not avemo's or are half-written are reported and left out."""
    from .collect import collect as collect_folder

    report = collect_folder(folder, out)
    for note in report.problems:
        click.echo(f"avemo: warning: {note}", err=True)
    if not quiet:
        click.echo(f"avemo: {plural(report.inputs, 'input')} in {report.dataset}: "
                   f"{report.collected} collected ({report.updated} updated, the rest up to "
                   f"date), {report.removed} removed, {len(report.problems)} left out with a "
                   f"warning", err=True)
    click.echo(str(report.dataset))


def _data_options(f):
    f = click.option("--split", default=None, type=click.Path(exists=True),
                     help="generic layout: CSV with columns name,partition.")(f)
    f = click.option("--layout", default="avec2017", show_default=True,
                     type=click.Choice(["avec2017", "generic", "categorical"]))(f)
    f = click.option("--cache", default=None, type=click.Path(),
                     help="Feature cache folder [default: $AVEMO_CACHE or ~/.cache/avemo].")(f)
    f = click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
                     help="Files whose features are extracted in parallel.")(f)
    return f


def _hidden_alias(name: str, dest: str):
    """An old option name kept working, not shown in --help."""
    return click.option(name, dest, default=None, hidden=True, type=click.Path())


def _one_line_warnings() -> None:
    """Python warnings (eval's coverage notes, ...) as one ``avemo: warning:`` line each."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        click.echo(f"avemo: warning: {printable(str(message))}", err=True)

    warnings.showwarning = show


@main.command(short_help="Extract a corpus's features ahead of train and eval (cached).")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="The corpus folder (see --layout).")
@_data_options
@click.option("--modality", default="av", show_default=True,
              type=click.Choice(["av", "audio", "video"]))
@FACES
@DEVICE
@QUIET
def extract(data, split, layout, cache, jobs, modality, faces_backend, device, quiet):
    """Extract the audio features and face crops of a corpus ahead of train and eval (they
    reuse them instead of analysing the files again)."""
    from .cache import FeatureCache, describe_counts, extract_all
    from .datasets import load_dataset
    from .model import ModelConfig
    from .features import FeatureSettings
    from .inference import resolve_device

    resolve_device(device)
    seqs = load_dataset(data, layout, split)
    cfg = ModelConfig(modality=modality)
    fc = FeatureCache(cache)

    def done(media, status, err):
        if status == "error":
            click.echo(f"avemo: error: {err}", err=True)
        elif not quiet:
            click.echo(f"{'analysed' if status == 'miss' else 'analysed earlier'}: {media}",
                       err=True)

    counts = extract_all([s.media for s in seqs],
                         FeatureSettings.for_model(cfg, faces_backend=faces_backend), fc, jobs,
                         done)
    if not quiet:
        click.echo(f"{describe_counts(counts)} (features kept in {fc.root})", err=True)
    sys.exit(1 if counts["error"] else 0)


@main.command(short_help="Train on a corpus (the paper's recipe), Devel CCC each epoch.")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="The corpus folder (see --layout).")
@_data_options
@click.option("-o", "--output-dir", "out", default="runs/avemo", show_default=True,
              type=click.Path(), help="Run folder: best.safetensors, last.pt, metrics.jsonl, "
                                      "run.json.")
@_hidden_alias("--out", "out_alias")
@click.option("--modality", default="av", show_default=True,
              type=click.Choice(["av", "audio", "video"]))
@click.option("--targets", default="valence,arousal", show_default=True)
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=1e-4, show_default=True, type=float)
@click.option("--loss", default="mse", show_default=True, type=click.Choice(["mse", "ccc"]))
@click.option("--no-audio-attention", is_flag=True, help="Table 1 ablation.")
@click.option("--no-visual-attention", is_flag=True, help="Table 2 ablation.")
@click.option("--visual-backbone", default="3d", show_default=True,
              type=click.Choice(["3d", "2d"]), help="Table 2 ablation.")
@click.option("--clip-stride", default=1, show_default=True, type=click.IntRange(min=1),
              help="Train on clips ending at every Nth labelled step.")
@click.option("--clip-window", default=16, show_default=True, type=click.IntRange(min=1),
              help="Consecutive clips of a sequence that share one computation of their "
                   "frames (batches are cut from windows in shuffled order); 1: every clip "
                   "alone, shuffled one by one (the paper's order, ~4x slower for video).")
@click.option("--audio-norm", default="global", show_default=True,
              type=click.Choice(["global", "recording"]),
              help="Audio feature normalisation: training statistics only (the paper), or also "
                   "each recording's own level and range (stored in the checkpoint; annotate "
                   "and eval apply the same).")
@click.option("--config", "config_json", default=None, type=click.Path(exists=True),
              help="JSON file of further model settings (layer widths, window, ...).")
@FACES
@DEVICE
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the run in -o from its last epoch.")
@click.option("--overwrite", is_flag=True,
              help="Start afresh in an -o that holds a run (its checkpoints and metrics are "
                   "replaced).")
@QUIET
def train(data, split, layout, cache, jobs, out, out_alias, modality, targets, epochs,
          batch_size, lr, loss, no_audio_attention, no_visual_attention, visual_backbone,
          clip_stride, clip_window, audio_norm, config_json, faces_backend, device, seed, resume,
          overwrite, quiet):
    """Train on a corpus with the paper's recipe; score each epoch on Devel (CCC).

    Under torchrun (torchrun --nproc_per_node N -m avemo_cli train ...) the processes train one
    model together (DistributedDataParallel); --batch-size is the global batch."""
    import json

    from .inference import resolve_device
    from .train import TrainOptions, train as run_train

    resolve_device(device)
    out = out_alias or out
    config = {}
    if config_json:
        try:
            config = json.loads(open(config_json).read())
        except (OSError, ValueError) as exc:
            _fail(f"{config_json}: not a JSON object of model settings ({exc})")
    opts = TrainOptions(
        data=data, out=out, layout=layout, split=split, modality=modality,
        targets=[t.strip() for t in targets.split(",") if t.strip()], epochs=epochs,
        batch_size=batch_size, lr=lr, loss=loss, audio_attention=not no_audio_attention,
        visual_attention=not no_visual_attention, visual_backbone=visual_backbone,
        clip_stride=clip_stride, window=clip_window, audio_norm=audio_norm, device=device,
        seed=seed, resume=resume, overwrite=overwrite, jobs=jobs, cache=cache,
        faces_backend=faces_backend, config=config)
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    best = run_train(opts, log)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 answers
        click.echo(str(best))


@main.command(name="eval", short_help="Score predictions against labels: CCC, CC, RMSE.")
@click.option("--data", default=None, type=click.Path(exists=True, file_okay=False),
              help="A corpus folder (see --layout): its --partition is annotated with "
                   "--weights and scored.")
@_data_options
@click.option("--weights", default=None, metavar="NAME|PATH",
              help="The checkpoint to score on --data (a file, or a shipped model's name).")
@click.option("--partition", default="devel", show_default=True,
              type=click.Choice(["devel", "test", "train"]))
@click.option("--pred", default=None, type=click.Path(exists=True, file_okay=False),
              help="Folder of avemo CSVs.")
@click.option("--gold", default=None, type=click.Path(exists=True, file_okay=False),
              help="Folder of label CSVs (either layout).")
@click.option("--metric", default="ccc", show_default=True,
              type=click.Choice(["ccc", "cc", "rmse", "all"]))
@click.option("--aggregate", "how", default="concat", show_default=True,
              type=click.Choice(["concat", "mean"]))
@click.option("--no-postprocess", is_flag=True, help="Score raw model output.")
@click.option("--per-sequence", is_flag=True, help="Also score each sequence.")
@click.option("-o", "--output-dir", "save_pred", default=None, type=click.Path(),
              help="With --weights: keep the predicted CSVs in this folder.")
@_hidden_alias("--save-pred", "save_pred_alias")
@FACES
@DEVICE
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout: target -> metric -> value.")
@click.option("--plot", "plot_dir", default=None, type=click.Path(file_okay=False),
              help="Write a predicted-vs-gold figure per sequence and a CCC summary here.")
@click.option("--min-coverage", default=0.5, show_default=True,
              type=click.FloatRange(0.0, 1.0),
              help="Fail when a prediction covers less than this share of its gold labels "
                   "(partial coverage above it is a warning).")
@QUIET
def eval_cmd(data, split, layout, cache, jobs, weights, partition, pred, gold, metric, how,
             no_postprocess, per_sequence, save_pred, save_pred_alias, faces_backend, device,
             as_json, plot_dir, min_coverage, quiet):
    """Score predictions: RMSE, CC and CCC per target (the paper's table format)."""
    import json

    from . import evaluate as E
    from .metrics import METRICS

    metrics = METRICS if metric == "all" else (metric,)
    if pred or gold:
        if not (pred and gold) or data or weights:
            raise click.UsageError("use either --pred DIR --gold DIR, or --data DIR --weights CKPT")
        result = E.evaluate_folders(Path(pred), Path(gold), metrics, how, min_coverage)
        title = f"{pred} against {gold}"
    else:
        if not (data and weights):
            raise click.UsageError("use either --data DIR --weights CKPT, or --pred DIR --gold DIR")
        from .inference import resolve_device

        resolve_device(device)
        log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
        result = E.evaluate_model(E.EvalOptions(
            data=data, weights=weights, layout=layout, partition=partition, split=split,
            postprocess=not no_postprocess, device=device, faces_backend=faces_backend,
            cache=cache, jobs=jobs, metrics=metrics, how=how,
            save_pred=save_pred or save_pred_alias, min_coverage=min_coverage), log)
        title = f"{Path(weights).name} on {partition}"
    for note in result.warnings:
        click.echo(f"avemo: warning: {note}", err=True)
    if plot_dir:
        files = result.plot(plot_dir)
        if not quiet:
            click.echo(f"avemo: {plural(len(files), 'figure')} written to {plot_dir}", err=True)
    if as_json:  # (a score that cannot be computed is null: JSON has no NaN)
        from .table import finite_json

        click.echo(json.dumps(finite_json(result.to_json(per_sequence)), indent=2,
                              allow_nan=False))
    else:
        _print_scores(result, metrics, per_sequence,
                      f"{title} ({plural(len(result.sequences), 'sequence')}, {how})")


def _span(seconds: float) -> str:
    """A length of media as people say it: 10.0 s, 4.2 min, 1.25 h."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _print_scores(result, metrics, per_sequence: bool, title: str) -> None:
    """The paper's table: a row per target (and per sequence), a column per metric; a score
    that cannot be computed is "n/a" (eval's warnings say why)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("sequence" if per_sequence else "")
    table.add_column("target")
    for m in metrics:
        table.add_column(m.upper(), justify="right")
    rows = [("all", result.scores)]
    if per_sequence:
        rows += sorted(result.per_sequence.items())
    for name, scores in rows:
        for target, vals in scores.items():
            table.add_row(name, target, *(f"{vals[m]:.3f}" if math.isfinite(vals[m]) else "n/a"
                                          for m in metrics))
    Console().print(table)
