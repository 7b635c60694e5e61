"""Work begun in extraction processes (extractors.py), e.g. before the model loads: the same
features as the normal path."""
import numpy as np

from avemo_cli import demux, extractors
from avemo_cli.faces import shared_backend
from avemo_cli.features import FeatureSettings, extract
from avemo_cli.testing.tiny_checkpoint import tiny_config

from conftest import make_synthetic_video, shared_file


def test_begun_early_gives_the_features_of_the_normal_path(tiny_ckpt):
    video = shared_file("videos", "WDA_KatieHill_000.mp4")
    assert extractors.model_settings(tiny_ckpt)["modality"] == "av"
    settings = FeatureSettings.for_model(tiny_config("av"))
    info = demux.probe(video)
    pool = extractors.begin_file(video, tiny_ckpt)
    assert pool is not None and pool.tracking_faces()
    assert pool.info(video) == info  # probed there, not again
    begun, timings = pool.claim(info, settings, True, True, 1)
    assert timings["faces"] > 0 and timings["audio"] > 0  # measured in the other process
    assert pool.claim(info, settings, True, True, 1) is None  # taken once
    pool.stop()
    assert pool not in extractors.live()
    normal = extract(info, settings, True, True, lambda: shared_backend("dlib"))
    assert np.array_equal(begun.audio.values, normal.audio.values)
    assert np.array_equal(begun.audio.loudness, normal.audio.loudness)
    assert np.array_equal(begun.track.crops, normal.track.crops)
    assert begun.face.mean() > 0.9


def test_nothing_is_claimed_for_other_settings_or_unreadable_files(tiny_ckpt, tmp_path):
    video = make_synthetic_video(tmp_path / "tone.mp4", seconds=2.0)
    info = demux.probe(video)
    pool = extractors.begin_file(video, tiny_ckpt)
    assert pool is not None
    other = FeatureSettings(max_side=240)
    assert pool.claim(info, other, True, True, 1) is None  # another analysis size
    assert pool.claim(info, FeatureSettings(), True, True, 2) is None  # another face count
    pool.stop()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    assert extractors.begin_file(bad, tiny_ckpt) is None
    assert extractors.begin_file(video, tmp_path / "missing.safetensors") is None


def test_in_process_commands_do_not_begin_early(tiny_ckpt, tmp_path, monkeypatch):
    """Only the console entry begins early (a spawned process re-imports the main module: a
    user's script calling the CLI in-process could run again); click's runner is such a caller.
    (The console entry's own case, an error after beginning, is in test_cli.)"""
    from click.testing import CliRunner

    from avemo_cli.cli import main

    begun = []
    monkeypatch.setattr(extractors, "begin_file", lambda *a, **k: begun.append(a))
    video = make_synthetic_video(tmp_path / "tone.mp4", seconds=2.0)
    r = CliRunner().invoke(main, ["annotate", str(video), "--weights", str(tiny_ckpt), "-q",
                                  "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.stderr
    assert begun == [] and extractors.live() == []
