import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from avemo_cli import demux
from avemo_cli.errors import MediaError

from conftest import decoded_frame_count, decoded_frame_times, ffmpeg, make_synthetic_video, \
    shared_file


@pytest.mark.parametrize("name", ["WDA_KatieHill_000.mp4", "subj01_timepoint01.mp4",
                                  "woman2_noaudio.mp4"])
def test_probe_real_videos(name):
    path = shared_file("videos", name)
    info = demux.probe(path)
    assert info.has_video
    assert info.n_frames == decoded_frame_count(path)
    if shutil.which("ffprobe"):
        out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames",
                              "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0",
                              str(path)], capture_output=True, text=True).stdout
        assert info.n_frames == int(re.findall(r"\d+", out)[0])  # (5.1 adds a comma)
    assert info.has_audio == (name != "woman2_noaudio.mp4")
    assert info.audio_codec == ("" if name == "woman2_noaudio.mp4" else "aac")
    assert info.fps > 20
    assert info.duration > 4


def test_frames_are_resampled_and_scaled_by_ffmpeg():
    info = demux.probe(shared_file("videos", "subj01_timepoint01.mp4"))  # 1080x720, 30 fps
    frames = list(demux.iter_frames(info, rate=4, max_side=480))
    assert abs(len(frames) - info.duration * 4) <= 1
    assert frames[0].shape == (320, 480)
    assert frames[0].dtype == np.uint8
    rgb = next(iter(demux.iter_frames(info, rate=4, max_side=240, gray=False)))
    assert rgb.shape == (160, 240, 3)


def test_audio_is_16k_mono_float():
    info = demux.probe(shared_file("crema-d", "1002_DFA_HAP_XX.mp3"))
    assert not info.has_video
    assert info.has_audio
    assert info.audio_codec == "mp3"
    x = demux.read_audio(info)
    assert x.dtype == np.float32
    assert abs(len(x) / 16000 - info.duration) < 0.1
    assert 0.001 < np.abs(x).max() <= 1.0


def test_only_the_first_of_several_audio_tracks_is_read(tmp_path):
    two = tmp_path / "two.mp4"  # a 440 Hz track, then an 880 Hz one
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=2", "-f", "lavfi",
           "-i", "sine=frequency=440:duration=2", "-f", "lavfi", "-i",
           "sine=frequency=880:duration=2", "-map", "0", "-map", "1", "-map", "2",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(two))
    x = demux.read_audio(demux.probe(two))
    assert abs(len(x) / 16000 - 2) < 0.1
    spectrum = np.abs(np.fft.rfft(x[4000:20000]))
    assert abs(np.argmax(spectrum) - 440) < 5  # 16000 samples at 16 kHz: 1 Hz bins


def test_no_audio_track_is_reported():
    info = demux.probe(shared_file("videos", "woman2_noaudio.mp4"))
    with pytest.raises(MediaError, match="woman2_noaudio.mp4: no audio track"):
        demux.read_audio(info)


def test_rotation_metadata_is_honoured(tmp_path):
    src = make_synthetic_video(tmp_path / "land.mp4", seconds=1, size="160x96", audio=False)
    rotated = tmp_path / "rot.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(src), "-c", "copy", str(rotated))
    info = demux.probe(rotated)
    assert info.rotation in (90, 270)
    assert (info.width, info.height) == (96, 160)
    frame = next(iter(demux.iter_frames(info, rate=4, max_side=480)))
    assert frame.shape == (480, 288)  # portrait, as displayed, scaled to the analysis size


def test_bad_inputs_give_one_line_errors(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(shared_file("videos", "WDA_KatieHill_000.mp4").read_bytes()[:100_000])
    for path, cause in [(tmp_path / "missing.mp4", "no such file"), (empty, "empty file"),
                        (text, "unreadable media"), (cut, "unreadable media")]:
        with pytest.raises(MediaError) as err:
            demux.probe(path)
        msg = str(err.value)
        assert str(path) in msg
        assert cause in msg
        assert "\n" not in msg


def _gapped(path, audio=True):
    """25 fps, a 0.84 s gap in the timestamps after 2 s, then 2 s more (tone throughout)."""
    args = ["-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=4.84"]
    if audio:
        args += ["-f", "lavfi", "-i", "sine=frequency=440:duration=4.84", "-c:a", "aac"]
    ffmpeg(*args, "-vf", "select='lt(t,2)+gte(t,2.84)'", "-fps_mode", "passthrough",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path))
    return path


