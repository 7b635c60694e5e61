import numpy as np
import pandas as pd
import pytest

from avemo_cli.inference import fill_gaps
from avemo_cli.postprocess import apply_chain, apply_postprocess, median_filter, shift_forward
from avemo_cli.outputs import write_csv
from avemo_cli.table import COLUMNS, as_frame, frame_columns, merge_faces, read_csv


def frame_table(*args, **kwargs) -> pd.DataFrame:
    return as_frame(frame_columns(*args, **kwargs))


def test_median_filter_removes_spikes_and_keeps_steps():
    x = np.array([0, 0, 9, 0, 0, 1, 1, 1, 1], np.float32)
    assert np.array_equal(median_filter(x, 3), [0, 0, 0, 0, 0, 1, 1, 1, 1])
    assert np.array_equal(median_filter(x, 1), x)


def test_chain_order_filter_center_scale_shift():
    x = np.array([1, 5, 1, 1, 1], np.float32)
    y = apply_chain(x, {"median_window": 3, "bias": 1.0, "scale": 0.5, "shift": 1})
    assert np.allclose(y, [1.0, 1.0, 1.0, 1.0, 1.0])  # (median 1 + 1) * 0.5 = 1, shifted
    z = apply_chain(np.array([0, 1, 2, 3], np.float32), {"bias": -1.0, "scale": 2.0})
    assert np.allclose(z, [-2, 0, 2, 4])  # centre first, then scale
    assert np.allclose(shift_forward(np.array([1, 2, 3.0]), 2), [1, 1, 1])
    both = apply_postprocess(np.ones((3, 2), np.float32), ["valence", "arousal"],
                             {"arousal": {"scale": 0.5}})
    assert np.allclose(both[:, 0], 1) and np.allclose(both[:, 1], 0.5)


def test_face_gaps_are_interpolated_from_neighbouring_steps():
    v = np.array([[0.0], [9.0], [9.0], [3.0], [9.0]], np.float32)
    ok = np.array([True, False, False, True, False])
    assert np.allclose(fill_gaps(v, ok)[:, 0], [0, 1, 2, 3, 3])


def test_frame_table_interpolates_to_frames_and_takes_nearest_flags():
    values = np.array([[0.0, 0.5], [1.0, 0.5], [2.0, 0.5]], np.float32)  # 3 steps at 4 Hz
    face = np.array([True, False, True])
    voice = np.array([True, True, False])
    times = np.arange(13) / 25.0  # 0 .. 0.48 s at 25 fps
    t = frame_table(values, ["valence", "arousal"], 4.0, face, voice, times)
    assert list(t.columns) == COLUMNS and len(t) == 13
    assert t.valence.max() == 1.0  # clipped to [-1, 1]
    assert np.isclose(t.valence[3], 0.48)  # 0.12 s between steps 0 and 1
    assert list(t.face[:5]) == [1, 1, 1, 1, 0] and t.voice.iloc[-1] == 0
    audio_only = frame_table(values[:, :1], ["valence"], 4.0, ~face, voice)
    assert len(audio_only) == 3 and audio_only.arousal.isna().all()


def test_write_is_atomic_and_formatted(tmp_path):
    t = frame_table(np.zeros((2, 1), np.float32), ["valence"], 4.0, np.ones(2, bool),
                    np.ones(2, bool))
    out = write_csv(t, tmp_path / "sub" / "a.avemo.csv")
    assert out.read_text().splitlines()[:2] == [
        "frame,time,face_id,valence,arousal,face,voice,speaking,confidence,box_x,box_y,box_w,"
        "box_h", "0,0.000,0,0.0000,,1,1,1,1.0,,,,"]
    assert [p.name for p in out.parent.iterdir()] == ["a.avemo.csv"]
    back = read_csv(out)
    assert isinstance(back, pd.DataFrame) and back.valence.tolist() == [0.0, 0.0]


def test_csv_is_what_pandas_wrote(tmp_path):
    """The CSV is written without pandas (not imported by annotate): byte for byte what the
    pandas writer made of the same two-face table (NaN boxes and targets, rounded numbers)."""
    rng = np.random.default_rng(0)
    k, times = 40, np.arange(250) / 25.0
    parts = []
    for face_id in (0, 1):
        face = rng.random(k) > 0.3
        boxes = rng.uniform(0, 640, (k, 4))
        boxes[:, 2:] += boxes[:, :2]
        boxes[~face] = np.nan
        parts.append(frame_columns(rng.uniform(-1.2, 1.2, (k, 1)), ["valence"], 4.0, face,
                                   rng.random(k) > 0.5, times, face_id, None,
                                   rng.random(k), boxes))
    columns = merge_faces(parts)
    assert columns["frame"].tolist() == np.repeat(np.arange(250), 2).tolist()
    assert columns["face_id"].tolist() == [0, 1] * 250
    ours = write_csv(columns, tmp_path / "ours.csv").read_bytes()
    reference = as_frame(columns)
    reference["time"] = reference["time"].map("{:.3f}".format)
    for name in ("valence", "arousal"):
        reference[name] = reference[name].map(lambda v: "" if np.isnan(v) else f"{v:.4f}")
    reference.to_csv(tmp_path / "pandas.csv", index=False)
    assert ours == (tmp_path / "pandas.csv").read_bytes()
    assert b",," in ours and b"\n0,0.000,0," in ours


