"""avemo: per-frame emotional valence/arousal for talking-face videos.

Read a video's way from demux to CSV in stage order: demux.py (probe, decode), audio.py
(eGeMAPS), faces.py (detectors) with tracking.py, people.py and align.py (faces over time),
speakers.py (whose voice), features.py (one file's features, for one ``FeatureSettings``),
config.py (a model's settings), model.py, checkpoint.py, predict.py (the model over clips),
postprocess.py, inference.py (features to step values to a table), utterances.py (speech by
speaker), table.py (the per-frame rows), outputs.py (every output format) and files.py (atomic
writes). pipeline.py's ``Annotator`` runs one file through them (settings.py:
``AnnotatorSettings``); batch.py runs many (``AnnotateOptions``, planning, records) with
schedule.py (one by one, extraction processes feeding one model, or a model per worker),
extractors.py (extraction processes), workers.py (every process pool: start, stop, Ctrl-C,
SIGTERM, a killed parent), manifests.py (a run's records), shards.py (job arrays) and
collect.py (a folder tree's outputs as one Parquet dataset); cli.py parses the command line.
Training and scoring: datasets.py, cache.py, clips.py (clips, batches, losses), train.py (the
loop; distributed.py), evaluate.py, metrics.py; the default model's recipes are in recipes/.
Typical use::

    import avemo_cli
    result = avemo_cli.annotate("examples/sample.mp4")   # the shipped default model
    result.table        # one row per frame per face: frame, time, face_id, valence, ...
"""
__version__ = "0.1.0"

__all__ = ["__version__", "annotate", "Annotator", "AnnotatorSettings", "annotate_files",
           "AnnotateOptions", "load_checkpoint", "collect"]


def __getattr__(name):  # lazy: `avemo --help` should not import torch
    if name in ("annotate", "Annotator"):
        from . import pipeline

        return getattr(pipeline, name)
    if name in ("annotate_files", "AnnotateOptions"):
        from . import batch

        return getattr(batch, name)
    if name == "AnnotatorSettings":
        from .settings import AnnotatorSettings

        return AnnotatorSettings
    if name == "collect":
        from .collect import collect

        return collect
    if name == "load_checkpoint":
        from .checkpoint import load_checkpoint

        return load_checkpoint
    raise AttributeError(name)