def _variable_rate(path):
    """Every third frame of the first 2 s dropped (16.7 fps there, 25 fps after)."""
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=4", "-vf",
           "select='gte(t,2)+not(eq(mod(n,3),0))'", "-fps_mode", "passthrough",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path))
    return path


def _edit_listed(path, tmp_path):
    """An MP4 cut at 1.3 s by stream copy: an edit list hides the 33 frames before the cut
    that the decoder still needs (from the keyframe at 0 s)."""
    src = tmp_path / "long.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=6", "-c:v", "libx264",
           "-g", "50", "-pix_fmt", "yuv420p", str(src))
    ffmpeg("-ss", "1.3", "-i", str(src), "-c", "copy", str(path))
    return path


@pytest.mark.parametrize("kind", ["gapped", "variable", "edit-listed"])
def test_frame_times_come_from_the_container(tmp_path, kind):
    path = tmp_path / f"{kind}.mp4"
    if kind == "gapped":
        _gapped(path, audio=False)
    elif kind == "variable":
        _variable_rate(path)
    else:
        _edit_listed(path, tmp_path)
    info = demux.probe(path)
    truth = np.asarray(decoded_frame_times(path))
    assert info.n_frames == len(truth) == decoded_frame_count(path)
    assert np.abs(info.frame_times() - truth).max() < 0.5 / 25  # within half a frame
    if kind == "gapped":  # a constant rate would be off by up to 0.44 s after the gap
        assert np.abs(np.arange(len(truth)) / info.fps - truth).max() > 0.3


