"""Training with the paper's recipe and the AVEC protocol.

Train on the ``train`` partition, score every epoch on ``devel`` (CCC per target, sequences
concatenated), keep the best and the last checkpoint, and finally fit the post-processing chain
on ``devel`` with the best model and store it in the best checkpoint.

Defaults (SPEC section 4): 16-step clips at 4 steps/s ending at every labelled step (stride 1,
overlapping), Adam lr 1e-4, batch 16, Xavier-uniform init, dropout 0.5, MSE loss (``ccc``: 1 -
CCC per batch). An ``av`` model is trained on the sum of the fusion head's loss and each
branch head's loss, so the single-branch heads that annotate falls back on (no audio track, no
face) are trained too. Clips whose predicted step has no face are left out of visual training.

Run folder: ``best.safetensors`` (the deliverable, with post-processing), ``last.pt`` (model,
optimiser and counters for ``--resume``; loaded with ``weights_only=True``), ``metrics.jsonl``
(one line per epoch) and ``run.json`` (the options).
"""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .cache import FeatureCache, describe_counts, extract_all
from .checkpoint import load_checkpoint, save_checkpoint, state_mismatch
from .datasets import Sequence, load_dataset
from .errors import AvemoError, plural
from .metrics import ccc
from .model import AVModel, ModelConfig
from .pipeline import Features, FeatureSettings, predict_features, resolve_device
from .postprocess import fit_chain
from .predict import clip_steps
from .writer import atomic_path


@dataclass
class TrainOptions:
    data: str
    out: str = "runs/avemo"
    layout: str = "avec2017"
    split: str | None = None
    modality: str = "av"
    targets: list[str] = field(default_factory=lambda: ["valence", "arousal"])
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-4
    loss: str = "mse"
    audio_attention: bool = True
    visual_attention: bool = True
    visual_backbone: str = "3d"
    clip_stride: int = 1  # train on clips ending at every Nth labelled step
    audio_norm: str = "global"  # ModelConfig.audio_norm
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    jobs: int = 1
    cache: str | None = None
    faces_backend: str = "dlib"
    config: dict = field(default_factory=dict)  # further ModelConfig settings


class TrainError(AvemoError):
    pass


@dataclass
class Prepared:
    seq: Sequence
    feats: Features
    gold: np.ndarray  # (K, targets) at the steps
    audio: np.ndarray | None = None  # (K, 88) features as the model sees them (adapt_audio)


def adapt_audio(model: AVModel, items: list[Prepared]) -> None:
    """Each sequence's audio features adapted to its recording (``AudioBranch.adapt``, the
    same call ``predict_steps`` makes at annotation), once per sequence, before clips are cut."""
    for p in items:
        a = p.feats.audio
        p.audio = None if a is None or model.audio is None else model.audio.adapt(a.values,
                                                                                   a.valid)


def prepare_sequences(seqs: list[Sequence], settings: FeatureSettings, cfg: ModelConfig,
                      cache: FeatureCache, jobs: int, log: Callable[[str], None]
                      ) -> list[Prepared]:
    """Fill the cache (in parallel), then load every sequence's features and step labels."""
    errors = []
    finished = [0]

    def on_done(media, status, err):
        finished[0] += 1
        if err:
            errors.append(err)
        elif status == "miss":
            log(f"features [{finished[0]}/{len(seqs)}] {Path(media).name}: extracted")

    t0 = time.perf_counter()
    counts = extract_all([s.media for s in seqs], settings, cfg.has_audio, cfg.has_visual,
                         cache, jobs, on_done)
    log(f"{describe_counts(counts)} ({time.perf_counter() - t0:.1f} s; features kept in "
        f"{cache.root})")
    for e in errors:
        log(f"avemo: warning: {e}; sequence skipped")
    out = []
    for s in seqs:
        feats = cache.load(s.media, settings, cfg.has_audio, cfg.has_visual)
        if feats is None:
            continue
        out.append(Prepared(s, feats, s.step_targets(feats.n_steps, cfg.rate, cfg.targets)))
    return out


LABEL_RANGE = (-1.0, 1.0)  # valence and arousal, as avemo writes them


