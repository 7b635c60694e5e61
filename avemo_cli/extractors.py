"""Extraction processes: one file's features (``features.extract``: decoding, openSMILE, dlib's
models, face tracking; no torch, no model) made in processes of their own (workers.py) for the
process that holds the model.

``Extractors(n)`` is a pool of n such processes. ``begin`` submits a probed file with its
extraction request (``FeatureSettings``); the scheduler (schedule.py) later ``claim``s the
features begun for the same file and request (once) and hands them to the model's
``Annotator.annotate``, which extracts them itself when none were. Two uses, both decided in
``batch.py``:

- one input: ``begin_file`` starts its extraction *before torch is imported*, so decoding,
  openSMILE and tracking run on the second core while this process imports torch and loads the
  model on the first;
- a folder fed to one model (``schedule.feeding``: ``--jobs 1`` from the console, ``--one-model``,
  CUDA): its processes keep the files ahead of the model's one extracted; from the console the
  first files are begun before torch is imported too (``begin_files``).

Nothing here imports torch.
"""
from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path

from . import demux, workers
from .features import STAGES, Extracted, FeatureSettings, extract


class Extractors:
    """Processes that extract files' features for the process holding the model."""

    def __init__(self, processes: int = 1):
        self.pool = workers.start_pool(processes)
        # features begun, by file: (the request they were begun for, the future)
        self.started: dict[Path, tuple[FeatureSettings, Future]] = {}

    def begin(self, info: demux.MediaInfo, request: FeatureSettings,
              faces_device: str = "cpu") -> Future:
        """Submit ``info``'s extraction for ``request``; the face backend runs on
        ``faces_device``."""
        job = self.pool.submit(_extract, info, request, faces_device)
        self.started[_key(info.path)] = (request, job)
        return job

    def begun(self, path: str | Path, request: FeatureSettings) -> Future | None:
        """The extraction begun for this file with this request (not yet claimed), if any."""
        started = self.started.get(_key(path))
        return started[1] if started is not None and started[0] == request else None

    def claim(self, path: str | Path, request: FeatureSettings) -> Extracted | None:
        """The features begun for this file with this request, taken once (waiting for them);
        None if none were. An error of the extraction is raised."""
        future = self.begun(path, request)
        if future is None:
            return None
        del self.started[_key(path)]
        return future.result()

    def tracking_faces(self) -> bool:
        """Whether some file's faces are being tracked here (so the model's process need not
        load the face models ahead of time)."""
        return any(request.visual for request, _ in self.started.values())

    def stop(self) -> None:
        """End the processes now (work in them, and features never claimed, are dropped)."""
        workers.end_pool(self.pool)
        self.started.clear()


def _key(path: str | Path) -> Path:
    """A file's key among the work begun: its absolute path as given (links are not followed:
    two links to one file are two inputs, each with outputs of its own name)."""
    return Path(os.path.abspath(path))


def probed(path: str | Path) -> demux.MediaInfo | None:
    """``path`` probed, or None when it cannot be (the normal path then says why)."""
    try:
        return demux.probe(path)
    except Exception:
        return None


def begin_file(path: str | Path, request: FeatureSettings) -> Extractors | None:
    """Start extracting ``path``'s features for ``request`` in a process of its own (no torch).
    None when nothing was started (an unreadable file: the normal path reports it)."""
    info = probed(path)
    if info is None:
        return None
    extractors = Extractors(1)
    job = extractors.begin(info, request)
    job.add_done_callback(lambda _: extractors.pool.shutdown(wait=False))
    return extractors


def begin_files(paths: list[Path], request: FeatureSettings,
                processes: int) -> Extractors:
    """``processes`` extraction processes, the first files of a folder begun in them (those
    that can be probed; the others are left to the normal path, which reports them)."""
    extractors = Extractors(processes)
    for path in paths:
        info = probed(path)
        if info is not None:
            extractors.begin(info, request)
    return extractors


def _extract(info: demux.MediaInfo, request: FeatureSettings,
             faces_device: str) -> Extracted:
    from .faces import shared_backend

    timings = dict.fromkeys(STAGES, 0.0)
    feats = extract(info, request, lambda: shared_backend(request.faces_backend, faces_device),
                    timings)
    return Extracted(feats, timings)
