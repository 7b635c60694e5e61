"""The visual head on talking faces: does a moving mouth move its valence?

The default model's visual branch learned from still photographs (FER+), and a talking mouth
opens and closes several times a second. No labelled talking-face video is available here, so
this measures what can be measured (model card, "The visual head on talking faces"):

(a) within each talking-face video, the correlation between the visual head's valence and the
    mouth opening the speaking detector computes (``speakers.mouth_opening``: inner-lip gap
    over the nose-bridge-to-chin length), pooled over the videos after removing each video's
    mean, over steps with a face;
(b) step-to-step jitter (mean |change| between consecutive 0.25 s steps) of the visual head
    beside the audio head's, valence and arousal;
(c) a controlled check: FER+ test faces whose mouth is synthetically opened or closed (the
    lower lip and jaw landmarks moved down or up by a share of the face height, the pixels
    following by a smooth landmark-driven warp), and the mean change of the visual head's
    valence against the same face unwarped.

    python benchmarks/bench_talking_faces.py [--weights default] [--faces 400]

Inputs: the shared talking-face videos (../shared/data/videos: two studio clips, two webcam
clips, one without audio) and the bundled examples/sample.mp4 (a drawn face whose mouth follows
its synthetic voice); FER+ test faces from ../shared/data/ferplus.
"""
from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import numpy as np
import torch

from avemo_cli.checkpoint import load_checkpoint, resolve_weights
from avemo_cli.features import fit_length
from avemo_cli.pipeline import Annotator
from avemo_cli.settings import AnnotatorSettings
from avemo_cli.speakers import mouth_opening

HERE = Path(__file__).resolve().parents[1]


def videos(shared: Path) -> list[Path]:
    found = sorted((shared / "videos").glob("*.mp4"))
    return [*found, HERE / "examples" / "sample.mp4"]


def talking(weights: str, shared: Path) -> None:
    ann = Annotator(weights, AnnotatorSettings(device="cpu"))
    pooled_v, pooled_m = [], []
    rows = []
    jitter: dict[str, list[float]] = {"visual valence": [], "audio valence": [],
                                      "visual arousal": [], "audio arousal": []}
    for video in videos(shared):
        result = ann.annotate(video)
        steps, track = result.steps, result.track
        if steps.visual_values is None or track is None:
            continue
        k = len(steps.visual_values)
        opening = fit_length(mouth_opening(track), k, np.nan)
        ok = result.face[:k] & np.isfinite(opening)
        v = steps.visual_values[:k, 0]
        if ok.sum() > 8:
            vv, mm = v[ok] - v[ok].mean(), opening[ok] - opening[ok].mean()
            r = float(np.corrcoef(vv, mm)[0, 1])
            pooled_v.append(vv)
            pooled_m.append(mm)
            rows.append((video.name, int(ok.sum()), r, float(np.std(opening[ok]))))
        for j, target in enumerate(("valence", "arousal")):
            both = ok[1:] & ok[:-1]
            jitter[f"visual {target}"].append(
                float(np.abs(np.diff(steps.visual_values[:k, j]))[both].mean()))
            if steps.audio_values is not None:
                heard = result.voice[:k]
                both_a = heard[1:] & heard[:-1]
                if both_a.any():
                    jitter[f"audio {target}"].append(
                        float(np.abs(np.diff(steps.audio_values[:k, j]))[both_a].mean()))
    v, m = np.concatenate(pooled_v), np.concatenate(pooled_m)
    print("(a) visual valence against mouth opening, within each video (its mean removed)")
    print("| video | steps with a face | r | mouth opening sd |")
    print("| --- | --- | --- | --- |")
    for name, n, r, sd in rows:
        print(f"| {name} | {n} | {r:+.2f} | {sd:.3f} |")
    print(f"| **pooled** | {len(v)} | **{np.corrcoef(v, m)[0, 1]:+.2f}** | |")
    print()
    print("(b) mean |change| between consecutive steps (mean over the videos)")
    print("| head | valence | arousal |")
    print("| --- | --- | --- |")
    for head in ("visual", "audio"):
        print(f"| {head} | {np.mean(jitter[f'{head} valence']):.4f} | "
              f"{np.mean(jitter[f'{head} arousal']):.4f} |")
    print()


