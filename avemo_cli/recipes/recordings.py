"""The speech recipe's data: acted clips of one emotion each (EmoDB, RAVDESS, EMOVO), mapped onto
the valence/arousal plane by ``datasets.EMOTION_VA``, decoded once, and made into *recordings*
with the same per-step features as ``avemo annotate``:

- a **clip**: one utterance alone (2-14 s);
- a **joined** recording: all of one speaker's clips, grouped into one block per emotion (blocks
  of 10-60 s, in a random order), as one long recording of that speaker, so that recording-level
  normalisation sees a speaker's whole range, as it would in a minutes-long interview.

Training adds augmented copies of both (``augment``: gain, speed/pitch, microphone channel and
noise), so that the network learns what does not depend on a voice's level or a microphone.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..audio import decibels, egemaps, speech_steps, voiced
from ..cache import save_npz
from ..demux import AUDIO_RATE, probe, read_audio
from ..model import ModelConfig
from ..workers import spawn_map
from . import corpora as C


def load_clips(shared: Path, corpora=("emodb", "ravdess", "emovo", "nemo")) -> list[C.Clip]:
    """The labelled speech clips of the named corpora under ``shared`` (../shared/data)."""
    out: list[C.Clip] = []
    for name in corpora:  # each corpus in the folder of its name
        out += C.SPEECH_CORPORA[name](shared / name)
    return out


def _decode(path: str) -> np.ndarray:
    return read_audio(probe(path))


def decode_all(clips: list[C.Clip], cache: Path, jobs: int = 2) -> list[np.ndarray]:
    """Every clip's audio as annotation reads it (ffmpeg, 16 kHz mono float), cached in one
    file keyed by the clips' paths and sizes."""
    key = hashlib.sha1(json.dumps([(str(c.path), c.path.stat().st_size) for c in clips])
                       .encode()).hexdigest()[:16]
    path = cache / f"speech_audio_{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return [z[str(i)] for i in range(len(clips))]
    audio = list(spawn_map(_decode, [str(c.path) for c in clips], jobs, chunksize=16))
    save_npz(path, {str(i): a for i, a in enumerate(audio)})
    return audio


def _biquad(x: np.ndarray, b: np.ndarray, a: np.ndarray) -> np.ndarray:
    from scipy.signal import lfilter

    return lfilter(b, a, x).astype(np.float32)


def augment(x: np.ndarray, rng: np.random.Generator, sr: int = AUDIO_RATE) -> np.ndarray:
    """A random recording condition: speed (pitch and tempo) x0.88-1.12, a microphone channel
    (high-pass 50-300 Hz, often a low-pass 3-7.5 kHz), noise at 15-40 dB SNR half the time, and
    a gain of -25 to +10 dB. One call = one condition for the whole signal."""
    from scipy.signal import butter

    f = rng.uniform(0.88, 1.12)
    n = max(2, int(round(len(x) / f)))
    y = np.interp(np.arange(n) * f, np.arange(len(x)), x).astype(np.float32)
    y = _biquad(y, *butter(2, rng.uniform(50, 300) / (sr / 2), "high"))
    if rng.random() < 0.7:
        y = _biquad(y, *butter(2, rng.uniform(3000, 7500) / (sr / 2), "low"))
    if rng.random() < 0.5:
        rms = float(np.sqrt(np.mean(y ** 2))) + 1e-9
        snr = rng.uniform(15, 40)
        y = y + rng.normal(0, rms / 10 ** (snr / 20), len(y)).astype(np.float32)
    return (y * 10 ** (rng.uniform(-25, 10) / 20)).astype(np.float32)


@dataclass
class Recording:
    """One recording's per-step features and, per step, its emotion block (or -1)."""

    name: str
    speaker: str
    corpus: str
    values: np.ndarray  # (K, 88) raw eGeMAPS functionals
    valid: np.ndarray  # (K,) bool
    block: np.ndarray  # (K,) int: index into ``emotions`` of the block each step lies in
    emotions: list[str]  # per block
    block_start: np.ndarray  # (K,) float: seconds since the step's block started
    clips: list[int] = field(default_factory=list)  # clip indices it was made of
    speech: np.ndarray | None = None  # (K,) bool: speech, not silence (``audio.speech_steps``)

    @property
    def heard(self) -> np.ndarray:
        """(K,) the steps with a voice (``audio.voiced``): what the normalisation is estimated
        from and what is trained on; silence is neither."""
        return voiced(self.valid, self.speech)

    @property
    def targets(self) -> np.ndarray:
        va = np.array([C.EMOTION_VA[e] for e in self.emotions], np.float32)
        return va[self.block]


