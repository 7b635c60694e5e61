"""Data layouts for ``train``, ``eval`` and ``extract`` (SPEC section 5).

avec2017  ``labels/{Train,Devel,Test}_NN.csv``: ``;``-separated, no header, rows
          ``'Train_01';time_s;arousal;valence;liking`` every 0.1 s (test labels may be absent);
          ``video/{Train,Devel,Test}_NN.avi`` (any video extension) with the audio inside.
generic   videos anywhere under the root, each with a label CSV of the same stem beside it
          (header ``time,valence[,arousal]``); the partition is the first of ``train``,
          ``devel``/``dev``/``valid``/``validation``, ``test`` among the folder names on its path,
          or given by ``--split split.csv`` (columns ``name,partition``; name = the video's path
          relative to the root, without extension, or its stem).

categorical  clips labelled by an emotion class: ``<partition>/<emotion>/<clip>`` (partition
          folder names as for generic; emotion one of categorical.EMOTION_VA's names), each clip
          given the class's constant (valence, arousal) from that table for its whole length.

Labels are resampled onto the analysis steps by linear interpolation; steps outside the
labelled time range get NaN (ignored in training and metrics).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .demux import MEDIA_EXTS, find_media
from .errors import AvemoError

# (valence, arousal) per emotion: the data README's starting table (Russell's circumplex)
EMOTION_VA = {
    "happiness": (0.8, 0.5),
    "neutral": (0.0, 0.0),
    "boredom": (-0.3, -0.6),
    "sadness": (-0.7, -0.4),
    "anger": (-0.6, 0.8),
    "fear": (-0.6, 0.6),
    "disgust": (-0.7, 0.2),
    "surprise": (0.2, 0.8),
    "contempt": (-0.5, 0.2),
    "calm": (0.3, -0.5),
}
LAYOUTS = ("avec2017", "generic", "categorical")
_ALIASES = {"train": "train", "training": "train", "devel": "devel", "dev": "devel",
            "development": "devel", "valid": "devel", "validation": "devel", "val": "devel",
            "test": "test"}


class DatasetError(AvemoError):
    """A malformed or inconsistent corpus; the message names the file."""


@dataclass
class Sequence:
    name: str
    partition: str  # train | devel | test
    media: Path
    label_path: Path | None  # None: unlabelled (e.g. AVEC test)
    labels: pd.DataFrame | None  # columns: time, valence, arousal (those present)

    def step_targets(self, n_steps: int, rate: float, targets: list[str]) -> np.ndarray:
        """(K, targets) labels at the analysis steps; NaN outside the labelled range or for a
        target the file lacks."""
        out = np.full((n_steps, len(targets)), np.nan, np.float32)
        if self.labels is None or self.labels.empty:
            return out
        t = np.arange(n_steps) / rate
        lt = self.labels["time"].to_numpy(np.float64)
        inside = (t >= lt[0] - 1e-9) & (t <= lt[-1] + 1e-9)
        for j, name in enumerate(targets):
            if name in self.labels:
                out[inside, j] = np.interp(t[inside], lt, self.labels[name].to_numpy(np.float64))
        return out


def read_avec_labels(path: Path) -> pd.DataFrame:
    """An AVEC 2017 label file: ``name;time;arousal;valence;liking``, no header."""
    try:
        raw = pd.read_csv(path, sep=";", header=None)
    except Exception as exc:
        raise DatasetError(f"{path}: unreadable label file ({exc})") from None
    if raw.shape[1] < 4:
        raise DatasetError(f"{path}: expected ';'-separated rows name;time;arousal;valence"
                           f"[;liking], found {raw.shape[1]} column(s)")
    try:
        table = pd.DataFrame({"time": pd.to_numeric(raw[1]), "arousal": pd.to_numeric(raw[2]),
                              "valence": pd.to_numeric(raw[3])})
    except (ValueError, TypeError):
        raise DatasetError(f"{path}: non-numeric time or rating values (AVEC label rows are "
                           f"name;time;arousal;valence;liking, no header)") from None
    return _checked(table, path)


def read_generic_labels(path: Path, sep: str = ",") -> pd.DataFrame:
    """A generic label file: header ``time,valence[,arousal]`` (or separated by ``sep``)."""
    try:
        raw = pd.read_csv(path, sep=sep)
    except Exception as exc:
        raise DatasetError(f"{path}: unreadable label file ({exc})") from None
    cols = {c.strip().lower(): c for c in raw.columns}
    if "time" not in cols or not ({"valence", "arousal"} & set(cols)):
        raise DatasetError(f"{path}: expected a header with time and valence[,arousal], "
                           f"found {', '.join(map(str, raw.columns))}")
    table = pd.DataFrame({k: raw[cols[k]] for k in ("time", "valence", "arousal") if k in cols})
    try:
        table = table.apply(pd.to_numeric)
    except (ValueError, TypeError):
        raise DatasetError(f"{path}: non-numeric values in the label columns") from None
    return _checked(table, path)


def _checked(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    if table.empty:
        raise DatasetError(f"{path}: no label rows")
    if table["time"].isna().any() or not np.all(np.diff(table["time"].to_numpy()) > 0):
        raise DatasetError(f"{path}: times must be present and strictly increasing")
    return table.reset_index(drop=True)


def read_labels(path: Path) -> pd.DataFrame:
    """Either format, recognised by its first line: a header naming ``time`` is a generic file
    (separated by commas, semicolons or tabs, whichever the header uses most), else AVEC's."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    if "time" in first.lower():
        sep = max((",", ";", "\t"), key=first.count)
        return read_generic_labels(path, sep)
    return read_avec_labels(path)


