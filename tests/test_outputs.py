"""The output writers (outputs.py): CSV, parquet and JSON as written."""
import numpy as np
import pandas as pd

from avemo_cli.outputs import write_csv
from avemo_cli.table import COLUMNS, as_frame, frame_columns, merge_faces, read_csv


from conftest import frame_table


def test_write_is_atomic_and_formatted(tmp_path):
    t = frame_table(np.zeros((2, 1), np.float32), ["valence"], 4.0, np.ones(2, bool),
                    np.ones(2, bool))
    out = write_csv(t, tmp_path / "sub" / "a.avemo.csv")
    assert out.read_text().splitlines()[:2] == [
        "frame,time,face_id,valence,arousal,face,voice,speaking,confidence,box_x,box_y,box_w,"
        "box_h", "0,0.000,0,0.0000,,1,1,1,1.0,,,,"]
    assert [p.name for p in out.parent.iterdir()] == ["a.avemo.csv"]
    back = read_csv(out)
    assert isinstance(back, pd.DataFrame)
    assert back.valence.tolist() == [0.0, 0.0]


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
    assert b",," in ours
    assert b"\n0,0.000,0," in ours


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
                                 source="audio", targets=["valence"], rate=4.0, utterances=[])
    WRITERS["parquet"].write(annotation, tmp_path / "a.parquet")
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.column_names == COLUMNS
    assert table.num_rows == 4
    assert table.column("arousal").null_count == 4
    assert table.column("box_x").null_count == 1
    assert str(table.schema.field("face").type) == "int8"
    WRITERS["json"].write(annotation, tmp_path / "a.json")
    rows = json.loads((tmp_path / "a.json").read_text())["rows"]
    assert rows[1]["box_x"] is None
    assert rows[0]["box_x"] == 10.0
    assert rows[0]["arousal"] is None


def test_control_characters_in_names_keep_outputs_valid_and_the_terminal_clean(
        tmp_path, tiny_audio_ckpt):
    """Names holding ESC, \\x01 or \\x0b: the EAF stays well-formed XML, and what reaches
    stderr shows them as escapes (a name cannot clear the screen or recolour it)."""
    import shutil
    import xml.etree.ElementTree as ET

    from conftest import cli, shared_file

    src = tmp_path / "in"
    src.mkdir()
    good = "talk\x1b[31m\x01\x0b.wav"
    shutil.copy(shared_file("emodb", "03a01Fa.wav"), src / good)
    (src / "bad\x1b[2J.mp4").write_bytes(b"not a video")
    code, stdout, err = cli("annotate", src, "-o", tmp_path / "out", "--weights",
                            tiny_audio_ckpt, "--format", "csv,eaf")
    assert code == 1, err
    assert "\x1b" not in err
    assert "bad\\x1b[2J.mp4" in err
    eaf = tmp_path / "out" / "talk\x1b[31m\x01\x0b.avemo.eaf"
    root = ET.parse(eaf).getroot()  # well-formed
    assert root.find("HEADER/MEDIA_DESCRIPTOR").get("RELATIVE_MEDIA_URL").endswith(
        "talk%1B%5B31m%01%0B.wav")
