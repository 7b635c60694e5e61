"""The default model's corpora: categorical speech and faces on the valence/arousal plane.

No corpus with continuous valence labels can be had for the default model, so it learns from
emotion categories placed on Russell's circumplex by a stated table (``datasets.EMOTION_VA``,
the one in the data README). Where a crowd vote distribution exists (FER+), the target is the
expected (valence, arousal) under the votes. Any such mapping is an assumption; numbers that
depend on it say so.

Readers: EmoDB (German), RAVDESS speech (English), EMOVO (Italian) and nEMO (Polish), speaker
and emotion from the file names; CREMA-D (class from the file name,
crowd-rated class from its summary table), FER+ (``ferplus.npz``: its own train/valid/test
splits; faces whose votes are mostly "unknown" or "not a face" dropped).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets import EMOTION_VA

EMODB_LETTERS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness",
                 "T": "sadness", "N": "neutral"}
RAVDESS_CODES = {"01": "neutral", "02": "calm", "03": "happiness", "04": "sadness", "05": "anger",
                 "06": "fear", "07": "disgust", "08": "surprise"}
EMOVO_CODES = {"dis": "disgust", "gio": "happiness", "neu": "neutral", "pau": "fear",
               "rab": "anger", "sor": "surprise", "tri": "sadness"}
NEMO_EMOTIONS = {"anger": "anger", "fear": "fear", "happiness": "happiness", "neutral": "neutral",
                 "sadness": "sadness", "surprised": "surprise"}
CREMAD_CODES = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happiness",
                "NEU": "neutral", "SAD": "sadness"}
CREMAD_VOTES = {"A": "anger", "D": "disgust", "F": "fear", "H": "happiness", "N": "neutral",
                "S": "sadness"}
FERPLUS_COLUMNS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                   "contempt", "unknown", "not-a-face"]
FER_CLASSES = ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]


@dataclass
class Clip:
    path: Path
    speaker: str
    emotion: str
    valence: float
    arousal: float
    corpus: str = ""


def _clip(path: Path, corpus: str, speaker: str, emotion: str) -> Clip:
    # speakers are named "<corpus>:<id>" so that ids never collide across corpora
    return Clip(path, f"{corpus}:{speaker}", emotion, *EMOTION_VA[emotion], corpus=corpus)


def emodb(folder: str | Path) -> list[Clip]:
    """EmoDB files ``SSaTTEv.wav``: speaker SS, emotion letter E (German initials)."""
    out = []
    for p in sorted(Path(folder).glob("*.wav")):
        letter = p.stem[5:6]
        if len(p.stem) != 7 or letter not in EMODB_LETTERS:
            continue
        out.append(_clip(p, "emodb", p.stem[:2], EMODB_LETTERS[letter]))
    return out


def ravdess(folder: str | Path) -> list[Clip]:
    """RAVDESS speech ``Actor_NN/03-01-EE-II-SS-RR-AA.*``: emotion EE, actor AA."""
    out = []
    for p in sorted(Path(folder).glob("Actor_*/03-01-*.*")):
        f = p.stem.split("-")
        if len(f) == 7 and f[2] in RAVDESS_CODES:
            out.append(_clip(p, "ravdess", f[6], RAVDESS_CODES[f[2]]))
    return out


def emovo(folder: str | Path) -> list[Clip]:
    """EMOVO ``<spk>/<emo>-<spk>-<sentence>.*``: Italian emotion code, speaker."""
    out = []
    for p in sorted(Path(folder).glob("*/*-*-*.*")):
        f = p.stem.split("-")
        if len(f) == 3 and f[0] in EMOVO_CODES:
            out.append(_clip(p, "emovo", f[1], EMOVO_CODES[f[0]]))
    return out


def nemo(folder: str | Path) -> list[Clip]:
    """nEMO ``<spk>/<spk>_<emotion>_<n>.*`` (Polish): the file name's emotion is the label
    (``surprised`` is surprise), the folder the speaker."""
    out = []
    for p in sorted(Path(folder).glob("*/*_*_*.*")):
        f = p.stem.split("_")
        emotion = NEMO_EMOTIONS.get(f[1]) if len(f) == 3 else None
        if emotion is not None and f[0] == p.parent.name:
            out.append(_clip(p, "nemo", f[0], emotion))
    return out


SPEECH_CORPORA = {"emodb": emodb, "ravdess": ravdess, "emovo": emovo, "nemo": nemo}


def cremad(folder: str | Path) -> list[tuple[Clip, str]]:
    """CREMA-D clips with the crowd's voice-only class from ``summaryTable_*.csv`` (or '')."""
    import pandas as pd

    folder = Path(folder)
    votes = {}
    for table in folder.glob("summaryTable*.csv"):
        t = pd.read_csv(table)
        votes.update({r.FileName: CREMAD_VOTES.get(str(r.VoiceVote).split(":")[0], "")
                      for r in t.itertuples()})
    out = []
    for p in sorted(folder.glob("*.mp3")) + sorted(folder.glob("*.wav")):
        parts = p.stem.split("_")
        if len(parts) < 3 or parts[2] not in CREMAD_CODES:
            continue
        out.append((_clip(p, "cremad", parts[0], CREMAD_CODES[parts[2]]), votes.get(p.stem, "")))
    return out


@dataclass
class FerPlus:
    images: np.ndarray  # (N, 48, 48) uint8
    targets: np.ndarray  # (N, 2) vote-expected valence, arousal
    majority: np.ndarray  # (N,) str: the most voted of the 7 FER classes ('' if contempt)
    split: np.ndarray  # (N,) 'train' | 'valid' | 'test'


def ferplus(path: str | Path) -> FerPlus:
    """FER+ faces with vote-expected targets; faces voted mostly unknown / not-a-face dropped."""
    z = np.load(path, allow_pickle=False)
    votes = z["votes"].astype(np.float64)
    emo = votes[:, :8]
    keep = (emo.sum(1) > votes[:, 8:].sum(1)) & (emo.sum(1) > 0)
    va = np.array([EMOTION_VA[c] for c in FERPLUS_COLUMNS[:8]])
    targets = (emo[keep] / emo[keep].sum(1, keepdims=True)) @ va
    seven = [FERPLUS_COLUMNS.index(c) for c in FER_CLASSES]
    top = emo[keep][:, seven]
    majority = np.array([FER_CLASSES[i] for i in top.argmax(1)])
    majority[emo[keep].argmax(1) == FERPLUS_COLUMNS.index("contempt")] = ""
    return FerPlus(z["images"][keep], targets.astype(np.float32), majority, z["split"][keep])


def nearest_class(va: np.ndarray, classes=FER_CLASSES) -> np.ndarray:
    """The class whose table point is nearest each (valence, arousal) row."""
    pts = np.array([EMOTION_VA[c] for c in classes])
    return np.array(classes)[np.argmin(((va[:, None, :] - pts[None]) ** 2).sum(-1), axis=1)]
