"""Run manifests and `avemo status` (manifests.py): every input's latest record, bad lines
and foreign outputs."""
import json
import os
import shutil
from pathlib import Path

import pytest

from avemo_cli.manifests import summarise

from conftest import cli as run, manifest_records, shared_file


def test_status_merges_manifests_and_reports_failures(folder, tmp_path, tiny_audio_ckpt):
    src = tmp_path / "in"
    shutil.copytree(folder, src)
    (src / "speaker0" / "broken.wav").write_bytes(b"RIFF not really")
    out = tmp_path / "out"
    for _ in range(2):  # the re-run skips the shard's finished inputs, appending its records
        run("annotate", src, "-o", out, "--weights", tiny_audio_ckpt, "-q", "--shard", "0/2")
    lines = manifest_records(out / "avemo-manifest.0-of-2.jsonl")
    assert {r["status"] for r in lines} == {"ok", "skipped", "failed"}
    summary = summarise(out)  # a skip after the run that wrote the outputs keeps that record
    assert summary.records
    assert (all(r.status in ("ok", "failed")
                                   for r in summary.records.values()))
    assert len(lines) == 2 * len(summary.records)
    assert summary.missing_shards() == ["1-of-2"]
    code, stdout, _ = run("status", out)
    assert code == 1
    assert "missing: the manifest of shard 1-of-2" in stdout
    run("annotate", src, "-o", out, "--weights", tiny_audio_ckpt, "-q", "--shard", "1/2")
    summary = summarise(out)
    assert len(summary.records) == 8
    assert summary.count("failed") == 1
    code, stdout, _ = run("status", out)
    assert code == 1
    assert "8 inputs in 2 manifests" in stdout
    assert "failed: " in stdout
    assert "broken.wav" in stdout
    code, _, stderr = run("status", tmp_path / "nowhere")
    assert code == 2
    assert stderr.startswith("avemo: error:")


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
    assert code == 0
    assert json.loads(stdout)["ok"] == 2
    both = tmp_path / "both"
    procs = [subprocess.Popen([sys.executable, "-m", "avemo_cli", "annotate", *map(str, part),
                               "-o", str(both), "--weights", str(tiny_audio_ckpt), "-q"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for part in (wavs[:3], wavs[3:])]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    code, stdout, err = run("status", both, "--json")
    totals = json.loads(stdout)
    assert code == 0, (stdout, err)
    assert totals["inputs"] == totals["ok"] == len(wavs), (stdout, err)
    assert totals["unreadable_lines"] == 0
    assert "warning" not in err


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
    assert len(warnings) == 2
    assert all(w.startswith("avemo: warning:") for w in warnings)
    assert "avemo-manifest.jsonl:3: not a manifest record (frames is \"many\")" in warnings[0]
    assert f"avemo-manifest.jsonl:{len(lines) + 1}:" in warnings[1]
    assert "made by avemo" in stdout
    assert "other.safetensors (ffffffffffff): 1 input" in stdout


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
    assert code == 1
    assert not stdout
    assert len(err.strip().splitlines()) == 1
    assert f"was written for {first}" in err
    assert (out / "03a01Fa.avemo.csv").read_bytes() == before
    assert summarise(out).records[str(twin)].status == "failed"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "03a01Fa.avemo.csv").write_text("a,b\n1,2\n")
    code, _, err = run("annotate", first, "-o", foreign, "--weights", tiny_audio_ckpt, "-q")
    assert code == 1
    assert "is not an avemo table" in err
    assert len(err.strip().splitlines()) == 1
    assert (foreign / "03a01Fa.avemo.csv").read_text() == "a,b\n1,2\n"
    blocked = tmp_path / "blocked"
    (blocked / "03a01Fa.avemo.csv").mkdir(parents=True)
    for extra in ([], ["--overwrite"]):
        code, _, err = run("annotate", first, "-o", blocked, "--weights", tiny_audio_ckpt, "-q",
                           *extra)
        assert code == 1, err
        assert "a folder (or other non-file) is there" in err, err
        assert len(err.strip().splitlines()) == 1


def test_non_finite_numbers_in_a_manifest_keep_the_report_valid(tmp_path):
    """A record with ``1e999`` seconds is an unreadable line (said once); a summary value of
    ``1e999`` becomes null: ``--json`` stays valid JSON and ``--html`` writes its page."""
    out = tmp_path / "out"
    out.mkdir()
    good = {"input": "a.mp4", "status": "ok", "media_seconds": 3.0,
            "summary": {"valence": 1e999, "arousal": 0.1, "spark": {"valence": [1e999]}}}
    text = json.dumps(good) + "\n" + json.dumps({"input": "b.mp4", "status": "ok",
                                                "seconds": 1e999}) + "\n"
    assert "Infinity" in text
    (out / "avemo-manifest.jsonl").write_text(text)
    code, stdout, err = run("status", out, "--json")
    assert code == 0, err
    totals = json.loads(stdout, parse_constant=lambda c: pytest.fail(f"{c} in --json"))
    assert totals["inputs"] == 1
    assert totals["unreadable_lines"] == 1
    assert "seconds is Infinity" in err
    code, _, err = run("status", out, "--html")
    assert code == 0, err
    assert "Traceback" not in err
    page = (out / "avemo-report.html").read_text()
    assert "Infinity" not in page


def test_a_symlink_planted_at_the_manifest_is_refused(tmp_path, tiny_audio_ckpt):
    wav = shared_file("emodb", "03a01Fa.wav")
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere.jsonl"
    out.mkdir()
    elsewhere.write_text("")
    (out / "avemo-manifest.jsonl").symlink_to(elsewhere)
    code, stdout, err = run("annotate", wav, "-o", out, "--weights", tiny_audio_ckpt, "-q")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "avemo-manifest.jsonl: is a symbolic link" in err
    assert elsewhere.read_text() == "", "nothing was appended through the link"


def test_a_name_that_is_not_utf8_is_recorded_and_the_batch_goes_on(tmp_path, tiny_audio_ckpt):
    """A file whose name is not UTF-8 (Latin-1 bytes) is one line and a record (ffmpeg-python
    cannot be given its name); the manifest keeps it, escaped, and the batch goes on."""
    src = tmp_path / "in"
    src.mkdir()
    raw = os.fsdecode(b"caf\xe9.wav")  # Latin-1 bytes: not UTF-8
    shutil.copy(shared_file("emodb", "03a01Fa.wav"), src / raw)
    shutil.copy(shared_file("emodb", "03a01Nc.wav"), src / "plain.wav")
    out = tmp_path / "out"
    code, stdout, err = run("annotate", src, "-o", out, "--weights", tiny_audio_ckpt, "-q")
    assert code == 1, err
    assert "Traceback" not in err
    assert "caf\\xe9.wav: its name is not valid UTF-8" in err
    records = {Path(r["input"]).name: r for r in manifest_records(out / "avemo-manifest.jsonl")}
    assert sorted(records) == sorted([raw, "plain.wav"])
    assert records["plain.wav"]["status"] == "ok"
    assert records[raw]["status"] == "failed"
    code, _, err = run("status", out, "--json")
    assert json.loads(_)["inputs"] == 2, err


def test_a_record_that_cannot_be_added_names_the_manifest(tmp_path, tiny_audio_ckpt,
                                                          monkeypatch):
    """A disk full at the manifest's append: one line naming the manifest and the input (it
    named no file), the outputs already written kept."""
    import errno

    from avemo_cli import manifests

    def full(path, line):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manifests, "append_line", full)
    out = tmp_path / "out"
    code, _, err = run("annotate", shared_file("emodb", "03a01Fa.wav"), "-o", out,
                       "--weights", tiny_audio_ckpt, "-q")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{out / 'avemo-manifest.jsonl'}: the record of " in err
    assert "No space left on device" in err
    assert (out / "03a01Fa.avemo.csv").exists()


def test_a_garbage_manifest_is_said_in_a_few_lines(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    good = json.dumps({"input": "a.mp4", "status": "ok", "media_seconds": 3.0})
    (out / "avemo-manifest.jsonl").write_text(good + "\n" + "garbage\n" * 88)
    code, stdout, err = run("status", out, "--json")
    assert code == 0, err
    warnings = err.strip().splitlines()
    assert len(warnings) == 4, err
    assert warnings[-1].endswith("avemo-manifest.jsonl: 85 more lines are not manifest "
                                 "records; left out")
    assert json.loads(stdout)["unreadable_lines"] == 88
