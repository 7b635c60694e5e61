"""Streams of one file's inputs, and starting them before the model loads.

``audio_features`` streams a file's audio through openSMILE (``audio.egemaps_stream``) and
measures each step's loudness on the way; ``pipeline.extract`` runs it beside the video path.

``begin`` (called by ``avemo annotate`` for a single input file, before torch is imported)
probes the file and starts its audio features (in a process of its own) and its analysis
frames (ffmpeg, read by a thread) at once: while this interpreter spends a second or two
importing torch and loading the models on one core, the other core decodes and describes the
audio and decodes the frames (up to ``AHEAD`` of them are held). ``pipeline.extract`` then
``claim``s what was started for the same file and settings, or does the work itself. Nothing
here imports torch.
"""
from __future__ import annotations

import json
import queue
import struct
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Iterator

import numpy as np

from . import audio as audio_stage
from . import demux

AHEAD = 120  # analysis frames decoded ahead (30 s at 4 per second; ~28 MB at 480x480)


class Timed:
    """Wraps an iterator and adds the time spent inside it to ``timings[key]``."""

    def __init__(self, it: Iterator, timings: dict, key: str):
        self.it, self.timings, self.key = it, timings, key

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.timings[self.key] += time.perf_counter() - t0


class Stopped(Exception):
    """The audio thread was told to stop (the video path of the same file failed)."""


def step_count(info: demux.MediaInfo, rate: float) -> int:
    """Analysis steps of a file: up to the last video frame's time, or the audio's end."""
    if info.has_video:
        return int(np.floor(max(0.0, info.frame_times()[-1]) * rate + 1e-6)) + 1
    return max(1, int(np.ceil(info.duration * rate - 1e-6)))


def audio_features(info: demux.MediaInfo, rate: float, window: float, n_steps: int,
                   timings: dict, stop: threading.Event) -> audio_stage.AudioFeatures:
    """eGeMAPS per step (``audio.egemaps_stream`` over ``demux.iter_audio``) and each step's
    loudness (RMS of its own 1/rate seconds, dB: who speaks, speakers.py)."""
    energy, count = np.zeros(n_steps), np.zeros(n_steps)
    per_step = demux.AUDIO_RATE / rate
    seen = 0

    def blocks():
        nonlocal seen
        for block in demux.iter_audio(info):
            if stop.is_set():
                raise Stopped
            step = np.minimum(((seen + np.arange(len(block))) / per_step).astype(np.int64),
                              n_steps - 1)
            np.add.at(energy, step, np.square(block, dtype=np.float64))
            np.add.at(count, step, 1)
            seen += len(block)
            yield block

    t1 = time.perf_counter()
    stream = Timed(blocks(), timings, "demux")
    values = audio_stage.egemaps_stream(stream, demux.AUDIO_RATE, n_steps, rate, window)
    with np.errstate(divide="ignore", invalid="ignore"):
        values.loudness = (10 * np.log10(energy / count + 1e-10)).astype(np.float32)
    timings["audio"] += time.perf_counter() - t1 - timings["demux"]
    return values


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


class _Started:
    def __init__(self, info: demux.MediaInfo, key: tuple):
        self.info, self.key = info, key
        self.audio: Future | None = None
        self.frames: queue.Queue | None = None


_STARTED: dict[Path, _Started] = {}


def begin(path: str | Path, weights: Path, max_side: int = 480) -> bool:
    """Start the audio features and the analysis frames of ``path`` for the model in
    ``weights`` (see the module docstring). False when nothing was started (unreadable file
    or checkpoint: the normal path reports it)."""
    cfg = model_settings(weights)
    if cfg is None:
        return False
    try:
        info = demux.probe(path)
    except Exception:
        return False
    rate, window = float(cfg.get("rate", 4.0)), float(cfg.get("audio_window", 6.0))
    gray = int(cfg.get("channels", 1)) == 1
    modality = cfg.get("modality", "av")
    started = _Started(info, (rate, window, max_side, gray))
    n_steps = step_count(info, rate)
    if info.has_audio and modality in ("av", "audio"):
        # a process of its own: its imports (openSMILE's ~0.8 s) and work never wait for the
        # interpreter lock that torch's import holds in this one
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(1, mp.get_context("spawn"))
        started.audio = pool.submit(_audio_job, info, rate, window, n_steps)
        started.audio.add_done_callback(lambda _: pool.shutdown(wait=False))
    if info.has_video and modality in ("av", "video"):
        frames: queue.Queue = queue.Queue(maxsize=AHEAD)
        started.frames = frames

        def decode():
            try:
                for frame in demux.iter_frames(info, rate, max_side, gray=gray):
                    frames.put(("frame", frame))
                frames.put(("end", None))
            except BaseException as exc:
                frames.put(("error", exc))

        threading.Thread(target=decode, name="avemo-early-frames", daemon=True).start()
    _STARTED[Path(path).resolve()] = started
    return True


def _audio_job(info: demux.MediaInfo, rate: float, window: float, n_steps: int
               ) -> audio_stage.AudioFeatures:
    return audio_features(info, rate, window, n_steps, dict.fromkeys(("demux", "audio"), 0.0),
                          threading.Event())


def started_audio() -> bool:
    """Whether ``begin`` started some file's audio (then this process need not import
    openSMILE ahead of time)."""
    return any(s.audio is not None for s in _STARTED.values())


def claim(info: demux.MediaInfo, rate: float, window: float, max_side: int, gray: bool
          ) -> tuple[Future | None, Iterator[np.ndarray] | None]:
    """What ``begin`` started for this file with these settings (taken once): the audio
    features' future and the analysis frames, each None if not started."""
    started = _STARTED.get(Path(info.path).resolve())
    if started is None or started.key != (rate, window, max_side, gray):
        return None, None
    del _STARTED[Path(info.path).resolve()]
    if started.info.frame_times().shape != info.frame_times().shape:
        return None, None  # the file changed since it was probed
    return started.audio, None if started.frames is None else _drain(started.frames)


def _drain(frames: queue.Queue) -> Iterator[np.ndarray]:
    while True:
        kind, item = frames.get()
        if kind == "end":
            return
        if kind == "error":
            raise item
        yield item
