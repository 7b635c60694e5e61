"""Speed and memory of `avemo annotate` end to end (start-up included).

Builds talking-face test videos from the shared clips (../shared/data/videos, not part of the
project), a paper-sized checkpoint with random weights (the cost of a model does not depend on
its weights), runs the real command line on each video in a fresh process, and reports wall
time, the real-time factor, the per-stage profile and peak resident memory.

    python benchmarks/bench_annotate.py [--shared ../shared/data] [--minutes 1 10]
        [--stride 1] [--weights CKPT] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from avemo_cli.demux import ffmpeg_exe, probe


def build_video(shared: Path, seconds: int, out: Path) -> Path:
    """Alternate the two 8 s 25 fps studio clips (H.264 + AAC) up to ``seconds``."""
    shared = shared.resolve()  # the concat list is read relative to its own folder
    clips = [shared / "videos" / "WDA_KatieHill_000.mp4",
             shared / "videos" / "WDA_AlexandriaOcasioCortez_000.mp4"]
    base = out.with_name("base64s.mp4")
    if not base.exists():
        listing = out.with_name("list.txt")
        listing.write_text("".join(f"file '{clips[i % 2]}'\n" for i in range(8)))
        subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i",
                        str(listing), "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
                        "-r", "25", "-c:a", "aac", str(base)], check=True)
    reps = -(-seconds // 64)
    listing = out.with_name(f"list{seconds}.txt")
    listing.write_text(f"file '{base}'\n" * reps)
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i",
                    str(listing), "-t", str(seconds), "-c", "copy", str(out)], check=True)
    return out


def run_once(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of the avemo process, and its stderr."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "w = time.perf_counter() - t; "
            "print(w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); "
            "sys.stderr.write(p.stderr); sys.exit(p.returncode)")
    proc = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"avemo failed:\n{proc.stderr}")
    wall, rss = map(float, proc.stdout.split())
    return wall, rss, proc.stderr


def main(argv=None) -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=here.parent / "shared" / "data")
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10])
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        weights = args.weights
        if weights is None:
            import torch

            from avemo_cli.checkpoint import save_checkpoint
            from avemo_cli.model import AVModel, ModelConfig

            torch.manual_seed(0)
            weights = save_checkpoint(tmp / "paper.safetensors", AVModel(ModelConfig()))
        print(f"machine: {os.cpu_count()} CPUs; torch threads default; device {args.device}")
        for minutes in args.minutes:
            video = build_video(args.shared, int(minutes * 60), tmp / f"talk_{minutes:g}min.mp4")
            info = probe(video)
            cmd = [sys.executable, "-m", "avemo_cli", "annotate", str(video), "-o",
                   str(tmp / "out"), "--weights", str(weights), "--device", args.device,
                   "--stride", str(args.stride), "--overwrite", "--profile", "--quiet"]
            wall, rss, err = run_once(cmd)
            print(f"\n== {video.name}: {info.duration:.1f} s, {info.n_frames} frames "
                  f"{info.width}x{info.height} @ {info.fps:g} fps, stride {args.stride}")
            print(f"wall {wall:.2f} s (process start to exit) -> real-time factor "
                  f"{info.duration / wall:.1f}x; peak RSS {rss:.0f} MB")
            print(err.strip())


if __name__ == "__main__":
    main()
