"""Job-array shards, run manifests and `avemo status`, and `annotate --jobs`."""
import json
import random
import shutil

import pandas as pd
import pytest
from click.testing import CliRunner

from avemo_cli.cli import main
from avemo_cli.manifests import summarise
from avemo_cli.shards import Shard, ShardError, parse_shard, shard_from_env

from conftest import shared_file


def run(*args, env=None):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env=env)
    return result.exit_code, result.stdout, result.stderr


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
    assert (s.index, s.count) == (2, 3) and "SLURM" in s.origin
    stepped = {**slurm, "SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_STEP": "2"}  # 10,12,14
    assert (shard_from_env(stepped).index, shard_from_env(stepped).count) == (2, 3)
    k8s = shard_from_env({"JOB_COMPLETION_INDEX": "4", "AVEMO_SHARDS": "5"})
    aws = shard_from_env({"AWS_BATCH_JOB_ARRAY_INDEX": "0", "AVEMO_SHARDS": "2"})
    assert (k8s.index, k8s.count, aws.index, aws.count) == (4, 5, 0, 2)
    with pytest.raises(ShardError, match="AVEMO_SHARDS"):
        shard_from_env({"JOB_COMPLETION_INDEX": "1"})
    with pytest.raises(ShardError, match="not a whole number"):
        shard_from_env({**slurm, "SLURM_ARRAY_TASK_ID": "x"})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Seven short speech clips in nested folders (audio-only inputs: quick to annotate)."""
    root = tmp_path_factory.mktemp("corpus")
    names = ["03a01Fa", "03a01Nc", "03a01Wa", "03a02Fc", "03a02Nc", "03a02Ta", "03a02Wb"]
    for i, name in enumerate(names):
        src = shared_file("emodb", f"{name}.wav")
        (root / f"speaker{i % 3}").mkdir(exist_ok=True)
        shutil.copy(src, root / f"speaker{i % 3}" / src.name)
    return root


def _manifest(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


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
    records = [r for m in manifests for r in _manifest(m)]
    assert sorted(r["input"] for r in records) == inputs  # every input once, over the shards
    assert all(r["status"] == "ok" and r["error"] == "" and r["frames"] > 0 for r in records)
    first = records[0]
    assert first["avemo"] and first["model"] == tiny_audio_ckpt.name
    assert len(first["model_sha256"]) == 64 and first["outputs"][0].endswith(".avemo.csv")
    assert len(list(out.rglob("*.avemo.csv"))) == 7
    # --shard 2/3 picks what SLURM task 2 of 3 picked
    code, _, stderr = run("annotate", folder, "-o", tmp_path / "again", "--weights",
                          tiny_audio_ckpt, "-q", "--shard", "2/3")
    assert code == 0, stderr
    again = _manifest(tmp_path / "again" / "avemo-manifest.2-of-3.jsonl")
    assert [r["input"] for r in again] == [r["input"] for r in _manifest(manifests[2])]
    code, stdout, _ = run("status", out, "--json")
    totals = json.loads(stdout)
    assert code == 0 and totals["inputs"] == 7 and totals["ok"] == 7 and totals["failed"] == 0
    assert totals["missing_shards"] == [] and totals["media_hours"] > 0


def test_status_merges_manifests_and_reports_failures(folder, tmp_path, tiny_audio_ckpt):
    src = tmp_path / "in"
    shutil.copytree(folder, src)
    (src / "speaker0" / "broken.wav").write_bytes(b"RIFF not really")
    out = tmp_path / "out"
    for _ in range(2):  # the re-run skips the shard's finished inputs, appending its records
        run("annotate", src, "-o", out, "--weights", tiny_audio_ckpt, "-q", "--shard", "0/2")
    lines = _manifest(out / "avemo-manifest.0-of-2.jsonl")
    assert {r["status"] for r in lines} == {"ok", "skipped", "failed"}
    summary = summarise(out)  # a skip after the run that wrote the outputs keeps that record
    assert summary.records and all(r.status in ("ok", "failed")
                                   for r in summary.records.values())
    assert len(lines) == 2 * len(summary.records)
    assert summary.missing_shards() == ["1-of-2"]
    code, stdout, _ = run("status", out)
    assert code == 1 and "missing: the manifest of shard 1-of-2" in stdout
    run("annotate", src, "-o", out, "--weights", tiny_audio_ckpt, "-q", "--shard", "1/2")
    summary = summarise(out)
    assert len(summary.records) == 8 and summary.count("failed") == 1
    code, stdout, _ = run("status", out)
    assert code == 1 and "8 inputs in 2 manifests" in stdout
    assert "failed: " in stdout and "broken.wav" in stdout
    code, _, stderr = run("status", tmp_path / "nowhere")
    assert code == 2 and stderr.startswith("avemo: error:")


def test_jobs_give_the_same_outputs_as_one_at_a_time(folder, tmp_path, tiny_audio_ckpt):
    code, _, err = run("annotate", folder, "-o", tmp_path / "one", "--weights", tiny_audio_ckpt,
                       "-q")
    assert code == 0, err
    code, stdout, err = run("annotate", folder, "-o", tmp_path / "two", "--weights",
                            tiny_audio_ckpt, "-q", "--jobs", "2")
    assert code == 0, err
    assert len(stdout.split()) == 7
    for csv in (tmp_path / "one").rglob("*.avemo.csv"):
        twin = tmp_path / "two" / csv.relative_to(tmp_path / "one")
        pd.testing.assert_frame_equal(pd.read_csv(csv), pd.read_csv(twin))
    assert len(_manifest(tmp_path / "two" / "avemo-manifest.jsonl")) == 7
    code, _, err = run("annotate", folder, "-o", tmp_path / "x", "--jobs", "0")
    assert code == 2 and err.startswith("avemo: error:")


def test_extraction_processes_feed_one_model(tmp_path, tiny_ckpt):
    """One model fed by extraction processes (``one_model``: the default on CUDA, forced here
    on the CPU): the same CSVs as one file at a time, a bad file costs only itself, and when
    the extraction processes are killed mid-run their files are extracted again."""
    import os
    import signal

    from avemo_cli import workers
    from avemo_cli.batch import AnnotateOptions, Progress, annotate_files
    from avemo_cli.pipeline import Annotator
    from avemo_cli.settings import AnnotatorSettings

    from conftest import ffmpeg

    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(["WDA_KatieHill_000", "WDA_AlexandriaOcasioCortez_000",
                              "subj01_timepoint01", "WDA_KatieHill_000"]):
        ffmpeg("-ss", f"{i}", "-i", str(shared_file("videos", f"{name}.mp4")), "-t", "3",
               "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
               str(src / f"clip{i}.mp4"))
    (src / "broken.mp4").write_bytes(b"not a video")
    annotator = Annotator(tiny_ckpt, AnnotatorSettings(device="cpu"))
    one = annotate_files([src], AnnotateOptions(output_dir=tmp_path / "one"), annotator)
    killed = []

    class KillExtractors(Progress):
        def start(self, job, i, total):
            if not killed:  # the first file's model stage: stop every extraction process
                for pool in workers.live():
                    for proc in list(pool._processes.values()):
                        os.kill(proc.pid, signal.SIGKILL)
                        killed.append(proc.pid)

    fed = annotate_files([src], AnnotateOptions(output_dir=tmp_path / "fed", jobs=2,
                                                one_model=True), annotator, KillExtractors())
    assert killed, "the extraction processes were killed"
    assert workers.live() == [], "every pool ended"
    assert len(one.written) == len(fed.written) == 4
    assert [p.name for p, _ in fed.failed] == ["broken.mp4"]
    assert fed.failed[0][1].count("\n") == 0 and "broken.mp4" in fed.failed[0][1]
    for csv in one.written:
        twin = tmp_path / "fed" / csv.name
        assert twin.read_bytes() == csv.read_bytes()
    assert len(_manifest(tmp_path / "fed" / "avemo-manifest.jsonl")) == 5


def test_runs_into_one_folder_keep_every_record(folder, tmp_path, tiny_audio_ckpt):
    """One run after another, and two runs at the same time, into one -o: `avemo status`
    counts every input once, with its latest status."""
    import subprocess
    import sys

    wavs = sorted(folder.rglob("*.wav"))
    out = tmp_path / "seq"
    for wav in wavs[:2]:
        code, _, err = run("annotate", wav, "-o", out, "--weights", tiny_audio_ckpt, "-q")
        assert code == 0, err
    code, stdout, _ = run("status", out, "--json")
    assert code == 0 and json.loads(stdout)["ok"] == 2
    both = tmp_path / "both"
    procs = [subprocess.Popen([sys.executable, "-m", "avemo_cli", "annotate", *map(str, part),
                               "-o", str(both), "--weights", str(tiny_audio_ckpt), "-q"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for part in (wavs[:3], wavs[3:])]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    code, stdout, err = run("status", both, "--json")
    totals = json.loads(stdout)
    assert code == 0 and totals["inputs"] == totals["ok"] == len(wavs), (stdout, err)
    assert totals["unreadable_lines"] == 0 and "warning" not in err


def test_status_reads_past_bad_lines_and_names_mixed_models(folder, tmp_path, tiny_audio_ckpt):
    out = tmp_path / "out"
    code, _, err = run("annotate", folder, "-o", out, "--weights", tiny_audio_ckpt, "-q")
    assert code == 0, err
    manifest = out / "avemo-manifest.jsonl"
    lines = manifest.read_text().splitlines()
    odd = [json.loads(lines[0]) | {"media_seconds": "4.0"}, json.loads(lines[1]) |
           {"media_seconds": None, "model_sha256": "f" * 64, "model": "other.safetensors"},
           json.loads(lines[2]) | {"frames": "many"}]
    text = "\n".join([*map(json.dumps, odd), *lines[3:], lines[3][:40]])  # a cut last line
    manifest.write_text(text)
    code, stdout, err = run("status", out)
    assert code == 0, err
    assert "6 inputs in 1 manifest: 6 annotated" in stdout  # (line 3 is left out)
    warnings = err.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("avemo: warning:") for w in warnings)
    assert "avemo-manifest.jsonl:3: not a manifest record (frames is \"many\")" in warnings[0]
    assert f"avemo-manifest.jsonl:{len(lines) + 1}:" in warnings[1]
    assert "made by avemo" in stdout and "other.safetensors (ffffffffffff): 1 input" in stdout


def test_outputs_that_are_not_this_inputs_are_not_taken_for_done(folder, tmp_path,
                                                                   tiny_audio_ckpt):
    """Another input's output of the same name, a foreign table, or a folder where the output
    goes: each a one-line failure of that input, nothing overwritten, no traceback."""
    first = next(folder.rglob("03a01Fa.wav"))
    twin = tmp_path / "elsewhere" / first.name  # same name, another recording
    twin.parent.mkdir()
    shutil.copy(next(folder.rglob("03a01Nc.wav")), twin)
    out = tmp_path / "out"
    assert run("annotate", first, "-o", out, "--weights", tiny_audio_ckpt, "-q")[0] == 0
    before = (out / "03a01Fa.avemo.csv").read_bytes()
    code, stdout, err = run("annotate", twin, "-o", out, "--weights", tiny_audio_ckpt, "-q")
    assert code == 1 and not stdout and len(err.strip().splitlines()) == 1
    assert f"was written for {first}" in err
    assert (out / "03a01Fa.avemo.csv").read_bytes() == before
    assert summarise(out).records[str(twin)].status == "failed"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "03a01Fa.avemo.csv").write_text("a,b\n1,2\n")
    code, _, err = run("annotate", first, "-o", foreign, "--weights", tiny_audio_ckpt, "-q")
    assert code == 1 and "is not an avemo table" in err and len(err.strip().splitlines()) == 1
    assert (foreign / "03a01Fa.avemo.csv").read_text() == "a,b\n1,2\n"
    blocked = tmp_path / "blocked"
    (blocked / "03a01Fa.avemo.csv").mkdir(parents=True)
    for extra in ([], ["--overwrite"]):
        code, _, err = run("annotate", first, "-o", blocked, "--weights", tiny_audio_ckpt, "-q",
                           *extra)
        assert code == 1 and "a folder (or other non-file) is there" in err, err
        assert len(err.strip().splitlines()) == 1


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    import os

    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Eight 3 s test-pattern videos with a tone: a --jobs 2 run of a few seconds."""
    from conftest import make_synthetic_video

    root = tmp_path_factory.mktemp("clips")
    for i in range(8):
        make_synthetic_video(root / f"clip{i}.mp4", seconds=3.0)
    return root


