"""Train avemo's default model from the open data in ../shared/data (the exact recipe).

    python examples/train_default.py --phase visual   # FER+ faces -> visual branch (slow)
    python examples/train_default.py --phase audio    # EmoDB+RAVDESS+EMOVO+nEMO -> audio,
                                                      # speaker- and corpus-held-out scores
    python examples/train_default.py --phase assemble # both + fixed fusion -> weights/default
    python examples/train_default.py                  # all three

Everything is written under --work (default: $AVEMO_CACHE/default_model or
~/.cache/avemo/default_model): the aligned FER+ faces, the branch checkpoints and metrics.json;
assemble writes weights/default.safetensors and weights/default_metrics.json.

Labels are emotion categories mapped onto (valence, arousal) by datasets.EMOTION_VA (FER+:
the expectation under its crowd votes). See weights/MODEL_CARD.md for what this implies.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avemo_cli.cache import default_cache_dir
from avemo_cli.checkpoint import save_checkpoint
from avemo_cli.datasets import EMOTION_VA
from avemo_cli.metrics import ccc
from avemo_cli.model import AVModel, ModelConfig
from avemo_cli.recipes import corpora as C, fitting, recordings
from avemo_cli.recipes import speech, stills

HERE = Path(__file__).resolve().parents[1]
SHARED = HERE.parent / "shared" / "data"

# The paper's architecture; the visual branch at half the paper's widths and 48x48 crops (FER+
# faces are 48x48: larger crops add no information) so it trains on a 2-core CPU in minutes,
# with batch normalisation after each 3D convolution and no dropout: with the paper's dropout
# 0.5 (and without batch norm) the branch did not even fit 256 faces within 80 steps, and the
# output stayed nearly constant for the first 16,000 clips, which this CPU budget cannot afford.
VISUAL: dict[str, Any] = dict(input_size=48, encoder_channels=[8, 16, 16], convlstm_hidden=16,
                              c3d_channels=[16, 32, 64, 128], fc_hidden=128, visual_z=64,
                              batch_norm=True, dropout=0.0)
# The paper's audio branch; features normalised per recording (ModelConfig.audio_norm): a
# recording's own level and range are removed, with the training statistics as a 30 s prior.
# Trained for speech.UPDATES batches on the clean recordings and speech.COPIES augmented copies
# (gain, speed/pitch, channel, noise) of each.
AUDIO: dict[str, Any] = {k: v for k, v in speech.AUDIO_CONFIG.items() if k != "modality"}
AUDIO_UPDATES = speech.UPDATES
AUDIO_COPIES = speech.COPIES


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def scores(pred: np.ndarray, gold: np.ndarray) -> dict:
    return {"valence_ccc": ccc(pred[:, 0], gold[:, 0]), "arousal_ccc": ccc(pred[:, 1], gold[:, 1])}


# ---------------------------------------------------------------- visual branch (FER+)

def aligned_ferplus(work: Path, jobs: int, limit: int | None = None) -> dict:
    """FER+ aligned as annotation aligns frames (cached in ``work``); ``limit``: only the first
    that many faces of each split (a smoke run)."""
    path = work / f"ferplus_aligned_48{'' if limit is None else f'_first{limit}'}.npz"
    data = C.ferplus(SHARED / "ferplus" / "ferplus.npz")
    if limit is not None:
        keep = np.concatenate([np.flatnonzero(data.split == s)[:limit]
                               for s in ("train", "valid", "test")])
        data = C.FerPlus(data.images[keep], data.targets[keep], data.majority[keep],
                         data.split[keep])
    if not path.exists():
        log(f"aligning {len(data.images)} FER+ faces (dlib, x4 upsampling) ...")
        crops, detected = stills.align_stills(data.images, 48, jobs=jobs)
        np.savez(path, crops=crops, detected=detected)
    z = np.load(path)
    return {"crops": z["crops"], "detected": z["detected"], "targets": data.targets,
            "majority": data.majority, "split": data.split}


@torch.inference_mode()
def predict_stills(model: AVModel, crops: np.ndarray, batch: int = 128) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(crops), batch):
        clips = stills.still_clips(torch.from_numpy(crops[i:i + batch]), model.cfg.clip_steps,
                              jitter=False)
        out.append(model(video=clips)["pred"].numpy())
    return np.concatenate(out)


def train_visual(work: Path, clips: int, jobs: int, seed: int = 0,
                 limit: int | None = None) -> None:
    fer = aligned_ferplus(work, jobs, limit)
    tr = fer["split"] == "train"
    va = fer["split"] == "valid"
    te = fer["split"] == "test"
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = AVModel(ModelConfig(modality="video", **VISUAL))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(fer["crops"][tr])
    y = torch.from_numpy(fer["targets"][tr])
    best, best_state, history = -np.inf, None, []
    t0 = time.time()
    seen, epoch = 0, 0
    next_eval = min(4000, clips)
    # model selection on a fixed sample of 1,000 valid faces (the full valid set costs minutes)
    va_pick = np.flatnonzero(va)[np.random.default_rng(seed).permutation(va.sum())[:1000]]
    log(f"visual: {tr.sum()} train, {va.sum()} valid, {te.sum()} test faces; budget {clips} clips")
    while seen < clips:
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(order), 32):
            model.train()
            idx = order[i:i + 32]
            batch = stills.still_clips(x[idx], model.cfg.clip_steps, gen)
            loss = torch.mean((model(video=batch)["pred"] - y[idx]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(idx)
            if seen >= next_eval or seen >= clips:
                next_eval += 4000
                s = scores(predict_stills(model, fer["crops"][va_pick]), fer["targets"][va_pick])
                mean = (s["valence_ccc"] + s["arousal_ccc"]) / 2
                history.append({"clips": seen, "minutes": round((time.time() - t0) / 60, 2),
                                "loss": float(loss.detach()), **s})
                log(f"visual {seen} clips ({history[-1]['minutes']} min): valid CCC valence "
                    f"{s['valence_ccc']:.3f} arousal {s['arousal_ccc']:.3f}")
                if mean > best:
                    best = mean
                    best_state = {k: v.clone() for k, v in model.state_dict().items()}
            if seen >= clips:
                break
        epoch += 1
    assert best_state is not None, "no evaluation ran (budget under 4,000 clips?)"
    model.load_state_dict(best_state)
    valid_full = scores(predict_stills(model, fer["crops"][va]), fer["targets"][va])
    pred = predict_stills(model, fer["crops"][te])
    gold = fer["targets"][te]
    maj = fer["majority"][te]
    has = maj != ""
    acc = float(np.mean(C.nearest_class(pred[has]) == maj[has]))
    result = {"test": {**scores(pred, gold), "nearest_class_accuracy_7": acc,
                       "n_test": int(te.sum()), "n_test_for_accuracy": int(has.sum())},
              "valid": valid_full, "history": history,
              "train_faces": int(tr.sum()), "epochs": round(seen / tr.sum(), 2),
              "minutes": round((time.time() - t0) / 60, 1),
              "dlib_detected_share": float(fer["detected"].mean())}
    save_checkpoint(work / "visual.safetensors", model, provenance={"ferplus": result})
    (work / "visual_metrics.json").write_text(json.dumps(result, indent=2))
    log(f"visual test: {json.dumps(result['test'])}")


# ---------------------------------------------------------------- audio branch (3 corpora)

def speech_recordings(work: Path, jobs: int, limit: int | None = None):
    """EmoDB + RAVDESS 01-18 + EMOVO + nEMO: clips alone and joined per speaker, clean and
    augmented;
    ``limit``: only the first that many clips of each speaker (a smoke run)."""
    cfg = ModelConfig(modality="audio", **AUDIO)
    clips = recordings.load_clips(SHARED)
    if limit is not None:
        taken: dict[str, int] = {}
        kept = []
        for c in clips:
            taken[c.speaker] = taken.get(c.speaker, 0) + 1
            if taken[c.speaker] <= limit:
                kept.append(c)
        clips = kept
    audio = recordings.decode_all(clips, work, jobs)
    recs = recordings.build_recordings(clips, audio, cfg, work, copies=AUDIO_COPIES, jobs=jobs,
                                   log=log)
    log(f"speech: {len(clips)} clips, {len({c.speaker for c in clips})} speakers, "
        f"{len(recs)} recordings with augmented copies")
    return cfg, recs


def annotate_mean(weights: Path, path: Path) -> dict:
    """Mean valence/arousal of a file as `avemo annotate` writes it, with each head's part."""
    from avemo_cli.checkpoint import load_checkpoint
    from avemo_cli.pipeline import Annotator
    from avemo_cli.settings import AnnotatorSettings

    ann = Annotator(load_checkpoint(weights), AnnotatorSettings(device="cpu")).annotate(path)
    out = {"file": path.name, "source": ann.source,
           **{t: round(float(ann.table[t].mean()), 4) for t in ann.targets},
           "last_step": {t: round(float(ann.step_values[-1, j]), 4)
                         for j, t in enumerate(ann.targets)}}
    for head, values in (("audio_head", ann.steps.audio_values),
                         ("visual_head", ann.steps.visual_values)):
        if values is not None:
            out[head] = {t: round(float(np.nanmean(values[:, j])), 4)
                         for j, t in enumerate(ann.targets)}
    return out


