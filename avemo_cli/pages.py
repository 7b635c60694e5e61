"""Pages a person looks at: one self-contained HTML file per annotated input (``--format html``)
and one per folder of runs (``avemo status DIR --html``).

Both are single files with their script, styles and data inline (the templates in
``templates/``): no network, no CDN; they open from disk (``file://``) in current Chromium and
Firefox.

- The file page plays the media (a relative link to the source, as the EAF has; the overlay
  video instead when it was written) beside valence and arousal per analysis step, a line per
  face in the faces' colours, grey where no face and no voice was there; a cursor follows
  playback, a click or drag on the curves seeks. It embeds the step values (4 a second per
  face), not every frame's row.
- The folder report lists every input of the folder's manifests: status, duration, mean
  valence and arousal, a sparkline, face and voice coverage, failures and warnings with their
  reasons, links to each file's page; sortable by any column. Its data per input is the
  manifest record's ``summary`` (a few dozen points), so 10,000 inputs open at once.

A page exposes what it drew as ``window.avemoPage`` (points per curve, the cursor's time and
position, rows shown), which the browser tests read.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .table import FACE_COLOURS, finite_list

if TYPE_CHECKING:
    from .pipeline import Annotation
    from .manifests import Summary

def _template(name: str) -> str:
    """A page template shipped in ``avemo_cli/templates`` (HTML with its script, or CSS)."""
    return (Path(__file__).parent / "templates" / name).read_text(encoding="utf-8")


def _fill(name: str, title: str, data: object) -> str:
    """A template with its title, the shared styles and the page's data inlined: one file that
    needs nothing else. The data is JSON safe inside a <script> element (no "</" in it)."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return (_template(name).replace("{{style}}", _template("style.css"))
            .replace("{{title}}", title).replace("{{data}}", text))


def _colour(face_id: int) -> str:
    r, g, b, _ = FACE_COLOURS[face_id % len(FACE_COLOURS)]
    return f"rgb({r},{g},{b})"


def _link(target: Path, page: Path) -> str:
    """``target`` relative to the folder of ``page`` (works wherever both are moved together):
    always a relative path, never read as a scheme (``javascript:x.mp4`` is ``./javascript:x.mp4``:
    a browser would run a link that begins with ``javascript:``)."""
    rel = Path(os.path.relpath(Path(target).resolve(), page.resolve().parent)).as_posix()
    return rel if rel.startswith("../") or ":" not in rel.split("/")[0] else f"./{rel}"


def file_page(annotation: Annotation, path: Path, video: Path | None = None,
              subtitles: Path | None = None) -> str:
    """The page of one annotated input, to be written at ``path``. ``video``: the overlay
    video to show instead of the source; ``subtitles``: a WebVTT track for the player."""
    from . import __version__

    info = annotation.info
    steps = len(annotation.people[0].face)
    faces = []
    for person in annotation.people:
        values = np.clip(person.step_values, -1.0, 1.0)
        faces.append({"id": person.face_id, "colour": _colour(person.face_id),
                      "values": {t: finite_list(values[:, j])
                                 for j, t in enumerate(annotation.targets)},
                      "evidence": annotation.evidence(person).astype(int).tolist()})
    segments = [{**u.row(annotation.targets),
                 "colour": _colour(u.face_id) if u.face_id is not None else "#888888"}
                for u in annotation.utterances]
    data = {"name": Path(annotation.path).name, "rate": annotation.rate, "segments": segments,
            "duration": info.duration or steps / annotation.rate,
            "targets": list(annotation.targets), "faces": faces,
            "media": _link(video if video is not None else Path(annotation.path), path),
            "kind": "video" if info.has_video else "audio", "overlay": video is not None,
            "subtitles": None if subtitles is None else _link(subtitles, path),
            "meta": {"avemo": __version__, "model": annotation.model,
                     "source": annotation.source, **annotation.shares()}}
    return _fill("file.html", html.escape(f"{data['name']} — avemo"), data)


def _common_folder(paths: list[str]) -> str:
    """The folder all ``paths`` lie in ("" if none is shared), shown once above the rows."""
    if len(paths) < 2:
        return str(Path(paths[0]).parent) if paths and Path(paths[0]).parent.name else ""
    try:
        common = os.path.commonpath(paths)
    except ValueError:  # absolute and relative mixed
        return ""
    return "" if common in ("", "/") or common in paths else common


def folder_report(summary: Summary, folder: Path) -> str:
    """The report of a folder's runs (``avemo status DIR --html``), written in ``folder``."""
    from . import __version__

    here = folder / "avemo-report.html"
    records = sorted(summary.records.values(), key=lambda r: r.input)
    root = _common_folder([r.input for r in records])
    rows = []
    for rec in records:
        page = next((o for o in rec.outputs if o.endswith(".avemo.html")), None)
        info = rec.summary or {}
        spark = info.get("spark") or {}
        rows.append({"input": rec.input[len(root):].lstrip("/\\") if root else rec.input,
                     "path": rec.input, "status": rec.status, "seconds": rec.media_seconds,
                     "valence": info.get("valence"), "arousal": info.get("arousal"),
                     "face": info.get("face"), "voice": info.get("voice"),
                     "sv": spark.get("valence"), "sa": spark.get("arousal"),
                     "note": rec.error or rec.warning,
                     "page": _link(Path(page), here) if page else None})
    data = {"folder": str(folder), "root": root, "avemo": __version__, "rows": rows,
            "counts": {s: summary.count(s) for s in ("ok", "partial", "skipped", "failed")},
            "missing": summary.missing_shards(), "unreadable": summary.unreadable}
    return _fill("report.html", html.escape(f"{folder.name or folder} — avemo report"), data)
