"""Make examples/sample.mp4: a short talking-face video the project may redistribute.

Everything in it is made here: the face is drawn with matplotlib (a cartoon that dlib's face
detector accepts), its mouth opens with the loudness of the voice, it turns from neutral to
smiling halfway, and the head drifts a little so tracking has work to do; the voice is
espeak-ng (a flat sentence, then a livelier, higher one). Needs espeak-ng
(``apt-get install espeak-ng``) when run; the committed video does not.

    python examples/make_sample_video.py [OUT.mp4]
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Ellipse, Polygon, Rectangle  # noqa: E402

from avemo_cli.demux import ffmpeg_exe, probe, read_audio  # noqa: E402

SIZE, FPS = 320, 25
LINES = [  # (text, espeak pitch 0-99, words per minute)
    ("This is a short sample for avemo. The face and the voice are made by a script.", 35, 150),
    ("And now I am happy, really happy, to show you how it works!", 80, 175),
]
SKIN, HAIR, BG = (0.87, 0.7, 0.58), (0.2, 0.14, 0.1), (0.55, 0.6, 0.68)


def draw(fig, mouth: float, smile: float, brow: float, dx: float, dy: float) -> np.ndarray:
    fig.clear()
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(-dx, 1 - dx)
    ax.set_ylim(1 - dy, -dy)
    ax.axis("off")
    ax.add_patch(Rectangle((-1, -1), 3, 3, color=BG))
    ax.add_patch(Ellipse((0.5, 0.38), 0.62, 0.5, color=HAIR))
    for x in (0.27, 0.73):
        ax.add_patch(Ellipse((x, 0.53), 0.06, 0.12, color=(0.82, 0.64, 0.52)))
    ax.add_patch(Rectangle((0.43, 0.78), 0.14, 0.4, color=(0.8, 0.62, 0.5)))
    ax.add_patch(Ellipse((0.5, 0.52), 0.46, 0.62, color=SKIN))
    lw = SIZE / 60
    for x in (0.4, 0.6):
        ax.add_patch(Ellipse((x, 0.47), 0.09, 0.045 - 0.012 * smile, color="white"))
        ax.add_patch(Ellipse((x, 0.47), 0.038, 0.04 - 0.01 * smile, color=(0.3, 0.2, 0.12)))
        ax.add_patch(Ellipse((x, 0.47), 0.016, 0.018, color="black"))
        ax.plot([x - 0.05, x + 0.05], [0.405 - brow, 0.405 - brow],
                color=(0.18, 0.12, 0.08), lw=lw, solid_capstyle="round")
    ax.add_patch(Polygon([[0.5, 0.5], [0.47, 0.6], [0.53, 0.6]], color=(0.78, 0.6, 0.5)))
    # lips: corners lift with the smile; the gap between them opens with the voice
    w = 0.13 + 0.05 * smile
    u = np.linspace(-1, 1, 21)
    lips = 0.5 + u * w / 2
    lift = 0.04 * smile * u ** 2  # corners up (image y grows downwards)
    top = 0.685 - lift - 0.012 * (1 - u ** 2)
    gap = (0.004 + 0.06 * mouth) * (1 - u ** 2)
    bottom = 0.69 - lift + gap + 0.015 * (1 - u ** 2)
    ax.add_patch(Polygon(np.c_[np.r_[lips, lips[::-1]], np.r_[top, bottom[::-1]]],
                         color=(0.62, 0.26, 0.26)))
    ax.add_patch(Polygon(np.c_[np.r_[lips, lips[::-1]],
                               np.r_[0.69 - lift, (0.69 - lift + gap)[::-1]]],
                         color=(0.3, 0.06, 0.08)))
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        parts = []
        for i, (text, pitch, speed) in enumerate(LINES):
            wav = tmp / f"line{i}.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-p", str(pitch), "-s", str(speed),
                            "-w", str(wav), text], check=True)
            parts.append(read_audio(probe(wav)))
        gap = np.zeros(8000, np.float32)  # 0.5 s between the lines
        voice = np.concatenate([gap, parts[0], gap, parts[1], gap])
        voice_path = tmp / "voice.f32"
        voice.tofile(voice_path)
        switch = (len(gap) * 2 + len(parts[0])) / 16000  # the second line starts here
        n_frames = int(len(voice) / 16000 * FPS)
        hop = 16000 // FPS
        rms = np.sqrt([np.mean(voice[i * hop:(i + 1) * hop] ** 2) for i in range(n_frames)])
        mouth = np.clip(rms / (np.percentile(rms, 95) + 1e-9), 0, 1)
        fig = Figure(figsize=(SIZE / 100, SIZE / 100), dpi=100)
        FigureCanvasAgg(fig)
        enc = subprocess.Popen(
            [ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s",
             f"{SIZE}x{SIZE}", "-framerate", str(FPS), "-i", "pipe:", "-f", "f32le", "-ar",
             "16000", "-ac", "1", "-i", str(voice_path), "-c:v", "libx264", "-crf", "26",
             "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "48k", "-movflags", "+faststart",
             "-shortest", str(out)], stdin=subprocess.PIPE)
        for i in range(n_frames):
            t = i / FPS
            smile = float(np.clip((t - switch + 0.5) / 1.0, 0, 1))
            frame = draw(fig, mouth[i], smile, 0.015 * smile, 0.03 * np.sin(t * 0.9),
                         0.015 * np.sin(t * 1.3 + 1))
            assert enc.stdin is not None
            enc.stdin.write(frame.tobytes())
        assert enc.stdin is not None
        enc.stdin.close()
        if enc.wait() != 0:
            raise SystemExit("ffmpeg failed")
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("sample.mp4"))
