"""How one file is annotated (``AnnotatorSettings``): the user's choices that reach the
``Annotator`` (pipeline.py), passed whole from the command line to every worker process. No
torch here: batch.py makes a file's extraction request (``FeatureSettings``) from them and a
checkpoint's header before the model is loaded."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .features import FeatureSettings

if TYPE_CHECKING:
    from .config import ModelConfig


CUES = ("seconds", "utterances")  # a subtitle cue per second of media, or per utterance


@dataclass(frozen=True, kw_only=True)
class AnnotatorSettings:
    """One annotator's settings (``avemo annotate``'s options for a file)."""

    device: str | None = "auto"  # where the networks run (inference.resolve_device)
    faces_backend: str = "dlib"  # faces.BACKENDS
    stride: int = 1  # a clip ends at every stride-th step (interpolated between)
    batch_size: int = 32  # clips per forward pass
    detect_every: int = 8  # the face detector runs at least every N steps
    max_side: int = 480  # analysis frames' longer side (pixels)
    max_faces: int = 1  # people tracked, each with a face_id
    postprocess: bool = True  # the checkpoint's post-processing (eval can skip it)
    pause: float = 0.5  # seconds: speech across a shorter pause is one utterance
    cues: str = "seconds"  # the subtitles' (vtt) cues: a cue per second, or per utterance

    def __post_init__(self):
        if self.max_faces < 1:
            raise ValueError("max_faces must be at least 1")
        if self.stride < 1 or self.batch_size < 1 or self.detect_every < 1:
            raise ValueError("stride, batch_size and detect_every must be at least 1")
        if not 0 <= self.pause <= 60:
            raise ValueError("pause must be from 0 to 60 seconds")
        if self.cues not in CUES:
            raise ValueError(f"cues must be one of {', '.join(CUES)}")

    def features(self, cfg: ModelConfig) -> FeatureSettings:
        """The extraction request of a file for a model with settings ``cfg``."""
        return FeatureSettings.for_model(cfg, faces_backend=self.faces_backend,
                                         max_side=self.max_side,
                                         detect_every=self.detect_every,
                                         max_faces=self.max_faces)
