"""Stage 3e — who is speaking, when several faces are tracked (``--max-faces`` above 1).

The voice is one track for the whole file; with several faces its features belong to the face
that is speaking. Per face and step the mouth opening is measured from the landmarks (inner
lips, 61-67 in the iBUG numbering, over the nose-to-chin length, so distance to the camera
does not matter), and its movement (change between steps) is correlated with the voice's
loudness (RMS per step, dB) over the analysis window (``WINDOW`` steps ending at the step): the
face whose mouth moves most with the voice speaks (the highest correlation, even a weak one: a
mouth that moves a lot but not with this voice is not the speaker's). A face must be found at
the step and the voice heard; where no correlation can be computed (fewer than 4 steps, a still
mouth) the face whose mouth moves most is taken. With one face the voice is that face's (the
single-face behaviour).
"""
from __future__ import annotations

import numpy as np

from .tracking import FaceTrack
from .features import fit_length

WINDOW = 16  # steps (4 s at 4 steps/s: the model's clip)
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


def _windowed(x: np.ndarray, k: int) -> np.ndarray:
    return x[max(0, k - WINDOW + 1):k + 1]


def speaking(tracks: list[FaceTrack], loudness: np.ndarray | None, voice: np.ndarray
             ) -> np.ndarray:
    """(faces, K) bool: which face the voice belongs to at each step (at most one)."""
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
        lk = _windowed(loud, k)
        faces_here = np.flatnonzero(found[:, k])
        scores, moving = [], []
        for i in faces_here:
            mk = _windowed(movement[i], k)
            ok = np.isfinite(mk) & np.isfinite(lk)
            score = -np.inf  # undefined: too few steps, or a still mouth or voice
            if ok.sum() >= 4 and mk[ok].std() > 0 and lk[ok].std() > 0:
                score = float(np.corrcoef(mk[ok], lk[ok])[0, 1])
            scores.append(score)
            moving.append(float(np.nanmean(mk)) if np.isfinite(mk).any() else 0.0)
        # the best correlation, even if weak: a mouth that moves without the voice (a listener
        # mouthing, another person's video) moves a lot but not with this voice
        pick = int(np.argmax(scores)) if np.isfinite(max(scores)) else int(np.argmax(moving))
        out[faces_here[pick], k] = True
    return out
