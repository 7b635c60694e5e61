"""Stage 2 — audio features: eGeMAPSv02 functionals (88 per step) over a sliding window.

openSMILE runs over the audio in passes of a minute of steps as it streams in from ffmpeg:
the eGeMAPS config's frame-mode functionals are given an explicit list of windows, one ending at
every analysis step of the pass (``frameMode = list``), so the low-level descriptors are computed
once per pass and only the functionals per window. Memory does not grow with the file.

Window for the step at time t: [t - window, t] (causal, as the AVEC features), clipped to the
file. Near the start, where fewer than ``window`` seconds exist, the window is what there is
but never shorter than ``min_window`` (it then reaches forward); this is how inputs shorter than
the window (2 s EmoDB clips) are handled too.
"""
from __future__ import annotations

import ctypes
import os
import signal
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from ._memory import trim_heap

N_FEATURES = 88


@dataclass
class AudioFeatures:
    values: np.ndarray  # (K, 88) float32, raw (not normalised)
    valid: np.ndarray  # (K,) bool: the step lies inside the audio and openSMILE could describe
    # its window (not so for files of 1 s or less); the CSV's voice column
    loudness: np.ndarray | None = None  # (K,) dB RMS of each step's own span (annotate only)
    envelope: np.ndarray | None = None  # dB RMS per 1/ENVELOPE_RATE s of the timeline
    # (annotate only): where utterances begin and end (utterances.py)
    decoded: float | None = None  # seconds of audio decoded (annotate only)
    speech: np.ndarray | None = None  # (K,) bool: the step holds speech, not silence
    # (``speech_steps``; annotate only: features from the cache have None, taken as all)

    @property
    def heard(self) -> np.ndarray:
        """(K,) the steps with a voice (``voiced``): the CSV's ``voice``, where the voice is
        fused, and the steps a recording's normalisation is estimated from."""
        return voiced(self.valid, self.speech)


def voiced(valid: np.ndarray, speech: np.ndarray | None) -> np.ndarray:
    """(K,) the steps with a voice: inside the audio, described by openSMILE (``valid``), and
    speech rather than silence (``speech``; None: all). Annotation, training and the speech
    recipe all take these, and only these, as the voice (``AudioBranch.adapt``)."""
    return valid if speech is None else valid & speech


ENVELOPE_RATE = 20  # loudness values per second in ``AudioFeatures.envelope`` (50 ms each)
SPEECH_FLOOR = -50.0  # dBFS: a step quieter than this is not speech (silence, room tone)
STEADY = 1.5  # dB: a sound whose loudness varies less than this (5th to 95th percentile) is
# steady, not a voice
SPEECH_RANGE = 35.0  # dB: nor one this far below the file's loud steps (its 95th percentile)
SPEECH_HANG = (1, 2)  # steps a loud step lends before it (0.25 s) and after it (0.5 s): an
# onset and the pauses between words stay speech