def plan_joined(clips: list[C.Clip], durations: list[float], speaker: str, seed: int,
                max_block: float = 60.0) -> list[list[int]]:
    """A speaker's clips as blocks of one emotion (at most ``max_block`` s each), in a random
    order: the list of clip indices of every block."""
    rng = np.random.default_rng(seed)
    blocks = []
    for emo in sorted({c.emotion for c in clips if c.speaker == speaker}):
        idx = [i for i, c in enumerate(clips) if c.speaker == speaker and c.emotion == emo]
        idx = [idx[j] for j in rng.permutation(len(idx))]
        cur: list[int] = []
        total = sum(durations[i] for i in idx)
        parts = max(1, int(np.ceil(total / max_block)))
        target = total / parts
        for i in idx:
            cur.append(i)
            if sum(durations[j] for j in cur) >= target:
                blocks.append(cur)
                cur = []
        if cur:
            blocks.append(cur)
    return [blocks[j] for j in rng.permutation(len(blocks))]


def step_loudness(x: np.ndarray, n: int, rate: float) -> np.ndarray:
    """(n,) RMS dB of each step's own 1/rate seconds of ``x`` (as annotate computes it)."""
    per_step = AUDIO_RATE / rate
    step = np.minimum((np.arange(len(x)) / per_step).astype(np.int64), n - 1)
    return decibels(np.bincount(step, np.square(x, dtype=np.float64), n),
                    np.bincount(step, minlength=n))


def _features(job) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Worker: (pieces of audio, augmentation seed or None, rate, window) -> features, and
    which steps hold speech."""
    pieces, seed, rate, window = job
    x = np.concatenate(pieces)
    if seed is not None:
        x = augment(x, np.random.default_rng(seed))
    n = max(1, int(np.ceil(len(x) / AUDIO_RATE * rate - 1e-6)))
    f = egemaps(x, AUDIO_RATE, n, rate, window)
    return f.values, f.valid, speech_steps(step_loudness(x, n, rate))


def _features_cached(specs, audio, clips, rate, window, cache: Path, jobs: int, log
                     ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Features of one copy's recordings, cached in one file keyed by everything they depend
    on (recordings, their conditions, the clips' paths, rate and window)."""
    key = hashlib.sha1(json.dumps([[s[0], s[3], s[4]] for s in specs] + [rate, window,
                                   [str(c.path) for c in clips], "speech"]).encode()
                       ).hexdigest()[:16]
    path = cache / f"speech_features_{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return [(z[f"v{i}"], z[f"m{i}"], z[f"s{i}"]) for i in range(len(specs))]
    jobs_in = [([audio[i] for b in s[3] for i in b], s[4], rate, window) for s in specs]
    log(f"eGeMAPS for {len(specs)} recordings ...")
    feats = list(spawn_map(_features, jobs_in, jobs, chunksize=8))
    save_npz(path, {**{f"v{i}": v for i, (v, _, _) in enumerate(feats)},
                    **{f"m{i}": m for i, (_, m, _) in enumerate(feats)},
                    **{f"s{i}": sp for i, (_, _, sp) in enumerate(feats)}})
    return feats


def build_recordings(clips: list[C.Clip], audio: list[np.ndarray], cfg: ModelConfig,
                     cache: Path, copies: int = 0, joined: bool = True, seed: int = 0,
                     jobs: int = 2, log: Callable[[str], None] = print) -> list[Recording]:
    """Clip recordings and (``joined``) one joined recording per speaker; ``copies`` > 0 adds
    that many augmented versions of each (copy c of a recording has its own condition).
    Features are cached under ``cache`` by content, condition and feature settings."""
    rate, window = cfg.rate, cfg.audio_window
    durations = [len(a) / AUDIO_RATE for a in audio]
    specs, feats = [], []  # spec: (name, speaker, corpus, clips per block, augmentation seed)
    for copy in range(copies + 1):
        aug = None if copy == 0 else seed * 1000 + copy
        part = []
        for i, c in enumerate(clips):
            part.append((f"{c.path.stem}#{copy}", c.speaker, c.corpus, [[i]],
                         None if aug is None else aug * 100000 + i))
        if joined:
            for k, spk in enumerate(sorted({c.speaker for c in clips})):
                blocks = plan_joined(clips, durations, spk, seed + copy)
                part.append((f"{spk}#joined#{copy}", spk, clips[blocks[0][0]].corpus, blocks,
                             None if aug is None else aug * 100000 + 99000 + k))
        specs += part
        feats += _features_cached(part, audio, clips, rate, window, cache, jobs, log)
    out = []
    for (name, spk, corpus, blocks, aug), (values, valid, speech) in zip(specs, feats):
        k = len(values)
        t = np.arange(k) / rate
        # block boundaries in seconds, scaled to the recording's length (an augmented copy's
        # speed change stretches every block alike)
        lengths = np.array([sum(durations[i] for i in b) for b in blocks])
        ends = np.cumsum(lengths) * (k / rate) / max(lengths.sum(), 1e-9)
        starts = np.concatenate([[0.0], ends[:-1]])
        block = np.minimum(np.searchsorted(ends, t, side="right"), len(blocks) - 1)
        out.append(Recording(name, spk, corpus, values, valid, block,
                             [clips[b[0]].emotion for b in blocks], t - starts[block],
                             [i for b in blocks for i in b], speech))
    return out
