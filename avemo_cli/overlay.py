"""The attention overlay video: what the model saw, frame by frame.

Every frame of the input, at its own size and frame rate, with the original audio, shows
- the tracked face box (with ``--max-faces``: every face's, a colour per face_id, each with a
  valence bar above it; the panel shows face 0's values),
- the visual attention map A^I of the clip ending at the analysis step at or before the frame,
  warped back from the aligned face crop onto the frame (the inverse of the alignment
  transform) as a translucent heat map,
- a panel with running valence and arousal gauges and the audio temporal-attention weights of
  the current clip (newest step highlighted).
Frames whose step has no face keep the panel and lose only the face overlays; none is dropped.

Python draws one transparent RGBA layer per analysis step (4 per second, not one per frame),
holding only the frame regions that change (the face's, the panel's); a single ffmpeg process
decodes the input, composites each frame with the regions of the latest step at or before it
(``overlay`` filters) and encodes (H.264, yuv420p, ``+faststart``: plays in
browsers), with the same ffmpeg the pipeline uses. AAC or MP3 audio is copied, other audio is
encoded to AAC. The heat map is warped and coloured by Pillow (matplotlib's own dependency).
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import ffmpeg  # ffmpeg-python
import numpy as np

from .demux import _short_reason, ffmpeg_exe, file_arg
from .errors import MediaError
from .tracking import box_area
from .features import nearest_index
from .table import FACE_COLOURS
from .files import atomic_path

PANEL_ALPHA = 0.6
HEAT_ALPHA = 0.5
COPY_AUDIO = ("aac", "mp3")
MERGE_RATIO = 1.3  # one region instead of two when their bounding box is at most this larger


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


def _heat_geometry(att_shape: tuple[int, int], matrix_display: np.ndarray,
                   crop_size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The 3x3 map from attention cells to frame pixels, and the (x0, y0, x1, y1) frame
    rectangle (unclipped) the map covers."""
    hh, ww = att_shape
    cell = crop_size / hh
    heat_to_crop = np.array([[cell, 0, cell / 2 - 0.5], [0, cell, cell / 2 - 0.5], [0, 0, 1]])
    crop_to_frame = np.linalg.inv(np.vstack([matrix_display, [0, 0, 1]]))
    heat_to_frame = crop_to_frame @ heat_to_crop
    corners = np.array([[-0.5, -0.5, 1], [ww - 0.5, -0.5, 1], [-0.5, hh - 0.5, 1],
                        [ww - 0.5, hh - 0.5, 1]]) @ heat_to_frame.T
    x0, y0 = np.floor(corners[:, :2].min(0)).astype(int)
    x1, y1 = np.ceil(corners[:, :2].max(0)).astype(int)
    return heat_to_frame, (int(x0), int(y0), int(x1), int(y1))


def _heat_patch(att: np.ndarray, matrix_display: np.ndarray, crop_size: int,
                layer: np.ndarray, palette: bytes) -> None:
    """Draw a step's attention map (h', w'), warped from crop space onto the frame, into the
    RGBA ``layer`` (straight alpha)."""
    heat = att / att.max() if att.max() > 0 else att
    heat_to_frame, (x0, y0, x1, y1) = _heat_geometry(att.shape, matrix_display, crop_size)
    fh, fw = layer.shape[:2]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, fw), min(y1, fh)
    if x1 <= x0 or y1 <= y0:
        return
    # padded by one cell of zeros so it fades at the crop's edge instead of smearing
    m = (np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]]) @ heat_to_frame
         @ np.array([[1, 0, -1], [0, 1, -1], [0, 0, 1]]))[:2]
    levels = np.pad(np.rint(np.clip(heat, 0, 1) * 255).astype(np.uint8), 1)
    layer[y0:y1, x0:x1] = _warp_coloured(levels, m, (y1 - y0, x1 - x0), palette)


def heat_palette(name: str = "inferno") -> bytes:
    """RGBA palette of the heat map: the colour map, faint where attention is low and
    HEAT_ALPHA opaque at the peak."""
    import matplotlib

    level = np.linspace(0, 1, 256)
    rgba = matplotlib.colormaps[name](level)
    rgba[:, 3] = HEAT_ALPHA * np.sqrt(level)
    return np.rint(rgba * 255).astype(np.uint8).tobytes()


