"""The annotation of one file: a media file in, a per-frame valence/arousal table out.

    demux.probe -> features.extract (audio.py, faces.py, tracking.py, people.py)
    -> inference.plan -> Predictor.many (predict.py) -> inference.from_steps
    -> inference.to_table (postprocess.py, table.py)
    -> outputs.WRITERS

``Annotator`` holds the loaded model and the face backend, so a batch pays for them once;
``annotate(path)`` is its one-call form. ``Annotator.features`` and ``Annotator.predict`` are the
two halves of ``Annotator.annotate`` (eval predicts features it read from its cache).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np

from . import audio as audio_stage
from . import demux, faces, inference, people, predict, speakers, tracking, utterances
from .checkpoint import Checkpoint, CheckpointFile, load_checkpoint, resolve_weights
from .errors import ModalityError, NoFaceError, OrientationError
from .features import STAGES, Extracted, Features, extract, search_side
from .inference import resolve_device, to_table
from .predict import Predictor, StepPredictions
from .settings import AnnotatorSettings
from .table import Columns, as_frame, finite_list, merge_faces

if TYPE_CHECKING:  # pandas is imported only when a DataFrame is asked for
    import pandas as pd


class OrientationWarning(UserWarning):
    """No face was found as the video is displayed, but one appears when it is turned."""


class NoFaceWarning(UserWarning):
    """A video whose picture shows no face the detector can find: annotated from its voice."""


class ShortfallWarning(UserWarning):
    """Less of the media could be decoded than its container says it holds (a truncated or
    damaged file): the annotation covers only what was decoded."""


SPARK_POINTS = 40  # points per target in a file's summary (the folder report's sparkline)
SHORTFALL = (1.0, 0.05)  # seconds, share of the duration: a shorter gap is a codec's rounding


@dataclass
class Person:
    """One tracked face's results (``Annotation.people``; face 0 first)."""

    face_id: int
    track: tracking.FaceTrack | None
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
    columns: Columns
    source: str  # what the prediction used: "av", "audio" or "video"
    steps: predict.StepPredictions  # raw per-step model output and attention
    step_values: np.ndarray  # (K, targets) after face-gap interpolation and post-processing
    face: np.ndarray  # (K,) bool
    voice: np.ndarray  # (K,) bool
    track: tracking.FaceTrack | None = None
    audio_features: audio_stage.AudioFeatures | None = None
    timings: dict[str, float] = field(default_factory=dict)
    rate: float = 4.0  # analysis steps per second
    targets: list[str] = field(default_factory=lambda: ["valence", "arousal"])
    notices: list[str] = field(default_factory=list)  # what the user should know (also warned)
    people: list[Person] = field(default_factory=list)  # every face kept (--max-faces)
    model: str = ""  # the checkpoint's name
    partial: bool = False  # the media ended early: less was annotated than it says it holds
    seconds: float = 0.0  # of media annotated: its duration, or where decoding ended (partial)
    outputs: dict[str, Path] = field(default_factory=dict)  # written for it: format -> file
    utterances: list[utterances.Utterance] = field(default_factory=list)  # its speech, by
    # speaker (utterances.py)
    cues: str = "seconds"  # its subtitles' cues: per second or per utterance (settings.CUES)

    @cached_property
    def table(self) -> pd.DataFrame:
        """The rows as a pandas DataFrame (made, and pandas imported, on first use)."""
        return as_frame(self.columns)

    def evidence(self, person: Person) -> np.ndarray:
        """(K,) the steps where ``person`` has evidence of its own (its face found, or its
        voice heard) and that begin before the media ends: the values a viewer can trust (the
        EAF's annotations, the subtitles' and the pages' summaries)."""
        starts = np.arange(len(person.face)) / self.rate
        return (person.face | person.speaking) & (starts < self.info.duration)

    def shares(self) -> dict[str, float]:
        """The shares of face 0's steps with a face and with voice."""
        k = len(self.face)
        return {"face": round(float(self.face.mean()), 4) if k else 0.0,
                "voice": round(float(self.voice.mean()), 4) if k else 0.0}

    def summary(self) -> dict:
        """What a manifest record keeps of this input (the folder report shows it): face 0's
        mean valence and arousal over its steps with evidence (all steps when it has none), the
        shares of steps with a face and with voice, and a sparkline of each target (block
        means, ``SPARK_POINTS`` at most)."""
        person = self.people[0]
        values = np.clip(person.step_values, -1.0, 1.0)
        seen = self.evidence(person)
        use = seen if seen.any() else np.ones(len(seen), bool)
        k = len(values)
        out: dict = {**self.shares(), "spark": {}}
        blocks = np.array_split(np.arange(k), min(SPARK_POINTS, max(1, k)))
        for j, target in enumerate(self.targets):
            column = values[:, j]
            finite = use & np.isfinite(column)
            out[target] = round(float(column[finite].mean()), 4) if finite.any() else None
            out["spark"][target] = finite_list(np.array([
                column[b][np.isfinite(column[b])].mean() if np.isfinite(column[b]).any()
                else np.nan for b in blocks]))
        return out


