"""Stage 3c — face alignment: a similarity transform maps the two eye centres and the nose tip
of the 68 iBUG landmarks onto fixed template positions, and the face is resampled into a square
crop (the paper's normalisation)."""
from __future__ import annotations

import numpy as np

# Template positions in a unit square crop (x, y): left eye centre, right eye centre, nose tip.
TEMPLATE = np.array([[0.30, 0.36], [0.70, 0.36], [0.50, 0.60]], dtype=np.float64)
# Least-squares weights of the three points: the eyes fix roll and scale; the nose tip, which
# moves sideways when the head turns, only nudges the fit (unweighted, a turned head came out
# rolled by ~10 degrees).
WEIGHTS = np.array([1.0, 1.0, 0.1])

LEFT_EYE = slice(36, 42)  # the subject's right eye, on the image's left
RIGHT_EYE = slice(42, 48)
NOSE_TIP = 30


def anchor_points(landmarks: np.ndarray) -> np.ndarray:
    """(3, 2) eye centres and nose tip from (68, 2) landmarks."""
    return np.stack([landmarks[LEFT_EYE].mean(0), landmarks[RIGHT_EYE].mean(0),
                     landmarks[NOSE_TIP]])


def similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None
               ) -> np.ndarray:
    """Weighted least-squares similarity transform (rotation, uniform scale, translation)
    taking ``src`` points to ``dst`` points (Umeyama). Returns a 2x3 matrix M with
    dst ~ M @ [x, y, 1]."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s0, d0 = src - mu_s, dst - mu_d
    cov = (d0 * w[:, None]).T @ s0
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[1, 1] = -1
    rot = u @ fix @ vt
    var_s = (w * (s0 ** 2).sum(1)).sum()
    scale = np.trace(np.diag(sig) @ fix) / var_s if var_s > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def alignment_matrix(landmarks: np.ndarray, size: int) -> np.ndarray:
    """2x3 matrix taking image coordinates to crop coordinates for a ``size`` square crop."""
    return similarity(anchor_points(landmarks), TEMPLATE * size, WEIGHTS)


def warp(image: np.ndarray, matrix: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resample ``image`` (H x W or H x W x C; uint8, or float kept as float32) into an output of
    ``size`` (square side, or (height, width)) through the inverse of ``matrix`` (source ->
    output coordinates) with bilinear interpolation; outside the source is 0."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    a = np.vstack([matrix, [0, 0, 1]])
    inv = np.linalg.inv(a)[:2]
    v, u = np.mgrid[0:out_h, 0:out_w].astype(np.float64)
    x = inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]
    y = inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]
    h, w = image.shape[:2]
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    img = image.astype(np.float32)
    if img.ndim == 2:
        img = img[..., None]
    out = np.zeros((out_h, out_w, img.shape[2]), np.float32)
    for dy, dx, wgt in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)),
                        (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        vals = img[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
        out += (wgt * inside)[..., None] * vals
    if image.dtype == np.uint8:
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out[..., 0] if image.ndim == 2 else out


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """The aligned ``size`` square crop of the face and its 2x3 image-to-crop matrix."""
    m = alignment_matrix(landmarks, size)
    return warp(image, m, size), m
