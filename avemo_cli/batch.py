"""Many inputs: find media in folders, plan mirrored outputs, skip finished ones, keep going past
bad files (each reported with its one-line reason), and choose how the files are run.

``annotate_files(inputs, AnnotateOptions(...))`` is the whole of ``avemo annotate``. The
options object travels whole from the CLI to the workers. How the work is spread is decided
here, once (in ``annotate_files``, with ``_begin`` and ``AnnotateOptions.feeds``):

- one file to do: its features begin in an extraction process before torch is imported
  (``extractors.begin_file``; only where ``options.early`` allows it, as the console entry does);
- ``--jobs N`` with one model (the default on CUDA): N extraction processes feed this process's
  model (``_run_feeding``);
- ``--jobs N`` otherwise: this process and N - 1 workers each run the whole pipeline with a
  model of their own (``_run_workers``);
- else one file after the other here.

Each input's outcome is a manifest record (``shards.Manifest``) and a ``Progress.done`` call.
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from . import __version__, outputs, pages
from .demux import find_media
from .errors import AvemoError, OutputError
from .features import STAGES
from .files import remove_stale_temporaries
from .shards import UNSHARDED_MANIFEST, Manifest, Record, Shard

if TYPE_CHECKING:  # (torch is imported only once the work is planned)
    from .extractors import Extractors
    from .pipeline import Annotator


@dataclass
class AnnotateOptions:
    """One annotate run's settings: what ``avemo annotate`` parses, passed whole."""

    output_dir: str | os.PathLike = "."
    formats: tuple[str, ...] = ("csv",)  # outputs.WRITERS' names, in writing order
    overwrite: bool = False  # redo inputs whose outputs exist
    weights: str | None = None  # checkpoint path or shipped name (None: the default model)
    device: str = "auto"
    faces_backend: str = "dlib"
    stride: int = 1
    batch_size: int = 32
    detect_every: int = 8
    max_side: int = 480
    max_faces: int = 1
    jobs: int = 1  # files at once
    one_model: bool | None = None  # with jobs > 1: one model fed by extraction processes
    # (None: on CUDA), else a model per worker
    shard: Shard | None = None  # only this share of the inputs
    early: bool = False  # a single input may begin before torch is imported (the console
    # entry only: a spawned process re-imports the main module, which must not run again)

    def annotator(self) -> Annotator:
        """The model and face backend these options describe."""
        from .pipeline import Annotator

        return Annotator(self.weights, device=self.device, faces_backend=self.faces_backend,
                         stride=self.stride, batch_size=self.batch_size,
                         detect_every=self.detect_every, max_side=self.max_side,
                         max_faces=self.max_faces)

    def feeds(self, device: str) -> bool:
        """Whether one model on ``device`` is fed by extraction processes (``--one-model``,
        the default on CUDA) rather than a model in every worker."""
        one = self.one_model if self.one_model is not None else device.startswith("cuda")
        return self.jobs > 1 and one


@dataclass
class Job:
    source: Path
    outputs: dict[str, Path]  # format -> the file it is written to (outputs.output_path)
    key: str = ""  # the input's path relative to the folder it was found in (its name, for a
    # file given directly): what shards are chosen by
    dropped: tuple[str, ...] = ()  # formats asked for that this input does not get (mp4 for
    # an audio file)

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
    written: list[Path] = field(default_factory=list)
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
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            pairs = [(f, out / f.relative_to(p).parent / f.stem, f.relative_to(p).as_posix())
                     for f in find_media(p)]
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
            jobs.append(Job(src, made, key, tuple(f for f in formats if f not in made)))
    return jobs, bad


def run_job(annotator: Annotator, job: Job, progress: Progress | None = None,
            extractors: Extractors | None = None) -> Outcome:
    """Annotate one job's input and write its outputs (``job.outputs``, in order); a failure
    is an outcome, not raised (KeyboardInterrupt is)."""
    import warnings

    t0 = time.perf_counter()
    stage = progress.stage if progress is not None else None
    model = annotator.checkpoint.path
    try:
        with warnings.catch_warnings(record=True) as caught:  # (told with the outcome: a
            warnings.simplefilter("always")  # worker's warnings reach the user that way too)
            result = annotator.annotate(job.source, stage, extractors)
            outputs.write(result, job.outputs, stage)
            for fmt in job.dropped:
                warnings.warn(f"{job.source}: no {fmt} output for an audio file (it has no "
                              f"picture)")
    except AvemoError as err:
        return Outcome("failed", str(err), _record(model, job, "failed", str(err), t0))
    except Exception as err:  # a bug or an unforeseen input: still one line, batch goes on
        if os.environ.get("AVEMO_DEBUG"):
            traceback.print_exc()
        line = str(err).strip().splitlines()
        reason = f"{job.source}: {type(err).__name__}: {line[0] if line else ''}".rstrip(": ")
        return Outcome("failed", reason, _record(model, job, "failed", reason, t0))
    written = [str(p) for p in job.outputs.values()]
    record = _record(model, job, "partial" if result.partial else "ok", "", t0, written)
    record.media_seconds = round(result.seconds, 3)
    frames = result.columns["frame"]
    record.frames = int(frames.max()) + 1 if len(frames) else 0
    record.faces = round(float(result.face.mean()), 4) if len(result.face) else 0.0
    told = [str(w.message) for w in caught]
    record.warning = "; ".join(told)
    record.summary = pages.summary(result)
    return Outcome("written", "\n".join(written), record, result.timings, told)


