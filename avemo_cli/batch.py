"""Many inputs: find media in folders, plan mirrored outputs, skip finished ones, keep going past
bad files (each reported with its one-line reason), and record what became of each.

``annotate_files(inputs, AnnotateOptions(...))`` is the whole of ``avemo annotate``. The
checkpoint is read once (``checkpoint.open_checkpoint``); the annotator's settings
(``AnnotatorSettings``) travel whole from the CLI to the workers. How the work is spread is
decided here, once (in ``annotate_files``, with ``_begin`` and ``AnnotateOptions.feeds``), and
run by schedule.py:

- one file to do: its features begin in an extraction process before torch is imported
  (``extractors.begin_file``; only where ``options.early`` allows it, as the console entry does);
- a folder with one model (``--one-model``; the default on CUDA, and with ``--jobs 1`` from the
  console): extraction processes (as many as ``--jobs``, the cores and the memory allow:
  ``schedule.extraction_processes``) feed this process's model, the first files begun before
  torch is imported (``extractors.begin_files``) (``schedule.feeding``);
- ``--jobs N`` otherwise: this process and N - 1 workers each run the whole pipeline with a
  model of their own (``schedule.model_per_worker``);
- else one file after the other here (``schedule.one_by_one``: the Python API's ``--jobs 1``).

Each input's outcome is a manifest record (``manifests.Manifest``) and a ``Progress.done``
call.
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import __version__, outputs, schedule
from .demux import decoder, ffmpeg_exe, find_media
from .errors import AvemoError, MediaError, OutputError
from .features import STAGES
from .files import identity, remove_stale_temporaries
from .manifests import UNSHARDED_MANIFEST, Manifest, Record
from .settings import AnnotatorSettings
from .shards import Shard

if TYPE_CHECKING:  # (torch is imported only once the work is planned)
    from .checkpoint import Checkpoint, CheckpointFile
    from .extractors import Extractors
    from .features import FeatureSettings
    from .pipeline import Annotation, Annotator, Pending


@dataclass(kw_only=True)
class AnnotateOptions:
    """One annotate run's settings: what ``avemo annotate`` parses, passed whole."""

    output_dir: str | os.PathLike = "."
    formats: tuple[str, ...] = ("csv",)  # outputs.WRITERS' names, in writing order
    overwrite: bool = False  # redo inputs whose outputs exist
    weights: str | None = None  # checkpoint path or shipped name (None: the default model)
    settings: AnnotatorSettings = field(default_factory=AnnotatorSettings)  # per file
    jobs: int = 1  # files at once
    one_model: bool | None = None  # with jobs > 1: one model fed by extraction processes
    # (None: on CUDA), else a model per worker
    shard: Shard | None = None  # only this share of the inputs
    early: bool = False  # a single input may begin before torch is imported (the console
    # entry only: a spawned process re-imports the main module, which must not run again)

    def feeds(self, device: str, files: int = 2) -> bool:
        """Whether ``files`` inputs are annotated by one model on ``device`` fed by extraction
        processes (``schedule.feeding``): with ``--one-model``; by default on CUDA, and for a
        folder with ``--jobs 1`` from the console with dlib's faces (a pipeline: the next
        files are extracted while the model predicts and writes one; the Python API spawns no
        processes unless asked, and FAN, a torch model itself, stays in the model's process).
        Never for a single input, nor with ``--model-per-job``."""
        if files < 2 or self.one_model is False:
            return False
        return bool(self.one_model) or device.startswith("cuda") or \
            (self.jobs == 1 and self.early and self.settings.faces_backend == "dlib")

    def extraction_processes(self, files: int) -> int:
        """The extraction processes feeding the model for ``files`` inputs (the cores and the
        memory permitting: ``schedule.extraction_processes``)."""
        return schedule.extraction_processes(min(self.jobs, files))


@dataclass
class Job:
    source: Path
    outputs: dict[str, Path]  # format -> the file it is written to (outputs.output_path)
    key: str = ""  # the input's path relative to the folder it was found in (its name, for a
    # file given directly): what shards are chosen by
    dropped: tuple[str, ...] = ()  # formats asked for that this input does not get (mp4 for
    # an audio file)
    identity: tuple[int, ...] = ()  # the file as planned (files.identity): replaced since?

    @property
    def first(self) -> Path | None:
        """The output that names the job in reports (the first format's)."""
        return next(iter(self.outputs.values()), None)