def decibels(energy: np.ndarray, count: np.ndarray) -> np.ndarray:
    """(K,) each step's loudness, RMS dB of its own samples (their summed squares ``energy``
    over their ``count``; NaN for a step with none): what ``speech_steps`` and ``speakers``
    read, for annotate and the speech recipe alike."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (10 * np.log10(energy / count + 1e-10)).astype(np.float32)


def speech_level(loudness: np.ndarray) -> tuple[float | None, bool]:
    """The loudness (dB) above which a step of this file holds speech (``speech_steps``), and
    whether the file has quiet parts (its loudness varies by 6 dB or more). The level is
    ``SPEECH_FLOOR``, or ``SPEECH_RANGE`` below the file's loud steps (their 95th percentile)
    when that is higher and the file has quiet parts; None when nothing in it is speech (all
    under the floor, or steady: ``STEADY``); ``-inf`` when no step has samples of its own
    (then every step counts)."""
    finite = np.isfinite(loudness)  # (a step with no samples of its own has none: the last
    if not finite.any():  # step of a file ending on it, steps before a late audio track)
        return -np.inf, False
    levels = loudness[finite]
    spread = np.percentile(levels, 95) - np.percentile(levels, 5)
    if not (levels > SPEECH_FLOOR).any() or spread < STEADY:
        return None, False
    if spread < 6.0:
        return SPEECH_FLOOR, False
    return float(max(SPEECH_FLOOR, np.percentile(levels, 95) - SPEECH_RANGE)), True


def speech_steps(loudness: np.ndarray) -> np.ndarray:
    """(K,) bool: the steps that hold speech rather than silence, from each step's own loudness
    (RMS dB of its 0.25 s): above ``speech_level`` (``SPEECH_FLOOR``, and within
    ``SPEECH_RANGE`` of the file's loud steps), widened by ``SPEECH_HANG`` steps before and
    after when the file has quiet parts. A step under the floor is never speech (digital
    silence, a muted track). A sound whose loudness never varies by ``STEADY`` dB (a hum, a
    tone, a muted track's dither) is not speech: a voice rises and falls with its syllables. A
    file with no quiet part but a varying loudness (by less than 6 dB) is all speech that is
    above the floor: nothing here tells noise from a quiet voice. (Where there is no audio at
    all, openSMILE's ``valid`` already says so.)"""
    level, quiet_parts = speech_level(loudness)
    if level is None:
        return np.zeros(len(loudness), bool)
    if level == -np.inf:
        return np.ones(len(loudness), bool)
    loud = np.isfinite(loudness) & (loudness > level)
    if not quiet_parts:
        return loud
    widened = loud.copy()
    before, after = SPEECH_HANG
    for k in range(1, after + 1):
        widened[k:] |= loud[:-k]
    for k in range(1, before + 1):
        widened[:-k] |= loud[k:]
    return widened


PASS_SECONDS = 60.0  # analysis steps per openSMILE pass: bounds the audio held at once
HISTORY = 2.0  # seconds of audio before a pass's first window (filters and pitch smoothing
# settle there, as they had in a pass over the whole file: 0.5 s was already exact)
LOOKAHEAD = 1.0  # seconds of audio after a pass's last step before it runs while streaming
HOP = 0.01  # eGeMAPS low-level frame step: passes start on this grid, as whole-file frames do
SHORTEST_DESCRIBED = 1.0  # seconds: audio this short (a single word) is given to openSMILE
# with silence after it, so that its one window, all of it, is described
SHORTEST_AUDIO = 0.1  # seconds: shorter audio (a click: under two of eGeMAPS' 60 ms frames)
# is not described at all


def step_windows(steps: int | np.ndarray, rate: float, duration: float, window: float,
                 min_window: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """(K, 2) start/end seconds (on the audio's own clock) of the window that ends at each
    analysis step (``steps``: a count, meaning steps 0..K-1, or the step indices); the audio
    starts ``offset`` seconds into the file, so step k is at ``k / rate - offset`` on it."""
    idx = np.arange(steps) if isinstance(steps, (int, np.integer)) else np.asarray(steps)
    t = idx.astype(np.float64) / rate - offset
    end = np.minimum(t, duration)
    start = np.maximum(0.0, end - window)
    short = end - start < min_window
    end[short] = np.minimum(start[short] + min_window, duration)
    start[short] = np.maximum(0.0, end[short] - min_window)
    return np.stack([start, end], axis=1)


class _SmileAPI(NamedTuple):
    lib: ctypes.CDLL  # openSMILE's C API (SMILEapi.h), the library the opensmile wheel ships
    config: Path  # the wheel's configuration files
    sink_callback: type  # the C type of an external sink's extended data callback


@lru_cache(maxsize=1)
def _smile_api() -> _SmileAPI:
    """openSMILE's C library, called through ctypes. The ``opensmile`` Python package is not
    imported: its import (pandas, audformat, audinterface; ~0.45 s of CPU) would be most of the
    audio stage's start-up, and all it adds is a table around what the library returns."""
    import importlib.util

    spec = importlib.util.find_spec("opensmile")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("openSMILE is not installed (pip install opensmile)")
    core = Path(next(iter(spec.submodule_search_locations))) / "core"
    names = ("libSMILEapi.so", "libSMILEapi.dylib", "SMILEapi.dll")
    found = sorted(p for p in (core / "bin").glob("*/*") if p.name in names)
    if not found:
        raise ImportError(f"openSMILE's library (SMILEapi) is missing under {core / 'bin'}")
    lib = ctypes.CDLL(str(found[0]))
    ptr, text, num = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    sink = ctypes.CFUNCTYPE(num, ctypes.POINTER(ctypes.c_float), ctypes.c_long, ctypes.c_long,
                            ptr, ptr)  # (values, rows, columns, frame metadata, user data)
    for name, args, result in (
            ("smile_new", [], ptr),
            ("smile_initialize", [ptr, text, num, ptr, num, num, num, ptr], num),
            ("smile_extaudiosource_write_data", [ptr, text, ptr, num], num),
            ("smile_extaudiosource_set_external_eoi", [ptr, text], num),
            ("smile_extsink_set_data_callback_ex", [ptr, text, sink, ptr], num),
            ("smile_run", [ptr], num),
            ("smile_error_msg", [ptr], text),
            ("smile_free", [ptr], None)):
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = result
    return _SmileAPI(lib, core / "config", sink)


@contextmanager
def _deferred_interrupt():
    """Hold Ctrl-C until openSMILE returns. Its results arrive through a ctypes callback, and a
    KeyboardInterrupt raised inside one is swallowed by ctypes (with that window's data lost),
    so the run would silently go on; here it is raised once openSMILE is done."""
    caught = []
    try:
        previous = signal.signal(signal.SIGINT, lambda sig, frame: caught.append(sig))
    except ValueError:  # not the main thread: nothing to defer
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


class _Extractor:
    """openSMILE's eGeMAPSv02 functionals (the wheel's own configuration) over a list of
    windows, rewritten per pass: openSMILE reads its configuration afresh for every run."""

    def __init__(self):
        self.api = _smile_api()
        self._tmp = tempfile.TemporaryDirectory()
        self.conf = os.path.join(self._tmp.name, "frame_mode.conf.inc")
        shared = self.api.config / "shared"
        self.options = {
            "frameModeFunctionalsConf": self.conf,  # the windows: one per analysis step
            "sink": shared / "standard_external_data_output_single.conf.inc",
            "sinkLevel": "func",  # the functionals, not the low-level descriptors
            "bufferModeRbConf": shared / "BufferModeRb.conf.inc",
            "source": shared / "standard_external_wave_input.conf.inc",
            "nBits": 16}

    def __call__(self, samples: np.ndarray, sample_rate: int, wins: np.ndarray) -> np.ndarray:
        """(len(wins), 88) functionals of ``samples`` (floats in [-1, 1]) over windows
        ``wins`` (seconds into ``samples``); NaN rows for windows openSMILE cannot describe."""
        with open(self.conf, "w") as f:
            f.write("frameMode = list\nframeList = "
                    + ",".join(f"{s:.3f}s-{e:.3f}s" for s, e in wins) + "\n")
        pcm = np.clip(samples * 32768.0, -32768, 32767).astype("<i2").tobytes()
        with _deferred_interrupt():
            rows = self._run(pcm, sample_rate)
        values = np.concatenate(rows) if rows else np.full((1, N_FEATURES), np.nan, np.float32)
        if len(values) != len(wins):  # openSMILE drops windows past the end: hold the last
            values = np.concatenate([values[: len(wins)],
                                     np.repeat(values[-1:], max(0, len(wins) - len(values)), 0)])
        return values

    def _run(self, pcm: bytes, sample_rate: int) -> list[np.ndarray]:
        """One openSMILE run over 16-bit mono ``pcm``: the rows its sink received."""
        lib = self.api.lib
        rows: list[np.ndarray] = []

        def receive(data, n_rows, n_cols, meta, user):
            rows.append(np.ctypeslib.as_array(data, shape=(n_rows, n_cols)).copy())
            return 1

        options = {**self.options, "sampleRate": sample_rate}
        flat = [str(v).encode() for pair in options.items() for v in pair]
        argv = (ctypes.c_char_p * (len(flat) + 1))(*flat, None)
        config = str(self.api.config / "egemaps" / "v02" / "eGeMAPSv02.conf").encode()
        callback = self.api.sink_callback(receive)  # referenced until the run is over
        smile = lib.smile_new()
        if not smile:
            raise RuntimeError("openSMILE could not start")

        def check(code: int, what: str) -> None:
            if code != 0:
                message = (lib.smile_error_msg(smile) or b"").decode(errors="replace")
                raise RuntimeError(f"openSMILE failed to {what} (code {code}): {message}")

        try:
            check(lib.smile_initialize(smile, config, len(options), argv, 2, 0, 0, None),
                  "load the eGeMAPSv02 configuration")
            check(lib.smile_extsink_set_data_callback_ex(smile, b"extsink", callback, None),
                  "connect its output")
            check(lib.smile_extaudiosource_write_data(smile, b"extsource", pcm, len(pcm)),
                  "take the audio")
            check(lib.smile_extaudiosource_set_external_eoi(smile, b"extsource"),
                  "end the audio")
            check(lib.smile_run(smile), "run")
        finally:
            lib.smile_free(smile)
        return rows

    def close(self) -> None:
        self._tmp.cleanup()


def egemaps_stream(blocks: Iterable[np.ndarray], sample_rate: int, n_steps: int, rate: float,
                   window: float = 6.0, pass_seconds: float = PASS_SECONDS,
                   offset: float = 0.0) -> AudioFeatures:
    """eGeMAPSv02 functionals for the window ending at each of ``n_steps`` steps, from the
    audio in consecutive ``blocks`` (e.g. ``demux.iter_audio``). The audio begins ``offset``
    seconds into the file (``MediaInfo.audio_start``): steps more than half a step before it
    have no audio (zeros, not valid); the first ones after it are described as a file's first
    steps are.

    openSMILE runs once per ``pass_seconds`` of steps, over the audio from ``HISTORY`` seconds
    before the pass's first window; audio no later pass needs is let go. Memory is bounded by
    the pass, not the file; a file within one pass gets exactly one pass over all of it.
    """
    values = np.zeros((n_steps, N_FEATURES), np.float32)
    per_pass = max(1, int(round(pass_seconds * rate)))
    held: list[np.ndarray] = []
    held_from = 0  # sample index of held[0][0]
    total = 0
    # the first step at the audio's start, or within half a step before it (a track a few
    # milliseconds late still has its first step)
    first_step = min(n_steps, max(0, int(np.ceil(offset * rate - 0.5 - 1e-9))))
    done = first_step
    extract = _Extractor()

    def run(stop: int, duration: float) -> None:
        nonlocal done, held, held_from
        wins = step_windows(np.arange(done, stop), rate, duration, window, offset=offset)
        t0 = max(0.0, np.floor((wins[:, 0].min() - HISTORY) / HOP) * HOP)
        first = int(round(t0 * sample_rate))
        end = int(np.ceil((wins[:, 1].max() + LOOKAHEAD) * sample_rate))  # no audio past it
        data = np.concatenate(held) if len(held) > 1 else held[0]
        chunk = data[first - held_from:end - held_from]
        if duration <= SHORTEST_DESCRIBED:  # a word: its windows end where the audio does, and
            # openSMILE describes no window ending at its input's last sample: silence after it
            chunk = np.concatenate([chunk, np.zeros(int(LOOKAHEAD * sample_rate), chunk.dtype)])
        values[done:stop] = extract(chunk, sample_rate, wins - t0)
        trim_heap()  # openSMILE's buffers of this pass, freed: back to the system
        done = stop
        # later windows start at or after (stop / rate - window): keep from HISTORY before it
        keep_t = max(0.0, np.floor((stop / rate - offset - window - HISTORY) / HOP) * HOP)
        keep = max(held_from, min(int(round(keep_t * sample_rate)), held_from + len(data)))
        held, held_from = [data[keep - held_from:]], keep

    try:
        for block in blocks:
            held.append(block)
            total += len(block)
            while done < n_steps:
                stop = min(done + per_pass, n_steps)
                if total / sample_rate < max((stop - 1) / rate - offset, 1.0) + LOOKAHEAD:
                    break
                run(stop, np.inf)  # the audio goes on past these windows
        if total == 0:
            raise ValueError("no audio samples")
        duration = total / sample_rate
        # steps past the audio's end all describe its last window: computed through the first
        # of them, the rest copied (a 70 s video with 3 s of audio has 268 such steps)
        past = min(n_steps, max(done, int(np.ceil((duration + offset) * rate - 1e-9)) + 1))
        while done < past:
            run(min(done + per_pass, past), duration)
        if 0 < past < n_steps:
            values[past:] = values[past - 1]
    finally:
        extract.close()
    degenerate = np.isnan(values).all(axis=1)  # e.g. a file of 1 s or less: nothing measured
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    t = np.arange(n_steps) / rate - offset  # each step on the audio's clock
    valid = (np.arange(n_steps) >= first_step) & (t < duration) & ~degenerate & \
        (duration >= SHORTEST_AUDIO)
    return AudioFeatures(values, valid)


def egemaps(samples: np.ndarray, sample_rate: int, n_steps: int, rate: float,
            window: float = 6.0) -> AudioFeatures:
    """eGeMAPSv02 functionals for the window ending at each of ``n_steps`` steps of an audio
    signal held in memory (``egemaps_stream`` with one block)."""
    return egemaps_stream([samples], sample_rate, n_steps, rate, window)