def _record(model: Path | None, job: Job, status: str, error: str = "",
            t0: float | None = None, written: list[str] | None = None) -> Record:
    return Record(str(job.source), status, error, written or [],
                  round(time.perf_counter() - t0, 3) if t0 is not None else 0.0,
                  avemo=__version__, model=model.name if model else "",
                  model_sha256=_model_digest(model) if model else "")


@lru_cache(maxsize=4)
def _model_digest(path: Path) -> str:
    from .cache import file_digest

    return file_digest(path)


class _Run:
    """One run's bookkeeping: every outcome goes to the manifest, the report and the
    caller's ``Progress``."""

    def __init__(self, manifest: Manifest, progress: Progress, model: Path | None):
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
    from .shards import DONE, summarise

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
    from .checkpoint import resolve_weights

    options = options or AnnotateOptions()
    out = check_output_dir(options.output_dir)
    planned, bad = plan(inputs, out, options.formats)
    shard = options.shard
    if shard is not None:
        planned = [j for j in planned if shard.takes(j.key)]
    model = annotator.checkpoint.path if annotator is not None \
        else resolve_weights(options.weights)
    why_blocked = [_blocked(job) for job in planned]
    blocked = [(job, why) for job, why in zip(planned, why_blocked) if why]
    planned = [job for job, why in zip(planned, why_blocked) if not why]
    finished = [_finished(job, options.overwrite) for job in planned]
    done = [job for job, f in zip(planned, finished) if f]
    todo = [job for job, f in zip(planned, finished) if not f]
    begun = _begin(todo, options, model, annotator is None)
    try:
        annotator = annotator or options.annotator()  # (nothing is written if it fails)
        run = _Run(Manifest(out / (shard.manifest_name if shard else UNSHARDED_MANIFEST)),
                   progress or Progress(), model)
        try:
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
            if len(todo) > 1 and options.feeds(str(annotator.device)):
                _run_feeding(todo, annotator, min(options.jobs, len(todo)), run)
            elif len(todo) > 1 and options.jobs > 1:
                _run_workers(todo, annotator, min(options.jobs, len(todo)), run)
            else:
                for i, job in enumerate(todo):
                    run.progress.start(job, i, len(todo))
                    run.finish(job, run_job(annotator, job, run.progress, begun))
        finally:
            run.manifest.close()
    finally:
        if begun is not None:
            begun.stop()
    return run.report


def _begin(todo: list[Job], options: AnnotateOptions, model: Path | None,
           loading: bool) -> Extractors | None:
    """Before torch is imported (a second or more on one core): a single input's features
    begin in an extraction process (dlib only: FAN would import torch there too), or else
    dlib's models start loading in a thread (unless extraction processes will track the
    faces). Only when the model is yet to be ``loading``."""
    if not loading:
        return None
    begun = None
    if options.early and len(todo) == 1 and options.faces_backend == "dlib" and model:
        from .extractors import begin_file

        begun = begin_file(todo[0].source, model, options.faces_backend, options.max_side,
                           options.detect_every, options.max_faces)
    tracked = begun is not None and begun.tracking_faces()
    if options.faces_backend == "dlib" and not tracked and not options.feeds(options.device):
        from .faces import preload

        preload("dlib")
    return begun


