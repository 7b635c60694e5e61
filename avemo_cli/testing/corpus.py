"""Build a small labelled corpus from real talking-face clips, for tests and benchmarks.

Each sequence is a real clip looped to ``seconds``, its audio gain changed every 4 s by a
seeded random factor; the labels are what that audio carries: the loudness (RMS, dB) averaged
over the 6 s before each 0.1 s label time, standardised over the whole corpus and squashed into
[-1, 1] (valence), and the same over 2 s (arousal). A model that hears loudness can learn them;
nothing about emotion is claimed.

    python -m avemo_cli.testing.corpus OUT_DIR [--layout avec2017|generic] [--shared DIR]
    python -m avemo_cli.testing.corpus OUT_DIR --videos talk1.mp4 talk2.mp4 ...

The clips come from ``../shared/data/videos`` beside a checkout (``--shared`` names another
data folder), or from any talking-face videos of your own (``--videos``, used in turn).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..demux import ffmpeg_exe, probe, read_audio

CLIPS = ["WDA_KatieHill_000.mp4", "WDA_AlexandriaOcasioCortez_000.mp4",
         "subj01_timepoint01.mp4", "subj02_timepoint01.mp4"]
PLAN = [("train", 0), ("train", 1), ("train", 2), ("train", 3), ("train", 0), ("train", 1),
        ("devel", 0), ("devel", 1), ("devel", 3)]


def _make_clip(src: Path, dst: Path, seconds: float, gains: list[float], size: int) -> None:
    expr = "+".join(f"{g:.3f}*between(t,{4 * i},{4 * i + 4})" for i, g in enumerate(gains))
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", "-1", "-i", str(src),
                    "-t", str(seconds), "-vf", f"scale={size}:{size}:force_original_aspect_ratio"
                    f"=decrease,pad=ceil(iw/2)*2:ceil(ih/2)*2,fps=25",
                    "-af", f"volume='{expr}':eval=frame", "-c:v", "libx264", "-preset",
                    "ultrafast", "-crf", "28", "-c:a", "aac", "-ar", "16000", str(dst)],
                   check=True)


def _loudness(path: Path, times: np.ndarray, window: float) -> np.ndarray:
    x = read_audio(probe(path))
    hop = 1600  # 0.1 s at 16 kHz
    frames = x[: len(x) // hop * hop].reshape(-1, hop)
    db = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-8)
    cs = np.concatenate([[0.0], np.cumsum(db)])
    out = []
    for t in times:
        end = min(int(round(t * 10)) + 1, len(db))
        start = max(0, end - int(window * 10))
        out.append((cs[end] - cs[start]) / max(end - start, 1))
    return np.array(out)


class CorpusError(Exception):
    """No clips to build from (a one-line reason)."""


def sources(shared: str | Path | None = None, videos: list | None = None) -> list[Path]:
    """The clips a corpus is cut from: ``videos``, else the shared data's talking heads."""
    if videos:
        missing = [str(v) for v in videos if not Path(v).is_file()]
        if missing:
            raise CorpusError(f"no such video: {', '.join(missing)}")
        return [Path(v) for v in videos]
    root = Path(shared) if shared else Path(__file__).resolve().parents[2].parent / \
        "shared" / "data"
    found = [root / "videos" / c for c in CLIPS]
    if not all(p.is_file() for p in found):
        raise CorpusError(f"{root / 'videos'}: the shared talking-face clips are not there "
                          f"(they sit beside a checkout of avemo, in ../shared/data); pass "
                          f"--shared DATA_DIR, or --videos with talking-face videos of your own")
    return found


def build_corpus(out: str | Path, layout: str = "avec2017", shared: str | Path | None = None,
                 seconds: float = 24.0, size: int = 256, seed: int = 0,
                 videos: list | None = None) -> Path:
    out = Path(out)
    clips = sources(shared, videos)
    rng = np.random.default_rng(seed)
    made = []
    counters = {"train": 0, "devel": 0}
    for part, clip in PLAN:
        counters[part] += 1
        name = f"{part.capitalize()}_{counters[part]:02d}"
        if layout == "avec2017":
            media = out / "video" / f"{name}.mp4"
        else:
            media = out / part / f"{name}.mp4"
        media.parent.mkdir(parents=True, exist_ok=True)
        gains = list(rng.choice([0.03, 0.1, 0.3, 1.0], size=int(np.ceil(seconds / 4))))
        _make_clip(clips[clip % len(clips)], media, seconds, gains, size)
        made.append((name, part, media))
    times = np.round(np.arange(0, seconds - 0.05, 0.1), 1)
    curves = {n: (_loudness(m, times, 6.0), _loudness(m, times, 2.0)) for n, _, m in made}
    allv = np.concatenate([c[0] for c in curves.values()])
    alla = np.concatenate([c[1] for c in curves.values()])
    for name, part, media in made:
        v = np.tanh((curves[name][0] - allv.mean()) / allv.std())
        a = np.tanh((curves[name][1] - alla.mean()) / alla.std())
        if layout == "avec2017":
            (out / "labels").mkdir(exist_ok=True)
            rows = [f"'{name}';{t:.1f};{ai:.6f};{vi:.6f};0.0" for t, ai, vi in zip(times, a, v)]
            (out / "labels" / f"{name}.csv").write_text("\n".join(rows) + "\n")
        else:
            pd.DataFrame({"time": times, "valence": v, "arousal": a}).to_csv(
                media.with_suffix(".csv"), index=False, float_format="%.6f")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--layout", default="avec2017", choices=["avec2017", "generic"])
    ap.add_argument("--shared", default=None, help="the data folder holding videos/ "
                    "(default: ../shared/data beside the checkout)")
    ap.add_argument("--videos", nargs="+", default=None,
                    help="talking-face videos of your own to cut the corpus from instead")
    ap.add_argument("--seconds", type=float, default=24.0)
    args = ap.parse_args(argv)
    try:
        print(build_corpus(args.out, args.layout, args.shared, args.seconds,
                           videos=args.videos))
    except CorpusError as err:  # a usage mistake, as argparse's own: status 2
        print(f"avemo_cli.testing.corpus: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
