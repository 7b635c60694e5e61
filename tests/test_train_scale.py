"""Training at scale: the shared per-window computation equals clip-by-clip training, and
torchrun's data-parallel training (2 CPU processes, gloo) equals one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avemo_cli.audio import AudioFeatures
from avemo_cli.datasets import Sequence
from avemo_cli.demux import MediaInfo
from avemo_cli.tracking import FaceTrack
from avemo_cli.features import Features
from avemo_cli.testing.corpus import build_corpus
from avemo_cli.testing.tiny_checkpoint import tiny_model
from avemo_cli.clips import (Prepared, adapt_audio, batch_loss, clip_batch, epoch_batches,
                             training_samples, training_windows, window_batch)

from conftest import shared_file


def _item(name: str, steps: int, rng, audio: bool = True, no_face=()) -> Prepared:
    info = MediaInfo(Path(f"{name}.mp4"), steps / 4, True, audio)
    found = np.ones(steps, bool)
    found[list(no_face)] = False
    crops = rng.integers(0, 256, (steps, 64, 64), dtype=np.uint8)
    crops[~found] = 0
    track = FaceTrack(crops, found, np.zeros((steps, 4)), np.zeros((steps, 68, 2), np.float32),
                      np.zeros((steps, 2, 3)))
    feats = Features(info, steps, None, track=track, audio=AudioFeatures(
        rng.normal(5, 10, (steps, 88)).astype(np.float32), np.ones(steps, bool))
        if audio else None)
    gold = rng.uniform(-1, 1, (steps, 2)).astype(np.float32)
    gold[:2] = np.nan  # unlabelled steps are not trained on
    return Prepared(Sequence(name, "train", info.path, None, None), feats, gold)


@pytest.mark.parametrize("modality", ["av", "video", "audio"])
def test_shared_window_training_equals_clip_by_clip(modality):
    """Same loss and same gradients for every parameter, on batches that mix sequences, runs
    with gaps (faceless steps left out of video training), clips padded at the start and a
    sequence without audio."""
    rng = np.random.default_rng(0)
    items = [_item("a", 60, rng, no_face=range(20, 24)), _item("b", 45, rng, audio=False),
             _item("c", 30, rng)]
    model = tiny_model(modality, seed=1, dropout=0.0).train()
    cfg = model.cfg
    adapt_audio(model, items)
    samples = training_samples(items, cfg, 1)
    windows = training_windows(samples, 8, cfg.clip_steps)
    assert all(len(w) <= 8 and len(set(w[:, 0])) == 1 for w in windows)
    batches = epoch_batches(windows, 12, seed=0, epoch=0)
    assert sorted(map(tuple, np.concatenate(batches))) == sorted(map(tuple, samples))
    compared = 0
    for rows in batches[:6]:
        losses, grads = [], []
        for make in (clip_batch, window_batch):
            model.zero_grad(set_to_none=True)
            loss = batch_loss(model, make(items, rows, cfg, "cpu"), cfg, "mse")
            loss.backward()
            losses.append(float(loss.detach()))
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None})
        assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)
        assert grads[0].keys() == grads[1].keys()
        assert grads[0]
        for name, g in grads[0].items():
            assert torch.allclose(g, grads[1][name], rtol=1e-4, atol=1e-6), name
        compared += 1
    assert compared == 6


def test_windows_of_one_clip_keep_the_papers_order():
    """--clip-window 1: every clip alone, in the permutation the clip-by-clip recipe drew."""
    rng = np.random.default_rng(1)
    items = [_item("a", 40, rng), _item("b", 25, rng)]
    samples = training_samples(items, tiny_model("audio").cfg, 1)
    rows = np.concatenate(epoch_batches(training_windows(samples, 1, 16), 16, 3, 2))
    order = np.random.default_rng(3 * 100003 + 2).permutation(len(samples))
    assert np.array_equal(rows, samples[order])


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_two_processes_train_like_one(tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU) with the same global batch: each epoch's
    metrics written once, devel CCC within 0.05 of one process; --resume under torchrun."""
    shared_file("videos", "WDA_KatieHill_000.mp4")
    corpus = build_corpus(tmp_path / "avec", "avec2017")
    cache = tmp_path / "cache"
    common = ["train", "--data", str(corpus), "--modality", "audio", "--lr", "1e-3",
              "--batch-size", "32", "--cache", str(cache)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def avemo(*args, procs=1):
        launcher = [sys.executable, "-m", "avemo_cli"] if procs == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(procs), "-m", "avemo_cli"]
        return subprocess.run(launcher + common + list(args), capture_output=True, text=True,
                              env=env, timeout=600)

    one = avemo("--epochs", "3", "-o", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = avemo("--epochs", "2", "-o", str(tmp_path / "two"), procs=2)
    assert two.returncode == 0, two.stderr
    assert "2 processes (cpu), 16 clips each" in two.stderr
    assert two.stdout.strip().endswith("best.safetensors")
    assert two.stdout.count("\n") == 1
    assert [m["epoch"] for m in _metrics(tmp_path / "two")] == [1, 2]
    resumed = avemo("--epochs", "3", "-o", str(tmp_path / "two"), "--resume", procs=2)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("resuming from epoch 2") == 1
    single, multi = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [m["epoch"] for m in multi] == [1, 2, 3]
    for target in ("valence", "arousal"):  # the runs differ by their dropout masks only
        assert abs(single[-1]["devel_ccc"][target] - multi[-1]["devel_ccc"][target]) <= 0.05
    for a, b in zip(single, multi):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.05)


def test_prefetched_batches_arrive_in_order_and_errors_reach_the_loop():
    from avemo_cli.clips import prefetched

    rows = [np.array([[0, k]]) for k in range(7)]
    for ahead in (0, 1, 3):
        got = [int(b["k"]) for b in prefetched(rows, lambda r: {"k": torch.tensor(r[0, 1])},
                                               "cpu", ahead)]
        assert got == list(range(7))

    def broken(r):
        if r[0, 1] == 3:
            raise ValueError("row 3")
        return {"k": torch.tensor(r[0, 1])}

    seen = []
    with pytest.raises(ValueError, match="row 3"):
        for b in prefetched(rows, broken, "cpu", 2):
            seen.append(int(b["k"]))
    assert seen == [0, 1, 2]
    it = prefetched(rows, lambda r: {"k": torch.tensor(r[0, 1])}, "cpu", ahead=1)
    next(it)
    it.close()  # the loop stopped early: the thread is stopped, nothing hangs
