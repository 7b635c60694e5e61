"""Training throughput: clips per second per modality, clip by clip vs shared per-window work.

The paper-size model (default ModelConfig) trains on the same synthetic sequences (random
face crops, eGeMAPS-scaled audio, random labels: throughput does not depend on content) with
the training loop's own functions (``epoch_batches``, ``clip_batch`` / ``window_batch``,
``batch_loss``, Adam). "before" is the clip-by-clip computation (every clip's 16 frames
through the whole network) with Adam's per-tensor update, as training ran before; ``window N``
computes each step's per-frame work once for up to N consecutive clips of a sequence, with the
fused Adam that training now uses. For each modality and window: median clips/s over
--repeats runs of --batches batches, and the share of a step's time per part: building the
batch (data), the per-frame part (2D encoder + conv1-conv3 / audio attention scores; forward and
backward measured alone), and the rest (per-clip ConvLSTM attention, conv4, FC, LSTM, heads,
their backward, Adam).

    python benchmarks/bench_train.py [--batches 6] [--repeats 3] [--windows 8 16]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_crosscorpus import machine  # noqa: E402

from avemo_cli import __version__  # noqa: E402
from avemo_cli.audio import AudioFeatures  # noqa: E402
from avemo_cli.datasets import Sequence  # noqa: E402
from avemo_cli.demux import MediaInfo  # noqa: E402
from avemo_cli.tracking import FaceTrack  # noqa: E402
from avemo_cli.model import AVModel, ModelConfig  # noqa: E402
from avemo_cli.features import Features  # noqa: E402
from avemo_cli.clips import (Prepared, adapt_audio, batch_loss, clip_batch,  # noqa: E402
                             epoch_batches, training_samples, training_windows, window_batch)
from avemo_cli.train import optimiser  # noqa: E402


def corpus(n_seq: int, steps: int, size: int, seed: int = 0) -> list[Prepared]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n_seq):
        info = MediaInfo(Path(f"seq{i}.mp4"), steps / 4, True, True)
        track = FaceTrack(rng.integers(0, 256, (steps, size, size), dtype=np.uint8),
                          np.ones(steps, bool), np.zeros((steps, 4)),
                          np.zeros((steps, 68, 2), np.float32), np.zeros((steps, 2, 3)))
        audio = AudioFeatures(rng.normal(10, 5, (steps, 88)).astype(np.float32),
                              np.ones(steps, bool))
        feats = Features(info, steps, None, audio=audio, track=track)
        gold = rng.uniform(-1, 1, (steps, 2)).astype(np.float32)
        items.append(Prepared(Sequence(f"seq{i}", "train", info.path, None, None), feats, gold))
    return items


def run(modality: str, window: int, fused: bool, items, batches: int, batch_size: int,
        device: str = "cpu"):
    cfg = ModelConfig(modality=modality)
    torch.manual_seed(0)
    model = AVModel(cfg).to(device).train()
    adapt_audio(model, items)
    optim = optimiser(model, 1e-4) if fused else torch.optim.Adam(model.parameters(), lr=1e-4)
    rows = epoch_batches(training_windows(training_samples(items, cfg, 1), window,
                                          cfg.clip_steps), batch_size, 0, 0)[:batches + 1]
    make = window_batch if window > 1 else clip_batch
    data = step = frame = 0.0
    clips = 0
    for b, r in enumerate(rows):
        t0 = time.perf_counter()
        batch = make(items, r, cfg, device)
        t1 = time.perf_counter()
        loss = batch_loss(model, batch, cfg, "mse")
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        frame_s = per_frame_part(model, batch)
        if b == 0:  # warm-up
            continue
        data, step, frame, clips = data + t1 - t0, step + t2 - t1, frame + frame_s, clips + len(r)
    total = data + step
    return clips / total, data / total, min(frame, step) / total


def per_frame_part(model: AVModel, batch: dict) -> float:
    """Forward + backward of the per-frame part alone (gradients discarded)."""
    t0 = time.perf_counter()
    outs = []
    if model.visual is not None:  # the clips' frames (B, T, ...) or a window's (1, N, ...)
        frames = batch["video"] if "video" in batch else batch["frames"].unsqueeze(0)
        enc, feat = model.visual.frame_features(frames)
        outs += [enc.sum(), feat.sum()]
    if model.audio is not None:
        steps = batch["audio"] if "audio" in batch else batch["steps_audio"]
        scores = model.audio.step_scores(model.audio.normalise(steps))
        if scores is not None:
            outs.append(scores.sum())
    if outs:
        torch.stack(outs).sum().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=6, help="timed batches per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--windows", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--modalities", nargs="+", default=["audio", "video", "av"])
    ap.add_argument("--device", default="cpu", help="where the model trains (cpu, cuda)")
    ap.add_argument("--only-window", action="store_true",
                    help="only the windowed paths (no clip-by-clip baseline)")
    args = ap.parse_args()
    print(f"avemo {__version__}; {machine()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; device {args.device}; batch {args.batch_size}; "
          f"median of {args.repeats} runs of {args.batches} batches\n")
    items = corpus(4, 400, ModelConfig().input_size)
    print("| modality | path | clips/s | x before | data | per-frame part | rest |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    paths = [] if args.only_window else [("before: clip by clip, Adam per tensor", 1, False),
                                         ("clip by clip, fused Adam", 1, True)]
    paths += [(f"window {w}, fused Adam", w, True) for w in args.windows if w > 1]
    for modality in args.modalities:
        base = None
        batches = args.batches * (20 if modality == "audio" else 1)
        for name, window, fused in paths:
            runs = [run(modality, window, fused, items, batches, args.batch_size, args.device)
                    for _ in range(args.repeats)]
            rate = statistics.median(r[0] for r in runs)
            data = statistics.median(r[1] for r in runs)
            frame = statistics.median(r[2] for r in runs)
            base = base or rate
            print(f"| {modality} | {name} | {rate:.1f} | {rate / base:.2f} | {data:.0%} | "
                  f"{frame:.0%} | {max(0.0, 1 - data - frame):.0%} |", flush=True)

if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
