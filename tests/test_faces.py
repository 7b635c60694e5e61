import numpy as np
import pytest

from avemo_cli import align, demux, faces, tracking

from conftest import ffmpeg, make_synthetic_video, shared_file


@pytest.fixture(scope="module")
def dlib_backend():
    return faces.make_backend("dlib")


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    ang, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = scale * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    m = align.similarity(src, src @ rot.T + shift)
    assert np.allclose(m[:, :2], rot)
    assert np.allclose(m[:, 2], shift)


def test_warp_resamples_through_the_matrix():
    img = np.arange(100 * 100, dtype=np.float64).reshape(100, 100) % 251
    img = img.astype(np.uint8)
    m = np.array([[1.0, 0, -20], [0, 1.0, -30]])  # crop origin at (20, 30)
    crop = align.warp(img, m, 16)
    assert np.array_equal(crop, img[30:46, 20:36])
    assert align.warp(img, np.array([[1.0, 0, 200], [0, 1.0, 0]]), 8).max() == 0  # outside


def test_tracking_and_alignment_on_a_real_talking_face(dlib_backend):
    info = demux.probe(shared_file("videos", "WDA_KatieHill_000.mp4"))
    track = tracking.track_faces(demux.iter_frames(info, 4), dlib_backend, crop_size=64,
                              detect_every=8)
    n = len(track.found)
    assert n == 32
    assert track.found.mean() >= 0.95
    assert track.detections <= n // 8 + 2  # tracked between detections, not detected each step
    assert track.crops.shape == (n, 64, 64)
    # the aligned crop puts the eyes on the template (level: no roll), the nose tip near it
    for k in np.flatnonzero(track.found):
        pts = align.anchor_points(track.landmarks[k].astype(np.float64))
        mapped = pts @ track.matrices[k][:, :2].T + track.matrices[k][:, 2]
        assert np.abs(mapped[:2] - align.TEMPLATE[:2] * 64).max() < 1.5
        assert np.abs(mapped[2] - align.TEMPLATE[2] * 64).max() < 8.0
    # and the crop is a face: dlib finds 68 landmarks whose eyes sit near the template again
    up = np.kron(track.crops[0], np.ones((4, 4), np.uint8))  # 256 px for the detector
    boxes = dlib_backend.detect(up)
    assert boxes, "no face found in the aligned crop"
    lm = dlib_backend.landmarks(up, boxes[0]) / 4
    assert np.abs(align.anchor_points(lm) - align.TEMPLATE * 64).max() < 6.0


def test_no_face_in_a_test_pattern(tmp_path, dlib_backend):
    path = make_synthetic_video(tmp_path / "pattern.mp4", seconds=2, audio=False)
    info = demux.probe(path)
    track = tracking.track_faces(demux.iter_frames(info, 4), dlib_backend, crop_size=64)
    assert not track.found.any()
    assert track.detections == len(track.found) == 8
    assert np.isnan(track.boxes).all()
    assert (track.crops == 0).all()


def test_unknown_backend_and_missing_fan(monkeypatch):
    import sys

    from avemo_cli.errors import AvemoError

    with pytest.raises(AvemoError, match="unknown face backend"):
        faces.make_backend("opencv")
    monkeypatch.setitem(sys.modules, "face_alignment", None)  # as if not installed
    with pytest.raises(AvemoError, match=r"--faces fan needs the face-alignment package: "
                                         r"pip install 'avemo\[fan\]'"):
        faces.make_backend("fan")


def test_small_videos_are_scaled_up_so_their_faces_are_found(tmp_path, dlib_backend):
    """A 192x128 webcam video: its ~50 px face is below dlib's 80 px minimum unless the
    analysis frames are scaled up to the fixed analysis size."""
    from conftest import ffmpeg

    small = tmp_path / "small.mp4"
    ffmpeg("-i", str(shared_file("videos", "subj01_timepoint01.mp4")), "-vf", "scale=192:128",
           "-an", "-c:v", "libx264", str(small))
    info = demux.probe(small)
    frames = list(demux.iter_frames(info, 4))
    assert frames[0].shape == (320, 480)
    track = tracking.track_faces(iter(frames), dlib_backend, crop_size=64)
    assert track.found.mean() >= 0.9


