"""The annotation pipeline: a media file in, a per-frame valence/arousal table out.

    demux.probe -> faces.track_faces(demux.iter_frames) -> audio.egemaps_stream(demux.iter_audio)
    -> predict.predict_steps -> postprocess.apply_postprocess -> writer.frame_table

``Annotator`` holds the loaded model and the face backend, so a batch pays for them once.
"""
from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np
import torch

from . import audio as audio_stage
from . import demux, early, faces, postprocess, predict, speakers, writer
from .checkpoint import Checkpoint, load_checkpoint, resolve_weights
from .features import (STAGES, FeatureSettings, Features, extract,
                       nearest_index)
from .errors import CheckpointError, DeviceError, ModalityError, NoFaceError

if TYPE_CHECKING:  # pandas is imported only when a DataFrame is asked for
    import pandas as pd


class OrientationWarning(UserWarning):
    """No face was found as the video is displayed, but one appears when it is turned."""


@dataclass
class Person:
    """One tracked face's results (``Annotation.people``; face 0 first)."""

    face_id: int
    track: faces.FaceTrack | None
    steps: predict.StepPredictions  # raw per-step output and attention for this face
    step_values: np.ndarray  # (K, targets) after face-gap interpolation and post-processing
    face: np.ndarray  # (K,) bool: this face found (all 0 when the face was not used)
    speaking: np.ndarray  # (K,) bool: the voice is this face's (fused prediction there)
    confidence: np.ndarray  # (K,) share of the clip's steps with this face (or the voice)


@dataclass
class Annotation:
    """Everything one input produced; ``columns`` (and ``table``, the same as a pandas
    DataFrame) is what the CSV holds: one row per frame per face. The fields ``steps`` to
    ``track`` are face 0's, as are ``people[0]``'s."""

    path: Path
    info: demux.MediaInfo
    columns: writer.Columns
    source: str  # what the prediction used: "av", "audio" or "video"
    steps: predict.StepPredictions  # raw per-step model output and attention
    step_values: np.ndarray  # (K, targets) after face-gap interpolation and post-processing
    face: np.ndarray  # (K,) bool
    voice: np.ndarray  # (K,) bool
    track: faces.FaceTrack | None = None
    audio_features: audio_stage.AudioFeatures | None = None
    timings: dict[str, float] = field(default_factory=dict)
    rate: float = 4.0  # analysis steps per second
    targets: list[str] = field(default_factory=lambda: ["valence", "arousal"])
    notices: list[str] = field(default_factory=list)  # what the user should know (also warned)
    people: list[Person] = field(default_factory=list)  # every face kept (--max-faces)
    model: str = ""  # the checkpoint's name

    @cached_property
    def table(self) -> pd.DataFrame:
        """The rows as a pandas DataFrame (made, and pandas imported, on first use)."""
        return writer.as_frame(self.columns)


DEVICES = "auto|cpu|cuda[:N]"


def resolve_device(device: str | None) -> torch.device:
    """``auto`` (or None): CUDA when present, else CPU; ``cpu``; ``cuda`` or ``cuda:N``.
    Anything else, or CUDA where there is none, is a ``DeviceError``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", str(device)):
        raise DeviceError(f"--device {device}: not a device (use {DEVICES})")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {device}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    return dev


def fill_gaps(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Replace rows where ``ok`` is False by linear interpolation between the nearest ok rows
    (held constant beyond the first/last); the paper's rule for steps with no face."""
    if ok.all() or not ok.any():
        return values.copy()
    steps = np.arange(len(values))
    out = values.copy()
    for j in range(values.shape[1]):
        out[~ok, j] = np.interp(steps[~ok], steps[ok], values[ok, j])
    return out


