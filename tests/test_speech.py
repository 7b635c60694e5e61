"""Recording-level audio normalisation, weighted fusion, the speech corpora and the cross-corpus
machinery of the default model's recipe (avemo_cli.recipes.speech)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avemo_cli.recipes import fitting, recordings, scoring, speech
from avemo_cli.audio import AudioFeatures
from avemo_cli.checkpoint import load_checkpoint, save_checkpoint
from avemo_cli.datasets import Sequence
from avemo_cli.demux import MediaInfo
from avemo_cli.model import ModelConfig
from avemo_cli.features import Features, FeatureSettings, extract
from avemo_cli.pipeline import Annotator
from avemo_cli.settings import AnnotatorSettings
from avemo_cli.predict import clip_steps, predict_steps
from avemo_cli.testing.tiny_checkpoint import tiny_model
from avemo_cli.clips import (Prepared, adapt_audio, batch_outputs, clip_batch, evaluate_items,
                             window_batch)

from conftest import ffmpeg, shared_file

WEIGHTS = {"valence": [0.3, 0.7], "arousal": [0.8, 0.2]}


def _adapting_model(modality="av", prior=2.0, **kw):
    model = tiny_model(modality, seed=2, audio_norm="recording", audio_norm_prior=prior, **kw)
    rng = np.random.default_rng(1)
    model.audio.mean.copy_(torch.from_numpy(rng.normal(0, 5, 88).astype(np.float32)))
    model.audio.std.copy_(torch.from_numpy(rng.uniform(2, 20, 88).astype(np.float32)))
    return model


def test_recording_norm_removes_a_long_recordings_level_but_keeps_a_short_clips():
    model = _adapting_model("audio", prior=30.0)  # 120 prior steps at 4 steps/s
    rng = np.random.default_rng(0)
    mean = model.audio.mean.numpy()
    std = model.audio.std.numpy()
    long = (mean + std * rng.normal(0, 1, (4000, 88))).astype(np.float32)
    shift = (5 * std).astype(np.float32)  # a microphone/speaker offset of 5 sd in every feature
    z = lambda x: (x - mean) / std  # noqa: E731
    adapted = model.audio.adapt(long + shift)
    # 4,000 steps (1,000 s) against a 120-step prior: the offset is nearly gone
    assert np.abs(z(adapted).mean(0)).max() < 0.2
    assert np.abs(z(adapted) - z(model.audio.adapt(long))).max() < 0.2
    # an 8-step clip (2 s) keeps most (8 of 128 steps are its own: ~94%) of its own level
    clip = long[:8] + shift
    kept = z(model.audio.adapt(clip)).mean(0) / z(clip).mean(0)
    assert kept.min() > 0.85
    # steps outside the audio do not count towards the recording's statistics
    valid = np.ones(len(clip), bool)
    valid[-3:] = False
    garbage = clip.copy()
    garbage[-3:] = 1e6
    assert np.allclose(model.audio.adapt(garbage, valid)[:5], model.audio.adapt(clip[:5]),
                       atol=1e-3 * std.max())
    # global normalisation leaves features alone
    assert np.array_equal(tiny_model("audio").audio.adapt(clip), clip)


def test_weighted_fusion_is_the_per_target_weighted_mean_of_the_heads():
    model = tiny_model("av", fusion="weighted", fusion_weights=WEIGHTS)
    assert model.fusion is None
    za, zv = torch.randn(5, 8), torch.randn(5, 8)
    a, v = model.audio_head(za), model.visual_head(zv)
    expected = torch.stack([0.3 * a[:, 0] + 0.7 * v[:, 0], 0.8 * a[:, 1] + 0.2 * v[:, 1]], 1)
    assert torch.allclose(model.heads(za, zv), expected, atol=1e-6)
    assert torch.allclose(model.heads(za, None), a)  # one head missing: the other alone
    for bad in ({"valence": [1, 0]}, {"valence": [-1, 2], "arousal": [1, 1]},
                {"valence": [0, 0], "arousal": [1, 1]}):
        with pytest.raises(ValueError, match="weighted fusion"):
            ModelConfig(fusion="weighted", fusion_weights=bad)
    with pytest.raises(ValueError, match="av model"):
        ModelConfig(modality="audio", fusion="weighted", fusion_weights=WEIGHTS)
    with pytest.raises(ValueError, match="audio_norm"):
        ModelConfig(audio_norm="speaker")


def test_norm_and_fusion_round_trip_and_train_eval_see_what_annotate_sees(tmp_path):
    """The settings survive a checkpoint, and train's clips (adapt_audio + window_batch or
    clip_batch) give exactly the per-step predictions of eval/annotate's path
    (predict_features -> predict_steps)."""
    model = _adapting_model(fusion="weighted", fusion_weights=WEIGHTS)
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    ck = load_checkpoint(path)
    assert ck.config.audio_norm == "recording"
    assert ck.config.audio_norm_prior == 2.0
    assert ck.config.fusion_weights == WEIGHTS
    assert torch.equal(ck.model.audio.mean, model.audio.mean)
    rng = np.random.default_rng(3)
    k = 30
    values = (model.audio.mean.numpy() + 3 * model.audio.std.numpy()
              + model.audio.std.numpy() * rng.normal(0, 1, (k, 88))).astype(np.float32)
    valid = np.arange(k) < 26
    crops = rng.integers(0, 256, (k, 64, 64), dtype=np.uint8)
    direct = predict_steps(ck.model, values, crops, audio_valid=valid)
    idx = clip_steps(np.arange(k), 16)
    with torch.no_grad():  # the per-clip forward on clips cut from the adapted recording
        ref = ck.model(audio=torch.from_numpy(ck.model.audio.adapt(values, valid)[idx]),
                       video=ck.model.visual.prepare(torch.from_numpy(crops[idx])))
    assert np.allclose(direct.values, ref["pred"].numpy(), atol=1e-5)
    assert np.allclose(direct.audio_values, ref["audio_pred"].numpy(), atol=1e-5)
    assert np.allclose(direct.visual_values, ref["visual_pred"].numpy(), atol=1e-5)
    raw = predict_steps(tiny_model("av", seed=2, fusion="weighted", fusion_weights=WEIGHTS),
                        values, crops)
    assert not np.allclose(direct.values, raw.values, atol=1e-3)

    info = MediaInfo(tmp_path / "x.wav", k / 4, False, True)
    feats = Features(info, k, None, audio=AudioFeatures(values, valid))
    seq = Sequence("x", "train", info.path, None, None)
    item = Prepared(seq, feats, np.zeros((k, 2), np.float32))
    audio_model = _adapting_model("audio")
    adapt_audio(audio_model, [item])
    rows = np.stack([np.zeros(k, int), np.arange(k)], 1)
    (evaluated,), _ = evaluate_items(audio_model, [item], "cpu")
    for make in (window_batch, clip_batch):
        with torch.no_grad():
            trained_on = batch_outputs(audio_model, make([item], rows, audio_model.cfg,
                                                         "cpu"))["pred"].numpy()
        assert np.allclose(trained_on, evaluated, atol=1e-5)
    assert np.allclose(evaluated, predict_steps(audio_model, values,
                                                audio_valid=valid).values, atol=1e-6)


def test_annotate_applies_the_checkpoints_recording_norm(tmp_path):
    wav = tmp_path / "tone.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=220:duration=3", "-f", "lavfi", "-i",
           "sine=frequency=660:duration=3", "-filter_complex", "[0][1]concat=n=2:v=0:a=1",
           "-ar", "16000", str(wav))
    model = _adapting_model("audio", prior=1.0)
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    result = Annotator(path, AnnotatorSettings(device="cpu")).annotate(wav)
    feats = extract(result.info, FeatureSettings.for_model(model.cfg), lambda: None)
    a = feats.audio
    idx = torch.from_numpy(clip_steps(np.arange(feats.n_steps), 16))
    with torch.no_grad():
        adapted = model(audio=torch.from_numpy(model.audio.adapt(a.values, a.heard))[idx])
        raw = model(audio=torch.from_numpy(a.values)[idx])
    assert np.allclose(result.steps.values, adapted["pred"].numpy(), atol=1e-5)
    assert not np.allclose(result.steps.values, raw["pred"].numpy(), atol=1e-3)
    assert np.allclose(result.steps.audio_values, result.steps.values)


def test_speech_corpora_readers():
    from avemo_cli.recipes import corpora as C

    rav = C.ravdess(shared_file("ravdess"))
    emo = C.emovo(shared_file("emovo"))
    assert len(rav) == 1076
    assert len({c.speaker for c in rav}) == 18
    assert len(emo) == 392
    assert ({c.speaker for c in emo} == {f"emovo:{s}" for s in
                                                            ("f1", "f2", "m1", "m2")})
    calm = next(c for c in rav if c.path.stem.startswith("03-01-02-"))
    assert (calm.emotion, calm.valence, calm.arousal) == ("calm", 0.3, -0.5)
    joy = next(c for c in emo if c.path.stem.startswith("gio-"))
    assert joy.emotion == "happiness"
    assert joy.corpus == "emovo"
    assert {c.emotion for c in rav} == {"neutral", "calm", "happiness", "sadness", "anger",
                                        "fear", "disgust", "surprise"}


def test_augment_changes_level_speed_and_channel():
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    x = (0.1 * np.sin(2 * np.pi * 200 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    outs = [recordings.augment(x, np.random.default_rng(s)) for s in range(8)]
    lengths = [len(y) / len(x) for y in outs]
    assert all(1 / 1.13 < r < 1 / 0.87 for r in lengths)
    assert np.ptp(lengths) > 0.02
    levels = [20 * np.log10(np.sqrt(np.mean(y ** 2)) / np.sqrt(np.mean(x ** 2))) for y in outs]
    assert np.ptp(levels) > 6
    assert all(np.isfinite(y).all() for y in outs)
    # the channel: on white noise, a high-pass takes the lowest band away every time, and
    # the low-pass (most of the time) a varying share of the highest
    noise = (0.05 * rng.standard_normal(32000)).astype(np.float32)

    def share(y, lo, hi):
        power, freq = np.abs(np.fft.rfft(y)) ** 2, np.fft.rfftfreq(len(y), 1 / 16000)
        return power[(freq >= lo) & (freq < hi)].sum() / power.sum()

    heard = [recordings.augment(noise, np.random.default_rng(s)) for s in range(8)]
    assert all(share(y, 0, 50) < share(noise, 0, 50) / 10 for y in heard)
    highs = [share(y, 4000, 8000) for y in heard]
    assert max(highs) < share(noise, 4000, 8000)
    assert np.ptp(highs) > 0.2


def _clips(n_per=3):
    from avemo_cli.recipes.corpora import Clip

    out = []
    for spk in ("a", "b"):
        for emo in ("happiness", "anger", "sadness"):
            for i in range(n_per):
                out.append(Clip(Path(f"{spk}{emo}{i}.wav"), f"x:{spk}", emo, 0, 0, "x"))
    return out


def test_joined_recordings_have_one_emotion_per_block_and_every_clip_once():
    clips = _clips(n_per=12)
    durations = [3.0] * len(clips)  # 36 s of each emotion per speaker
    blocks = recordings.plan_joined(clips, durations, "x:a", seed=0, max_block=20.0)
    used = [i for b in blocks for i in b]
    assert sorted(used) == [i for i, c in enumerate(clips) if c.speaker == "x:a"]
    for b in blocks:
        assert len({clips[i].emotion for i in b}) == 1
        assert 10.0 <= sum(durations[i] for i in b) <= 20.0
    assert [clips[b[0]].emotion for b in blocks] != sorted(clips[b[0]].emotion for b in blocks) \
        or len(blocks) < 3  # shuffled (seeded)


def test_scores_of_units():
    def unit(spk, emo, v):
        return scoring.Unit(spk, "x", emo, np.array([v, 0.0]), np.array([0.0, 0.0]))

    us = [unit("s1", "happiness", 0.5), unit("s1", "anger", 0.1), unit("s1", "sadness", -0.2),
          unit("s2", "happiness", 0.0), unit("s2", "anger", 0.2), unit("s2", "fear", -0.5)]
    assert scoring.happy_above_negatives(us) == {"s1": True, "s2": False}
    s = scoring.summary(us)
    assert s["happy_above_negatives"] == 0.5
    assert s["speakers"] == 2
    assert s["n"] == 6
    assert s["valence_std"] == pytest.approx(np.std([0.5, 0.1, -0.2, 0.0, 0.2, -0.5]), abs=1e-4)


def test_cross_corpus_pipeline_on_real_speech(tmp_path):
    """A few real EmoDB and EMOVO clips through decode, augmentation, joined recordings, a short
    fit and held-out scoring, end to end."""
    from avemo_cli.recipes import corpora as C

    clips = [c for c in C.emodb(shared_file("emodb")) if c.speaker in ("emodb:03", "emodb:08")
             and c.emotion in ("happiness", "sadness")][:12]
    clips += [c for c in C.emovo(shared_file("emovo")) if c.speaker == "emovo:f1"
              and c.emotion in ("happiness", "sadness")][:4]
    cfg = ModelConfig(modality="audio", audio_hidden=8, audio_attention_hidden=8,
                      audio_norm="recording")
    audio = recordings.decode_all(clips, tmp_path, jobs=1)
    assert len(audio) == len(clips)
    assert all(a.dtype == np.float32 for a in audio)
    recs = recordings.build_recordings(clips, audio, cfg, tmp_path, copies=1, jobs=1,
                                   log=lambda m: None)
    speakers = {c.speaker for c in clips}
    assert len(recs) == 2 * (len(clips) + len(speakers))
    joined = [r for r in recs if "#joined#0" in r.name]
    assert all(len(r.clips) == sum(c.speaker == r.speaker for c in clips) for r in joined)
    assert all(r.block[0] == 0 and np.all(np.diff(r.block) >= 0) for r in joined)
    res = speech.held_out(recs, {"emodb:03"}, cfg, updates=20, svr=True, log=lambda m: None)
    assert {r.speaker for r in res["test"]} == {"emodb:03"}
    assert all(r.name.endswith("#0") for r in res["test"])
    rep = scoring.report(res["test"], res["network"])
    assert rep["clip_last"]["all"]["n"] == rep["clip"]["all"]["n"]
    assert rep["clip"]["all"]["n"] == sum(c.speaker == "emodb:03" for c in clips)
    assert rep["recording"]["all"]["n"] == 2  # one block per emotion
    assert len(res["svr"]) == len(res["test"])
    assert res["svr"][0].shape[1] == 2


def test_a_clips_speech_summary_leaves_its_silence_out():
    """A clip's value over its speech steps only: the silent steps before the sentence (the
    model's output there says nothing about the voice) do not dilute it."""
    k = 12
    rec = recordings.Recording("c", "x:a", "x", np.zeros((k, 88), np.float32), np.ones(k, bool),
                           np.zeros(k, np.int64), ["happiness"], np.arange(k) / 4,
                           speech=np.arange(k) >= 4)
    pred = np.zeros((k, 2), np.float32)
    pred[4:] = [0.8, 0.4]  # the speech; the four silent steps say 0
    clips, spoken, lasts, blocks = scoring.units([rec], [pred])
    assert clips[0].pred.tolist() == pytest.approx([0.8 * 8 / 12, 0.4 * 8 / 12])
    assert spoken[0].pred.tolist() == pytest.approx([0.8, 0.4])
    assert lasts[0].pred.tolist() == pytest.approx([0.8, 0.4])
    assert not blocks
    loud = recordings.step_loudness(np.r_[np.zeros(8000), 0.1 * np.ones(8000)].astype(np.float32),
                                4, 4.0)
    assert loud[0] < -90
    assert abs(loud[2] + 20) < 0.1


