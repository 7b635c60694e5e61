"""avemo train / eval / extract end to end on a small corpus cut from ../shared/data/videos,
labelled with what its audio carries (smoothed, standardised loudness: testing/corpus.py)."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from avemo_cli.checkpoint import load_checkpoint, read_metadata
from avemo_cli.testing.corpus import build_corpus

from conftest import cli as run, shared_file




def prediction_and_gold_folders(where):
    """Empty ``pred`` and ``gold`` folders for `avemo eval --pred --gold`."""
    pred, gold = where / "pred", where / "gold"
    pred.mkdir()
    gold.mkdir()
    return pred, gold


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    shared_file("videos", "WDA_KatieHill_000.mp4")
    return build_corpus(tmp_path_factory.mktemp("avec"), "avec2017")


@pytest.fixture(scope="module")
def generic_corpus(corpus, tmp_path_factory):
    """The same videos and labels in the generic layout (folders by partition)."""

    from avemo_cli.datasets import read_avec_labels

    root = tmp_path_factory.mktemp("generic")
    for video in sorted((corpus / "video").iterdir()):
        part = {"Train": "train", "Devel": "devel"}[video.stem.split("_")[0]]
        (root / part).mkdir(exist_ok=True)
        (root / part / video.name).symlink_to(video)
        lab = read_avec_labels(corpus / "labels" / f"{video.stem}.csv")
        lab[["time", "valence", "arousal"]].to_csv(root / part / f"{video.stem}.csv",
                                                   index=False)
    return root


def test_audio_training_kill_resume_and_eval(corpus, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "run"
    args = [sys.executable, "-m", "avemo_cli", "train", "--data", str(corpus), "--modality",
            "audio", "--epochs", "25", "--lr", "1e-3", "--out", str(out), "--cache", str(cache),
            "--jobs", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, first_err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, first_err
    assert "analysed, 0 analysed by an earlier run" in first_err  # the first run did all
    state = torch.load(out / "last.pt", weights_only=True)
    done = state["epoch"]
    assert 1 <= done < 25

    code, stdout, err = run("train", "--data", corpus, "--modality", "audio", "--epochs", 25,
                            "--lr", "1e-3", "--out", out, "--cache", cache, "--resume")
    assert code == 0, err
    assert f"resuming from epoch {done}" in err
    assert "0 files analysed, 6 analysed by an earlier run" in err
    assert "0 files analysed, 3 analysed by an earlier run" in err
    epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    assert epochs == list(range(1, 26))
    best = load_checkpoint(stdout.strip())
    assert best.config.modality == "audio"
    assert "valence" in best.postprocess
    assert best.provenance["devel_sequences"] == ["Devel_01", "Devel_02", "Devel_03"]

    code, stdout, err = run("eval", "--data", corpus, "--weights", out / "best.safetensors",
                            "--cache", cache, "--json", "--metric", "all")
    assert code == 0, err
    scores = json.loads(stdout)
    assert scores["valence"]["ccc"] >= 0.5, scores
    assert set(scores["valence"]) == {"ccc", "cc", "rmse"}


def test_generic_layout_and_pred_gold_equivalence(generic_corpus, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "run"
    code, stdout, err = run("train", "--data", generic_corpus, "--layout", "generic",
                            "--modality", "audio", "--epochs", 12, "--lr", "1e-3", "--out", out,
                            "--cache", cache, "-q")
    assert code == 0, err
    weights = stdout.strip()
    preds = tmp_path / "pred"
    code, stdout, err = run("eval", "--data", generic_corpus, "--layout", "generic",
                            "--weights", weights, "--cache", cache, "--json", "--metric", "all",
                            "--save-pred", preds)
    assert code == 0, err
    via_model = json.loads(stdout)
    assert via_model["valence"]["ccc"] >= 0.5, via_model
    assert sorted(p.name for p in preds.iterdir()) == [
        "Devel_01.avemo.csv", "Devel_02.avemo.csv", "Devel_03.avemo.csv"]
    code, stdout, err = run("eval", "--pred", preds, "--gold", generic_corpus / "devel",
                            "--json", "--metric", "all")
    assert code == 0, err
    assert json.loads(stdout) == via_model
    # the raw model output scores differently from the post-processed one
    code, stdout, _ = run("eval", "--data", generic_corpus, "--layout", "generic", "--weights",
                          weights, "--cache", cache, "--json", "--no-postprocess")
    assert json.loads(stdout)["valence"]["ccc"] != via_model["valence"]["ccc"]
    # per-sequence scores and the mean aggregation
    code, stdout, _ = run("eval", "--pred", preds, "--gold", generic_corpus / "devel", "--json",
                          "--per-sequence", "--aggregate", "mean")
    res = json.loads(stdout)
    per = [res["sequences"][n]["valence"]["ccc"] for n in ("Devel_01", "Devel_02", "Devel_03")]
    assert np.isclose(res["valence"]["ccc"], np.mean(per))
    # eval --plot: a predicted-vs-gold figure per sequence and a CCC summary
    figs = tmp_path / "figs"
    code, _, err = run("eval", "--pred", preds, "--gold", generic_corpus / "devel", "--plot",
                       figs)
    assert code == 0
    assert "4 figures" in err
    assert sorted(p.name for p in figs.iterdir()) == [
        "Devel_01.png", "Devel_02.png", "Devel_03.png", "ccc_per_sequence.png"]


def test_av_training_runs_end_to_end(corpus, tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"encoder_channels": [4, 8, 8], "convlstm_hidden": 8,
                                  "c3d_channels": [4, 8, 8, 8], "fc_hidden": 16,
                                  "visual_z": 8, "audio_hidden": 8}))
    cache = tmp_path / "cache"
    code, _, err = run("extract", "--data", corpus, "--modality", "av", "--cache", cache)
    assert code == 0
    assert "9 files analysed, 0 analysed by an earlier run" in err
    code, stdout, err = run("train", "--data", corpus, "--modality", "av", "--epochs", 2,
                            "--config", config, "--clip-stride", 4, "--out", tmp_path / "run",
                            "--cache", cache)
    assert code == 0, err
    assert "0 files analysed, 6 analysed by an earlier run" in err  # extract filled it
    ck = load_checkpoint(stdout.strip())
    assert ck.config.modality == "av"
    assert ck.config.c3d_channels == [4, 8, 8, 8]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert rows[0]["clips_per_second"] > 0
    assert all(np.isfinite(r["devel_ccc"]["valence"]) for r in rows)
    # the trained checkpoint annotates a video directly
    out = tmp_path / "ann"
    code, _, err = run("annotate", corpus / "video" / "Devel_01.mp4", "-o", out, "--weights",
                       stdout.strip())
    assert code == 0, err
    assert (out / "Devel_01.avemo.csv").exists()


def test_user_errors_are_one_line(corpus, tmp_path, tiny_audio_ckpt):
    code, _, err = run("train", "--data", tmp_path, "--out", tmp_path / "r")
    assert code == 2
    assert "not an avec2017 layout" in err
    assert "Traceback" not in err
    code, _, err = run("eval", "--pred", tmp_path, "--gold", corpus / "labels")
    assert code == 2
    assert "no *.avemo.csv prediction files" in err
    code, _, err = run("eval", "--data", corpus, "--weights", tmp_path / "x.safetensors")
    assert code == 2
    assert "no such checkpoint file" in err
    code, _, err = run("eval", "--pred", tmp_path)
    assert code == 2
    assert "either --pred DIR --gold DIR" in err
    code, _, err = run("eval", "--data", corpus, "--weights", tiny_audio_ckpt, "--partition",
                       "test")
    assert code == 2, err
    assert "no labelled test sequences to evaluate" in err, err


def test_damaged_cache_entry_is_recomputed(corpus, tmp_path):
    from avemo_cli.cache import FeatureCache, extract_all, file_digest
    from avemo_cli.features import FeatureSettings

    video = corpus / "video" / "Devel_01.mp4"
    cache = FeatureCache(tmp_path)
    settings = FeatureSettings(visual=False)
    assert extract_all([video], settings, cache)["miss"] == 1
    entry = cache._path(file_digest(video), "audio", settings)
    good = cache.load(video, settings).audio.values
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])  # half-written
    assert cache.load(video, settings) is None
    assert extract_all([video], settings, cache)["miss"] == 1
    assert np.array_equal(cache.load(video, settings).audio.values, good)
    other = FeatureSettings(audio_window=4.0, visual=False)  # another setting: another entry
    assert cache.load(video, other) is None


def test_categorical_layout_trains_speaker_independently(tmp_path):
    """EmoDB anger / sadness / happiness as <partition>/<emotion>/ folders, split by speaker:
    an audio model must separate high-arousal anger from low-arousal sadness on unseen voices.
    Trained with recording-level normalisation, which the checkpoint carries to eval."""
    from avemo_cli.recipes.corpora import emodb

    root = tmp_path / "emodb"
    for clip in emodb(shared_file("emodb")):
        if clip.emotion not in ("anger", "sadness", "happiness"):
            continue
        part = "devel" if clip.speaker in ("emodb:13", "emodb:14") else "train"
        (root / part / clip.emotion).mkdir(parents=True, exist_ok=True)
        (root / part / clip.emotion / clip.path.name).symlink_to(clip.path)
    cache, out = tmp_path / "cache", tmp_path / "run"
    code, stdout, err = run("train", "--data", root, "--layout", "categorical", "--modality",
                            "audio", "--epochs", 8, "--lr", "1e-3", "--out", out, "--cache",
                            cache, "--jobs", 2, "--audio-norm", "recording", "-q")
    assert code == 0, err
    assert read_metadata(stdout.strip())["model"]["audio_norm"] == "recording"
    code, stdout, err = run("eval", "--data", root, "--layout", "categorical", "--weights",
                            stdout.strip(), "--cache", cache, "--json", "--no-postprocess")
    assert code == 0, err
    assert json.loads(stdout)["arousal"]["ccc"] > 0.5


def test_out_of_range_or_missing_labels_are_refused(corpus, tmp_path):
    """A label file on another scale (1e9) or with gaps is a one-line refusal naming it, before
    any feature extraction or training."""
    import shutil

    for bad_value, cause in (("1e9", "outside [-1, 1]"), ("nan", "missing or non-finite")):
        root = tmp_path / f"avec_{bad_value}"
        shutil.copytree(corpus, root, symlinks=True)
        lab = root / "labels" / "Train_02.csv"
        rows = lab.read_text().splitlines()
        name, t, a, v, liking = rows[5].split(";")
        rows[5] = ";".join([name, t, a, bad_value, liking])
        lab.write_text("\n".join(rows) + "\n")
        code, stdout, err = run("train", "--data", root, "--modality", "audio", "--epochs", 1,
                                "--out", tmp_path / "run", "--cache", tmp_path / "cache", "-q")
        assert code == 2, err
        assert not stdout, err
        assert str(lab) in err
        assert "valence" in err
        assert cause in err
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / "cache").exists()


def test_diverging_training_stops_without_a_checkpoint(corpus, tmp_path):
    code, stdout, err = run("train", "--data", corpus, "--modality", "audio", "--epochs", 2,
                            "--lr", "1e30", "--out", tmp_path / "run", "--cache",
                            tmp_path / "cache", "-q")
    assert code == 2
    assert "the training loss is" in err
    assert "lower --lr" in err
    assert not (tmp_path / "run" / "best.safetensors").exists()
    # a damaged training state is one line naming it, not a traceback (same features: cached)
    state = tmp_path / "run" / "last.pt"
    state.parent.mkdir(exist_ok=True)
    state.write_bytes(b"PK\x03\x04 truncated by a full disk")
    code, stdout, err = run("train", "--data", corpus, "--modality", "audio", "--epochs", 2,
                            "-o", tmp_path / "run", "--cache", tmp_path / "cache", "-q",
                            "--resume")
    assert code == 2
    assert not stdout
    assert "Traceback" not in err
    assert err.startswith(f"avemo: error: {state}: damaged training state")
    assert len(err.strip().splitlines()) == 1


def test_a_checkpoint_holding_nan_is_a_one_line_error(corpus, tmp_path, tiny_audio_ckpt):
    from safetensors.torch import load_file, save_file

    state = load_file(str(tiny_audio_ckpt))
    state["audio_head.weight"][0, 0] = float("nan")
    bad = tmp_path / "nan.safetensors"
    save_file(state, str(bad), metadata={"avemo": json.dumps(read_metadata(tiny_audio_ckpt))})
    with pytest.raises(Exception, match="NaN or infinite values"):
        load_checkpoint(bad)
    wav = shared_file("emodb", "03a01Fa.wav")
    code, stdout, err = run("annotate", wav, "-o", tmp_path / "out", "--weights", bad)
    assert code == 2
    assert str(bad) in err
    assert "NaN" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    code, stdout, err = run("eval", "--data", corpus, "--weights", bad, "--cache",
                            tmp_path / "cache")
    assert code == 2
    assert str(bad) in err
    assert "Traceback" not in err


def test_eval_says_what_it_scored(tmp_path):
    pred, gold = prediction_and_gold_folders(tmp_path)
    t = np.round(np.arange(81) * 0.1, 1)
    g = pd.DataFrame({"time": t, "valence": np.sin(t), "arousal": np.cos(t)})
    g.to_csv(gold / "a.csv", index=False)
    g.assign(valence=0.3).to_csv(gold / "flat.csv", index=False)
    g.to_csv(gold / "c.csv", index=False)  # no prediction
    full = pd.DataFrame({"frame": range(81), "time": t, "valence": np.sin(t) * 0.9,
                         "arousal": np.cos(t), "face": 1, "voice": 1})
    full.head(10).to_csv(pred / "a.avemo.csv", index=False)  # 10 rows against 8 s of gold
    full.to_csv(pred / "flat.avemo.csv", index=False)
    full.to_csv(pred / "b.avemo.csv", index=False)  # no gold
    code, stdout, err = run("eval", "--pred", pred, "--gold", gold)
    assert code == 2
    assert "a: the prediction covers less than 50% of the gold (lowest 19%)" in err
    code, stdout, err = run("eval", "--pred", pred, "--gold", gold, "--min-coverage", "0.1",
                            "--json", "--per-sequence")
    assert code == 0, err
    assert "a: the prediction covers 19% of the gold (15 of 81 label rows)" in err
    assert "1 prediction(s) without gold, not scored: b" in err
    assert "1 gold file(s) without a prediction, not scored: c" in err
    assert "flat: valence gold is constant (0.3)" in err
    out = json.loads(stdout)
    assert out["coverage"] == {"a": pytest.approx(15 / 81), "flat": 1.0}
    for content, cause in (("", "empty prediction file"),
                           ("frame,valence\n0,0.1\n", "no time column"),
                           ("frame,time,valence\n0,zero,0.1\n", "non-numeric values in the time")):
        (pred / "flat.avemo.csv").write_text(content)
        code, stdout, err = run("eval", "--pred", pred, "--gold", gold)
        assert code == 2, err
        assert "flat.avemo.csv" in err, err
        assert cause in err, err
        assert len(err.strip().splitlines()) == 1


def test_eval_scores_predictions_in_time_order_and_refuses_conflicting_times(tmp_path):
    """A prediction CSV whose rows are shuffled scores as the ordered file; two rows at one
    time with different values are an error naming the file and the time."""
    pred, gold = prediction_and_gold_folders(tmp_path)
    t = np.round(np.arange(200) * 0.1, 1)
    g = pd.DataFrame({"time": t, "valence": np.sin(t), "arousal": np.cos(t / 2)})
    g.to_csv(gold / "a.csv", index=False)
    p = g.assign(valence=g.valence * 0.8 + 0.05, arousal=g.arousal * 0.9)
    p.to_csv(pred / "a.avemo.csv", index=False)
    code, ordered, err = run("eval", "--pred", pred, "--gold", gold, "--json", "--metric", "all")
    assert code == 0, err
    assert json.loads(ordered)["valence"]["ccc"] > 0.9
    for shuffled in (p.sample(frac=1.0, random_state=1), p.iloc[::-1]):
        shuffled.to_csv(pred / "a.avemo.csv", index=False)
        code, stdout, err = run("eval", "--pred", pred, "--gold", gold, "--json", "--metric",
                                "all")
        assert code == 0, err
        assert json.loads(stdout) == json.loads(ordered), err
    twice = pd.concat([p, p.iloc[[50]]])  # the same row twice: kept once
    twice.to_csv(pred / "a.avemo.csv", index=False)
    code, stdout, err = run("eval", "--pred", pred, "--gold", gold, "--json", "--metric", "all")
    assert code == 0, err
    assert json.loads(stdout) == json.loads(ordered), err
    clash = pd.concat([p, p.iloc[[50, 120]].assign(valence=0.0)])
    clash.to_csv(pred / "a.avemo.csv", index=False)
    code, stdout, err = run("eval", "--pred", pred, "--gold", gold)
    assert code == 2, err
    assert "a.avemo.csv" in err, err
    assert "at time 5 with different values" in err, err
    assert len(err.strip().splitlines()) == 1


def test_eval_says_why_a_score_is_missing_and_writes_valid_json(tmp_path):
    """An empty valence column is named as not scored; a score that cannot be computed (CC of
    a constant prediction) is n/a in the table and null in --json (valid JSON, no NaN); an
    infinite value is a one-line error; no numpy warnings leak."""
    pred, gold = prediction_and_gold_folders(tmp_path)
    t = np.round(np.arange(100) * 0.1, 1)
    g = pd.DataFrame({"time": t, "valence": np.sin(t), "arousal": np.cos(t)})
    g.to_csv(gold / "a.csv", index=False)
    g.to_csv(gold / "b.csv", index=False)
    g.assign(valence=np.nan).to_csv(pred / "a.avemo.csv", index=False)
    g.assign(valence=np.nan, arousal=0.2).to_csv(pred / "b.avemo.csv", index=False)
    code, stdout, err = run("eval", "--pred", pred, "--gold", gold, "--json", "--metric", "all",
                            "--per-sequence")
    assert code == 0, err
    out = json.loads(stdout)
    assert "NaN" not in stdout
    assert "Infinity" not in stdout
    assert "valence" not in out
    assert out["sequences"]["b"]["arousal"]["cc"] is None
    assert "valence: not scored: the predictions have only empty values for it" in err
    assert "RuntimeWarning" not in err
    assert "Traceback" not in err
    code, stdout, err = run("eval", "--pred", pred, "--gold", gold, "--metric", "all",
                            "--per-sequence")
    assert code == 0
    assert "n/a" in stdout
    assert "nan" not in stdout.lower().replace("n/a", "")
    g.assign(valence=np.inf).to_csv(pred / "a.avemo.csv", index=False)
    code, stdout, err = run("eval", "--pred", pred, "--gold", gold)
    assert code == 2
    assert "a.avemo.csv: infinite values in the valence column" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("held", ["metrics.jsonl", "best.safetensors", "last.pt"])
def test_a_folder_holding_a_run_is_not_replaced_without_being_asked(corpus, tmp_path, held):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / held).write_text("an earlier run's\n")
    code, stdout, err = run("train", "--data", corpus, "--modality", "audio", "--epochs", 1,
                            "-o", run_dir, "--cache", tmp_path / "cache", "-q")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{run_dir}: already holds a run ({held})" in err
    assert "--resume" in err
    assert "--overwrite" in err
    assert (run_dir / held).read_text() == "an earlier run's\n"
    assert not (tmp_path / "cache").exists(), "refused before any work"


@pytest.mark.parametrize("config", [{"audio_hidden": -1}, {"audio_hidden": "wide"},
                                    {"audio_layers": 100000}, {"encoder_channels": 3},
                                    {"dropout": [0.5]}])
def test_train_config_values_out_of_range_are_one_line(corpus, tmp_path, config):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    code, stdout, err = run("train", "--data", corpus, "-o", tmp_path / "run", "--config",
                            path, "--cache", tmp_path / "cache", "-q")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "invalid model settings" in err
    assert next(iter(config)) in err


def test_a_pickled_training_state_is_refused_without_torchs_advice(corpus, tmp_path):
    import argparse

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"model": {}, "optim": {}, "epoch": 1, "odd": argparse.Namespace(x=1)},
               run_dir / "last.pt")
    code, _, err = run("train", "--data", corpus, "--modality", "audio", "--epochs", 2, "-o",
                       run_dir, "--cache", tmp_path / "cache", "-q", "--resume")
    assert code == 2, err
    assert "holds pickled objects, which avemo never loads" in err
    assert "weights_only" not in err


@pytest.mark.parametrize("scale", [100.0, 1e308], ids=["a 0-100 rating", "1e308"])
def test_gold_on_another_scale_is_refused_as_train_refuses_it(tmp_path, scale):
    pred, gold = prediction_and_gold_folders(tmp_path)
    t = np.round(np.arange(40) * 0.1, 1)
    g = pd.DataFrame({"time": t, "valence": (np.sin(t) + 1) / 2 * scale,
                      "arousal": np.cos(t) * 0.5})
    g.to_csv(gold / "a.csv", index=False)
    pd.DataFrame({"frame": range(40), "time": t, "valence": np.sin(t), "arousal": np.cos(t),
                  "face": 1, "voice": 1}).to_csv(pred / "a.avemo.csv", index=False)
    code, stdout, err = run("eval", "--pred", pred, "--gold", gold)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{gold / 'a.csv'}: valence value" in err
    assert "is outside [-1, 1]" in err
    assert "RuntimeWarning" not in err


@pytest.mark.parametrize("start, end, says", [
    (0.0, 3600.0, "its labels run to 3600.0 s but"),
    (100.0, 200.0, "its labels begin at 100.0 s, after")])
def test_labels_that_do_not_fit_their_media_are_said(tmp_path, start, end, says):
    """Devel labels running 3600 s on a few seconds of media, or lying wholly past its end,
    were taken silently (0 clips)."""
    from avemo_cli.cache import FeatureCache
    from avemo_cli.clips import prepare_sequences
    from avemo_cli.datasets import Sequence
    from avemo_cli.features import FeatureSettings
    from avemo_cli.model import ModelConfig

    from conftest import make_synthetic_video

    video = make_synthetic_video(tmp_path / "s.mp4", seconds=3.0)
    t = np.linspace(start, end, 50)
    labels = pd.DataFrame({"time": t, "valence": np.zeros(50), "arousal": np.zeros(50)})
    seq = Sequence("s", "devel", video, tmp_path / "s.csv", labels)
    cfg = ModelConfig(modality="audio")
    said: list[str] = []
    prepare_sequences([seq], FeatureSettings.for_model(cfg), cfg, FeatureCache(tmp_path / "c"),
                      1, said.append)
    warnings = [line for line in said if line.startswith("avemo: warning:")]
    assert len(warnings) == 1, said
    assert says in warnings[0]
    assert str(tmp_path / "s.csv") in warnings[0]
