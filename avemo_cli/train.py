"""Training with the paper's recipe and the AVEC protocol.

Train on the ``train`` partition, score every epoch on ``devel`` (CCC per target, sequences
concatenated), keep the best and the last checkpoint, and finally fit the post-processing chain
on ``devel`` with the best model and store it in the best checkpoint.

Defaults (SPEC section 4): 16-step clips at 4 steps/s ending at every labelled step (stride 1,
overlapping), Adam lr 1e-4, batch 16, Xavier-uniform init, dropout 0.5, MSE loss (``ccc``: 1 -
CCC per batch). Clips are grouped into windows of up to 16 consecutive clips of a sequence; a
batch computes each step's per-frame work once for its window and slices it into the clips
(``window_batch``: the same loss and gradients as ``clip_batch``'s clip-by-clip inputs). Under
``torchrun`` each process trains on its part of every global batch with DistributedDataParallel
(``distributed.Group``). An ``av`` model is trained on the sum of the fusion head's loss and each
branch head's loss, so the single-branch heads that annotate falls back on (no audio track, no
face) are trained too. Clips whose predicted step has no face are left out of visual training.

Run folder: ``best.safetensors`` (the deliverable, with post-processing), ``last.pt`` (model,
optimiser and counters for ``--resume``; loaded with ``weights_only=True``), ``metrics.jsonl``
(one line per epoch) and ``run.json`` (the options).
"""
from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .cache import FeatureCache, describe_counts, extract_all
from .checkpoint import load_checkpoint, save_checkpoint, state_mismatch
from .datasets import Sequence, load_dataset
from .distributed import Group
from .errors import AvemoError, plural
from .features import Features, FeatureSettings
from .files import append_line, atomic_path, write_text
from .inference import predict_features, resolve_device
from .metrics import ccc
from .model import AVModel, ModelConfig, VisualBranch
from .postprocess import fit_chain
from .predict import Predictor, clip_steps


@dataclass(kw_only=True)
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
    window: int = 16  # clips of a sequence sharing one per-frame computation (1: clip by clip)
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
                                                                                   a.heard)


def prepare_sequences(seqs: list[Sequence], settings: FeatureSettings, cfg: ModelConfig,
                      cache: FeatureCache, jobs: int, log: Callable[[str], None],
                      group: Group | None = None) -> list[Prepared]:
    """Fill the cache (in parallel; under torchrun each rank extracts its share of the files
    into the shared cache), then load every sequence's features and step labels."""
    group = group or Group()
    errors = []
    finished = [0]
    mine = group.share(seqs)

    def on_done(media, status, err):
        finished[0] += 1
        if err:
            errors.append(err)
        elif status == "miss" and group.main:
            log(f"features [{finished[0]}/{len(mine)}] {Path(media).name}: extracted")

    t0 = time.perf_counter()
    counts = extract_all([s.media for s in mine], settings, cache, jobs, on_done)
    totals = group.total(*counts.values())
    group.barrier()  # every rank's files are in the cache
    if group.main:
        log(f"{describe_counts({k: int(v) for k, v in zip(counts, totals)})} "
            f"({time.perf_counter() - t0:.1f} s; features kept in {cache.root})")
    for e in errors:  # each rank reports its own files
        log(f"avemo: warning: {e}; sequence skipped")
    out = []
    for s in seqs:
        feats = cache.load(s.media, settings)
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


def training_windows(samples: np.ndarray, window: int, t: int) -> list[np.ndarray]:
    """The training clips (rows of ``training_samples``) in windows: runs of up to ``window``
    clips of one sequence whose ends are less than T steps apart, so that their frames overlap
    and each frame's work is done once for the whole window (``window`` 1: every clip alone)."""
    out, i = [], 0
    while i < len(samples):
        j = i + 1
        while (j < len(samples) and j - i < window and samples[j, 0] == samples[i, 0]
               and samples[j, 1] - samples[j - 1, 1] < t):
            j += 1
        out.append(samples[i:j])
        i = j
    return out


def epoch_batches(windows: list[np.ndarray], batch_size: int, seed: int, epoch: int
                  ) -> list[np.ndarray]:
    """One epoch's batches: the windows in an order drawn from ``seed`` and ``epoch``, their
    clips cut into batches of ``batch_size`` (with windows of one clip: the clips shuffled one
    by one, the paper's order)."""
    if not windows:
        return []
    order = np.random.default_rng(seed * 100003 + epoch).permutation(len(windows))
    rows = np.concatenate([windows[i] for i in order])
    return [rows[b:b + batch_size] for b in range(0, len(rows), batch_size)]


