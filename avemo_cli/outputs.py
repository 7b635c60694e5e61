"""Stage 6b — outputs: every file avemo writes for an annotated input, one writer per format.

A writer takes an annotation (``pipeline.Annotation``) and a path and writes atomically
(``files.atomic_path``). ``WRITERS`` holds them all, chosen by name (``--format``):

    csv, parquet, json, eaf   the table (``table.py``) in four formats
    segments                  the utterances (``utterances.py``), a row each
                              (``<stem>.avemo.segments.csv``; also in the JSON, the EAF, the
                              page and, with ``--vtt-cues utterances``, the subtitles)
    png                       valence/arousal over time (``plots.plot_track``; ``--plot``)
    mp4                       the input with face box, attention and gauges (``overlay.py``;
                              ``--overlay``; not for audio-only inputs)
    vtt                       a WebVTT subtitle track of the values, for any video player
    html                      a page that plays the media beside its curves (``pages.py``)

``output_path`` is the one place an output's file name is made: ``<stem>.avemo.<format>``.
Adding a format is one writer function and its line in ``WRITERS``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .demux import AUDIO_EXTS
from .files import atomic_path, write_text
from .table import TARGET_COLUMNS, Columns

if TYPE_CHECKING:
    import pandas as pd

    from .pipeline import Annotation

TAG = ".avemo"  # every output is <stem>.avemo.<format>


def output_path(base: Path, fmt: str) -> Path:
    """Where format ``fmt`` of the input planned as ``base`` (``<folder>/<stem>``) goes."""
    return base.with_name(f"{base.name}{TAG}.{WRITERS[fmt].suffix}")


def pattern(fmt: str) -> str:
    """A glob for the outputs of format ``fmt`` (``*.avemo.csv``)."""
    return f"*{TAG}.{WRITERS[fmt].suffix}"


def stem_of(path: Path, fmt: str) -> str:
    """The input's stem back from an output's name (``talk.avemo.csv`` -> ``talk``)."""
    return path.name[: -len(f"{TAG}.{WRITERS[fmt].suffix}")]


SECONDS_COLUMNS = ("time", "start", "end")  # written to the millisecond


def _cells(name: str, values: np.ndarray) -> list[str]:
    """One column as the CSV's text: times to the millisecond, targets (and the heads' values
    of them) to 4 decimals, a face_id as a whole number, other numbers as Python writes them
    (shortest exact form), a missing value as nothing."""
    if name in SECONDS_COLUMNS:
        return ["" if v != v else f"{v:.3f}" for v in values.tolist()]
    if name.removeprefix("voice_").removeprefix("face_") in TARGET_COLUMNS:
        return ["" if v != v else f"{v:.4f}" for v in values.tolist()]
    if name == "face_id" and values.dtype.kind == "f":  # (an utterance no face speaks)
        return ["" if v != v else str(int(v)) for v in values.tolist()]
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


def _write_csv(annotation: Annotation, path: Path) -> None:
    write_csv(annotation.columns, path)


def _write_segments(annotation: Annotation, path: Path) -> None:
    from .utterances import table

    write_csv(table(annotation.utterances, annotation.targets), path)


def _write_parquet(annotation: Annotation, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({name: pa.array(values, from_pandas=True)  # NaN: null, as pandas wrote
                      for name, values in annotation.columns.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def metadata(annotation: Annotation) -> dict:
    """What the JSON (and any self-describing output) says about the file and the model."""
    from . import __version__
    from .demux import decoder

    info = annotation.info
    return {"avemo": __version__, "media": str(annotation.path), "model": annotation.model,
            "decoder": decoder(),
            "source": annotation.source, "targets": list(annotation.targets),
            "rate": annotation.rate, "fps": info.fps if info.has_video else None,
            "duration": info.duration,
            "faces": sorted(int(i) for i in set(annotation.columns["face_id"].tolist())),
            "columns": list(annotation.columns)}


def _write_json(annotation: Annotation, path: Path) -> None:
    import json

    columns = {name: [None if v != v else v for v in values.tolist()]  # NaN: null
               for name, values in annotation.columns.items()}
    rows = [dict(zip(columns, row)) for row in zip(*columns.values())]
    segments = [u.row(annotation.targets) for u in annotation.utterances]
    doc = {**metadata(annotation), "segments": segments, "rows": rows}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, default=_plain) + "\n")


def _plain(v):
    return v.item() if isinstance(v, np.generic) else str(v)


_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _write_eaf(annotation: Annotation, path: Path) -> None:
    """An ELAN document: per face and target a tier of the values at the analysis steps (each
    annotation spans its step's 1/rate seconds; steps where the face was not found and its
    voice not heard, and steps past the media's end, are left out), linked to the media file so
    that the tiers open beside the video."""
    from pympi import Elan

    from . import __version__

    eaf = Elan.Eaf(author=f"avemo {__version__}")
    eaf.remove_tier("default")
    media = Path(annotation.path).resolve()
    mime = "audio/x-wav" if not annotation.info.has_video else "video/mp4"
    relpath = os.path.relpath(media, path.resolve().parent)
    if _XML_ILLEGAL.search(relpath):  # (a control character in a name: XML cannot hold it)
        from urllib.parse import quote

        relpath = quote(os.fsencode(relpath))
    eaf.add_linked_file(media.as_uri(), relpath=relpath, mimetype=mime)
    step_ms = 1000.0 / annotation.rate
    for person in annotation.people:
        evidence = annotation.evidence(person)
        for j, target in enumerate(annotation.targets):
            tier = f"face {person.face_id} {target}"
            eaf.add_tier(tier)
            for k in np.flatnonzero(evidence):
                v = float(person.step_values[k, j])
                if np.isfinite(v):
                    eaf.add_annotation(tier, int(round(k * step_ms)),
                                       int(round((k + 1) * step_ms)), f"{v:.3f}")
    for face_id in sorted({u.face_id for u in annotation.utterances},
                          key=lambda f: (f is None, f or 0)):
        tier = "speech" if face_id is None else f"face {face_id} speech"
        eaf.add_tier(tier)
        for u in annotation.utterances:
            if u.face_id == face_id:
                eaf.add_annotation(tier, int(round(u.start * 1000)), int(round(u.end * 1000)),
                                   _utterance_text(u, annotation.targets))
    with atomic_path(path, ".eaf") as tmp:
        Elan.to_eaf(str(tmp), eaf, pretty=True)


def _utterance_text(u, targets: list[str]) -> str:
    """An utterance in words: ``#0  valence +0.42  arousal -0.10  (confidence 0.93)``."""
    return f"#{u.index}  {u.label(targets)}  (confidence {u.confidence:.2f})"


def _write_png(annotation: Annotation, path: Path) -> None:
    from .plots import plot_track

    plot_track(annotation.table, path, annotation.path.name, annotation.info.has_video)


def _write_mp4(annotation: Annotation, path: Path) -> None:
    from .overlay import render_overlay

    render_overlay(annotation, path)


def _vtt_time(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def _gauge(v: float, half: int = 5) -> str:
    """-1..1 as a small bar of characters: ``[·····|··●··]``."""
    cells = ["·"] * half + ["|"] + ["·"] * half
    cells[int(round((max(-1.0, min(1.0, v)) + 1) * half))] = "●"
    return "[" + "".join(cells) + "]"


def _gauges(values: dict, targets: list[str]) -> str:
    return "  ".join(f"{t} {v:+.2f} {_gauge(v)}" for t in targets
                     if (v := values.get(t)) is not None)


def vtt_text(annotation: Annotation) -> str:
    """A WebVTT track: a cue per second of the media (the mean of its analysis steps where the
    face has evidence: found, or its voice heard), a line per face, e.g.
    ``face 0  valence +0.42 [·····|··●··]  arousal -0.10 [····●|·····]``. Seconds without
    evidence for any face have no cue. With ``annotation.cues`` "utterances": a cue per
    utterance instead (``utterance_cues``)."""
    if annotation.cues == "utterances":
        return utterance_cues(annotation)
    rate, duration = annotation.rate, annotation.info.duration
    lines = ["WEBVTT", "", "NOTE avemo: valence and arousal per face, a cue per second", ""]
    steps = np.arange(len(annotation.people[0].face))
    second = (steps / rate).astype(np.int64)
    n_seconds = int(np.ceil(duration)) if duration > 0 else int(second.max(initial=-1)) + 1
    bounds = np.searchsorted(second, np.arange(n_seconds + 1))  # each second's steps
    seen = [annotation.evidence(person) for person in annotation.people]
    for i in range(n_seconds):
        start, end = float(i), min(float(i + 1), duration or float(i + 1))
        if end <= start:
            break
        text = []
        for person, evidence in zip(annotation.people, seen):
            here = np.flatnonzero(evidence[bounds[i]:bounds[i + 1]]) + bounds[i]
            if not len(here):
                continue
            means = {target: float(np.clip(np.nanmean(person.step_values[here, j]), -1, 1))
                     for j, target in enumerate(annotation.targets)}
            text.append(f"face {person.face_id}  " + _gauges(means, annotation.targets))
        if text:
            lines += [f"{_vtt_time(start)} --> {_vtt_time(end)}", *text, ""]
    return "\n".join(lines)


def utterance_cues(annotation: Annotation) -> str:
    """A WebVTT track with a cue per utterance, from its start to its end, identified by its
    index: ``face 0  valence +0.42 [·····|··●··]  arousal -0.10 [····●|·····]`` (``voice``
    where no face speaks)."""
    lines = ["WEBVTT", "", "NOTE avemo: valence and arousal per utterance", ""]
    for u in annotation.utterances:
        who = "voice" if u.face_id is None else f"face {u.face_id}"
        lines += [f"utterance {u.index}", f"{_vtt_time(u.start)} --> {_vtt_time(u.end)}",
                  f"{who}  {_gauges(u.values, annotation.targets)}", ""]
    return "\n".join(lines)


def _write_vtt(annotation: Annotation, path: Path) -> None:
    write_text(path, vtt_text(annotation))


def _write_html(annotation: Annotation, path: Path) -> None:
    """The page (``pages.file_page``), showing the overlay video instead of the source and
    the subtitle track when this run wrote them too."""
    from .pages import file_page

    written = annotation.outputs
    write_text(path, file_page(annotation, path, written.get("mp4"), written.get("vtt")))


def _has_picture(source: Path) -> bool:
    return source.suffix.lower() not in AUDIO_EXTS


@dataclass(frozen=True)
class Writer:
    write: Callable[[Annotation, Path], None]
    suffix: str  # the file name's last part: <stem>.avemo.<suffix>
    stage: str = "write"  # the timing (and progress) stage it counts under
    in_all: bool = True  # part of ``--format all`` (the costly renderings are asked for by name)
    wants: Callable[[Path], bool] = lambda source: True  # whether an input gets this output
    last: bool = False  # written after the others (it links to them)


WRITERS: dict[str, Writer] = {
    "csv": Writer(_write_csv, "csv"),
    "parquet": Writer(_write_parquet, "parquet"),
    "json": Writer(_write_json, "json"),
    "eaf": Writer(_write_eaf, "eaf"),
    "segments": Writer(_write_segments, "segments.csv"),
    "png": Writer(_write_png, "png", stage="plot", in_all=False),
    "mp4": Writer(_write_mp4, "mp4", stage="overlay", in_all=False, wants=_has_picture),
    "vtt": Writer(_write_vtt, "vtt"),
    "html": Writer(_write_html, "html", last=True),
}
FORMATS_HELP = "|".join([",".join(WRITERS), "all"])


def parse_formats(text: str) -> tuple[str, ...]:
    """``csv,parquet`` -> ("csv", "parquet"); ``all`` -> every format in ``all``; order kept,
    no repeats."""
    names: list[str] = []
    for name in (n.strip().lower() for n in text.split(",")):
        every = [n for n, w in WRITERS.items() if w.in_all]
        for one in (every if name == "all" else [name]):
            if one not in WRITERS:
                raise ValueError(f"unknown output format {one!r} (choose from "
                                 f"{', '.join(WRITERS)} or all)")
            if one not in names:
                names.append(one)
    if not names:
        raise ValueError("no output format given")
    return tuple(names)


def wanted(source: Path, base: Path, formats: tuple[str, ...]) -> dict[str, Path]:
    """The outputs input ``source`` planned as ``base`` gets, by format, in order (an
    audio file gets no overlay video)."""
    return {fmt: output_path(base, fmt) for fmt in formats if WRITERS[fmt].wants(source)}


def write(annotation: Annotation, paths: dict[str, Path],
          on_stage: Callable[[str], None] | None = None) -> None:
    """Write ``annotation`` to each of ``paths`` (format -> path), timing each writer's stage
    in ``annotation.timings``; ``on_stage`` is told of each stage but the tables' own."""
    import time

    annotation.outputs = paths
    for fmt, path in sorted(paths.items(), key=lambda item: WRITERS[item[0]].last):
        writer = WRITERS[fmt]
        if on_stage and writer.stage != "write":
            on_stage(writer.stage)
        t1 = time.perf_counter()
        writer.write(annotation, path)
        annotation.timings[writer.stage] += time.perf_counter() - t1
