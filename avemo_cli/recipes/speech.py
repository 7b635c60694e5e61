"""Cross-corpus speech emotion for the audio branch: the default model's recipe and its
experiments. The recordings are recordings.py's, the training fitting.py's and the scores
scoring.py's; here: the recipe's settings and the experiments that hold speakers out
(``held_out``, ``speaker_folds``) or whole corpora (``cross_validate``'s leave-one-corpus-out).
"""
from __future__ import annotations

from typing import Callable

from ..model import ModelConfig
from .fitting import fit, predict, svr_probe
from .recordings import Recording
from .scoring import report


# The default model's audio recipe (examples/train_default.py; benchmarks/bench_crosscorpus.py
# defaults to the same): the paper's audio branch with recording-level normalisation (a 30 s
# prior), 4,000 batches of 64 steps, six augmented copies of every recording; annotated with a
# look-ahead of 15 steps inside utterances (ModelConfig.audio_lookahead: every step of an
# utterance of up to 4 s takes the clip that has heard all of it).
AUDIO_CONFIG = {"modality": "audio", "audio_hidden": 64, "audio_layers": 4,
                "audio_norm": "recording", "audio_norm_prior": 30.0, "audio_lookahead": 15}
UPDATES = 4000
COPIES = 6


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
    if cfg.audio_lookahead:  # the same model read the paper's way: each clip ends at its step
        out["network_causal"] = predict(model, test, ahead=0)
    if svr:
        out["svr"] = svr_probe(model, train, test, seed=seed)
    return out


def cross_validate(recs: list[Recording], cfg: ModelConfig, updates: int, folds: int = 5,
                   seed: int = 0, svr: bool = True, schemes=("speaker_cv", "loco"),
                   loss: str = "mse", balance: str = "corpus",
                   log: Callable[[str], None] = print) -> dict:
    """Speaker-held-out cross-validation over all corpora pooled (``speaker_cv``), and
    leave-one-corpus-out (``loco``): per scheme and model (network, the same network without its
    look-ahead as ``network_causal``, svr), ``report`` of the held-out predictions."""
    results = {}
    plan = {}
    if "speaker_cv" in schemes:
        plan["speaker_cv"] = speaker_folds(recs, folds)
    if "loco" in schemes:
        plan.update({f"loco_{c}": [{r.speaker for r in recs if r.corpus == c}]
                     for c in sorted({r.corpus for r in recs})})
    for name, groups in plan.items():
        test: list = []
        preds: dict[str, list] = {"network": [], "network_causal": [], "svr": []}
        for g in groups:
            log(f"{name}: holding out {len(g)} speakers")
            res = held_out(recs, g, cfg, updates, seed, svr, loss, balance, log)
            test += res["test"]
            for m in preds:
                preds[m] += res.get(m, [])
        results[name] = {m: report(test, p) for m, p in preds.items() if p}
    return results