def test_silence_is_neither_trained_on_nor_part_of_a_recordings_normalisation():
    """The recipe trains only on steps with a voice, and estimates a recording's level from
    them: silence before a clip changes neither (it did both)."""
    k = 12
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1, (k, 88)).astype(np.float32)
    values[:4] -= 40  # silent steps: openSMILE's functionals of near-silence, far off
    rec = recordings.Recording("c", "x:a", "x", values, np.ones(k, bool), np.zeros(k, np.int64),
                           ["happiness"], np.arange(k) / 4, speech=np.arange(k) >= 4)
    rows, weights = fitting.training_rows([rec], skip=2.0)
    assert rows[:, 1].tolist() == list(range(4, k))
    assert weights.sum() == pytest.approx(1)
    model = fitting.fit([rec], ModelConfig(**speech.AUDIO_CONFIG), updates=1)
    assert torch.allclose(model.audio.mean, torch.from_numpy(values[4:].mean(0).astype(
        np.float32)), atol=1e-4)  # the training statistics are the speech's
    adapted = model.audio.adapt(values, rec.heard)
    alone = model.audio.adapt(values[4:], None)
    assert np.allclose(adapted[4:], alone, atol=1e-4)  # as if the silence were not there
    assert not np.allclose(model.audio.adapt(values, rec.valid)[4:], alone, atol=1e-2)