def clip_batch(items: list[Prepared], rows: np.ndarray, cfg: ModelConfig, device) -> dict:
    """The clips of ``rows`` ([item, last step]) as separate inputs (T steps each): the
    reference the shared computation (``window_batch``) must equal."""
    t = cfg.clip_steps
    audio, video, gold, face = [], [], [], []
    for i, k in rows:
        p = items[i]
        idx = clip_steps(np.array([k]), t)[0]
        if cfg.has_audio:
            audio.append(p.audio[idx] if p.audio is not None else
                         np.zeros((t, cfg.audio_features), np.float32))
        if cfg.has_visual:
            video.append(_crops(p, cfg, idx))
            face.append(_has_face(p) and bool(p.feats.face[k]))
        gold.append(p.gold[k])
    out = _labels(items, rows, gold, face, cfg, device)
    if audio:
        out["audio"] = torch.from_numpy(np.stack(audio)).float().to(device)
    if video:
        out["video"] = VisualBranch.prepare(torch.from_numpy(np.stack(video)).to(device))
    return out


def window_batch(items: list[Prepared], rows: np.ndarray, cfg: ModelConfig, device) -> dict:
    """The clips of ``rows`` as runs of overlapping clips: every step's features (and face crop)
    once per run, all runs laid end to end in ``steps_audio`` / ``frames`` (N steps), and
    ``window`` (B, T): the positions of each clip's T steps in them."""
    t = cfg.clip_steps
    audio, video, gold, face, offsets = [], [], [], [], []
    base = 0
    for run in _runs(rows, t):
        p, ends = items[run[0, 0]], run[:, 1]
        steps = np.maximum(np.arange(ends[0], ends[-1] + t) - (t - 1), 0)
        if cfg.has_audio:
            audio.append(p.audio[steps] if p.audio is not None else
                         np.zeros((len(steps), cfg.audio_features), np.float32))
        if cfg.has_visual:
            video.append(_crops(p, cfg, steps))
            face += [_has_face(p) and bool(f) for f in p.feats.face[ends]]
        gold += list(p.gold[ends])
        offsets.append(base + ends - ends[0])
        base += len(steps)
    out = _labels(items, rows, gold, face, cfg, device)
    off = torch.from_numpy(np.concatenate(offsets)).to(device)
    out["window"] = off[:, None] + torch.arange(t, device=device)[None, :]
    if audio:
        out["steps_audio"] = torch.from_numpy(np.concatenate(audio)).float().to(device)
    if video:
        out["frames"] = VisualBranch.prepare(torch.from_numpy(np.concatenate(video)).to(device))
    return out


def _runs(rows: np.ndarray, t: int) -> list[np.ndarray]:
    """A batch's rows split where the sequence changes or the next clip shares no step."""
    cut = np.flatnonzero((np.diff(rows[:, 0]) != 0) | (np.diff(rows[:, 1]) <= 0)
                         | (np.diff(rows[:, 1]) >= t)) + 1
    return np.split(rows, cut)


def _has_face(p: Prepared) -> bool:
    return p.feats.track is not None and bool(p.feats.face.any())


def _crops(p: Prepared, cfg: ModelConfig, steps: np.ndarray) -> np.ndarray:
    if _has_face(p):
        return p.feats.model_crops()[steps]
    return np.zeros((len(steps), cfg.input_size, cfg.input_size), np.uint8)


def _labels(items, rows, gold, face, cfg: ModelConfig, device) -> dict:
    out = {"gold": torch.from_numpy(np.stack(gold)).float().to(device)}
    if cfg.has_audio:
        out["has_audio"] = torch.tensor([items[i].feats.audio is not None for i, _ in rows],
                                        device=device)
    if cfg.has_visual:
        out["face"] = torch.tensor(face, dtype=torch.bool, device=device)
    return out


