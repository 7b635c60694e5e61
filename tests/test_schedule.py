"""How a run's files are spread (schedule.py): --jobs with a model per worker, or one model
fed by extraction processes."""
import pandas as pd


from conftest import cli as run, manifest_records, shared_file


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
    assert len(manifest_records(tmp_path / "two" / "avemo-manifest.jsonl")) == 7
    code, _, err = run("annotate", folder, "-o", tmp_path / "x", "--jobs", "0")
    assert code == 2
    assert err.startswith("avemo: error:")


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
    assert fed.failed[0][1].count("\n") == 0
    assert "broken.mp4" in fed.failed[0][1]
    for csv in one.written:
        twin = tmp_path / "fed" / csv.name
        assert twin.read_bytes() == csv.read_bytes()
    assert len(manifest_records(tmp_path / "fed" / "avemo-manifest.jsonl")) == 5


def test_an_input_replaced_while_it_is_annotated_fails_and_writes_nothing(tmp_path, tiny_ckpt):
    """A file renamed over the input while its features are being made (its first stage
    done): that input fails with one line naming the change; no output is written for it."""
    import os

    from avemo_cli.batch import AnnotateOptions, Progress, annotate_files

    from conftest import make_synthetic_video

    video = make_synthetic_video(tmp_path / "talk.mp4", seconds=3.0)
    other = make_synthetic_video(tmp_path / "other.mp4", seconds=2.0)

    class ReplaceIt(Progress):
        def stage(self, name):
            if name == "model" and other.exists():
                os.replace(other, video)

    report = annotate_files([video], AnnotateOptions(output_dir=tmp_path / "out",
                                                     weights=str(tiny_ckpt)),
                            progress=ReplaceIt())
    assert report.written == []
    assert len(report.failed) == 1
    assert "talk.mp4: the file changed while it was annotated" in report.failed[0][1]
    assert not list((tmp_path / "out").glob("*.avemo.csv"))


def test_recordings_predicted_together_are_each_predicted_as_alone():
    """``Predictor.many``: three recordings' clips share batches (up to ``batch_size`` clips
    per recording: the batch grows with what is queued), and each recording's predictions
    and attention are those it gets alone."""
    import numpy as np

    from avemo_cli.predict import Predictor, StepInputs, audio_sources
    from avemo_cli.testing.tiny_checkpoint import tiny_model

    model = tiny_model("av", seed=3)
    size = model.cfg.input_size
    rng = np.random.default_rng(0)
    inputs = []
    for n in (37, 150, 9):
        crops = rng.integers(0, 255, (n, size, size), np.uint8)
        faces = np.sort(rng.choice(n, n // 2 + 1, replace=False))  # a face at some steps only
        index = faces[np.abs(np.arange(n)[:, None] - faces[None, :]).argmin(1)]
        inputs.append(StepInputs(rng.normal(0, 10, (n, 88)).astype(np.float32), crops,
                                 rng.random(n) > 0.3, index, audio_sources(n, [(2, n - 3)], 5)))
    predictor = Predictor(model, batch_size=8)
    sizes = []
    forward = model.visual.clip_forward

    def counted(enc, feat):
        sizes.append(len(enc))
        return forward(enc, feat)

    model.visual.clip_forward = counted
    alone = [predictor.many([x]) for x in inputs]
    alone_sizes, sizes[:] = list(sizes), []
    together = predictor.many(inputs)
    assert max(alone_sizes) == 8, "alone: batches of batch_size clips"
    assert max(sizes) > 8 and len(sizes) < len(alone_sizes), sizes
    for (one,), shared in zip(alone, together):
        for field in ("values", "audio_values", "visual_values", "audio_attention",
                      "visual_attention"):
            a, b = getattr(one, field), getattr(shared, field)
            assert a.shape == b.shape
            np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), atol=1e-5,
                                       err_msg=field)
        assert (one.predicted == shared.predicted).all()


def test_extraction_processes_follow_the_cores_and_the_memory():
    """One process per core beside the model's (cores - 1), no more than --jobs asks and than
    the memory holds; always one."""
    from avemo_cli.schedule import EXTRACTOR_MIB, extraction_processes

    assert extraction_processes(16, cores=16, memory_mib=128 * 1024) == 15  # --jobs auto, a
    assert extraction_processes(4, cores=16, memory_mib=128 * 1024) == 4  # GPU box
    assert extraction_processes(1, cores=2, memory_mib=20_000) == 1
    assert extraction_processes(2, cores=2, memory_mib=20_000) == 1, "one core for the model"
    assert extraction_processes(16, cores=16, memory_mib=5 * EXTRACTOR_MIB) == 4
    assert extraction_processes(16, cores=16, memory_mib=100) == 1
    assert extraction_processes(3, cores=1, memory_mib=None) == 1


