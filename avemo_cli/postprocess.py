"""Stage 5 — post-processing (Ringeval's AVEC chain), applied from checkpoint parameters.

Per target, in this order: (1) median filter over ``median_window`` steps, (2) centering by
adding ``bias``, (3) scaling by multiplying with ``scale``, then (4) shifting predictions
forward by ``shift`` steps (when the model was trained against gold delayed by that much). A
step with no parameter (or an identity value) is skipped. Parameters are fitted on development
data at training time; annotate only applies them.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def median_filter(x: np.ndarray, window: int) -> np.ndarray:
    """Centred running median with an odd ``window`` (edges padded by repetition)."""
    window = int(window)
    if window <= 1 or len(x) == 0:
        return x.copy()
    if window % 2 == 0:
        window += 1
    half = window // 2
    padded = np.pad(x, half, mode="edge")
    return np.median(sliding_window_view(padded, window), axis=-1).astype(x.dtype)


def shift_forward(x: np.ndarray, steps: int) -> np.ndarray:
    """``out[k] = x[k - steps]``; the first ``steps`` values repeat ``x[0]``."""
    steps = int(steps)
    if steps <= 0 or len(x) == 0:
        return x.copy()
    return np.concatenate([np.repeat(x[:1], min(steps, len(x))), x[:-steps]])[: len(x)]


def apply_chain(x: np.ndarray, params: dict | None) -> np.ndarray:
    """Apply one target's post-processing parameters to its step sequence."""
    params = params or {}
    y = median_filter(np.asarray(x, np.float32), params.get("median_window", 0))
    y = y + np.float32(params.get("bias", 0.0))
    y = y * np.float32(params.get("scale", 1.0))
    return shift_forward(y, params.get("shift", 0))


def apply_postprocess(values: np.ndarray, targets: list[str], params: dict) -> np.ndarray:
    """values (K, targets) -> post-processed copy, using ``params[target]`` for each column."""
    out = np.empty_like(values)
    for j, name in enumerate(targets):
        out[:, j] = apply_chain(values[:, j], params.get(name))
    return out