class Pending(NamedTuple):
    """One file's features waiting for the model (``Annotator.predict_many``): its stage
    timings, progress callback and notices so far."""

    feats: Features
    timings: dict[str, float] | None = None
    say: Callable[[str], None] | None = None
    notices: list[str] | None = None


class _Face(NamedTuple):
    feats: Features  # the file's features with this face as the one the model sees
    speaking: np.ndarray  # (K,) bool: the voice is this face's
    planned: inference.Planned  # its inputs to the model


class _Plan(NamedTuple):
    """One file on its way through the model (``Annotator._plan`` -> ``_finish``)."""

    feats: Features
    timings: dict[str, float]
    say: Callable[[str], None]
    notices: list[str]
    said: list  # its utterances' spans (utterances.spans)
    faces: list[_Face]
    several: bool  # more than one face tracked (fusion only where each speaks)


class Annotator:
    """Annotates media files with a loaded checkpoint.

    >>> ann = Annotator("weights.safetensors", AnnotatorSettings(device="cpu"))  # doctest: +SKIP
    >>> result = ann.annotate("talk.mp4")              # doctest: +SKIP
    >>> result.table.head()                            # doctest: +SKIP
    """

    def __init__(self, weights: str | Path | CheckpointFile | Checkpoint | None = None,
                 settings: AnnotatorSettings | None = None):
        self.settings = settings = settings or AnnotatorSettings()
        self.device = resolve_device(settings.device)
        # dlib runs on the CPU whatever --device says: one dlib backend serves every device
        self.faces_device = "cpu" if settings.faces_backend == "dlib" else str(self.device)
        if isinstance(weights, Checkpoint):
            self.checkpoint = weights
        else:
            source = weights if isinstance(weights, CheckpointFile) else \
                resolve_weights(None if weights is None else str(weights))
            self.checkpoint = load_checkpoint(source, self.device)
        self.checkpoint.model.to(self.device).eval()
        self.cfg = self.checkpoint.config
        self.request = settings.features(self.cfg)  # what a file's features are made with
        self.predictor = Predictor(self.checkpoint.model, settings.stride, settings.batch_size,
                                   self.device)
        self._backend: faces.FaceBackend | None = None
        self._describer: people.Describer | None = None

    @property
    def backend(self) -> faces.FaceBackend:
        if self._backend is None:  # one per process (the CLI starts loading it early)
            self._backend = faces.shared_backend(self.settings.faces_backend, self.faces_device)
        return self._backend

    def describer(self) -> people.Describer:
        if self._describer is None:
            self._describer = people.Describer()
        return self._describer

    def annotate(self, path: str | Path, progress: Callable[[str], None] | None = None,
                 begun: Extracted | None = None) -> Annotation:
        """Annotate one file. ``progress(stage)`` is called as each stage starts; ``begun``:
        the file's features if they were made elsewhere (``extractors.py``), else they are
        extracted here."""
        pending = self.pending(path, progress, begun)
        return self.predict(*pending)

    def pending(self, path: str | Path, progress: Callable[[str], None] | None = None,
                begun: Extracted | None = None) -> Pending:
        """The first half of ``annotate``: one file probed and its features made (or taken
        from ``begun``), waiting for the model (``predict``, ``predict_many``)."""
        say = progress or (lambda stage: None)
        timings = dict.fromkeys(STAGES, 0.0)
        t0 = time.perf_counter()
        say("demux")
        # (a file begun elsewhere was probed there)
        info = begun.features.info if begun is not None else demux.probe(path)
        timings["demux"] += time.perf_counter() - t0
        feats, notices = self.features(info, timings, say, begun)
        return Pending(feats, timings, say, notices)

    def features(self, info: demux.MediaInfo, timings: dict[str, float],
                 say: Callable[[str], None], begun: Extracted | None = None
                 ) -> tuple[Features, list[str]]:
        """The features of a probed file for this model (``begun`` elsewhere, or extracted
        here), and the notices a user should see about them."""
        cfg = self.cfg
        name = self.checkpoint.path or "the checkpoint"
        use_audio = info.has_audio and cfg.has_audio
        use_visual = info.has_video and cfg.has_visual
        if not info.has_video and not cfg.has_audio:
            raise ModalityError(f"{info.path}: audio-only input, but {name} has no audio branch "
                                f"(a video-only model)")
        if info.has_video and not use_audio and not use_visual:
            raise ModalityError(f"{info.path}: no audio track, and {name} has no visual branch "
                                f"(an audio-only model)")
        if begun is not None:  # extracted in another process while this one was busy
            feats = begun.features
            for k, v in begun.timings.items():
                timings[k] += v
        else:
            feats = extract(info, self.request, lambda: self.backend, timings, say,
                            describer=self.describer)
        notices = []
        if info.audio_tracks > 1 and use_audio:
            notices.append(f"{info.path}: it has {info.audio_tracks} audio tracks; the first is "
                           f"annotated")
            warnings.warn(notices[-1], UserWarning, stacklevel=4)
        if info.unused_video:
            notices.append(f"{info.path}: {info.unused_video}: annotated from its audio alone")
            warnings.warn(notices[-1], UserWarning, stacklevel=4)
        shortfall = _shortfall(feats)
        if shortfall:
            notices.append(shortfall)
            warnings.warn(notices[-1], ShortfallWarning, stacklevel=4)
        if use_visual and tracking.upside_down(feats.track):
            tag = f" (its rotation tag says {info.rotation} degrees: the tag may be wrong)" \
                if info.rotation else ""
            raise OrientationError(f"{info.path}: the face is upside down as the video is "
                                   f"displayed{tag}; turn the picture 180 degrees and annotate "
                                   f"it again")
        if use_visual and not feats.face.any():
            turned = self.turned_face(info)
            if not use_audio:
                why = "no audio track" if not info.has_audio else f"{name} has no audio branch"
                raise NoFaceError(f"{info.path}: no face found in the video ({why})"
                                  + (f"; {turned}" if turned else ""))
            if turned:
                notices.append(f"{info.path}: no face found as the video is displayed, so its "
                               f"valence and arousal come from the voice alone; {turned}")
                warnings.warn(notices[-1], OrientationWarning, stacklevel=4)
            else:
                smallest = _smallest(info, self.settings.max_side)
                notices.append(f"{info.path}: no face found in its picture ({smallest}), so its "
                               f"valence and arousal come from the voice alone")
                warnings.warn(notices[-1], NoFaceWarning, stacklevel=4)
        return feats, notices

    def predict(self, feats: Features, timings: dict[str, float] | None = None,
                say: Callable[[str], None] | None = None,
                notices: list[str] | None = None) -> Annotation:
        """The model's annotation of one file's features: every tracked face's predictions
        (the voice fused where the face speaks) and the table of them all."""
        made = self.predict_many([Pending(feats, timings, say, notices)])[0]
        if isinstance(made, Exception):
            raise made
        return made

    def predict_many(self, files: list[Pending]) -> list[Annotation | Exception]:
        """``predict`` of several files' features at once, their clips sharing the model's
        batches (``Predictor.many``: on a GPU fed by many extraction processes, a batch of
        every file queued). Each file's result, or the error that file alone raised (no
        usable stream, predictions that are not finite, or a bug); an error of the shared
        model call is every file's."""
        plans: list[_Plan | Exception] = []
        for pending in files:
            try:
                plans.append(self._plan(pending))
            except Exception as err:  # (KeyboardInterrupt is raised)
                plans.append(err)
        ready = [p for p in plans if isinstance(p, _Plan)]
        t1 = time.perf_counter()
        inputs = [face.planned.inputs for p in ready for face in p.faces]
        try:
            steps = iter(self.predictor.many(inputs) if inputs else [])
        except Exception as err:
            return [err] * len(files)
        seconds = time.perf_counter() - t1
        total = sum(p.feats.n_steps for p in ready) or 1
        out: list[Annotation | Exception] = []
        for p in plans:
            if isinstance(p, Exception):
                out.append(p)
                continue
            p.timings["model"] += seconds * p.feats.n_steps / total  # (its share of the
            mine = [next(steps) for _ in p.faces]  # shared batches)
            try:
                out.append(self._finish(p, mine))
            except Exception as err:
                out.append(err)
        return out

    def _plan(self, pending: Pending) -> _Plan:
        """One file's inputs to the model: who speaks when, and each tracked face's inputs."""
        feats = pending.feats
        say = pending.say or (lambda stage: None)
        say("model")
        timings = pending.timings if pending.timings is not None else \
            dict.fromkeys(STAGES, 0.0)
        cfg, info = self.cfg, feats.info
        t1 = time.perf_counter()
        use_visual = info.has_video and cfg.has_visual
        tracks = feats.tracks if use_visual and feats.face.any() else []
        loudness = feats.audio.loudness if feats.audio is not None else None
        said = utterances.spans(feats, cfg.rate, self.settings.pause)
        said_steps = utterances.step_spans(said, cfg.rate, feats.n_steps)
        talk = speakers.speaking(tracks, loudness, feats.voice, said_steps)
        faces_in = []
        for i in range(max(1, len(tracks))):
            one = feats.for_face(i) if tracks else feats
            speaking = talk[i] if tracks else feats.voice
            faces_in.append(_Face(one, speaking, inference.plan(cfg, one, said_steps)))
        timings["model"] += time.perf_counter() - t1
        return _Plan(feats, timings, say, pending.notices or [], said, faces_in,
                     len(tracks) > 1)

    def _finish(self, p: _Plan, steps_of: list[StepPredictions]) -> Annotation:
        """A planned file's annotation from its faces' step predictions."""
        ckpt, cfg, feats, info = self.checkpoint, self.cfg, p.feats, p.feats.info
        results = []
        for face, steps in zip(p.faces, steps_of):
            values, source = inference.from_steps(
                face.feats, face.planned, steps, face.speaking if p.several else None)
            results.append((face.feats, steps, values, source, face.speaking))
        p.say("postprocess")
        t1 = time.perf_counter()
        persons, tables = [], []
        for i, (one, steps, values, source, speaking) in enumerate(results):
            made = to_table(ckpt, one, values, source, self.settings.postprocess, face_id=i,
                            speaking=speaking)
            persons.append(Person(i, one.track, steps, made.values, made.face, made.speaking,
                                  made.confidence))
            tables.append(made.columns)
        columns = merge_faces(tables)
        spoken = utterances.find(feats, persons, p.said, list(cfg.targets), cfg.rate,
                                 cfg.clip_steps,
                                 ckpt.postprocess if self.settings.postprocess else None)
        p.timings["postprocess"] += time.perf_counter() - t1
        first, (_, steps, _, source, _) = persons[0], results[0]
        partial = bool(_shortfall(feats))
        return Annotation(info.path, info, columns, source, steps, first.step_values,
                          first.face, feats.voice, feats.track, feats.audio, p.timings,
                          cfg.rate, list(cfg.targets), p.notices, persons, _model_name(ckpt),
                          partial=partial, seconds=(feats.decoded_until() or 0.0) if partial
                          else info.duration, utterances=spoken,
                          cues=self.settings.cues)

    def turned_face(self, info: demux.MediaInfo, n: int = 6) -> str:
        """When no face was found: a few frames tried in the other three orientations. Says
        how the picture must be turned for faces to appear ("" if that finds none either)."""
        frames = demux.sample_frames(info, n, self.settings.max_side,
                                     gray=self.cfg.channels == 1)
        k = faces.turn_with_faces(frames, self.backend)
        if not k:
            return ""
        return (f"a face appears when the picture is rotated {faces.TURNS[k]} (the file's "
                f"rotation tag says {info.rotation} degrees; it may be wrong or the camera was "
                f"held sideways): rotate the video and annotate it again")