def check_label_range(seq: Sequence, targets: list[str]) -> None:
    """Refuse a sequence whose labels for ``targets`` are missing values or lie outside
    ``LABEL_RANGE`` (a rating on another scale would train a model to other numbers)."""
    where = seq.label_path or seq.media
    lo, hi = LABEL_RANGE
    for t in targets:
        if seq.labels is None or t not in seq.labels:
            continue
        v = seq.labels[t].to_numpy(np.float64)
        if not np.isfinite(v).all():
            raise TrainError(f"{where}: {t} has {int((~np.isfinite(v)).sum())} missing or "
                             f"non-finite value(s); fill or drop those rows")
        if v.min() < lo - 1e-6 or v.max() > hi + 1e-6:
            bad = v.min() if v.min() < lo - 1e-6 else v.max()
            raise TrainError(f"{where}: {t} value {bad:g} is outside [{lo:g}, {hi:g}]; "
                             f"rescale the ratings to that range")


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip() \
            or None
    except Exception:
        return None


def audio_statistics(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of eGeMAPS rows (the audio branch's z-scoring; std floored)."""
    x = np.concatenate(rows) if rows else np.zeros((1, 88), np.float32)
    mean, std = x.mean(0), x.std(0)
    std[std < 1e-6] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def training_samples(items: list[Prepared], cfg: ModelConfig, stride: int) -> np.ndarray:
    """(N, 2) [item index, step] of the clips to train on."""
    rows = []
    for i, p in enumerate(items):
        ok = ~np.isnan(p.gold).any(axis=1)
        if cfg.modality == "video":
            ok &= p.feats.face
        if cfg.modality == "audio" and p.feats.audio is None:
            ok[:] = False
        steps = np.flatnonzero(ok)[::max(1, stride)]
        rows.append(np.stack([np.full(len(steps), i), steps], 1))
    return np.concatenate(rows) if rows else np.zeros((0, 2), np.int64)


def _batch(items: list[Prepared], rows: np.ndarray, cfg: ModelConfig, device):
    t = cfg.clip_steps
    audio, video, gold, face = [], [], [], []
    for i, k in rows:
        p = items[i]
        idx = clip_steps(np.array([k]), t)[0]
        if cfg.has_audio:
            audio.append(p.audio[idx] if p.audio is not None else
                         np.zeros((t, cfg.audio_features), np.float32))
        if cfg.has_visual:
            has = p.feats.track is not None and p.feats.face.any()
            video.append(p.feats.model_crops()[idx] if has else
                         np.zeros((t, cfg.input_size, cfg.input_size), np.uint8))
            face.append(bool(p.feats.face[k]) if has else False)
        gold.append(p.gold[k])
    out = {"gold": torch.from_numpy(np.stack(gold)).float().to(device)}
    if audio:
        out["audio"] = torch.from_numpy(np.stack(audio)).float().to(device)
        out["has_audio"] = torch.tensor([items[i].feats.audio is not None for i, _ in rows],
                                        device=device)
    if video:
        from .model import VisualBranch

        out["video"] = VisualBranch.prepare(torch.from_numpy(np.stack(video)).to(device))
        out["face"] = torch.tensor(face, device=device)
    return out


def loss_fn(pred: torch.Tensor, gold: torch.Tensor, kind: str) -> torch.Tensor:
    if pred.shape[0] == 0:
        return pred.sum() * 0
    if kind == "mse":
        return torch.mean((pred - gold) ** 2)
    mp, mg = pred.mean(0), gold.mean(0)  # ccc loss: 1 - CCC per target over the batch
    cov = ((pred - mp) * (gold - mg)).mean(0)
    c = 2 * cov / (pred.var(0, unbiased=False) + gold.var(0, unbiased=False) + (mp - mg) ** 2
                   + 1e-8)
    return (1 - c).mean()


def evaluate_items(model: AVModel, items: list[Prepared], device, batch_size: int = 32
                   ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-sequence step predictions (before post-processing) and step gold."""
    model.eval()
    preds = []
    for p in items:
        try:
            _, values, _ = predict_features(model, p.feats, 1, batch_size, device)
        except AvemoError:  # e.g. a video model and a sequence without any face: not scored
            values = np.full(p.gold.shape, np.nan, np.float32)
        preds.append(values)
    return preds, [p.gold for p in items]


def devel_scores(preds, golds, targets) -> dict[str, float]:
    return {t: ccc(np.concatenate([p[:, j] for p in preds]),
                   np.concatenate([g[:, j] for g in golds])) for j, t in enumerate(targets)}


def train(opts: TrainOptions, log: Callable[[str], None] = print) -> Path:
    """Run the recipe; returns the best checkpoint's path."""
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(opts.device)
    settings_cfg = dict(modality=opts.modality, targets=list(opts.targets),
                        audio_attention=opts.audio_attention,
                        visual_attention=opts.visual_attention,
                        visual_backbone=opts.visual_backbone,
                        **{"audio_norm": opts.audio_norm, **opts.config})
    try:
        cfg = ModelConfig(**settings_cfg)
    except (TypeError, ValueError) as exc:
        raise TrainError(f"invalid model settings: {exc}") from None
    if opts.loss not in ("mse", "ccc"):
        raise TrainError(f"--loss must be mse or ccc, not {opts.loss!r}")
    seqs = load_dataset(opts.data, opts.layout, opts.split)
    by_part = {p: [s for s in seqs if s.partition == p and s.labels is not None]
               for p in ("train", "devel")}
    for p in ("train", "devel"):
        if not by_part[p]:
            raise TrainError(f"{opts.data}: no labelled {p} sequences in the {opts.layout} layout")
    for seq in by_part["train"] + by_part["devel"]:
        check_label_range(seq, cfg.targets)
    settings = FeatureSettings.for_model(cfg, opts.faces_backend)
    cache = FeatureCache(opts.cache)
    train_items = prepare_sequences(by_part["train"], settings, cfg, cache, opts.jobs, log)
    devel_items = prepare_sequences(by_part["devel"], settings, cfg, cache, opts.jobs, log)
    if not train_items or not devel_items:
        raise TrainError(f"{opts.data}: no train or devel sequence could be read")
    samples = training_samples(train_items, cfg, opts.clip_stride)
    if len(samples) == 0:
        article = "a" if cfg.modality == "video" else "an"
        raise TrainError(f"{opts.data}: no labelled training steps usable by {article} "
                         f"{cfg.modality} model")
    log(f"train: {plural(len(train_items), 'sequence')}, {plural(len(samples), 'clip')}; "
        f"devel: {plural(len(devel_items), 'sequence')}; model {cfg.modality} on {device}")

    torch.manual_seed(opts.seed)
    model = AVModel(cfg).to(device)
    if model.audio is not None:
        mean, std = audio_statistics([p.feats.audio.values[p.feats.audio.valid]
                                      for p in train_items if p.feats.audio is not None])
        model.audio.mean.copy_(torch.from_numpy(mean))
        model.audio.std.copy_(torch.from_numpy(std))
    optim = torch.optim.Adam(model.parameters(), lr=opts.lr)
    start_epoch, best_score, best_epoch = 0, -np.inf, 0
    state_path = out / "last.pt"
    metrics_path = out / "metrics.jsonl"
    if opts.resume and state_path.exists():
        try:
            state = torch.load(state_path, map_location=device, weights_only=True)
            if not isinstance(state, dict) or not {"model", "optim", "epoch"} <= set(state):
                raise ValueError("not an avemo training state")
        except Exception as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrainError(f"{state_path}: damaged training state ({why}); remove it to "
                             f"start afresh or use another -o folder") from None
        if state.get("config") != cfg.to_dict():
            raise TrainError(f"{state_path}: the run was started with other model settings; "
                             f"resume with the same options or use another -o folder")
        mismatch = state_mismatch(model.state_dict(), state["model"])
        if mismatch:
            raise TrainError(f"{state_path}: {mismatch}; resume with the same options or use "
                             f"another -o folder")
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        start_epoch, best_score, best_epoch = state["epoch"], state["best"], state["best_epoch"]
        log(f"resuming from epoch {start_epoch} (best devel {best_score:.4f} at epoch "
            f"{best_epoch})")
        _truncate_log(metrics_path, start_epoch)
    elif opts.resume:
        log(f"nothing to resume in {out}; starting afresh")
    if start_epoch == 0:
        metrics_path.unlink(missing_ok=True)
    adapt_audio(model, train_items)
    (out / "run.json").write_text(json.dumps({"options": asdict(opts), "model": cfg.to_dict()},
                                             indent=2, default=str))
    amp = device.type == "cuda"
    provenance = {"data": str(Path(opts.data).resolve()), "layout": opts.layout,
                  "train_sequences": [p.seq.name for p in train_items],
                  "devel_sequences": [p.seq.name for p in devel_items],
                  "commit": _git_commit(), "options": asdict(opts)}

    for epoch in range(start_epoch, opts.epochs):
        model.train()
        t0 = time.perf_counter()
        order = np.random.default_rng(opts.seed * 100003 + epoch).permutation(len(samples))
        total, seen = 0.0, 0
        for b in range(0, len(order), opts.batch_size):
            batch = _batch(train_items, samples[order[b:b + opts.batch_size]], cfg, device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = _batch_loss(model, batch, cfg, opts.loss)
            value = float(loss.detach())
            if not np.isfinite(value):
                raise TrainError(f"epoch {epoch + 1}: the training loss is {value} (diverged); "
                                 f"nothing was saved from this epoch: lower --lr and re-run "
                                 f"(--resume goes on from the last finished epoch)")
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            n = len(batch["gold"])
            total += value * n
            seen += n
        train_s = time.perf_counter() - t0
        preds, golds = evaluate_items(model, devel_items, device)
        scores = devel_scores(preds, golds, cfg.targets)
        mean_score = float(np.nanmean(list(scores.values())))
        record = {"epoch": epoch + 1, "train_loss": total / max(seen, 1),
                  "devel_ccc": scores, "train_seconds": round(train_s, 3),
                  "clips_per_second": round(seen / train_s, 2)}
        improved = mean_score > best_score
        if improved:
            best_score, best_epoch = mean_score, epoch + 1
            save_checkpoint(out / "best.safetensors", model,
                            provenance={**provenance, "epoch": epoch + 1, "devel_ccc": scores})
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        _save_state(state_path, model, optim, cfg, epoch + 1, best_score, best_epoch)
        log(f"epoch {epoch + 1}/{opts.epochs}: loss {record['train_loss']:.4f}, devel CCC "
            + ", ".join(f"{t} {v:.3f}" for t, v in scores.items())
            + f" ({record['clips_per_second']:.0f} clips/s){'  *best' if improved else ''}")

    if not (out / "best.safetensors").exists():
        raise TrainError(f"{out}: no epoch finished, so there is no best checkpoint")
    best = load_checkpoint(out / "best.safetensors", device)
    preds, golds = evaluate_items(best.model, devel_items, device)
    post = {t: fit_chain([p[:, j] for p in preds], [g[:, j] for g in golds], cfg.rate)
            for j, t in enumerate(cfg.targets)}
    for t, prm in post.items():
        kept = [k for k in ("median_window", "bias", "scale") if k in prm]
        log(f"post-processing {t}: devel CCC {prm['dev_ccc_raw']:.3f} -> {prm['dev_ccc']:.3f} "
            f"(kept: {', '.join(kept) or 'none'})")
    save_checkpoint(out / "best.safetensors", best.model, post,
                    {**best.provenance, "postprocess_fitted_on": "devel"})
    log(f"best checkpoint: {out / 'best.safetensors'} (epoch {best_epoch})")
    return out / "best.safetensors"


def _batch_loss(model: AVModel, batch: dict, cfg: ModelConfig, kind: str) -> torch.Tensor:
    gold = batch["gold"]
    if cfg.modality == "audio":
        return loss_fn(model(audio=batch["audio"])["pred"], gold, kind)
    if cfg.modality == "video":
        return loss_fn(model(video=batch["video"])["pred"], gold, kind)
    out = model(audio=batch["audio"], video=batch["video"])
    face, has_audio = batch["face"], batch["has_audio"]
    both = face & has_audio
    return (loss_fn(out["pred"][both], gold[both], kind)
            + loss_fn(out["audio_pred"][has_audio], gold[has_audio], kind)
            + loss_fn(out["visual_pred"][face], gold[face], kind))


def _save_state(path: Path, model, optim, cfg, epoch, best, best_epoch) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optim": optim.state_dict(),
                    "config": cfg.to_dict(), "epoch": epoch, "best": float(best),
                    "best_epoch": best_epoch}, tmp)


def _truncate_log(path: Path, epochs: int) -> None:
    """Keep the first ``epochs`` lines of the metrics log (a killed run may have written the
    line of an epoch whose state was not saved)."""
    if path.exists():
        lines = path.read_text().splitlines()[:epochs]
        path.write_text("".join(line + "\n" for line in lines))