def cremad_joined(model: AVModel) -> list[dict]:
    """CREMA-D actor 1002's six clips joined into one recording of that speaker (as annotate
    reads audio: 16 kHz mono), each clip scored by its steps' mean, ranked by valence."""
    from avemo_cli.audio import egemaps, speech_steps, voiced
    from avemo_cli.demux import AUDIO_RATE, probe, read_audio
    from avemo_cli.predict import audio_sources, predict_steps, runs

    clips = C.cremad(SHARED / "crema-d")
    audio = [read_audio(probe(c.path)) for c, _ in clips]
    x = np.concatenate(audio)
    rate = model.cfg.rate
    n = int(np.ceil(len(x) / AUDIO_RATE * rate))
    f = egemaps(x, AUDIO_RATE, n, rate, model.cfg.audio_window)
    heard = voiced(f.valid, speech_steps(recordings.step_loudness(x, n, rate)))  # as annotate
    source = audio_sources(n, runs(heard), model.cfg.audio_lookahead)
    pred = predict_steps(model, f.values, audio_valid=heard, audio_from=source).values
    ends = np.cumsum([len(a) / AUDIO_RATE for a in audio])
    which = np.searchsorted(ends, np.arange(n) / rate, side="right")
    rows = [{"file": c.path.name, "emotion": c.emotion,
             "valence": round(float(pred[which == i, 0].mean()), 4),
             "arousal": round(float(pred[which == i, 1].mean()), 4)}
            for i, (c, _) in enumerate(clips)]
    return sorted(rows, key=lambda r: -r["valence"])


