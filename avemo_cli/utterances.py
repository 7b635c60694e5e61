"""Stage 5c — utterances: a speaker's stretches of speech, the unit researchers report.

Speech is found in the loudness of every 50 ms of the audio (``AudioFeatures.envelope``):
above the file's speech level (``audio.speech_level``, the level its ``voice`` column uses),
in stretches that overlap the steps with a voice (a steady hum has none). Stretches separated
by a pause shorter than ``pause`` seconds (default ``PAUSE``) are one utterance; a stretch
shorter than ``SHORTEST`` is a click, not speech. With several faces (``--max-faces``) an
utterance is split where the speaking face changes (``speakers.py`` decides it per turn),
at the quietest 50 ms between the two turns, and each part is the speaking face's
(``face_id``; None when no face speaks: an audio file, a voice off screen).

An utterance's values are those of its speaker's steps that have heard all of it, as much as
the model's clip holds: its last step when it is no longer than one clip (``clip_steps``),
else every step from the first whose clip lies wholly inside it. So a 2 s sentence is valued
by the step at its end (which heard all of it), not by the mean over its steps, whose first
ones had heard only its first syllables. The fused value (``valence``, ``arousal``: what the
CSV holds, after the checkpoint's post-processing) is given beside the voice head's and the
face head's alone (through the same post-processing; the face's over its steps with a face).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import audio as audio_stage
from .postprocess import apply_postprocess
from .speakers import speaker_index, turns

if TYPE_CHECKING:
    from .features import Features
    from .pipeline import Person

PAUSE = 0.5  # seconds: speech separated by a shorter pause is one utterance
SHORTEST = 0.1  # seconds: a shorter stretch of sound, alone, is not speech (a click, a knock)
COLUMNS = ["utterance", "start", "end", "face_id", "valence", "arousal", "voice_valence",
           "voice_arousal", "face_valence", "face_arousal", "face_share", "speech_share",
           "confidence", "steps"]


@dataclass(frozen=True)
class Utterance:
    """One utterance; times in seconds on the media's timeline."""

    index: int
    start: float
    end: float
    face_id: int | None  # the speaking face (None: no face speaks)
    values: dict[str, float | None]  # target -> the fused value (what the CSV holds)
    voice_values: dict[str, float | None]  # target -> the voice head alone (None: no voice head)
    face_values: dict[str, float | None]  # target -> the face head alone (None: no face seen)
    face_share: float  # share of its steps where its speaker's face (face 0's: no speaker) was
    # found
    speech_share: float  # share of its steps with a voice
    confidence: float  # the mean confidence of the steps its values come from
    steps: int  # analysis steps it spans

    def row(self, targets: list[str]) -> dict:
        """The utterance as a row of the segments table (``COLUMNS``; None: no value)."""
        out: dict = {"utterance": self.index, "start": round(self.start, 3),
                     "end": round(self.end, 3), "face_id": self.face_id,
                     "face_share": self.face_share, "speech_share": self.speech_share,
                     "confidence": self.confidence, "steps": self.steps}
        for target in ("valence", "arousal"):
            here = target in targets
            out[target] = self.values.get(target) if here else None
            out[f"voice_{target}"] = self.voice_values.get(target) if here else None
            out[f"face_{target}"] = self.face_values.get(target) if here else None
        return {name: out[name] for name in COLUMNS}

    def label(self, targets: list[str]) -> str:
        """Its values in words (``valence +0.42  arousal -0.10``: the EAF's)."""
        return "  ".join(f"{t} {self.values[t]:+.2f}" for t in targets
                         if self.values.get(t) is not None)