def batch_outputs(model: AVModel, batch: dict) -> dict[str, torch.Tensor]:
    """The model's predictions for a ``clip_batch`` or a ``window_batch`` (the same numbers)."""
    if "window" not in batch:
        return model(audio=batch.get("audio"), video=batch.get("video"))
    starts = batch["window"][:, 0].tolist()
    t = model.cfg.clip_steps

    def clips(x: torch.Tensor, length: int = t) -> torch.Tensor:
        # slices stacked: forward and backward faster on CPU than one advanced index
        return torch.stack([x[s:s + length] for s in starts])

    za = zv = None
    if "steps_audio" in batch:
        assert model.audio is not None
        s = model.audio.normalise(batch["steps_audio"])
        scores = model.audio.step_scores(s)
        za, _ = model.audio.clip_forward(clips(s), None if scores is None else clips(scores))
    if "frames" in batch:
        vis = model.visual
        assert vis is not None
        # runs laid end to end: a conv3 output mixing two runs is never one a clip reads
        enc, feat = vis.frame_features(batch["frames"].unsqueeze(0))
        zv, _ = vis.clip_forward(clips(enc[0]), clips(feat[0], t - model.cfg.shared_context))
    return model.predictions(za, zv)


def batch_loss(model: AVModel, batch: dict, cfg: ModelConfig, kind: str) -> torch.Tensor:
    """The training loss of a batch: the modality's head, and for av the fusion head on clips
    with voice and face plus each branch head on the clips that have its input."""
    out, gold = batch_outputs(model, batch), batch["gold"]
    if cfg.modality != "av":
        return loss_fn(out["pred"], gold, kind)
    face, has_audio = batch["face"], batch["has_audio"]
    both = face & has_audio
    return (loss_fn(out["pred"][both], gold[both], kind)
            + loss_fn(out["audio_pred"][has_audio], gold[has_audio], kind)
            + loss_fn(out["visual_pred"][face], gold[face], kind))


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
    predictor = Predictor(model, batch_size=batch_size, device=device)
    preds = []
    for p in items:
        try:
            _, values, _ = predict_features(predictor, p.feats)
        except AvemoError:  # e.g. a video model and a sequence without any face: not scored
            values = np.full(p.gold.shape, np.nan, np.float32)
        preds.append(values)
    return preds, [p.gold for p in items]


def devel_scores(preds, golds, targets) -> dict[str, float]:
    return {t: ccc(np.concatenate([p[:, j] for p in preds]),
                   np.concatenate([g[:, j] for g in golds])) for j, t in enumerate(targets)}


def train(opts: TrainOptions, log: Callable[[str], None] = print) -> Path:
    """Run the recipe; returns the best checkpoint's path. Under ``torchrun`` every process
    calls this: the clips of each global batch are split between them and DistributedDataParallel
    averages the gradients; rank 0 alone logs, scores devel and writes the run folder."""
    group = Group.from_env(resolve_device(opts.device))
    try:
        return _train(opts, log if group.main else _warnings_only(log), group)
    finally:
        group.close()


def _warnings_only(log: Callable[[str], None]) -> Callable[[str], None]:
    return lambda line: log(line) if line.startswith("avemo: warning") else None


def _train(opts: TrainOptions, log: Callable[[str], None], group: Group) -> Path:
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    device = group.device
    cfg = _model_config(opts, group)
    train_items, devel_items, windows, window = _prepare(opts, cfg, log, group)
    torch.manual_seed(opts.seed)
    model = AVModel(cfg).to(device)
    if model.audio is not None:
        mean, std = audio_statistics([p.feats.audio.values[p.feats.audio.heard]
                                      for p in train_items if p.feats.audio is not None])
        model.audio.mean.copy_(torch.from_numpy(mean))
        model.audio.std.copy_(torch.from_numpy(std))
    optim = optimiser(model, opts.lr)
    start_epoch, best_score, best_epoch = _start(opts, out, model, optim, cfg, log, group)
    adapt_audio(model, train_items)
    if group.main:
        write_text(out / "run.json", json.dumps(
            {"options": asdict(opts), "model": cfg.to_dict(), "processes": group.world},
            indent=2, default=str))
    provenance = {"data": str(Path(opts.data).resolve()), "layout": opts.layout,
                  "train_sequences": [p.seq.name for p in train_items],
                  "devel_sequences": [p.seq.name for p in devel_items],
                  "commit": _git_commit(), "options": asdict(opts)}
    step = _Step(model, cfg, opts.loss)
    stepper: torch.nn.Module = step
    if group.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        torch.manual_seed(opts.seed + 7919 * group.rank)  # each rank its own dropout masks
        # every parameter takes part in every step, unless an attention is switched off
        stepper = DistributedDataParallel(
            step, device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=not (cfg.audio_attention and cfg.visual_attention))
    make_batch = window_batch if window > 1 else clip_batch
    for epoch in range(start_epoch, opts.epochs):
        model.train()
        t0 = time.perf_counter()
        mine = [group.part(rows) for rows in epoch_batches(windows, opts.batch_size, opts.seed,
                                                            epoch)
                if len(rows) >= group.world]  # a last batch too small for every rank: dropped
        batches = prefetched(mine, lambda r: make_batch(train_items, r, cfg, "cpu"), device,
                             ahead=2 if device.type == "cuda" else 0)
        total, seen = _epoch(batches, stepper, optim, epoch, group)
        train_s = time.perf_counter() - t0
        if group.main:
            best_score, best_epoch = _end_epoch(
                model, optim, cfg, devel_items, device, out, provenance, opts, log,
                epoch, total / max(seen, 1), seen, train_s, best_score, best_epoch)
        group.barrier()  # the next epoch (or the end) after rank 0 has saved this one
    if not group.main:
        return out / "best.safetensors"
    return _finish(out, devel_items, cfg, device, best_epoch, log)


