"""Shared fixtures: real media from ../shared/data (skipped when absent, as in a user's clone),
tiny videos generated with ffmpeg, and tiny randomly initialised checkpoints."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from avemo_cli.demux import ffmpeg_exe
from avemo_cli.testing.tiny_checkpoint import make_tiny_checkpoint

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VIDEOS = SHARED / "videos"


def frame_table(*args, **kwargs):
    """``table.frame_columns`` as a pandas DataFrame."""
    from avemo_cli.table import as_frame, frame_columns

    return as_frame(frame_columns(*args, **kwargs))


def cli(*args, env=None) -> tuple[int, str, str]:
    """``avemo ARGS`` in this process: (exit status, stdout, stderr)."""
    from click.testing import CliRunner

    from avemo_cli.cli import main

    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env=env)
    return r.exit_code, r.stdout, r.stderr


def manifest_records(path: Path) -> list[dict]:
    """The records of a run manifest, in order."""
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def shared_file(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available: the ../shared/data media sit beside the project "
                    f"checkout in development and CI, not in a user's clone")
    return p


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Seven short speech clips in nested folders (audio-only inputs: quick to annotate)."""
    import shutil

    root = tmp_path_factory.mktemp("corpus")
    names = ["03a01Fa", "03a01Nc", "03a01Wa", "03a02Fc", "03a02Nc", "03a02Ta", "03a02Wb"]
    for i, name in enumerate(names):
        src = shared_file("emodb", f"{name}.wav")
        (root / f"speaker{i % 3}").mkdir(exist_ok=True)
        shutil.copy(src, root / f"speaker{i % 3}" / src.name)
    return root


@pytest.fixture(scope="session")
def videos_dir() -> Path:
    return shared_file("videos")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def tiny_audio_ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_audio.safetensors",
                                modality="audio")


@pytest.fixture(scope="session")
def tiny_video_ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_video.safetensors",
                                modality="video")


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-v", "error", "-y", *args], check=True)


def make_synthetic_video(path: Path, seconds: float = 3.0, size: str = "160x120",
                         fps: int = 25, audio: bool = True, extra: tuple[str, ...] = ()) -> Path:
    """A test-pattern video (no face) with an optional 440 Hz tone whose loudness rises and
    falls three times a second, as a voice's does with its syllables (a steady tone is not
    speech: ``audio.speech_steps``)."""
    args = ["-f", "lavfi", "-i", f"testsrc=size={size}:rate={fps}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i",
                 f"sine=frequency=440:duration={seconds},tremolo=f=3:d=0.8"]
    args += [*extra, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-shortest"]
    if audio:
        args += ["-c:a", "aac"]
    ffmpeg(*args, str(path))
    return path


def decoded_frame_count(path: Path) -> int:
    """Frames counted by fully decoding the video stream (independent of demux.probe)."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map",
                           "0:v:0", "-f", "null", "-"], capture_output=True, text=True)
    import re

    return int(re.findall(r"frame=\s*(\d+)", proc.stderr)[-1])


def decoded_frame_times(path: Path) -> list[float]:
    """Presentation time of every frame, as ffmpeg's decoder hands them to its filters
    (``showinfo``): the reference that ``demux.probe``'s packet timestamps must match."""
    import re

    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map",
                           "0:v:0", "-vf", "showinfo", "-fps_mode", "passthrough", "-f", "null",
                           "-"], capture_output=True, text=True)
    return [float(t) for t in re.findall(r"pts_time:\s*(-?[\d.]+)", proc.stderr)]
