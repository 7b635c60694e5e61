"""Cross-corpus speech emotion for the audio branch: the default model's recipe and its benchmark.

Labelled speech here is acted clips of one emotion each (EmoDB, RAVDESS, EMOVO), mapped onto
the valence/arousal plane by ``datasets.EMOTION_VA``. From them this module builds two kinds of
*recording*, both annotated by the same inference path as ``avemo annotate``
(``predict.predict_steps``, which applies the checkpoint's audio normalisation):

- a **clip**: one utterance alone (2-14 s);
- a **joined** recording: all of one speaker's clips, grouped into one block per emotion (blocks
  of 10-60 s, in a random order), as one long recording of that speaker, so that recording-level
  normalisation sees a speaker's whole range, as it would in a minutes-long interview.

Training adds augmented copies of both (``augment``: gain, speed/pitch, microphone channel and
noise), so that the network learns what does not depend on a voice's level or a microphone.

Scoring (``score``): a clip's value is the mean of its per-step predictions (what a user gets by
averaging its CSV); a block's value is the mean over its steps after its first ``skip``
seconds. Reported: CCC against the mapped targets (valence, arousal), the share of speakers
whose happiness is above their anger, fear, disgust and sadness, and the spread of per-clip
valence. ``svr_probe`` fits the cheap baseline the network must beat: an RBF support-vector
regressor on the same per-step eGeMAPS functionals, normalised the same way.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..audio import decibels, egemaps, speech_steps, voiced
from ..cache import save_npz
from ..workers import spawn_map
from ..demux import AUDIO_RATE, probe, read_audio
from ..metrics import ccc
from ..model import AVModel, ModelConfig
from ..predict import clip_steps, predict_steps
from ..train import audio_statistics
from . import corpora as C

NEGATIVE = ("anger", "fear", "disgust", "sadness")

# The default model's audio recipe (examples/train_default.py; benchmarks/bench_crosscorpus.py
# defaults to the same): the paper's audio branch with recording-level normalisation (a 30 s
# prior), 4,000 batches of 64 steps, six augmented copies of every recording.
AUDIO_CONFIG = {"modality": "audio", "audio_hidden": 64, "audio_layers": 4,
                "audio_norm": "recording", "audio_norm_prior": 30.0}
UPDATES = 4000
COPIES = 6


# ----------------------------------------------------------------------------- audio

def load_clips(shared: Path, corpora=("emodb", "ravdess", "emovo")) -> list[C.Clip]:
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


# ----------------------------------------------------------------------------- recordings

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


# ----------------------------------------------------------------------------- training

def training_rows(recs: list[Recording], skip: float, balance: str = "corpus"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) [recording, step] rows to train on and their sampling weights: steps with a voice
    (``Recording.heard``; in a joined recording, at least ``skip`` s into their block); every
    (corpus, clip or joined) group gets the same total weight (``balance="corpus"``: no corpus
    or kind outweighs the others), or every (speaker, clip or joined) group (``"speaker"``)."""
    rows, groups = [], []
    for i, r in enumerate(recs):
        ok = r.heard & ((r.block_start >= skip) | (len(r.emotions) == 1))
        steps = np.flatnonzero(ok)
        rows.append(np.stack([np.full(len(steps), i), steps], 1))
        who = r.corpus if balance == "corpus" else r.speaker
        groups += [(who, len(r.emotions) > 1)] * len(steps)
    out = np.concatenate(rows)
    names = {g: k for k, g in enumerate(sorted(set(groups)))}
    gid = np.array([names[g] for g in groups])
    counts = np.bincount(gid)
    w = 1.0 / counts[gid]
    return out, w / w.sum()


def fit(recs: list[Recording], cfg: ModelConfig, updates: int = 3000, batch: int = 64,
        lr: float = 1e-3, seed: int = 0, skip: float = 2.0, loss: str = "mse",
        balance: str = "corpus", log: Callable[[str], None] | None = None) -> AVModel:
    """Train an audio model on the recordings' steps against the mapped targets: ``mse``, or
    ``mse+ccc`` (MSE plus 1 - CCC per target over the batch, which rewards spreading the
    predictions as far as the targets spread)."""
    from ..train import loss_fn

    torch.manual_seed(seed)
    model = AVModel(cfg)
    branch = model.audio
    assert branch is not None, "the speech recipe trains an audio model"
    mean, std = audio_statistics([r.values[r.heard] for r in recs])
    branch.mean.copy_(torch.from_numpy(mean))
    branch.std.copy_(torch.from_numpy(std))
    feats = [branch.adapt(r.values, r.heard) for r in recs]
    targets = [r.targets for r in recs]
    rows, weights = training_rows(recs, skip, balance)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, updates)
    t = cfg.clip_steps
    model.train()
    for u in range(updates):
        pick = rows[rng.choice(len(rows), batch, p=weights)]
        x = torch.from_numpy(np.stack([feats[i][clip_steps(np.array([k]), t)[0]]
                                       for i, k in pick]))
        y = torch.from_numpy(np.stack([targets[i][k] for i, k in pick]))
        pred = model(audio=x)["pred"]
        err = loss_fn(pred, y, "mse")
        if loss == "mse+ccc":
            err = err + loss_fn(pred, y, "ccc")
        opt.zero_grad()
        err.backward()
        opt.step()
        sched.step()
        if log and (u + 1) % 1000 == 0:
            log(f"  update {u + 1}/{updates}: loss {err.item():.4f}")
    return model.eval()