def _model_config(opts: TrainOptions, group: Group) -> ModelConfig:
    """The model the options describe, checked with the options that must agree with it."""
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
    if opts.batch_size < group.world:
        raise TrainError(f"--batch-size {opts.batch_size} is the global batch: it needs at "
                         f"least one clip for each of the {group.world} processes")
    return cfg


def _prepare(opts: TrainOptions, cfg: ModelConfig, log: Callable[[str], None], group: Group
             ) -> tuple[list[Prepared], list[Prepared], list, int]:
    """The train and devel sequences' features, and the training clips in windows."""
    seqs = load_dataset(opts.data, opts.layout, opts.split)
    by_part = {p: [s for s in seqs if s.partition == p and s.labels is not None]
               for p in ("train", "devel")}
    for p in ("train", "devel"):
        if not by_part[p]:
            raise TrainError(f"{opts.data}: no labelled {p} sequences in the {opts.layout} layout")
    for seq in by_part["train"] + by_part["devel"]:
        check_label_range(seq, cfg.targets)
    settings = FeatureSettings.for_model(cfg, faces_backend=opts.faces_backend)
    cache = FeatureCache(opts.cache)
    train_items = prepare_sequences(by_part["train"], settings, cfg, cache, opts.jobs, log, group)
    devel_items = prepare_sequences(by_part["devel"], settings, cfg, cache, opts.jobs, log, group)
    if not train_items or not devel_items:
        raise TrainError(f"{opts.data}: no train or devel sequence could be read")
    samples = training_samples(train_items, cfg, opts.clip_stride)
    if len(samples) == 0:
        article = "a" if cfg.modality == "video" else "an"
        raise TrainError(f"{opts.data}: no labelled training steps usable by {article} "
                         f"{cfg.modality} model")
    # batch normalisation's statistics would see a window's frames once, not once per clip
    window = 1 if cfg.batch_norm else max(1, opts.window)
    windows = training_windows(samples, window, cfg.clip_steps)
    device = group.device
    where = f"{device}" if group.world == 1 else \
        f"{group.world} processes ({device.type}), {_per_process(opts.batch_size, group.world)}"
    log(f"train: {plural(len(train_items), 'sequence')}, {plural(len(samples), 'clip')} "
        f"in {plural(len(windows), 'window')} of up to {window}; devel: "
        f"{plural(len(devel_items), 'sequence')}; model {cfg.modality} on {where}; global "
        f"batch {opts.batch_size}")
    return train_items, devel_items, windows, window


def _start(opts: TrainOptions, out: Path, model, optim, cfg: ModelConfig,
           log: Callable[[str], None], group: Group) -> tuple[int, float, int]:
    """The epoch to start from, the best devel score so far and its epoch: a resumed run's,
    or a fresh start (whose metrics log is emptied)."""
    start_epoch, best_score, best_epoch = 0, -np.inf, 0
    state_path = out / "last.pt"
    metrics_path = out / "metrics.jsonl"
    if opts.resume and state_path.exists():
        start_epoch, best_score, best_epoch = _resume(state_path, model, optim, cfg,
                                                      group.device)
        log(f"resuming from epoch {start_epoch} (best devel {best_score:.4f} at epoch "
            f"{best_epoch})")
        if group.main:
            _truncate_log(metrics_path, start_epoch)
    elif opts.resume:
        log(f"nothing to resume in {out}; starting afresh")
    if start_epoch == 0 and group.main:
        metrics_path.unlink(missing_ok=True)
    return start_epoch, best_score, best_epoch


