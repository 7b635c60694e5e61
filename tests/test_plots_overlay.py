"""--plot, --overlay and eval --plot, on real media with a tiny random checkpoint."""
import subprocess

import numpy as np
import pytest

from avemo_cli.demux import ffmpeg_exe, probe
from avemo_cli.pipeline import Annotator
from avemo_cli.settings import AnnotatorSettings

from conftest import cli as run, decoded_frame_count, ffmpeg, make_synthetic_video, shared_file




def frame_at(path, index: int, size: tuple[int, int]) -> np.ndarray:
    """Decoded RGB frame ``index`` of a video (independent of the overlay code)."""
    w, h = size
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-vf",
                          f"select=eq(n\\,{index})", "-frames:v", "1", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(h, w, 3).astype(np.int16)


@pytest.fixture(scope="module")
def overlay_run(tmp_path_factory, tiny_ckpt):
    video = shared_file("videos", "WDA_KatieHill_000.mp4")
    out = tmp_path_factory.mktemp("ov")
    code, stdout, err = run("annotate", video, "-o", out, "--weights", tiny_ckpt, "--plot",
                            "--overlay")
    return video, out, code, stdout, err


def test_overlay_video_matches_the_input(overlay_run):
    video, out, code, stdout, err = overlay_run
    assert code == 0, err
    mp4 = out / "WDA_KatieHill_000.avemo.mp4"
    assert stdout.split() == [str(out / f"WDA_KatieHill_000.avemo.{e}")
                              for e in ("csv", "png", "mp4")]
    src, ov = probe(video), probe(mp4)
    assert (ov.width, ov.height, ov.fps) == (src.width, src.height, src.fps)
    assert decoded_frame_count(mp4) == decoded_frame_count(video) == 200
    assert ov.has_audio
    header = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(mp4)],
                            capture_output=True, text=True).stderr
    assert "h264" in header
    assert "yuv420p" in header


def audio_packets_md5(path) -> str:
    """MD5 of the first audio stream's coded packets (a stream copy, nothing decoded)."""
    return subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:a:0",
                           "-c", "copy", "-f", "md5", "-"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_overlay_copies_aac_audio_untouched(overlay_run):
    video, out, *_ = overlay_run
    assert audio_packets_md5(out / "WDA_KatieHill_000.avemo.mp4") == audio_packets_md5(video)


def test_overlay_encodes_other_audio_to_aac_and_keeps_odd_sizes(tmp_path, tiny_ckpt):
    mkv = tmp_path / "odd.mkv"  # 333x241 lossless video, PCM audio: neither plays in MP4
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=333x241:rate=25:duration=2", "-f", "lavfi",
           "-i", "sine=frequency=440:duration=2", "-c:v", "ffv1", "-c:a", "pcm_s16le", str(mkv))
    code, _, err = run("annotate", mkv, "-o", tmp_path, "--weights", tiny_ckpt, "--overlay")
    assert code == 0, err
    mp4 = tmp_path / "odd.avemo.mp4"
    ov = probe(mp4)
    assert ov.audio_codec == "aac"
    assert abs(ov.duration - 2) < 0.1
    assert (ov.width, ov.height) == (334, 242)  # yuv420p needs even sizes: padded by one
    assert decoded_frame_count(mp4) == 50


def test_only_the_face_and_panel_regions_are_composited(tiny_ckpt):
    from avemo_cli.overlay import _Layers

    ann = Annotator(tiny_ckpt, AnnotatorSettings(device="cpu")).annotate(shared_file("videos",
                                                                  "WDA_KatieHill_000.mp4"))
    layers = _Layers(ann)
    fx0, fy0, fx1, fy1 = layers.face_rect
    scale = ann.track.frame_size[0] / ann.info.width
    boxes = ann.track.boxes[ann.face] / scale
    assert fx0 <= boxes[:, 0].min()
    assert fy0 <= boxes[:, 1].min()
    assert fx1 >= min(512, boxes[:, 2].max())
    assert fy1 >= min(512, boxes[:, 3].max())
    assert all(v % 2 == 0 for v in (fx0, fy0))
    assert any(r[0] <= fx0 and r[1] <= fy0 and r[2] >= fx1 and r[3] >= fy1
               for r in layers.regions)
    canvas = layers.draw(16)
    assert canvas.shape == (*layers.canvas, 4)
    assert canvas.shape[0] * canvas.shape[1] < 0.75 * 512 * 512
    # what is drawn outside the regions would be lost: nothing is
    outside = layers.layer.copy()
    for x0, y0, x1, y1 in layers.regions:
        outside[y0:y1, x0:x1] = 0
    assert not outside.any()


