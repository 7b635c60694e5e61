import numpy as np
import pandas as pd
import pytest

from avemo_cli import audio, demux

from conftest import shared_file


def test_windows_end_at_each_step_and_handle_the_start():
    w = audio.step_windows(40, rate=4, duration=9.0, window=6.0)
    assert np.allclose(w[0], [0.0, 1.0])  # start of file: the minimum window, reaching forward
    assert np.allclose(w[8], [0.0, 2.0])  # fewer than 6 s so far: what there is
    assert np.allclose(w[30], [1.5, 7.5])  # steady state: the 6 s ending at the step
    assert np.allclose(w[39], [3.0, 9.0])  # past the end of the audio: clipped to the file
    short = audio.step_windows(8, rate=4, duration=0.5, window=6.0)
    assert np.all(short[:, 0] == 0)
    assert np.all(short[:, 1] == 0.5)  # shorter than the minimum


def test_egemaps_one_pass_on_real_speech():
    info = demux.probe(shared_file("emodb", "03a01Fa.wav"))
    x = demux.read_audio(info)
    feats = audio.egemaps(x, 16000, n_steps=8, rate=4, window=6.0)
    assert feats.values.shape == (8, audio.N_FEATURES)
    assert np.isfinite(feats.values).all()
    assert feats.valid.all()
    # steps 0-4 share the 1 s minimum window [0, 1]; later windows grow, so features change
    change = np.abs(np.diff(feats.values, axis=0)).sum(axis=1)
    assert np.all(change[:4] == 0)
    assert np.all(change[4:] > 0)


def test_features_follow_the_signal_within_a_file():
    """Loudness functionals are high in windows over speech and low over silence."""
    speech = demux.read_audio(demux.probe(shared_file("emodb", "03a01Fa.wav")))
    x = np.concatenate([speech, speech, np.zeros(16000 * 4, np.float32)])
    feats = audio.egemaps(x, 16000, n_steps=32, rate=4, window=2.0)
    loud = feats.values[:, 10]  # loudness_sma3_amean in eGeMAPSv02's order
    assert loud[14] > 5 * max(loud[28], 1e-3)  # window 1.5-3.5 s (speech) vs 5-7 s (silence)


def test_ctrl_c_during_opensmile_is_not_swallowed():
    """openSMILE's ctypes callback would swallow a KeyboardInterrupt; it must surface."""
    import os
    import signal
    import threading

    import pytest

    x = np.tile(demux.read_audio(demux.probe(shared_file("emodb", "03a01Fa.wav"))), 60)
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        audio.egemaps(x, 16000, n_steps=480, rate=4, window=6.0)
    timer.join()


def _word(tmp_path):
    """A real word of 0.6 s: EMOVO m1's 'disgust' line, 1.45-2.05 s (a word between pauses)."""
    import soundfile as sf

    samples, rate = sf.read(shared_file("emovo", "m1", "dis-m1-n5.flac"), dtype="float32")
    path = tmp_path / "word.wav"
    sf.write(path, samples[int(1.45 * rate):int(2.05 * rate)], rate)
    return path


def test_a_word_under_a_second_is_described_and_a_blip_is_not(tmp_path, recwarn):
    """openSMILE describes no window that ends at its input's last sample, so the one window of
    a file under a second (all of it) used to be empty; it is given silence after it."""
    import soundfile as sf

    word, rate = sf.read(_word(tmp_path), dtype="float32")
    feats = audio.egemaps(word, rate, n_steps=3, rate=4, window=6.0)
    assert feats.valid.all()  # steps 0, 0.25, 0.5 s: inside the word
    assert np.isfinite(feats.values).all()
    assert np.abs(feats.values).sum() > 0
    assert (feats.values == feats.values[0]).all()  # every step's window: the whole word
    t = np.arange(480) / 16000  # 30 ms: less than one of eGeMAPS' 60 ms frames
    blip = audio.egemaps((0.1 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000,
                         n_steps=1, rate=4, window=6.0)
    assert not blip.valid.any()
    assert not [w for w in recwarn if "Segment too short" in str(w.message)]


def test_a_word_under_a_second_gives_a_csv_whose_confidence_says_how_little(tmp_path,
                                                                           tiny_audio_ckpt):
    from conftest import cli as run

    word = _word(tmp_path)
    code, stdout, err = run("annotate", word, "-o", tmp_path, "--weights", tiny_audio_ckpt,
                            "--format", "csv,segments", "-q")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "word.avemo.csv")
    assert len(table) == 3  # 0.6 s at 4 steps per second
    assert table.voice.all()
    assert table.valence.notna().all()
    assert table.confidence.max() == pytest.approx(0.6, abs=0.02)  # 0.6 s of the 1 s it needs
    (utterance,) = pd.read_csv(tmp_path / "word.avemo.segments.csv").itertuples()
    assert utterance.start < 0.15
    assert utterance.end > 0.45


