"""Speed of `avemo annotate` over a folder, beside the time ffmpeg takes to decode it.

Builds a folder of talking-face videos (the shared studio clips cut and re-encoded at different
offsets, 512x512 25 fps with AAC audio; ../shared/data is read in place) and measures, in one
run and interleaved (so that a busy machine slows every row alike):

- the limit: ffmpeg decoding every file of the folder, one after the other, video and audio
  (``ffmpeg -i FILE -f null -``, the ffmpeg avemo uses);
- `avemo annotate FOLDER` with each ``--jobs`` setting (a fresh process per run, start-up
  included), and one file of it alone;
- with ``--checkout TREE`` (e.g. a git worktree of the previous commit) the same runs of that
  source tree's avemo, for a before/after in the same run.

Prints, per run, the median wall time of ``--repeats``, its ratio to the decode time (the
issue's measure: lower is better), the aggregate x real time and the peak resident memory of
the largest process (the parent, an extraction process or a worker); then where the time of
the default folder run goes, by stage (``--profile``, summed over every process).

    python benchmarks/bench_jobs.py [--videos 7] [--seconds 30] [--repeats 3]
        [--jobs 1 2 2:one-model 1:model-per-job] [--checkout TREE]

(``N:one-model`` runs ``--jobs N --one-model``; ``1:model-per-job`` is the folder one file after
the other in one process, as before the folder pipeline.)
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
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


def decode_seconds(files: list[Path]) -> float:
    """Wall seconds ffmpeg takes to decode ``files`` one after the other (video and audio)."""
    t0 = time.perf_counter()
    for f in files:
        subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(f), "-f", "null", "-"],
                       check=True)
    return time.perf_counter() - t0


def annotate_args(target: Path, out: Path, weights: str, setting: str) -> list[str]:
    count, _, flag = setting.partition(":")
    return [sys.executable, "-m", "avemo_cli", "annotate", str(target), "-o", str(out),
            "--weights", weights, "-q", "--overwrite", "--jobs", count,
            *([f"--{flag}"] if flag else [])]


def with_tree(tree: Path | None, args: list[str]) -> list[str]:
    """``args`` run with ``tree``'s avemo (None: this one)."""
    if tree is None:
        return args
    return ["env", f"PYTHONPATH={tree}", *args]


def profile(tree: Path | None, args: list[str]) -> dict[str, float]:
    """Seconds per stage of one ``--profile`` run."""
    proc = subprocess.run(with_tree(tree, args + ["--profile"]), capture_output=True,
                          text=True, check=True)
    return {m.group(1).strip(): float(m.group(2)) for m in re.finditer(
        r"│ ([\w ,()\-.]+?)\s+│\s+([\d.]+) │", proc.stderr)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=HERE.parent / "shared" / "data")
    ap.add_argument("--videos", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--jobs", nargs="+", default=["1", "2", "2:one-model", "1:model-per-job"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--weights", default="default")
    ap.add_argument("--checkout", type=Path, default=None, metavar="TREE",
                    help="also run this source tree's avemo (the 'before' rows)")
    ap.add_argument("--make-only", type=Path, default=None, metavar="DIR",
                    help="only build the folder of videos in DIR (gpu_check.sh uses it)")
    args = ap.parse_args(argv)
    if args.make_only is not None:
        build_folder(args.shared, args.videos, args.seconds, args.make_only)
        return
    print(f"avemo {__version__}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.videos} videos of {args.seconds:g} s; medians of {args.repeats}")
    trees: dict[str, Path | None] = {"now": None}
    if args.checkout is not None:
        trees["before"] = args.checkout.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_folder(args.shared, args.videos, args.seconds, Path(tmp) / "in")
        files = sorted(folder.glob("*.mp4"))
        runs = [(f"folder --jobs {s}", folder, s, args.videos) for s in args.jobs] + \
            [("one file", files[0], "1", 1)]
        walls: dict[tuple[str, str], list[float]] = {}
        peaks: dict[tuple[str, str], list[float]] = {}
        decodes: dict[str, list[float]] = {"folder": [], "one file": []}
        for _ in range(args.repeats):
            decodes["folder"].append(decode_seconds(files))
            decodes["one file"].append(decode_seconds(files[:1]))
            for name, target, setting, _n in runs:
                for tree_name, tree in trees.items():
                    cmd = annotate_args(target, Path(tmp) / "out", args.weights, setting)
                    mib, sec = peak_rss(with_tree(tree, cmd))
                    walls.setdefault((name, tree_name), []).append(sec)
                    peaks.setdefault((name, tree_name), []).append(mib)
        decode = {k: statistics.median(v) for k, v in decodes.items()}
        print(f"ffmpeg's decode, one file after the other (median): folder "
              f"{decode['folder']:.2f} s, one file {decode['one file']:.2f} s")
        print("| run | avemo | wall, median (s) | x ffmpeg's decode | x real time | each run (s) "
              "| peak MiB, largest process |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, _target, _setting, n in runs:
            limit = decode["one file" if n == 1 else "folder"]
            for tree_name in trees:
                w = walls[(name, tree_name)]
                wall = statistics.median(w)
                print(f"| {name} | {tree_name} | {wall:.2f} | **{wall / limit:.2f}x** | "
                      f"{n * args.seconds / wall:.1f}x | {', '.join(f'{x:.2f}' for x in w)} | "
                      f"{max(peaks[(name, tree_name)]):.0f} |", flush=True)
        stages = profile(None, annotate_args(folder, Path(tmp) / "out", args.weights,
                                             args.jobs[0]))
        print(f"where the time of `--jobs {args.jobs[0]}` goes (one --profile run, seconds, "
              f"summed over its processes; stages overlap): " + ", ".join(
                  f"{k} {v:.2f}" for k, v in stages.items() if v >= 0.005))


if __name__ == "__main__":
    main()
