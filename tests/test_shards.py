"""Job-array shards (shards.py): a deterministic share of a folder per task, from --shard or
the array's environment."""
import json
import random

import pytest

from avemo_cli.shards import Shard, ShardError, parse_shard, shard_from_env

from conftest import cli as run, manifest_records


def test_shards_cover_every_input_exactly_once_whatever_the_order():
    keys = [f"speaker{i // 10}/clip{i % 10}.mp4" for i in range(1000)]
    picks = {n: [[k for k in keys if Shard(i, n).takes(k)] for i in range(n)] for n in (1, 3, 7)}
    for n, shards in picks.items():
        assert sorted(k for s in shards for k in s) == sorted(keys)  # each once
        assert all(abs(len(s) - 1000 / n) < 0.2 * 1000 / n for s in shards)  # about even
    shuffled = random.Random(1).sample(keys, len(keys))  # another listing order: same shards
    assert [[k for k in shuffled if Shard(i, 3).takes(k)] for i in range(3)] == \
        [sorted(s, key=shuffled.index) for s in picks[3]]


def test_shard_option_and_job_array_environments():
    assert parse_shard("2/3") == Shard(2, 3, "--shard 2/3")
    for bad in ("3/3", "-1/3", "1/0", "x", "1/2/3"):
        with pytest.raises(ShardError):
            parse_shard(bad)
    assert shard_from_env({}) is None
    slurm = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10",
             "SLURM_ARRAY_TASK_COUNT": "3"}
    s = shard_from_env(slurm)
    assert (s.index, s.count) == (2, 3)
    assert "SLURM" in s.origin
    stepped = {**slurm, "SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_STEP": "2"}  # 10,12,14
    assert (shard_from_env(stepped).index, shard_from_env(stepped).count) == (2, 3)
    k8s = shard_from_env({"JOB_COMPLETION_INDEX": "4", "AVEMO_SHARDS": "5"})
    aws = shard_from_env({"AWS_BATCH_JOB_ARRAY_INDEX": "0", "AVEMO_SHARDS": "2"})
    assert (k8s.index, k8s.count, aws.index, aws.count) == (4, 5, 0, 2)
    with pytest.raises(ShardError, match="AVEMO_SHARDS"):
        shard_from_env({"JOB_COMPLETION_INDEX": "1"})
    with pytest.raises(ShardError, match="not a whole number"):
        shard_from_env({**slurm, "SLURM_ARRAY_TASK_ID": "x"})


def test_three_slurm_tasks_cover_a_folder_once(folder, tmp_path, tiny_audio_ckpt):
    out = tmp_path / "out"
    inputs = sorted(str(p) for p in folder.rglob("*.wav"))
    for task in range(3):
        env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": "0",
               "SLURM_ARRAY_TASK_COUNT": "3"}
        code, stdout, stderr = run("annotate", folder, "-o", out, "--weights", tiny_audio_ckpt,
                                   "-q", env=env)
        assert code == 0, stderr
        assert f"avemo: shard {task}/3 (from the SLURM array task {task} of 3)" in stderr
    manifests = sorted(out.glob("avemo-manifest*.jsonl"))
    assert [m.name for m in manifests] == [f"avemo-manifest.{i}-of-3.jsonl" for i in range(3)]
    records = [r for m in manifests for r in manifest_records(m)]
    assert sorted(r["input"] for r in records) == inputs  # every input once, over the shards
    assert all(r["status"] == "ok" and r["error"] == "" and r["frames"] > 0 for r in records)
    first = records[0]
    assert first["avemo"]
    assert first["model"] == tiny_audio_ckpt.name
    assert len(first["model_sha256"]) == 64
    assert first["outputs"][0].endswith(".avemo.csv")
    assert len(list(out.rglob("*.avemo.csv"))) == 7
    # --shard 2/3 picks what SLURM task 2 of 3 picked
    code, _, stderr = run("annotate", folder, "-o", tmp_path / "again", "--weights",
                          tiny_audio_ckpt, "-q", "--shard", "2/3")
    assert code == 0, stderr
    again = manifest_records(tmp_path / "again" / "avemo-manifest.2-of-3.jsonl")
    assert [r["input"] for r in again] == [r["input"] for r in manifest_records(manifests[2])]
    code, stdout, _ = run("status", out, "--json")
    totals = json.loads(stdout)
    assert code == 0
    assert totals["inputs"] == 7
    assert totals["ok"] == 7
    assert totals["failed"] == 0
    assert totals["missing_shards"] == []
    assert totals["media_hours"] > 0


def test_shard_option_mistakes_and_overrides_are_said(folder, tmp_path, tiny_audio_ckpt):
    wav = next(folder.rglob("*.wav"))
    for bad, why in (("0/0", "the count must be 1 or more"), ("3/3", "the index must be 0 to 2"),
                     ("", "expected I/N")):
        code, stdout, err = run("annotate", wav, "-o", tmp_path / "x", "--shard", bad)
        assert code == 2, err
        assert why in err, err
        assert len(err.strip().splitlines()) == 1, err
    slurm = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}
    code, _, err = run("annotate", wav, "-o", tmp_path / "y", "--weights", tiny_audio_ckpt,
                       "-q", "--shard", "0/1", env=slurm)
    assert code == 0, err
    assert ("avemo: shard 0/1 (from --shard 0/1); the SLURM array task 0 of 2 " \
        "is overridden" in err), err
    code, _, err = run("annotate", wav, "-o", tmp_path / "z", "--weights", tiny_audio_ckpt,
                       "-q", "--shard", "0/1")
    assert code == 0, err
    assert "avemo: shard 0/1 (from --shard 0/1)" in err, err
