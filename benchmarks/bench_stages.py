"""Each annotation stage beside its own limit, at three frame sizes, and the end-to-end rate.

For a 60 s talking-face video at 640x640 25 fps, 1280x720 30 fps and 1920x1080 30 fps (the shared
studio clips scaled and padded, H.264 + AAC; ../shared/data is read in place), prints:

- limits, each stage alone: ffmpeg decoding the analysis frames (what `demux.iter_frames`
  runs: fps + scale filters, grey raw frames to a pipe) and decoding the audio; openSMILE over
  the whole audio; dlib detection and landmarks per analysis frame; the model's forward pass
  over every step (all single runs after a warm-up, wall seconds);
- end to end: a fresh `avemo annotate --profile` process (start-up included), median of
  --repeats, with its x real time and per-stage seconds (stages overlap: the audio path runs
  beside the video path).

    python benchmarks/bench_stages.py [--seconds 60] [--repeats 3] [--sizes 640x640@25 ...]
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from avemo_cli import __version__, audio, demux, faces, predict
from avemo_cli.checkpoint import load_checkpoint, resolve_weights

HERE = Path(__file__).resolve().parents[1]
SIZES = ["640x640@25", "1280x720@30", "1920x1080@30"]


def build(shared: Path, size: str, seconds: float, out: Path) -> Path:
    (w, h), fps = map(int, size.split("@")[0].split("x")), int(size.split("@")[1])
    src = shared / "videos" / "WDA_KatieHill_000.mp4"
    subprocess.run([demux.ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", "-1", "-i",
                    str(src), "-t", f"{seconds:g}", "-vf",
                    f"scale=-2:{h},pad={w}:{h}:(ow-iw)/2:0,fps={fps}", "-c:v", "libx264",
                    "-preset", "veryfast", "-c:a", "aac", str(out)], check=True)
    return out


def timed(fn, *args):
    t0 = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t0, result


def limits(video: Path, model) -> dict[str, float]:
    info = demux.probe(video)
    out: dict[str, float] = {}
    out["ffmpeg: analysis frames"], frames = timed(
        lambda: list(demux.iter_frames(info, 4.0, 480)))
    out["ffmpeg: audio"], samples = timed(demux.read_audio, info)
    n = len(frames)
    audio.egemaps(samples[:16000 * 2], 16000, 8, 4.0)  # warm-up (import, first instance)
    out["openSMILE, whole audio"], feats = timed(audio.egemaps, samples, 16000, n, 4.0)
    backend = faces.make_backend("dlib")
    backend.detect(frames[0])
    out["dlib detection, every frame"], boxes = timed(lambda: [backend.detect(f)
                                                               for f in frames])
    found = [(f, b[0]) for f, b in zip(frames, boxes) if b]
    t, _ = timed(lambda: [backend.landmarks(f, b) for f, b in found])
    out["dlib landmarks, every frame"] = t * n / max(1, len(found))
    crops = np.random.default_rng(0).integers(0, 255, (n, model.cfg.input_size,
                                                       model.cfg.input_size), np.uint8)
    out["model forward, every step"], _ = timed(predict.predict_steps, model, feats.values,
                                                crops)
    return out


def end_to_end(video: Path, out: Path, repeats: int) -> tuple[float, dict[str, float]]:
    walls, profiles = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "avemo_cli", "annotate", str(video), "-o",
                               str(out), "-q", "--overwrite", "--profile"], capture_output=True,
                              text=True, check=True)
        walls.append(time.perf_counter() - t0)
        profiles.append({m.group(1).strip(): float(m.group(2)) for m in re.finditer(
            r"│ ([\w ,()\-.]+?)\s+│\s+([\d.]+) │", proc.stderr)})
    mid = sorted(range(repeats), key=lambda i: walls[i])[repeats // 2]
    return walls[mid], profiles[mid]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=HERE.parent / "shared" / "data")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", nargs="+", default=SIZES)
    args = ap.parse_args(argv)
    model = load_checkpoint(resolve_weights(None)).model.eval()
    print(f"avemo {__version__}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}; default model; "
          f"{args.seconds:g} s videos")
    rows: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            video = build(args.shared, size, args.seconds, Path(tmp) / f"{size}.mp4")
            col = rows.setdefault(size, {})
            for stage, sec in limits(video, model).items():
                col[f"limit: {stage}"] = f"{sec:.2f}"
            wall, prof = end_to_end(video, Path(tmp) / "out", args.repeats)
            for stage in ("start-up (imports, model)", "demux", "audio", "faces", "model"):
                col[f"annotate: {stage}"] = f"{prof.get(stage, float('nan')):.2f}"
            col["annotate: wall (median)"] = f"{wall:.2f}"
            col["annotate: x real time"] = f"**{args.seconds / wall:.1f}x**"
    stages = list(next(iter(rows.values())))
    print("| seconds per 60 s of video | " + " | ".join(rows) + " |")
    print("| --- |" + " --- |" * len(rows))
    for stage in stages:
        print(f"| {stage} | " + " | ".join(rows[s][stage] for s in rows) + " |")


if __name__ == "__main__":
    main()
