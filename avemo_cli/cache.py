"""Per-file feature cache for training and evaluation.

An entry holds one part (``audio`` or ``faces``) of one file's ``Features``, keyed by the file's
content (SHA-256) and the settings that part depends on, so renaming a file keeps its cache and
changing a setting (window, rate, crop size, backend, ...) makes a new entry. Entries are
written to a temporary name and renamed, so a killed run never leaves a half-written entry that
looks valid; an unreadable entry is treated as missing and recomputed.

Default location: ``$AVEMO_CACHE``, else ``~/.cache/avemo``.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import demux
from .audio import AudioFeatures
from .errors import plural
from .faces import shared_backend
from .tracking import FaceTrack
from .features import Features, FeatureSettings, extract
from .files import atomic_path
from .workers import spawn_map

CACHE_VERSION = 7  # 2: analysis frames scaled up to max_side too; 3: audio steps openSMILE
# could not describe (files of 1 s or less) are not valid; 4: frame times from the container,
# display size after the sample aspect ratio; 5: audio past full scale is clipped for openSMILE
# (it wrapped around before); 6: audio placed at its stream's start time; 7: each step's
# loudness and speech flag kept (the voice is speech, not sound)


def save_npz(path: Path, arrays: dict) -> None:
    """``np.savez`` under ``path`` atomically (a killed run never leaves a truncated entry)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def default_cache_dir() -> Path:
    return Path(os.environ.get("AVEMO_CACHE") or Path.home() / ".cache" / "avemo")


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _part_settings(part: str, s: FeatureSettings) -> dict:
    if part == "audio":
        return {"rate": s.rate, "audio_window": s.audio_window}
    return {"rate": s.rate, "crop_size": s.crop_size, "channels": s.channels,
            "max_side": s.max_side, "faces_backend": s.faces_backend,
            "detect_every": s.detect_every}


class FeatureCache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_cache_dir()

    def _path(self, digest: str, part: str, settings: FeatureSettings) -> Path:
        key = json.dumps({"v": CACHE_VERSION, "part": part, **_part_settings(part, settings)},
                         sort_keys=True)
        name = f"{digest}.{part}.{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
        return self.root / digest[:2] / name

    def _read(self, path: Path) -> dict | None:
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # missing or damaged (e.g. truncated): recompute

    def _write(self, path: Path, arrays: dict) -> None:
        save_npz(path, arrays)

    def load(self, media: Path, settings: FeatureSettings,
             digest: str | None = None) -> Features | None:
        """The cached features of ``media``, or None if a part ``settings`` asks for is
        missing."""
        digest = digest or file_digest(media)
        meta = None
        parts = {}
        for part, wanted in (("audio", settings.audio), ("faces", settings.visual)):
            if not wanted:
                continue
            data = self._read(self._path(digest, part, settings))
            if data is None:
                return None
            parts[part] = data
            meta = json.loads(str(data["info"]))
        if meta is None:
            return None
        meta["path"] = Path(media)
        pts = next(iter(parts.values()))["pts"]
        info = demux.MediaInfo(**meta, pts=pts if len(pts) else None)
        n = int(next(iter(parts.values()))["n_steps"])
        feats = Features(info, n, info.frame_times() if info.has_video else None)
        if "audio" in parts and parts["audio"]["values"].size:
            a = parts["audio"]
            feats.audio = AudioFeatures(a["values"], a["valid"], a["loudness"],
                                        speech=a["speech"])
        if "faces" in parts and parts["faces"]["found"].size:
            f = parts["faces"]
            size = (int(f["frame_size"][0]), int(f["frame_size"][1]))
            feats.track = FaceTrack(f["crops"], f["found"], f["boxes"], f["landmarks"],
                                    f["matrices"], size, int(f["detections"]))
        return feats

    def store(self, feats: Features, settings: FeatureSettings,
              digest: str | None = None) -> None:
        digest = digest or file_digest(feats.info.path)
        pts = feats.info.pts
        common = {"info": np.array(json.dumps(feats.info.to_json())),
                  "n_steps": np.array(feats.n_steps),
                  "pts": pts if pts is not None else np.zeros(0)}
        if settings.audio:
            a = feats.audio
            self._write(self._path(digest, "audio", settings), {
                **common,
                "values": a.values if a else np.zeros((0, 88), np.float32),
                "valid": a.valid if a else np.zeros(0, bool),
                "loudness": a.loudness if a and a.loudness is not None else np.zeros(0),
                "speech": a.speech if a and a.speech is not None else
                np.ones(len(a.valid) if a else 0, bool)})
        if settings.visual:
            t = feats.track or FaceTrack.empty(settings.crop_size)  # stored as "no track"
            self._write(self._path(digest, "faces", settings), {
                **common, "crops": t.crops, "found": t.found, "boxes": t.boxes,
                "landmarks": t.landmarks, "matrices": t.matrices,
                "frame_size": np.array(t.frame_size), "detections": np.array(t.detections)})


def _extract_one(args) -> tuple[str, str, str | None]:
    """Worker: (media, settings, cache root) -> (media, 'hit'|'miss'|'error', error)."""
    media, settings, root = args
    from .errors import AvemoError

    cache = FeatureCache(root)
    try:
        digest = file_digest(Path(media))
        if cache.load(Path(media), settings, digest) is not None:
            return media, "hit", None
        info = demux.probe(media)

        feats = extract(info, settings, lambda: shared_backend(settings.faces_backend))
        cache.store(feats, settings, digest)
        return media, "miss", None
    except AvemoError as err:
        return media, "error", str(err)


def describe_counts(counts: dict[str, int]) -> str:
    """``extract_all``'s counts as the one line train, eval and extract print."""
    return (f"avemo: {plural(counts['miss'], 'file')} analysed, {counts['hit']} analysed by "
            f"an earlier run, {counts['error']} failed")


def extract_all(media: Iterable[Path], settings: FeatureSettings, cache: FeatureCache,
                jobs: int = 1, on_done: Callable[[str, str, str | None], None] | None = None
                ) -> dict[str, int]:
    """Fill the cache for every file (``jobs`` processes, workers.py). Returns counts of
    hit/miss/error."""
    tasks = [(str(m), settings, str(cache.root)) for m in media]
    counts = {"hit": 0, "miss": 0, "error": 0}

    def done(result):
        counts[result[1]] += 1
        if on_done:
            on_done(*result)

    for result in spawn_map(_extract_one, tasks, jobs):
        done(result)
    return counts
