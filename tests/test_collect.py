"""``avemo collect DIR``: a folder tree's annotated inputs as one Parquet dataset (collect.py):
the shards of a job array, every input once with its latest record, brought up to date by a
re-run, outputs that are not avemo's or are half-written reported and left out, and DuckDB
reading the result."""
import shutil

import pandas as pd
import pytest

from avemo_cli.table import COLUMNS
from avemo_cli.utterances import COLUMNS as SEGMENT_COLUMNS

from conftest import cli as run, manifest_records


@pytest.fixture()
def sharded(folder, tiny_audio_ckpt, tmp_path):
    """The seven speech clips of ``folder`` annotated as a 3-shard job array into one output
    folder, then one of them annotated again (--overwrite, with its utterances too): its
    second record is the latest."""
    out = tmp_path / "out"
    for i in range(3):
        code, _, err = run("annotate", folder, "--weights", tiny_audio_ckpt, "-o", out,
                           "--shard", f"{i}/3", "-q")
        assert code == 0, err
    again = sorted(folder.rglob("*.wav"))[0]
    code, _, err = run("annotate", again, "--weights", tiny_audio_ckpt, "-o",
                       out / again.parent.name, "--overwrite", "--format", "csv,segments", "-q")
    assert code == 0, err
    return out, again


def test_a_job_arrays_shards_are_one_dataset_with_each_inputs_latest_record(sharded, folder):
    out, again = sharded
    assert len(list(out.glob("avemo-manifest.*-of-3.jsonl"))) == 3
    code, stdout, err = run("collect", out)
    assert code == 0, err
    dataset = out / "avemo-dataset"
    assert stdout.strip() == str(dataset)
    inputs = pd.read_parquet(dataset / "inputs.parquet")
    clips = sorted(folder.rglob("*.wav"))
    assert len(inputs) == len(clips)  # every input once
    assert inputs["input"].is_unique
    assert set(inputs.status) == {"ok"}
    assert inputs.collected.all()
    latest = inputs.set_index("input").loc[str(again)]
    assert latest.utterances >= 1  # the re-run's record (it wrote segments), not the shard's
    assert inputs.set_index("input").drop(str(again)).utterances.isna().all()
    frames = pd.read_parquet(dataset / "frames")
    assert list(frames.columns) == ["input", *COLUMNS]
    for source, rows in frames.groupby("input"):
        csv = pd.read_csv(next(p for p in map(str, out.rglob("*.avemo.csv"))
                               if p.endswith(f"/{source.split('/')[-1][:-4]}.avemo.csv")))
        assert len(rows) == len(csv)
        assert rows["valence"].to_numpy() == pytest.approx(csv["valence"].to_numpy(), abs=1e-6)
    segments = pd.read_parquet(dataset / "segments")
    assert list(segments.columns) == ["input", *SEGMENT_COLUMNS]
    assert set(segments["input"]) == {str(again)}
    assert len(segments) == latest.utterances


def test_a_rerun_brings_the_dataset_up_to_date(sharded, folder, tiny_audio_ckpt, tmp_path):
    out, _ = sharded
    assert run("collect", out, "-q")[0] == 0
    code, _, err = run("collect", out)
    assert code == 0, err
    assert "0 updated" in err  # nothing changed: nothing rewritten
    new = tmp_path / "more"
    new.mkdir()
    shutil.copy(sorted(folder.rglob("*.wav"))[0], new / "late.wav")
    code, _, err = run("annotate", new, "--weights", tiny_audio_ckpt, "-o", out / "later",
                       "-q")
    assert code == 0, err
    code, _, err = run("collect", out)
    assert code == 0, err
    assert "1 updated" in err
    inputs = pd.read_parquet(out / "avemo-dataset" / "inputs.parquet")
    assert len(inputs) == len(list(folder.rglob("*.wav"))) + 1
    assert str(new / "late.wav") in set(pd.read_parquet(out / "avemo-dataset" / "frames")
                                        ["input"])


def test_outputs_not_avemos_or_half_written_are_reported_never_merged(sharded):
    out, _ = sharded
    csvs = sorted(p for p in out.rglob("*.avemo.csv"))
    foreign, half = csvs[0], csvs[1]
    foreign.write_text("a,b\n1,2\n")  # someone's CSV under avemo's name
    text = half.read_text()
    half.write_text(text[: len(text) // 2])  # cut mid-way (a copy that did not finish)
    code, _, err = run("collect", out)
    assert code == 0, err
    assert f"{foreign}: not an avemo table" in err
    assert str(half) in err
    assert "left out" in err
    inputs = pd.read_parquet(out / "avemo-dataset" / "inputs.parquet")
    assert inputs.collected.sum() == len(inputs) - 2
    assert inputs.problem.notna().sum() == 2
    frames = pd.read_parquet(out / "avemo-dataset" / "frames")
    records = {r["input"]: r for m in out.glob("avemo-manifest*.jsonl")
               for r in manifest_records(m)}
    left_out = {i for i, r in records.items() if str(foreign) in r["outputs"]
                or str(half) in r["outputs"]}
    assert len(left_out) == 2
    assert not left_out & set(frames["input"])


def test_a_folder_with_no_manifests_is_one_line(tmp_path):
    code, _, err = run("collect", tmp_path)
    assert code == 2 or code == 1
    assert "no avemo manifests" in err
    assert "Traceback" not in err


def test_duckdb_reads_the_dataset(sharded):
    duckdb = pytest.importorskip("duckdb", reason="duckdb is not installed (pip install duckdb)")
    out, again = sharded
    assert run("collect", out, "-q")[0] == 0
    dataset = out / "avemo-dataset"
    con = duckdb.connect()
    n_inputs, = con.execute(f"SELECT count(*) FROM '{dataset}/inputs.parquet'").fetchone()
    per_input = con.execute(f"SELECT input, count(*), avg(valence) FROM "
                            f"'{dataset}/frames/*.parquet' GROUP BY input").fetchall()
    assert len(per_input) == n_inputs
    frames = pd.read_parquet(dataset / "frames")
    for source, n, mean in per_input:
        rows = frames[frames["input"] == source]
        assert n == len(rows)
        assert mean == pytest.approx(rows.valence.mean(), abs=1e-9)
    said, = con.execute(f"SELECT count(*) FROM '{dataset}/segments/*.parquet' WHERE input = ?",
                        [str(again)]).fetchone()
    assert said >= 1