@dataclass
class Outcome:
    """What became of one job: ``status`` written/skipped/failed, ``detail`` (the output paths,
    one per line, or the reason), its manifest record, and the warnings the user must see."""

    status: str
    detail: str
    record: Record
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Progress:
    """What a run tells its caller as it goes; each method does nothing here (a caller
    overrides what it shows)."""

    def start(self, job: Job, index: int, total: int) -> None:
        """``job`` (the ``index``-th of ``total`` to do) begins."""

    def stage(self, name: str) -> None:
        """The current file enters a stage (``features.STAGES``)."""

    def done(self, job: Job, outcome: Outcome) -> None:
        """``job`` ended: written, skipped or failed (and its manifest record)."""


@dataclass
class BatchReport:
    written: list[Path] = field(default_factory=list)  # each input written: its first output
    files: list[Path] = field(default_factory=list)  # every file written (all its formats)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    media_seconds: float = 0.0


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    """Fail before any work if outputs cannot be written under ``output_dir``: it, or the
    nearest existing folder above it (which the outputs' folders would be created in), must be
    a folder that accepts a new file. Creates nothing that is left behind."""
    out = Path(output_dir)
    probe_dir = out
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        where = "it" if probe_dir == out else f"{probe_dir} in its path"
        raise OutputError(f"{out}: cannot write outputs there ({where} is a file, not a folder)")
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix=".avemo-write-check-", dir=probe_dir)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write outputs there ({probe_dir}: "
                          f"{exc.strerror or exc})") from None
    return out


def plan(inputs: Iterable[str | os.PathLike], output_dir: str | os.PathLike = ".",
         formats: tuple[str, ...] = ("csv",)) -> tuple[list[Job], list[tuple[Path, str]]]:
    """Jobs for the inputs (files, and folders searched recursively; outputs mirror the tree
    below each folder) and the inputs that cannot even be planned, with the reason."""
    out = Path(output_dir)
    jobs: list[Job] = []
    bad: list[tuple[Path, str]] = []
    claimed: dict[Path, Path] = {}
    into = out.resolve()  # (a folder's files inside it are outputs, not inputs: ``_ours``)
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            pairs = [(f, out / f.relative_to(p).parent / f.stem, f.relative_to(p).as_posix())
                     for f in find_media(p) if not _ours(f, into)]
            if not pairs:
                bad.append((p, f"{p}: no media files found in this folder"))
        elif p.exists():
            pairs = [(p, out / p.stem, p.name)]
        else:
            bad.append((p, f"{p}: no such file or folder"))
            continue
        for src, base, key in pairs:
            if base in claimed:
                if claimed[base].resolve() != src.resolve():
                    bad.append((src, f"{src}: its output {outputs.output_path(base, 'csv')} is "
                                     f"already the output of {claimed[base]}; annotate it into "
                                     f"another -o folder"))
                continue
            claimed[base] = src
            made = outputs.wanted(src, base, formats)
            if not made:
                bad.append((src, f"{src}: none of the outputs asked for ({', '.join(formats)}) "
                                 f"can be made of an audio file (it has no picture)"))
                continue
            jobs.append(Job(src, made, key, tuple(f for f in formats if f not in made),
                            identity(src)))
    return jobs, bad


def _ours(media: Path, into: Path) -> bool:
    """Whether a file found in a folder is avemo's own: an output (``<stem>.avemo.<format>``,
    e.g. an overlay video) or anything inside the output folder ``into`` (resolved; ``-o``
    below the input folder). A re-run must not annotate its own outputs."""
    if outputs.TAG + "." in media.name:
        return True
    try:
        media.resolve().relative_to(into)
    except ValueError:
        return False
    return True


def run_job(annotator: Annotator, job: Job, progress: Progress | None = None,
            extractors: Extractors | None = None) -> Outcome:
    """Annotate one job's input (with the features begun for it in ``extractors``, if any)
    and write its outputs (``job.outputs``, in order); a failure is an outcome, not raised
    (KeyboardInterrupt is)."""
    return run_jobs(annotator, [job], progress, extractors)[0]


