"""Metrics of the AVEC protocol: CCC (the challenge's), Pearson CC and RMSE.

CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2), with population (1/N) moments,
as in the AVEC baseline scripts. Pairs where either value is NaN are dropped first. Undefined
values are NaN: fewer than two pairs, or a zero denominator (both series constant and equal for CCC;
either series constant for CC).

Two aggregations over the sequences of a partition: ``concat`` (AVEC's: one value over all
sequences concatenated) and ``mean`` (the mean of per-sequence values).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

METRICS = ("ccc", "cc", "rmse")


def _pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"length mismatch: {x.size} predictions, {y.size} gold values")
    ok = ~(np.isnan(x) | np.isnan(y))
    return x[ok], y[ok]


def ccc(pred, gold) -> float:
    x, y = _pairs(pred, gold)
    if x.size < 2:  # (one pair has no variance to agree on)
        return float("nan")
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    denom = x.var() + y.var() + (mx - my) ** 2
    return float(2 * cov / denom) if denom > 0 else float("nan")


def cc(pred, gold) -> float:
    x, y = _pairs(pred, gold)
    if x.size == 0:
        return float("nan")
    if np.ptp(x) == 0 or np.ptp(y) == 0:  # constant (its std is rounding noise, not 0)
        return float("nan")
    sx, sy = x.std(), y.std()
    return float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy))


def rmse(pred, gold) -> float:
    x, y = _pairs(pred, gold)
    return float(np.sqrt(((x - y) ** 2).mean())) if x.size else float("nan")


FUNCTIONS = {"ccc": ccc, "cc": cc, "rmse": rmse}


def aggregate(metric: str, preds: Sequence[np.ndarray], golds: Sequence[np.ndarray],
              how: str = "concat") -> float:
    """``metric`` over sequences: on their concatenation, or the mean of per-sequence values."""
    fn = FUNCTIONS[metric]
    if how == "concat":
        if not preds:
            return float("nan")
        return fn(np.concatenate([np.ravel(p) for p in preds]),
                  np.concatenate([np.ravel(g) for g in golds]))
    if how == "mean":
        vals = [fn(p, g) for p, g in zip(preds, golds)]
        vals = [v for v in vals if not np.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")
    raise ValueError(f"aggregate must be 'concat' or 'mean', not {how!r}")


def table(preds: dict[str, dict[str, np.ndarray]], golds: dict[str, dict[str, np.ndarray]],
          targets: Iterable[str], metrics: Iterable[str] = METRICS, how: str = "concat"
          ) -> dict[str, dict[str, float]]:
    """``{target: {metric: value}}`` over the sequences present in both ``preds`` and ``golds``
    (each ``{sequence: {target: values}}``, aligned element by element)."""
    names = sorted(set(preds) & set(golds))
    out: dict[str, dict[str, float]] = {}
    for t in targets:
        p = [preds[n][t] for n in names if t in preds[n] and t in golds[n]]
        g = [golds[n][t] for n in names if t in preds[n] and t in golds[n]]
        out[t] = {m: aggregate(m, p, g, how) for m in metrics}
    return out
