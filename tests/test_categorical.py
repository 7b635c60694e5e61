"""Categorical corpora on the valence/arousal plane: readers, mapping, still faces to clips."""
import numpy as np
import torch

from avemo_cli import align
from avemo_cli.recipes import corpora as C
from avemo_cli.recipes import stills

from conftest import shared_file


def test_emodb_reader_uses_the_file_name():
    clips = C.emodb(shared_file("emodb"))
    assert len(clips) == 408
    assert sorted({c.speaker for c in clips}) == [f"emodb:{s}" for s in
                                                  ("03", "08", "09", "10", "11", "12", "13", "14")]
    happy = next(c for c in clips if c.path.name == "03a01Fa.wav")
    assert happy.emotion == "happiness"
    assert (happy.valence, happy.arousal) == (0.8, 0.5)
    counts = {e: sum(c.emotion == e for c in clips) for e in C.EMODB_LETTERS.values()}
    assert counts["anger"] == 100
    assert counts["disgust"] == 30  # W and E, not the circulating table


def test_cremad_reader_keeps_the_crowd_vote():
    clips = dict((c.path.name, (c, vote)) for c, vote in C.cremad(shared_file("crema-d")))
    assert len(clips) == 6
    sad, vote = clips["1002_DFA_SAD_XX.mp3"]
    assert sad.emotion == "sadness"
    assert vote == "neutral"  # the crowd heard neutral
    assert clips["1002_DFA_HAP_XX.mp3"][1] == "happiness"


def test_ferplus_targets_are_vote_expectations():
    fer = C.ferplus(shared_file("ferplus", "ferplus.npz"))
    z = np.load(shared_file("ferplus", "ferplus.npz"))
    assert len(fer.images) < len(z["images"])  # faces voted mostly unknown/not-a-face dropped
    # first face: votes neutral 4, sadness 1, anger 3, disgust 2 (of 10)
    v = (4 * 0.0 + 1 * -0.7 + 3 * -0.6 + 2 * -0.7) / 10
    a = (4 * 0.0 + 1 * -0.4 + 3 * 0.8 + 2 * 0.2) / 10
    assert np.allclose(fer.targets[0], [v, a])
    assert fer.majority[0] == "neutral"
    assert set(np.unique(fer.split)) == {"train", "valid", "test"}
    bad = (z["votes"][:, 8:].sum(1) >= z["votes"][:, :8].sum(1))
    assert len(fer.images) == len(z["images"]) - bad.sum()


def test_nearest_class():
    va = np.array([[0.75, 0.45], [-0.65, 0.75], [0.0, 0.05]])
    assert list(C.nearest_class(va)) == ["happiness", "anger", "neutral"]


def test_stills_align_like_video_frames_and_become_clips():
    z = np.load(shared_file("ferplus", "ferplus.npz"))
    crops, detected = stills.align_stills(z["images"][:40], 48)
    assert crops.shape == (40, 48, 48)
    assert detected.mean() > 0.5
    # a detected face's landmarks, re-found on its aligned crop, sit near the template
    from avemo_cli.faces import DlibBackend

    dl = DlibBackend()
    refound = 0
    for i in np.flatnonzero(detected)[:10]:
        big = np.kron(crops[i], np.ones((4, 4), np.uint8))
        boxes = dl.detect(big)
        if boxes:
            refound += 1
            pts = align.anchor_points(dl.landmarks(big, boxes[0]) / 4)
            assert np.abs(pts[:2] - align.TEMPLATE[:2] * 48).max() < 6, i
    assert refound >= 7  # (9 of the first 10 here)
    still = torch.from_numpy(crops[:4])
    fixed = stills.still_clips(still, 16, jitter=False)
    assert fixed.shape == (4, 16, 1, 48, 48)
    assert torch.equal(fixed[:, 0], fixed[:, 15])
    moving = stills.still_clips(still, 16, torch.Generator().manual_seed(0))
    assert moving.shape == fixed.shape
    assert moving.min() >= -1
    assert moving.max() <= 1
    step_change = (moving[:, 1:] - moving[:, :-1]).abs().mean()
    assert 0 < step_change < (moving - fixed).abs().mean() + 0.5  # small motion between steps
    corr = np.corrcoef(moving[0, 0].flatten(), moving[0, 15].flatten())[0, 1]
    assert corr > 0.5  # the same face throughout
