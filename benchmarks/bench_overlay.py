"""What `avemo annotate --overlay` costs against the annotation itself.

For each input, times (best of --repeats, after start-up: the model is loaded once)
``Annotator.annotate`` (demux, audio, faces, model, post-processing) and ``render_overlay``
(layers drawn in Python, composited and encoded by one ffmpeg process) of the same result.

    python benchmarks/bench_overlay.py [VIDEO ...] [--weights default] [--repeats 3]

Without videos: the bundled sample, the shared studio and webcam clips, and the 64 s video of
benchmarks/bench_annotate.py (../shared/data is read in place, never copied into the project).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from avemo_cli.overlay import render_overlay
from avemo_cli.pipeline import Annotator

HERE = Path(__file__).resolve().parents[1]


def default_inputs(tmp: Path) -> list[Path]:
    sys.path.insert(0, str(HERE / "benchmarks"))
    from bench_annotate import build_video

    shared = HERE.parent / "shared" / "data" / "videos"
    videos = [HERE / "examples" / "sample.mp4"]
    if shared.is_dir():
        videos += [shared / "WDA_KatieHill_000.mp4",
                   build_video(shared.parent, 64, tmp / "studio_64s.mp4"),
                   shared / "subj01_timepoint01.mp4"]
    return videos


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos", nargs="*", type=Path)
    ap.add_argument("--weights", default="default")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    annotator = Annotator(args.weights)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        videos = args.videos or default_inputs(tmp)
        print("| input | size | length | annotate (s) | overlay (s) | overlay / annotate |")
        print("| --- | --- | --- | --- | --- | --- |")
        for video in videos:
            best_a = best_o = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                result = annotator.annotate(video)
                t1 = time.perf_counter()
                render_overlay(result, tmp / "overlay.mp4")
                t2 = time.perf_counter()
                best_a, best_o = min(best_a, t1 - t0), min(best_o, t2 - t1)
            info = result.info
            print(f"| {video.name} | {info.width}x{info.height} | {info.duration:.1f} s "
                  f"| {best_a:.2f} | {best_o:.2f} | {best_o / best_a:.2f} |", flush=True)


if __name__ == "__main__":
    main()