def _epoch(batches, stepper: torch.nn.Module, optim, epoch: int, group: Group
           ) -> tuple[float, int]:
    """One pass over this process's batches: the summed loss (over every process) and the
    clips seen."""
    amp = group.device.type == "cuda"
    total, seen = 0.0, 0
    for batch in batches:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = stepper(batch)
        n = len(batch["gold"])
        value, count = group.total(float(loss.detach()) * n, n)
        if not np.isfinite(value):
            raise TrainError(f"epoch {epoch + 1}: the training loss is {value} (diverged); "
                             f"nothing was saved from this epoch: lower --lr and re-run "
                             f"(--resume goes on from the last finished epoch)")
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        total += value
        seen += int(count)
    return total, seen


def _finish(out: Path, devel_items: list[Prepared], cfg: ModelConfig, device,
            best_epoch: int, log: Callable[[str], None]) -> Path:
    """Rank 0 after the last epoch: fit the post-processing on devel into the best
    checkpoint."""
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


def optimiser(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam (the paper's), as one fused kernel over all parameters where this torch has one
    for the device (the same update; on this 2-core CPU 8x faster than the per-tensor loop,
    ~5% of a video training step)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr)


def prefetched(rows: list[np.ndarray], make: Callable[[np.ndarray], dict], device,
               ahead: int = 2) -> Iterator[dict]:
    """The batches ``make`` builds (on the CPU) from each of ``rows``, built by a thread up to
    ``ahead`` batches before they are used, so that gathering clips overlaps the model's work
    on a GPU (in pinned memory, copied asynchronously). ``ahead`` 0: built in turn, in this
    thread (on the CPU, where a thread beside torch's own slowed training by a quarter)."""
    cuda = torch.device(device).type == "cuda"
    if ahead <= 0:
        for r in rows:
            yield {k: v.to(device) for k, v in make(r).items()}
        return
    q: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def work():
        try:
            for r in rows:
                b = make(r)
                if cuda:
                    b = {k: v.pin_memory() for k, v in b.items()}
                while not stop.is_set():
                    try:
                        q.put(("batch", b), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(("error", exc))

    thread = threading.Thread(target=work, name="avemo-batches", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield {k: v.to(device, non_blocking=True) for k, v in item.items()}
    finally:
        stop.set()
        while thread.is_alive():  # the thread may wait to put its last item: take it
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            thread.join(0.05)


def _per_process(batch: int, world: int) -> str:
    low, high = batch // world, -(-batch // world)
    return f"{low} clips each" if low == high else f"{low}-{high} clips each"


class _Step(torch.nn.Module):
    """One batch's loss as a module's forward, so that DistributedDataParallel can wrap it."""

    def __init__(self, model: AVModel, cfg: ModelConfig, kind: str):
        super().__init__()
        self.model, self.cfg, self.kind = model, cfg, kind

    def forward(self, batch: dict) -> torch.Tensor:
        return batch_loss(self.model, batch, self.cfg, self.kind)


def _resume(state_path: Path, model: AVModel, optim, cfg: ModelConfig, device
            ) -> tuple[int, float, int]:
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
    return state["epoch"], state["best"], state["best_epoch"]


def _end_epoch(model, optim, cfg, devel_items, device, out: Path, provenance, opts, log,
               epoch: int, loss: float, seen: int, train_s: float, best_score: float,
               best_epoch: int) -> tuple[float, int]:
    """Rank 0 after an epoch: score devel, keep the best, log the metrics, save the state."""
    preds, golds = evaluate_items(model, devel_items, device)
    scores = devel_scores(preds, golds, cfg.targets)
    mean_score = float(np.nanmean(list(scores.values())))
    record = {"epoch": epoch + 1, "train_loss": loss, "devel_ccc": scores,
              "train_seconds": round(train_s, 3), "clips_per_second": round(seen / train_s, 2)}
    improved = mean_score > best_score
    if improved:
        best_score, best_epoch = mean_score, epoch + 1
        save_checkpoint(out / "best.safetensors", model,
                        provenance={**provenance, "epoch": epoch + 1, "devel_ccc": scores})
    append_line(out / "metrics.jsonl", json.dumps(record))
    _save_state(out / "last.pt", model, optim, cfg, epoch + 1, best_score, best_epoch)
    log(f"epoch {epoch + 1}/{opts.epochs}: loss {record['train_loss']:.4f}, devel CCC "
        + ", ".join(f"{t} {v:.3f}" for t, v in scores.items())
        + f" ({record['clips_per_second']:.0f} clips/s){'  *best' if improved else ''}")
    return best_score, best_epoch


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
        write_text(path, "".join(line + "\n" for line in lines))
