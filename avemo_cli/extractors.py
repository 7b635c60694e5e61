"""Extraction processes: one file's features (``features.extract``: decoding, openSMILE, dlib's
models, face tracking; no torch, no model) made in spawned processes for the process that holds
the model.

``Extractors(n)`` is a pool of n such processes. ``begin`` submits a probed file; the model's
``Annotator.annotate(path, extractors=pool)`` then ``claim``s the features begun for the same
file and settings (once), or extracts them itself. Two uses, both decided in ``batch.py``:

- one input: ``begin_file`` starts its extraction *before torch is imported*, so decoding,
  openSMILE and tracking run on the second core while this process imports torch and loads the
  model on the first;
- ``--jobs N --one-model``: N processes keep the files ahead of the model's one extracted.

Nothing here imports torch.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import sys
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import demux
from .features import STAGES, Features, FeatureSettings, extract

_LIVE: list[Extractors] = []  # pools not yet stopped (``stop_all``: the console's last word)


def model_settings(weights: Path) -> dict | None:
    """The model settings stored in a checkpoint, read from its header alone (no torch);
    None if that cannot be done (the model's own loading will then say why)."""
    try:
        with open(weights, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        return json.loads(header["__metadata__"]["avemo"])["model"]
    except Exception:
        return None


class Extractors:
    """Spawned processes that extract files' features for the process holding the model."""

    def __init__(self, processes: int = 1):
        self.pool = start_pool(processes, child_start, (os.getpid(),))
        # features begun, by file: (what they were begun for, the file's probe, the future)
        self.started: dict[Path, tuple[tuple, demux.MediaInfo, Future]] = {}
        _LIVE.append(self)

    def begin(self, info: demux.MediaInfo, settings: FeatureSettings, audio_branch: bool,
              visual_branch: bool, max_faces: int = 1,
              faces_device: str = "cpu") -> Future:
        """Submit ``info``'s extraction for a model with these branches (what the model's own
        ``annotate`` would extract); the face backend runs on ``faces_device``."""
        want_audio = info.has_audio and audio_branch
        want_visual = info.has_video and visual_branch
        job = self.pool.submit(_extract, info, settings, want_audio, want_visual, max_faces,
                               faces_device)
        self.started[Path(info.path).resolve()] = ((info.n_frames, settings, want_audio,
                                                    want_visual, max_faces), info, job)
        return job

    def info(self, path: str | Path) -> demux.MediaInfo | None:
        """The probe of a file whose features were begun (``annotate`` need not probe it
        again)."""
        started = self.started.get(Path(path).resolve())
        return started[1] if started is not None else None

    def claim(self, info: demux.MediaInfo, settings: FeatureSettings, want_audio: bool,
              want_visual: bool, max_faces: int) -> tuple[Features, dict] | None:
        """The features (and the stage timings of their extraction) begun for this file with
        these settings, taken once; None if none were. An error of the extraction is raised."""
        path = Path(info.path).resolve()
        started = self.started.get(path)
        if started is None or started[0] != (info.n_frames, settings, want_audio, want_visual,
                                             max_faces):
            return None
        del self.started[path]
        feats, timings = started[2].result()
        feats.info = info
        return feats, timings

    def tracking_faces(self) -> bool:
        """Whether some file's faces are being tracked here (so the model's process need not
        load the face models ahead of time)."""
        return any(key[3] for key, _, _ in self.started.values())

    def stop(self) -> None:
        """End the processes now (work in them, and features never claimed, are dropped)."""
        end_pool(self.pool)
        self.started.clear()
        if self in _LIVE:
            _LIVE.remove(self)


def start_pool(processes: int, initializer, initargs: tuple):
    """A pool of ``processes`` spawned processes, all started now, with Ctrl-C ignored while
    they start (they inherit that through exec, so a terminal's Ctrl-C, which reaches every
    process of the group, finds none of them half-started; ``child_start`` keeps ignoring it).
    Starting them all at once keeps that window to these few milliseconds: later submissions
    start nothing, so a Ctrl-C while the work runs always reaches this process."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(processes, mp.get_context("spawn"), initializer=initializer,
                               initargs=initargs)
    with sigint_ignored():
        launch = getattr(pool, "_launch_processes", None)  # (CPython's; else on first use)
        if launch is not None:
            launch()
    return pool


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ctrl-C ignored in this process while the block runs (it starts processes): a process
    started then inherits the ignored signal through exec, so a Ctrl-C at the terminal, which
    reaches every process of the group, finds none of ours half-started. Only the main thread
    can change it; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def child_start(parent: int) -> None:
    """The first thing a process of ours does (extraction processes, ``--jobs`` workers): it
    leaves Ctrl-C to the process that started it, and it ends when that process is gone (a
    parent killed with SIGKILL leaves no orphan working on or holding memory)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        try:  # the kernel sends SIGKILL when the parent dies
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before that was set
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="avemo-parent-watch",
                     daemon=True).start()  # (where the kernel has no parent-death signal)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def begin_file(path: str | Path, weights: Path, faces_backend: str = "dlib",
               max_side: int = 480, detect_every: int = 8,
               max_faces: int = 1) -> Extractors | None:
    """Start extracting ``path``'s features for the model in ``weights`` in a process of
    its own, reading the model's settings from the checkpoint's header (no torch). None
    when nothing was started (unreadable file or checkpoint: the normal path reports it)."""
    cfg = model_settings(weights)
    if cfg is None:
        return None
    try:
        info = demux.probe(path)
    except Exception:
        return None
    settings = FeatureSettings(float(cfg.get("rate", 4.0)),
                               float(cfg.get("audio_window", 6.0)),
                               int(cfg.get("input_size", 64)), int(cfg.get("channels", 1)),
                               max_side, faces_backend, detect_every)
    modality = cfg.get("modality", "av")
    extractors = Extractors(1)
    job = extractors.begin(info, settings, modality in ("av", "audio"),
                           modality in ("av", "video"), max_faces)
    job.add_done_callback(lambda _: extractors.pool.shutdown(wait=False))
    return extractors


def end_pool(pool) -> None:
    """End a process pool at once: its processes terminated (work in them dropped), waited
    for, and its queues closed, so that nothing is left running or leaked."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for proc in processes:
        proc.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.join(5)
    manager = getattr(pool, "_executor_manager_thread", None)
    if manager is not None:  # its last use of the queues done before they are finalized
        manager.join(5)


def live() -> list[Extractors]:
    """The pools not yet stopped."""
    return list(_LIVE)


def stop_all() -> None:
    """End every pool still running (the command is ending, perhaps on an error before the
    features were claimed): none outlives it holding its output streams."""
    for extractors in list(_LIVE):
        extractors.stop()


def _extract(info: demux.MediaInfo, settings: FeatureSettings, want_audio: bool,
             want_visual: bool, max_faces: int,
             faces_device: str) -> tuple[Features, dict]:
    from .faces import shared_backend

    timings = dict.fromkeys(STAGES, 0.0)
    feats = extract(info, settings, want_audio, want_visual,
                    lambda: shared_backend(settings.faces_backend, faces_device), timings,
                    max_faces=max_faces)
    return feats, timings
