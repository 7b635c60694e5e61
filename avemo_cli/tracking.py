"""Stage 3b — one face tracked: landmarks followed between steps, aligned crops (align.py).

Tracking: at every step the landmarks are predicted inside the previous step's box and the box is
moved onto them; the full-frame detector runs only when there is no track, when the tracked box
jumps implausibly (tracking lost), or every ``detect_every`` steps to confirm the face is still
there. One face per video (``track_faces``): a new track starts on the largest face; a
re-detection keeps the face that overlaps the current track.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .align import align_face
from .faces import Box, FaceBackend


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
    upright: np.ndarray | None = None  # (checks, 2) detector scores of the first frames with
    # a face, as they are and turned 180 degrees (``upside_down``)

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


def lm_frame(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = lm.min(0), lm.max(0)
    return (lo + hi) / 2, np.maximum(hi - lo, 1.0)


def relation(box: Box, lm: np.ndarray) -> np.ndarray:
    """The detector box expressed relative to the landmarks' bounding box (centre offset and size,
    in units of the landmark box), so tracking can place a detector-like box on new landmarks."""
    c, s = lm_frame(lm)
    bc = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    bs = np.array([box[2] - box[0], box[3] - box[1]])
    return np.concatenate([(bc - c) / s, bs / s])


def box_on(lm: np.ndarray, rel: np.ndarray) -> Box:
    c, s = lm_frame(lm)
    bc = c + rel[:2] * s
    half = rel[2:] * s / 2
    return (bc[0] - half[0], bc[1] - half[1], bc[0] + half[0], bc[1] + half[1])


def plausible(new: Box, old: Box, shape: tuple[int, ...]) -> bool:
    h, w = shape[:2]
    cx, cy = (new[0] + new[2]) / 2, (new[1] + new[3]) / 2
    ratio = (box_area(new) / box_area(old)) ** 0.5 if box_area(old) > 0 else 0.0
    return 0 <= cx < w and 0 <= cy < h and 0.8 <= ratio <= 1.25 and iou(new, old) >= 0.5


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
    upright: list[tuple[float, float]] = []
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
            new_box = box_on(lm, rel)
            if plausible(new_box, box, frame.shape):
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
                rel = relation(box, lm)
                if len(upright) < UPRIGHT_CHECKS:
                    upright.append((backend.score(frame),
                                    backend.score(np.ascontiguousarray(np.rot90(frame, 2)))))
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
                     detections=detections, tracked=tracked,
                     upright=np.array(upright, np.float64).reshape(-1, 2))


UPRIGHT_CHECKS = 2  # detections whose frame is also scored upside down (~16 ms each at 480 px)
UPRIGHT_MARGIN = 0.5  # dlib: an upright face scores ~0.5-2; the same face upside down ~0.3-0.6


def upside_down(track: FaceTrack | None) -> bool:
    """Whether the tracked face looks upside down: the detector saw it more surely with the
    picture turned 180 degrees than as it is (a detector fires on upside-down faces too, and
    the model would read them as some other expression)."""
    if track is None or track.upright is None or not len(track.upright):
        return False
    as_is, turned = track.upright.mean(axis=0)
    return bool(turned > as_is + UPRIGHT_MARGIN)