def worker_threads(jobs: int) -> int:
    """Torch threads per worker so that ``jobs`` workers share the machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def model_threads(extractors: int) -> int:
    """Torch threads for the model beside ``extractors`` extraction processes: the cores they
    leave (at least one)."""
    return max(1, (os.cpu_count() or 1) - extractors)


def _run_feeding(todo: list[Job], annotator: Annotator, jobs: int, run: _Run) -> None:
    """``todo`` with ``jobs`` extraction processes (``extractors.Extractors``: decoding,
    openSMILE, face tracking; no torch, no model) feeding this process's one model, which
    predicts and writes each file as its features arrive (on a GPU: N CPU processes feed one
    model). A file's extraction is begun ``jobs + 1`` files ahead, so every process has the
    next file waiting. A process that dies (killed, out of memory) takes the files it held with
    it: the processes are restarted and each of those files is tried once more before it is
    reported as failed."""
    from concurrent.futures import FIRST_COMPLETED, Future, wait

    import torch


    queue = list(enumerate(todo))
    begun: dict[Future, tuple[int, Job, Extractors]] = {}
    retried: set[int] = set()
    own_threads = torch.get_num_threads()
    torch.set_num_threads(model_threads(jobs))
    feeder = _Feeder(annotator, jobs)

    def process(i: int, job: Job, pool: Extractors | None) -> None:
        run.progress.start(job, i, len(todo))
        run.finish(job, run_job(annotator, job, run.progress, pool))

    try:
        while queue or begun:
            while queue and len(begun) < jobs + 1:
                i, job = queue.pop(0)
                future = feeder.begin(job)
                if future is None:  # unreadable: annotate says why (at once)
                    process(i, job, None)
                    continue
                begun[future] = (i, job, feeder.pool)
            if not begun:
                continue
            for future in wait(begun, return_when=FIRST_COMPLETED)[0]:
                i, job, pool = begun.pop(future)
                if not feeder.died(future, pool):
                    process(i, job, pool)  # its features are claimed from the extraction
                elif i not in retried:
                    retried.add(i)
                    queue.insert(0, (i, job))
                else:
                    run.progress.start(job, i, len(todo))
                    run.fail(job, f"{job.source}: the extraction process died (killed, or out "
                                  f"of memory)")
    finally:
        feeder.pool.stop()
        torch.set_num_threads(own_threads)


class _Feeder:
    """The extraction processes of ``_run_feeding``, restarted when one of them dies (the
    pool is then broken for good)."""

    def __init__(self, annotator: Annotator, processes: int):
        from .extractors import Extractors

        self.annotator, self.processes = annotator, processes
        self.pool = Extractors(processes)

    def restart(self) -> None:
        from .extractors import Extractors

        self.pool.stop()
        self.pool = Extractors(self.processes)

    def begin(self, job: Job):
        """The future of ``job``'s extraction; None if the file cannot even be probed."""
        from concurrent.futures.process import BrokenProcessPool

        from .demux import probe

        try:
            info = probe(job.source)
        except Exception:
            return None
        a = self.annotator
        args = (info, a.settings, a.cfg.has_audio, a.cfg.has_visual, a.max_faces,
                a.faces_device)
        try:
            return self.pool.begin(*args)
        except BrokenProcessPool:  # a process died since the last file was begun
            self.restart()
            return self.pool.begin(*args)

    def died(self, future, pool) -> bool:
        """Whether ``future``'s process died (the pool is then restarted, once)."""
        from concurrent.futures.process import BrokenProcessPool

        if not isinstance(future.exception(), BrokenProcessPool):
            return False
        if pool is self.pool:
            self.restart()
        return True


_WORKER: dict[str, Annotator] = {}


def _start_worker(parent: int, weights: str, options: dict, threads: int) -> None:
    """A --jobs worker process: its own model and face backend, ``threads`` for torch."""
    from .extractors import child_start

    child_start(parent)  # the parent handles Ctrl-C for all; the worker ends with it

    import torch

    from .pipeline import Annotator

    torch.set_num_threads(threads)
    _WORKER["annotator"] = Annotator(weights, **options)


def _work(job: Job) -> Outcome:
    return run_job(_WORKER["annotator"], job)


def _run_workers(todo: list[Job], annotator: Annotator, jobs: int, run: _Run) -> None:
    """``todo`` over ``jobs`` annotators: this process's own (already loaded) and ``jobs - 1``
    spawned worker processes (each loads the model once), all taking from one queue."""
    from concurrent.futures import FIRST_COMPLETED, wait

    import torch

    from .extractors import end_pool, start_pool

    path = annotator.checkpoint.path
    if path is None:
        raise ValueError("jobs > 1 needs a checkpoint loaded from a file")
    threads = worker_threads(jobs)
    own_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    pool = start_pool(jobs - 1, _start_worker,
                      (os.getpid(), str(path), annotator.options, threads))
    queue = list(enumerate(todo))
    pending: dict = {}

    def collect(block: bool) -> None:
        done = wait(pending, return_when=FIRST_COMPLETED)[0] if block else \
            [f for f in pending if f.done()]
        for future in done:
            job = pending.pop(future)
            try:
                outcome = future.result()
            except Exception as err:  # the worker died (killed, out of memory)
                run.fail(job, f"{job.source}: the worker process failed ({type(err).__name__})")
                continue
            run.finish(job, outcome)

    try:
        while queue or pending:
            while queue and len(pending) < jobs - 1:  # one queued per worker, no more
                i, job = queue.pop(0)
                run.progress.start(job, i, len(todo))
                pending[pool.submit(_work, job)] = job
            if queue:  # this process annotates one file meanwhile
                i, job = queue.pop(0)
                run.progress.start(job, i, len(todo))
                run.finish(job, run_job(annotator, job))
                collect(block=False)
            elif pending:
                collect(block=True)
    except BaseException:
        end_pool(pool)
        raise
    finally:
        torch.set_num_threads(own_threads)
    pool.shutdown()
