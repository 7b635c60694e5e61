"""How a clip alone could be summarised: the same held-out predictions, several summaries.

    python benchmarks/bench_clip_summary.py [--shared ../shared/data] [--jobs 2]

The default model's audio recipe (avemo_cli.recipes.speech, its settings) trained with
speakers held out (5 folds, every corpus's speakers dealt round-robin, all corpora pooled, as
the model card's speaker-held-out table; network only, no SVR probe), and each held-out clip
(annotated alone) summarised from its per-step predictions by: the mean of all its steps, the
mean of its speech steps (the card's clip row), the mean of the last half of its speech steps,
the mean of its last three speech steps, and its last step. Prints valence / arousal CCC and
the share of speakers whose happiness is above their anger, fear, disgust and sadness, per
summary, and the machine. The features come from the recipe's cache (--work), so after
`examples/train_default.py` this costs only the five trainings.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from avemo_cli.cache import default_cache_dir  # noqa: E402
from avemo_cli.model import ModelConfig  # noqa: E402
from avemo_cli.recipes import corpora as C, recordings, scoring  # noqa: E402
from avemo_cli.recipes import speech  # noqa: E402
from bench_crosscorpus import machine  # noqa: E402


NAMES = {"clip": "mean of all steps", "clip_speech": "mean of speech steps",
         "clip_last_half": "mean of the last half of speech",
         "clip_last_three": "mean of the last 3 speech steps", "clip_last": "last step"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=HERE.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=default_cache_dir() / "default_model")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    t0 = time.time()
    settings: dict[str, Any] = dict(speech.AUDIO_CONFIG)
    cfg = ModelConfig(**settings)
    clips = recordings.load_clips(args.shared)
    audio = recordings.decode_all(clips, args.work, args.jobs)
    recs = recordings.build_recordings(clips, audio, cfg, args.work, copies=speech.COPIES,
                                   jobs=args.jobs)
    units: dict[str, list[scoring.Unit]] = {}
    for fold in speech.speaker_folds(recs):
        res = speech.held_out(recs, fold, cfg, speech.UPDATES, svr=False, log=lambda _: None)
        for r, p in zip(res["test"], res["network"]):
            if len(r.emotions) != 1:
                continue  # (joined recordings: the card's block rows)
            target = np.array(C.EMOTION_VA[r.emotions[0]])
            for kind, value in scoring.clip_summaries(r, p).items():
                units.setdefault(NAMES[kind], []).append(
                    scoring.Unit(r.speaker, r.corpus, r.emotions[0], value, target))
    print(f"\nmachine: {machine()}; {time.time() - t0:.0f} s; speaker-held-out, 5 folds, "
          f"{len(next(iter(units.values())))} clips each annotated alone\n")
    print("| clip summary | valence CCC | arousal CCC | happy above the four negatives |")
    print("| --- | --- | --- | --- |")
    for name, us in units.items():
        s = scoring.summary(us)
        print(f"| {name} | {s['valence_ccc']:.3f} | {s['arousal_ccc']:.3f} | "
              f"{100 * s['happy_above_negatives']:.0f}% of {s['speakers']} speakers |")


if __name__ == "__main__":
    main()