@pytest.mark.parametrize("how", ["wrong rotation tag", "sideways camera"])
def test_a_face_in_another_orientation_is_reported(tmp_path, how, tiny_ckpt, tiny_video_ckpt):
    """No face as displayed, but one when the picture is turned: one notice (a warning) saying
    so, instead of a silent fall-back to the voice; a one-line error for a video-only model."""
    import warnings

    from avemo_cli.errors import NoFaceError
    from avemo_cli.pipeline import Annotator, OrientationWarning
    from avemo_cli.settings import AnnotatorSettings

    src = shared_file("videos", "WDA_KatieHill_000.mp4")
    upright = tmp_path / "upright.mp4"
    ffmpeg("-t", "3", "-i", str(src), "-c:v", "libx264", "-c:a", "aac", str(upright))
    turned = tmp_path / "turned.mp4"
    if how == "wrong rotation tag":
        ffmpeg("-display_rotation", "90", "-i", str(upright), "-c", "copy", str(turned))
    else:
        ffmpeg("-i", str(upright), "-vf", "transpose=clock", "-c:v", "libx264", "-c:a", "aac",
               str(turned))
    ann = Annotator(tiny_ckpt, AnnotatorSettings(device="cpu"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        good = ann.annotate(upright)
        bad = ann.annotate(turned)
    assert good.source == "av"
    assert not good.notices
    assert bad.source == "audio"
    assert len(bad.notices) == 1
    fix = "90 degrees clockwise" if how == "wrong rotation tag" else \
        "90 degrees counter-clockwise"  # (the turn the detector sees best, not the first)
    assert f"a face appears when the picture is rotated {fix} (" in bad.notices[0]
    assert [str(w.message) for w in caught if w.category is OrientationWarning] == bad.notices
    with pytest.raises(NoFaceError, match="no face found in the video .*rotated 90 degrees"):
        Annotator(tiny_video_ckpt, AnnotatorSettings(device="cpu")).annotate(turned)


def test_audio_beside_video_gives_what_one_after_the_other_gives():
    """The audio path runs in a thread beside the video path: the same features either way."""
    from avemo_cli.features import FeatureSettings, extract

    info = demux.probe(shared_file("videos", "subj01_timepoint01.mp4"))
    backend = faces.make_backend("dlib")
    side_by_side = extract(info, FeatureSettings(), lambda: backend)
    in_turn = extract(info, FeatureSettings(), lambda: backend, concurrent=False)
    assert np.array_equal(side_by_side.audio.values, in_turn.audio.values)
    assert np.array_equal(side_by_side.audio.valid, in_turn.audio.valid)
    assert np.array_equal(side_by_side.track.crops, in_turn.track.crops)
    assert side_by_side.face.mean() > 0.5


def test_decoding_without_deblocking_keeps_the_predictions():
    """Frames at least twice the analysis size skip H.264's deblocking filter (a sixth of the
    decoding): faces, crops and the shipped model's predictions stay within tolerance."""
    from avemo_cli.checkpoint import load_checkpoint, resolve_weights
    from avemo_cli.predict import predict_steps

    info = demux.probe(shared_file("videos", "subj02_timepoint01.mp4"))  # 1080x720 webcam
    fast = list(demux.iter_frames(info, 4.0))
    exact = list(demux.iter_frames(info, 4.0, deblock=True))
    assert len(fast) == len(exact)
    assert any(not np.array_equal(a, b) for a, b in zip(fast, exact))  # it did skip the filter
    assert np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(fast, exact)]) < 1.5
    backend = faces.make_backend("dlib")
    model = load_checkpoint(resolve_weights(None)).model.eval()
    tracks = [tracking.track_faces(iter(f), backend, model.cfg.input_size) for f in (fast, exact)]
    assert np.array_equal(tracks[0].found, tracks[1].found)
    assert tracks[0].found.mean() > 0.5
    values = [predict_steps(model, crops=t.crops).values for t in tracks]
    assert np.abs(values[0] - values[1]).max() < 0.03


@pytest.mark.parametrize("tag", [True, False])
def test_an_upside_down_face_is_a_one_line_error(tmp_path, tiny_ckpt, tag):
    """The detector fires on upside-down faces too (weakly): annotating one would read another
    expression. A 180-degree rotation tag on an upright recording, or a picture turned over,
    is refused with a one-line error, not annotated."""
    from click.testing import CliRunner

    from avemo_cli.cli import main

    src = shared_file("videos", "WDA_KatieHill_000.mp4")
    over = tmp_path / "over.mp4"
    if tag:
        ffmpeg("-display_rotation", "180", "-i", str(src), "-c", "copy", str(over))
    else:
        ffmpeg("-i", str(src), "-vf", "hflip,vflip", "-c:v", "libx264", "-c:a", "aac",
               str(over))
    r = CliRunner().invoke(main, ["annotate", str(over), "-o", str(tmp_path / "out"),
                                  "--weights", str(tiny_ckpt), "-q"])
    assert r.exit_code == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "the face is upside down as the video is displayed" in r.stderr
    assert ("rotation tag says 180 degrees" in r.stderr) == tag
    assert not (tmp_path / "out" / "over.avemo.csv").exists()


@pytest.mark.parametrize("size", [160, 260, 320])
def test_faces_of_ordinary_size_in_a_wide_frame_are_found(tmp_path, tiny_ckpt, size):
    """A studio clip scaled to ``size`` px (a face of about 0.55 of it: 90-180 px high) and
    padded into a 1920x1080 frame, as a meeting room or a lecture hall looks: at the 480 px
    analysis size the face is 40-80 px, under dlib's detector; the wide search finds it."""
    from conftest import cli

    wide = tmp_path / f"wide{size}.mp4"
    ffmpeg("-i", str(shared_file("videos", "WDA_KatieHill_000.mp4")), "-t", "8", "-vf",
           f"scale={size}:{size},pad=1920:1080:{1400 - size}:{700 - size // 2}", "-c:v",
           "libx264", "-preset", "ultrafast", "-c:a", "aac", str(wide))
    code, _, err = cli("annotate", wide, "-o", tmp_path / "out", "--weights", tiny_ckpt, "-q")
    assert code == 0, err
    t = np.genfromtxt(tmp_path / "out" / f"wide{size}.avemo.csv", delimiter=",", names=True)
    assert t["face"].mean() >= 0.9
    assert np.nanmedian(t["box_h"]) == pytest.approx(0.53 * size, rel=0.2)
    assert np.nanmin(t["box_x"]) > 1400 - size - 40, "the box is where the face is"
    assert "warning" not in err


def test_a_picture_without_a_face_says_so_once(tmp_path, tiny_ckpt):
    video = make_synthetic_video(tmp_path / "slides.mp4", seconds=3.0, size="1280x720")
    from conftest import cli

    code, _, err = cli("annotate", video, "-o", tmp_path / "out", "--weights", tiny_ckpt, "-q")
    assert code == 0, err
    said = [line for line in err.splitlines() if "no face found" in line]
    assert len(said) == 1, err
    assert "faces under about 80 px high in its 1280x720 frame are not found" in said[0]
    assert "from the voice alone" in said[0]
