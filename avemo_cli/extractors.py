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
- ``--jobs N --one-model``: N processes keep the files ahead of the model's one extracted.

Nothing here imports torch.
"""
from __future__ import annotations

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
        self.started[Path(info.path).resolve()] = (request, job)
        return job

    def claim(self, path: str | Path, request: FeatureSettings) -> Extracted | None:
        """The features begun for this file with this request, taken once (waiting for them);
        None if none were. An error of the extraction is raised."""
        key = Path(path).resolve()
        started = self.started.get(key)
        if started is None or started[0] != request:
            return None
        del self.started[key]
        return started[1].result()

    def tracking_faces(self) -> bool:
        """Whether some file's faces are being tracked here (so the model's process need not
        load the face models ahead of time)."""
        return any(request.visual for request, _ in self.started.values())

    def stop(self) -> None:
        """End the processes now (work in them, and features never claimed, are dropped)."""
        workers.end_pool(self.pool)
        self.started.clear()


def begin_file(path: str | Path, request: FeatureSettings) -> Extractors | None:
    """Start extracting ``path``'s features for ``request`` in a process of its own (no torch).
    None when nothing was started (an unreadable file: the normal path reports it)."""
    try:
        info = demux.probe(path)
    except Exception:
        return None
    extractors = Extractors(1)
    job = extractors.begin(info, request)
    job.add_done_callback(lambda _: extractors.pool.shutdown(wait=False))
    return extractors


def _extract(info: demux.MediaInfo, request: FeatureSettings,
             faces_device: str) -> Extracted:
    from .faces import shared_backend

    timings = dict.fromkeys(STAGES, 0.0)
    feats = extract(info, request, lambda: shared_backend(request.faces_backend, faces_device),
                    timings)
    return Extracted(feats, timings)