def run_jobs(annotator: Annotator, jobs: list[Job], progress: Progress | None = None,
             extractors: Extractors | None = None) -> list[Outcome]:
    """``run_job`` for several jobs whose features are ready together (``schedule.feeding``):
    each made (or claimed from ``extractors``), then the model over all of them at once
    (``Annotator.predict_many``: shared batches), then each one's outputs written. Every
    job's failure is its own outcome; the warnings of the shared model stage are every
    job's."""
    import warnings

    stage = progress.stage if progress is not None else None
    with warnings.catch_warnings(record=True) as caught:  # (told with each outcome: a
        warnings.simplefilter("always")  # worker's warnings reach the user that way too)
        states = [_State(annotator, job, time.perf_counter()) for job in jobs]
        for state in states:
            state.made = state.attempt(caught, partial(_pending, annotator, state.job, stage,
                                                       extractors))
        waiting = [s for s in states if s.outcome is None]
        told = len(caught)
        made = annotator.predict_many([s.made for s in waiting]) if waiting else []
        shared = caught[told:]
        for state, result in zip(waiting, made):
            state.told.extend(str(w.message) for w in shared)
            if isinstance(result, Exception):
                state.outcome = state.failure(result)
            else:
                state.attempt(caught, partial(_write, state.job, result, stage))
                if state.outcome is None:
                    state.outcome = state.written(result)
    assert all(s.outcome is not None for s in states)
    return [s.outcome for s in states]  # type: ignore[misc]


def _pending(annotator: Annotator, job: Job, stage: Callable[[str], None] | None,
             extractors: Extractors | None) -> Pending:
    begun = extractors.claim(job.source, annotator.request) if extractors is not None else None
    return annotator.pending(job.source, stage, begun)


def _write(job: Job, result: Annotation, stage: Callable[[str], None] | None) -> None:
    """A job's outputs, written (after checking that its input is the file that was planned)."""
    import warnings

    if job.identity and identity(job.source) != job.identity:
        raise MediaError(f"{job.source}: the file changed while it was annotated "
                         f"(replaced, or still being written): annotate it again once "
                         f"it is complete")
    outputs.write(result, job.outputs, stage)
    for fmt in job.dropped:
        warnings.warn(f"{job.source}: no {fmt} output for an audio file (it has no picture)")


@dataclass
class _State:
    """One job on its way through ``run_jobs``."""

    annotator: Annotator
    job: Job
    t0: float
    made: Any = None  # its features waiting for the model (pipeline.Pending)
    told: list[str] = field(default_factory=list)  # warnings for the user
    outcome: Outcome | None = None

    def attempt(self, caught: list, step: Callable[[], Any]) -> Any:
        """``step()``'s result, its warnings kept; a failure is the job's outcome (None is
        returned; KeyboardInterrupt is raised)."""
        before = len(caught)
        try:
            return step()
        except Exception as err:
            self.outcome = self.failure(err)
            return None
        finally:
            self.told.extend(str(w.message) for w in caught[before:])

    def failure(self, err: Exception) -> Outcome:
        """A failure as the job's outcome: an avemo error's line, or any other error's first
        line with its type (a bug or an unforeseen input: still one line, the batch goes
        on)."""
        job = self.job
        if isinstance(err, AvemoError):
            reason = str(err)
        else:
            if os.environ.get("AVEMO_DEBUG"):
                traceback.print_exception(err)
            line = str(err).strip().splitlines()
            reason = f"{job.source}: {type(err).__name__}: {line[0] if line else ''}" \
                .rstrip(": ")
        return Outcome("failed", reason, _record(self.annotator.checkpoint, job, "failed",
                                                 reason, self.t0))

    def written(self, result: Annotation) -> Outcome:
        """The outcome of a job whose outputs were written."""
        job = self.job
        written = [str(p) for p in job.outputs.values()]
        record = _record(self.annotator.checkpoint, job,
                         "partial" if result.partial else "ok", "", self.t0, written)
        record.media_seconds = round(result.seconds, 3)
        frames = result.columns["frame"]
        record.frames = int(frames.max()) + 1 if len(frames) else 0
        record.faces = round(float(result.face.mean()), 4) if len(result.face) else 0.0
        record.warning = "; ".join(self.told)
        record.summary = result.summary()
        return Outcome("written", "\n".join(written), record, result.timings, self.told)


