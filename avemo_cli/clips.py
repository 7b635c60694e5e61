"""Training data: a corpus's sequences prepared (features from the cache, step labels), the
clips cut from them (16 steps ending at every labelled step, grouped into windows of
consecutive clips that share one computation of their frames), batches, losses, and the devel
scoring that the training loop (train.py) runs every epoch.

``window_batch`` computes each step's per-frame work once for its window and slices it into
the clips: the same loss and gradients as ``clip_batch``'s clip-by-clip inputs. Clips whose
predicted step has no face are left out of visual training.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .cache import FeatureCache, describe_counts, extract_all
from .datasets import LABEL_RANGE, Sequence, outside_range
from .distributed import Group
from .errors import AvemoError
from .features import Features, FeatureSettings
from .inference import predict_features
from .metrics import ccc
from .model import AVModel, ModelConfig, VisualBranch
from .predict import Predictor, clip_steps


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
        told = label_mismatch(s, feats.n_steps / cfg.rate)
        if told and group.main:
            log(f"avemo: warning: {told}")
        out.append(Prepared(s, feats, s.step_targets(feats.n_steps, cfg.rate, cfg.targets)))
    return out


def label_mismatch(seq: Sequence, media_seconds: float) -> str:
    """What a user must hear when a label file's times do not fit its media ("" when they
    do): labels that all lie past the media's end (nothing of the sequence is used), or that
    run far past it (the wrong media, or another time unit?)."""
    if seq.label_path is None or seq.labels is None or seq.labels.empty:
        return ""  # (a categorical clip's constant label spans any length)
    times = seq.labels["time"].to_numpy(np.float64)
    first, last = float(np.nanmin(times)), float(np.nanmax(times))
    if first > media_seconds:
        return (f"{seq.label_path}: its labels begin at {first:.1f} s, after {seq.media} ends "
                f"({media_seconds:.1f} s): nothing of this sequence is used")
    if last > media_seconds + max(5.0, 0.5 * media_seconds):
        return (f"{seq.label_path}: its labels run to {last:.1f} s but {seq.media} is "
                f"{media_seconds:.1f} s long: labels past its end are not used (the wrong "
                f"media, or times in another unit?)")
    return ""




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
        bad = outside_range(v)
        if bad is not None:
            raise TrainError(f"{where}: {t} value {bad:g} is outside [{lo:g}, {hi:g}]; "
                             f"rescale the ratings to that range")


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
