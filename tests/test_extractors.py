"""Work begun in extraction processes (extractors.py), e.g. before the model loads: the same
features as the normal path, claimed once and only for the request they were begun for."""
from pathlib import Path

import numpy as np

from avemo_cli import demux, extractors, workers
from avemo_cli.checkpoint import open_checkpoint
from avemo_cli.faces import shared_backend
from avemo_cli.features import FeatureSettings, extract
from avemo_cli.settings import AnnotatorSettings

from conftest import make_synthetic_video, shared_file


def test_begun_early_gives_the_features_of_the_normal_path(tiny_ckpt):
    video = shared_file("videos", "WDA_KatieHill_000.mp4")
    request = AnnotatorSettings().features(open_checkpoint(tiny_ckpt).config)
    assert request.audio, "an av model's request asks for the audio"
    assert request.visual, "an av model's request asks for the faces"
    info = demux.probe(video)
    pool = extractors.begin_file(video, request)
    assert pool is not None
    assert pool.tracking_faces()
    begun = pool.claim(video, request)
    assert begun is not None
    assert begun.features.info == info, "the probe travels with the features"
    assert begun.timings["faces"] > 0, "the face stage was timed in the other process"
    assert begun.timings["audio"] > 0, "the audio stage was timed in the other process"
    assert pool.claim(video, request) is None, "features are taken once"
    pool.stop()
    assert pool.pool not in workers.live()
    normal = extract(info, request, lambda: shared_backend("dlib"))
    assert np.array_equal(begun.features.audio.values, normal.audio.values)
    assert np.array_equal(begun.features.audio.loudness, normal.audio.loudness)
    assert np.array_equal(begun.features.track.crops, normal.track.crops)
    assert begun.features.face.mean() > 0.9


def test_nothing_is_claimed_for_another_request_or_an_unreadable_file(tmp_path):
    video = make_synthetic_video(tmp_path / "tone.mp4", seconds=2.0)
    request = FeatureSettings()
    pool = extractors.begin_file(video, request)
    assert pool is not None
    assert pool.claim(video, FeatureSettings(max_side=240)) is None, "another analysis size"
    assert pool.claim(video, FeatureSettings(max_faces=2)) is None, "another face count"
    assert pool.claim(video, FeatureSettings(visual=False)) is None, "another modality"
    assert pool.claim(tmp_path / "other.mp4", request) is None, "another file"
    pool.stop()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    assert extractors.begin_file(bad, request) is None


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
    assert begun == []
    assert workers.live() == []


def test_two_links_to_one_file_are_two_inputs(tmp_path):
    """Work begun is keyed by the path as given: two links to one video each have their own
    extraction, claimed once each (a folder of links, e.g. a dataset's takes)."""
    video = make_synthetic_video(tmp_path / "tone.mp4", seconds=2.0)
    links = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    for link in links:
        link.symlink_to(video)
    request = FeatureSettings(visual=False)
    pool = extractors.begin_files(links, request, 1)
    assert pool.begun(links[0], request) is not pool.begun(links[1], request)
    got = [pool.claim(link, request) for link in links]
    pool.stop()
    assert [Path(g.features.info.path) for g in got] == links