class Annotator:
    """Annotates media files with a loaded checkpoint.

    >>> ann = Annotator("weights.safetensors")          # doctest: +SKIP
    >>> result = ann.annotate("talk.mp4")              # doctest: +SKIP
    >>> result.table.head()                            # doctest: +SKIP
    """

    def __init__(self, weights: str | Path | Checkpoint | None = None, device: str | None = "auto",
                 faces_backend: str = "dlib", stride: int = 1, batch_size: int = 32,
                 detect_every: int = 8, max_side: int = 480, max_faces: int = 1):
        self.options = {"device": device, "faces_backend": faces_backend, "stride": stride,
                        "batch_size": batch_size, "detect_every": detect_every,
                        "max_side": max_side, "max_faces": max_faces}  # for a worker's twin
        if max_faces < 1:
            raise ValueError("max_faces must be at least 1")
        self.max_faces = max_faces
        self._describer: faces.Describer | None = None
        self.device = resolve_device(device)
        # dlib runs on the CPU whatever --device says: one dlib backend serves every device
        self.faces_device = "cpu" if faces_backend == "dlib" else str(self.device)
        self.checkpoint = weights if isinstance(weights, Checkpoint) else \
            load_checkpoint(resolve_weights(None if weights is None else str(weights)),
                            self.device)
        self.checkpoint.model.to(self.device).eval()
        self.cfg = self.checkpoint.config
        self.faces_backend = faces_backend
        self._backend: faces.FaceBackend | None = None
        self.stride = max(1, int(stride))
        self.batch_size = batch_size
        self.detect_every = detect_every
        self.max_side = max_side

    @property
    def backend(self) -> faces.FaceBackend:
        if self._backend is None:  # one per process (the CLI starts loading it early)
            self._backend = faces.shared_backend(self.faces_backend, self.faces_device)
        return self._backend

    def describer(self) -> faces.Describer:
        if self._describer is None:
            self._describer = faces.Describer()
        return self._describer

    @property
    def settings(self) -> "FeatureSettings":
        return FeatureSettings.for_model(self.cfg, self.faces_backend, self.max_side,
                                         self.detect_every)

    def annotate(self, path: str | Path,
                 progress: Callable[[str], None] | None = None) -> Annotation:
        """Annotate one file. ``progress(stage)`` is called as each stage starts."""
        say = progress or (lambda stage: None)
        cfg, ckpt = self.cfg, self.checkpoint
        timings = dict.fromkeys(STAGES, 0.0)
        t0 = time.perf_counter()
        say("demux")
        info = early.begun_info(path) or demux.probe(path)  # (probed when it was begun)
        timings["demux"] += time.perf_counter() - t0
        name = ckpt.path or "the checkpoint"
        use_audio = info.has_audio and cfg.has_audio
        use_visual = info.has_video and cfg.has_visual
        if not info.has_video and not cfg.has_audio:
            raise ModalityError(f"{info.path}: audio-only input, but {name} has no audio branch "
                                f"(a video-only model)")
        if info.has_video and not use_audio and not use_visual:
            raise ModalityError(f"{info.path}: no audio track, and {name} has no visual branch "
                                f"(an audio-only model)")
        begun = early.claim(info, self.settings, use_audio, use_visual, self.max_faces)
        if begun is not None:  # extracted while the model loaded (avemo annotate, one file)
            feats, child_timings = begun
            for k, v in child_timings.items():
                timings[k] += v
        else:
            feats = extract(info, self.settings, use_audio, use_visual,
                            lambda: self.backend, timings, say,
                            max_faces=self.max_faces, describer=self.describer)
        notices = []
        if use_visual and not feats.face.any():
            turned = self.turned_face(info)
            if not use_audio:
                why = "no audio track" if not info.has_audio else f"{name} has no audio branch"
                raise NoFaceError(f"{info.path}: no face found in the video ({why})"
                                  + (f"; {turned}" if turned else ""))
            if turned:
                notices.append(f"{info.path}: no face found as the video is displayed, so its "
                               f"valence and arousal come from the voice alone; {turned}")
                warnings.warn(notices[-1], OrientationWarning, stacklevel=2)

        say("model")
        t1 = time.perf_counter()
        tracks = feats.tracks if use_visual and feats.face.any() else []
        loudness = feats.audio.loudness if feats.audio is not None else None
        talk = speakers.speaking(tracks, loudness, feats.voice)
        results = []
        for i in range(max(1, len(tracks))):
            one = feats.for_face(i) if tracks else feats
            speaking = talk[i] if tracks else feats.voice
            steps, values, source = predict_features(
                ckpt.model, one, self.stride, self.batch_size, self.device,
                speaking=speaking if len(tracks) > 1 else None)
            results.append((one, steps, values, source, speaking))
        timings["model"] += time.perf_counter() - t1

        say("postprocess")
        t1 = time.perf_counter()
        people, tables = [], []
        for i, (one, steps, values, source, speaking) in enumerate(results):
            made = to_table(ckpt, one, values, source, face_id=i, speaking=speaking)
            people.append(Person(i, one.track, steps, made.values, made.face, made.speaking,
                                 made.confidence))
            tables.append(made.columns)
        table = writer.merge_faces(tables)
        timings["postprocess"] += time.perf_counter() - t1
        first, (_, steps, _, source, _) = people[0], results[0]
        return Annotation(info.path, info, table, source, steps, first.step_values,
                          first.face, feats.voice, feats.track, feats.audio, timings, cfg.rate,
                          list(cfg.targets), notices, people, _model_name(ckpt))

    def turned_face(self, info: demux.MediaInfo, n: int = 6) -> str:
        """When no face was found: a few frames tried in the other three orientations. Says
        how the picture must be turned for faces to appear ("" if that finds none either)."""
        frames = demux.sample_frames(info, n, self.max_side, gray=self.cfg.channels == 1)
        k = faces.turn_with_faces(frames, self.backend)
        if not k:
            return ""
        return (f"a face appears when the picture is rotated {faces.TURNS[k]} (the file's "
                f"rotation tag says {info.rotation} degrees; it may be wrong or the camera was "
                f"held sideways): rotate the video and annotate it again")


