"""Aggregate speed of `avemo annotate` over a folder with --jobs 1 and --jobs 2.

Builds a folder of talking-face videos (the shared studio clips cut and re-encoded at different
offsets, 512x512 25 fps with AAC audio; ../shared/data is read in place), annotates it with
the default model in a fresh `avemo annotate` process per run, and prints the aggregate real-time
factor (seconds of media per wall second, start-up included; median of --repeats) and the peak
resident memory of the largest process (the parent or one worker).

    python benchmarks/bench_jobs.py [--videos 7] [--seconds 30] [--jobs 1 2 2:one-model]
                                    [--repeats 3]

(``N:one-model`` runs ``--jobs N --one-model``: one model fed by N extraction processes.)
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from avemo_cli import __version__
from avemo_cli.demux import ffmpeg_exe

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "benchmarks"))
from bench_memory import peak_rss  # noqa: E402  (one way to measure a run's peak memory)


def build_folder(shared: Path, n: int, seconds: float, folder: Path) -> Path:
    clips = [shared / "videos" / "WDA_KatieHill_000.mp4",
             shared / "videos" / "WDA_AlexandriaOcasioCortez_000.mp4"]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", "-1", "-ss",
                        f"{i * 0.7:.1f}", "-i", str(clips[i % 2]), "-t", f"{seconds:g}",
                        "-c:v", "libx264", "-preset", "veryfast", "-r", "25", "-c:a", "aac",
                        str(folder / f"talk{i:02d}.mp4")], check=True)
    return folder


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=HERE.parent / "shared" / "data")
    ap.add_argument("--videos", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--jobs", nargs="+", default=["1", "2", "2:one-model"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--weights", default="default")
    ap.add_argument("--make-only", type=Path, default=None, metavar="DIR",
                    help="only build the folder of videos in DIR (gpu_check.sh uses it)")
    args = ap.parse_args(argv)
    if args.make_only is not None:
        build_folder(args.shared, args.videos, args.seconds, args.make_only)
        return
    print(f"avemo {__version__}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.videos} videos of {args.seconds:g} s")
    print("| --jobs | aggregate x real time (median) | each run | peak MiB, largest process |")
    print("| --- | --- | --- | --- |")
    media = args.videos * args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_folder(args.shared, args.videos, args.seconds, Path(tmp) / "in")
        for jobs in args.jobs:
            rates, peaks = [], []
            count, _, flag = jobs.partition(":")
            options = ["--jobs", count] + ([f"--{flag}"] if flag else [])
            for _ in range(args.repeats):
                mib, sec = peak_rss([sys.executable, "-m", "avemo_cli", "annotate",
                                     str(folder), "-o", str(Path(tmp) / "out"), "--weights",
                                     args.weights, "-q", "--overwrite", *options])
                rates.append(media / sec)
                peaks.append(mib)
            print(f"| {jobs} | {statistics.median(rates):.1f} | "
                  f"{', '.join(f'{r:.1f}' for r in rates)} | {max(peaks):.0f} |", flush=True)


if __name__ == "__main__":
    main()
