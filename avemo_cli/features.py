"""Stages 1-3 joined — one file's features: the demux, audio and face stages (no torch here).

``extract`` probes nothing: it takes a probed file (``demux.probe``) and returns its
``Features``: per-step audio features and the face track(s). The audio path (its own ffmpeg,
openSMILE) runs in a thread beside the video path (ffmpeg, face tracking). ``pipeline.py`` runs
the model on them; ``extractors.py`` runs ``extract`` in processes of their own.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple

import numpy as np

from . import audio as audio_stage
from . import demux, faces, people, tracking

if TYPE_CHECKING:
    from .config import ModelConfig

STAGES = ("demux", "audio", "faces", "model", "postprocess", "write", "plot", "overlay")


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
    loudness (RMS of its own 1/rate seconds, dB: who speaks, speakers.py), and the loudness
    of every 50 ms (``AudioFeatures.envelope``: where utterances begin and end)."""
    energy, count = np.zeros(n_steps), np.zeros(n_steps)
    per_step = demux.AUDIO_RATE / rate
    n_fine = int(np.ceil(n_steps / rate * audio_stage.ENVELOPE_RATE)) + audio_stage.ENVELOPE_RATE
    fine_energy, fine_count = np.zeros(n_fine), np.zeros(n_fine)
    per_fine = demux.AUDIO_RATE // audio_stage.ENVELOPE_RATE
    offset = info.audio_start if info.has_video else 0.0  # the audio's place on the timeline
    seen = int(round(offset * demux.AUDIO_RATE))  # samples of the timeline before this block

    def blocks():
        nonlocal seen
        for block in demux.iter_audio(info):
            if stop.is_set():
                raise Stopped
            step = np.minimum(((seen + np.arange(len(block))) / per_step).astype(np.int64),
                              n_steps - 1)
            np.add.at(energy, step, np.square(block, dtype=np.float64))
            np.add.at(count, step, 1)
            fine = (seen + np.arange(len(block))) // per_fine
            keep = fine < n_fine  # (audio running past the last step's second: not needed)
            fine_energy[:] += np.bincount(fine[keep], np.square(block[keep], dtype=np.float64),
                                          n_fine)  # (indices under n_fine: exactly n_fine)
            fine_count[:] += np.bincount(fine[keep], minlength=n_fine)
            seen += len(block)
            yield block

    t1 = time.perf_counter()
    stream = Timed(blocks(), timings, "demux")
    values = audio_stage.egemaps_stream(stream, demux.AUDIO_RATE, n_steps, rate, window,
                                        offset=offset)
    values.loudness = audio_stage.decibels(energy, count)
    values.envelope = audio_stage.decibels(fine_energy, fine_count)
    values.decoded = seen / demux.AUDIO_RATE - offset
    values.speech = audio_stage.speech_steps(values.loudness)
    timings["audio"] += time.perf_counter() - t1 - timings["demux"]
    return values


def nearest_index(ok: np.ndarray) -> np.ndarray:
    """For every position, the index of the nearest position where ``ok`` is True (ties go
    to the earlier one); all zeros when none is."""
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return np.zeros(len(ok), np.int64)
    steps = np.arange(len(ok))
    pos = np.searchsorted(idx, steps)
    left = idx[np.clip(pos - 1, 0, len(idx) - 1)]
    right = idx[np.clip(pos, 0, len(idx) - 1)]
    return np.where(np.abs(steps - left) <= np.abs(right - steps), left, right)


