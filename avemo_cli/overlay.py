"""The attention overlay video: what the model saw, frame by frame.

Every frame of the input, at its own size and frame rate, with the original audio, shows
- the tracked face box,
- the visual attention map A^I of the clip ending at the analysis step at or before the frame,
  warped back from the aligned face crop onto the frame (the inverse of the alignment
  transform) as a translucent heat map,
- a panel with running valence and arousal gauges and the audio temporal-attention weights of
  the current clip (newest step highlighted).
Frames whose step has no face keep the panel and lose only the face overlays; none is dropped.

Python draws one transparent RGBA layer per analysis step (4 per second, not one per frame);
a single ffmpeg process decodes the input, composites each frame with the layer of the latest
step at or before it (``overlay`` filter) and encodes (H.264, yuv420p, ``+faststart``: plays in
browsers), with the same ffmpeg the pipeline uses.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import ffmpeg  # ffmpeg-python
import numpy as np

from .align import warp
from .demux import _short_reason, ffmpeg_exe
from .errors import MediaError
from .pipeline import nearest_index

PANEL_ALPHA = 0.6
HEAT_ALPHA = 0.5


def _colormap() -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(
        np.uint8)


def _text(label: str, height: int) -> np.ndarray:
    """White text on transparency as an (h, w, 4) float32 array in [0, 1], via matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(len(label) * height * 0.62 / dpi + 0.05, height * 1.3 / dpi), dpi=dpi)
    fig.patch.set_alpha(0)
    fig.text(0.0, 0.5, label, color="white", fontsize=height * 0.72, va="center")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba(), dtype=np.float32) / 255.0


def _fill(layer: np.ndarray, y0, y1, x0, x1, colour) -> None:
    """An opaque rectangle (clipped to the layer)."""
    y0, y1 = max(0, int(y0)), min(layer.shape[0], int(y1))
    x0, x1 = max(0, int(x0)), min(layer.shape[1], int(x1))
    if y1 > y0 and x1 > x0:
        layer[y0:y1, x0:x1] = colour