def warp_mouth(crop: np.ndarray, lm: np.ndarray, shift: float) -> np.ndarray:
    """``crop`` with its lower lip and jaw moved down by ``shift`` (pixels; negative: up):
    every pixel below the upper lip is pulled from ``shift`` times a smooth weight above it,
    the weight 1 at the lower lip and falling off with the distance from it (a Gaussian of a
    fifth of the face's height), so the mouth opens (or closes) and the chin follows."""
    from scipy.ndimage import map_coordinates

    h, w = crop.shape
    lower = lm[[56, 57, 58, 65, 66, 67]].mean(0)  # lower lip, outer and inner
    upper = lm[[50, 51, 52, 61, 62, 63]].mean(0)
    height = np.linalg.norm(lm[27] - lm[8])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    d2 = ((xx - lower[0]) ** 2 + (yy - lower[1]) ** 2) / (0.2 * height) ** 2
    below = np.clip((yy - upper[1]) / max(1.0, lower[1] - upper[1]), 0, 1)
    field = shift * np.exp(-d2 / 2) * below
    return map_coordinates(crop.astype(np.float64), [yy - field, xx], order=1,
                           mode="nearest").round().clip(0, 255).astype(np.uint8)


def mouths(weights: str, shared: Path, n: int) -> None:
    from avemo_cli.faces import DlibBackend
    from avemo_cli.recipes import corpora
    from avemo_cli.recipes.stills import align_stills, still_clips

    ckpt = load_checkpoint(resolve_weights(weights))
    model = ckpt.model.eval()
    size = model.cfg.input_size
    fer = corpora.ferplus(shared / "ferplus" / "ferplus.npz")
    test = np.flatnonzero(fer.split == "test")[:n * 2]
    crops, detected = align_stills(fer.images[test], size, jobs=min(2, os.cpu_count() or 1))
    dlib = DlibBackend()
    base, opened, closed = [], [], []
    for crop in crops[detected]:
        big = np.kron(crop, np.ones((4, 4), np.uint8))
        boxes = dlib.detect(big)
        if not boxes:
            continue
        lm = dlib.landmarks(big, boxes[0]) / 4
        height = float(np.linalg.norm(lm[27] - lm[8]))
        base.append(crop)
        opened.append(warp_mouth(crop, lm, 0.12 * height))
        closed.append(warp_mouth(crop, lm, -0.05 * height))
        if len(base) == n:
            break

    @torch.inference_mode()
    def valence(faces: list[np.ndarray]) -> np.ndarray:
        """The visual head's valence of each still (repeated over a clip, as annotate would
        see a face that does not move)."""
        clips = still_clips(torch.from_numpy(np.stack(faces)), model.cfg.clip_steps, jitter=False)
        out = model(video=clips)
        return out.get("visual_pred", out["pred"])[:, 0].numpy()

    v0, v_open, v_closed = (np.concatenate([valence(f[i:i + 64]) for i in range(0, len(f), 64)])
                            for f in (base, opened, closed))
    print(f"(c) FER+ test faces, mouth warped (n = {len(base)}; opened by 12% of the face "
          f"height, closed by 5%): change of the visual head's valence")
    print("| warp | mean change | sd | share of faces whose valence rose |")
    print("| --- | --- | --- | --- |")
    for name, v in (("mouth opened", v_open), ("mouth closed", v_closed)):
        d = v - v0
        print(f"| {name} | {d.mean():+.3f} | {d.std():.3f} | {np.mean(d > 0):.0%} |")
    out = HERE / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    from PIL import Image

    strip = np.concatenate([np.concatenate([base[i], opened[i], closed[i]], 0)
                            for i in range(min(8, len(base)))], 1)
    Image.fromarray(strip).resize((strip.shape[1] * 3, strip.shape[0] * 3)).save(
        out / "mouth_warps.png")
    print(f"\n(examples: {out / 'mouth_warps.png'}; rows: original, opened, closed)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="default")
    ap.add_argument("--shared", type=Path, default=HERE.parent / "shared" / "data")
    ap.add_argument("--faces", type=int, default=400)
    args = ap.parse_args(argv)
    print(f"{platform.machine()}, {os.cpu_count()} cores; weights {args.weights}\n")
    talking(args.weights, args.shared)
    mouths(args.weights, args.shared, args.faces)


if __name__ == "__main__":
    main()
