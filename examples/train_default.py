"""Train avemo's default model from the open data in ../shared/data (the exact recipe).

    python examples/train_default.py --phase visual   # FER+ faces -> visual branch (slow)
    python examples/train_default.py --phase audio    # EmoDB speech -> audio branch, speaker CV
    python examples/train_default.py --phase assemble # both + fixed fusion -> weights/default
    python examples/train_default.py                  # all three

Everything is written under --work (default: $AVEMO_CACHE/default_model or
~/.cache/avemo/default_model): the aligned FER+ faces, the branch checkpoints and metrics.json;
assemble writes weights/default.safetensors and weights/default_metrics.json.

Labels are emotion categories mapped onto (valence, arousal) by categorical.EMOTION_VA (FER+:
the expectation under its crowd votes). See weights/MODEL_CARD.md for what this implies.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from avemo_cli import categorical as C
from avemo_cli.cache import FeatureCache, default_cache_dir, extract_all
from avemo_cli.checkpoint import save_checkpoint
from avemo_cli.metrics import ccc
from avemo_cli.model import AVModel, ModelConfig
from avemo_cli.pipeline import FeatureSettings
from avemo_cli.predict import clip_steps
from avemo_cli.train import audio_statistics

HERE = Path(__file__).resolve().parents[1]
SHARED = HERE.parent / "shared" / "data"

# The paper's architecture; the visual branch at half the paper's widths and 48x48 crops (FER+
# faces are 48x48: larger crops add no information) so it trains on a 2-core CPU in minutes,
# with batch normalisation after each 3D convolution and no dropout: with the paper's dropout
# 0.5 (and without batch norm) the branch did not even fit 256 faces within 80 steps, and the
# output stayed nearly constant for the first 16,000 clips, which this CPU budget cannot afford.
VISUAL = dict(input_size=48, encoder_channels=[8, 16, 16], convlstm_hidden=16,
              c3d_channels=[16, 32, 64, 128], fc_hidden=128, visual_z=64, batch_norm=True,
              dropout=0.0)
AUDIO = dict(audio_hidden=64, audio_layers=4)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def scores(pred: np.ndarray, gold: np.ndarray) -> dict:
    return {"valence_ccc": ccc(pred[:, 0], gold[:, 0]), "arousal_ccc": ccc(pred[:, 1], gold[:, 1])}


# ---------------------------------------------------------------- visual branch (FER+)

def aligned_ferplus(work: Path, jobs: int) -> dict:
    path = work / "ferplus_aligned_48.npz"
    data = C.ferplus(SHARED / "ferplus" / "ferplus.npz")
    if not path.exists():
        log(f"aligning {len(data.images)} FER+ faces (dlib, x4 upsampling) ...")
        crops, detected = C.align_stills(data.images, 48, jobs=jobs)
        np.savez(path, crops=crops, detected=detected)
    z = np.load(path)
    return {"crops": z["crops"], "detected": z["detected"], "targets": data.targets,
            "majority": data.majority, "split": data.split}


@torch.inference_mode()
def predict_stills(model: AVModel, crops: np.ndarray, batch: int = 128) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(crops), batch):
        clips = C.still_clips(torch.from_numpy(crops[i:i + batch]), model.cfg.clip_steps,
                              jitter=False)
        out.append(model(video=clips)["pred"].numpy())
    return np.concatenate(out)


def train_visual(work: Path, clips: int, jobs: int, seed: int = 0) -> None:
    fer = aligned_ferplus(work, jobs)
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
    next_eval = 4000
    # model selection on a fixed sample of 1,000 valid faces (the full valid set costs minutes)
    va_pick = np.flatnonzero(va)[np.random.default_rng(seed).permutation(va.sum())[:1000]]
    log(f"visual: {tr.sum()} train, {va.sum()} valid, {te.sum()} test faces; budget {clips} clips")
    while seen < clips:
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(order), 32):
            model.train()
            idx = order[i:i + 32]
            clips = C.still_clips(x[idx], model.cfg.clip_steps, gen)
            loss = torch.mean((model(video=clips)["pred"] - y[idx]) ** 2)
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


# ---------------------------------------------------------------- audio branch (EmoDB)

def emodb_features(work: Path, jobs: int):
    clips = C.emodb(SHARED / "emodb")
    cfg = ModelConfig(modality="audio", **AUDIO)
    settings = FeatureSettings.for_model(cfg)
    cache = FeatureCache(work / "features")
    extract_all([c.path for c in clips], settings, True, False, cache, jobs)
    feats = [cache.load(c.path, settings, True, False).audio.values for c in clips]
    return clips, feats, settings, cache


def _clip_batch(feats, rows, t):
    return torch.from_numpy(np.stack([feats[i][clip_steps(np.array([k]), t)[0]]
                                      for i, k in rows])).float()


def fit_audio(feats, targets, files, epochs, seed=0) -> AVModel:
    torch.manual_seed(seed)
    model = AVModel(ModelConfig(modality="audio", **AUDIO))
    mean, std = audio_statistics([feats[i] for i in files])
    model.audio.mean.copy_(torch.from_numpy(mean))
    model.audio.std.copy_(torch.from_numpy(std))
    rows = np.array([(i, k) for i in files for k in range(len(feats[i]))])
    y_all = torch.from_numpy(np.asarray(targets, np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = np.random.default_rng(seed)
    for _ in range(epochs):
        model.train()
        for b in np.array_split(gen.permutation(len(rows)), max(1, len(rows) // 16)):
            x = _clip_batch(feats, rows[b], model.cfg.clip_steps)
            loss = torch.mean((model(audio=x)["pred"] - y_all[rows[b][:, 0]]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.inference_mode()
def utterance_predictions(model, feats, files) -> np.ndarray:
    """One prediction per file: the clip ending at its last step (the whole utterance heard)."""
    rows = np.array([(i, len(feats[i]) - 1) for i in files])
    return model(audio=_clip_batch(feats, rows, model.cfg.clip_steps))["pred"].numpy()


def happy_ranks(pred_v: np.ndarray, emotions: list[str]) -> bool:
    """Mean predicted valence of happiness above anger, fear, disgust and sadness."""
    mean = {e: pred_v[[i for i, x in enumerate(emotions) if x == e]].mean()
            for e in set(emotions)}
    return all(mean["happiness"] > mean[e] for e in ("anger", "fear", "disgust", "sadness")
               if e in mean)


def train_audio(work: Path, epochs: int, jobs: int) -> None:
    clips, feats, settings, cache = emodb_features(work, jobs)
    targets = [(c.valence, c.arousal) for c in clips]
    speakers = sorted({c.speaker for c in clips})
    folds = [speakers[i::4] for i in range(4)]  # 4 folds of 2 held-out speakers
    pred = np.zeros((len(clips), 2), np.float32)
    per_speaker = {}
    for held in folds:
        test = [i for i, c in enumerate(clips) if c.speaker in held]
        train = [i for i, c in enumerate(clips) if c.speaker not in held]
        model = fit_audio(feats, targets, train, epochs)
        pred[test] = utterance_predictions(model, feats, test)
        for s in held:
            idx = [i for i in test if clips[i].speaker == s]
            per_speaker[s] = bool(happy_ranks(pred[idx, 0], [clips[i].emotion for i in idx]))
        log(f"audio fold held out {held}: done")
    gold = np.array(targets, np.float32)
    emotions = [c.emotion for c in clips]
    acc = float(np.mean(C.nearest_class(pred, sorted(C.EMODB_LETTERS.values()))
                        == np.array(emotions)))
    result = {"speaker_cv": {**scores(pred, gold), "folds": folds,
                             "happiness_above_negative_share": float(np.mean(
                                 list(per_speaker.values()))),
                             "happiness_above_negative_by_speaker": per_speaker,
                             "nearest_class_accuracy_7": acc, "n_files": len(clips)},
              "epochs": epochs}
    final = fit_audio(feats, targets, list(range(len(clips))), epochs)
    # CREMA-D (English, never trained on): the six clips of actor 1002
    crema = C.cremad(SHARED / "crema-d")
    extract_all([c.path for c, _ in crema], settings, True, False, cache, jobs)
    cf = [cache.load(c.path, settings, True, False).audio.values for c, _ in crema]
    cp = utterance_predictions(final, cf, list(range(len(cf))))
    ranking = sorted(({"file": c.path.name, "emotion": c.emotion, "crowd_voice_vote": vote,
                       "valence": float(v), "arousal": float(a)}
                      for (c, vote), (v, a) in zip(crema, cp)),
                     key=lambda r: -r["valence"])
    result["cremad_1002"] = ranking
    save_checkpoint(work / "audio.safetensors", final, provenance={"emodb": result})
    (work / "audio_metrics.json").write_text(json.dumps(result, indent=2))
    log(f"audio speaker-CV: {json.dumps(result['speaker_cv'])}")


# ---------------------------------------------------------------- assemble

def assemble(work: Path) -> Path:
    from avemo_cli.checkpoint import load_checkpoint

    vis = load_checkpoint(work / "visual.safetensors")
    aud = load_checkpoint(work / "audio.safetensors")
    cfg = ModelConfig(modality="av", **VISUAL, **AUDIO)
    model = AVModel(cfg)
    state = model.state_dict()
    for src in (vis.model.state_dict(), aud.model.state_dict()):
        for k, v in src.items():
            state[k] = v
    # Fusion without paired audio-visual labels: fixed to the mean of the two branch heads,
    # fusion(cat(za, zv)) = (audio_head(za) + visual_head(zv)) / 2.
    state["fusion.weight"] = torch.cat([state["audio_head.weight"],
                                        state["visual_head.weight"]], 1) / 2
    state["fusion.bias"] = (state["audio_head.bias"] + state["visual_head.bias"]) / 2
    model.load_state_dict(state)
    metrics = {"visual_ferplus": json.loads((work / "visual_metrics.json").read_text()),
               "audio_emodb": json.loads((work / "audio_metrics.json").read_text())}
    out = HERE / "weights" / "default.safetensors"
    save_checkpoint(out, model, provenance={
        "trained_by": "examples/train_default.py",
        "visual": "FER+ (FER2013 images, research only) train split; selected on valid",
        "audio": "EmoDB, all 8 speakers (metrics from 4-fold leave-2-speakers-out CV)",
        "fusion": "fixed: mean of the audio and visual heads (no paired labels)",
        "label_mapping": C.EMOTION_VA, "metrics": {
            "ferplus_test": metrics["visual_ferplus"]["test"],
            "emodb_speaker_cv": metrics["audio_emodb"]["speaker_cv"]}})
    (HERE / "weights" / "default_metrics.json").write_text(json.dumps(metrics, indent=2))
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=["visual", "audio", "assemble", "all"], default="all")
    ap.add_argument("--work", type=Path, default=default_cache_dir() / "default_model")
    ap.add_argument("--visual-clips", type=int, default=120_000,
                    help="training clips for the visual branch (the shipped model: 120,000; "
                         "about 40 min on a 2-core CPU)")
    ap.add_argument("--audio-epochs", type=int, default=30)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.phase in ("visual", "all"):
        train_visual(args.work, args.visual_clips, args.jobs)
    if args.phase in ("audio", "all"):
        train_audio(args.work, args.audio_epochs, args.jobs)
    if args.phase in ("assemble", "all"):
        assemble(args.work)


if __name__ == "__main__":
    main()
