"""Many inputs: find media in folders, plan mirrored outputs, skip finished ones, and keep going
past bad files (each reported with its one-line reason)."""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .errors import AvemoError, OutputError
from .pipeline import STAGES, Annotation, Annotator
from .writer import SUFFIX, remove_stale_temporaries, write_csv

VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv",
              ".3gp", ".mts", ".ts"}
AUDIO_EXTS = {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus", ".wma"}
MEDIA_EXTS = VIDEO_EXTS | AUDIO_EXTS


@dataclass
class Job:
    source: Path
    output: Path


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
            pairs = [(f, out / f.relative_to(p).parent / (f.stem + SUFFIX)) for f in find_media(p)]
            if not pairs:
                bad.append((p, f"{p}: no media files found in this folder"))
        elif p.exists():
            pairs = [(p, out / (p.stem + SUFFIX))]
        else:
            bad.append((p, f"{p}: no such file or folder"))
            continue
        for src, dst in pairs:
            if dst in claimed:
                if claimed[dst].resolve() != src.resolve():
                    bad.append((src, f"{src}: its output {dst} is already the output of "
                                     f"{claimed[dst]}; annotate it into another -o folder"))
                continue
            claimed[dst] = src
            jobs.append(Job(src, dst))
    return jobs, bad


def extra_outputs(job: Job, plot: bool, overlay: bool) -> list[Path]:
    """The files requested beside a job's CSV: ``<stem>.avemo.png`` and ``<stem>.avemo.mp4``
    (no overlay for an audio file)."""
    base = job.output.with_name(job.output.name[: -len(".csv")])
    out = [base.with_name(base.name + ".png")] if plot else []
    if overlay and job.source.suffix.lower() not in AUDIO_EXTS:
        out.append(base.with_name(base.name + ".mp4"))
    return out


def annotate_files(inputs: Iterable[str | os.PathLike], annotator: Annotator,
                   output_dir: str | os.PathLike = ".", overwrite: bool = False,
                   on_start: Callable[[Job, int, int], None] | None = None,
                   on_stage: Callable[[str], None] | None = None,
                   on_done: Callable[[Job, str, str], None] | None = None,
                   plot: bool = False, overlay: bool = False) -> BatchReport:
    """Annotate every input into ``output_dir``. ``on_done(job, status, detail)`` is called with
    status ``written``, ``skipped`` or ``failed`` (detail: the output paths or the reason).
    ``plot`` / ``overlay`` also write the valence plot and the attention overlay video.
    Raises ``OutputError`` before any work if ``output_dir`` cannot be written."""
    check_output_dir(output_dir)
    report = BatchReport()
    jobs, bad = plan(inputs, output_dir)
    for src, reason in bad:
        report.failed.append((src, reason))
        if on_done:
            on_done(Job(src, Path()), "failed", reason)
    for i, job in enumerate(jobs):
        if on_start:
            on_start(job, i, len(jobs))
        extras = extra_outputs(job, plot, overlay)
        for out in (job.output, *extras):  # what a killed earlier run left half-written
            remove_stale_temporaries(out)
        if not overwrite and job.output.exists() and all(p.exists() for p in extras):
            report.skipped.append(job.output)
            if on_done:
                on_done(job, "skipped", f"{job.output} exists (use --overwrite to redo it)")
            continue
        try:
            result: Annotation = annotator.annotate(job.source, progress=on_stage)
            t1 = time.perf_counter()
            write_csv(result.table, job.output)
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
            report.failed.append((job.source, str(err)))
            if on_done:
                on_done(job, "failed", str(err))
            continue
        except Exception as err:  # a bug or an unforeseen input: still one line, batch goes on
            if os.environ.get("AVEMO_DEBUG"):
                traceback.print_exc()
            line = str(err).strip().splitlines()
            reason = f"{job.source}: {type(err).__name__}: {line[0] if line else ''}".rstrip(": ")
            report.failed.append((job.source, reason))
            if on_done:
                on_done(job, "failed", reason)
            continue
        for k, v in result.timings.items():
            report.timings[k] += v
        report.media_seconds += result.info.duration
        report.written.append(job.output)
        if on_done:
            on_done(job, "written", "\n".join(str(p) for p in [job.output, *extras]))
    return report