def _heat_patch(att: np.ndarray, matrix_display: np.ndarray, crop_size: int,
                layer: np.ndarray, cmap: np.ndarray) -> None:
    """Draw a step's attention map (h', w'), warped from crop space onto the frame, into the
    RGBA ``layer`` (straight alpha)."""
    hh, ww = att.shape
    heat = att / att.max() if att.max() > 0 else att
    cell = crop_size / hh
    heat_to_crop = np.array([[cell, 0, cell / 2 - 0.5], [0, cell, cell / 2 - 0.5], [0, 0, 1]])
    crop_to_frame = np.linalg.inv(np.vstack([matrix_display, [0, 0, 1]]))
    heat_to_frame = crop_to_frame @ heat_to_crop
    corners = np.array([[-0.5, -0.5, 1], [ww - 0.5, -0.5, 1], [-0.5, hh - 0.5, 1],
                        [ww - 0.5, hh - 0.5, 1]]) @ heat_to_frame.T
    fh, fw = layer.shape[:2]
    x0, y0 = np.floor(corners[:, :2].min(0)).astype(int)
    x1, y1 = np.ceil(corners[:, :2].max(0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, fw), min(y1, fh)
    if x1 <= x0 or y1 <= y0:
        return
    # warped at half the frame's resolution (the map is 16x16 cells) and repeated 2x2;
    # padded by one cell of zeros so it fades at the crop's edge instead of smearing
    shift = np.array([[0.5, 0, -x0 / 2 - 0.25], [0, 0.5, -y0 / 2 - 0.25], [0, 0, 1]])
    m = (shift @ heat_to_frame @ np.array([[1, 0, -1], [0, 1, -1], [0, 0, 1]]))[:2]
    src = np.pad(np.stack([heat, np.ones_like(heat)], -1).astype(np.float32),
                 ((1, 1), (1, 1), (0, 0)))
    half = warp(src, m, ((y1 - y0 + 1) // 2, (x1 - x0 + 1) // 2))
    out = half.repeat(2, 0).repeat(2, 1)[: y1 - y0, : x1 - x0]
    level = np.clip(out[..., 0], 0, 1)
    layer[y0:y1, x0:x1, :3] = cmap[(level * 255).astype(np.int64)]
    alpha = HEAT_ALPHA * np.sqrt(level) * np.clip(out[..., 1], 0, 1)
    layer[y0:y1, x0:x1, 3] = np.rint(alpha * 255).astype(np.uint8)


class _Panel:
    """Gauges drawn in the lower left corner."""

    def __init__(self, width: int, height: int, targets: list[str]):
        self.w = max(160, int(width * 0.42))
        self.row = max(14, int(height * 0.045))
        self.targets = [t for t in ("valence", "arousal") if t in targets]
        rows = len(self.targets) + 2
        self.h = self.row * rows + self.row // 2
        self.x = max(4, int(width * 0.02))
        self.y = height - self.h - max(4, int(height * 0.02))
        self.labels = {t: _text(t, self.row) for t in self.targets}
        self.labels["audio"] = _text("audio attention", self.row)
        self.label_w = int(self.row * 5.2)

        # the static part (translucent black, labels) as one RGBA image
        bg = np.zeros((self.h, self.w, 4), np.float32)
        bg[..., 3] = PANEL_ALPHA
        for i, t in enumerate(self.targets + ["audio"]):
            lab = self.labels[t]
            ty, tx = self.row // 4 + i * self.row - self.row // 8, self.row // 3
            h, w = min(lab.shape[0], self.h - ty), min(lab.shape[1], self.w - tx)
            a = lab[:h, :w, 3:4]
            bg[ty:ty + h, tx:tx + w, :3] = lab[:h, :w, :3] * a / np.maximum(
                PANEL_ALPHA + (1 - PANEL_ALPHA) * a, 1e-6)
            bg[ty:ty + h, tx:tx + w, 3:4] = PANEL_ALPHA + (1 - PANEL_ALPHA) * a
        self.background = np.rint(bg * 255).astype(np.uint8)

    def draw(self, layer, values: dict[str, float], audio_w: np.ndarray | None):
        """Draw the gauges into the RGBA ``layer``."""
        x, y, r = self.x, self.y, self.row
        h = min(self.h, layer.shape[0] - y)
        w = min(self.w, layer.shape[1] - x)
        layer[y:y + h, x:x + w] = self.background[:h, :w]
        bar_x0 = x + self.label_w
        bar_x1 = x + self.w - r // 2
        mid = (bar_x0 + bar_x1) / 2
        half = (bar_x1 - bar_x0) / 2
        colours = {"valence": (80, 160, 255, 255), "arousal": (255, 90, 80, 255)}
        for i, t in enumerate(self.targets):
            ty = y + r // 4 + i * r
            _fill(layer, ty + r * 0.2, ty + r * 0.8, bar_x0, bar_x1, (90, 90, 90, 255))
            v = float(np.clip(values.get(t, np.nan), -1, 1)) if np.isfinite(
                values.get(t, np.nan)) else 0.0
            a, b = sorted((mid, mid + v * half))
            _fill(layer, ty + r * 0.2, ty + r * 0.8, a, max(b, a + 1), colours[t])
            _fill(layer, ty + r * 0.1, ty + r * 0.9, mid - 1, mid + 1, (255, 255, 255, 255))
        ty = y + r // 4 + len(self.targets) * r
        if audio_w is not None and np.isfinite(audio_w).all():
            n = len(audio_w)
            slot = (self.w - r) / n
            top = ty + r * 1.1
            height = r * 0.9
            peak = max(float(audio_w.max()), 1e-9)
            for j, wgt in enumerate(audio_w):
                bx = x + r // 2 + j * slot
                hgt = height * float(wgt) / peak
                colour = (255, 210, 60, 255) if j == n - 1 else (200, 200, 200, 255)
                _fill(layer, top + height - hgt, top + height, bx + 1, bx + slot - 1, colour)


def _nearest_filled(rows: np.ndarray) -> np.ndarray:
    """Index of the nearest row without NaN for every row (predictions made with --stride)."""
    return nearest_index(~np.isnan(rows.reshape(len(rows), -1)).any(1))


class _Layers:
    """Draws the RGBA layer (H x W x 4, straight alpha) shown over the frames of each step."""

    def __init__(self, annotation):
        self.a = annotation
        info, steps = annotation.info, annotation.steps
        self.cmap = _colormap()
        self.panel = _Panel(info.width, info.height, list(annotation.targets))
        self.vis = steps.visual_attention
        self.vis_idx = _nearest_filled(self.vis) if self.vis is not None else None
        self.aud = steps.audio_attention
        self.aud_idx = _nearest_filled(self.aud) if self.aud is not None else None
        track = annotation.track
        self.scale = track.frame_size[0] / info.width if track is not None else 1.0
        self.show_face = annotation.source in ("av", "video") and track is not None

    def draw(self, k: int) -> np.ndarray:
        a, info, track = self.a, self.a.info, self.a.track
        layer = np.zeros((info.height, info.width, 4), np.uint8)
        if self.show_face and a.face[k]:
            to_analysis = np.diag([self.scale, self.scale, 1.0])
            if self.vis is not None:
                _heat_patch(self.vis[self.vis_idx[k]], track.matrices[k] @ to_analysis,
                            track.crops.shape[1], layer, self.cmap)
            bx0, by0, bx1, by1 = track.boxes[k] / self.scale
            th = max(2, info.width // 256)
            for ys, ye, xs, xe in ((by0, by0 + th, bx0, bx1), (by1 - th, by1, bx0, bx1),
                                   (by0, by1, bx0, bx0 + th), (by0, by1, bx1 - th, bx1)):
                _fill(layer, ys, ye, xs, xe, (60, 220, 90, 255))
        values = {t: float(a.step_values[k, a.targets.index(t)]) for t in self.panel.targets}
        self.panel.draw(layer, values,
                        self.aud[self.aud_idx[k]] if self.aud is not None else None)
        return layer


def render_overlay(annotation, path: str | Path, crf: int = 23) -> Path:
    """Write the overlay MP4 of an ``Annotation`` (from ``Annotator.annotate``) to ``path``."""
    info = annotation.info
    if not info.has_video:
        raise MediaError(f"{info.path}: audio-only input; no overlay video to make")
    path = Path(path)
    width, height = info.width, info.height
    n_steps = len(annotation.face)
    layers_of = _Layers(annotation)
    main = ffmpeg.input(str(info.path))
    layers = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgba", s=f"{width}x{height}",
                          framerate=annotation.rate)
    video = (ffmpeg.overlay(main.video, layers, eof_action="repeat")
             .filter("pad", "ceil(iw/2)*2", "ceil(ih/2)*2"))
    streams = [video, main.audio] if info.has_audio else [video]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.mp4")
    args = (ffmpeg.output(*streams, str(tmp), vcodec="libx264", preset="ultrafast", crf=crf,
                          pix_fmt="yuv420p", acodec="aac", movflags="+faststart")
            .global_args("-nostdin", "-v", "error", "-y").compile(cmd=ffmpeg_exe()))
    with tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=errf)
        try:
            for k in range(n_steps):
                proc.stdin.write(layers_of.draw(k).tobytes())
            proc.stdin.close()
            code = proc.wait()
        except BrokenPipeError:
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            tmp.unlink(missing_ok=True)
            raise
        if code != 0:
            tmp.unlink(missing_ok=True)
            errf.seek(0)
            raise MediaError(f"{info.path}: overlay video failed "
                             f"({_short_reason(errf.read().decode('utf-8', 'replace'))})")
    os.replace(tmp, path)
    return path
