"""Stage 5a — inference shared by annotate, train and eval: one file's features through a
model (``predict_features``: fusion or the branch the file allows, face gaps filled) and the
step predictions to a table (``to_table``: post-processing, flags, confidence, per-frame rows);
and where the networks run (``resolve_device``)."""
from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
import torch

from . import postprocess, predict, table
from .checkpoint import Checkpoint
from .config import ModelConfig
from .errors import CheckpointError, DeviceError, ModalityError, NoFaceError
from .audio import SHORTEST_AUDIO, SHORTEST_DESCRIBED
from .features import Features, nearest_index


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


class Planned(NamedTuple):
    """What the model is given of one file's features (``plan``) and which branches that is."""

    inputs: predict.StepInputs
    use_audio: bool
    use_visual: bool


def plan(cfg: ModelConfig, feats: Features,
         utterances: list[tuple[int, int]] | None = None) -> Planned:
    """The model's inputs for one file's features: both modalities when the model and the file
    have them and a face was found somewhere, else the available one (none: a one-line
    error). ``utterances`` ((first, last) steps): where a model with ``audio_lookahead`` looks
    ahead (none given: runs of the voice's steps)."""
    heard = feats.audio is not None and feats.audio.valid.any()
    use_audio = cfg.has_audio and heard
    use_visual = cfg.has_visual and feats.track is not None and feats.face.any()
    if not (use_audio or use_visual):
        if cfg.has_audio and feats.audio is not None:
            raise ModalityError(f"{feats.info.path}: its audio "
                                f"({_audio_seconds(feats):.2f} s) is too short to describe "
                                f"(under {SHORTEST_AUDIO} s)"
                                f"{' and no face was found' if cfg.has_visual else ''}")
        raise NoFaceError(f"{feats.info.path}: nothing this model can use (no face found"
                          f"{'' if cfg.has_audio else ' and no audio branch'})")
    heard_audio = feats.audio if use_audio else None
    seen = feats.track if use_visual else None
    audio_from = None
    if heard_audio is not None and cfg.audio_lookahead:
        said = utterances if utterances is not None else predict.runs(feats.voice)
        audio_from = predict.audio_sources(feats.n_steps, said, cfg.audio_lookahead)
    inputs = predict.StepInputs(heard_audio.values if heard_audio else None,
                                seen.crops if seen else None,
                                heard_audio.heard if heard_audio else None,
                                nearest_index(feats.face) if seen else None, audio_from)
    return Planned(inputs, bool(use_audio), bool(use_visual))


def from_steps(feats: Features, planned: Planned, steps: predict.StepPredictions,
               speaking: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """The values (before post-processing) and the source of one file's step predictions:
    the face alone where no voice is heard (``speaking`` (K,), when given for one of several
    faces: where this face does not speak either), steps without a face interpolated from
    neighbouring face steps (the paper's rule)."""
    if not np.isfinite(steps.values).all():
        raise CheckpointError(f"{feats.info.path}: the model's predictions are not finite (NaN "
                              f"or infinite): a damaged or diverged checkpoint")
    use_audio, use_visual = planned.use_audio, planned.use_visual
    values = steps.values
    if steps.visual_values is not None and use_audio:  # no voice heard: the face alone
        fused = feats.voice if speaking is None else feats.voice & speaking
        values = np.where(fused[:, None], values, steps.visual_values)
    values = fill_gaps(values, feats.face) if use_visual else values
    source = "av" if use_audio and use_visual else ("audio" if use_audio else "video")
    return values, source


def predict_features(predictor: predict.Predictor, feats: Features,
                     speaking: np.ndarray | None = None,
                     utterances: list[tuple[int, int]] | None = None
                     ) -> tuple[predict.StepPredictions, np.ndarray, str]:
    """``predictor``'s output for one file's features (``plan``, then ``from_steps``): the raw
    step predictions, the gap-filled values (before post-processing) and the source used."""
    planned = plan(predictor.model.cfg, feats, utterances)
    steps = predictor.many([planned.inputs])[0]
    values, source = from_steps(feats, planned, steps, speaking)
    return steps, values, source


def _audio_seconds(feats: Features) -> float:
    """Seconds of audio the file holds (as decoded, else as its container says)."""
    decoded = feats.audio.decoded if feats.audio is not None else None
    return decoded if decoded is not None else feats.info.duration


class TableParts(NamedTuple):
    """What ``to_table`` makes of one face's step predictions."""

    values: np.ndarray  # (K, targets) post-processed step values
    face: np.ndarray  # (K,) face flags (all 0 when the face was not used)
    columns: table.Columns  # the per-frame rows of this face
    speaking: np.ndarray  # (K,) the voice is this face's
    confidence: np.ndarray  # (K,) share of each step's clip with this face (or the voice)


def to_table(ckpt: Checkpoint, feats: Features, values: np.ndarray, source: str,
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
    confidence = table.clip_share(face if face.any() else voice, cfg.clip_steps)
    if not face.any():  # the voice alone: a word under a second is little to go on
        confidence = confidence * min(1.0, _audio_seconds(feats) / SHORTEST_DESCRIBED)
    columns = table.frame_columns(values, cfg.targets, cfg.rate, face, voice,
                                  feats.frame_times, face_id, speaking, confidence,
                                  feats.source_boxes() if face.any() else None)
    return TableParts(values, face, columns, speaking, confidence)