def test_steps_without_voice_use_the_visual_head_alone(tmp_path):
    from avemo_cli.tracking import FaceTrack
    from avemo_cli.features import Features
    from avemo_cli.inference import predict_features
    from avemo_cli.predict import Predictor
    from avemo_cli.testing.tiny_checkpoint import tiny_model

    k = 24
    rng = np.random.default_rng(0)
    valid = np.arange(k) < 15  # e.g. the audio track ends before the video
    track = FaceTrack(rng.integers(0, 256, (k, 64, 64), dtype=np.uint8), np.ones(k, bool),
                      np.zeros((k, 4)), np.zeros((k, 68, 2), np.float32), np.zeros((k, 2, 3)))
    info = demux.MediaInfo(tmp_path / "x.mp4", k / 4, True, True, 64, 64, 4.0, 0, k)
    feats = Features(info, k, info.frame_times(),
                     audio.AudioFeatures(rng.normal(0, 10, (k, 88)).astype(np.float32), valid),
                     track)
    steps, values, source = predict_features(Predictor(tiny_model("av", seed=4)), feats)
    assert source == "av"
    assert np.allclose(values[valid], steps.values[valid])
    assert np.allclose(values[~valid], steps.visual_values[~valid])
    assert not np.allclose(steps.values[~valid], steps.visual_values[~valid])


def test_non_finite_predictions_are_an_error_not_blank_columns(tmp_path):
    import pytest
    import torch

    from avemo_cli.errors import CheckpointError
    from avemo_cli.features import Features
    from avemo_cli.inference import predict_features
    from avemo_cli.predict import Predictor
    from avemo_cli.testing.tiny_checkpoint import tiny_model

    k = 12
    info = demux.MediaInfo(tmp_path / "x.wav", k / 4, False, True)
    feats = Features(info, k, None, audio.AudioFeatures(np.zeros((k, 88), np.float32),
                                                        np.ones(k, bool)))
    model = tiny_model("audio")
    predict_features(Predictor(model), feats)  # finite: fine
    with torch.no_grad():
        model.audio_head.bias[0] = float("inf")  # e.g. diverged after loading
    with pytest.raises(CheckpointError, match="x.wav: the model's predictions are not finite"):
        predict_features(Predictor(model), feats)


def test_streamed_passes_equal_one_pass_over_the_whole_audio():
    """Memory is bounded by running openSMILE in passes over the audio as it streams in; with
    HISTORY seconds before each pass, every step's features are those of one whole-file pass."""
    import glob

    files = sorted(glob.glob(str(shared_file("emodb") / "*.wav")))[:60]
    x = np.concatenate([demux.read_audio(demux.probe(f)) for f in files])  # 2 min of speech
    n = int(len(x) / 16000 * 4)
    whole = audio.egemaps_stream([x], 16000, n, rate=4, pass_seconds=1e9)
    blocks = [x[i:i + 7 * 16000] for i in range(0, len(x), 7 * 16000)]
    passes = audio.egemaps_stream(blocks, 16000, n, rate=4, pass_seconds=30)  # four passes
    scale = whole.values.std(axis=0) + 1e-6
    assert (np.abs(whole.values - passes.values) / scale).max() < 1e-3
    assert (whole.valid == passes.valid).all()
    assert whole.valid.all()


