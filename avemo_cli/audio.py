"""Stage 2 — audio features: eGeMAPSv02 functionals (88 per step) over a sliding window.

One openSMILE pass per file: the eGeMAPS config's frame-mode functionals are given an explicit
list of windows, one ending at every analysis step (``frameMode = list``), so the low-level
descriptors are computed once and only the functionals are evaluated per window.

Window for the step at time t: [t - window, t] (causal, as the AVEC features), clipped to the
file. Near the start, where fewer than ``window`` seconds exist, the window is what there is
but never shorter than ``min_window`` (it then reaches forward); this is how inputs shorter than
the window (2 s EmoDB clips) are handled too.
"""
from __future__ import annotations

import os
import signal
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

N_FEATURES = 88


@dataclass
class AudioFeatures:
    values: np.ndarray  # (K, 88) float32, raw (not normalised)
    valid: np.ndarray  # (K,) bool: the step lies inside the audio and openSMILE could describe
    # its window (not so for files of 1 s or less); the CSV's voice column


def step_windows(n_steps: int, rate: float, duration: float, window: float,
                 min_window: float = 1.0) -> np.ndarray:
    """(K, 2) start/end seconds of the window that ends at each analysis step."""
    t = np.arange(n_steps, dtype=np.float64) / rate
    end = np.minimum(t, duration)
    start = np.maximum(0.0, end - window)
    short = end - start < min_window
    end[short] = np.minimum(start[short] + min_window, duration)
    start[short] = np.maximum(0.0, end[short] - min_window)
    return np.stack([start, end], axis=1)


@lru_cache(maxsize=1)
def _smile_class():
    import opensmile  # imported lazily: it is slow-ish to import and not needed for video-only

    return opensmile


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


def egemaps(samples: np.ndarray, sample_rate: int, n_steps: int, rate: float,
            window: float = 6.0) -> AudioFeatures:
    """eGeMAPSv02 functionals for the window ending at each of ``n_steps`` steps."""
    opensmile = _smile_class()
    duration = len(samples) / sample_rate
    wins = step_windows(n_steps, rate, duration, window)
    frame_list = ",".join(f"{s:.3f}s-{e:.3f}s" for s, e in wins)
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "frame_mode.conf.inc")
        with open(conf, "w") as f:
            f.write(f"frameMode = list\nframeList = {frame_list}\n")
        smile = opensmile.Smile(
            feature_set=opensmile.FeatureSet.eGeMAPSv02,
            feature_level=opensmile.FeatureLevel.Functionals,
            options={"frameModeFunctionalsConf": conf},
        )
        with _deferred_interrupt(), warnings.catch_warnings():
            # windows openSMILE cannot describe come back as NaN rows (marked invalid below);
            # its own warning about them is not for the user's terminal
            warnings.filterwarnings("ignore", message="Segment too short")
            table = smile.process_signal(samples, sample_rate)
    values = np.asarray(table.to_numpy(), dtype=np.float32)
    if values.shape != (n_steps, N_FEATURES):  # openSMILE drops windows past the end: hold last
        fixed = np.empty((n_steps, N_FEATURES), np.float32)
        m = min(len(values), n_steps)
        if m == 0:
            raise ValueError("openSMILE returned no functionals")
        fixed[:m] = values[:m]
        fixed[m:] = values[m - 1]
        values = fixed
    degenerate = np.isnan(values).all(axis=1)  # e.g. a file of 1 s or less: nothing measured
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    valid = (np.arange(n_steps) / rate < duration) & ~degenerate
    return AudioFeatures(values, valid)
