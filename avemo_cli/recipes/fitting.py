"""The speech recipe's training: the audio branch fitted on recordings' speech steps
(``fit``), their predictions by the same inference path as ``avemo annotate``
(``predict.predict_steps``, which applies the checkpoint's audio normalisation), and
``svr_probe``, the cheap baseline the network must beat: an RBF support-vector regressor on the
same per-step eGeMAPS functionals, normalised the same way."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..clips import audio_statistics
from ..model import AVModel, ModelConfig
from ..predict import audio_sources, clip_steps, predict_steps, runs
from .recordings import Recording


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
    from ..clips import loss_fn

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


def predict(model: AVModel, recs: list[Recording], ahead: int | None = None
            ) -> list[np.ndarray]:
    """Per-step predictions of each recording through annotation's own inference path, each
    step's audio clip ending ``ahead`` steps later inside its utterance (default: the model's
    ``audio_lookahead``; 0: at the step). The recordings' utterances are the runs of their
    steps with a voice, joined across a gap of a step (annotation finds them in the audio's
    50 ms loudness, which the recipe's cached features do not keep)."""
    ahead = model.cfg.audio_lookahead if ahead is None else ahead
    out = []
    for r in recs:
        source = audio_sources(len(r.values), runs(r.heard), ahead) if ahead else None
        out.append(predict_steps(model, audio=r.values, audio_valid=r.heard,
                                 audio_from=source).values)
    return out


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
