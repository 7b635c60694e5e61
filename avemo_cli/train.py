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
face) are trained too. The clips, batches and losses are clips.py's; this module is the loop:
options, resume, an epoch, devel scoring and the checkpoints.

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

from .cache import FeatureCache
from .checkpoint import load_checkpoint, save_checkpoint, state_mismatch
from .clips import (Prepared, TrainError, adapt_audio, audio_statistics, batch_loss,
                    check_label_range, clip_batch, devel_scores, epoch_batches, evaluate_items,
                    prefetched, prepare_sequences, training_samples, training_windows,
                    window_batch)
from .datasets import load_dataset
from .distributed import Group
from .errors import plural
from .features import FeatureSettings
from .files import append_line, atomic_path, write_text
from .inference import resolve_device
from .model import AVModel, ModelConfig
from .postprocess import fit_chain

__all__ = ["TrainOptions", "TrainError", "train"]


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
    overwrite: bool = False  # start afresh in an -o that holds a run (else refused)
    jobs: int = 1
    cache: str | None = None
    faces_backend: str = "dlib"
    config: dict = field(default_factory=dict)  # further ModelConfig settings


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip() \
            or None
    except Exception:
        return None


def train(opts: TrainOptions, log: Callable[[str], None] = print) -> Path:
    """Run the recipe; returns the best checkpoint's path. Under ``torchrun`` every process
    calls this: the clips of each global batch are split between them and DistributedDataParallel
    averages the gradients; rank 0 alone logs, scores devel and writes the run folder."""
    check_run_folder(opts)
    group = Group.from_env(resolve_device(opts.device))
    try:
        return _train(opts, log if group.main else _warnings_only(log), group)
    finally:
        group.close()


def _warnings_only(log: Callable[[str], None]) -> Callable[[str], None]:
    return lambda line: log(line) if line.startswith("avemo: warning") else None


@dataclass
class _Loop:
    """What the epochs of one run share: the model and its optimiser, the devel sequences,
    the run folder, and where the run stands (the next epoch, the best devel score so far and
    its epoch; a resumed run's, or a fresh start's)."""

    opts: TrainOptions
    model: AVModel
    optim: torch.optim.Optimizer
    devel: list[Prepared]
    out: Path
    device: torch.device
    log: Callable[[str], None]
    provenance: dict = field(default_factory=dict)
    epoch: int = 0
    best_score: float = -np.inf
    best_epoch: int = 0

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg


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
    loop = _Loop(opts, model, optimiser(model, opts.lr), devel_items, out, device, log)
    _start(loop, group)
    adapt_audio(model, train_items)
    if group.main:
        write_text(out / "run.json", json.dumps(
            {"options": asdict(opts), "model": cfg.to_dict(), "processes": group.world},
            indent=2, default=str))
    loop.provenance = {"data": str(Path(opts.data).resolve()), "layout": opts.layout,
                       "train_sequences": [p.seq.name for p in train_items],
                       "devel_sequences": [p.seq.name for p in devel_items],
                       "commit": _git_commit(), "options": asdict(opts)}
    stepper = _stepper(_Step(model, cfg, opts.loss), group, opts.seed)
    make_batch = window_batch if window > 1 else clip_batch
    for epoch in range(loop.epoch, opts.epochs):
        model.train()
        t0 = time.perf_counter()
        mine = [group.part(rows) for rows in epoch_batches(windows, opts.batch_size, opts.seed,
                                                            epoch)
                if len(rows) >= group.world]  # a last batch too small for every rank: dropped
        batches = prefetched(mine, lambda r: make_batch(train_items, r, cfg, "cpu"), device,
                             ahead=2 if device.type == "cuda" else 0)
        total, seen = _epoch(batches, stepper, loop.optim, epoch, group)
        if group.main:
            _end_epoch(loop, epoch, total / max(seen, 1), seen, time.perf_counter() - t0)
        group.barrier()  # the next epoch (or the end) after rank 0 has saved this one
    if not group.main:
        return out / "best.safetensors"
    return _finish(loop)


def _stepper(step: _Step, group: Group, seed: int) -> torch.nn.Module:
    """The module a batch's loss is computed by: the step itself, or under torchrun the step
    wrapped in DistributedDataParallel."""
    if group.world <= 1:
        return step
    from torch.nn.parallel import DistributedDataParallel

    cfg = step.cfg
    torch.manual_seed(seed + 7919 * group.rank)  # each rank its own dropout masks
    # every parameter takes part in every step, unless an attention is switched off
    return DistributedDataParallel(
        step, device_ids=[group.device] if group.device.type == "cuda" else None,
        find_unused_parameters=not (cfg.audio_attention and cfg.visual_attention))


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


RUN_FILES = ("best.safetensors", "last.pt", "metrics.jsonl")


def check_run_folder(opts: TrainOptions) -> None:
    """Refuse, before any work, to start afresh in an -o that holds a run (its checkpoints and
    metrics would be replaced) unless ``--resume`` or ``--overwrite`` says what to do."""
    held = [n for n in RUN_FILES if (Path(opts.out) / n).exists()]
    if held and not (opts.resume or opts.overwrite):
        raise TrainError(f"{opts.out}: already holds a run ({', '.join(held)}): --resume to "
                         f"continue it, --overwrite to start afresh, or another -o folder")


