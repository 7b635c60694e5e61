"""Stage 1 — demux: probe a media file and stream its frames and audio through ffmpeg.

Frames are resampled to the analysis rate and scaled by ffmpeg itself (``fps`` and ``scale``
filters), so Python only ever sees the few frames the analysis needs, one at a time. Audio comes
out as 16 kHz mono float32. ffmpeg is driven through ``ffmpeg-python``; the binary is a system
``ffmpeg`` on PATH when present, else the one shipped in the ``imageio-ffmpeg`` wheel.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import ffmpeg  # ffmpeg-python
import numpy as np

from .errors import DecoderError, MediaError, printable

# what counts as media when folders are searched (find_media)
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv",
              ".3gp", ".mts", ".ts"}
AUDIO_EXTS = {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus", ".wma"}
MEDIA_EXTS = VIDEO_EXTS | AUDIO_EXTS

AUDIO_RATE = 16000


@lru_cache(maxsize=1)
def find_media(folder: Path) -> list[Path]:
    """Media files under ``folder`` (recursive, by extension, hidden files skipped), sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in MEDIA_EXTS:
                found.append(Path(root) / name)
    return found


def ffmpeg_exe() -> str:
    """The ffmpeg avemo decodes with: ``$AVEMO_FFMPEG`` when set (a path, or a name on PATH),
    else the one the ``imageio-ffmpeg`` wheel ships. Never merely the first ffmpeg on PATH:
    decoders differ (Debian's 5.1 moved valence by up to 0.15 on the bundled sample), so the
    same install gives the same numbers whatever else the machine has."""
    return _ffmpeg(os.environ.get("AVEMO_FFMPEG") or "")


@lru_cache(maxsize=4)
def _ffmpeg(chosen: str) -> str:
    if not chosen:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    found = shutil.which(chosen)
    if found is None:
        raise DecoderError(f"AVEMO_FFMPEG={chosen}: no such program (set it to an ffmpeg "
                           f"binary, or unset it to use the one avemo ships)")
    return found


def decoder() -> str:
    """The decoder's name and version, as the manifest and the JSON output record it:
    ``ffmpeg 9.0.2 (imageio-ffmpeg)``, or ``... (AVEMO_FFMPEG=/usr/bin/ffmpeg)``."""
    return _describe(ffmpeg_exe(), os.environ.get("AVEMO_FFMPEG") or "")


@lru_cache(maxsize=4)
def _describe(exe: str, chosen: str) -> str:
    try:
        out = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, text=True,
                             timeout=30, start_new_session=True).stdout
        version = out.split()[2] if out.startswith("ffmpeg version ") else "?"
    except (OSError, subprocess.SubprocessError, IndexError):
        version = "?"
    return f"ffmpeg {version} ({f'AVEMO_FFMPEG={chosen}' if chosen else 'imageio-ffmpeg'})"


@dataclass(frozen=True)
class MediaInfo:
    """What the analysis needs to know about a file before decoding it."""

    path: Path
    duration: float  # seconds
    has_video: bool
    has_audio: bool
    width: int = 0  # display size: after the sample aspect ratio and rotation
    height: int = 0
    fps: float = 0.0  # nominal frame rate (the container's; frames may not keep it)
    rotation: int = 0  # degrees, as stored in the file's display matrix
    n_frames: int = 0  # video frames (one CSV row each)
    audio_codec: str = ""  # ffmpeg's name for the first audio stream's codec ("aac", ...)
    sar: float = 1.0  # sample (pixel) aspect ratio of the stored frames
    pts: np.ndarray | None = field(default=None, compare=False, repr=False)
    # (n_frames,) presentation time of every frame in seconds, from the container
    audio_start: float = 0.0  # seconds on the same timeline where the audio's first sample
    # plays (a stream that starts after the video's first frame, e.g. an offset track)
    unused_video: str = ""  # why a video stream the file has is not analysed ("" if none)
    audio_tracks: int = 0  # audio streams in the file (the first is the one annotated)

    def frame_times(self) -> np.ndarray:
        """Presentation time of every video frame: the container's timestamps (on ffmpeg's
        timeline, the one the analysis steps are placed on), or ``i / fps`` where it has none."""
        if self.pts is not None and len(self.pts) == self.n_frames:
            return self.pts
        return np.arange(self.n_frames, dtype=np.float64) / self.fps

    def to_json(self) -> dict:
        """The fields that are plain values (``pts`` is an array; stored beside them)."""
        return {"path": str(self.path), "duration": self.duration, "has_video": self.has_video,
                "has_audio": self.has_audio, "width": self.width, "height": self.height,
                "fps": self.fps, "rotation": self.rotation, "n_frames": self.n_frames,
                "audio_codec": self.audio_codec, "sar": self.sar,
                "audio_start": self.audio_start, "unused_video": self.unused_video}