def train_audio(work: Path, updates: int, jobs: int, limit: int | None = None) -> None:
    cfg, recs = speech_recordings(work, jobs, limit)
    t0 = time.time()
    held = speech.cross_validate(recs, cfg, updates, log=log)
    cv_minutes = round((time.time() - t0) / 60, 1)
    t0 = time.time()
    final = fitting.fit(recs, cfg, updates, log=log)
    path = save_checkpoint(work / "audio.safetensors", final)
    # CREMA-D (English, never trained on): actor 1002's six clips, each annotated alone
    ranking = sorted(({**annotate_mean(path, c.path), "emotion": c.emotion,
                       "crowd_voice_vote": vote} for c, vote in C.cremad(SHARED / "crema-d")),
                     key=lambda r: -r["valence"])
    joined = cremad_joined(final)
    log(f"CREMA-D 1002 joined, by valence: {[r['emotion'] for r in joined]}")
    result = {"held_out": held, "cremad_1002": ranking, "cremad_1002_joined": joined,
              "updates": updates,
              "augmented_copies": AUDIO_COPIES, "cross_validation_minutes": cv_minutes,
              "final_minutes": round((time.time() - t0) / 60, 1),
              "label_mapping": EMOTION_VA}
    save_checkpoint(path, final, provenance={"speech": {
        "corpora": "EmoDB (8 speakers), RAVDESS actors 01-18, EMOVO (4 speakers), nEMO (9 "
                   "speakers)",
        "updates": updates, "augmented_copies": AUDIO_COPIES}})
    (work / "audio_metrics.json").write_text(json.dumps(result, indent=1))
    cv = held["speaker_cv"]["network"]
    log(f"audio speaker-CV (clips alone): {json.dumps(cv['clip']['all'])}")
    log(f"CREMA-D 1002 by valence: {[r['emotion'] for r in ranking]}")