def _model_name(ckpt: Checkpoint) -> str:
    return Path(ckpt.path).name if ckpt.path else "in-memory checkpoint"


def predict_features(model, feats: "Features", stride: int = 1, batch_size: int = 32,
                     device="cpu", speaking: np.ndarray | None = None
                     ) -> tuple[predict.StepPredictions, np.ndarray, str]:
    """Model output for one file's features: fusion when the model and the file have both
    modalities and a face was found somewhere, else the available branch. Steps without a face
    are interpolated from neighbouring face steps (the paper's rule). ``speaking`` (K,), when
    given (several faces), limits fusion to the steps where this face speaks: elsewhere the
    visual head alone. Returns the raw step predictions, the gap-filled values (before
    post-processing) and the source used."""
    cfg = model.cfg
    heard = feats.audio is not None and feats.audio.valid.any()
    use_audio = cfg.has_audio and heard
    use_visual = cfg.has_visual and feats.track is not None and feats.face.any()
    if not (use_audio or use_visual):
        if cfg.has_audio and feats.audio is not None:
            raise ModalityError(f"{feats.info.path}: the audio is too short to describe "
                                f"(openSMILE needs more than 1 s)"
                                f"{' and no face was found' if cfg.has_visual else ''}")
        raise NoFaceError(f"{feats.info.path}: nothing this model can use (no face found"
                          f"{'' if cfg.has_audio else ' and no audio branch'})")
    heard_audio = feats.audio if use_audio else None
    seen = feats.track if use_visual else None
    steps = predict.predict_steps(model, heard_audio.values if heard_audio else None,
                                  seen.crops if seen else None, stride, batch_size, device,
                                  heard_audio.valid if heard_audio else None,
                                  nearest_index(feats.face) if seen else None)
    if not np.isfinite(steps.values).all():
        raise CheckpointError(f"{feats.info.path}: the model's predictions are not finite (NaN "
                              f"or infinite): a damaged or diverged checkpoint")
    values = steps.values
    if steps.visual_values is not None and use_audio:  # no voice heard: the face alone
        fused = feats.voice if speaking is None else feats.voice & speaking
        values = np.where(fused[:, None], values, steps.visual_values)
    values = fill_gaps(values, feats.face) if use_visual else values
    source = "av" if use_audio and use_visual else ("audio" if use_audio else "video")
    return steps, values, source


class TableParts(NamedTuple):
    """What ``to_table`` makes of one face's step predictions."""

    values: np.ndarray  # (K, targets) post-processed step values
    face: np.ndarray  # (K,) face flags (all 0 when the face was not used)
    columns: writer.Columns  # the per-frame rows of this face
    speaking: np.ndarray  # (K,) the voice is this face's
    confidence: np.ndarray  # (K,) share of each step's clip with this face (or the voice)


def to_table(ckpt: Checkpoint, feats: "Features", values: np.ndarray, source: str,
             use_postprocess: bool = True, face_id: int = 0,
             speaking: np.ndarray | None = None) -> TableParts:
    """Step predictions (from ``predict_features``) to what a file's CSV holds: the
    checkpoint's post-processing, the ``face`` flags, ``speaking`` (given, or the voice where
    the face is) and the confidence, and the per-frame table of face ``face_id``."""
    cfg = ckpt.config
    if use_postprocess:
        values = postprocess.apply_postprocess(values, cfg.targets, ckpt.postprocess)
    face = feats.face if source != "audio" else np.zeros(feats.n_steps, bool)
    voice = feats.voice
    speaking = (voice & face if face.any() else voice) if speaking is None else speaking & voice
    confidence = writer.clip_share(face if face.any() else voice, cfg.clip_steps)
    columns = writer.frame_columns(values, cfg.targets, cfg.rate, face, voice,
                                   feats.frame_times, face_id, speaking, confidence,
                                   feats.source_boxes() if face.any() else None)
    return TableParts(values, face, columns, speaking, confidence)


def annotate(path: str | Path, weights: str | Path | Checkpoint | None = None,
             **options) -> Annotation:
    """One-call API: ``avemo_cli.annotate("talk.mp4", weights="model.safetensors").table``."""
    return Annotator(weights, **options).annotate(path)