def _start(loop: _Loop, group: Group) -> None:
    """Where the run starts: a resumed run's epoch and best devel score, or a fresh start
    (whose metrics log is emptied)."""
    state_path = loop.out / "last.pt"
    metrics_path = loop.out / "metrics.jsonl"
    if loop.opts.resume and state_path.exists():
        _resume(state_path, loop)
        loop.log(f"resuming from epoch {loop.epoch} (best devel {loop.best_score:.4f} at epoch "
                 f"{loop.best_epoch})")
        if group.main:
            _truncate_log(metrics_path, loop.epoch)
    elif loop.opts.resume:
        loop.log(f"nothing to resume in {loop.out}; starting afresh")
    if loop.epoch == 0 and group.main:
        metrics_path.unlink(missing_ok=True)


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


def _finish(loop: _Loop) -> Path:
    """Rank 0 after the last epoch: fit the post-processing on devel into the best
    checkpoint."""
    best_path = loop.out / "best.safetensors"
    if not best_path.exists():
        raise TrainError(f"{loop.out}: no epoch finished, so there is no best checkpoint")
    best = load_checkpoint(best_path, loop.device)
    preds, golds = evaluate_items(best.model, loop.devel, loop.device)
    post = {t: fit_chain([p[:, j] for p in preds], [g[:, j] for g in golds], loop.cfg.rate)
            for j, t in enumerate(loop.cfg.targets)}
    for t, prm in post.items():
        kept = [k for k in ("median_window", "bias", "scale") if k in prm]
        loop.log(f"post-processing {t}: devel CCC {prm['dev_ccc_raw']:.3f} -> "
                 f"{prm['dev_ccc']:.3f} (kept: {', '.join(kept) or 'none'})")
    save_checkpoint(best_path, best.model, post,
                    {**best.provenance, "postprocess_fitted_on": "devel"})
    loop.log(f"best checkpoint: {best_path} (epoch {loop.best_epoch})")
    return best_path


def optimiser(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam (the paper's), as one fused kernel over all parameters where this torch has one
    for the device (the same update; on this 2-core CPU 8x faster than the per-tensor loop,
    ~5% of a video training step)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr)


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


def _resume(state_path: Path, loop: _Loop) -> None:
    """The model, optimiser and counters of the run's last finished epoch, into ``loop``."""
    try:
        state = torch.load(state_path, map_location=loop.device, weights_only=True)
        if not isinstance(state, dict) or not {"model", "optim", "epoch"} <= set(state):
            raise ValueError("not an avemo training state")
    except Exception as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc):  # (torch's advice to unpickle it is not for avemo)
            why = "it holds pickled objects, which avemo never loads"
        raise TrainError(f"{state_path}: damaged training state ({why}); remove it to "
                         f"start afresh or use another -o folder") from None
    if state.get("config") != loop.cfg.to_dict():
        raise TrainError(f"{state_path}: the run was started with other model settings; "
                         f"resume with the same options or use another -o folder")
    mismatch = state_mismatch(loop.model.state_dict(), state["model"])
    if mismatch:
        raise TrainError(f"{state_path}: {mismatch}; resume with the same options or use "
                         f"another -o folder")
    loop.model.load_state_dict(state["model"])
    loop.optim.load_state_dict(state["optim"])
    loop.epoch, loop.best_score, loop.best_epoch = \
        state["epoch"], state["best"], state["best_epoch"]


def _end_epoch(loop: _Loop, epoch: int, loss: float, seen: int, train_s: float) -> None:
    """Rank 0 after an epoch: score devel, keep the best, log the metrics, save the state."""
    preds, golds = evaluate_items(loop.model, loop.devel, loop.device)
    scores = devel_scores(preds, golds, loop.cfg.targets)
    mean_score = float(np.nanmean(list(scores.values())))
    record = {"epoch": epoch + 1, "train_loss": loss, "devel_ccc": scores,
              "train_seconds": round(train_s, 3), "clips_per_second": round(seen / train_s, 2)}
    improved = mean_score > loop.best_score
    if improved:
        loop.best_score, loop.best_epoch = mean_score, epoch + 1
        save_checkpoint(loop.out / "best.safetensors", loop.model,
                        provenance={**loop.provenance, "epoch": epoch + 1, "devel_ccc": scores})
    append_line(loop.out / "metrics.jsonl", json.dumps(record))
    loop.epoch = epoch + 1
    _save_state(loop.out / "last.pt", loop)
    loop.log(f"epoch {epoch + 1}/{loop.opts.epochs}: loss {record['train_loss']:.4f}, devel CCC "
             + ", ".join(f"{t} {v:.3f}" for t, v in scores.items())
             + f" ({record['clips_per_second']:.0f} clips/s){'  *best' if improved else ''}")


def _save_state(path: Path, loop: _Loop) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": loop.model.state_dict(), "optim": loop.optim.state_dict(),
                    "config": loop.cfg.to_dict(), "epoch": loop.epoch,
                    "best": float(loop.best_score), "best_epoch": loop.best_epoch}, tmp)


def _truncate_log(path: Path, epochs: int) -> None:
    """Keep the first ``epochs`` lines of the metrics log (a killed run may have written the
    line of an epoch whose state was not saved)."""
    if path.exists():
        lines = path.read_text().splitlines()[:epochs]
        write_text(path, "".join(line + "\n" for line in lines))
