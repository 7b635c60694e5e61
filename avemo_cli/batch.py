"""Many inputs: find media in folders, plan mirrored outputs, skip finished ones, and keep going
past bad files (each reported with its one-line reason)."""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

from . import __version__
from .demux import AUDIO_EXTS, MEDIA_EXTS, VIDEO_EXTS  # noqa: F401  (re-exported)
from .errors import AvemoError, OutputError
from .pipeline import STAGES, Annotation, Annotator
from .shards import UNSHARDED_MANIFEST, Manifest, Record, Shard
from .writer import SUFFIX, WRITERS, output_path, remove_stale_temporaries



@dataclass
class Job:
    source: Path
    output: Path
    key: str = ""  # the input's path relative to the folder it was found in (its name, for a
    # file given directly): what shards are chosen by


@dataclass
class BatchReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    media_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def find_media(folder: Path) -> list[Path]:
    """Media files under ``folder`` (recursive, by extension, hidden files skipped), sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in MEDIA_EXTS:
                found.append(Path(root) / name)
    return found


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


def plan(inputs: Iterable[str | os.PathLike], output_dir: str | os.PathLike = "."
         ) -> tuple[list[Job], list[tuple[Path, str]]]:
    """Jobs for the inputs (files, and folders searched recursively; outputs mirror the tree
    below each folder) and the inputs that cannot even be planned, with the reason."""
    out = Path(output_dir)
    jobs: list[Job] = []
    bad: list[tuple[Path, str]] = []
    claimed: dict[Path, Path] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            pairs = [(f, out / f.relative_to(p).parent / (f.stem + SUFFIX),
                      f.relative_to(p).as_posix()) for f in find_media(p)]
            if not pairs:
                bad.append((p, f"{p}: no media files found in this folder"))
        elif p.exists():
            pairs = [(p, out / (p.stem + SUFFIX), p.name)]
        else:
            bad.append((p, f"{p}: no such file or folder"))
            continue
        for src, dst, key in pairs:
            if dst in claimed:
                if claimed[dst].resolve() != src.resolve():
                    bad.append((src, f"{src}: its output {dst} is already the output of "
                                     f"{claimed[dst]}; annotate it into another -o folder"))
                continue
            claimed[dst] = src
            jobs.append(Job(src, dst, key))
    return jobs, bad


def table_outputs(job: Job, formats: tuple[str, ...] = ("csv",)) -> list[Path]:
    """The job's table in each format: ``<stem>.avemo.<csv|parquet|json|eaf>``."""
    return [output_path(job.output, fmt) for fmt in formats]


def extra_outputs(job: Job, plot: bool, overlay: bool) -> list[Path]:
    """The files requested beside a job's tables: ``<stem>.avemo.png`` and ``<stem>.avemo.mp4``
    (no overlay for an audio file)."""
    out = [output_path(job.output, "png")] if plot else []
    if overlay and job.source.suffix.lower() not in AUDIO_EXTS:
        out.append(output_path(job.output, "mp4"))
    return out


@dataclass
class Outcome:
    """What became of one job: ``status`` written/skipped/failed, ``detail`` (the output paths,
    one per line, or the reason), and its manifest record."""

    status: str
    detail: str
    record: Record
    timings: dict[str, float] = field(default_factory=dict)


def run_job(annotator: Annotator, job: Job, plot: bool = False, overlay: bool = False,
            on_stage: Callable[[str], None] | None = None,
            formats: tuple[str, ...] = ("csv",)) -> Outcome:
    """Annotate one job's input and write its outputs (the table in each of ``formats``, then
    the plot and overlay); a failure is an outcome, not raised (KeyboardInterrupt is)."""
    t0 = time.perf_counter()
    tables = table_outputs(job, formats)
    extras = extra_outputs(job, plot, overlay)
    try:
        result: Annotation = annotator.annotate(job.source, progress=on_stage)
        t1 = time.perf_counter()
        for fmt, path in zip(formats, tables):
            WRITERS[fmt](result, path)
        result.timings["write"] += time.perf_counter() - t1
        for extra in extras:
            stage = "plot" if extra.suffix == ".png" else "overlay"
            if on_stage:
                on_stage(stage)
            t1 = time.perf_counter()
            if stage == "plot":
                from .plots import plot_track

                plot_track(result.table, extra, job.source.name, result.info.has_video)
            else:
                from .overlay import render_overlay

                render_overlay(result, extra)
            result.timings[stage] += time.perf_counter() - t1
    except AvemoError as err:
        return Outcome("failed", str(err), _record(annotator, job, "failed", str(err), t0))
    except Exception as err:  # a bug or an unforeseen input: still one line, batch goes on
        if os.environ.get("AVEMO_DEBUG"):
            traceback.print_exc()
        line = str(err).strip().splitlines()
        reason = f"{job.source}: {type(err).__name__}: {line[0] if line else ''}".rstrip(": ")
        return Outcome("failed", reason, _record(annotator, job, "failed", reason, t0))
    outputs = [*tables, *extras]
    record = _record(annotator, job, "ok", "", t0, [str(p) for p in outputs])
    record.media_seconds = result.info.duration
    frames = result.columns["frame"]
    record.frames = int(frames.max()) + 1 if len(frames) else 0
    record.faces = round(float(result.face.mean()), 4) if len(result.face) else 0.0
    return Outcome("written", "\n".join(str(p) for p in outputs), record, result.timings)