def speech_spans(envelope: np.ndarray, env_rate: float, level: float,
                 pause: float = PAUSE) -> list[tuple[float, float]]:
    """(start, end) seconds of the stretches of ``envelope`` (dB per 1/env_rate s) above
    ``level``, joined across pauses shorter than ``pause``, each at least ``SHORTEST`` long."""
    loud = np.isfinite(envelope) & (envelope > level)
    if not loud.any():
        return []
    edges = np.diff(np.concatenate([[0], loud.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    spans: list[list[float]] = []
    for a, b in zip(starts / env_rate, ends / env_rate):
        if spans and a - spans[-1][1] < pause:
            spans[-1][1] = b
        else:
            spans.append([a, b])
    return [(float(a), float(b)) for a, b in spans if b - a >= SHORTEST - 1e-9]


def step_range(start: float, end: float, rate: float, n_steps: int) -> np.ndarray:
    """The steps of a span: from the first at or after its start to the first at or after its
    end (whose window has heard all of it); at least one."""
    first = min(n_steps - 1, int(np.ceil(start * rate - 1e-6)))
    last = min(n_steps - 1, max(first, int(np.ceil(end * rate - 1e-6))))
    return np.arange(first, last + 1)


def _quietest(envelope: np.ndarray, env_rate: float, a: float, b: float) -> float:
    """The middle of the quietest 50 ms between times ``a`` and ``b`` (a turn's boundary)."""
    lo, hi = int(np.floor(a * env_rate)), int(np.ceil(b * env_rate))
    part = envelope[lo:hi] if hi > lo else np.zeros(0)
    finite = np.isfinite(part)
    if not finite.any():
        return (a + b) / 2
    return (lo + int(np.argmin(np.where(finite, part, np.inf))) + 0.5) / env_rate


def _mean(values: np.ndarray | None, rows: np.ndarray) -> float | None:
    if values is None or not len(rows):
        return None
    v = values[rows]
    v = v[np.isfinite(v)]
    return round(float(np.clip(v, -1, 1).mean()), 4) if len(v) else None


def _loudness(feats: Features, rate: float) -> tuple[np.ndarray, float, float]:
    """What one file's speech is found in: its audio's 50 ms envelope, its rate and the file's
    speech level (``audio.speech_level``); for features without an envelope (from the cache),
    the steps' voice flags as a loudness of 0 or -inf, at the analysis rate, and a level of -1.
    (The file has a voice: where its speech level is None, no step has one.)"""
    a = feats.audio
    level = audio_stage.speech_level(a.loudness)[0] \
        if a is not None and a.loudness is not None else None
    if a is not None and a.envelope is not None and level is not None:
        # (-inf: no step had samples of its own)
        return a.envelope, float(audio_stage.ENVELOPE_RATE), max(level, audio_stage.SPEECH_FLOOR)
    return np.where(feats.voice, 0.0, -np.inf), rate, -1.0


def spans(feats: Features, rate: float, pause: float = PAUSE) -> list[tuple[float, float]]:
    """(start, end) seconds of one file's stretches of speech (``speech_spans`` of its audio's
    envelope at its speech level), those that hold steps with a voice, within the media."""
    if feats.audio is None or not feats.voice.any():
        return []
    envelope, env_rate, level = _loudness(feats, rate)
    n = feats.n_steps
    end_of_media = feats.info.duration if feats.info.duration > 0 else n / rate
    out = []
    for start, end in speech_spans(envelope, env_rate, level, pause):
        end = min(end, end_of_media)
        if end > start and feats.voice[step_range(start, end, rate, n)].any():
            out.append((start, end))
    return out


def step_spans(times: list[tuple[float, float]], rate: float, n_steps: int
               ) -> list[tuple[int, int]]:
    """``spans`` as (first, last) steps (``step_range``): speakers.speaking's turns."""
    return [(int(r[0]), int(r[-1])) for r in (step_range(a, b, rate, n_steps) for a, b in times)]


def find(feats: Features, people: list[Person], said: list[tuple[float, float]],
         targets: list[str], rate: float, clip_steps: int, postprocess: dict | None = None
         ) -> list[Utterance]:
    """The utterances of one annotated file: its stretches of speech ``said`` (``spans``)
    split into turns where the speaking face changes, with every face's results
    (``Annotation.people``), the model's targets, analysis rate and clip length, and the
    checkpoint's post-processing (applied to the heads' values as to the fused ones)."""
    if feats.audio is None or not said:
        return []
    n, voice = feats.n_steps, feats.voice
    envelope, env_rate, _ = _loudness(feats, rate)
    speaking = np.stack([p.speaking for p in people])
    heads = [_heads(p, targets, postprocess) for p in people]
    out: list[Utterance] = []
    for start, end in said:
        steps = step_range(start, end, rate, n)
        who = speaker_index(speaking[:, steps])
        parts = turns(who) if len(people) > 1 else [(0, len(steps) - 1, int(who.max()))]
        bounds = [start] + [_quietest(envelope, env_rate, steps[b] / rate, steps[c] / rate)
                            for (_, b, _), (c, _, _) in zip(parts, parts[1:])] + [end]
        for (_, _, face), t0, t1 in zip(parts, bounds, bounds[1:]):
            part = step_range(t0, t1, rate, n)
            person = people[face] if face >= 0 else people[0]
            if face >= 0 and not person.face[part].any():
                face = -1  # (an audio file's voice, a face lost all through: no face speaks)
            use = part[min(len(part), clip_steps) - 1:]
            voice_head, face_head = heads[max(face, 0)]
            seen = use[person.face[use]]
            out.append(Utterance(
                len(out), round(float(t0), 3), round(float(t1), 3), None if face < 0 else face,
                {t: _mean(person.step_values[:, j], use) for j, t in enumerate(targets)},
                {t: _mean(None if voice_head is None else voice_head[:, j], use)
                 for j, t in enumerate(targets)},
                {t: _mean(None if face_head is None else face_head[:, j], seen)
                 for j, t in enumerate(targets)},
                round(float(person.face[part].mean()), 4), round(float(voice[part].mean()), 4),
                round(float(person.confidence[use].mean()), 4), len(part)))
    return out


def _heads(person: Person, targets: list[str], postprocess: dict | None
           ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A face's voice-head and face-head step values, post-processed as the fused ones are."""
    def chain(values):
        if values is None:
            return None
        return apply_postprocess(values, targets, postprocess) if postprocess else values
    return chain(person.steps.audio_values), chain(person.steps.visual_values)


def table(utterances: list[Utterance], targets: list[str]) -> dict[str, np.ndarray]:
    """The segments table: one row per utterance, the columns of ``COLUMNS`` (an empty value:
    NaN)."""
    rows = [u.row(targets) for u in utterances]
    out: dict[str, np.ndarray] = {}
    for name in COLUMNS:
        values = [r[name] for r in rows]
        if name in ("utterance", "steps"):
            out[name] = np.array(values, np.int64)
        else:
            out[name] = np.array([np.nan if v is None else v for v in values], np.float64)
    return out
