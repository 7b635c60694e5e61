"""Stage 6a — the table: one face's step predictions become one row per video frame.

Columns (stable; long format, one row per frame per face): frame, time, face_id, valence,
arousal, face, voice, speaking, confidence, box_x, box_y, box_w, box_h. Values are interpolated
linearly from the analysis steps to each frame's time; the flags, confidence and box are those
of the step nearest the frame. Audio-only inputs get one row per analysis step. A target the
model does not predict is an empty column. A table is ``Columns``: one array per name, which
every writer in ``outputs.py`` writes (a pandas DataFrame only on request: ``as_frame``).
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas (~0.35 s of CPU to import) only where a DataFrame is made
    import pandas as pd

COLUMNS = ["frame", "time", "face_id", "valence", "arousal", "face", "voice", "speaking",
           "confidence", "box_x", "box_y", "box_w", "box_h"]
TARGET_COLUMNS = ("valence", "arousal")
BOX_COLUMNS = ("box_x", "box_y", "box_w", "box_h")
Columns = dict[str, np.ndarray]  # a table as one array per name of COLUMNS, all of one length
# the colour of each face_id (RGBA) in every figure, video and page: face 0 green, then orange,
# magenta, cyan, yellow, violet
FACE_COLOURS = [(60, 220, 90, 255), (255, 150, 40, 255), (230, 70, 200, 255),
                (60, 200, 255, 255), (255, 240, 80, 255), (170, 120, 255, 255)]


def clip_share(mask: np.ndarray, t: int = 16) -> np.ndarray:
    """(K,) share of the ``t`` steps ending at each step (fewer at the start) where ``mask``."""
    c = np.concatenate([[0], np.cumsum(mask.astype(np.int64))])
    k = np.arange(len(mask))
    lo = np.maximum(k + 1 - t, 0)
    return (c[k + 1] - c[lo]) / (k + 1 - lo)


def as_frame(columns: Columns) -> pd.DataFrame:
    """A table's columns as a pandas DataFrame (columns in the order of ``COLUMNS``)."""
    import pandas as pd

    return pd.DataFrame(columns, columns=COLUMNS)


def merge_faces(parts: list[Columns]) -> Columns:
    """Several faces' tables as one, sorted by frame, then face_id."""
    if len(parts) == 1:
        return parts[0]
    merged = {name: np.concatenate([part[name] for part in parts]) for name in COLUMNS}
    order = np.lexsort((merged["face_id"], merged["frame"]))
    return {name: values[order] for name, values in merged.items()}


def frame_columns(step_values: np.ndarray, targets: list[str], rate: float,
                  face: np.ndarray, voice: np.ndarray,
                  frame_times: np.ndarray | None = None, face_id: int = 0,
                  speaking: np.ndarray | None = None, confidence: np.ndarray | None = None,
                  boxes: np.ndarray | None = None) -> Columns:
    """One face's rows of the output table. ``step_values`` (K, targets); ``face``/``voice``/
    ``speaking`` (K,) bool per step (speaking defaults to voice where the face is, or to voice
    when no face is tracked at all); ``confidence`` (K,) in [0, 1]; ``boxes`` (K, 4) x0, y0,
    x1, y1 in source pixels (NaN where no face). ``frame_times`` are the video's frame times;
    None for an audio-only input (rows = steps)."""
    k = len(step_values)
    step_times = np.arange(k) / rate
    if frame_times is None:
        frame_times = step_times
    nearest = np.clip(np.rint(frame_times * rate).astype(np.int64), 0, k - 1)
    table = {"frame": np.arange(len(frame_times)), "time": np.round(frame_times, 3),
             "face_id": np.full(len(frame_times), face_id)}
    for name in TARGET_COLUMNS:
        if name in targets:
            col = np.interp(frame_times, step_times, step_values[:, targets.index(name)])
            table[name] = np.clip(col, -1.0, 1.0)
        else:
            table[name] = np.full(len(frame_times), np.nan)
    if speaking is None:
        speaking = voice & face if face.any() else voice
    if confidence is None:
        confidence = clip_share(face if face.any() else voice)
    table["face"] = face[nearest].astype(np.int8)
    table["voice"] = voice[nearest].astype(np.int8)
    table["speaking"] = speaking[nearest].astype(np.int8)
    table["confidence"] = np.round(confidence[nearest], 3)
    box = np.full((k, 4), np.nan) if boxes is None else boxes
    xywh = np.stack([box[:, 0], box[:, 1], box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]], 1)
    for j, name in enumerate(BOX_COLUMNS):
        table[name] = np.round(xywh[nearest, j], 1)
    return {name: table[name] for name in COLUMNS}


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read an avemo CSV back (for eval and scripts)."""
    import pandas as pd

    return pd.read_csv(path)


def finite_list(values: np.ndarray, digits: int = 3) -> list[float | None]:
    """Numbers rounded to ``digits``, None (JSON's null) where not finite."""
    return [None if not np.isfinite(v) else round(float(v), digits) for v in values]


def finite_json(value):
    """A JSON-like value (dicts, lists, tuples) with every NaN or infinite number in it
    replaced by None (JSON's null): what is written or printed stays valid JSON."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
