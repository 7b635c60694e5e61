import warnings

import numpy as np
import pytest

from avemo_cli.datasets import DatasetError, load_dataset, read_labels


def _touch_video(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0")  # readers do not decode media
    return path


def test_avec2017_layout(tmp_path):
    for name in ("Train_01", "Devel_01", "Test_01", "Train_02"):
        _touch_video(tmp_path / "video" / f"{name}.avi")
    (tmp_path / "labels").mkdir()
    for name in ("Train_01", "Devel_01", "Devel_09"):
        rows = [f"'{name}';{t / 10:.1f};{0.1 * t:.2f};{-0.05 * t:.3f};0.0" for t in range(5)]
        (tmp_path / "labels" / f"{name}.csv").write_text("\n".join(rows) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seqs = {s.name: s for s in load_dataset(tmp_path, "avec2017")}
    text = " ".join(str(w.message) for w in caught)
    assert "Train_02.avi: no labels/Train_02.csv; skipped" in text
    assert "Devel_09.csv: labels without a video" in text
    assert set(seqs) == {"Train_01", "Devel_01", "Test_01"}
    assert seqs["Test_01"].labels is None
    assert seqs["Test_01"].partition == "test"
    lab = seqs["Train_01"].labels
    assert list(lab.columns) == ["time", "arousal", "valence"]
    assert np.allclose(lab.valence, [0, -0.05, -0.1, -0.15, -0.2])
    # resampled onto 4 Hz steps: 0, 0.25 (interpolated), and NaN past the last label (0.4 s)
    y = seqs["Train_01"].step_targets(3, 4.0, ["valence", "arousal"])
    assert np.allclose(y[:2, 0], [0.0, -0.125])
    assert np.isnan(y[2]).all()


@pytest.mark.parametrize("content, cause", [
    ("'Train_01';0.0;0.1\n", "found 3 column"),
    ("'Train_01';zero;0.1;0.2;0.0\n", "non-numeric"),
    ("'Train_01';0.1;0.1;0.2;0.0\n'Train_01';0.0;0.1;0.2;0.0\n", "strictly increasing"),
])
def test_malformed_avec_labels_name_the_file(tmp_path, content, cause):
    _touch_video(tmp_path / "video" / "Train_01.avi")
    (tmp_path / "labels").mkdir()
    bad = tmp_path / "labels" / "Train_01.csv"
    bad.write_text(content)
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path, "avec2017")
    assert str(bad) in str(err.value)
    assert cause in str(err.value)


def test_generic_layout_by_folders_and_by_split_csv(tmp_path):
    for part, name in [("train", "a"), ("Dev", "b"), ("test", "c")]:
        _touch_video(tmp_path / part / f"{name}.mp4")
        (tmp_path / part / f"{name}.csv").write_text("time,valence\n0,0.5\n1,0.7\n")
    seqs = {s.name: s.partition for s in load_dataset(tmp_path, "generic")}
    assert seqs == {"train/a": "train", "Dev/b": "devel", "test/c": "test"}
    split = tmp_path / "split.csv"
    split.write_text("name,partition\ntrain/a,devel\nb,train\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seqs = {s.name: s.partition for s in load_dataset(tmp_path, "generic", split)}
    assert seqs == {"train/a": "devel", "Dev/b": "train"}
    assert any("c.mp4: no partition" in str(w.message) for w in caught)
    (tmp_path / "train" / "a.csv").write_text("t,v\n0,1\n")
    with pytest.raises(DatasetError, match="a.csv: expected a header with time"):
        load_dataset(tmp_path, "generic")


def test_read_labels_recognises_both_formats(tmp_path):
    g = tmp_path / "g.csv"
    g.write_text("time,valence,arousal\n0,0.1,0.2\n0.1,0.2,0.3\n")
    a = tmp_path / "a.csv"
    a.write_text("'x';0.0;0.2;0.1;0\n'x';0.1;0.3;0.2;0\n")
    assert read_labels(g).equals(read_labels(a)[["time", "valence", "arousal"]])
    semi = tmp_path / "semi.csv"  # a generic file with a header, separated by semicolons
    semi.write_text("time;valence;arousal\n0;0.1;0.2\n0.1;0.2;0.3\n")
    assert read_labels(semi).equals(read_labels(g))
    with pytest.raises(DatasetError, match="no such data folder"):
        load_dataset(tmp_path / "nope")


def test_categorical_layout(tmp_path):
    _touch_video(tmp_path / "train" / "happiness" / "a.wav")
    _touch_video(tmp_path / "dev" / "Sadness" / "b.mp4")
    _touch_video(tmp_path / "train" / "joy" / "c.wav")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seqs = {s.name: s for s in load_dataset(tmp_path, "categorical")}
    assert set(seqs) == {"train/happiness/a", "dev/Sadness/b"}
    assert any("c.wav: not under <partition>/<emotion>/" in str(w.message) for w in caught)
    y = seqs["dev/Sadness/b"].step_targets(8, 4.0, ["valence", "arousal"])
    assert seqs["dev/Sadness/b"].partition == "devel"
    assert np.allclose(y, [[-0.7, -0.4]] * 8)  # the table's sadness, for the whole clip