_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM = re.compile(r"Stream #\d+:\d+.*?: (Video|Audio): (.*)")
_SIZE = re.compile(r", (\d{1,5})x(\d{1,5})")
MIN_SIDE = 16  # pixels: a smaller picture holds no face to find (its audio is still used)
_FPS = re.compile(r"([\d.]+)(k?) fps")
_TBR = re.compile(r"([\d.]+)(k?) tbr")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees|rotate\s*:\s*(-?\d+)")
_SAR = re.compile(r"SAR (\d+):(\d+)")
_START = re.compile(r"start:? (-?\d+(?:\.\d+)?)")  # the file's (Duration line), a stream's
_AV_NOPTS = -(2 ** 63)
_STILL = re.compile(r"Input #0, (image2|\w+_pipe|png|bmp|webp|tiff|gif_pipe)\b")  # a picture
DISCARD = 0x4  # AV_PKT_FLAG_DISCARD: a packet an edit list leaves out of the presentation


def file_arg(path: str | os.PathLike) -> str:
    """A file's name as ffmpeg must be given it: ffmpeg reads ``2024-01-05T10:30.mp4`` or
    ``pipe:0.mp4`` as a protocol and an address; ``file:`` makes any name a file's. A name
    that is not UTF-8 cannot be passed through ffmpeg-python: a one-line error."""
    name = os.fspath(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise MediaError(f"{printable(name)}: its name is not valid UTF-8 (ffmpeg cannot be "
                         f"given it here): rename the file") from None
    return "file:" + name


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _short_reason(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error opening input" in ln or "Invalid data" in ln or "moov atom" in ln:
            return ln.split(": ", 1)[-1] if ln.startswith("[") else ln
    return lines[-1] if lines else "ffmpeg could not read it"


def packet_times(path: Path) -> np.ndarray:
    """Presentation time (seconds, sorted) of every video frame, from the container's packets.

    A stream copy of the first video stream to ffmpeg's ``framecrc`` muxer lists each packet's
    timestamps without decoding anything. ffmpeg shifts them by the file's start time, as it does
    the decoded frames the analysis sees, and packets an edit list leaves out (flag ``DISCARD``)
    are dropped. NaN for a packet without a timestamp.
    """
    proc = _run(["-v", "error", "-i", file_arg(path), "-map", "0:v:0", "-c", "copy",
                 "-f", "framecrc", "-"])
    tb = None
    pts = []
    for line in proc.stdout.decode("ascii", "replace").splitlines():
        if line.startswith("#tb 0:"):
            num, den = line.split(":", 1)[1].strip().split("/")
            tb = int(num) / int(den)
        elif line and not line.startswith("#"):
            fields = [f.strip() for f in line.split(",")]
            flags = next((int(f[2:], 16) for f in fields[6:] if f.startswith("F=")), 0)
            if len(fields) >= 6 and not flags & DISCARD:
                pts.append(int(fields[2]))
    times = np.asarray(pts, np.float64) * (tb or np.nan)
    times[np.asarray(pts, np.int64) == _AV_NOPTS] = np.nan
    return np.sort(times)


def probe(path: str | os.PathLike) -> MediaInfo:
    """Read duration, streams, size, frame rate, rotation and frame times of ``path``.

    Uses ``ffmpeg -i`` (the imageio-ffmpeg wheel ships no ffprobe), and reads the frames'
    presentation times from the container's packets (``packet_times``), so variable frame
    rates, timestamp gaps and edit lists give true times.
    """
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: no such file")
    if path.is_dir():
        raise MediaError(f"{path}: is a folder, not a media file")
    if not path.is_file():
        raise MediaError(f"{path}: not a regular file (a pipe, socket or device)")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    proc = _run(["-i", file_arg(path)])
    err = proc.stderr.decode("utf-8", "replace")
    dur = _DURATION.search(err)
    streams = [(m.group(1), m.group(2)) for m in _STREAM.finditer(err)]
    if _STILL.search(err):
        raise MediaError(f"{path}: a still image, not a video (avemo annotates video and audio "
                         f"files)")
    if not streams and "Stream #" in err:
        raise MediaError(f"{path}: no video or audio stream (only subtitles or data)")
    if not streams or (dur is None and "Duration: N/A" not in err):
        raise MediaError(f"{path}: unreadable media ({_short_reason(err)})")
    duration = int(dur.group(1)) * 3600 + int(dur.group(2)) * 60 + float(dur.group(3)) \
        if dur is not None else float("nan")
    if not duration < UNSET_DURATION:  # none written (a stream recorded to a pipe, as a
        duration = _measured_duration(path)  # browser's MediaRecorder does), or 0xFFFFFFFF
    video = next((d for kind, d in streams if kind == "Video" and "attached pic" not in d), None)
    audio = next((d for kind, d in streams if kind == "Audio"), None)
    tracks = sum(kind == "Audio" for kind, _ in streams)
    has_audio = audio is not None
    audio_codec = audio.split(maxsplit=1)[0].rstrip(",") if audio else ""
    audio_start = _stream_start(audio, err) if audio else 0.0
    if video is None:
        if not has_audio:
            raise MediaError(f"{path}: no video or audio stream")
        return MediaInfo(path, duration, has_video=False, has_audio=True,
                         audio_codec=audio_codec, audio_tracks=tracks)
    size = _SIZE.search(video)
    rate = _FPS.search(video) or _TBR.search(video)
    if size is None or rate is None:
        raise MediaError(f"{path}: cannot read the video stream's size or frame rate")
    fps = float(rate.group(1)) * (1000 if rate.group(2) else 1)
    width, height = int(size.group(1)), int(size.group(2))
    if min(width, height) < MIN_SIDE and has_audio:
        return MediaInfo(path, duration, has_video=False, has_audio=True,
                         audio_codec=audio_codec, unused_video=f"its picture is {width}x"
                         f"{height} pixels, too small to hold a face", audio_tracks=tracks)
    sar_m = _SAR.search(video)
    sar = int(sar_m.group(1)) / int(sar_m.group(2)) if sar_m and int(sar_m.group(2)) else 1.0
    sar = sar if sar > 0 else 1.0  # "SAR 0:1" means unknown: square
    width = max(2, int(round(width * sar / 2)) * 2) if sar != 1.0 else width
    rot = _ROTATION.search(err)
    rotation = int(round(float(rot.group(1) or rot.group(2)))) % 360 if rot else 0
    if rotation in (90, 270):
        width, height = height, width
    times = packet_times(path)
    n_frames = len(times)
    # a container without timestamps (raw streams): a constant rate
    pts = None if np.isnan(times).any() else times
    if n_frames == 0:
        raise MediaError(f"{path}: the video stream has no frames")
    return MediaInfo(path, duration, True, has_audio, width, height, fps, rotation, n_frames,
                     audio_codec, sar, pts, audio_start, audio_tracks=tracks)


UNSET_DURATION = 4294967.0  # s: 0xFFFFFFFF ms, what a writer that never knew the length leaves


def _measured_duration(path: Path) -> float:
    """A file's duration from its packets (a pass that copies them, no decoding), for a
    container that does not say it."""
    proc = _run(["-v", "error", "-i", file_arg(path), "-map", "0", "-c", "copy", "-f", "null",
                 "-progress", "pipe:1", "-"])
    times = re.findall(rb"out_time_us=(\d+)", proc.stdout)
    if not times or int(times[-1]) <= 0:
        raise MediaError(f"{path}: unreadable media (its length is not written and could not "
                         f"be measured)")
    return int(times[-1]) / 1e6


def _stream_start(stream: str, listing: str) -> float:
    """Where a stream starts on the decoded timeline: its start time (``ffmpeg -i`` names it
    when it is not the file's) less the file's, which ffmpeg subtracts from every timestamp."""
    own = _START.search(stream)
    if own is None:
        return 0.0
    line = next((ln for ln in listing.splitlines() if "Duration:" in ln), "")
    whole = _START.search(line)
    return max(0.0, round(float(own.group(1)) - (float(whole.group(1)) if whole else 0.0), 6))


def analysis_size(info: MediaInfo, max_side: int) -> tuple[int, int]:
    """(width, height) of analysis frames: the display size scaled (down or up) so its long
    side is ``max_side``, rounded to even numbers. A fixed analysis size keeps the face detector's
    range (dlib: faces of 80 px and more) the same share of the frame for every input."""
    scale = max_side / max(info.width, info.height)
    w = max(2, int(round(info.width * scale / 2)) * 2)
    h = max(2, int(round(info.height * scale / 2)) * 2)
    return w, h


def _frame_layout(info: MediaInfo, max_side: int, gray: bool
                  ) -> tuple[int, int, tuple[int, ...], str]:
    """Analysis frames as ffmpeg writes them: width, height, the array shape and pixel format."""
    w, h = analysis_size(info, max_side)
    return w, h, ((h, w) if gray else (h, w, 3)), ("gray" if gray else "rgb24")


def _stream(args: list[str], chunk: int, path: Path, what: str,
            partial: bool = False) -> Iterator[bytes]:
    """Run ffmpeg ``args`` and yield its stdout in pieces of ``chunk`` bytes (and the shorter
    last piece when ``partial``). ffmpeg is stopped when the consumer stops early; a failure is
    a ``MediaError`` naming ``what`` failed."""
    with tempfile.TemporaryFile() as errf:
        # (a session of its own: a stop sent to our process group, Ctrl-C or a scheduler's
        # SIGTERM, is ours to handle; ffmpeg is stopped below, or by its pipe closing)
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errf,
                                start_new_session=True)
        assert proc.stdout is not None
        finished = False
        try:
            while True:
                buf = proc.stdout.read(chunk)
                if len(buf) < chunk:
                    if partial and buf:
                        yield buf
                    break
                yield buf
            finished = True
        finally:
            if not finished:  # the consumer stopped early (or failed): stop ffmpeg too
                proc.kill()
            proc.stdout.close()
            code = proc.wait()
        if finished and code != 0:
            errf.seek(0)
            raise MediaError(f"{path}: {what} failed "
                             f"({_short_reason(errf.read().decode('utf-8', 'replace'))})")


# frames at least twice the analysis size: decoded without H.264's loop filter and without
# the frames no other frame refers to (ffmpeg skip_frame=noref): the fps filter then takes the
# kept frame nearest each step (at most two frames off, 67 ms at 30 fps); 1080p decoding 3.4 ->
# 2.5 s per minute here
SKIP_FRAME = "noref"
FEW_FRAMES = 2  # videos of this many frames or fewer are decoded whole, without the fps filter


def iter_frames(info: MediaInfo, rate: float, max_side: int = 480,
                gray: bool = True, deblock: bool | None = None) -> Iterator[np.ndarray]:
    """Yield analysis frames (``H x W`` uint8, or ``H x W x 3`` RGB) at ``rate`` per second.

    ffmpeg resamples (``fps`` filter: the input frame nearest each step time k / rate, by the
    frames' timestamps), rotates per the display matrix (ffmpeg's autorotate) and scales to the
    display shape (so non-square pixels come out square); one frame is in memory at a time.
    ``deblock`` None: frames at least twice the analysis size skip the deblocking filter and
    the frames no other refers to (``SKIP_FRAME``); True decodes every frame exactly.
    """
    w, h, shape, pix_fmt = _frame_layout(info, max_side, gray)
    # frames at least twice the analysis size are decoded without the deblocking filter
    # (about a sixth of 1080p decoding: the downscale averages its blocks away) and without
    # non-reference frames (SKIP_FRAME)
    if deblock is None:
        deblock = max(info.width, info.height) < 2 * max_side
    fast = {} if deblock else {"skip_loop_filter": "all", "skip_frame": SKIP_FRAME}
    few = 0 < info.n_frames <= FEW_FRAMES  # (the fps filter emits none for a 1-frame video)
    video = ffmpeg.input(file_arg(info.path), **({} if few else fast)).video
    stream = (
        (video if few else video.filter("fps", fps=rate, start_time=0))
        .filter("scale", w, h)
        .output("pipe:", format="rawvideo", pix_fmt=pix_fmt)
        .global_args("-nostdin", "-v", "error")
    )
    frames = (np.frombuffer(buf, np.uint8).reshape(shape) for buf in
              _stream(stream.compile(cmd=ffmpeg_exe()), int(np.prod(shape)), info.path,
                      "video decoding"))
    if not few:
        yield from frames
        return
    every = list(frames)  # a few frames, each step taking the one nearest its time
    if every:
        times = info.frame_times()[:len(every)]
        steps = int(np.floor(max(0.0, times[-1]) * rate + 1e-6)) + 1
        for k in range(steps):
            yield every[int(np.argmin(np.abs(times - k / rate)))]


def sample_frames(info: MediaInfo, n: int, max_side: int = 480,
                  gray: bool = True) -> list[np.ndarray]:
    """``n`` analysis frames spread evenly over the video, each read by seeking (a few short
    ffmpeg runs, not a decode of the whole file); frames that cannot be read are left out."""
    w, h, shape, pix_fmt = _frame_layout(info, max_side, gray)
    last = info.frame_times()[-1] if info.n_frames else info.duration
    frames = []
    for t in np.linspace(0.0, max(0.0, last), n + 2)[1:-1]:
        args = (ffmpeg.input(file_arg(info.path), ss=f"{t:.3f}").video.filter("scale", w, h)
                .output("pipe:", format="rawvideo", pix_fmt=pix_fmt, vframes=1)
                .global_args("-nostdin", "-v", "error").compile(cmd=ffmpeg_exe()))
        buf = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             start_new_session=True).stdout
        if len(buf) == int(np.prod(shape)):
            frames.append(np.frombuffer(buf, np.uint8).reshape(shape))
    return frames


