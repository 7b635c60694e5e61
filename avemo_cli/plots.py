"""Figures: a valence/arousal track per annotated file, and the evaluation figures (predicted
against gold over time per sequence, like the paper's Figure 4, and CCC per sequence).

matplotlib with the headless Agg backend; nothing needs a display.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .table import FACE_COLOURS  # (a colour per face_id, in every output)

COLOURS = {"valence": "#1f77b4", "arousal": "#d62728"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _spans(mask: np.ndarray, times: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) times of the runs where ``mask`` is True."""
    out, start = [], None
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.25
    for i, m in enumerate(mask):
        if m and start is None:
            start = times[i]
        if not m and start is not None:
            out.append((start, times[i]))
            start = None
    if start is not None:
        out.append((start, times[-1] + step))
    return out


def plot_track(table: pd.DataFrame, path: str | Path, title: str, video: bool = True) -> Path:
    """Valence (and arousal) over time in [-1, 1], shading where no face or no voice was
    available; with several faces (``face_id``) a line per face in the overlay's colours.
    ``video``: whether the input had frames (audio-only inputs have no face shading)."""
    plt = _pyplot()
    ids = sorted(table["face_id"].unique()) if "face_id" in table else [0]
    per_face = {i: table[table["face_id"] == i] if "face_id" in table else table for i in ids}
    first = per_face[ids[0]]
    t = first["time"].to_numpy(float)
    fig, ax = plt.subplots(figsize=(10, 3.2), dpi=100)
    if video and len(ids) == 1:
        for a, b in _spans(first["face"].to_numpy() == 0, t):
            ax.axvspan(a, b, color="0.85", lw=0, label="no face")
    for a, b in _spans(first["voice"].to_numpy() == 0, t):
        ax.axvspan(a, b, facecolor="none", edgecolor="0.55", hatch="//", lw=0, label="no voice")
    for name in ("valence", "arousal"):
        for i, rows in per_face.items():
            if name not in rows or not rows[name].notna().any():
                continue
            if len(ids) == 1:
                ax.plot(t, rows[name], color=COLOURS[name], lw=1.6, label=name)
            else:  # a colour per face (the overlay's), arousal dashed
                r, g, b, _ = FACE_COLOURS[int(i) % len(FACE_COLOURS)]
                ax.plot(rows["time"].to_numpy(float), rows[name], color=(r / 255, g / 255,
                        b / 255), lw=1.4, ls="-" if name == "valence" else "--",
                        label=f"face {i} {name}")
    ax.axhline(0, color="0.4", lw=0.6)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlim(t[0] if len(t) else 0, t[-1] if len(t) > 1 else 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("rating [-1, 1]")
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))  # one legend entry per kind of span
    ax.legend(seen.values(), seen.keys(), loc="upper right", fontsize=8, ncol=4)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    _save(fig, path)
    plt.close(fig)
    return path


def plot_sequence(pred: pd.DataFrame, gold: pd.DataFrame, scores: dict, path: str | Path,
                  title: str) -> Path:
    """Predicted against gold over time for each target present (one panel each)."""
    plt = _pyplot()
    targets = [t for t in ("valence", "arousal") if t in gold and t in pred
               and pred[t].notna().any()]
    fig, axes = plt.subplots(len(targets), 1, figsize=(10, 2.6 * len(targets)), dpi=100,
                             squeeze=False, sharex=True)
    for ax, t in zip(axes[:, 0], targets):
        ax.plot(gold["time"], gold[t], color="0.2", lw=1.4, label="gold")
        ax.plot(pred["time"], pred[t], color=COLOURS[t], lw=1.4, label="predicted")
        ccc = scores.get(t, {}).get("ccc", float("nan"))
        ax.set_ylabel(t)
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(f"{t}: CCC {ccc:.3f}", fontsize=9, loc="left")
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, Path(path))
    plt.close(fig)
    return Path(path)


def plot_ccc_summary(per_sequence: dict[str, dict[str, dict[str, float]]], path: str | Path,
                     title: str) -> Path:
    """CCC of every sequence, one bar per target."""
    plt = _pyplot()
    names = sorted(per_sequence)
    targets = [t for t in ("valence", "arousal") if any(t in per_sequence[n] for n in names)]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) + 2), 3.6), dpi=100)
    width = 0.8 / max(len(targets), 1)
    x = np.arange(len(names))
    for i, t in enumerate(targets):
        vals = [per_sequence[n].get(t, {}).get("ccc", np.nan) for n in names]
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, color=COLOURS[t], label=t)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("CCC")
    ax.set_ylim(-1, 1)
    ax.axhline(0, color="0.4", lw=0.6)
    ax.legend(fontsize=8)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    _save(fig, Path(path))
    plt.close(fig)
    return Path(path)


def _save(fig, path: Path) -> None:
    """Atomic PNG write (temporary name, then rename)."""
    from .files import atomic_path

    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp)
