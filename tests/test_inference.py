"""Inference (inference.py): face gaps filled from neighbouring steps."""
import numpy as np

from avemo_cli.inference import fill_gaps


def test_face_gaps_are_interpolated_from_neighbouring_steps():
    v = np.array([[0.0], [9.0], [9.0], [3.0], [9.0]], np.float32)
    ok = np.array([True, False, False, True, False])
    assert np.allclose(fill_gaps(v, ok)[:, 0], [0, 1, 2, 3, 3])