def test_gapped_video_csv_time_is_true(tmp_path, tiny_ckpt):
    from avemo_cli.pipeline import Annotator
    from avemo_cli.settings import AnnotatorSettings

    path = _gapped(tmp_path / "gap.mp4")
    table = Annotator(tiny_ckpt, AnnotatorSettings(device="cpu")).annotate(path).table
    truth = np.asarray(decoded_frame_times(path))
    if shutil.which("ffprobe"):  # where there is one (the imageio-ffmpeg wheel has none)
        out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                              "frame=best_effort_timestamp_time", "-of", "csv=p=0", str(path)],
                             capture_output=True, text=True).stdout
        probed = np.array([float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", out)])
        assert len(probed) == len(truth)
        assert np.abs(probed - truth).max() < 0.5 / 25
    assert len(table) == len(truth)
    assert np.abs(table["time"].to_numpy() - truth).max() < 0.5 / 25
    assert table["time"].is_monotonic_increasing


def _anamorphic(src, path, stretch):
    """The first 6 s of ``src`` stored ``stretch`` times narrower, with pixels ``1/stretch``
    wider (sample aspect ratio): displayed as the original."""
    ffmpeg("-t", "6", "-i", str(src), "-an", "-vf",
           f"scale=trunc(iw*{stretch}/2)*2:ih,setsar={1 / stretch:.6f}", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(path))
    return path


def test_sample_aspect_ratio_is_honoured(tmp_path):
    from avemo_cli.faces import make_backend
    from avemo_cli.features import FeatureSettings, extract

    src = shared_file("videos", "WDA_KatieHill_000.mp4")
    square = tmp_path / "square.mp4"
    ffmpeg("-t", "6", "-i", str(src), "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p",
           str(square))
    squeezed = _anamorphic(src, tmp_path / "squeezed.mp4", 9 / 16)
    a, b = demux.probe(square), demux.probe(squeezed)
    assert abs(b.sar - 16 / 9) < 0.01
    assert abs(b.width / b.height - a.width / a.height) < 0.01  # displayed as the original
    frame = next(iter(demux.iter_frames(b, rate=4)))
    assert frame.shape == next(iter(demux.iter_frames(a, rate=4))).shape
    backend = make_backend("dlib")
    rates = [extract(info, FeatureSettings(audio=False), lambda: backend).face.mean()
             for info in (a, b)]
    assert rates[0] > 0.9
    assert abs(rates[0] - rates[1]) <= 0.05


def test_a_truncated_file_is_annotated_in_part_and_says_so(tmp_path, tiny_ckpt):
    """An mp4 cut at half its bytes: what could be decoded is annotated, with a warning on
    stderr, the manifest's record 'partial' with what was annotated, and `avemo status` counts
    it apart."""
    import json

    from click.testing import CliRunner

    from avemo_cli.cli import main

    from conftest import make_synthetic_video

    whole = make_synthetic_video(tmp_path / "whole.mp4", seconds=10.0, extra=("-movflags",
                                                                              "+faststart"))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out = tmp_path / "out"
    for src, partial in ((whole, False), (cut, True)):
        r = CliRunner().invoke(main, ["annotate", str(src), "-o", str(out), "--weights",
                                      str(tiny_ckpt)])
        assert r.exit_code == 0, r.stderr
        warned = [ln for ln in r.stderr.splitlines() if ln.startswith("avemo: warning:")
                  and "no face found" not in ln]  # (a test pattern: no face, said too)
        assert bool(warned) == partial, r.stderr
    assert "could be decoded" in warned[0]
    assert "of its 10.00 s" in warned[0]
    records = {json.loads(ln)["input"]: json.loads(ln)
               for ln in (out / "avemo-manifest.jsonl").read_text().splitlines()}
    assert records[str(whole)]["status"] == "ok"
    assert records[str(whole)]["media_seconds"] == 10
    assert records[str(cut)]["status"] == "partial"
    assert ("could be decoded" in \
        records[str(cut)]["warning"])
    assert 2 < records[str(cut)]["media_seconds"] < 8
    r = CliRunner().invoke(main, ["status", str(out)])
    assert "1 annotated, 1 annotated in part" in r.stdout
    assert "partial: " in r.stdout


@pytest.mark.parametrize("name", ["2024-01-05T10:30.mp4", "pipe:0.mp4"])
def test_names_with_a_colon_are_files_not_protocols(tmp_path, tiny_ckpt, monkeypatch, name):
    """ffmpeg reads ``x:y`` as protocol x; a relative name with a colon is still the file."""
    from conftest import cli

    shutil.copy(shared_file("videos", "WDA_KatieHill_000.mp4"), tmp_path / name)
    monkeypatch.chdir(tmp_path)
    code, stdout, err = cli("annotate", name, "-o", "out", "--weights", tiny_ckpt, "-q",
                            "--format", "csv,mp4")
    assert code == 0, err
    table = np.genfromtxt(tmp_path / "out" / f"{name[:-4]}.avemo.csv", delimiter=",",
                          names=True)
    assert table["face"].mean() > 0.9
    assert (tmp_path / "out" / f"{name[:-4]}.avemo.mp4").stat().st_size > 0


def test_the_decoder_is_the_wheels_unless_one_is_chosen(tmp_path, tiny_audio_ckpt,
                                                        monkeypatch):
    """Whatever ffmpeg is first on PATH (a stand-in that always fails, here), avemo decodes with
    the imageio-ffmpeg wheel's and says so in the manifest and the JSON; AVEMO_FFMPEG chooses
    another, and one that cannot be found is one line before any work."""
    import json

    import imageio_ffmpeg

    from conftest import cli

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ffmpeg").write_text("#!/bin/sh\nexit 1\n")
    (fake / "ffmpeg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("AVEMO_FFMPEG", raising=False)
    assert demux.ffmpeg_exe() == imageio_ffmpeg.get_ffmpeg_exe()
    wav = shared_file("emodb", "03a01Fa.wav")
    code, _, err = cli("annotate", wav, "-o", tmp_path / "a", "--weights", tiny_audio_ckpt,
                       "-q", "--format", "json")
    assert code == 0, err
    said = demux.decoder()
    assert said.startswith("ffmpeg ")
    assert said.endswith("(imageio-ffmpeg)")
    assert json.loads((tmp_path / "a" / "03a01Fa.avemo.json").read_text())["decoder"] == said
    record = json.loads((tmp_path / "a" / "avemo-manifest.jsonl").read_text())
    assert record["decoder"] == said
    monkeypatch.setenv("AVEMO_FFMPEG", str(fake / "ffmpeg"))
    assert demux.ffmpeg_exe() == str(fake / "ffmpeg")
    code, _, err = cli("annotate", wav, "-o", tmp_path / "b", "--weights", tiny_audio_ckpt,
                       "-q")
    assert code == 1, "the chosen decoder is used (this one fails)"
    monkeypatch.setenv("AVEMO_FFMPEG", "no-such-ffmpeg")
    code, _, err = cli("annotate", wav, "-o", tmp_path / "c", "--weights", tiny_audio_ckpt)
    assert code == 2, err
    assert err.strip() == "avemo: error: AVEMO_FFMPEG=no-such-ffmpeg: no such program (set " \
        "it to an ffmpeg binary, or unset it to use the one avemo ships)"
    assert not (tmp_path / "c").exists()


def test_a_stream_without_a_container_duration_is_measured(tmp_path):
    """WebM written live to a pipe (as a browser's MediaRecorder does) holds no duration: it is
    measured from the packets, and every frame is there."""
    piped = tmp_path / "piped.webm"
    with open(piped, "wb") as out:
        subprocess.run([demux.ffmpeg_exe(), "-v", "error", "-i",
                        str(shared_file("videos", "WDA_KatieHill_000.mp4")), "-t", "4",
                        "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8",
                        "-c:a", "libopus", "-live", "1", "-f", "webm", "-"], stdout=out,
                       check=True)
    listing = subprocess.run([demux.ffmpeg_exe(), "-hide_banner", "-i", str(piped)],
                             capture_output=True, text=True).stderr
    assert "Duration: N/A" in listing
    info = demux.probe(piped)
    assert info.duration == pytest.approx(4.0, abs=0.1)
    assert info.n_frames == decoded_frame_count(piped)
    assert info.has_audio


def test_a_still_image_or_a_file_of_subtitles_is_named_for_what_it_is(tmp_path):
    jpg, png, subs = tmp_path / "still.jpg", tmp_path / "still.png", tmp_path / "subs.mkv"
    sample = shared_file("videos", "WDA_KatieHill_000.mp4")
    ffmpeg("-i", str(sample), "-frames:v", "1", str(jpg))
    ffmpeg("-i", str(sample), "-frames:v", "1", str(png))
    (tmp_path / "s.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    ffmpeg("-i", str(tmp_path / "s.srt"), "-c:s", "srt", str(subs))
    for still in (jpg, png):
        with pytest.raises(MediaError, match="a still image, not a video"):
            demux.probe(still)
    with pytest.raises(MediaError, match=r"no video or audio stream \(only subtitles or data\)"):
        demux.probe(subs)


def test_a_second_audio_track_is_said_to_be_left_aside(tmp_path, tiny_ckpt):
    from conftest import cli

    src = shared_file("videos", "WDA_KatieHill_000.mp4")
    two = tmp_path / "two_tracks.mp4"
    ffmpeg("-i", str(src), "-f", "lavfi", "-i", "sine=frequency=300:duration=5", "-map", "0:v",
           "-map", "0:a", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-shortest", str(two))
    assert demux.probe(two).audio_tracks == 2
    code, _, err = cli("annotate", two, "-o", tmp_path / "out", "--weights", tiny_ckpt, "-q")
    assert code == 0, err
    assert "two_tracks.mp4: it has 2 audio tracks; the first is annotated" in err


@pytest.mark.parametrize("frames", [1, 2])
def test_a_video_of_one_or_two_frames_is_annotated(tmp_path, tiny_video_ckpt, frames):
    """The fps filter emits no frame for a 1-frame video: such videos are decoded whole, and
    their face (in frame 0) is found (it said "no face found")."""
    from conftest import cli

    short = tmp_path / f"frames{frames}.mp4"
    ffmpeg("-i", str(shared_file("videos", "WDA_KatieHill_000.mp4")), "-frames:v", str(frames),
           "-an", "-c:v", "libx264", str(short))
    assert demux.probe(short).n_frames == frames
    code, _, err = cli("annotate", short, "-o", tmp_path / "out", "--weights", tiny_video_ckpt,
                       "-q")
    assert code == 0, err
    t = np.genfromtxt(tmp_path / "out" / f"frames{frames}.avemo.csv", delimiter=",", names=True)
    assert np.atleast_1d(t["face"]).tolist() == [1] * frames
