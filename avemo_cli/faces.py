"""Stage 3 — faces: detect, take 68 landmarks, track between steps, align and crop.

Backends share one small interface (``FaceBackend``): ``detect`` returns face boxes in a frame,
``landmarks`` returns the 68 iBUG points for a box. ``dlib`` (default; the paper's detector) runs
offline from the dlib-bin and face-recognition-models wheels. ``fan`` (face-alignment) is
optional; its weights come from ``$TORCH_HOME/hub/checkpoints`` or are downloaded on first use.

Tracking: at every step the landmarks are predicted inside the previous step's box and the box is
moved onto them; the full-frame detector runs only when there is no track, when the tracked box
jumps implausibly (tracking lost), or every ``detect_every`` steps to confirm the face is still
there. One face per video (``track_faces``): a new track starts on the largest face; a
re-detection keeps the face that overlaps the current track.

Several faces (``track_people``, ``--max-faces N``): the same tracking per face, and an identity
per *person*, decided by dlib's face-recognition ResNet (128-d descriptors, offline in
face-recognition-models; ``Describer``). A face is described when its track starts: after the
face first appears, after its track was lost, and after a cut (the picture changes at once,
``CUT_LEVEL``), when every face is re-detected and described again. The description is compared
with every person seen so far: within ``SAME_PERSON`` (dlib's 0.6 Euclidean distance) of a
person's mean descriptor it is that person (the nearest), else a new person. Between those
moments a face keeps its identity by continuity (landmark tracking, and overlap IoU >= 0.3 with
its last box at the periodic re-detections), and every ``VERIFY_EVERY``-th re-detection
describes the tracked faces again: one that is no longer its person (two people changed places
without a cut) is lost there and matched anew, so such a change is wrong for ~8 s at most. At
the end, two people who never appear at the same step and whose mean descriptors are within
``SAME_PERSON`` are merged (one person the descriptor split in two, e.g. under other light),
and the ``max_faces`` people seen at the most steps are kept, numbered by how many steps they
were seen (face 0 the most).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
import threading
from concurrent.futures import Future
from typing import Iterable, Protocol

import numpy as np

from .align import align_face
from .errors import AvemoError

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in frame pixels


class FaceBackend(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Box]: ...

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray: ...


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


@dataclass
class FaceTrack:
    """Per analysis step: the aligned crop, whether a face was found, and where."""

    crops: np.ndarray  # (K, S, S) or (K, S, S, 3) uint8; zeros where no face
    found: np.ndarray  # (K,) bool
    boxes: np.ndarray  # (K, 4) float, analysis-frame pixels; NaN where no face
    landmarks: np.ndarray  # (K, 68, 2) float32, analysis-frame pixels; NaN where no face
    matrices: np.ndarray  # (K, 2, 3) analysis frame -> crop; NaN where no face
    frame_size: tuple[int, int] = (0, 0)  # analysis frame (width, height)
    detections: int = 0  # full-frame detector runs
    tracked: int = 0  # steps whose face came from tracking alone

    @classmethod
    def empty(cls, crop_size: int, frame_size: tuple[int, int] = (0, 0), detections: int = 0,
              tracked: int = 0) -> "FaceTrack":
        """A track of no steps (no frames were read)."""
        return cls(np.zeros((0, crop_size, crop_size), np.uint8), np.zeros(0, bool),
                   np.zeros((0, 4)), np.zeros((0, 68, 2), np.float32), np.zeros((0, 2, 3)),
                   frame_size, detections, tracked)


def box_area(b: Box) -> float:
    """Area of an (x0, y0, x1, y1) box (0 when empty)."""
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def iou(a: Box, b: Box) -> float:
    inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def _lm_frame(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = lm.min(0), lm.max(0)
    return (lo + hi) / 2, np.maximum(hi - lo, 1.0)


def _relation(box: Box, lm: np.ndarray) -> np.ndarray:
    """The detector box expressed relative to the landmarks' bounding box (centre offset and size,
    in units of the landmark box), so tracking can place a detector-like box on new landmarks."""
    c, s = _lm_frame(lm)
    bc = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    bs = np.array([box[2] - box[0], box[3] - box[1]])
    return np.concatenate([(bc - c) / s, bs / s])


def _box_on(lm: np.ndarray, rel: np.ndarray) -> Box:
    c, s = _lm_frame(lm)
    bc = c + rel[:2] * s
    half = rel[2:] * s / 2
    return (bc[0] - half[0], bc[1] - half[1], bc[0] + half[0], bc[1] + half[1])


def _plausible(new: Box, old: Box, shape: tuple[int, ...]) -> bool:
    h, w = shape[:2]
    cx, cy = (new[0] + new[2]) / 2, (new[1] + new[3]) / 2
    ratio = (box_area(new) / box_area(old)) ** 0.5 if box_area(old) > 0 else 0.0
    return 0 <= cx < w and 0 <= cy < h and 0.8 <= ratio <= 1.25 and iou(new, old) >= 0.5


TURNS = {1: "90 degrees counter-clockwise", 2: "180 degrees", 3: "90 degrees clockwise"}


def turn_with_faces(frames: list[np.ndarray], backend: FaceBackend) -> int | None:
    """Quarter turns (counter-clockwise, as ``np.rot90``) under which ``backend`` finds a face
    in any of ``frames``: 0 as they are, else the first of 1, 3, 2 that does; None if none."""
    for k in (0, 1, 3, 2):
        if any(backend.detect(np.ascontiguousarray(np.rot90(f, k))) for f in frames):
            return k
    return None


class _Rows:
    """Rows appended into one preallocated array (grown by doubling if the expected count is
    passed): no list of small arrays and no final copy of them all."""

    def __init__(self, shape: tuple, dtype, capacity: int):
        self.data = np.empty((max(1, capacity),) + shape, dtype)
        self.n = 0

    def append(self, row) -> None:
        if self.n == len(self.data):
            self.data = np.concatenate([self.data, np.empty_like(self.data)])
        self.data[self.n] = row
        self.n += 1

    def array(self) -> np.ndarray:
        return self.data[: self.n]


def track_faces(frames: Iterable[np.ndarray], backend: FaceBackend, crop_size: int,
                detect_every: int = 8, expected: int = 0) -> FaceTrack:
    """Run detection, landmarks, tracking and alignment over a stream of analysis frames.

    Memory holds one frame at a time plus the small per-step crops (room for ``expected``
    steps is made up front).
    """
    rows: dict[str, _Rows] | None = None
    box: Box | None = None
    rel: np.ndarray | None = None  # the box relative to the landmarks, at the last detection
    last_detect = -10 ** 9
    detections = tracked = 0
    frame_size = (0, 0)
    for k, frame in enumerate(frames):
        frame_size = (frame.shape[1], frame.shape[0])
        if rows is None:
            rows = {"crops": _Rows((crop_size, crop_size) + frame.shape[2:], np.uint8, expected),
                    "found": _Rows((), bool, expected),
                    "boxes": _Rows((4,), np.float64, expected),
                    "landmarks": _Rows((68, 2), np.float32, expected),
                    "matrices": _Rows((2, 3), np.float64, expected)}
        lm = None
        if box is not None and rel is not None and k - last_detect < detect_every:
            lm = backend.landmarks(frame, box)
            new_box = _box_on(lm, rel)
            if _plausible(new_box, box, frame.shape):
                box = new_box
                tracked += 1
            else:
                lm = None
        if lm is None:
            candidates = backend.detect(frame)
            detections += 1
            last_detect = k
            if box is not None:
                keep = [b for b in candidates if iou(b, box) >= 0.3]
                candidates = keep or candidates
            if candidates:
                box = max(candidates, key=box_area)
                lm = backend.landmarks(frame, box)
                rel = _relation(box, lm)
            else:
                box = None
        row: dict[str, object]
        if lm is None:
            row = {"crops": 0, "found": False, "boxes": np.nan, "landmarks": np.nan,
                   "matrices": np.nan}
        else:
            crop, m = align_face(frame, lm, crop_size)
            row = {"crops": crop, "found": True, "boxes": box, "landmarks": lm, "matrices": m}
        for name, value in row.items():
            rows[name].append(value)
    if rows is None:
        return FaceTrack.empty(crop_size, frame_size, detections, tracked)
    return FaceTrack(**{name: r.array() for name, r in rows.items()}, frame_size=frame_size,
                     detections=detections, tracked=tracked)


SAME_PERSON = 0.6  # dlib's descriptor distance below which two faces are one person
CUT_LEVEL = 24.0  # mean absolute change of grey level (0-255) between steps that marks a cut
VERIFY_EVERY = 4  # every 4th full detection (~8 s by default) re-describes the tracked faces


def _recognition_model_path() -> str:
    return os.path.join(os.path.dirname(_predictor_path()),
                        "dlib_face_recognition_resnet_model_v1.dat")


class Describer:
    """dlib's face-recognition ResNet: a 128-d descriptor of a face from its 68 landmarks
    (faces of one person lie within ``SAME_PERSON`` of each other). ~70 ms a face here."""

    def __init__(self):
        import dlib

        path = _recognition_model_path()
        if not os.path.exists(path):
            raise AvemoError(f"{path}: dlib face-recognition model missing (needed by "
                             f"--max-faces above 1)")
        self._dlib = dlib
        self._net = dlib.face_recognition_model_v1(path)

    def describe(self, image: np.ndarray, box: Box, landmarks: np.ndarray) -> np.ndarray:
        d = self._dlib
        rect = d.rectangle(*(int(round(v)) for v in box))
        shape = d.full_object_detection(rect, [d.point(int(round(x)), int(round(y)))
                                               for x, y in landmarks])
        rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
        return np.array(self._net.compute_face_descriptor(np.ascontiguousarray(rgb), shape),
                        dtype=np.float64)


class _Person:
    """One person's track while ``track_people`` runs: rows by step, identity evidence."""

    def __init__(self, pid: int):
        self.pid = pid
        self.box: Box | None = None  # where the face is now (None: not tracked now)
        self.rel: np.ndarray | None = None
        self.descriptors = np.zeros(128)
        self.described = 0
        self.rows: dict[int, tuple[np.ndarray, Box, np.ndarray, np.ndarray]] = {}

    def add_descriptor(self, d: np.ndarray) -> None:
        self.descriptors += d
        self.described += 1

    @property
    def descriptor(self) -> np.ndarray | None:
        return self.descriptors / self.described if self.described else None

    def distance(self, d: np.ndarray) -> float:
        mine = self.descriptor
        return float(np.linalg.norm(mine - d)) if mine is not None else np.inf


