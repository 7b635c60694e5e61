"""Stage 3d — several faces, each a person with an identity (``--max-faces N``).

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

import os
from typing import Iterable

import numpy as np

from .align import align_face
from .errors import AvemoError
from .faces import Box, FaceBackend, _predictor_path
from .tracking import FaceTrack, box_area, box_on, iou, plausible, relation

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
                new_box = box_on(lm, p.rel)
                if plausible(new_box, p.box, frame.shape):
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
    p.box, p.rel = box, relation(box, lm)
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