def predict(model: AVModel, recs: list[Recording]) -> list[np.ndarray]:
    """Per-step predictions of each recording through annotation's own inference path."""
    return [predict_steps(model, audio=r.values, audio_valid=r.heard).values for r in recs]


def svr_probe(model: AVModel, train: list[Recording], test: list[Recording], n: int = 6000,
              seed: int = 0, skip: float = 2.0) -> list[np.ndarray]:
    """The cheap baseline: an RBF SVR per target on single steps' eGeMAPS functionals,
    normalised exactly as ``model`` normalises them, trained on ``n`` steps drawn as the network's
    are; per-step predictions of the test recordings."""
    from sklearn.svm import SVR

    def z(r):
        return model.audio.normalise(torch.from_numpy(model.audio.adapt(r.values, r.heard))
                                     ).numpy()

    rows, weights = training_rows(train, skip)
    pick = rows[np.random.default_rng(seed).choice(len(rows), n, p=weights)]
    used = {int(i): (z(train[i]), train[i].targets) for i in np.unique(pick[:, 0])}
    x = np.stack([used[int(i)][0][k] for i, k in pick])
    y = np.stack([used[int(i)][1][k] for i, k in pick])
    svrs = [SVR(C=1.0, epsilon=0.05).fit(x, y[:, j]) for j in range(y.shape[1])]
    out = []
    for r in test:
        zr = z(r)
        out.append(np.stack([s.predict(zr) for s in svrs], 1).astype(np.float32))
    return out


# ----------------------------------------------------------------------------- scoring

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


def happy_above_negatives(us: list[Unit]) -> dict[str, bool]:
    """Per speaker: is the mean predicted valence of happiness above that of each of anger,
    fear, disgust and sadness (those the speaker has)?"""
    out = {}
    for spk in sorted({u.speaker for u in us}):
        mean: dict[str, list[float]] = {}
        for u in us:
            if u.speaker == spk:
                mean.setdefault(u.emotion, []).append(float(u.pred[0]))
        if "happiness" not in mean:
            continue
        h = np.mean(mean["happiness"])
        out[spk] = bool(all(h > np.mean(mean[e]) for e in NEGATIVE if e in mean))
    return out


def summary(us: list[Unit]) -> dict:
    """CCCs, happy-above-negatives share of speakers and per-clip valence spread of units."""
    if not us:
        return {}
    p = np.stack([u.pred for u in us])
    g = np.stack([u.target for u in us])
    happy = happy_above_negatives(us)
    return {"n": len(us), "speakers": len({u.speaker for u in us}),
            "valence_ccc": round(ccc(p[:, 0], g[:, 0]), 4),
            "arousal_ccc": round(ccc(p[:, 1], g[:, 1]), 4),
            "happy_above_negatives": round(float(np.mean(list(happy.values()))), 4)
            if happy else None,
            "happy_by_speaker": happy,
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


# ----------------------------------------------------------------------------- experiments

def speaker_folds(recs: list[Recording], k: int = 5) -> list[set[str]]:
    """``k`` folds of held-out speakers, each corpus's speakers dealt round-robin (so every
    fold holds out speakers of every corpus it can)."""
    folds: list[set[str]] = [set() for _ in range(k)]
    for corpus in sorted({r.corpus for r in recs}):
        for i, spk in enumerate(sorted({r.speaker for r in recs if r.corpus == corpus})):
            folds[i % k].add(spk)
    return [f for f in folds if f]


def held_out(recs: list[Recording], test_speakers: set[str], cfg: ModelConfig,
             updates: int, seed: int = 0, svr: bool = True, loss: str = "mse",
             balance: str = "corpus", log: Callable[[str], None] = print) -> dict:
    """Train on every recording (clean and augmented) of the other speakers; predict the clean
    recordings of ``test_speakers``. Returns the test recordings and both models' predictions."""
    train = [r for r in recs if r.speaker not in test_speakers]
    test = [r for r in recs if r.speaker in test_speakers and r.name.endswith("#0")]
    model = fit(train, cfg, updates, seed=seed, loss=loss, balance=balance, log=log)
    out = {"test": test, "network": predict(model, test)}
    if svr:
        out["svr"] = svr_probe(model, train, test, seed=seed)
    return out


def cross_validate(recs: list[Recording], cfg: ModelConfig, updates: int, folds: int = 5,
                   seed: int = 0, svr: bool = True, schemes=("speaker_cv", "loco"),
                   loss: str = "mse", balance: str = "corpus",
                   log: Callable[[str], None] = print) -> dict:
    """Speaker-held-out cross-validation over all corpora pooled (``speaker_cv``), and
    leave-one-corpus-out (``loco``): per scheme and model (network, svr), ``report`` of the
    held-out predictions."""
    results = {}
    plan = {}
    if "speaker_cv" in schemes:
        plan["speaker_cv"] = speaker_folds(recs, folds)
    if "loco" in schemes:
        plan.update({f"loco_{c}": [{r.speaker for r in recs if r.corpus == c}]
                     for c in sorted({r.corpus for r in recs})})
    for name, groups in plan.items():
        test: list = []
        preds: dict[str, list] = {"network": [], "svr": []}
        for g in groups:
            log(f"{name}: holding out {len(g)} speakers")
            res = held_out(recs, g, cfg, updates, seed, svr, loss, balance, log)
            test += res["test"]
            for m in preds:
                preds[m] += res.get(m, [])
        results[name] = {m: report(test, p) for m, p in preds.items() if p}
    return results