def track_people(frames: Iterable[np.ndarray], backend: FaceBackend, crop_size: int,
                 max_faces: int, describer: Describer, detect_every: int = 8
                 ) -> list[FaceTrack]:
    """Up to ``max_faces`` people through a stream of analysis frames, each a ``FaceTrack``
    over every step (see the module docstring for how identities are decided)."""
    people: list[_Person] = []
    last_detect = -10 ** 9
    previous: np.ndarray | None = None
    frame_size, n, detections, tracked = (0, 0), 0, 0, 0
    for k, frame in enumerate(frames):
        n, frame_size = k + 1, (frame.shape[1], frame.shape[0])
        small = frame[::8, ::8].astype(np.float32)
        cut = previous is not None and float(np.abs(small - previous).mean()) > CUT_LEVEL
        previous = small
        active = [p for p in people if p.box is not None]
        if cut:
            for p in active:
                p.box = None
            active = []
        lost = False
        if k - last_detect < detect_every:
            for p in active:
                assert p.box is not None and p.rel is not None
                lm = backend.landmarks(frame, p.box)
                new_box = _box_on(lm, p.rel)
                if _plausible(new_box, p.box, frame.shape):
                    p.box = new_box
                    p.rows[k] = (lm, new_box, *align_face(frame, lm, crop_size))
                    tracked += 1
                else:
                    p.box, lost = None, True
        if lost or cut or not active or k - last_detect >= detect_every:
            detections += 1
            last_detect = k
            _detect_people(frame, k, people, backend, describer, crop_size, max_faces,
                           verify=detections % VERIFY_EVERY == 0)
    return _finish_people(people, n, crop_size, frame_size, max_faces, detections, tracked)