def _hold_nearest(crops: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Crops where no face was found replaced by the nearest step's face (model input only)."""
    return crops if ok.all() else crops[nearest_index(ok)]


@dataclass(frozen=True, kw_only=True)
class FeatureSettings:
    """Everything that decides what the audio and face stages produce for a file: one
    extraction request, made for a model by ``for_model``. It is the key of the feature cache
    (``cache.py``, by the part each field decides) and of features begun in another process
    (``extractors.py``)."""

    rate: float = 4.0
    audio_window: float = 6.0
    crop_size: int = 64
    channels: int = 1
    max_side: int = 480
    faces_backend: str = "dlib"
    detect_every: int = 8
    audio: bool = True  # the audio stage runs (where the file has audio)
    visual: bool = True  # the face stage runs (where the file has a picture)
    max_faces: int = 1  # faces tracked (above 1: people.py)

    @classmethod
    def for_model(cls, cfg: ModelConfig, *, faces_backend: str = "dlib", max_side: int = 480,
                  detect_every: int = 8, max_faces: int = 1) -> "FeatureSettings":
        """What a model with settings ``cfg`` needs of a file (the one place this is made)."""
        return cls(rate=cfg.rate, audio_window=cfg.audio_window, crop_size=cfg.input_size,
                   channels=cfg.channels, max_side=max_side, faces_backend=faces_backend,
                   detect_every=detect_every, audio=cfg.has_audio, visual=cfg.has_visual,
                   max_faces=max_faces)


@dataclass
class Features:
    """Per-step inputs of one file, as the model stage consumes them."""

    info: demux.MediaInfo
    n_steps: int
    frame_times: np.ndarray | None  # video frame times; None for audio-only files
    audio: audio_stage.AudioFeatures | None = None
    track: tracking.FaceTrack | None = None
    _crops: np.ndarray | None = field(default=None, repr=False)
    others: list[tracking.FaceTrack] = field(default_factory=list)  # faces 1.. (--max-faces)

    @property
    def tracks(self) -> list[tracking.FaceTrack]:
        """Every tracked face, face 0 first."""
        return ([self.track] if self.track is not None else []) + self.others

    def for_face(self, i: int) -> "Features":
        """These features with face ``i`` as the one the model sees."""
        return Features(self.info, self.n_steps, self.frame_times, self.audio, self.tracks[i])

    def source_boxes(self) -> np.ndarray | None:
        """(K, 4) face boxes in the source's (display) pixels; NaN where no face."""
        t = self.track
        if t is None or not t.frame_size[0]:
            return None
        sx = self.info.width / t.frame_size[0] if self.info.width else 1.0
        sy = self.info.height / t.frame_size[1] if self.info.height else 1.0
        return fit_length(t.boxes, self.n_steps, np.nan) * np.array([sx, sy, sx, sy])

    @property
    def face(self) -> np.ndarray:
        if self.track is None:
            return np.zeros(self.n_steps, bool)
        return fit_length(self.track.found, self.n_steps, False)

    def decoded_until(self) -> float | None:
        """Where decoding ended (seconds): the later of the last frame's end and the audio's
        end; None when it is not known (features from the cache)."""
        ends = []
        if self.frame_times is not None and len(self.frame_times):
            ends.append(float(self.frame_times[-1]) + 1.0 / (self.info.fps or 25.0))
        if self.audio is not None:
            if self.audio.decoded is None:
                return None
            ends.append(self.info.audio_start + self.audio.decoded)
        return max(ends) if ends else None

    @property
    def voice(self) -> np.ndarray:
        """(K,) the steps with a voice: audio openSMILE could describe that holds speech, not
        silence (``audio.speech_steps``); the CSV's ``voice``, and where the voice is fused."""
        if self.audio is None:
            return np.zeros(self.n_steps, bool)
        return self.audio.heard

    def model_crops(self) -> np.ndarray:
        """(K, S, S[, 3]) crops, steps without a face holding the nearest face (model input);
        computed once (training reads it for every clip)."""
        if self._crops is None:
            if self.track is None:
                raise ValueError(f"{self.info.path}: no face crops (video not analysed)")
            self._crops = _hold_nearest(fit_length(self.track.crops, self.n_steps), self.face)
        return self._crops


class Extracted(NamedTuple):
    """Features made elsewhere (``extractors.py``) and the stage timings of their making."""

    features: Features
    timings: dict[str, float]


def extract(info: demux.MediaInfo, settings: FeatureSettings,
            backend: Callable[[], faces.FaceBackend], timings: dict | None = None,
            say: Callable[[str], None] | None = None, concurrent: bool = True,
            describer: Callable[[], people.Describer] | None = None) -> Features:
    """Run the demux, face and audio stages that ``settings`` asks for on one probed file (a
    stage runs only where the file has its stream). The audio path (its own ffmpeg,
    openSMILE) runs in a thread beside the video path (ffmpeg, face tracking): openSMILE works
    in C with the interpreter released, so the two share the cores. ``concurrent=False`` runs
    them one after the other (same results)."""
    timings = timings if timings is not None else dict.fromkeys(STAGES, 0.0)
    say = say or (lambda stage: None)
    n_steps = step_count(info, settings.rate)
    feats = Features(info, n_steps, info.frame_times() if info.has_video else None)
    audio_job: Future | None = None
    stop = threading.Event()
    audio_timings = dict.fromkeys(STAGES, 0.0)
    pool = ThreadPoolExecutor(1, thread_name_prefix="avemo-audio")
    try:
        if settings.audio and info.has_audio:
            say("audio")
            audio_job = pool.submit(audio_features, info, settings.rate,
                                    settings.audio_window, n_steps, audio_timings, stop)
            if not concurrent:
                feats.audio = audio_job.result()
        if settings.visual and info.has_video:
            say("faces")
            t1, decode_before = time.perf_counter(), timings["demux"]
            feats.track, feats.others = _faces(info, settings, backend, describer, n_steps,
                                               timings)
            if not feats.track.found.any():  # a wide shot: faces too small at this size?
                side = wider_side(info, settings, backend())
                if side is not None:
                    feats.track, feats.others = _faces(info, replace(settings, max_side=side),
                                                       backend, describer, n_steps, timings)
            timings["faces"] += time.perf_counter() - t1 - (timings["demux"] - decode_before)
        if audio_job is not None:
            feats.audio = audio_job.result()
    finally:
        stop.set()  # the audio thread ends at its next block if the video path failed
        pool.shutdown(wait=True)
        for k, v in audio_timings.items():
            timings[k] += v
    return feats


def _faces(info: demux.MediaInfo, settings: FeatureSettings,
           backend: Callable[[], faces.FaceBackend],
           describer: Callable[[], people.Describer] | None, n_steps: int,
           timings: dict) -> tuple[tracking.FaceTrack, list[tracking.FaceTrack]]:
    """The face path: analysis frames at ``settings.max_side``, tracked (face 0, and the
    others with ``max_faces`` above 1)."""
    frames = Timed(demux.iter_frames(info, settings.rate, settings.max_side,
                                     gray=settings.channels == 1), timings, "demux")
    if settings.max_faces > 1:
        tracks = people.track_people(frames, backend(), settings.crop_size, settings.max_faces,
                                     (describer or people.Describer)(), settings.detect_every)
        first = tracks[0] if tracks else tracking.FaceTrack.empty(settings.crop_size)
        return first, tracks[1:]
    return tracking.track_faces(frames, backend(), settings.crop_size, settings.detect_every,
                                expected=n_steps), []


FACE_PX = 110  # px: the height a face found in a wide shot is given at the analysis size
LOOK_SIDE = 1920  # px: the largest frame side a wide shot is searched at (``wider_side``)


def search_side(info: demux.MediaInfo, max_side: int) -> int | None:
    """The frame side a video with no face at the analysis size ``max_side`` is searched at
    (``wider_side``): its own, up to ``LOOK_SIDE``; None when that is no larger than the
    analysis size (by a quarter: nothing to gain)."""
    look = min(max(info.width, info.height), LOOK_SIDE)
    return look if look > max_side * 1.25 else None


def wider_side(info: demux.MediaInfo, settings: FeatureSettings,
               backend: faces.FaceBackend, n: int = 6) -> int | None:
    """When no face was found at the analysis size: a few frames searched at up to
    ``LOOK_SIDE`` px (a meeting room, a lecture hall: faces of 90-180 px in a 1920 px frame are
    40-80 px at 480, under dlib's detector). The analysis size at which the smallest face found
    is ``FACE_PX`` high, or None when none is found there either (or the picture is no larger
    than the analysis size)."""
    look = search_side(info, settings.max_side)
    if look is None:
        return None
    heights = [box[3] - box[1]
               for frame in demux.sample_frames(info, n, look, gray=settings.channels == 1)
               for box in backend.detect(frame)]
    if not heights:
        return None
    side = int(np.ceil(look * FACE_PX / min(heights) / 2)) * 2
    side = min(look, side)
    return side if side > settings.max_side else None


def fit_length(a: np.ndarray, n: int, fill=None) -> np.ndarray:
    """``a`` cut or extended to ``n`` rows (extension repeats the last row, or ``fill``)."""
    if len(a) >= n:
        return a[:n]
    if len(a) == 0:
        return np.full((n,) + a.shape[1:], fill if fill is not None else 0, a.dtype)
    pad = np.repeat(a[-1:], n - len(a), axis=0)
    if fill is not None:
        pad[:] = fill
    return np.concatenate([a, pad])