def reliability_weights(audio_ccc: dict, visual_ccc: dict) -> dict[str, list[float]]:
    """Per target [audio, visual] fusion weights proportional to each head's held-out CCC
    (negative CCCs count as 0), normalised to sum to 1 (equal when both are 0)."""
    out = {}
    for t in ("valence", "arousal"):
        w = [max(float(audio_ccc[t]), 0.0), max(float(visual_ccc[t]), 0.0)]
        if not sum(w):  # neither head was measured to help (a smoke run): equal weights
            w = [1.0, 1.0]
        out[t] = [round(w[0] / sum(w), 4), round(w[1] / sum(w), 4)]
    return out


# ---------------------------------------------------------------- assemble

def environment() -> dict:
    """What a reproduction must match to get the same numbers: the code's commit, torch and
    numpy versions and torch's thread count (CPU sums are ordered by thread; the recipe is
    bit-for-bit repeatable with the same ones)."""
    import platform
    import subprocess

    try:
        commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "HEAD"], text=True,
                                capture_output=True, timeout=10).stdout.strip() or None
    except OSError:
        commit = None
    return {"commit": commit, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "torch_threads": torch.get_num_threads(),
            "machine": platform.machine()}


def loco_ccc(audio_metrics: dict) -> dict[str, float]:
    """The audio head's cross-corpus CCC per target: each corpus scored by the model trained on
    the others, averaged over the held-out corpora and over the two ways a voice is
    annotated (each clip alone, the mean of its steps; and clips inside a joined recording of
    their speaker)."""
    held = audio_metrics["held_out"]
    runs = [held[k]["network"][kind]["all"] for k in held if k.startswith("loco_")
            for kind in ("clip", "recording")]  # (a held-out corpus's "all" is that corpus)
    runs = [r for r in runs if r]  # (a smoke run's recordings can be too short to score)
    return {t: round(float(np.mean([r[f"{t}_ccc"] for r in runs])), 4) if runs else 0.0
            for t in ("valence", "arousal")}


def assemble(work: Path, out: Path = HERE / "weights" / "default.safetensors") -> Path:
    from avemo_cli.checkpoint import load_checkpoint

    vis = load_checkpoint(work / "visual.safetensors")
    aud = load_checkpoint(work / "audio.safetensors")
    metrics = {"visual_ferplus": json.loads((work / "visual_metrics.json").read_text()),
               "audio_speech": json.loads((work / "audio_metrics.json").read_text())}
    # Fusion without paired audio-visual labels: per target, a weighted mean of the two heads,
    # weighted by how well each was measured to do on data it never saw (the audio head: a
    # corpus and language it never heard; the visual head: FER+ test faces).
    audio_ccc = loco_ccc(metrics["audio_speech"])
    visual_ccc = {t: metrics["visual_ferplus"]["test"][f"{t}_ccc"]
                  for t in ("valence", "arousal")}
    weights = reliability_weights(audio_ccc, visual_ccc)
    metrics["fusion"] = {"weights": weights, "audio_ccc_leave_one_corpus_out": audio_ccc,
                         "visual_ccc_ferplus_test": visual_ccc,
                         "rule": "weight proportional to held-out CCC (negative = 0)"}
    log(f"fusion weights [audio, visual]: {weights}")
    cfg = ModelConfig(modality="av", **VISUAL, **AUDIO, fusion="weighted",
                      fusion_weights=weights)
    model = AVModel(cfg)
    state = model.state_dict()
    for src in (vis.model.state_dict(), aud.model.state_dict()):
        for k, v in src.items():
            state[k] = v
    model.load_state_dict(state)
    speech_cv = metrics["audio_speech"]["held_out"]["speaker_cv"]["network"]
    save_checkpoint(out, model, provenance={
        "trained_by": "examples/train_default.py",
        "visual": "FER+ (FER2013 images, research only) train split; selected on valid",
        "audio": "EmoDB + RAVDESS actors 01-18 + EMOVO, all 30 speakers, clean and augmented "
                 "(metrics from speaker-held-out and leave-one-corpus-out runs)",
        "fusion": f"weighted by held-out reliability: {weights}",
        "label_mapping": EMOTION_VA, "metrics": {
            "ferplus_test": metrics["visual_ferplus"]["test"],
            "speech_speaker_cv_clips": speech_cv["clip"]["all"],
            "speech_loco_ccc": audio_ccc}})
    metrics["trained_with"] = environment()
    metrics["videos"] = [annotate_mean(out, p) for p in
                         (HERE / "examples" / "sample.mp4",
                          SHARED / "videos" / "WDA_AlexandriaOcasioCortez_000.mp4",
                          SHARED / "videos" / "WDA_KatieHill_000.mp4")]
    out.with_name(out.stem + "_metrics.json").write_text(json.dumps(metrics, indent=1))
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); videos: {metrics['videos']}")
    return out