def test_schedule_chosen_for_the_device_the_count_and_the_caller():
    """A folder from the console with --jobs 1 is fed to one model (the pipeline), as is any
    folder on CUDA; the Python API's --jobs 1 spawns nothing; one file never feeds."""
    from avemo_cli.batch import AnnotateOptions
    from avemo_cli.settings import AnnotatorSettings

    console = AnnotateOptions(early=True)
    assert console.feeds("cpu", 7) and console.feeds("cuda", 7) and console.feeds("auto", 2)
    assert not console.feeds("cpu", 1), "one input: begun early, no pool"
    fan = AnnotateOptions(early=True, settings=AnnotatorSettings(faces_backend="fan"))
    assert not fan.feeds("cpu", 7), "FAN (torch) stays in the model's process"
    api = AnnotateOptions()
    assert not api.feeds("cpu", 7) and api.feeds("cuda", 7) and api.feeds("cuda:1", 7)
    assert not AnnotateOptions(jobs=2, early=True).feeds("cpu", 7), "a model per job"
    assert AnnotateOptions(jobs=2, one_model=True).feeds("cpu", 7)
    assert not AnnotateOptions(jobs=4, one_model=False).feeds("cuda", 7)


def test_files_ready_together_go_through_the_model_together(tmp_path, tiny_ckpt):
    """The feeding queue: while the model's process is busy with the first file, the other
    files' extractions finish; they then go through the model as one batch
    (``Annotator.predict_many``), and each CSV is what that file gets alone."""
    import time

    from avemo_cli import schedule, workers
    from avemo_cli.batch import AnnotateOptions, Progress, _Run, annotate_files, plan
    from avemo_cli.manifests import Manifest
    from avemo_cli.pipeline import Annotator
    from avemo_cli.settings import AnnotatorSettings

    from conftest import ffmpeg

    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(["WDA_KatieHill_000", "WDA_AlexandriaOcasioCortez_000"] * 2):
        ffmpeg("-ss", f"{i}", "-i", str(shared_file("videos", f"{name}.mp4")), "-t", "3",
               "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
               str(src / f"clip{i}.mp4"))
    annotator = Annotator(tiny_ckpt, AnnotatorSettings(device="cpu"))
    one = annotate_files([src], AnnotateOptions(output_dir=tmp_path / "one"), annotator)
    batches = []
    many = annotator.predict_many

    def counted(files):
        batches.append(len(files))
        return many(files)

    annotator.predict_many = counted

    class SlowFirst(Progress):
        def start(self, job, i, total):
            if not batches:  # the first file: the model's process is busy a while
                time.sleep(6)

    out = tmp_path / "fed"
    todo, _ = plan([src], out)
    run = _Run(Manifest(out / "avemo-manifest.jsonl"), SlowFirst(), annotator.checkpoint)
    schedule.feeding(todo, annotator, 3, run)
    run.manifest.close()
    assert workers.live() == []
    assert batches == [1, 3], batches
    assert len(run.report.written) == 4 and not run.report.failed
    for csv in one.written:
        pd.testing.assert_frame_equal(pd.read_csv(out / csv.name), pd.read_csv(csv),
                                      atol=1e-4)


def test_device_resolution_where_cuda_is_absent_or_short(monkeypatch):
    """``--device``: auto is the CPU without CUDA and CUDA with it; cuda where there is none,
    a device number past the machine's, or no device at all is a one-line error naming it."""
    import pytest
    import torch

    from avemo_cli.errors import DeviceError
    from avemo_cli.inference import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"^--device cuda: CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(DeviceError, match=r"^--device cuda:3: this machine has 1 CUDA"):
        resolve_device("cuda:3")
    with pytest.raises(DeviceError, match=r"^--device gpu: not a device"):
        resolve_device("gpu")
    for err in ("cuda", "cuda:3", "gpu"):
        try:
            monkeypatch.setattr(torch.cuda, "is_available", lambda: err != "cuda")
            resolve_device(err)
        except DeviceError as exc:
            assert "\n" not in str(exc)
