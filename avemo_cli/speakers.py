"""Stage 3e — who is speaking, when several faces are tracked (``--max-faces`` above 1).

The voice is one track for the whole file; with several faces its features belong to the face
that is speaking. Per face and step the mouth opening is measured from the landmarks (inner
lips, 61-67 in the iBUG numbering, over the nose-to-chin length, so distance to the camera
does not matter), and its movement (change between steps) is correlated with the voice's
loudness (RMS per step, dB) over the analysis window (``WINDOW`` steps ending at the step): the
face whose mouth moves most with the voice speaks (the highest correlation, even a weak one: a
mouth that moves a lot but not with this voice is not the speaker's). A face must be found at
the step and the voice heard; where no correlation can be computed (fewer than 4 steps, a still
mouth) the face whose mouth moves most is taken. Inside a stretch of speech (an utterance,
utterances.py) the choice is then made per turn: the stretch is split where the per-step choice
changes for a while, and each turn goes to the face whose mouth moves most with the voice over
that turn (so a speaker who follows another after a short pause is not judged by a window
still full of the first one's speech). With one face the voice is that face's (the
single-face behaviour).
"""
from __future__ import annotations

import numpy as np

from .tracking import FaceTrack
from .features import fit_length

WINDOW = 16  # steps (4 s at 4 steps/s: the model's clip)
TURN_STEPS = 2  # a face chosen for fewer steps inside another's turn does not make a turn
CONTEXT = 2  # steps either side of a turn (0.5 s) its speaker is judged with
UPPER, LOWER = [61, 62, 63], [67, 66, 65]  # inner-lip points, paired top/bottom (0-based)


def mouth_opening(track: FaceTrack) -> np.ndarray:
    """(K,) inner-lip opening over the nose-bridge-to-chin length; NaN where no face."""
    lm = track.landmarks.astype(np.float64)
    gap = np.linalg.norm(lm[:, UPPER] - lm[:, LOWER], axis=2).mean(1)
    scale = np.linalg.norm(lm[:, 27] - lm[:, 8], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = gap / scale
    out[~track.found] = np.nan
    return out


def _score(movement: np.ndarray, loudness: np.ndarray) -> float:
    """How a mouth's movement follows the voice's loudness: their correlation over the steps
    where both are known; -inf where it cannot be computed (fewer than 4 steps, a still mouth
    or voice)."""
    ok = np.isfinite(movement) & np.isfinite(loudness)
    if ok.sum() >= 4 and movement[ok].std() > 0 and loudness[ok].std() > 0:
        return float(np.corrcoef(movement[ok], loudness[ok])[0, 1])
    return -np.inf


def _pick(faces_here: np.ndarray, movement: list[np.ndarray], loud: np.ndarray,
          span: slice) -> int:
    """Which of ``faces_here`` speaks over the steps ``span``: the best correlation, even if
    weak (a mouth that moves without the voice, a listener mouthing or another person's video,
    moves a lot but not with this voice); where none can be computed, the mouth moving most."""
    scores = [_score(movement[i][span], loud[span]) for i in faces_here]
    if np.isfinite(max(scores)):
        return int(faces_here[int(np.argmax(scores))])
    moving = [float(np.nanmean(movement[i][span])) if np.isfinite(movement[i][span]).any()
              else 0.0 for i in faces_here]
    return int(faces_here[int(np.argmax(moving))])


def speaker_index(speaking: np.ndarray) -> np.ndarray:
    """(K,) the face that speaks at each step of a (faces, K) ``speaking`` (at most one per
    step), -1 where none does."""
    who = np.full(speaking.shape[1], -1)
    for i in range(len(speaking)):
        who[speaking[i]] = i
    return who


def turns(speakers: np.ndarray, shortest: int = TURN_STEPS) -> list[tuple[int, int, int]]:
    """(first, last, who) runs of one speaker over consecutive steps (``speakers``: a face
    index per step, -1 where no face speaks). Steps where no face speaks join the run before
    them (the first ones, the run after), and runs shorter than ``shortest`` steps join the one
    before them (a first one, the one after)."""
    who = speakers.copy()
    known = np.flatnonzero(who >= 0)
    if len(known):
        who[: known[0]] = who[known[0]]
        for k in range(known[0] + 1, len(who)):
            if who[k] < 0:
                who[k] = who[k - 1]
    runs: list[list[int]] = []
    for k, w in enumerate(who.tolist()):
        if runs and runs[-1][2] == w:
            runs[-1][1] = k
        else:
            runs.append([k, k, w])
    merged: list[list[int]] = []
    for run in runs:
        if merged and (run[1] - run[0] + 1 < shortest or merged[-1][2] == run[2]):
            merged[-1][1] = run[1]
        else:
            merged.append(run)
    if len(merged) > 1 and merged[0][1] - merged[0][0] + 1 < shortest:
        merged[1][0] = merged[0][0]
        merged.pop(0)
    return [(a, b, w) for a, b, w in merged]


def speaking(tracks: list[FaceTrack], loudness: np.ndarray | None, voice: np.ndarray,
             spans: list[tuple[int, int]] | None = None) -> np.ndarray:
    """(faces, K) bool: which face the voice belongs to at each step (at most one). At each
    step with a voice, the face whose mouth moves most with it over the ``WINDOW`` steps ending
    there. Inside each stretch of speech of ``spans`` ((first, last) steps, e.g. utterances.py's
    ``spans``) the speaker is then decided per turn, not per step: the stretch is split where
    that per-step choice changes for ``TURN_STEPS`` steps or more (``turns``), and each turn is
    given to the face whose mouth moves most with the voice over the turn itself and
    ``CONTEXT`` steps either side (a window reaching back into the previous speaker's turn
    no longer decides it)."""
    n = len(voice)
    out = np.zeros((len(tracks), n), bool)
    if not tracks:
        return out
    found = np.stack([fit_length(t.found, n, False) for t in tracks])
    if len(tracks) == 1:
        out[0] = voice & found[0]
        return out
    movement = []
    for t in tracks:
        o = fit_length(mouth_opening(t), n, np.nan)
        movement.append(np.abs(np.diff(o, prepend=np.nan)))
    loud = fit_length(loudness, n, np.nan) if loudness is not None else np.full(n, np.nan)
    for k in np.flatnonzero(voice & found.any(0)).tolist():
        window = slice(max(0, k - WINDOW + 1), k + 1)
        out[_pick(np.flatnonzero(found[:, k]), movement, loud, window), k] = True
    for first, last in spans or []:
        for a, b, _ in turns(speaker_index(out[:, first:last + 1])):
            steps = slice(first + a, first + b + 1)
            here = np.flatnonzero(found[:, steps].any(1))
            if not len(here) or not voice[steps].any():
                continue
            context = slice(max(0, first + a - CONTEXT), min(n, first + b + 1 + CONTEXT))
            face = _pick(here, movement, loud, context)
            out[:, steps] = False
            out[face, steps] = voice[steps] & found[face, steps]
    return out