def differences(new: Any, old: Any, tolerance: float = 0.01, where: str = ""
                ) -> list[str]:
    """Where two metrics documents disagree: numbers by more than ``tolerance``, anything
    else at all; timings (``*minutes*``) and ``trained_with`` (commit, versions) are skipped."""
    if isinstance(new, dict) and isinstance(old, dict):
        keys = {k for k in set(new) | set(old) if "minutes" not in k and k != "trained_with"}
        return [d for k in sorted(keys) for d in (
            differences(new[k], old[k], tolerance, f"{where}/{k}") if k in new and k in old
            else [f"{where}/{k}: only in one"])]
    if isinstance(new, list) and isinstance(old, list):
        if len(new) != len(old):
            return [f"{where}: {len(new)} items against {len(old)}"]
        return [d for i, (a, b) in enumerate(zip(new, old))
                for d in differences(a, b, tolerance, f"{where}[{i}]")]
    numbers = (int, float)
    if isinstance(new, numbers) and isinstance(old, numbers) and not isinstance(new, bool):
        same = abs(new - old) <= tolerance or (np.isnan(new) and np.isnan(old))
        return [] if same else [f"{where}: {new} against {old}"]
    return [] if new == old else [f"{where}: {new!r} against {old!r}"]


def main(argv: list[str] | None = None) -> Path | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=["visual", "audio", "assemble", "all"], default="all")
    ap.add_argument("--work", type=Path, default=default_cache_dir() / "default_model")
    ap.add_argument("--visual-clips", type=int, default=120_000,
                    help="training clips for the visual branch (the shipped model: 120,000; "
                         "about 40 min on a 2-core CPU)")
    ap.add_argument("--audio-updates", type=int, default=AUDIO_UPDATES,
                    help="batches of 64 steps per audio model")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None,
                    help="a smoke run: only the first N FER+ faces of each split and N clips "
                         "of each speaker (the test of the recipe uses this)")
    ap.add_argument("--out", type=Path, default=HERE / "weights" / "default.safetensors",
                    help="the assembled checkpoint (its metrics: <stem>_metrics.json beside)")
    ap.add_argument("--compare", type=Path, default=None, metavar="METRICS",
                    help="after assembling, list every figure that differs by more than 0.01 "
                         "from METRICS (e.g. the shipped weights/default_metrics.json; a "
                         "reproduction check) and exit 1 if any does")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.phase in ("visual", "all"):
        train_visual(args.work, args.visual_clips, args.jobs, limit=args.limit)
    if args.phase in ("audio", "all"):
        train_audio(args.work, args.audio_updates, args.jobs, args.limit)
    if args.phase in ("assemble", "all"):
        out = assemble(args.work, args.out)
        if args.compare:
            new = json.loads(out.with_name(out.stem + "_metrics.json").read_text())
            found = differences(new, json.loads(args.compare.read_text()))
            for line in found:
                print(line)
            log(f"{len(found)} figures differ from {args.compare} by more than 0.01")
            if found:
                raise SystemExit(1)
        return out
    return None


if __name__ == "__main__":
    main()
