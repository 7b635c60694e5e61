"""Features extracted in other processes for the process that holds the model.

``begin`` (called by ``avemo annotate`` for a single input file, before torch is imported)
probes the file, reads the model's feature settings from the checkpoint's header (no torch),
and starts ``features.extract`` for it in a spawned process: decoding, openSMILE, dlib's
models and face tracking run on the second core (and never wait on this interpreter's lock)
while this process imports torch and loads the model on the first. ``Annotator.annotate`` then
``claim``s the features begun for the same file and settings (once), or extracts them itself.
``Extractors`` are those processes; ``annotate --jobs N --one-model`` keeps N of them busy
with the files ahead of the one the model is on (``batch._run_feeding``). Nothing here imports
torch.
"""
from __future__ import annotations

import json
import struct
from concurrent.futures import Future
from pathlib import Path

from . import demux
from .features import Features, FeatureSettings, extract


def model_settings(weights: Path) -> dict | None:
    """The model settings stored in a checkpoint, read from its header alone (no torch);
    None if that cannot be done (the model's own loading will then say why)."""
    try:
        with open(weights, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        return json.loads(header["__metadata__"]["avemo"])["model"]
    except Exception:
        return None


_STARTED: dict[Path, tuple[tuple, demux.MediaInfo, Future]] = {}  # features begun, by file
_POOLS: list[Extractors] = []  # the processes running, until they are stopped


class Extractors:
    """Spawned processes that extract files' features (``features.extract``: decoding,
    openSMILE, dlib's models and tracking; no torch, no model) for a process that holds the
    model: ``begin`` a file, and the model's ``Annotator.annotate`` of it ``claim``s them."""

    def __init__(self, processes: int = 1):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(processes, mp.get_context("spawn"),
                                        initializer=_quiet)
        self.begun: list[Future] = []
        _POOLS.append(self)

    def begin(self, info: demux.MediaInfo, settings: FeatureSettings, audio_branch: bool,
              visual_branch: bool, max_faces: int = 1,
              faces_device: str = "cpu") -> Future:
        """Submit ``info``'s extraction for a model with these branches (what the model's own
        ``annotate`` would extract); the face backend runs on ``faces_device``."""
        want_audio = info.has_audio and audio_branch
        want_visual = info.has_video and visual_branch
        job = self.pool.submit(_extract, info, settings, want_audio, want_visual, max_faces,
                               faces_device)
        _STARTED[Path(info.path).resolve()] = ((info.n_frames, settings, want_audio,
                                                want_visual, max_faces), info, job)
        self.begun.append(job)
        return job

    def stop(self) -> None:
        """End the processes now (work in them is dropped)."""
        for proc in list((getattr(self.pool, "_processes", None) or {}).values()):
            proc.terminate()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self in _POOLS:
            _POOLS.remove(self)
        mine = set(self.begun)  # features never claimed (their file failed before): let go
        for path in [p for p, (_, _, job) in _STARTED.items() if job in mine]:
            del _STARTED[path]


def _quiet() -> None:
    """An extraction process leaves Ctrl-C to the process that started it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def begin(path: str | Path, weights: Path, faces_backend: str = "dlib", max_side: int = 480,
          detect_every: int = 8, max_faces: int = 1) -> bool:
    """Start extracting ``path``'s features for the model in ``weights`` (see the module
    docstring). False when nothing was started (unreadable file or checkpoint: the normal path
    reports it)."""
    cfg = model_settings(weights)
    if cfg is None:
        return False
    try:
        info = demux.probe(path)
    except Exception:
        return False
    settings = FeatureSettings(float(cfg.get("rate", 4.0)), float(cfg.get("audio_window", 6.0)),
                               int(cfg.get("input_size", 64)), int(cfg.get("channels", 1)),
                               max_side, faces_backend, detect_every)
    modality = cfg.get("modality", "av")
    extractors = Extractors(1)
    job = extractors.begin(info, settings, modality in ("av", "audio"),
                           modality in ("av", "video"), max_faces)
    job.add_done_callback(lambda _: extractors.pool.shutdown(wait=False))
    return True


def stop() -> None:
    """End every process ``begin`` started (the command is ending, perhaps on an error before
    the features were claimed): none outlives it holding its output streams."""
    for extractors in list(_POOLS):
        extractors.stop()
    _STARTED.clear()


def _extract(info: demux.MediaInfo, settings: FeatureSettings, want_audio: bool,
             want_visual: bool, max_faces: int,
             faces_device: str) -> tuple[Features, dict]:
    from .faces import shared_backend
    from .features import STAGES

    timings = dict.fromkeys(STAGES, 0.0)
    feats = extract(info, settings, want_audio, want_visual,
                    lambda: shared_backend(settings.faces_backend, faces_device), timings,
                    max_faces=max_faces)
    return feats, timings


def started_visual() -> bool:
    """Whether some file's faces are being tracked by ``begin``'s process (so this process
    need not load the face models ahead of time)."""
    return any(key[3] for key, _, _ in _STARTED.values())


def begun_info(path: str | Path) -> demux.MediaInfo | None:
    """The probe of a file whose features were begun (``annotate`` need not probe it again)."""
    started = _STARTED.get(Path(path).resolve())
    return started[1] if started is not None else None


def claim(info: demux.MediaInfo, settings: FeatureSettings, want_audio: bool,
          want_visual: bool, max_faces: int) -> tuple[Features, dict] | None:
    """The features (and the stage timings of their extraction) begun for this file with
    these settings, taken once; None if none were. An error of the extraction is raised."""
    path = Path(info.path).resolve()
    started = _STARTED.get(path)
    if started is None or started[0] != (info.n_frames, settings, want_audio, want_visual,
                                         max_faces):
        return None
    del _STARTED[path]
    feats, timings = started[2].result()
    feats.info = info
    return feats, timings
