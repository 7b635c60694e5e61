"""Process pools (workers.py): a stop (Ctrl-C, SIGTERM) of annotate, extract or train is one
line and the right status (130, 143), finished inputs keep their records and none is marked
failed by the stop, and a killed parent leaves no process of ours."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import make_synthetic_video, manifest_records

STOPS = [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
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


def _gone_within(pids: list[int], seconds: float) -> list[int]:
    """The processes of ``pids`` still alive after waiting up to ``seconds``."""
    deadline = time.time() + seconds
    while any(map(_alive, pids)) and time.time() < deadline:
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Eight 3 s test-pattern videos with a tone: a --jobs 2 run of a few seconds."""
    root = tmp_path_factory.mktemp("clips")
    for i in range(8):
        make_synthetic_video(root / f"clip{i}.mp4", seconds=3.0)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A categorical corpus (<partition>/<emotion>/) of twelve 6 s test-pattern videos: a
    feature extraction of several seconds with --jobs 2."""
    root = tmp_path_factory.mktemp("stop-corpus")
    for i in range(12):
        folder = root / ("train" if i < 8 else "devel") / ("happiness" if i % 2 else "sadness")
        folder.mkdir(parents=True, exist_ok=True)
        make_synthetic_video(folder / f"clip{i}.mp4", seconds=6.0)
    return root


def _start(args: list, until: Callable[[subprocess.Popen], bool], what: str
           ) -> subprocess.Popen:
    """``avemo ARGS`` in a process group of its own (as a terminal or a scheduler starts it),
    once ``until(proc)`` holds (mid-run)."""
    proc = subprocess.Popen([sys.executable, "-m", "avemo_cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 90
    while not until(proc) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None or not until(proc):
        proc.kill()
        pytest.fail(f"never {what} (exit status {proc.poll()}): {proc.communicate()[1]}")
    return proc


def _stopped(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    """Send ``sig`` to the whole process group (a terminal's Ctrl-C, SLURM's SIGTERM): the
    exit status and stderr."""
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def _recorded(out: Path) -> bool:
    """Whether a first input's outputs are written and its record is in the manifest."""
    manifest = out / "avemo-manifest.jsonl"
    return manifest.exists() and '"status": "ok"' in manifest.read_text()


def _annotating_jobs(clips: Path, out: Path, ckpt: Path, mode: str) -> subprocess.Popen:
    return _start(["annotate", clips, "-o", out, "--weights", ckpt, "--jobs", "2", "-q", mode],
                  lambda _: _recorded(out), "finished a first input")


@pytest.mark.parametrize("sig, code, word", STOPS, ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("mode", ["--model-per-job", "--one-model"])
def test_a_stop_of_annotate_jobs_is_one_line_and_keeps_finished_records(
        clips, tmp_path, tiny_ckpt, mode, sig, code, word):
    out = tmp_path / "out"
    proc = _annotating_jobs(clips, out, tiny_ckpt, mode)
    status, err = _stopped(proc, sig)
    assert status == code, err
    said = [ln for ln in err.strip().splitlines() if "no face found" not in ln]  # (each test
    assert len(said) == 1, err  # pattern finished says it has no face: warnings, not the stop)
    assert word in err, err
    assert "leaked" not in err, err
    records = manifest_records(out / "avemo-manifest.jsonl")
    assert [r for r in records if r["status"] == "failed"] == [], "the stop failed an input"
    recorded = {Path(r["outputs"][0]).name for r in records if r["status"] == "ok"}
    assert recorded, "finished inputs keep their records"
    on_disk = {p.name for p in out.glob("*.avemo.csv")}
    assert recorded <= on_disk
    # (an input whose outputs were written as the stop came, before its record: a re-run
    # finds them and records it as skipped, never failed)
    assert len(on_disk - recorded) <= 2, on_disk - recorded


@pytest.mark.parametrize("sig, code, word", STOPS, ids=["ctrl-c", "sigterm"])
def test_a_stop_of_one_file_is_one_line_and_leaves_no_process(tmp_path, tiny_ckpt, sig, code,
                                                              word):
    video = make_synthetic_video(tmp_path / "long.mp4", seconds=90.0, size="320x240")
    out = tmp_path / "out"  # (about 8 s of work here)
    began = time.time()
    proc = _start(["annotate", video, "-o", out, "--weights", tiny_ckpt, "-q"],
                  lambda p: time.time() - began > 2.5, "ran for 2.5 s")  # extraction under way
    ours = _children(proc.pid)
    status, err = _stopped(proc, sig)
    assert status == code, err
    assert len(err.strip().splitlines()) == 1, err
    assert word in err, err
    assert not list(out.glob("*.avemo.csv")), "nothing half-done is written"
    manifest = out / "avemo-manifest.jsonl"  # (not there if it stopped while the model loaded)
    records = manifest_records(manifest) if manifest.exists() else []
    assert [r for r in records if r["status"] == "failed"] == [], "the stop failed the input"
    assert _gone_within(ours, 5) == []


@pytest.mark.parametrize("mode", ["--model-per-job", "--one-model"])
def test_kill_9_of_annotate_leaves_no_worker(clips, tmp_path, tiny_ckpt, mode):
    proc = _annotating_jobs(clips, tmp_path / "out", tiny_ckpt, mode)
    workers = _children(proc.pid)
    assert workers, "no worker processes were seen"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert _gone_within(workers, 5) == []


def _extracting(command: str, corpus: Path, tmp_path: Path) -> subprocess.Popen:
    """``avemo extract`` or ``avemo train`` of ``corpus`` with --jobs 2, once its processes
    have put a first file's features in the cache."""
    cache = tmp_path / "cache"
    args = [command, "--data", corpus, "--layout", "categorical", "--jobs", "2", "--cache",
            cache, "-q"]
    if command == "train":
        args += ["-o", tmp_path / "run", "--epochs", "1"]
    return _start(args, lambda p: len(_children(p.pid)) >= 2 and any(cache.rglob("*.npz")),
                  "extracted a first file in its processes")


@pytest.mark.parametrize("sig, code, word", STOPS, ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("command", ["extract", "train"])
def test_a_stop_of_feature_extraction_is_one_line(corpus, tmp_path, command, sig, code, word):
    proc = _extracting(command, corpus, tmp_path)
    ours = _children(proc.pid)
    status, err = _stopped(proc, sig)
    assert status == code, err
    assert len(err.strip().splitlines()) == 1, err
    assert word in err, err
    assert _gone_within(ours, 5) == []


@pytest.mark.parametrize("command", ["extract", "train"])
def test_kill_9_of_feature_extraction_leaves_no_process(corpus, tmp_path, command):
    proc = _extracting(command, corpus, tmp_path)
    ours = _children(proc.pid)
    assert len(ours) >= 2, "the extraction processes were seen"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert _gone_within(ours, 5) == []
