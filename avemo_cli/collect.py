"""A run as one dataset: every annotated input of a folder tree in one Parquet dataset
(``avemo collect DIR``), which pandas, polars and DuckDB read directly.

The inputs are those of the manifests found in the tree (every shard of a job array: each
folder's manifests are merged by ``manifests.summarise``, the latest record of an input
winning), their tables read back from the outputs the records name. The dataset
(``DIR/avemo-dataset`` unless told otherwise):

    inputs.parquet             one row per input: its record (status, duration, coverage,
                               means, model, avemo version, decoder) and what was collected
    frames/<key>.parquet       an input's per-frame rows (``table.COLUMNS``), with ``input``
    segments/<key>.parquet     an input's utterances (``utterances.COLUMNS``), with ``input``
    collected.json             what each part was made from, a JSON line per input (so a
                               re-run redoes only what changed)

``<key>`` is a hash of the input's path. Inputs are read one at a time and every row is written
as it is made (memory does not grow with their number but for each one's record and key: 2,000
inputs peaked 5.3% above 20, ``benchmarks/bench_collect.py``). A re-run brings the dataset up
to date: parts of inputs annotated since are added, those whose outputs changed are rewritten,
those of inputs no longer there (or failed since) removed. An output that is not avemo's (other
columns), is half-written (rows that do not parse, fewer frames than its record says) or is
gone is reported and left out, never merged.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable

import numpy as np

from . import outputs, table, utterances
from ._memory import trim_heap
from .errors import AvemoError
from .files import atomic_path
from .manifests import DONE, MANIFEST_GLOB, Record, summarise

DATASET = "avemo-dataset"
STATE = "collected.json"
FRAMES, SEGMENTS = "frames", "segments"
WHOLE = {FRAMES: {"frame", "face_id", "face", "voice", "speaking"},  # int64 columns per part
         SEGMENTS: {"utterance", "face_id", "steps"}}
NAMES = {FRAMES: table.COLUMNS, SEGMENTS: utterances.COLUMNS}


@dataclass
class CollectReport:
    """What ``collect`` did."""

    dataset: Path
    inputs: int = 0  # rows of inputs.parquet
    collected: int = 0  # inputs whose frames are in the dataset
    updated: int = 0  # of those, parts written by this run (the rest were up to date)
    removed: int = 0  # parts of inputs no longer annotated, removed
    problems: list[str] = field(default_factory=list)  # outputs reported and left out


def _schema(part: str):
    """A part's columns: ``input``, then the table's (whole numbers as int64, a face_id that
    may be missing too; the rest float64)."""
    import pyarrow as pa

    fields = [pa.field("input", pa.string())]
    for name in NAMES[part]:
        if name in WHOLE[part]:
            fields.append(pa.field(name, pa.int64()))
        else:
            fields.append(pa.field(name, pa.float64()))
    return pa.schema(fields)


def _key(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def _fingerprint(paths: list[Path], record: Record) -> str:
    """What an input's parts are made from: its record and its outputs' sizes and times."""
    h = hashlib.sha256(record.line().encode("utf-8", "surrogateescape"))
    for p in paths:
        st = p.stat()
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


class NotOurs(Exception):
    """An output that cannot be collected (not avemo's, half-written, gone)."""


def _resolve(path: str, manifest_folder: Path) -> Path:
    """An output a record names: as written (absolute, or relative to where the run was
    started), else beside the manifest by its name (a folder moved since)."""
    p = Path(path)
    if p.exists():
        return p
    if not p.is_absolute() and (manifest_folder / p).exists():
        return manifest_folder / p
    return p


def _columns_of(path: Path, part: str) -> dict[str, np.ndarray]:
    """An avemo table (CSV or Parquet) of ``part`` (FRAMES or SEGMENTS) read back as columns,
    checked to be one of ours."""
    import pandas as pd

    expected = NAMES[part]
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=float)
    except FileNotFoundError:
        raise NotOurs(f"{path}: gone (named by its manifest record)") from None
    except Exception as exc:  # (a half-written file, text that is not numbers)
        line = str(exc).strip().splitlines()
        raise NotOurs(f"{path}: cannot be read as an avemo table "
                      f"({line[0] if line else type(exc).__name__})") from None
    if list(frame.columns) != expected:
        names = ", ".join(map(str, frame.columns))[:80]
        raise NotOurs(f"{path}: not an avemo table (its columns {names} are not avemo's)")
    out: dict[str, np.ndarray] = {}
    for name in expected:
        values = frame[name].to_numpy(np.float64)
        if name in WHOLE[part] and name != "face_id":
            if not np.isfinite(values).all():
                raise NotOurs(f"{path}: column {name} has empty or non-numeric cells "
                              f"(half-written?)")
            out[name] = values.astype(np.int64)
        else:
            out[name] = values
    return out