def _smallest(info: demux.MediaInfo, max_side: int) -> str:
    """The smallest face the search could have found in ``info``'s picture, in its pixels: at
    the analysis size, or at the wide search's (``features.wider_side``)."""
    full = max(info.width, info.height)
    searched = search_side(info, max_side) or max_side
    px = int(np.ceil(faces.DETECTABLE_PX * full / searched))
    return f"faces under about {px} px high in its {info.width}x{info.height} frame are not found"


def _shortfall(feats: Features) -> str:
    """What the user must know when less of the file was decoded than its container says it
    holds ("" when all of it was, or when that is not known)."""
    end, duration = feats.decoded_until(), feats.info.duration
    if end is None or duration - end <= max(SHORTFALL[0], SHORTFALL[1] * duration):
        return ""
    return (f"{feats.info.path}: only {end:.2f} s of its {duration:.2f} s could be decoded (a "
            f"truncated or damaged file?): the rest is not annotated")


def _model_name(ckpt: Checkpoint) -> str:
    return Path(ckpt.path).name if ckpt.path else "in-memory checkpoint"


def annotate(path: str | Path, weights: str | Path | Checkpoint | None = None,
             **settings) -> Annotation:
    """One-call API: ``avemo_cli.annotate("talk.mp4", weights="model.safetensors").table``;
    keyword arguments are ``AnnotatorSettings``' fields (``device="cpu"``, ``max_faces=2``)."""
    return Annotator(weights, AnnotatorSettings(**settings)).annotate(path)