def _detect_people(frame: np.ndarray, k: int, people: list[_Person], backend: FaceBackend,
                   describer: Describer, crop_size: int, max_faces: int,
                   verify: bool = False) -> None:
    """A full-frame detection at step ``k``: tracked faces keep their identity by overlap
    (checked by their descriptor when ``verify``); the others are described and matched to
    the people seen so far, or start a new one."""
    candidates = sorted(backend.detect(frame), key=box_area, reverse=True)
    free = list(range(len(candidates)))
    for p in [p for p in people if p.box is not None]:  # tracked up to (or at) this step
        last: Box = p.box  # type: ignore[assignment]
        best = max(free, key=lambda i: iou(candidates[i], last), default=None)
        if best is None or iou(candidates[best], last) < 0.3:
            p.box = None  # not found again: lost
            p.rows.pop(k, None)
            continue
        lm = backend.landmarks(frame, candidates[best])
        if verify:  # another person in this place (no cut between): let the face be matched
            d = describer.describe(frame, candidates[best], lm)
            if p.distance(d) >= SAME_PERSON:
                p.box = None
                p.rows.pop(k, None)
                continue
            p.add_descriptor(d)
        free.remove(best)
        _place(p, frame, k, candidates[best], lm, crop_size)
    busy = {p.pid for p in people if p.box is not None}
    for i in free:
        if len(busy) >= max_faces:
            break
        box = candidates[i]
        lm = backend.landmarks(frame, box)
        d = describer.describe(frame, box, lm)
        known = [p for p in people if p.pid not in busy and p.distance(d) < SAME_PERSON]
        person = min(known, key=lambda p: p.distance(d)) if known else _Person(len(people))
        if not known:
            people.append(person)
        person.add_descriptor(d)
        _place(person, frame, k, box, lm, crop_size)
        busy.add(person.pid)


