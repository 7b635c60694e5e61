"""The whole CLI with a tiny random checkpoint, on the real media in ../shared/data."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avemo_cli.demux import probe
from avemo_cli.table import COLUMNS

from conftest import cli as run, decoded_frame_count, make_synthetic_video, shared_file

NAMES = ["WDA_AlexandriaOcasioCortez_000", "WDA_KatieHill_000", "subj01_timepoint01",
         "subj02_timepoint01", "woman2_noaudio"]




@pytest.fixture(scope="module")
def annotated(tmp_path_factory, videos_dir, tiny_ckpt):
    out = tmp_path_factory.mktemp("out")
    code, stdout, stderr = run("annotate", videos_dir, "-o", out, "--weights", tiny_ckpt)
    return out, code, stdout, stderr


def test_annotates_a_folder_of_real_videos(annotated, videos_dir):
    out, code, stdout, stderr = annotated
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == \
        sorted([n + ".avemo.csv" for n in NAMES] + ["avemo-manifest.jsonl"])
    assert stdout.split() == [str(out / (n + ".avemo.csv")) for n in NAMES]  # results only
    for name in NAMES:
        table = pd.read_csv(out / f"{name}.avemo.csv")
        assert list(table.columns) == COLUMNS
        assert len(table) == decoded_frame_count(videos_dir / f"{name}.mp4")
        assert (table.frame == np.arange(len(table))).all()
        assert np.all(np.diff(table.time) > 0)
        for col in ("valence", "arousal"):
            assert np.isfinite(table[col]).all()
            assert table[col].abs().max() <= 1
        if name.startswith("WDA_"):
            assert table.face.mean() >= 0.95
        if name == "woman2_noaudio":
            assert (table.voice == 0).all()
            assert table.face.mean() > 0.9
        else:
            assert table.voice.mean() > 0.9


def test_second_run_skips_and_overwrite_redoes(annotated, videos_dir, tiny_ckpt):
    out, *_ = annotated
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.avemo.csv")}
    code, stdout, stderr = run("annotate", videos_dir, "-o", out, "--weights", tiny_ckpt)
    assert code == 0
    assert stdout == ""
    assert stderr.count("exists") == 5
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.avemo.csv")} == before
    statuses = [json.loads(line)["status"]  # the manifest says why nothing was written
                for line in (out / "avemo-manifest.jsonl").read_text().splitlines()]
    assert statuses[-5:] == ["skipped"] * 5  # (after the first run's records)
    code, stdout, stderr = run("annotate", videos_dir / "WDA_KatieHill_000.mp4", "-o", out,
                               "--weights", tiny_ckpt, "--overwrite")
    assert code == 0
    assert stdout.strip().endswith("WDA_KatieHill_000.avemo.csv")
    assert (out / "WDA_KatieHill_000.avemo.csv").stat().st_mtime_ns > \
        before["WDA_KatieHill_000.avemo.csv"]


def test_bad_files_in_a_folder_are_reported_and_the_rest_written(tmp_path, tiny_ckpt):
    src = tmp_path / "in"
    (src / "nested").mkdir(parents=True)
    good = shared_file("videos", "WDA_KatieHill_000.mp4")
    shutil.copy(good, src / "nested" / "good.mp4")
    (src / "zero.mp4").write_bytes(b"")
    (src / "text.mp4").write_text("not a video at all\n" * 20)
    (src / "cut.mp4").write_bytes(good.read_bytes()[:100_000])
    out = tmp_path / "out"
    code, stdout, stderr = run("annotate", src, "-o", out, "--weights", tiny_ckpt, "-q")
    assert code == 1
    assert (out / "nested" / "good.avemo.csv").exists()  # the tree is mirrored
    assert sorted(p.name for p in out.rglob("*.csv")) == ["good.avemo.csv"]
    errors = [ln for ln in stderr.splitlines() if ln.startswith("avemo: error:")]
    assert len(errors) == 3
    for name, cause in [("zero.mp4", "empty file"), ("text.mp4", "unreadable media"),
                        ("cut.mp4", "unreadable media")]:
        assert any(name in ln and cause in ln for ln in errors), stderr
    assert "Traceback" not in stderr
    assert "avemo: 3 of 4 inputs failed" in stderr


def test_audio_only_inputs(tmp_path, tiny_ckpt):
    wav = shared_file("emodb", "03a01Fa.wav")
    mp3 = shared_file("crema-d", "1002_DFA_HAP_XX.mp3")
    code, stdout, stderr = run("annotate", wav, mp3, "-o", tmp_path, "--weights", tiny_ckpt)
    assert code == 0, stderr
    for path in (wav, mp3):
        t = pd.read_csv(tmp_path / f"{path.stem}.avemo.csv")
        assert len(t) == int(np.ceil(probe(path).duration * 4))  # one row per analysis step
        assert np.allclose(t.time, t.frame / 4)
        # voice on the speech (the mp3 begins and ends with a breath of silence: not voice)
        assert (t.face == 0).all()
        assert t.voice.mean() > 0.7
        assert t.voice[2:6].all()
        assert np.isfinite(t.valence).all()
        assert np.isfinite(t.arousal).all()


def test_missing_branch_and_missing_face_are_one_line_errors(tmp_path, tiny_audio_ckpt,
                                                             tiny_video_ckpt, tiny_ckpt):
    noaudio = shared_file("videos", "woman2_noaudio.mp4")
    wav = shared_file("emodb", "03a01Fa.wav")
    code, _, err = run("annotate", noaudio, "-o", tmp_path, "--weights", tiny_audio_ckpt)
    assert code == 1
    assert "woman2_noaudio.mp4: no audio track" in err
    assert "no visual branch" in err
    code, _, err = run("annotate", wav, "-o", tmp_path, "--weights", tiny_video_ckpt)
    assert code == 1
    assert "03a01Fa.wav: audio-only input" in err
    assert "no audio branch" in err
    pattern = make_synthetic_video(tmp_path / "pattern.mp4", seconds=2, audio=False)
    code, _, err = run("annotate", pattern, "-o", tmp_path, "--weights", tiny_ckpt)
    assert code == 1
    assert "pattern.mp4: no face found" in err
    assert not list(tmp_path.glob("*.csv"))


def test_no_face_falls_back_to_audio(tmp_path, tiny_ckpt):
    pattern = make_synthetic_video(tmp_path / "tone.mp4", seconds=3, audio=True)
    code, _, err = run("annotate", pattern, "-o", tmp_path, "--weights", tiny_ckpt)
    assert code == 0, err
    t = pd.read_csv(tmp_path / "tone.avemo.csv")
    assert len(t) == 75
    assert (t.face == 0).all()
    assert (t.voice == 1).all()


def test_weights_errors_exit_2(tmp_path, monkeypatch):
    import avemo_cli.checkpoint as ck

    monkeypatch.delenv("AVEMO_WEIGHTS", raising=False)
    monkeypatch.setattr(ck, "shipped_weights", lambda: {})  # an install without weights
    wav = shared_file("emodb", "03a01Fa.wav")
    code, _, err = run("annotate", wav, "-o", tmp_path)
    assert code == 2
    assert "no default model is installed" in err
    bad = tmp_path / "bad.safetensors"
    bad.write_text("nope")
    code, _, err = run("annotate", wav, "-o", tmp_path, "--weights", bad)
    assert code == 2
    assert str(bad) in err
    assert len(err.strip().splitlines()) == 1


def test_profile_stride_and_missing_input(tmp_path, tiny_ckpt):
    video = shared_file("videos", "WDA_KatieHill_000.mp4")
    code, stdout, err = run("annotate", video, tmp_path / "missing.mp4", "-o", tmp_path,
                            "--weights", tiny_ckpt, "--profile", "--stride", "4")
    assert code == 1
    assert "missing.mp4: no such file or folder" in err
    for stage in ("demux", "audio", "faces", "model", "postprocess", "write", "real-time"):
        assert stage in err
    assert len(pd.read_csv(tmp_path / "WDA_KatieHill_000.avemo.csv")) == 200


def test_console_script_entry_point(tmp_path, tiny_ckpt):
    wav = shared_file("emodb", "03a01Fa.wav")
    proc = subprocess.run([sys.executable, "-m", "avemo_cli", "annotate", str(wav), "-o",
                           str(tmp_path), "--weights", str(tiny_ckpt), "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "03a01Fa.avemo.csv")
    bare = subprocess.run([sys.executable, "-m", "avemo_cli", "annotate"], capture_output=True,
                          text=True)
    assert bare.returncode == 2
    assert bare.stderr == "avemo: error: Missing argument 'INPUTS...'. (see 'avemo annotate -h')\n"
    assert "Usage" in subprocess.run([sys.executable, "-m", "avemo_cli"], capture_output=True,
                                     text=True).stderr


def test_interrupt_keeps_finished_outputs_and_no_partial_file(tmp_path, tiny_ckpt):
    import signal
    import time

    src = tmp_path / "in"
    src.mkdir()
    good = shared_file("videos", "WDA_KatieHill_000.mp4")
    for i in range(12):
        (src / f"take{i:02d}.mp4").symlink_to(good)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "avemo_cli", "annotate", str(src), "-o",
                             str(out), "--weights", str(tiny_ckpt)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            # as from a terminal, even when the tests run in the background
                            # (where a shell leaves Ctrl-C ignored, and Python keeps it so)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = proc.stdout.readline()  # the first finished output
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert first.strip().endswith("take00.avemo.csv")
    assert proc.returncode == 130, (rest, err)
    assert "interrupted" in err, (rest, err)
    assert "Traceback" not in err, (rest, err)
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("avemo-manifest"))
    assert 1 <= len(written) < 12
    assert all(n.endswith(".avemo.csv") for n in written)
    for name in written:  # complete files only, no temporary leftovers
        assert len(pd.read_csv(out / name)) == 200


def test_default_model_annotates_the_bundled_sample(tmp_path, monkeypatch):
    """README command 1: the shipped model, no --weights, on examples/sample.mp4."""
    from pathlib import Path

    from avemo_cli.checkpoint import load_checkpoint, resolve_weights

    monkeypatch.delenv("AVEMO_WEIGHTS", raising=False)
    sample = Path(__file__).resolve().parents[1] / "examples" / "sample.mp4"
    ck = load_checkpoint(resolve_weights(None))
    assert ck.config.modality == "av"
    assert ck.path.stat().st_size < 25e6
    assert "ferplus_test" in ck.provenance["metrics"]
    code, stdout, err = run("annotate", sample, "-o", tmp_path, "--plot")
    assert code == 0, err
    t = pd.read_csv(tmp_path / "sample.avemo.csv")
    assert len(t) == decoded_frame_count(sample) == 264
    assert t.face.mean() > 0.9
    assert t.voice.mean() > 0.9
    assert np.isfinite(t.valence).all()
    assert t.valence.abs().max() <= 1
    assert (tmp_path / "sample.avemo.png").exists()


def test_unusable_output_folder_fails_before_any_work(tmp_path, tiny_ckpt, monkeypatch):
    from avemo_cli.batch import AnnotateOptions, annotate_files
    from avemo_cli.errors import OutputError
    from avemo_cli.pipeline import Annotator

    video = make_synthetic_video(tmp_path / "v.mp4", seconds=2.0)
    afile = tmp_path / "afile"
    afile.write_text("x")
    analysed = []
    monkeypatch.setattr(Annotator, "annotate", lambda *a, **k: analysed.append(a))
    for out, why in [(afile, "(it is a file, not a folder)"),
                     (afile / "sub" / "dir", f"({afile} in its path is a file, not a folder)"),
                     (Path("/proc/avemo-out"), "cannot write outputs there (/proc:")]:
        code, stdout, err = run("annotate", video, "-o", out, "--weights", tiny_ckpt)
        assert code == 2, err
        assert err.strip() == err.strip().splitlines()[0], err
        assert f"{out}: cannot write outputs there" in err
        assert why in err
        assert not stdout
        with pytest.raises(OutputError):
            annotate_files([video], AnnotateOptions(output_dir=out, weights=str(tiny_ckpt)))
    assert not analysed
    ok = tmp_path / "new" / "nested"
    monkeypatch.undo()
    code, stdout, err = run("annotate", video, "-o", ok, "--weights", tiny_ckpt, "-q")
    assert code == 0
    assert (ok / "v.avemo.csv").exists()
    assert not list(tmp_path.rglob(".avemo-write-check-*"))


def test_audio_too_short_to_describe_is_a_one_line_error(tmp_path, tiny_audio_ckpt):
    """A blip of 30 ms (less than one of eGeMAPS' 60 ms frames: a click) is refused; a 0.8 s tone
    is annotated (a word's length: tests/test_audio.py has a real word)."""
    from conftest import ffmpeg

    wav = tmp_path / "blip.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=0.03", "-ar", "16000", str(wav))
    code, stdout, err = run("annotate", wav, "-o", tmp_path, "--weights", tiny_audio_ckpt, "-q")
    assert code == 1
    assert not stdout
    assert "blip.wav: its audio (0.03 s) is too short to describe (under 0.1 s)" in err
    assert "Segment too short" not in err
    assert "Traceback" not in err
    assert not (tmp_path / "blip.avemo.csv").exists()
    tone = tmp_path / "tone.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=0.8", "-ar", "16000", str(tone))
    code, stdout, err = run("annotate", tone, "-o", tmp_path, "--weights", tiny_audio_ckpt, "-q")
    assert code == 0, err
    assert (tmp_path / "tone.avemo.csv").exists()


