"""Stage 6 — write: step predictions become one CSV row per video frame, written atomically.

Columns (stable): frame, time, valence, arousal, face, voice. Values are interpolated linearly
from the analysis steps to each frame's time; ``face`` and ``voice`` are those of the step
nearest the frame. Audio-only inputs get one row per analysis step. A target the model does not
predict is an empty column. The file appears under its final name only once it is complete
(temporary file + rename), so an interrupted run never leaves a truncated CSV behind.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

COLUMNS = ["frame", "time", "valence", "arousal", "face", "voice"]
TARGET_COLUMNS = ("valence", "arousal")
SUFFIX = ".avemo.csv"


def frame_table(step_values: np.ndarray, targets: list[str], rate: float,
                face: np.ndarray, voice: np.ndarray,
                frame_times: np.ndarray | None = None) -> pd.DataFrame:
    """The output table. ``step_values`` (K, targets); ``face``/``voice`` (K,) bool per step.
    ``frame_times`` are the video's frame times; None for an audio-only input (rows = steps)."""
    k = len(step_values)
    step_times = np.arange(k) / rate
    if frame_times is None:
        frame_times = step_times
    nearest = np.clip(np.rint(frame_times * rate).astype(np.int64), 0, k - 1)
    table = {"frame": np.arange(len(frame_times)), "time": np.round(frame_times, 3)}
    for name in TARGET_COLUMNS:
        if name in targets:
            col = np.interp(frame_times, step_times, step_values[:, targets.index(name)])
            table[name] = np.clip(col, -1.0, 1.0)
        else:
            table[name] = np.full(len(frame_times), np.nan)
    table["face"] = face[nearest].astype(np.int8)
    table["voice"] = voice[nearest].astype(np.int8)
    return pd.DataFrame(table, columns=COLUMNS)


def _temporary_prefix(path: Path) -> str:
    """How ``atomic_path``'s temporary names for ``path`` begin (the writing pid follows)."""
    return f".{path.name}.tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists (another user's), or not a pid we can judge: leave its files
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that ``atomic_path`` left beside ``path`` in runs that were
    killed before they could clean up (``.<name>.tmp<pid>[suffix]`` of a process that no longer
    exists on this machine). Returns what was removed."""
    path = Path(path)
    removed: list[Path] = []
    prefix = _temporary_prefix(path)
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.glob(prefix + "*"):
        pid = tmp.name[len(prefix):].split(".")[0]  # what follows is atomic_path's suffix
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends
    without an error, removed in every case, so ``path`` is never seen half-written. ``suffix``
    ends the temporary name, for writers that pick the format by extension (".png", ".mp4").
    Every avemo output (CSVs, figures, videos, checkpoints, cache entries) is written so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_temporary_prefix(path)}{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``table`` to ``path`` atomically (a temporary file in the same folder, renamed)."""
    out = table.copy()
    out["time"] = out["time"].map("{:.3f}".format)
    for name in TARGET_COLUMNS:
        out[name] = out[name].map(lambda v: "" if np.isnan(v) else f"{v:.4f}")
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False)
    return Path(path)


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read an avemo CSV back (for eval and scripts)."""
    return pd.read_csv(path)
