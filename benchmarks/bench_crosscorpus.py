"""Cross-corpus table of the audio branch: speaker-held-out and leave-one-corpus-out.

    python benchmarks/bench_crosscorpus.py [--shared ../shared/data] [--norm recording|global]
        [--prior 30] [--updates 4000] [--copies 2] [--schemes speaker_cv,loco] [--json out.json]

Defaults are the default model's recipe (avemo_cli.recipes.speech.AUDIO_CONFIG, UPDATES, COPIES), so
its first tables are the model card's; the options reproduce the design comparisons there.

Trains the default model's audio recipe (avemo_cli.recipes.speech) on EmoDB (German), RAVDESS actors
01-18 (English) and EMOVO (Italian), with speakers held out (5 folds, every corpus's speakers
dealt round-robin, all corpora pooled) and with each whole corpus held out in turn, and scores
the held-out speakers' clean recordings: each clip alone, and each speaker's clips joined into
one recording with a block per emotion (scored per block after its first 5 s). The SVR probe
(eGeMAPS functionals, RBF SVR, same normalisation and training steps) is scored beside the
network. Labels: emotion categories mapped by datasets.EMOTION_VA (an assumption).
Needs scikit-learn (pip install -e '.[bench]'). Prints the tables and the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from avemo_cli.recipes import recordings, speech  # noqa: E402
from avemo_cli.cache import default_cache_dir  # noqa: E402
from avemo_cli.model import ModelConfig  # noqa: E402



def machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores"


def fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def print_tables(results: dict) -> None:
    for kind, title in (("clip", "each clip alone (mean of its steps)"),
                        ("clip_speech", "each clip alone (mean of its speech steps: silence "
                                        "left out)"),
                        ("clip_last", "each clip alone (its last step: the whole utterance)"),
                        ("recording", "clips joined into one recording per speaker, "
                                      "scored per emotion block")):
        print(f"\n### {title}\n")
        print("| held out | scored on | model | valence CCC | arousal CCC | happy above "
              "negatives (speakers) | sd of valence |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for scheme, models in results.items():
            for model, rep in models.items():
                for corpus, s in rep.get(kind, {}).items():
                    if not s or (scheme.startswith("loco") and corpus == "all"):
                        continue
                    held = "speakers (5 folds)" if scheme == "speaker_cv" else \
                        f"corpus {scheme[5:]}"
                    print(f"| {held} | {corpus} ({s['speakers']} spk, {s['n']}) | {model} | "
                          f"{fmt(s['valence_ccc'])} | {fmt(s['arousal_ccc'])} | "
                          f"{fmt(s['happy_above_negatives'])} | {fmt(s['valence_std'])} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=HERE.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=default_cache_dir() / "default_model")
    ap.add_argument("--norm", choices=["global", "recording"],
                    default=speech.AUDIO_CONFIG["audio_norm"])
    ap.add_argument("--prior", type=float, default=speech.AUDIO_CONFIG["audio_norm_prior"],
                    help="audio_norm_prior, seconds")
    ap.add_argument("--updates", type=int, default=speech.UPDATES,
                    help="training batches (of 64 steps) per model")
    ap.add_argument("--copies", type=int, default=speech.COPIES,
                    help="augmented copies per recording")
    ap.add_argument("--loss", choices=["mse", "mse+ccc"], default="mse")
    ap.add_argument("--balance", choices=["corpus", "speaker"], default="corpus",
                    help="equal training weight per corpus or per speaker")
    ap.add_argument("--schemes", default="speaker_cv,loco",
                    help="speaker_cv and/or loco (comma list)")
    ap.add_argument("--no-svr", action="store_true")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--tables-from", type=Path, default=None,
                    help="only print the tables of stored results (a --json file, or "
                         "weights/default_metrics.json)")
    args = ap.parse_args()
    if args.tables_from:
        stored = json.loads(args.tables_from.read_text())
        stored = stored.get("audio_speech", stored)
        print_tables(stored.get("results") or stored["held_out"])
        return
    import torch

    torch.set_num_threads(max(1, args.jobs))
    t0 = time.time()
    cfg = ModelConfig(**{**speech.AUDIO_CONFIG, "audio_norm": args.norm,
                         "audio_norm_prior": args.prior})
    clips = recordings.load_clips(args.shared)
    audio = recordings.decode_all(clips, args.work, args.jobs)
    recs = recordings.build_recordings(clips, audio, cfg, args.work, copies=args.copies,
                                   jobs=args.jobs)
    results = speech.cross_validate(recs, cfg, args.updates, svr=not args.no_svr,
                                    schemes=args.schemes.split(","), loss=args.loss,
                                    balance=args.balance)
    print(f"\nmachine: {machine()}; {time.time() - t0:.0f} s; norm {args.norm} "
          f"(prior {args.prior} s), loss {args.loss}, balance {args.balance}, "
          f"{args.updates} updates of 64, "
          f"{args.copies} augmented copies")
    print_tables(results)
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"shared": str(args.shared),
                                                                  "work": str(args.work),
                                                                  "json": str(args.json)},
                                         "results": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