def _record(ckpt: Checkpoint | CheckpointFile | None, job: Job, status: str, error: str = "",
            t0: float | None = None, written: list[str] | None = None) -> Record:
    from datetime import datetime, timezone

    path = ckpt.path if ckpt is not None else None
    return Record(str(job.source), status, error, written or [],
                  round(time.perf_counter() - t0, 3) if t0 is not None else 0.0,
                  avemo=__version__, model=path.name if path else "",
                  model_sha256=ckpt.sha256 if ckpt is not None else "", decoder=decoder(),
                  finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))


class _Run:
    """One run's bookkeeping: every outcome goes to the manifest, the report and the
    caller's ``Progress``."""

    runner = staticmethod(run_job)
    batch_runner = staticmethod(run_jobs)

    def __init__(self, manifest: Manifest, progress: Progress,
                 model: Checkpoint | CheckpointFile):
        self.manifest, self.progress, self.model = manifest, progress, model
        self.report = BatchReport()

    def finish(self, job: Job, outcome: Outcome) -> None:
        self.manifest.add(outcome.record)
        report = self.report
        if outcome.status == "written":
            for k, v in outcome.timings.items():
                report.timings[k] += v
            report.media_seconds += outcome.record.media_seconds
            report.written.append(job.first or job.source)
            report.files.extend(job.outputs.values())
        elif outcome.status == "skipped":
            report.skipped.append(job.first or job.source)
        else:
            report.failed.append((job.source, outcome.detail))
        self.progress.done(job, outcome)

    def fail(self, job: Job, reason: str) -> None:
        self.finish(job, Outcome("failed", reason, _record(self.model, job, "failed", reason)))

    def skip(self, job: Job) -> None:
        written = [str(p) for p in job.outputs.values()]
        self.finish(job, Outcome("skipped", f"{job.first} exists (use --overwrite to redo it)",
                                 _record(self.model, job, "skipped", "", None, written)))


def _not_ours(job: Job, owners: dict[Path, str]) -> str:
    """Why the outputs found for a finished-looking ``job`` are not its own ("" if they are):
    an earlier run wrote them for another input of the same name, or the table there is not
    an avemo table."""
    for out in job.outputs.values():
        owner = owners.get(out.resolve())
        if owner is not None and Path(owner).resolve() != job.source.resolve():
            return (f"{job.source}: its output {out} was written for {owner} by an earlier "
                    f"run; annotate it into another -o folder (or --overwrite)")
    csv = job.outputs.get("csv")
    if csv is not None:
        with open(csv, encoding="utf-8", errors="replace") as f:
            header = f.readline().strip()
        if not header.startswith("frame,time,"):
            return (f"{job.source}: {csv} exists but is not an avemo table (its header is "
                    f"{header[:40]!r}); move it away, or --overwrite to replace it")
    return ""


def _blocked(job: Job) -> str:
    """Why ``job``'s outputs cannot be written where they go ("" if they can): something that
    is not a file (a folder) stands there."""
    for out in job.outputs.values():
        if out.exists() and not out.is_file():
            return (f"{job.source}: cannot write {out}: a folder (or other non-file) is there; "
                    f"move it away")
    return ""


def _owners(out: Path) -> dict[Path, str]:
    """Each output recorded in the folder's manifests, with the input it was written for."""
    from .manifests import DONE, summarise

    try:
        records = summarise(out).records.values() if out.is_dir() else []
    except AvemoError:
        return {}
    return {Path(o).resolve(): r.input for r in records if r.status in DONE for o in r.outputs}


def _finished(job: Job, overwrite: bool) -> bool:
    """Whether all of ``job``'s outputs are there (and not to be redone); what a killed earlier
    run left half-written is removed on the way."""
    for out in job.outputs.values():
        remove_stale_temporaries(out)
    return not overwrite and all(p.exists() for p in job.outputs.values())