def _record(annotator: Annotator | None, job: Job, status: str, error: str = "",
            t0: float | None = None, outputs: list[str] | None = None) -> Record:
    ckpt = annotator.checkpoint if annotator is not None else None
    return Record(str(job.source), status, error, outputs or [],
                  round(time.perf_counter() - t0, 3) if t0 is not None else 0.0,
                  avemo=__version__,
                  model=ckpt.path.name if ckpt is not None and ckpt.path else "",
                  model_sha256=_model_digest(ckpt.path) if ckpt is not None and ckpt.path
                  else "")


@lru_cache(maxsize=4)
def _model_digest(path: Path) -> str:
    from .cache import file_digest

    return file_digest(path)


_WORKER: dict[str, Annotator] = {}


def _start_worker(weights: str, options: dict, threads: int) -> None:
    """A --jobs worker process: its own model and face backend, ``threads`` for torch."""
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C for all
    torch.set_num_threads(threads)
    _WORKER["annotator"] = Annotator(weights, **options)


def _work(job: Job, plot: bool, overlay: bool, formats: tuple[str, ...]) -> Outcome:
    return run_job(_WORKER["annotator"], job, plot, overlay, formats=formats)


def worker_threads(jobs: int) -> int:
    """Torch threads per worker so that ``jobs`` workers share the machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def model_threads(extractors: int) -> int:
    """Torch threads for the model beside ``extractors`` extraction processes: the cores they
    leave (at least one)."""
    return max(1, (os.cpu_count() or 1) - extractors)


def annotate_files(inputs: Iterable[str | os.PathLike], annotator: Annotator,
                   output_dir: str | os.PathLike = ".", overwrite: bool = False,
                   on_start: Callable[[Job, int, int], None] | None = None,
                   on_stage: Callable[[str], None] | None = None,
                   on_done: Callable[[Job, str, str], None] | None = None,
                   plot: bool = False, overlay: bool = False, jobs: int = 1,
                   shard: Shard | None = None,
                   on_record: Callable[[Record], None] | None = None,
                   formats: tuple[str, ...] = ("csv",),
                   one_model: bool | None = None) -> BatchReport:
    """Annotate every input into ``output_dir``. ``on_done(job, status, detail)`` is called with
    status ``written``, ``skipped`` or ``failed`` (detail: the output paths or the reason);
    ``on_record`` with each input's manifest record.
    ``formats`` are the table's formats (``writer.WRITERS``: csv, parquet, json, eaf);
    ``plot`` / ``overlay`` also write the valence plot and the attention overlay video.
    ``jobs`` > 1 annotates that many files at once: with ``one_model`` (the default on CUDA)
    that many processes extract features for this process's model (``_run_feeding``), else
    this process and ``jobs - 1`` workers each run the whole pipeline with a model of their
    own, torch threads split between them (``_run_workers``: on a CPU the model's share of the
    work then grows with the cores too). ``shard`` keeps only its
    share of the inputs. A manifest of the run is written in ``output_dir`` (``shards.Manifest``).
    Raises ``OutputError`` before any work if ``output_dir`` cannot be written."""
    check_output_dir(output_dir)
    report = BatchReport()
    planned, bad = plan(inputs, output_dir)
    if shard is not None:
        planned = [j for j in planned if shard.takes(j.key)]
    manifest = Manifest(Path(output_dir) / (shard.manifest_name if shard else UNSHARDED_MANIFEST))

    def finish(job: Job, outcome: Outcome) -> None:
        manifest.add(outcome.record)
        if on_record:
            on_record(outcome.record)
        if outcome.status == "written":
            for k, v in outcome.timings.items():
                report.timings[k] += v
            report.media_seconds += outcome.record.media_seconds
            report.written.append(table_outputs(job, formats)[0])
        elif outcome.status == "skipped":
            report.skipped.append(table_outputs(job, formats)[0])
        else:
            report.failed.append((job.source, outcome.detail))
        if on_done:
            on_done(job, outcome.status, outcome.detail)

    try:
        for src, reason in bad:  # (with shards, every shard reports these)
            unplanned = Job(src, Path(), str(src))
            finish(unplanned, Outcome("failed", reason,
                                      _record(annotator, unplanned, "failed", reason)))
        todo = []
        for job in planned:
            wanted = [*table_outputs(job, formats), *extra_outputs(job, plot, overlay)]
            for out in wanted:  # what a killed earlier run left half-written
                remove_stale_temporaries(out)
            if not overwrite and all(p.exists() for p in wanted):
                finish(job, Outcome("skipped",
                                    f"{wanted[0]} exists (use --overwrite to redo it)",
                                    _record(annotator, job, "skipped", "", None,
                                            [str(p) for p in wanted])))
            else:
                todo.append(job)
        if one_model is None:
            one_model = annotator.device.type == "cuda"
        if jobs > 1 and todo and one_model:
            _run_feeding(todo, annotator, min(jobs, len(todo)), plot, overlay, on_start, finish,
                         formats)
        elif jobs <= 1 or len(todo) <= 1:
            for i, job in enumerate(todo):
                if on_start:
                    on_start(job, i, len(todo))
                finish(job, run_job(annotator, job, plot, overlay, on_stage, formats))
        else:
            _run_workers(todo, annotator, min(jobs, len(todo)), plot, overlay, on_start, finish,
                         formats)
    finally:
        manifest.close()
    return report


def _run_feeding(todo: list[Job], annotator: Annotator, jobs: int, plot: bool, overlay: bool,
                 on_start, finish, formats: tuple[str, ...] = ("csv",)) -> None:
    """``todo`` with ``jobs`` extraction processes (``early.Extractors``: decoding, openSMILE,
    face tracking; no torch, no model) feeding this process's one model, which predicts and
    writes each file as its features arrive (on a GPU: N CPU processes feed one model). A
    file's extraction is begun ``jobs + 1`` files ahead, so every process has the next file
    waiting. A process that dies (killed, out of memory) takes the files it held with it: the
    processes are restarted and each of those files is tried once more before it is reported
    as failed."""
    from concurrent.futures import FIRST_COMPLETED, Future, wait
    from concurrent.futures.process import BrokenProcessPool

    import torch

    from .demux import probe
    from .early import Extractors

    cfg = annotator.cfg
    queue = list(enumerate(todo))
    begun: dict[Future, tuple[int, Job, Extractors]] = {}
    retried: set[int] = set()
    own_threads = torch.get_num_threads()
    torch.set_num_threads(model_threads(jobs))
    extractors = Extractors(jobs)

    def begin(info) -> Future:
        return extractors.begin(info, annotator.settings, cfg.has_audio, cfg.has_visual,
                                annotator.max_faces, annotator.faces_device)

    def restart() -> None:  # after a process died: the pool is broken for good
        nonlocal extractors
        extractors.stop()
        extractors = Extractors(jobs)

    def process(i: int, job: Job) -> None:
        if on_start:
            on_start(job, i, len(todo))
        finish(job, run_job(annotator, job, plot, overlay, formats=formats))

    try:
        while queue or begun:
            while queue and len(begun) < jobs + 1:
                i, job = queue.pop(0)
                try:
                    info = probe(job.source)
                except Exception:  # unreadable: annotate says why (at once)
                    process(i, job)
                    continue
                try:
                    future = begin(info)
                except BrokenProcessPool:  # a process died since the last file was begun
                    restart()
                    future = begin(info)
                begun[future] = (i, job, extractors)
            if not begun:
                continue
            for future in wait(begun, return_when=FIRST_COMPLETED)[0]:
                i, job, pool = begun.pop(future)
                if isinstance(future.exception(), BrokenProcessPool):
                    if pool is extractors:
                        restart()
                    if i not in retried:
                        retried.add(i)
                        queue.insert(0, (i, job))
                        continue
                    reason = f"{job.source}: the extraction process died (killed, or out of " \
                             f"memory)"
                    if on_start:
                        on_start(job, i, len(todo))
                    finish(job, Outcome("failed", reason,
                                        _record(annotator, job, "failed", reason)))
                    continue
                process(i, job)  # its features are claimed from the finished extraction
    finally:
        extractors.stop()
        torch.set_num_threads(own_threads)


def _run_workers(todo: list[Job], annotator: Annotator, jobs: int, plot: bool, overlay: bool,
                 on_start, finish, formats: tuple[str, ...] = ("csv",)) -> None:
    """``todo`` over ``jobs`` annotators: this process's own (already loaded) and ``jobs - 1``
    spawned worker processes (each loads the model once), all taking from one queue."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import torch

    path = annotator.checkpoint.path
    if path is None:
        raise ValueError("jobs > 1 needs a checkpoint loaded from a file")
    threads = worker_threads(jobs)
    own_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    pool = ProcessPoolExecutor(jobs - 1, mp.get_context("spawn"), initializer=_start_worker,
                               initargs=(str(path), annotator.options, threads))
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
                reason = f"{job.source}: the worker process failed ({type(err).__name__})"
                outcome = Outcome("failed", reason, _record(annotator, job, "failed", reason))
            finish(job, outcome)

    try:
        while queue or pending:
            while queue and len(pending) < jobs - 1:  # one queued per worker, no more
                i, job = queue.pop(0)
                if on_start:
                    on_start(job, i, len(todo))
                pending[pool.submit(_work, job, plot, overlay, formats)] = job
            if queue:  # this process annotates one file meanwhile
                i, job = queue.pop(0)
                if on_start:
                    on_start(job, i, len(todo))
                finish(job, run_job(annotator, job, plot, overlay, formats=formats))
                collect(block=False)
            elif pending:
                collect(block=True)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        raise
    finally:
        torch.set_num_threads(own_threads)
    pool.shutdown()
