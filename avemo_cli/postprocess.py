"""Stage 5b — post-processing (Ringeval's AVEC chain), applied from checkpoint parameters.

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


def check_postprocess(params: object) -> str:
    """Why a checkpoint's post-processing parameters cannot be applied ("" when they can): an
    object of targets, each an object whose ``median_window`` and ``shift`` are whole numbers
    of steps from 0 to 10000 and ``bias`` and ``scale`` finite numbers."""
    if not isinstance(params, dict):
        return f"not an object of targets: {params!r}"[:120]
    for target, chain in params.items():
        if chain is None:
            continue
        if not isinstance(chain, dict):
            return f"{target}: not an object: {chain!r}"[:120]
        for key in ("median_window", "shift"):
            v = chain.get(key, 0)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 10000:
                return f"{target} {key} must be a whole number of steps from 0 to 10000, " \
                       f"not {v!r}"[:160]
        for key in ("bias", "scale"):
            v = chain.get(key, 0.0)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v):
                return f"{target} {key} must be a finite number, not {v!r}"[:160]
    return ""


def apply_postprocess(values: np.ndarray, targets: list[str], params: dict) -> np.ndarray:
    """values (K, targets) -> post-processed copy, using ``params[target]`` for each column."""
    out = np.empty_like(values)
    for j, name in enumerate(targets):
        out[:, j] = apply_chain(values[:, j], params.get(name))
    return out


def fit_chain(preds: list[np.ndarray], golds: list[np.ndarray], rate: float = 4.0,
              max_window_s: float = 8.0) -> dict:
    """Fit one target's chain on development sequences (Ringeval's procedure): each step is
    kept only if it raises the development CCC (sequences concatenated). Gold and predictions
    may hold NaN (not scored).

    Candidates are scored as the outputs hold them: clipped to [-1, 1] (``table.py``), so the
    CCC reported is the one ``avemo eval`` gives on the written files; a step that would make
    some sequence constant (a scaling that saturates it) is never kept.

    Returns the parameters plus ``dev_ccc_raw`` and ``dev_ccc`` (after the kept steps)."""
    from .metrics import ccc

    moving = [bool(np.nanmax(p) > np.nanmin(p)) if np.isfinite(p).any() else False
              for p in preds]

    def score(seqs):
        out = [np.clip(p, -1.0, 1.0) for p in seqs]
        if any(m and not np.nanmax(o) > np.nanmin(o) for m, o in zip(moving, out)):
            return -np.inf  # it flattens a sequence that moved: never chosen
        return ccc(np.concatenate(out), np.concatenate(golds))

    preds = [np.asarray(p, np.float32) for p in preds]
    best = raw = score(preds)
    params: dict = {}
    window_best = None
    for w in range(3, int(max_window_s * rate) + 2, 2):
        s = score([median_filter(p, w) for p in preds])
        if s > (best if window_best is None else window_best[1]) + 1e-9:
            window_best = (w, s)
    if window_best and window_best[1] > best:
        params["median_window"] = window_best[0]
        best = window_best[1]
        preds = [median_filter(p, window_best[0]) for p in preds]
    cat_p, cat_g = np.concatenate(preds), np.concatenate(golds)
    ok = ~np.isnan(cat_g) & ~np.isnan(cat_p)
    bias = float(np.mean(cat_g[ok]) - np.mean(cat_p[ok]))
    s = score([p + np.float32(bias) for p in preds])
    if s > best + 1e-9:
        params["bias"], best = bias, s
        preds = [p + np.float32(bias) for p in preds]
        cat_p = np.concatenate(preds)
    sp = float(np.std(cat_p[ok]))
    if sp > 0:
        scale = float(np.std(cat_g[ok]) / sp)
        s = score([p * np.float32(scale) for p in preds])
        if s > best + 1e-9:
            params["scale"], best = scale, s
    params["dev_ccc_raw"], params["dev_ccc"] = float(raw), float(best)
    return params