def test_a_rerun_cleans_what_a_killed_run_left(tmp_path, tiny_ckpt):
    video = make_synthetic_video(tmp_path / "v.mp4", seconds=2.0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    out = tmp_path / "out"
    out.mkdir()
    left = [out / f".v.avemo.csv.tmp{dead}", out / f".v.avemo.png.tmp{dead}.png"]
    for p in left:
        p.write_text("half-written")
    code, stdout, err = run("annotate", video, "-o", out, "--weights", tiny_ckpt, "--plot", "-q")
    assert code == 0, err
    assert (out / "v.avemo.csv").exists()
    assert (out / "v.avemo.png").exists()
    assert not any(p.exists() for p in left)


def _bad_inputs(tmp: Path, tiny: Path) -> list[tuple[list, int]]:
    """(arguments, documented exit status) of things a user gets wrong, for every subcommand."""
    tmp.mkdir(parents=True, exist_ok=True)
    video = make_synthetic_video(tmp / "v.mp4", seconds=1)
    a_file = tmp / "a_file.txt"
    a_file.write_text("not a folder\n")
    text_ckpt = tmp / "broken.safetensors"
    text_ckpt.write_text("not a checkpoint\n")
    bad_json = tmp / "model.json"
    bad_json.write_text("{not json")
    preds, gold, empty_pred = tmp / "pred", tmp / "gold", tmp / "pred_empty"
    for d in (preds, gold, empty_pred):
        d.mkdir(exist_ok=True)
    (gold / "s.csv").write_text("time,valence,arousal\n0.0,0.1,0.2\n0.1,0.2,0.3\n")
    (empty_pred / "s.avemo.csv").write_text("")
    out = tmp / "out"
    return [
        (["annotate", tmp / "missing.mp4", "-o", out, "--weights", tiny], 1),
        (["annotate", a_file, "-o", out, "--weights", tiny], 1),
        (["annotate", video, "-o", out, "--weights", tiny, "--device", "tpu"], 2),
        (["annotate", video, "-o", out, "--weights", tiny, "--device", "cuda"], 2),
        (["annotate", tmp, "-o", out, "--weights", tiny, "--device", "cuda", "--jobs", "auto"],
         2),  # (a folder on CUDA: one model fed by every core but one)
        (["annotate", video, "-o", a_file, "--weights", tiny], 2),
        (["annotate", video, "-o", out, "--weights", tmp / "nope.safetensors"], 2),
        (["annotate", video, "-o", out, "--weights", text_ckpt], 2),
        (["annotate", video, "-o", out, "--weights", tiny, "--stride", "0"], 2),
        (["annotate", "-o", out], 2),
        (["annotate", video, "-o", out, "--no-such-option"], 2),
        (["train", "--data", tmp / "missing", "-o", out], 2),
        (["train", "--data", tmp, "-o", out, "--device", "tpu"], 2),
        (["train", "--data", tmp, "-o", out, "--config", bad_json], 2),
        (["train", "--data", tmp, "-o", out, "--layout", "sewa"], 2),
        (["eval", "--pred", preds], 2),
        (["eval", "--pred", empty_pred, "--gold", gold], 2),
        (["eval", "--data", tmp, "--weights", tiny, "--device", "cuda:7"], 2),
        (["eval", "--data", tmp, "--weights", tmp / "nope.safetensors", "-o", out], 2),
        (["extract", "--data", tmp / "missing"], 2),
        (["extract", "--data", tmp, "--device", "tpu"], 2),
        (["extract", "--data", tmp, "--modality", "smell"], 2),
    ]


def test_every_subcommand_answers_bad_input_with_one_line(tmp_path, tiny_ckpt, monkeypatch):
    """The bad-input corpus: one line on stderr (``avemo: error: ...``), no traceback, the
    documented exit status, and nothing written."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this CPU machine
    cases = _bad_inputs(tmp_path / "in", tiny_ckpt)
    for args, status in cases:
        code, stdout, stderr = run(*args)
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        shown = " ".join(str(a) for a in args)
        assert code == status, (shown, code, stderr)
        assert len(lines) == 1, (shown, stderr)
        assert lines[0].startswith("avemo: error: "), (shown, stderr)
        assert "Traceback" not in stderr, (shown, stdout)
        assert stdout == "", (shown, stdout)
        out = tmp_path / "in" / "out"  # nothing but the run's manifest (what failed, and why)
        assert not out.exists() or not [p for p in out.rglob("*")
                                        if not p.name.startswith("avemo-manifest")], shown


def test_the_console_entry_exits_fast_with_every_status_and_output(tiny_ckpt, tmp_path):
    """``python -m avemo_cli`` (as the ``avemo`` script) ends with os._exit after flushing:
    stdout and stderr arrive whole and the status is the command's."""
    video = make_synthetic_video(tmp_path / "tone.mp4", seconds=2.0)
    cases = [(["--version"], 0, "avemo, version"),
             (["annotate", str(tmp_path / "missing.mp4"), "-q"], 1, ""),
             (["annotate", str(video), "--format", "bogus"], 2, ""),
             # an error after the input's features were begun in another process: that process
             # is ended with the command (nothing left holding stdout, no hang)
             (["annotate", str(video), "--device", "tpu"], 2, ""),
             (["annotate", str(video), "--weights", str(tiny_ckpt), "-o", str(tmp_path / "o"),
               "-q"], 0, str(tmp_path / "o" / "tone.avemo.csv"))]
    for args, status, out in cases:
        proc = subprocess.run([sys.executable, "-m", "avemo_cli", *args], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == status, (args, proc.stderr)
        assert out in proc.stdout
        if status:  # one line: no leaked-semaphore warnings of a process begun early
            assert proc.stderr.startswith("avemo: error:"), proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_face_models_load_once_whoever_asks_first(monkeypatch):
    import threading

    from avemo_cli import faces

    made = []

    def slow(name, device="cpu"):
        made.append(name)
        time.sleep(0.2)
        return object()

    monkeypatch.setattr(faces, "make_backend", slow)
    monkeypatch.setattr(faces, "_LOADED", {})
    faces.preload("stand-in")
    got = []
    threads = [threading.Thread(target=lambda: got.append(faces.shared_backend("stand-in")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert made == ["stand-in"]
    assert len(got) == 3
    assert got[0] is got[1] is got[2]


def test_odd_inputs_get_a_clear_word(tmp_path, tiny_ckpt):
    """A pipe is not a regular file; a 2x2 px video is annotated from its audio with a notice;
    --overlay on an audio file says there is none; a line break in a name stays on one
    stdout line."""
    import os

    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    code, stdout, err = run("annotate", fifo, "-o", tmp_path / "o1", "--weights", tiny_ckpt)
    assert code == 1, err
    assert "not a regular file" in err, err
    assert "0 bytes" not in err, err
    tiny = make_synthetic_video(tmp_path / "tiny.mp4", seconds=3.0, size="2x2")
    code, stdout, err = run("annotate", tiny, "-o", tmp_path / "o2", "--weights", tiny_ckpt)
    assert code == 0, err
    assert ("its picture is 2x2 pixels, too small to hold a face: annotated " \
        "from its audio alone" in err), err
    t = pd.read_csv(tmp_path / "o2" / "tiny.avemo.csv")
    assert t.voice.mean() > 0.9
    assert (t.face == 0).all()
    wav = shared_file("emodb", "03a01Fa.wav")
    code, stdout, err = run("annotate", wav, "-o", tmp_path / "o3", "--weights", tiny_ckpt,
                            "--overlay")
    assert code == 0, err
    assert "no mp4 output for an audio file" in err, err
    odd = tmp_path / "two\nlines.mp4"
    shutil.copy(tiny, odd)
    code, stdout, err = run("annotate", odd, "-o", tmp_path / "o4", "--weights", tiny_ckpt, "-q")
    assert code == 0, stdout
    assert stdout.count("\n") == 1, stdout
    assert json.loads(stdout.strip()) == str(tmp_path / "o4" / "two\nlines.avemo.csv")


def test_an_unwritable_output_folder_is_found_before_torch_is_imported(tmp_path, tiny_ckpt):
    """The output location is checked first: the error comes before the model (and torch)
    would load, and no extraction process is left to warn of leaked semaphores."""
    video = make_synthetic_video(tmp_path / "v.mp4", seconds=2.0)
    afile = tmp_path / "afile"
    afile.write_text("x")
    script = ("import sys\nfrom avemo_cli.cli import main\n"
              "try:\n    main(sys.argv[1:], prog_name='avemo')\n"
              "except SystemExit as e:\n    print('torch' in sys.modules, e.code)\n")
    proc = subprocess.run([sys.executable, "-c", script, "annotate", str(video), "-o",
                           str(afile), "--weights", str(tiny_ckpt)], capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.split() == ["False", "2"], (proc.stdout, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "is a file" in proc.stderr


def test_a_folder_holding_its_own_outputs_is_not_annotated_again(tmp_path, tiny_ckpt,
                                                                 monkeypatch):
    """``cd d; avemo annotate . -o ./out --format csv,mp4`` twice: the overlay video and
    everything in -o are avemo's, not inputs (no ``k3.avemo.avemo.mp4``)."""
    make_synthetic_video(tmp_path / "k3.mp4", seconds=2.0)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        code, stdout, err = run("annotate", ".", "-o", "./out", "--weights", tiny_ckpt, "-q",
                                "--format", "csv,mp4")
        assert code == 0, err
    made = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.avemo.*"))
    assert made == ["out/k3.avemo.csv", "out/k3.avemo.mp4"], made
    code, stdout, err = run("annotate", ".", "-o", ".", "--weights", tiny_ckpt, "-q",
                            "--format", "csv,mp4")
    assert "k3.avemo.avemo" not in stdout + err
    assert not list(tmp_path.glob("*.avemo.avemo.*"))


@pytest.mark.parametrize("shell", ["| head -n 1 > /dev/null", ">&-"],
                         ids=["pipe ended early", "stdout closed"])
def test_a_closed_stdout_stops_the_names_not_the_work(tmp_path, tiny_audio_ckpt, shell):
    import shlex
    import shutil
    import subprocess
    import sys

    names = ["03a01Fa", "03a01Nc", "03a01Wa"]
    for name in names:
        shutil.copy(shared_file("emodb", f"{name}.wav"), tmp_path / f"{name}.wav")
    avemo = shlex.join([sys.executable, "-m", "avemo_cli", "annotate",
                        *(str(tmp_path / f"{n}.wav") for n in names), "-o", str(tmp_path / "o"),
                        "--weights", str(tiny_audio_ckpt), "-q"])
    proc = subprocess.run(["bash", "-c", f"{avemo} 2> {tmp_path / 'err'} {shell}; "
                                         f"echo ${{PIPESTATUS[0]}}"],
                          capture_output=True, text=True, timeout=300)
    err = (tmp_path / "err").read_text()
    assert proc.stdout.split()[-1] == "0", err
    assert "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "o").glob("*.avemo.csv")) == \
        [f"{n}.avemo.csv" for n in names]
    records = [json.loads(line) for line in
               (tmp_path / "o" / "avemo-manifest.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok"] * 3


def test_small_things_a_newcomer_meets(tmp_path, tiny_audio_ckpt):
    """An audio file asked only for an overlay is one error line (it said "skip: None exists"
    and counted as skipped); the API's report lists every file written; ``--jobs`` above the
    cores is capped, saying so; ``avemo status`` gives seconds of media in seconds."""
    import os

    from avemo_cli.batch import AnnotateOptions, annotate_files

    wav = shared_file("emodb", "03a01Fa.wav")
    code, stdout, err = run("annotate", wav, "-o", tmp_path / "a", "--weights",
                            tiny_audio_ckpt, "--format", "mp4")
    assert code == 1, err
    assert "03a01Fa.wav: none of the outputs asked for (mp4) can be made of an audio file" in err
    assert "skip" not in err
    report = annotate_files([wav], AnnotateOptions(output_dir=tmp_path / "b",
                                                   formats=("csv", "vtt"),
                                                   weights=str(tiny_audio_ckpt)))
    assert [p.name for p in report.files] == ["03a01Fa.avemo.csv", "03a01Fa.avemo.vtt"]
    assert [p.name for p in report.written] == ["03a01Fa.avemo.csv"]
    many = str((os.cpu_count() or 1) + 997)
    code, _, err = run("annotate", wav, "-o", tmp_path / "c", "--weights", tiny_audio_ckpt,
                       "--jobs", many, "-q")
    assert code == 0, err
    assert f"--jobs {many}: " in err
    code, stdout, err = run("status", tmp_path / "c")
    seconds = probe(wav).duration
    assert f"media annotated: {seconds:.1f} s at" in stdout, stdout
