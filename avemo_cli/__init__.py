"""avemo: per-frame emotional valence/arousal for talking-face videos.

Read the pipeline in stage order: demux.py, audio.py, faces.py (+ align.py), speakers.py,
features.py (one file's features), model.py, checkpoint.py, predict.py, postprocess.py,
writer.py; pipeline.py joins them, early.py starts a single input before the model loads, and
batch.py runs many files. Typical use::

    import avemo_cli
    result = avemo_cli.annotate("talk.mp4", weights="model.safetensors")
    result.table            # one row per frame per face: frame, time, face_id, valence, ...
"""
__version__ = "0.1.0"

__all__ = ["__version__", "annotate", "Annotator", "annotate_files", "load_checkpoint"]


def __getattr__(name):  # lazy: `avemo --help` should not import torch
    if name in ("annotate", "Annotator"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "annotate_files":
        from .batch import annotate_files

        return annotate_files
    if name == "load_checkpoint":
        from .checkpoint import load_checkpoint

        return load_checkpoint
    raise AttributeError(name)