AUDIO_BLOCK = 10.0  # seconds of audio per block that iter_audio yields


def iter_audio(info: MediaInfo, sample_rate: int = AUDIO_RATE,
               block: float = AUDIO_BLOCK) -> Iterator[np.ndarray]:
    """The first audio stream as mono float32 at ``sample_rate``, in blocks of ``block``
    seconds (the last one shorter): memory does not grow with the file's length."""
    if not info.has_audio:
        raise MediaError(f"{info.path}: no audio track")
    args = (
        ffmpeg.input(file_arg(info.path))["a:0"]  # all audio streams would not fit one raw output
        .output("pipe:", format="f32le", ac=1, ar=sample_rate)
        .global_args("-nostdin", "-v", "error")
        .compile(cmd=ffmpeg_exe())
    )
    n = 0
    for buf in _stream(args, int(block * sample_rate) * 4, info.path, "audio decoding",
                       partial=True):
        samples = np.frombuffer(buf[: len(buf) // 4 * 4], np.float32)
        n += len(samples)
        yield samples
    if n == 0:
        raise MediaError(f"{info.path}: the audio track is empty")


def read_audio(info: MediaInfo, sample_rate: int = AUDIO_RATE) -> np.ndarray:
    """The whole first audio stream at once (``iter_audio``'s blocks joined; ~4 MB a minute):
    for short clips; the annotation pipeline streams."""
    return np.concatenate(list(iter_audio(info, sample_rate)))