def test_parquet_and_json_mark_missing_values_as_null(tmp_path):
    """A missing value (no face: no box; a target the model lacks) is null in parquet and
    JSON, as a DataFrame's NaN was written before; the columns keep their types."""
    import json
    from types import SimpleNamespace

    import pyarrow.parquet as pq

    from avemo_cli import demux
    from avemo_cli.outputs import WRITERS

    face = np.array([True, False, True, True])
    boxes = np.tile([10.0, 20.0, 50.0, 70.0], (4, 1))
    boxes[~face] = np.nan
    columns = frame_columns(np.zeros((4, 1), np.float32), ["valence"], 4.0, face,
                            np.ones(4, bool), None, 0, None, None, boxes)
    info = demux.MediaInfo(tmp_path / "a.wav", 1.0, False, True, 0, 0, 0.0, 0, 0)
    annotation = SimpleNamespace(columns=columns, info=info, path=info.path, model="m",
                                 source="audio", targets=["valence"], rate=4.0)
    WRITERS["parquet"].write(annotation, tmp_path / "a.parquet")
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.column_names == COLUMNS and table.num_rows == 4
    assert table.column("arousal").null_count == 4 and table.column("box_x").null_count == 1
    assert str(table.schema.field("face").type) == "int8"
    WRITERS["json"].write(annotation, tmp_path / "a.json")
    rows = json.loads((tmp_path / "a.json").read_text())["rows"]
    assert rows[1]["box_x"] is None and rows[0]["box_x"] == 10.0 and rows[0]["arousal"] is None


def test_fit_chain_keeps_only_steps_that_raise_devel_ccc():
    from avemo_cli.metrics import ccc
    from avemo_cli.postprocess import fit_chain

    rng = np.random.default_rng(0)
    t = np.arange(400) / 4.0
    gold = [np.sin(t[:200] / 3), np.sin(t[200:] / 3 + 1)]
    # noisy, biased, shrunk predictions: filtering, centering and scaling should all help
    pred = [0.3 * g - 0.4 + rng.normal(0, 0.15, g.shape) for g in gold]
    prm = fit_chain(pred, gold, rate=4.0)
    assert {"median_window", "bias", "scale"} <= set(prm)
    assert prm["dev_ccc"] > prm["dev_ccc_raw"] + 0.2
    out = [np.clip(apply_chain(p, prm), -1, 1) for p in pred]  # as the CSV holds them
    assert np.isclose(ccc(np.concatenate(out), np.concatenate(gold)), prm["dev_ccc"], atol=1e-5)
    # already perfect predictions: nothing helps, nothing is kept
    prm = fit_chain([g.copy() for g in gold], gold, rate=4.0)
    assert not {"median_window", "bias", "scale"} & set(prm)
    assert np.isclose(prm["dev_ccc"], 1.0)


def test_fit_chain_ignores_unscored_sequences():
    from avemo_cli.postprocess import fit_chain

    t = np.arange(200) / 4.0
    gold = [np.sin(t / 3), np.sin(t / 3 + 1)]
    pred = [0.5 * gold[0] + 0.2, np.full(200, np.nan)]  # the second could not be predicted
    prm = fit_chain(pred, gold)
    assert np.isfinite(prm["bias"]) and np.isfinite(prm["dev_ccc"])
    assert prm["dev_ccc"] > prm["dev_ccc_raw"]


def test_atomic_path_replaces_only_on_success(tmp_path):
    from avemo_cli.files import atomic_path

    target = tmp_path / "sub" / "out.png"
    with atomic_path(target, ".png") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".png")
        tmp.write_text("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_path(target, ".png") as tmp:
            tmp.write_text("half")
            raise RuntimeError("the writer failed")
    assert target.read_text() == "first"  # the earlier complete file is kept
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.png"]


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path):
    import os
    import subprocess
    import sys

    from avemo_cli.files import remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    out = tmp_path / "v.avemo.csv"
    stale = [tmp_path / f".v.avemo.csv.tmp{dead}", tmp_path / f".v.avemo.png.tmp{dead}.png"]
    live = tmp_path / f".v.avemo.csv.tmp{os.getpid()}"  # a run still writing it
    other = tmp_path / f".w.avemo.csv.tmp{dead}"  # another input's: not this output's business
    for p in (*stale, live, other):
        p.write_text("half")
    assert remove_stale_temporaries(out) == [stale[0]]
    assert remove_stale_temporaries(tmp_path / "v.avemo.png") == [stale[1]]
    assert live.exists() and other.exists() and not any(p.exists() for p in stale)


def test_fit_chain_reports_what_the_written_values_score_and_flattens_nothing():
    """The CSV holds values clipped to [-1, 1]: the CCC the fit reports is that of the clipped
    output (what eval gives on the written files), and no kept step makes a sequence constant
    (a scaling that saturates it at 1.0 scored well before it was clipped)."""
    from avemo_cli.metrics import ccc
    from avemo_cli.postprocess import apply_chain, fit_chain

    rng = np.random.default_rng(0)
    t = np.arange(200) / 4
    for _ in range(40):
        golds, preds = [], []
        for _ in range(3):
            g = np.clip(rng.uniform(-0.8, 0.8) + rng.uniform(0.01, 0.3) *
                        np.sin(t * rng.uniform(0.1, 1)), -1, 1)
            amp = rng.uniform(0.001, 0.1)
            p = rng.uniform(-0.3, 0.3) * rng.choice([0.01, 1]) + amp * np.sin(
                t * rng.uniform(0.1, 1) + rng.uniform(0, 3)) + 0.3 * amp * rng.standard_normal(200)
            golds.append(g)
            preds.append(p.astype(np.float32))
        prm = fit_chain(preds, golds)
        out = [np.clip(apply_chain(p, prm), -1, 1) for p in preds]
        assert all(np.ptp(o) > 0 for o in out), prm
        assert prm["dev_ccc"] == pytest.approx(ccc(np.concatenate(out), np.concatenate(golds)),
                                               abs=1e-5), prm
        assert prm["dev_ccc"] >= prm["dev_ccc_raw"] - 1e-9
