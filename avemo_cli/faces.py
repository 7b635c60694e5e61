"""Stage 3a — faces: the detectors and landmark predictors (tracking.py and people.py use them).

Backends share one small interface (``FaceBackend``): ``detect`` returns face boxes in a frame,
``landmarks`` returns the 68 iBUG points for a box. ``dlib`` (default; the paper's detector) runs
offline from the dlib-bin and face-recognition-models wheels. ``fan`` (face-alignment) is
optional; its weights come from ``$TORCH_HOME/hub/checkpoints`` or are downloaded on first use.

``turn_with_faces`` tries a picture's other orientations when no face is found.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from concurrent.futures import Future
from typing import Protocol

import numpy as np

from .errors import AvemoError

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in frame pixels
DETECTABLE_PX = 80  # px: about the smallest face dlib's detector finds (at no upsampling)


class FaceBackend(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Box]: ...

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray: ...

    def score(self, image: np.ndarray) -> float:
        """How surely the detector sees a face in ``image``: its best detection's score (the
        backend's own scale, compared only with itself); ``NO_FACE`` when it sees none."""
        ...


NO_FACE = -1.0


def _predictor_path() -> str:
    """The 68-point model inside face-recognition-models, found without importing the package
    (its ``__init__`` needs pkg_resources, which current setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise AvemoError("the dlib face backend needs face-recognition-models: "
                         "pip install face-recognition-models")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models",
                        "shape_predictor_68_face_landmarks.dat")
    if not os.path.exists(path):
        raise AvemoError(f"{path}: dlib 68-point landmark model missing")
    return path


class DlibBackend:
    """dlib's HOG face detector and its 68-point shape predictor (both CPU, offline)."""

    name = "dlib"

    def __init__(self, upsample: int = 0):
        import dlib

        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(_predictor_path())
        self.upsample = upsample

    def detect(self, image: np.ndarray) -> list[Box]:
        rects = self._detector(np.ascontiguousarray(image), self.upsample)
        return [(r.left(), r.top(), r.right(), r.bottom()) for r in rects]

    def score(self, image: np.ndarray) -> float:
        # below the detector's threshold too (down to -0.5): a weak face still scores
        _, scores, _ = self._detector.run(np.ascontiguousarray(image), self.upsample, -0.5)
        return float(max(scores)) if len(scores) else NO_FACE

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        rect = self._dlib.rectangle(*(int(round(v)) for v in box))
        shape = self._predictor(np.ascontiguousarray(image), rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


class FanBackend:
    """face-alignment's FAN landmarks and its S3FD detector (optional; GPU-friendly)."""

    name = "fan"

    def __init__(self, device: str = "cpu"):
        try:
            import face_alignment
        except ImportError as exc:
            raise AvemoError("--faces fan needs the face-alignment package: "
                             "pip install 'avemo[fan]'") from exc
        kind = getattr(face_alignment.LandmarksType, "TWO_D", None) or \
            getattr(face_alignment.LandmarksType, "_2D")
        import inspect

        options: dict[str, object] = {"device": device, "face_detector": "sfd"}
        if "compile" in inspect.signature(face_alignment.FaceAlignment).parameters:
            options["compile"] = False  # torch.compile costs minutes on first use; not worth it
        try:
            self._fa = face_alignment.FaceAlignment(kind, **options)
        except Exception as exc:  # weights missing and no network, or a corrupt file
            raise AvemoError(f"face-alignment could not load its models "
                             f"(TORCH_HOME={os.environ.get('TORCH_HOME', '~/.cache/torch')}): "
                             f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _rgb(image: np.ndarray) -> np.ndarray:
        return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image

    def detect(self, image: np.ndarray) -> list[Box]:
        dets = self._fa.face_detector.detect_from_image(self._rgb(image).copy())
        return [(float(d[0]), float(d[1]), float(d[2]), float(d[3])) for d in dets]

    def score(self, image: np.ndarray) -> float:
        dets = self._fa.face_detector.detect_from_image(self._rgb(image).copy())
        return max((float(d[4]) for d in dets if len(d) > 4), default=NO_FACE)

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        out = self._fa.get_landmarks_from_image(self._rgb(image), detected_faces=[list(box)])
        return np.asarray(out[0], dtype=np.float64)[:, :2]


BACKENDS = {"dlib": DlibBackend, "fan": FanBackend}


def make_backend(name: str, device: str = "cpu") -> FaceBackend:
    if name not in BACKENDS:
        raise AvemoError(f"unknown face backend {name!r} (choose from {', '.join(BACKENDS)})")
    return BACKENDS[name](device=device) if name == "fan" else BACKENDS[name]()


_LOADED: dict[tuple[str, str], Future] = {}
_LOADING = threading.Lock()


def shared_backend(name: str, device: str = "cpu") -> FaceBackend:
    """One backend per process and kind (loading dlib's models takes ~0.7 s): for annotators
    and worker processes that analyse many files. Safe to call from several threads: the
    first call loads, the others wait for it (``preload`` starts that early)."""
    key = (name, device)
    with _LOADING:
        future = _LOADED.get(key)
        owner = future is None
        if owner:
            future = _LOADED[key] = Future()
    assert future is not None
    if owner:
        try:
            future.set_result(make_backend(name, device))
        except BaseException as exc:  # the caller that needs it raises it (and may retry)
            with _LOADING:
                _LOADED.pop(key, None)
            future.set_exception(exc)
    return future.result()


def preload(name: str, device: str = "cpu") -> None:
    """Start loading a backend in the background (e.g. while torch is imported); an error is
    raised later, by whoever asks ``shared_backend`` for it."""
    def load():
        try:
            shared_backend(name, device)
        except BaseException:
            pass

    threading.Thread(target=load, name="avemo-face-models", daemon=True).start()


TURNS = {1: "90 degrees counter-clockwise", 2: "180 degrees", 3: "90 degrees clockwise"}


def turn_with_faces(frames: list[np.ndarray], backend: FaceBackend) -> int | None:
    """The quarter turn (counter-clockwise, as ``np.rot90``) under which ``backend`` sees faces
    in ``frames`` most surely (the best mean score; a detector may also fire, more weakly, on
    a face upside down or on its side); None if no turn shows a face."""
    best, best_score = None, -np.inf
    for k in range(4):
        scores = [backend.score(np.ascontiguousarray(np.rot90(f, k))) for f in frames]
        if scores and max(scores) >= 0 and float(np.mean(scores)) > best_score:
            best, best_score = k, float(np.mean(scores))
    return best