def _start_jobs(clips, out, ckpt, *extra):
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "avemo_cli", "annotate", str(clips), "-o",
                             str(out), "--weights", str(ckpt), "--jobs", "2", "-q", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 60
    while not list(out.glob("*.avemo.csv")) and time.time() < deadline:  # mid-run
        time.sleep(0.05)
    assert list(out.glob("*.avemo.csv")), proc.communicate()[1]
    return proc


@pytest.mark.parametrize("mode", ["--model-per-job", "--one-model"])
def test_ctrl_c_of_jobs_is_one_line_and_status_130(clips, tmp_path, tiny_ckpt, mode):
    import os
    import signal

    proc = _start_jobs(clips, tmp_path / "out", tiny_ckpt, mode)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err, err


@pytest.mark.parametrize("mode", ["--model-per-job", "--one-model"])
def test_kill_9_of_the_main_process_leaves_no_worker(clips, tmp_path, tiny_ckpt, mode):
    import os
    import signal
    import time

    proc = _start_jobs(clips, tmp_path / "out", tiny_ckpt, mode)
    workers = _children(proc.pid)
    assert workers, "no worker processes were seen"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.time() + 5
    while any(map(_alive, workers)) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, workers)), [w for w in workers if _alive(w)]


def test_shard_option_mistakes_and_overrides_are_said(folder, tmp_path, tiny_audio_ckpt):
    wav = next(folder.rglob("*.wav"))
    for bad, why in (("0/0", "the count must be 1 or more"), ("3/3", "the index must be 0 to 2"),
                     ("", "expected I/N")):
        code, stdout, err = run("annotate", wav, "-o", tmp_path / "x", "--shard", bad)
        assert code == 2 and why in err and len(err.strip().splitlines()) == 1, err
    slurm = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}
    code, _, err = run("annotate", wav, "-o", tmp_path / "y", "--weights", tiny_audio_ckpt,
                       "-q", "--shard", "0/1", env=slurm)
    assert code == 0 and "avemo: shard 0/1 (from --shard 0/1); the SLURM array task 0 of 2 " \
        "is overridden" in err, err
    code, _, err = run("annotate", wav, "-o", tmp_path / "z", "--weights", tiny_audio_ckpt,
                       "-q", "--shard", "0/1")
    assert code == 0 and "avemo: shard 0/1 (from --shard 0/1)" in err, err