def _write_part(dataset: Path, part: str, key: str, source: str,
                columns: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(next(iter(columns.values()))) if columns else 0
    arrays = [pa.array([source] * n, pa.string())]
    for name in NAMES[part]:
        v = columns[name]
        if name == "face_id":  # (an utterance no face speaks: null)
            arrays.append(pa.array(np.nan_to_num(v, nan=-1).astype(np.int64),
                                   mask=~np.isfinite(v)))
        else:
            arrays.append(pa.array(v, from_pandas=True))
    t = pa.Table.from_arrays(arrays, schema=_schema(part))
    path = dataset / part / f"{key}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(t, tmp)


def _segments_of(paths: dict[str, Path]) -> dict[str, np.ndarray] | None:
    """An input's utterances: its segments CSV, else its JSON's list, else None (not
    written)."""
    if "segments" in paths:
        return _columns_of(paths["segments"], SEGMENTS)
    if "json" in paths:
        try:
            doc = json.loads(paths["json"].read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NotOurs(f"{paths['json']}: cannot be read as avemo's JSON ({exc})") from None
        rows = doc.get("segments") if isinstance(doc, dict) else None
        if rows is None:
            return None  # (written by an avemo before utterances)
        return {name: np.array([np.nan if r.get(name) is None else r[name] for r in rows],
                               np.float64) for name in utterances.COLUMNS}
    return None


COLLECTED = ("segments", "csv", "parquet", "json")  # the outputs collect reads, by format


def _by_format(written: list[str], folder: Path) -> dict[str, Path]:
    """A record's outputs by format, known by their names' endings (``outputs.pattern``:
    ``*.avemo.segments.csv`` is the segments', ``*.avemo.csv`` the frames')."""
    out: dict[str, Path] = {}
    for text in written:
        p = _resolve(text, folder)
        fmt = next((f for f in COLLECTED if fnmatch(p.name, outputs.pattern(f))), None)
        if fmt is not None:
            out[fmt] = p
    return out


def _records(folder: Path, problems: list[str]) -> dict[str, tuple[Record, Path]]:
    """Every input's latest record in the manifests of ``folder``'s tree, with the folder of
    its manifest. In one folder the latest line wins (``summarise``); an input recorded in two
    folders (annotated into two -o folders) is the one whose outputs were written, then the
    one recorded last (``Record.finished``)."""
    found: dict[str, tuple[Record, Path]] = {}
    folders = sorted({p.parent for p in folder.rglob(MANIFEST_GLOB)})
    if not folders:
        raise AvemoError(f"{folder}: no avemo manifests (avemo-manifest*.jsonl) in this folder "
                         f"or below it")
    for where in folders:
        summary = summarise(where)
        problems.extend(summary.warnings)
        for source, record in summary.records.items():
            if source in found:
                earlier = found[source][0]
                rank = (earlier.status in DONE, earlier.finished)
                if rank > (record.status in DONE, record.finished):
                    continue
            found[source] = (record, where)
    return found


ROWS_PER_WRITE = 256  # rows of inputs.parquet held before they are written


def collect(folder: str | os.PathLike, out: str | os.PathLike | None = None,
            progress: Callable[[int, int], None] | None = None) -> CollectReport:
    """Collect every annotated input under ``folder`` into the dataset ``out`` (default
    ``folder/avemo-dataset``), bringing it up to date; ``progress(done, total)`` as inputs
    are read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    if not folder.is_dir():
        raise AvemoError(f"{folder}: no such folder")
    dataset = Path(out) if out is not None else folder / DATASET
    report = CollectReport(dataset)
    records = _records(folder, report.problems)
    state_path = dataset / STATE
    before = _read_state(state_path)
    kept: set[str] = set()
    schema = _input_schema()
    with atomic_path(dataset / "inputs.parquet") as inputs_tmp, \
            atomic_path(state_path) as state_tmp, open(state_tmp, "w", encoding="utf-8") as log:
        writer = pq.ParquetWriter(inputs_tmp, schema)
        rows: list[dict] = []
        for done, source in enumerate(sorted(records), 1):
            record, where = records[source]
            row, entry = _input(dataset, source, record, where, before, report)
            if entry is not None:
                kept.add(entry["key"])
                log.write(json.dumps(entry) + "\n")
            rows.append(row)
            if len(rows) >= ROWS_PER_WRITE:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows = []
            trim_heap()  # (each input's parsing buffers, back to the system: a flat peak)
            if progress:
                progress(done, len(records))
        writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        writer.close()
        report.inputs = len(records)
    for key in set(before) - kept:  # inputs gone, failed since, or unreadable now
        for part in (FRAMES, SEGMENTS):
            f = dataset / part / f"{key}.parquet"
            if f.exists():
                f.unlink()
                report.removed += part == FRAMES
    return report


def _read_state(path: Path) -> dict[str, dict]:
    """The parts a previous run made (``collected.json``, a JSON line per input), by key; a
    damaged line is forgotten (its input is collected again)."""
    state: dict[str, dict] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return state
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("key"), str):
            state[entry["key"]] = entry
    return state


def _input(dataset: Path, source: str, record: Record, where: Path, before: dict[str, dict],
           report: CollectReport) -> tuple[dict, dict | None]:
    """One input: its row of inputs.parquet, and its state entry when its parts are in the
    dataset (written now, or up to date from before)."""
    key = _key(source)
    row = _input_row(record, where)
    paths = _by_format(record.outputs, where)
    frames_from = paths.get("parquet") or paths.get("csv")
    if record.status not in DONE + ("skipped",) or frames_from is None:
        return row, None
    parts = [p for p in (frames_from, paths.get("segments") or paths.get("json")) if p]
    try:
        stamp = _fingerprint(parts, record)
    except OSError:
        stamp = ""
    entry = before.get(key, {})
    fresh = bool(stamp) and entry.get("fingerprint") == stamp and \
        (dataset / FRAMES / f"{key}.parquet").exists()
    if not fresh:
        try:
            said = _collect_one(dataset, key, source, record, paths, frames_from)
        except NotOurs as exc:
            report.problems.append(f"{exc}; {source} left out of the dataset")
            row["problem"] = str(exc)
            return row, None
        report.updated += 1
        entry = {"key": key, "input": source, "fingerprint": stamp, "utterances": said}
    row.update(collected=True, utterances=entry.get("utterances"), frames_file=str(frames_from))
    report.collected += 1
    return row, entry


def _collect_one(dataset: Path, key: str, source: str, record: Record,
                 paths: dict[str, Path], frames_from: Path) -> int | None:
    """One input's parts: its frames (checked against its record) and its utterances; the
    number of utterances (None: its outputs hold none)."""
    frames = _columns_of(frames_from, FRAMES)
    n_frames = int(frames["frame"].max()) + 1 if len(frames["frame"]) else 0
    if record.frames and n_frames != record.frames:
        raise NotOurs(f"{frames_from}: holds {n_frames} frames but its manifest record says "
                      f"{record.frames} (half-written, or changed since)")
    segments = _segments_of(paths)
    _write_part(dataset, FRAMES, key, source, frames)
    seg_path = dataset / SEGMENTS / f"{key}.parquet"
    if segments is not None:
        _write_part(dataset, SEGMENTS, key, source, segments)
        return len(segments["utterance"])
    seg_path.unlink(missing_ok=True)
    return None


def _input_row(record: Record, where: Path) -> dict:
    summary = record.summary or {}
    return {"input": record.input, "status": record.status, "error": record.error,
            "warning": record.warning, "media_seconds": record.media_seconds,
            "frames": record.frames, "face": summary.get("face", record.faces),
            "voice": summary.get("voice"), "valence": summary.get("valence"),
            "arousal": summary.get("arousal"), "model": record.model,
            "model_sha256": record.model_sha256, "avemo": record.avemo,
            "decoder": record.decoder, "seconds": record.seconds,
            "manifest_folder": str(where), "collected": False, "utterances": None,
            "frames_file": None, "problem": None}


def _input_schema():
    import pyarrow as pa

    s, f, i, b = pa.string(), pa.float64(), pa.int64(), pa.bool_()
    return pa.schema([("input", s), ("status", s), ("error", s), ("warning", s),
                      ("media_seconds", f), ("frames", i), ("face", f), ("voice", f),
                      ("valence", f), ("arousal", f), ("model", s), ("model_sha256", s),
                      ("avemo", s), ("decoder", s), ("seconds", f), ("manifest_folder", s),
                      ("collected", b), ("utterances", i), ("frames_file", s),
                      ("problem", s)])