def test_the_c_library_driver_matches_the_opensmile_package(tmp_path):
    """``audio`` calls openSMILE's C library itself (not the slow-to-import Python package):
    the functionals over a list of windows equal the package's for the same configuration."""
    import opensmile

    x = demux.read_audio(demux.probe(shared_file("emodb", "03a01Fa.wav")))
    wins = audio.step_windows(np.arange(2, 8), 4.0, len(x) / 16000, 1.5)  # inside the file
    conf = tmp_path / "frames.conf.inc"
    conf.write_text("frameMode = list\nframeList = "
                    + ",".join(f"{s:.3f}s-{e:.3f}s" for s, e in wins) + "\n")
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals,
                            options={"frameModeFunctionalsConf": str(conf)})
    theirs = smile.process_signal(x, 16000).to_numpy()
    extract = audio._Extractor()
    try:
        ours = extract(x, 16000, wins)
    finally:
        extract.close()
    assert ours.shape == theirs.shape == (6, audio.N_FEATURES)
    assert np.array_equal(ours, theirs.astype(np.float32))


def test_audio_past_full_scale_is_clipped_not_wrapped():
    """Decoded AAC overshoots [-1, 1]; openSMILE takes 16-bit samples, so such samples are
    clipped (a wrap-around to the opposite sign would add clicks to the features)."""
    x = 1.5 * demux.read_audio(demux.probe(shared_file("emodb", "03a01Fa.wav")))
    assert np.abs(x).max() > 1.2
    loud = audio.egemaps(x, 16000, n_steps=8, rate=4, window=6.0)
    clipped = audio.egemaps(np.clip(x, -1, 1), 16000, n_steps=8, rate=4, window=6.0)
    assert np.array_equal(loud.values, clipped.values)


def test_audio_that_starts_after_the_video_is_placed_on_the_video_clock(tmp_path, tiny_ckpt):
    """A track whose audio starts 3 s into the video (an offset stream, as `-itsoffset`
    makes): the analysis puts it at 3 s, steps before it have no voice."""
    import pandas as pd
    from click.testing import CliRunner

    from avemo_cli.cli import main

    from conftest import ffmpeg, make_synthetic_video

    picture = make_synthetic_video(tmp_path / "picture.mp4", seconds=8.0, audio=False)
    tone = make_synthetic_video(tmp_path / "tone.mp4", seconds=5.0)
    late = tmp_path / "late.mp4"
    ffmpeg("-i", str(picture), "-itsoffset", "3", "-i", str(tone), "-map", "0:v", "-map", "1:a",
           "-c", "copy", str(late))
    info = demux.probe(late)
    assert 2.9 <= info.audio_start <= 3.05, info.audio_start
    r = CliRunner().invoke(main, ["annotate", str(late), "-o", str(tmp_path / "out"),
                                  "--weights", str(tiny_ckpt), "-q"])
    assert r.exit_code == 0, r.stderr
    t = pd.read_csv(tmp_path / "out" / "late.avemo.csv")
    assert (t.voice[t.time < info.audio_start - 0.2] == 0).all()
    assert (t.voice[(t.time > info.audio_start + 0.2) & (t.time < 7.5)] == 1).all()


def test_silence_is_not_voice(tmp_path, tiny_audio_ckpt):
    """Two seconds of digital silence before a spoken sentence: `voice` is 0 there and 1 in
    the speech (it was 1 on every step: openSMILE describes silence as well as speech)."""
    import pandas as pd
    from click.testing import CliRunner

    from avemo_cli.cli import main

    from conftest import ffmpeg, shared_file

    speech = shared_file("emodb", "03a01Fa.wav")  # 2.0 s of speech
    clip = tmp_path / "quiet_then_speech.wav"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-i", str(speech),
           "-filter_complex", "[0:a]atrim=0:2[s];[s][1:a]concat=n=2:v=0:a=1", "-ar", "16000",
           str(clip))
    r = CliRunner().invoke(main, ["annotate", str(clip), "-o", str(tmp_path / "out"),
                                  "--weights", str(tiny_audio_ckpt), "-q"])
    assert r.exit_code == 0, r.stderr
    t = pd.read_csv(tmp_path / "out" / "quiet_then_speech.avemo.csv")
    assert (t.voice[t.time < 1.4] == 0).all(), t.voice.tolist()
    assert t.voice[(t.time > 2.3) & (t.time < 3.7)].mean() > 0.9
    info = demux.probe(clip)
    feats_speech = audio.speech_steps(np.array([-100.0] * 8 + [-20.0] * 8))
    assert feats_speech.tolist() == [False] * 7 + [True] * 9
    assert info.duration > 3.9
    ends = audio.speech_steps(np.array([-20.0] * 8 + [-100.0] * 8))  # 0.5 s after the end
    assert ends.tolist() == [True] * 10 + [False] * 6


