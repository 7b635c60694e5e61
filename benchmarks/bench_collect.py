"""Peak memory and time of ``avemo collect`` as the number of inputs grows.

Writes N synthetic annotated inputs into a 3-shard job-array folder (per input: a 10 s
per-frame CSV at 25 fps, 250 rows, and a segments CSV of 3 utterances, written with avemo's
own writers, and a manifest record naming them), then collects the folder in a fresh Python
process and reads that process's peak resident memory (``ru_maxrss``) and wall time; medians
of --repeats. Memory should not grow with N: inputs are read one at a time.

    python benchmarks/bench_collect.py [--inputs 20 2000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from avemo_cli.manifests import Manifest, Record
from avemo_cli.outputs import write_csv
from avemo_cli.table import frame_columns
from avemo_cli.utterances import COLUMNS as SEGMENT_COLUMNS

PROBE = """
import json, resource, sys, time
t0 = time.perf_counter()
from avemo_cli.collect import collect
report = collect(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - t0, "inputs": report.inputs,
                  "collected": report.collected,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_folder(n: int, root: Path) -> None:
    rng = np.random.default_rng(0)
    manifests = [Manifest(root / f"avemo-manifest.{i}-of-3.jsonl") for i in range(3)]
    steps = 40  # 10 s at 4 steps per second
    times = np.arange(250) / 25.0
    for i in range(n):
        values = np.clip(np.cumsum(rng.normal(0, 0.05, (steps, 2)), 0), -1, 1).astype(np.float32)
        face = rng.random(steps) > 0.1
        voice = rng.random(steps) > 0.3
        cols = frame_columns(values, ["valence", "arousal"], 4.0, face, voice, times)
        folder = root / f"group{i % 50:02d}"
        folder.mkdir(exist_ok=True)
        frames = write_csv(cols, folder / f"clip{i:05d}.avemo.csv")
        seg: dict[str, np.ndarray] = {name: np.zeros(3) for name in SEGMENT_COLUMNS}
        seg.update(utterance=np.arange(3), start=np.array([0.5, 3.0, 6.5]),
                   end=np.array([2.5, 6.0, 9.5]), face_id=np.zeros(3), steps=np.full(3, 9),
                   valence=values[[9, 23, 37], 0], arousal=values[[9, 23, 37], 1])
        segments = write_csv(seg, folder / f"clip{i:05d}.avemo.segments.csv")
        manifests[i % 3].add(Record(f"videos/clip{i:05d}.mp4", "ok",
                                    outputs=[str(frames), str(segments)], media_seconds=10.0,
                                    frames=250, faces=0.9, avemo="bench", model="synthetic",
                                    summary={"face": 0.9, "voice": 0.7, "valence": 0.0,
                                             "arousal": 0.0}))


def measure(folder: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(folder)], check=True,
                          capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, nargs="+", default=[20, 2000])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.inputs:
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            make_folder(n, folder)
            runs = []
            for _ in range(args.repeats):
                for part in ("frames", "segments"):  # (a fresh dataset each time)
                    for f in (folder / "avemo-dataset" / part).glob("*.parquet"):
                        f.unlink()
                (folder / "avemo-dataset" / "collected.json").unlink(missing_ok=True)
                runs.append(measure(folder))
            assert all(r["collected"] == n for r in runs), runs
            rows.append((n, statistics.median(r["peak_mib"] for r in runs),
                         statistics.median(r["seconds"] for r in runs)))
    base = rows[0][1]
    print(f"{'inputs':>8} {'peak MiB':>9} {'vs first':>9} {'seconds':>8} {'ms/input':>9}")
    for n, peak, seconds in rows:
        print(f"{n:>8} {peak:>9.1f} {peak / base:>8.3f}x {seconds:>8.2f} "
              f"{1000 * seconds / n:>9.2f}")


if __name__ == "__main__":
    main()