def test_heat_map_lies_on_the_face(overlay_run, tiny_ckpt):
    video, out, *_ = overlay_run
    ann = Annotator(tiny_ckpt, AnnotatorSettings(device="cpu")).annotate(video)
    idx = 100  # frame 100 at 4.0 s: analysis step 16
    k = 16
    assert ann.face[k]
    scale = ann.track.frame_size[0] / ann.info.width
    x0, y0, x1, y1 = (ann.track.boxes[k] / scale).astype(int)
    a = frame_at(video, idx, (512, 512))
    b = frame_at(out / "WDA_KatieHill_000.avemo.mp4", idx, (512, 512))
    diff = np.abs(a - b).mean(axis=2)
    inside = diff[y0 + 10:y1 - 10, x0 + 10:x1 - 10].mean()
    far = diff[:40, :40].mean()  # the top-left corner: no face, no panel
    assert inside > 15, inside
    assert far < 4, far


def test_frames_without_a_face_are_kept_without_the_face_overlay(tmp_path, tiny_ckpt):
    pattern = make_synthetic_video(tmp_path / "pattern.mp4", seconds=2, size="512x512",
                                   audio=True)
    face = shared_file("videos", "WDA_KatieHill_000.mp4")
    mixed = tmp_path / "mixed.mp4"
    ffmpeg("-i", str(pattern), "-t", "3", "-i", str(face), "-filter_complex",
           "[0:v]fps=25,format=yuv420p[a];[1:v]fps=25,format=yuv420p[b];"
           "[0:a]aresample=16000[c];[1:a]aresample=16000,aformat=channel_layouts=mono[d];"
           "[a][c][b][d]concat=n=2:v=1:a=1[v][s]", "-map", "[v]", "-map", "[s]",
           "-c:v", "libx264", "-c:a", "aac", str(mixed))
    code, _, err = run("annotate", mixed, "-o", tmp_path / "out", "--weights", tiny_ckpt,
                       "--overlay")
    assert code == 0, err
    mp4 = tmp_path / "out" / "mixed.avemo.mp4"
    assert decoded_frame_count(mp4) == decoded_frame_count(mixed)
    a, b = frame_at(mixed, 25, (512, 512)), frame_at(mp4, 25, (512, 512))  # 1 s: no face
    diff = np.abs(a - b).mean(axis=2)
    assert diff[100:300, 150:350].mean() < 4  # the centre is untouched: no heat map, no box
    assert diff[-60:, :100].mean() > 10  # the gauge panel is there


def test_api_returns_attention(tiny_ckpt):
    ann = Annotator(tiny_ckpt, AnnotatorSettings(device="cpu")).annotate(shared_file("videos",
                                                                  "WDA_KatieHill_000.mp4"))
    vis, aud = ann.steps.visual_attention, ann.steps.audio_attention
    assert vis.shape == (32, 16, 16)
    assert aud.shape == (32, 16)
    assert np.allclose(vis.sum(axis=(1, 2)), 1, atol=1e-4)
    assert np.allclose(aud.sum(axis=1), 1, atol=1e-4)


def test_plot_png_is_drawn(overlay_run):
    import matplotlib.image as mpimg

    _, out, *_ = overlay_run
    img = mpimg.imread(out / "WDA_KatieHill_000.avemo.png")
    assert img.shape[:2] == (320, 1000)
    assert img[..., :3].std() > 0.05


def test_audio_only_input_gets_a_plot_but_no_overlay(tmp_path, tiny_ckpt):
    wav = shared_file("emodb", "03a01Fa.wav")
    code, stdout, err = run("annotate", wav, "-o", tmp_path, "--weights", tiny_ckpt, "--plot",
                            "--overlay")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["03a01Fa.avemo.csv",
                                                          "03a01Fa.avemo.png",
                                                          "avemo-manifest.jsonl"]


def test_heat_warp_matches_the_alignment_warp():
    """The heat map is warped by Pillow (pixel centres at +0.5), the face by align.warp
    (centres at integers): the same matrix must put values in the same place."""
    from avemo_cli.align import warp
    from avemo_cli.overlay import _warp_coloured

    levels = np.pad(np.random.default_rng(0).integers(0, 256, (12, 12), dtype=np.uint8), 1)
    th, s = 0.3, 11.0
    m = np.array([[s * np.cos(th), -s * np.sin(th), 20.0], [s * np.sin(th), s * np.cos(th), 5.0]])
    grey = bytes(np.repeat(np.arange(256, dtype=np.uint8), 4))  # the level in R, G, B and A
    ours = _warp_coloured(levels, m, (200, 220), grey)
    assert ours.shape == (200, 220, 4)
    assert (ours[..., 0] == ours[..., 3]).all()
    ref = warp(levels, m, (200, 220)).astype(int)
    inside = warp(np.ones(levels.shape, np.float32), m, (200, 220)) > 0.999
    assert inside.sum() > 10000
    assert np.abs(ours[..., 0].astype(int) - ref)[inside].max() <= 1