@pytest.mark.parametrize("sound", ["anullsrc=r=16000:cl=mono", "sine=frequency=100:r=16000"],
                         ids=["digital silence", "a steady hum"])
def test_a_muted_or_humming_track_is_not_a_voice(tmp_path, tiny_ckpt, sound):
    """A talking face whose audio track holds only digital silence (a muted recorder) or a
    steady hum: no step has a voice, nobody speaks, and the values are the face's alone,
    exactly those of the same video without an audio track."""
    from conftest import cli, ffmpeg

    src = shared_file("videos", "WDA_KatieHill_000.mp4")
    muted, silent = tmp_path / "muted.mp4", tmp_path / "silent.mp4"
    ffmpeg("-i", str(src), "-f", "lavfi", "-i", sound, "-map", "0:v", "-map", "1:a", "-c:v",
           "copy", "-c:a", "aac", "-shortest", str(muted))
    ffmpeg("-i", str(src), "-map", "0:v", "-c:v", "copy", str(silent))
    for video in (muted, silent):
        code, _, err = cli("annotate", video, "-o", tmp_path / "out", "--weights", tiny_ckpt,
                           "-q")
        assert code == 0, err
    t = pd.read_csv(tmp_path / "out" / "muted.avemo.csv")
    alone = pd.read_csv(tmp_path / "out" / "silent.avemo.csv")
    assert (t.voice == 0).all(), t.voice.mean()
    assert (t.speaking == 0).all()
    assert t.face.mean() > 0.9
    assert np.array_equal(t.valence.to_numpy(), alone.valence.to_numpy())
    assert np.array_equal(t.arousal.to_numpy(), alone.arousal.to_numpy())


def test_digital_silence_and_steady_sounds_are_not_speech():
    quiet = np.full(40, -100.0, np.float32)  # digital silence: -100 dB on every step
    assert not audio.speech_steps(quiet).any()
    hum = np.full(40, -30.0, np.float32) + np.random.default_rng(0).normal(0, 0.2, 40)
    assert not audio.speech_steps(hum.astype(np.float32)).any()
    talk = hum + 4 * np.sin(np.arange(40))  # a voice's rise and fall, no pause
    assert audio.speech_steps(talk.astype(np.float32)).all()
    paused = np.where(np.arange(40) < 20, talk, -100.0).astype(np.float32)
    assert audio.speech_steps(paused)[:20].all()
    assert not audio.speech_steps(paused)[25:].any()


def test_audio_much_shorter_than_the_video_is_annotated(tmp_path, tiny_ckpt):
    """A 70 s video with 3 s of audio (openSMILE refused it: "code 8"): every frame has a row,
    the voice is heard in the first 3 s only, and the steps after the audio describe its end."""
    from conftest import cli, ffmpeg

    video = tmp_path / "short_audio.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=70", "-f", "lavfi",
           "-i", "sine=frequency=440:duration=3,tremolo=f=3:d=0.8", "-c:v", "libx264",
           "-preset", "ultrafast", "-c:a", "aac", str(video))
    code, _, err = cli("annotate", video, "-o", tmp_path / "out", "--weights", tiny_ckpt, "-q")
    assert code == 0, err
    t = pd.read_csv(tmp_path / "out" / "short_audio.avemo.csv")
    assert len(t) == 1750
    assert t.voice[t.time < 2.5].mean() > 0.9
    assert (t.voice[t.time > 3.5] == 0).all()
    assert np.isfinite(t.valence).all()
