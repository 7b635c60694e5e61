"""Stage 6 — write: step predictions become one CSV row per video frame, written atomically.

Columns (stable; long format, one row per frame per face): frame, time, face_id, valence,
arousal, face, voice, speaking, confidence, box_x, box_y, box_w, box_h. Values are interpolated
linearly from the analysis steps to each frame's time; the flags, confidence and box are those
of the step nearest the frame. Audio-only inputs get one row per analysis step. A target the
model does not predict is an empty column. Every output appears under its final name only once
it is complete (temporary file + rename), so an interrupted run never leaves a truncated file.
The formats (csv, parquet, json, eaf) are one writer each in ``WRITERS``.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:  # pandas (~0.35 s of CPU to import) only where a DataFrame is made
    import pandas as pd

COLUMNS = ["frame", "time", "face_id", "valence", "arousal", "face", "voice", "speaking",
           "confidence", "box_x", "box_y", "box_w", "box_h"]
TARGET_COLUMNS = ("valence", "arousal")
BOX_COLUMNS = ("box_x", "box_y", "box_w", "box_h")
SUFFIX = ".avemo.csv"
Columns = dict[str, np.ndarray]  # a table as one array per name of COLUMNS, all of one length:
# what annotating makes and the writers write (a DataFrame only on request: ``as_frame``)


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


def _cells(name: str, values: np.ndarray) -> list[str]:
    """One column as the CSV's text: time to the millisecond, targets to 4 decimals, other
    numbers as Python writes them (shortest exact form), a missing value as nothing."""
    if name == "time":
        return [f"{v:.3f}" for v in values]
    if name in TARGET_COLUMNS:
        return ["" if v != v else f"{v:.4f}" for v in values.tolist()]
    text = values.astype(str)
    if values.dtype.kind == "f":
        text[np.isnan(values)] = ""
    return text.tolist()


def write_csv(table: Columns | pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``table`` (columns, or a DataFrame with the CSV's columns) to ``path``
    atomically (a temporary file in the same folder, renamed)."""
    names = list(table.keys()) if isinstance(table, dict) else list(table.columns)
    cells = [_cells(name, np.asarray(table[name])) for name in names]
    lines = [",".join(names)] + [",".join(row) for row in zip(*cells)]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            f.write(os.linesep.join(lines) + os.linesep)
    return Path(path)


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read an avemo CSV back (for eval and scripts)."""
    import pandas as pd

    return pd.read_csv(path)


# Output formats: one writer per format, chosen by name (``--format csv,parquet,json,eaf|all``).
# Each takes an annotation (``pipeline.Annotation``) and a path, and writes atomically.

def _write_csv(annotation, path: Path) -> None:
    write_csv(annotation.columns, path)


def _write_parquet(annotation, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({name: pa.array(values, from_pandas=True)  # NaN: null, as pandas wrote
                      for name, values in annotation.columns.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _metadata(annotation) -> dict:
    from . import __version__

    info = annotation.info
    return {"avemo": __version__, "media": str(annotation.path), "model": annotation.model,
            "source": annotation.source, "targets": list(annotation.targets),
            "rate": annotation.rate, "fps": info.fps if info.has_video else None,
            "duration": info.duration,
            "faces": sorted(int(i) for i in set(annotation.columns["face_id"].tolist())),
            "columns": list(annotation.columns)}


def _write_json(annotation, path: Path) -> None:
    import json

    columns = {name: [None if v != v else v for v in values.tolist()]  # NaN: null
               for name, values in annotation.columns.items()}
    rows = [dict(zip(columns, row)) for row in zip(*columns.values())]
    doc = {**_metadata(annotation), "rows": rows}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, default=_plain) + "\n")


def _plain(v):
    return v.item() if isinstance(v, np.generic) else str(v)


def _write_eaf(annotation, path: Path) -> None:
    """An ELAN document: per face and target a tier of the values at the analysis steps (each
    annotation spans its step's 1/rate seconds; steps with no evidence for the face are left
    out), linked to the media file so that the tiers open beside the video."""
    from pympi import Elan

    from . import __version__

    eaf = Elan.Eaf(author=f"avemo {__version__}")
    eaf.remove_tier("default")
    media = Path(annotation.path).resolve()
    mime = "audio/x-wav" if not annotation.info.has_video else "video/mp4"
    eaf.add_linked_file(media.as_uri(), relpath=os.path.relpath(media, path.resolve().parent),
                        mimetype=mime)
    step_ms = 1000.0 / annotation.rate
    for person in annotation.people:
        evidence = person.confidence > 0
        for j, target in enumerate(annotation.targets):
            tier = f"face {person.face_id} {target}"
            eaf.add_tier(tier)
            for k in np.flatnonzero(evidence):
                v = float(person.step_values[k, j])
                if np.isfinite(v):
                    eaf.add_annotation(tier, int(round(k * step_ms)),
                                       int(round((k + 1) * step_ms)), f"{v:.3f}")
    with atomic_path(path, ".eaf") as tmp:
        Elan.to_eaf(str(tmp), eaf, pretty=True)


WRITERS = {"csv": _write_csv, "parquet": _write_parquet, "json": _write_json, "eaf": _write_eaf}


def parse_formats(text: str) -> tuple[str, ...]:
    """``csv,parquet`` -> ("csv", "parquet"); ``all`` -> every format; order kept, no repeats."""
    names: list[str] = []
    for name in (n.strip().lower() for n in text.split(",")):
        for one in (WRITERS if name == "all" else [name]):
            if one not in WRITERS:
                raise ValueError(f"unknown output format {one!r} (choose from "
                                 f"{', '.join(WRITERS)} or all)")
            if one not in names:
                names.append(one)
    if not names:
        raise ValueError("no output format given")
    return tuple(names)


def output_path(csv_path: Path, fmt: str) -> Path:
    """``<stem>.avemo.<fmt>`` beside the planned ``<stem>.avemo.csv``."""
    return csv_path.with_name(csv_path.name[: -len(".csv")] + "." + fmt)