def _place(p: _Person, frame: np.ndarray, k: int, box: Box, lm: np.ndarray,
           crop_size: int) -> None:
    p.box, p.rel = box, _relation(box, lm)
    p.rows[k] = (lm, box, *align_face(frame, lm, crop_size))


def _finish_people(people: list[_Person], n: int, crop_size: int, frame_size: tuple[int, int],
                   max_faces: int, detections: int, tracked: int) -> list[FaceTrack]:
    merged: list[_Person] = []
    for p in sorted(people, key=lambda p: -len(p.rows)):
        same = next((q for q in merged if q.descriptor is not None and p.descriptor is not None
                     and q.distance(p.descriptor) < SAME_PERSON
                     and not set(q.rows) & set(p.rows)), None)
        if same is None:
            merged.append(p)
        else:
            same.rows.update(p.rows)
            same.descriptors += p.descriptors
            same.described += p.described
    kept = sorted(merged, key=lambda p: -len(p.rows))[:max_faces]
    tracks = []
    for p in kept:
        t = FaceTrack(np.zeros((n, crop_size, crop_size), np.uint8), np.zeros(n, bool),
                      np.full((n, 4), np.nan), np.full((n, 68, 2), np.nan, np.float32),
                      np.full((n, 2, 3), np.nan), frame_size, detections, tracked)
        for k, (lm, box, crop, m) in p.rows.items():
            t.crops[k], t.found[k], t.boxes[k], t.landmarks[k], t.matrices[k] = \
                crop, True, box, lm, m
        tracks.append(t)
    return tracks
