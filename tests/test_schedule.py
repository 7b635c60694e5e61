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
