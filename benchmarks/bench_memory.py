"""Peak memory of `avemo annotate` against the length of the input.

For each length, the source video (default: the bundled sample) is looped by stream copy into
a video of that many minutes, annotated by a fresh `avemo annotate` process with the default
model, and the process's peak resident memory (its own, from the kernel's ``ru_maxrss``) is
printed with the wall time: medians of ``--repeats`` runs (the peak varies by some tens of MiB
from run to run with how the heap fragments), and each run's peak. Memory must not grow with the
length of the input.

    python benchmarks/bench_memory.py [--minutes 1 10 60] [--repeats 3] [--source VIDEO]
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

from avemo_cli import __version__
from avemo_cli.demux import ffmpeg_exe

HERE = Path(__file__).resolve().parents[1]

_MEASURE = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)
"""


def looped(source: Path, minutes: float, out: Path) -> Path:
    """``source`` repeated (stream copy, no re-encoding) up to ``minutes`` long."""
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", "-1", "-i", str(source),
                    "-t", f"{minutes * 60:g}", "-c", "copy", str(out)], check=True)
    return out


def peak_rss(args: list[str]) -> tuple[float, float]:
    """(peak resident MiB of the largest process among ``args`` and its children, seconds).
    A fresh measuring process per call, so the maximum is this run's alone."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True,
                         text=True, check=True).stdout.split()
    if out[1] != "0":
        raise SystemExit(f"{' '.join(args)} failed with status {out[1]}")
    return int(out[0]) / 1024, time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    ap.add_argument("--source", type=Path, default=HERE / "examples" / "sample.mp4")
    ap.add_argument("--weights", default="default")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    print(f"avemo {__version__}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}; source {args.source.name}")
    print("| length (min) | peak memory (MiB), median | each run | wall (s), median | "
          "x real time |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for minutes in args.minutes:
            video = looped(args.source, minutes, tmp / f"looped_{minutes:g}min.mp4")
            runs = [peak_rss([sys.executable, "-m", "avemo_cli", "annotate", str(video), "-o",
                              str(tmp / "out"), "--weights", args.weights, "-q", "--overwrite"])
                    for _ in range(args.repeats)]
            mib = statistics.median(r[0] for r in runs)
            sec = statistics.median(r[1] for r in runs)
            each = ", ".join(f"{r[0]:.0f}" for r in runs)
            print(f"| {minutes:g} | {mib:.0f} | {each} | {sec:.1f} | {minutes * 60 / sec:.1f} |",
                  flush=True)
            video.unlink()


if __name__ == "__main__":
    main()