def _folder_partition(parts: tuple[str, ...]) -> str | None:
    """The partition named by the first train/devel/test-like folder of a relative path."""
    return next((_ALIASES[d.lower()] for d in parts[:-1] if d.lower() in _ALIASES), None)


def _media_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.suffix.lower() in MEDIA_EXTS and not p.name.startswith(".")}


def load_avec2017(root: Path) -> list[Sequence]:
    labels_dir, video_dir = root / "labels", root / "video"
    if not video_dir.is_dir():
        raise DatasetError(f"{root}: not an avec2017 layout (no video/ folder)")
    videos = _media_by_stem(video_dir)
    labels = {p.stem: p for p in sorted(labels_dir.glob("*.csv"))} if labels_dir.is_dir() else {}
    seqs = []
    for stem, media in videos.items():
        part = _ALIASES.get(stem.split("_")[0].lower())
        if part is None:
            warnings.warn(f"{media}: name does not start with Train_, Devel_ or Test_; skipped")
            continue
        lab = labels.get(stem)
        if lab is None and part != "test":
            warnings.warn(f"{media}: no labels/{stem}.csv; skipped")
            continue
        seqs.append(Sequence(stem, part, media, lab, read_avec_labels(lab) if lab else None))
    for stem, lab in labels.items():
        if stem not in videos:
            warnings.warn(f"{lab}: labels without a video in {video_dir}; skipped")
    return seqs


def _split_table(path: Path) -> dict[str, str]:
    try:
        raw = pd.read_csv(path)
        cols = {c.strip().lower(): c for c in raw.columns}
        names, parts = raw[cols["name"]].astype(str), raw[cols["partition"]].astype(str)
    except Exception:
        raise DatasetError(f"{path}: a split CSV needs columns name,partition") from None
    out = {}
    for n, p in zip(names, parts):
        if p.strip().lower() not in _ALIASES:
            raise DatasetError(f"{path}: unknown partition {p!r} for {n} "
                               f"(use train, devel or test)")
        out[n.strip()] = _ALIASES[p.strip().lower()]
    return out


def load_generic(root: Path, split: Path | None = None) -> list[Sequence]:
    table = _split_table(split) if split else None
    seqs = []
    media = sorted(find_media(root))
    stems_with_media = set()
    for m in media:
        rel = m.relative_to(root).with_suffix("").as_posix()
        stems_with_media.add(m.with_suffix(""))
        lab = m.with_suffix(".csv")
        if table is not None:
            part = table.get(rel, table.get(m.stem))
        else:
            part = _folder_partition(m.relative_to(root).parts)
        if part is None:
            warnings.warn(f"{m}: no partition (not under train/devel/test and not in the split "
                          f"CSV); skipped")
            continue
        if not lab.exists():
            if part != "test":
                warnings.warn(f"{m}: no label file {lab.name} beside it; skipped")
                continue
            seqs.append(Sequence(rel, part, m, None, None))
            continue
        seqs.append(Sequence(rel, part, m, lab, read_generic_labels(lab)))
    for lab in sorted(root.rglob("*.csv")):
        if lab.name.endswith(".avemo.csv") or (split and lab.resolve() == split.resolve()):
            continue
        if lab.with_suffix("") not in stems_with_media:
            warnings.warn(f"{lab}: labels without a video beside them; skipped")
    return seqs


def load_categorical(root: Path) -> list[Sequence]:

    seqs = []
    for m in sorted(find_media(root)):
        parts = m.relative_to(root).parts
        part = _folder_partition(parts)
        emotion = parts[-2].lower() if len(parts) >= 2 else ""
        if part is None or emotion not in EMOTION_VA:
            warnings.warn(f"{m}: not under <partition>/<emotion>/ (emotions: "
                          f"{', '.join(EMOTION_VA)}); skipped")
            continue
        v, a = EMOTION_VA[emotion]
        labels = pd.DataFrame({"time": [0.0, 1e6], "valence": [v, v], "arousal": [a, a]})
        seqs.append(Sequence(m.relative_to(root).with_suffix("").as_posix(), part, m, None,
                             labels))
    return seqs


LABEL_RANGE = (-1.0, 1.0)  # valence and arousal, as avemo writes them


def outside_range(values: np.ndarray) -> float | None:
    """The first finite value outside ``LABEL_RANGE`` (a rating on another scale: 0-100, 1-9),
    or None."""
    lo, hi = LABEL_RANGE
    v = np.asarray(values, np.float64)
    bad = v[np.isfinite(v) & ((v < lo - 1e-6) | (v > hi + 1e-6))]
    return float(bad[0]) if len(bad) else None


def load_dataset(root: str | Path, layout: str = "avec2017", split: str | Path | None = None
                 ) -> list[Sequence]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such data folder")
    if layout == "avec2017":
        seqs = load_avec2017(root)
    elif layout == "generic":
        seqs = load_generic(root, Path(split) if split else None)
    elif layout == "categorical":
        seqs = load_categorical(root)
    else:
        raise DatasetError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    if not seqs:
        raise DatasetError(f"{root}: no usable sequences in the {layout} layout")
    return seqs
