"""What faces cost: `avemo annotate` on videos of one and two talking heads side by side
(the shared studio clips, looped to --seconds, 512 px high, H.264 + AAC; ../shared/data is read
in place), with --max-faces 1 and with one face per head, default model, fresh process each
run (start-up included); median of --repeats. With --checkout DIR the same videos are also
annotated by another avemo source tree (e.g. `git worktree add /tmp/before <commit>`) in the
same run, for a before/after of the single-face path.

    python benchmarks/bench_faces.py [--seconds 60] [--repeats 3] [--checkout /tmp/before]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_crosscorpus import machine  # noqa: E402

from avemo_cli import __version__  # noqa: E402
from avemo_cli.demux import ffmpeg_exe  # noqa: E402

HERE = Path(__file__).resolve().parents[1]
CLIPS = ["WDA_KatieHill_000.mp4", "WDA_AlexandriaOcasioCortez_000.mp4",
         "subj01_timepoint01.mp4"]


def build(shared: Path, heads: int, seconds: float, out: Path) -> Path:
    """``heads`` clips side by side, each 512 high, looped; the first clip's audio."""
    args = []
    for name in CLIPS[:heads]:
        args += ["-stream_loop", "-1", "-i", str(shared / "videos" / name)]
    scaled = ";".join(f"[{i}:v]scale=-2:512,fps=25,setsar=1[v{i}]" for i in range(heads))
    stack = "".join(f"[v{i}]" for i in range(heads))
    graph = scaled + (f";{stack}hstack=inputs={heads}[v]" if heads > 1 else ";[v0]null[v]")
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *args, "-filter_complex", graph,
                    "-map", "[v]", "-map", "0:a", "-t", f"{seconds:g}", "-c:v", "libx264",
                    "-preset", "veryfast", "-c:a", "aac", str(out)], check=True)
    return out


def seconds_of(video: Path, max_faces: int, tree: Path | None, out: Path) -> float:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    cmd = [sys.executable, "-m", "avemo_cli", "annotate", str(video), "-o", str(out), "-q",
           "--overwrite"]
    if max_faces > 1:
        cmd += ["--max-faces", str(max_faces)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          cwd=tree or HERE)
    if proc.returncode != 0:
        raise SystemExit(f"avemo failed on {video}:\n{proc.stderr}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=HERE.parent / "shared" / "data")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--checkout", type=Path, default=None,
                    help="another avemo source tree, annotated in the same run (before)")
    args = ap.parse_args()
    print(f"avemo {__version__}; {machine()}; {args.seconds:g} s videos, 512 px high, 25 fps; "
          f"median of {args.repeats} fresh runs\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # (three heads side by side leave the analysis frame, 480 px wide, faces too small for
        # dlib's detector: not measured)
        plans = [(1, 1, None), (2, 1, None), (2, 2, None)]
        if args.checkout:
            plans = [(1, 1, args.checkout), (2, 1, args.checkout)] + plans
        videos = {h: build(args.shared, h, args.seconds, work / f"heads{h}.mp4")
                  for h in sorted({p[0] for p in plans})}
        runs: dict[tuple, list[float]] = {p: [] for p in plans}
        for _ in range(args.repeats):  # interleaved: a busy moment hits every row alike
            for p in plans:
                runs[p].append(seconds_of(videos[p[0]], p[1], p[2], work / "out"))
        for (heads, faces, tree), times in runs.items():
            med = statistics.median(times)
            rows.append((heads, faces, "before" if tree else "this tree", med))
    print("| heads in the video | --max-faces | code | seconds | x real time |")
    print("| --- | --- | --- | --- | --- |")
    for heads, faces, code, med in rows:
        print(f"| {heads} | {faces} | {code} | {med:.2f} | {args.seconds / med:.1f} |")
    base = {(h, c): s for h, f, c, s in rows if f == 1}
    for heads, faces, code, med in rows:
        if faces > 1:
            extra = (med - base[(heads, code)]) / (faces - 1)
            print(f"\n{heads} heads: each face beyond the first costs {extra:.2f} s per "
                  f"{args.seconds:g} s of video ({extra / args.seconds * 60:.2f} s per minute)")


if __name__ == "__main__":
    main()