def annotate_files(inputs: Iterable[str | os.PathLike], options: AnnotateOptions | None = None,
                   annotator: Annotator | None = None,
                   progress: Progress | None = None) -> BatchReport:
    """Annotate every input into ``options.output_dir`` (see ``AnnotateOptions``), with
    ``annotator`` or the model the options name (loaded once the work is planned, so that a
    single input's extraction begins first). ``progress`` hears of each job as it starts and
    ends. A manifest of the run is written in the output folder. Raises ``OutputError`` before
    any work if the folder cannot be written."""
    from .checkpoint import open_checkpoint, resolve_weights

    options = options or AnnotateOptions()
    ffmpeg_exe()  # (an AVEMO_FFMPEG that cannot be found: one error before any work)
    out = check_output_dir(options.output_dir)
    planned, bad = plan(inputs, out, options.formats)
    shard = options.shard
    if shard is not None:
        planned = [j for j in planned if shard.takes(j.key)]
    # the checkpoint, read once: its header decides the features (begun before torch loads)
    source = None if annotator is not None else open_checkpoint(resolve_weights(options.weights))
    why_blocked = [_blocked(job) for job in planned]
    blocked = [(job, why) for job, why in zip(planned, why_blocked) if why]
    planned = [job for job, why in zip(planned, why_blocked) if not why]
    finished = [_finished(job, options.overwrite) for job in planned]
    done = [job for job, f in zip(planned, finished) if f]
    todo = [job for job, f in zip(planned, finished) if not f]
    begun = None if source is None else \
        _begin(todo, options, options.settings.features(source.config))
    try:
        if annotator is None:  # (nothing is written if it fails)
            from .pipeline import Annotator

            annotator = Annotator(source, options.settings)  # (source: the file read above)
        run = _Run(Manifest(out / (shard.manifest_name if shard else UNSHARDED_MANIFEST)),
                   progress or Progress(), annotator.checkpoint)
        try:
            _report_known(run, bad, done, blocked, out)
            jobs = min(options.jobs, len(todo))
            if options.feeds(str(annotator.device), len(todo)):
                schedule.feeding(todo, annotator, options.extraction_processes(len(todo)), run,
                                 begun)
            elif len(todo) > 1 and options.jobs > 1:
                schedule.model_per_worker(todo, annotator, jobs, run)
            else:
                schedule.one_by_one(todo, annotator, run, begun)
        finally:
            run.manifest.close()
    finally:
        if begun is not None:
            begun.stop()
    return run.report


def _report_known(run: _Run, bad: list[tuple[Path, str]], done: list[Job],
                  blocked: list[tuple[Job, str]], out: Path) -> None:
    """The outcomes known before any work: inputs that could not be planned, finished ones
    (skipped, or failed when the outputs there are another input's), blocked ones."""
    for src, reason in bad:  # (with shards, every shard reports these)
        run.fail(Job(src, {}, str(src)), reason)
    owners = _owners(out) if done else {}
    for job in done:
        reason = _not_ours(job, owners)
        if reason:
            run.fail(job, reason)
        else:
            run.skip(job)
    for job, why in blocked:
        run.fail(job, why)


def _begin(todo: list[Job], options: AnnotateOptions,
           request: FeatureSettings) -> Extractors | None:
    """Before torch is imported (a second or more on one core), where the console entry runs
    with dlib: a single input's features begin in an extraction process (FAN would import torch
    there too), and so do a fed folder's first files (``AnnotateOptions.feeds``), in the
    processes that will feed the model; else dlib's models start loading in a thread (unless
    extraction processes will track the faces)."""
    begun = None
    backend = options.settings.faces_backend
    fed = options.feeds(options.settings.device or "auto", len(todo))
    if options.early and backend == "dlib":
        from .extractors import begin_file, begin_files

        if len(todo) == 1:
            begun = begin_file(todo[0].source, request)
        elif fed:
            processes = options.extraction_processes(len(todo))
            begun = begin_files([job.source for job in todo[:processes + 1]], request,
                                processes)
    tracked = begun is not None and begun.tracking_faces()
    if backend == "dlib" and not tracked and not fed:
        from .faces import preload

        preload("dlib")
    return begun
