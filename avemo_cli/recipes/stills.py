"""Still face photographs (FER+) as training clips for the visual branch: aligned the way
annotation aligns video frames (``align_stills``), then turned into slightly moving clips
(``still_clips``)."""
from __future__ import annotations

import numpy as np

from ..align import align_face, warp


def _align_chunk(args) -> tuple[np.ndarray, np.ndarray]:
    from ..faces import shared_backend

    images, size, upsample = args
    dlib = shared_backend("dlib")
    crops = np.empty((len(images), size, size), np.uint8)
    detected = np.zeros(len(images), bool)
    for i, img in enumerate(images):
        big = warp(img, np.array([[upsample, 0, (upsample - 1) / 2],
                                  [0, upsample, (upsample - 1) / 2]]),
                   img.shape[0] * upsample)
        boxes = dlib.detect(big)
        n = big.shape[0]
        box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])) if boxes else \
            (n * 0.1, n * 0.1, n * 0.9, n * 0.9)  # FER crops are centred faces
        detected[i] = bool(boxes)
        crops[i] = align_face(big, dlib.landmarks(big, box), size)[0]
    return crops, detected


def align_stills(images: np.ndarray, size: int, upsample: int = 4, jobs: int = 1
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Align small face images the way annotation aligns video frames: upsample (dlib finds
    faces of 80 px and more), detect (or take the centred box), 68 landmarks, the same template
    and crop. Returns the crops and whether dlib detected each face."""
    from ..workers import spawn_map

    chunks = [(images[i:i + 512], size, upsample) for i in range(0, len(images), 512)]
    parts = list(spawn_map(_align_chunk, chunks, jobs))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def still_clips(crops, steps: int, generator=None, jitter: bool = True):
    """Turn aligned stills (B, S, S) uint8 (torch) into clips (B, T, 1, S, S) in [-1, 1]: a
    smooth random walk of small rotations, scalings and shifts across the T steps, a random
    horizontal flip, brightness/contrast per clip and a little noise per step, so the 3D CNN
    and the attention see plausible, slightly moving input. ``jitter=False``: the still repeated."""
    import torch
    import torch.nn.functional as F

    x = crops.float().div(127.5).sub(1.0).unsqueeze(1)  # (B, 1, S, S)
    b, _, s, _ = x.shape
    if not jitter:
        return x.unsqueeze(1).expand(b, steps, 1, s, s).contiguous()
    g = generator

    def walk(scale):
        w = torch.randn(b, steps, generator=g).cumsum(1) * scale / steps ** 0.5
        return w - w.mean(1, keepdim=True)

    ang, zoom = walk(0.05), 1 + walk(0.03)
    tx, ty = walk(0.05), walk(0.05)
    flip = torch.where(torch.rand(b, 1, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, steps, 2, 3)
    theta[..., 0, 0] = torch.cos(ang) / zoom * flip
    theta[..., 0, 1] = -torch.sin(ang) / zoom
    theta[..., 1, 0] = torch.sin(ang) / zoom * flip
    theta[..., 1, 1] = torch.cos(ang) / zoom
    theta[..., 0, 2], theta[..., 1, 2] = tx, ty
    grid = F.affine_grid(theta.view(-1, 2, 3), [b * steps, 1, s, s],
                         align_corners=False)
    frames = F.grid_sample(x.repeat_interleave(steps, 0), grid, padding_mode="border",
                           align_corners=False).view(b, steps, 1, s, s)
    contrast = 1 + 0.2 * (torch.rand(b, 1, 1, 1, 1, generator=g) - 0.5) * 2
    bright = 0.15 * (torch.rand(b, 1, 1, 1, 1, generator=g) - 0.5) * 2
    noise = 0.02 * torch.randn(frames.shape, generator=g)
    return (frames * contrast + bright + noise).clamp(-1, 1)
