"""The speech recipe's scores (``report``): a clip's value is the mean of its per-step
predictions over its speech steps, beside other summaries of it (``clip_summaries``: what a user
gets by averaging its CSV); a block's value is the mean over its steps after its first ``skip``
seconds. Reported: CCC against the mapped targets (valence, arousal), the share of speakers
whose happiness is above their anger, fear, disgust and sadness, and the spread of per-clip
valence."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..metrics import ccc
from . import corpora as C
from .recordings import Recording


NEGATIVE = ("anger", "fear", "disgust", "sadness")


@dataclass
class Unit:
    """One scored unit: a clip alone, or one emotion block of a joined recording."""

    speaker: str
    corpus: str
    emotion: str
    pred: np.ndarray  # (2,) valence, arousal
    target: np.ndarray  # (2,)


def clip_summaries(r: Recording, p: np.ndarray) -> dict[str, np.ndarray]:
    """A clip's (2,) summaries, from its per-step predictions ``p``: the mean of its steps
    (``clip``), of its speech steps (``clip_speech``; silence left out), of the last half and
    the last three of its speech steps, and its last step (``clip_last``, which has heard the
    whole utterance)."""
    inside = r.valid if r.valid.any() else np.ones(len(p), bool)
    talk = np.flatnonzero(inside & r.heard)
    talk = talk if len(talk) else np.flatnonzero(inside)
    return {"clip": p[inside].mean(0), "clip_speech": p[talk].mean(0),
            "clip_last_half": p[talk[len(talk) // 2:]].mean(0),
            "clip_last_three": p[talk[-3:]].mean(0),
            "clip_last": p[np.flatnonzero(inside)[-1]]}


def units(recs: list[Recording], preds: list[np.ndarray], skip: float = 5.0
          ) -> tuple[list[Unit], list[Unit], list[Unit], list[Unit]]:
    """Clip units (mean over the clip's steps; the mean over its speech steps only, silence
    left out; and the clip's last step, which has heard the whole utterance) and block units
    (mean over a block's steps after its first ``skip`` seconds) of predicted recordings."""
    clips: list[Unit] = []
    spoken: list[Unit] = []
    lasts: list[Unit] = []
    blocks: list[Unit] = []
    for r, p in zip(recs, preds):
        if len(r.emotions) == 1:
            target = np.array(C.EMOTION_VA[r.emotions[0]])
            summary = clip_summaries(r, p)
            for kind, out in (("clip", clips), ("clip_speech", spoken), ("clip_last", lasts)):
                out.append(Unit(r.speaker, r.corpus, r.emotions[0], summary[kind], target))
            continue
        for b, emo in enumerate(r.emotions):
            m = (r.block == b) & r.valid & (r.block_start >= skip)
            if not m.any():
                m = (r.block == b) & r.valid
            if m.any():
                blocks.append(Unit(r.speaker, r.corpus, emo, p[m].mean(0),
                                   np.array(C.EMOTION_VA[emo])))
    return clips, spoken, lasts, blocks


def _means(us: list[Unit], target: int) -> dict[str, dict[str, float]]:
    """Per speaker, per emotion: the mean prediction of ``target`` (0 valence, 1 arousal)."""
    values: dict[str, dict[str, list[float]]] = {}
    for u in us:
        values.setdefault(u.speaker, {}).setdefault(u.emotion, []).append(float(u.pred[target]))
    return {spk: {e: float(np.mean(v)) for e, v in values[spk].items()}
            for spk in sorted(values)}


def happy_above_negatives(us: list[Unit]) -> dict[str, bool]:
    """Per speaker: is the mean predicted valence of happiness above that of each of anger,
    fear, disgust and sadness (those the speaker has)?"""
    return {spk: bool(all(mean["happiness"] > mean[e] for e in NEGATIVE if e in mean))
            for spk, mean in _means(us, 0).items() if "happiness" in mean}


def arousal_gaps(us: list[Unit]) -> dict[str, list[float]]:
    """Per speaker with all three: [anger - neutral, neutral - sadness] of the mean predicted
    arousal (both above 0: the order a listener expects holds; a rank check that needs no
    mapping of categories onto numbers)."""
    return {spk: [round(mean["anger"] - mean["neutral"], 4),
                  round(mean["neutral"] - mean["sadness"], 4)]
            for spk, mean in _means(us, 1).items()
            if all(e in mean for e in ("anger", "neutral", "sadness"))}


def summary(us: list[Unit]) -> dict:
    """CCCs, happy-above-negatives share of speakers, the share whose arousal orders anger >
    neutral > sadness (with each speaker's gaps) and per-clip valence spread of units."""
    if not us:
        return {}
    p = np.stack([u.pred for u in us])
    g = np.stack([u.target for u in us])
    happy = happy_above_negatives(us)
    gaps = arousal_gaps(us)
    return {"n": len(us), "speakers": len({u.speaker for u in us}),
            "valence_ccc": round(ccc(p[:, 0], g[:, 0]), 4),
            "arousal_ccc": round(ccc(p[:, 1], g[:, 1]), 4),
            "happy_above_negatives": round(float(np.mean(list(happy.values()))), 4)
            if happy else None,
            "happy_by_speaker": happy,
            "arousal_order": round(float(np.mean([min(v) > 0 for v in gaps.values()])), 4)
            if gaps else None,
            "arousal_gaps": gaps,
            "valence_std": round(float(p[:, 0].std()), 4),
            "valence_mean": round(float(p[:, 0].mean()), 4)}


def report(recs: list[Recording], preds: list[np.ndarray], skip: float = 5.0) -> dict:
    """``summary`` of clips alone (their mean, ``clip``; the mean of their speech steps,
    ``clip_speech``; their last step, ``clip_last``) and of blocks in joined recordings
    (``recording``), pooled and per corpus."""
    clips, spoken, lasts, blocks = units(recs, preds, skip)
    out = {}
    for kind, us in (("clip", clips), ("clip_speech", spoken), ("clip_last", lasts),
                     ("recording", blocks)):
        out[kind] = {"all": summary(us), **{c: summary([u for u in us if u.corpus == c])
                                            for c in sorted({u.corpus for u in us})}}
    return out
