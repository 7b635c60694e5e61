"""`avemo annotate` on a quiet machine and beside busy processes.

Builds one talking-face video (the shared studio clip looped, scaled and padded; H.264 + AAC;
../shared/data is read in place) and annotates it in fresh `avemo annotate` processes, alone
and with --busy other processes spinning on the CPU (each keeps one core busy for the whole
run), interleaved; prints the median wall time of --repeats, x real time and the slowdown
against the quiet run. With --checkout DIR another source tree (a git worktree of an earlier
commit) is timed the same way in the same run.

    python benchmarks/bench_busy.py [--seconds 600] [--size 512x512@25] [--busy 0 1]
                                    [--repeats 3] [--checkout /tmp/before]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "benchmarks"))
from bench_stages import build  # noqa: E402  (the same videos as the stage table)

from avemo_cli import __version__  # noqa: E402


def annotate(tree: Path, video: Path, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "avemo_cli", "annotate", str(video), "-o", str(out),
                    "-q", "--overwrite"], cwd=tree, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=HERE.parent / "shared" / "data")
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--size", default="512x512@25")
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--checkout", type=Path, action="append", default=[])
    args = ap.parse_args(argv)
    trees = [HERE, *[c.resolve() for c in args.checkout]]
    print(f"avemo {__version__}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}; default model; "
          f"{args.seconds:g} s {args.size} video")
    walls: dict[tuple[Path, int], list[float]] = {(t, b): [] for t in trees for b in args.busy}
    with tempfile.TemporaryDirectory() as tmp:
        video = build(args.shared, args.size, args.seconds, Path(tmp) / "talk.mp4")
        for _ in range(args.repeats):
            for busy in args.busy:
                spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                            for _ in range(busy)]
                try:
                    time.sleep(0.5)
                    for tree in trees:
                        walls[tree, busy].append(annotate(tree, video, Path(tmp) / "out"))
                finally:
                    for s in spinners:
                        s.kill()
                        s.wait()
    print("| source tree | busy processes | wall s (median) | x real time | slowdown vs quiet |")
    print("| --- | --- | --- | --- | --- |")
    for tree in trees:
        quiet = statistics.median(walls[tree, args.busy[0]])
        for busy in args.busy:
            wall = statistics.median(walls[tree, busy])
            name = "this tree" if tree == HERE else str(tree)
            print(f"| {name} | {busy} | {wall:.1f} | {args.seconds / wall:.1f}x | "
                  f"{wall / quiet:.2f} |")


if __name__ == "__main__":
    main()