def test_annotation_normalises_the_voice_from_its_speech_only(tmp_path):
    """Through annotation's own path: a sentence after two seconds of digital silence is
    normalised from its speech steps (``AudioFeatures.heard``), not from the silence."""
    sentence = shared_file("emodb", "03a01Fa.wav")
    clip = tmp_path / "quiet_then_speech.wav"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-i", str(sentence),
           "-filter_complex", "[0:a]atrim=0:2[s];[s][1:a]concat=n=2:v=0:a=1", "-ar", "16000",
           str(clip))
    model = _adapting_model("audio", prior=2.0)
    annotator = Annotator(save_checkpoint(tmp_path / "m.safetensors", model),
                          AnnotatorSettings(device="cpu"))
    ann = annotator.annotate(clip)
    a = extract(ann.info, FeatureSettings.for_model(model.cfg), lambda: None).audio
    assert a is not None
    assert a.speech is not None
    assert not a.heard[:4].any()
    assert a.heard[10:14].all()
    heard = predict_steps(model, a.values, audio_valid=a.heard).values
    everything = predict_steps(model, a.values, audio_valid=a.valid).values
    assert np.allclose(ann.steps.audio_values, heard, atol=1e-5)
    assert not np.allclose(ann.steps.audio_values, everything, atol=1e-3)