def _warp_coloured(levels: np.ndarray, matrix: np.ndarray, size: tuple[int, int],
                   palette: bytes) -> np.ndarray:
    """Warp a uint8 H x W map of levels like ``align.warp`` (bilinear, 0 outside) and colour
    it through an RGBA ``palette``, all inside Pillow (the heat map covers the whole face at
    full resolution; numpy is ~7x slower there). Returns size x 4 uint8."""
    from PIL import Image

    # Pillow samples pixel centres at +0.5 (align.warp: at integers); shift in and out
    to_source = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))
    centre = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    coeffs = (centre @ to_source @ np.linalg.inv(centre))[:2].ravel()
    out = Image.fromarray(levels).transform(  # uint8 2-D: mode "L"
        (size[1], size[0]), Image.Transform.AFFINE, tuple(coeffs),
        resample=Image.Resampling.BILINEAR)
    out.putpalette(palette, rawmode="RGBA")
    return np.asarray(out.convert("RGBA"))


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
        self.labels: dict[str, np.ndarray] = {t: _text(t, self.row) for t in self.targets}
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


def _even_rect(x0, y0, x1, y1, width: int, height: int) -> tuple[int, int, int, int]:
    """The rectangle clipped to the frame, widened to even corners (yuv420p overlays are placed
    on even pixels)."""
    x0, y0 = max(0, int(x0)) // 2 * 2, max(0, int(y0)) // 2 * 2
    x1, y1 = min(width, -(-int(np.ceil(x1)) // 2) * 2), min(height, -(-int(np.ceil(y1)) // 2) * 2)
    return x0, y0, max(x1, x0), max(y1, y0)


class _Layers:
    """Draws what is shown over the frames of each step: the face (heat map and box) and the
    panel, each in a fixed rectangle of the frame (RGBA, straight alpha). Only those rectangles
    go to ffmpeg, stacked into one image per step (the face's above the panel's; one rectangle
    holding both when they nearly touch), so ffmpeg blends face- and panel-sized regions per
    frame, not the whole frame."""

    def __init__(self, annotation):
        self.a = annotation
        info, steps = annotation.info, annotation.steps
        self.palette = heat_palette()
        self.panel = _Panel(info.width, info.height, list(annotation.targets))
        self.aud = steps.audio_attention
        self.aud_idx = _nearest_filled(self.aud) if self.aud is not None else None
        track = annotation.track
        self.scale = track.frame_size[0] / info.width if track is not None else 1.0
        self.show_face = annotation.source in ("av", "video") and track is not None
        self.thickness = max(2, info.width // 256)
        # every face kept (--max-faces): its track, steps with it, attention, colour; with
        # several, a valence bar in its colour above each box (the panel shows face 0's)
        people = annotation.people or [None]
        self.faces = []
        for i, person in enumerate(people if self.show_face else []):
            ftrack = annotation.track if person is None else person.track
            found = annotation.face if person is None else person.face
            vis = (annotation.steps if person is None else person.steps).visual_attention
            values = annotation.step_values if person is None else person.step_values
            if ftrack is not None and np.any(found):
                colour = FACE_COLOURS[i % len(FACE_COLOURS)]
                self.faces.append((ftrack, found, vis, None if vis is None else
                                   _nearest_filled(vis), values, colour))
        self.bars = len(self.faces) > 1
        p = self.panel
        panel = _even_rect(p.x, p.y, p.x + p.w, p.y + p.h, info.width, info.height)
        self.face_rect = self._face_rect()
        self.regions = [panel] if self.face_rect is None else [self.face_rect, panel]
        if self.face_rect is not None:
            # each region costs ffmpeg a fixed amount per frame besides its pixels: one region
            # when the two nearly touch
            union = (*np.minimum(self.face_rect[:2], panel[:2]).tolist(),
                     *np.maximum(self.face_rect[2:], panel[2:]).tolist())
            if box_area(union) <= MERGE_RATIO * (box_area(self.face_rect) + box_area(panel)):
                self.regions = [union]
        self.canvas = (sum(r[3] - r[1] for r in self.regions),
                       max(r[2] - r[0] for r in self.regions))
        self.layer = np.zeros((info.height, info.width, 4), np.uint8)

    def _face_rect(self):
        """The frame rectangle holding every step's heat maps, face boxes and bars (None: no
        face)."""
        if not self.faces:
            return None
        to_analysis = np.diag([self.scale, self.scale, 1.0])
        above = 4 * self.thickness if self.bars else 0
        rects = []
        for track, found, vis, _, _, _ in self.faces:
            steps = np.flatnonzero(found)
            rects += [track.boxes[k] / self.scale + [-1, -1 - above, 1, 1] for k in steps]
            if vis is not None:
                rects += [_heat_geometry(vis.shape[1:], track.matrices[k] @ to_analysis,
                                         track.crops.shape[1])[1] for k in steps]
        rects = np.asarray(rects, np.float64)
        rect = _even_rect(*rects[:, :2].min(0), *rects[:, 2:].max(0), self.a.info.width,
                          self.a.info.height)
        return rect if rect[2] > rect[0] and rect[3] > rect[1] else None

    def draw(self, k: int) -> np.ndarray:
        """The regions of step ``k``, stacked: canvas-sized RGBA."""
        a, layer = self.a, self.layer
        for x0, y0, x1, y1 in self.regions:
            layer[y0:y1, x0:x1] = 0
        to_analysis = np.diag([self.scale, self.scale, 1.0])
        for track, found, vis, vis_idx, fvalues, colour in self.faces:
            if self.face_rect is None or not found[k]:
                continue
            if vis is not None:
                _heat_patch(vis[vis_idx[k]], track.matrices[k] @ to_analysis,
                            track.crops.shape[1], layer, self.palette)
            bx0, by0, bx1, by1 = track.boxes[k] / self.scale
            th = self.thickness
            for ys, ye, xs, xe in ((by0, by0 + th, bx0, bx1), (by1 - th, by1, bx0, bx1),
                                   (by0, by1, bx0, bx0 + th), (by0, by1, bx1 - th, bx1)):
                _fill(layer, ys, ye, xs, xe, colour)
            if self.bars and "valence" in a.targets:  # this face's valence, from the middle
                v = float(np.clip(np.nan_to_num(fvalues[k, a.targets.index("valence")]), -1, 1))
                mid, half = (bx0 + bx1) / 2, (bx1 - bx0) / 2
                _fill(layer, by0 - 3 * th, by0 - th, bx0, bx1, (60, 60, 60, 255))
                lo, hi = sorted((mid, mid + v * half))
                _fill(layer, by0 - 3 * th, by0 - th, lo, max(hi, lo + 1), colour)
        values = {t: float(a.step_values[k, a.targets.index(t)]) for t in self.panel.targets}
        self.panel.draw(layer, values,
                        self.aud[self.aud_idx[k]] if self.aud is not None else None)
        canvas = np.zeros((*self.canvas, 4), np.uint8)
        top = 0
        for x0, y0, x1, y1 in self.regions:
            canvas[top:top + y1 - y0, : x1 - x0] = layer[y0:y1, x0:x1]
            top += y1 - y0
        return canvas


def render_overlay(annotation, path: str | Path, crf: int = 23) -> Path:
    """Write the overlay MP4 of an ``Annotation`` (from ``Annotator.annotate``) to ``path``."""
    info = annotation.info
    if not info.has_video:
        raise MediaError(f"{info.path}: audio-only input; no overlay video to make")
    path = Path(path)
    n_steps = len(annotation.face)
    layers_of = _Layers(annotation)
    main = ffmpeg.input(file_arg(info.path))
    canvas_h, canvas_w = layers_of.canvas
    layers = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgba",
                          s=f"{canvas_w}x{canvas_h}", framerate=annotation.rate)
    parts = layers.split()
    video, top = main.video, 0
    if info.sar != 1.0:  # anamorphic: drawn on the display-sized, square-pixel picture
        video = video.filter("scale", info.width, info.height).filter("setsar", 1)
    for i, (x0, y0, x1, y1) in enumerate(layers_of.regions):
        part = parts[i].crop(0, top, x1 - x0, y1 - y0)
        video = ffmpeg.overlay(video, part, x=x0, y=y0, eof_action="repeat")
        top += y1 - y0
    video = video.filter("pad", "ceil(iw/2)*2", "ceil(ih/2)*2")
    streams = [video, main["a:0"]] if info.has_audio else [video]
    # AAC and MP3 play in browsers from MP4 as they are: copied, not re-encoded (ffmpeg's AAC
    # encoder would otherwise be a quarter of the overlay's time)
    acodec = "copy" if info.audio_codec in COPY_AUDIO else "aac"
    with atomic_path(path, ".mp4") as tmp, tempfile.TemporaryFile() as errf:
        args = (ffmpeg.output(*streams, file_arg(tmp), vcodec="libx264", preset="ultrafast",
                              crf=crf, pix_fmt="yuv420p", acodec=acodec, movflags="+faststart")
                .global_args("-nostdin", "-v", "error", "-y").compile(cmd=ffmpeg_exe()))
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=errf,
                                start_new_session=True)  # (a stop is ours: it is killed below)
        assert proc.stdin is not None
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
            raise
        if code != 0:
            errf.seek(0)
            raise MediaError(f"{info.path}: overlay video failed "
                             f"({_short_reason(errf.read().decode('utf-8', 'replace'))})")
    return path
