"""Manifests: what became of each input of a run, one JSON line per input.

Runs append to ``avemo-manifest.jsonl`` (``avemo-manifest.<I>-of-<N>.jsonl`` for a shard of a
job array, shards.py) in the output folder, one ``Record`` per input as it finishes (re-runs
and concurrent runs add to it); ``summarise`` merges a folder's manifests, the latest record of
each input winning (``avemo status DIR``).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AvemoError, OutputError
from .files import append_line
from .table import finite_json

MANIFEST_GLOB = "avemo-manifest*.jsonl"
UNSHARDED_MANIFEST = "avemo-manifest.jsonl"


@dataclass
class Record:
    """One manifest line: what happened to one input."""

    input: str
    status: str  # ok, partial (written, but less of the media than it holds), skipped, failed
    error: str = ""
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall seconds spent on it
    media_seconds: float = 0.0
    frames: int = 0  # CSV rows
    faces: float = 0.0  # share of analysis steps with a face
    avemo: str = ""
    model: str = ""
    model_sha256: str = ""
    decoder: str = ""  # the ffmpeg that decoded it, with its version (demux.decoder)
    warning: str = ""  # what the user was warned of (e.g. a file that ends early)
    summary: dict = field(default_factory=dict)  # mean values, coverage and a sparkline
    # (``Annotation.summary``: what the folder report shows)
    finished: str = ""  # when it was recorded: UTC, ISO 8601 to the second ("" in the records
    # of runs made before it was kept)

    def line(self) -> str:
        """The record as one JSON line (names that are not UTF-8 written as escapes)."""
        text = json.dumps(self.__dict__, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(self.__dict__)
        return text

    @classmethod
    def from_json(cls, data: object) -> Record:
        """A record from a parsed manifest line; fields of another type are converted where
        that is plain (``"4.0"`` -> 4.0, null -> the default), else ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        values: dict = {}
        for name, f in cls.__dataclass_fields__.items():
            if name not in data or data[name] is None:
                if name in ("input", "status"):
                    raise ValueError(f"no {name}")
                continue
            v, kind = data[name], f.type
            try:
                if kind == "str":
                    values[name] = str(v)
                elif kind == "float":
                    values[name] = float(v)
                    if not math.isfinite(values[name]):
                        raise ValueError
                elif kind == "int":
                    values[name] = int(float(v))
                elif kind == "dict":
                    if not isinstance(v, dict):
                        raise ValueError
                    values[name] = finite_json(v)  # (``1e999`` in a summary: null)
                elif not isinstance(v, list):
                    raise ValueError
                else:
                    values[name] = [str(x) for x in v]
            except (TypeError, ValueError, OverflowError):
                raise ValueError(f"{name} is {json.dumps(v)}") from None
        return cls(**values)

    @property
    def made_by(self) -> str:
        """The avemo version and model that made the outputs."""
        digest = f" ({self.model_sha256[:12]})" if self.model_sha256 else ""
        return f"avemo {self.avemo or '?'}, {self.model or '?'}{digest}"


class Manifest:
    """The manifest of a folder's runs (or of one shard's): each input's record appended as it
    finishes, one whole line per write (``files.append_line``), so re-runs and runs at the same
    time into one folder keep every record, and a killed run keeps the lines it finished."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_symlink():  # (records appended through it would land outside -o)
            raise OutputError(f"{path}: is a symbolic link; avemo appends its records only to "
                              f"a manifest file of its own: remove the link")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()  # there even when this run (a shard with no inputs) adds no record

    def add(self, record: Record) -> None:
        try:
            append_line(self.path, record.line())
        except OSError as exc:  # (disk full, a folder gone read-only): say which file
            raise OutputError(f"{self.path}: the record of {record.input} could not be added "
                              f"({exc.strerror or exc}); its outputs are written: a re-run "
                              f"finds them") from None

    def close(self) -> None:
        """Nothing is held open between records (kept for callers that close)."""


SHOWN_BAD_LINES = 3  # lines of a manifest that are not records, said one by one (then a count)
DONE = ("ok", "partial")  # statuses whose outputs were written


@dataclass
class Summary:
    manifests: list[Path]
    records: dict[str, Record]  # by input: the latest record (see ``summarise``)
    shards: dict[int, set[int]]  # shard count -> indices whose manifest is present
    warnings: list[str] = field(default_factory=list)  # lines that could not be read (the
    # first few of a file, then how many more)
    unreadable: int = 0  # lines that are not records, in all

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.records.values())

    @property
    def media_hours(self) -> float:
        return sum(r.media_seconds for r in self.records.values() if r.status in DONE) / 3600

    @property
    def rate(self) -> float:
        """Media seconds per processing second over the inputs annotated (per worker)."""
        busy = sum(r.seconds for r in self.records.values() if r.status in DONE)
        return self.media_hours * 3600 / busy if busy else 0.0

    def missing_shards(self) -> list[str]:
        return [f"{i}-of-{n}" for n, have in sorted(self.shards.items())
                for i in range(n) if i not in have]

    def makers(self) -> dict[str, int]:
        """Inputs whose outputs each avemo version and model made (more than one key: the
        folder mixes versions or models)."""
        out: dict[str, int] = {}
        for r in self.records.values():
            if r.status in DONE:
                out[r.made_by] = out.get(r.made_by, 0) + 1
        return out


def summarise(folder: str | os.PathLike) -> Summary:
    """Merge the manifests in ``folder`` (not below it). Each input's latest record wins,
    except that a later "skipped" (its outputs were found) keeps the record that wrote them.
    A line that cannot be read is a warning (file and line), not the end of the report."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AvemoError(f"{folder}: no such folder")
    paths = sorted(folder.glob(MANIFEST_GLOB))
    if not paths:
        raise AvemoError(f"{folder}: no avemo manifests (avemo-manifest*.jsonl) in this folder")
    summary = Summary(paths, {}, {})
    for path in paths:
        parts = path.name.split(".")
        if len(parts) == 3 and "-of-" in parts[1]:
            i, n = parts[1].split("-of-")
            if i.isdigit() and n.isdigit():
                summary.shards.setdefault(int(n), set()).add(int(i))
        text = path.read_text(encoding="utf-8", errors="replace")
        bad = 0
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = Record.from_json(json.loads(line))
            except ValueError as exc:
                bad += 1
                summary.unreadable += 1
                if bad <= SHOWN_BAD_LINES:
                    summary.warnings.append(f"{path}:{number}: not a manifest record ({exc}); "
                                            f"left out")
                continue
            earlier = summary.records.get(rec.input)
            if rec.status == "skipped" and earlier is not None and earlier.status in DONE:
                continue
            summary.records[rec.input] = rec
        if bad > SHOWN_BAD_LINES:
            summary.warnings.append(f"{path}: {bad - SHOWN_BAD_LINES} more lines are not "
                                    f"manifest records; left out")
    return summary
