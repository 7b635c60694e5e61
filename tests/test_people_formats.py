"""Several faces (--max-faces: identities that follow the person, the speaking face) and the
output formats (--format csv,parquet,json,eaf): on two shared talking heads side by side that
swap sides halfway, made here with ffmpeg from ../shared/data/videos."""
import json
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from avemo_cli.cli import main
from avemo_cli.demux import probe
from avemo_cli.speakers import speaking
from avemo_cli.table import COLUMNS
from avemo_cli.tracking import FaceTrack

from conftest import ffmpeg, shared_file

HALF = 4.0  # seconds before the swap


@pytest.fixture(scope="module")
def swap_video(tmp_path_factory):
    """Katie Hill left and AOC right for 4 s, then the two swapped (a cut), 8 s, Katie's voice."""
    katie = shared_file("videos", "WDA_KatieHill_000.mp4")
    aoc = shared_file("videos", "WDA_AlexandriaOcasioCortez_000.mp4")
    out = tmp_path_factory.mktemp("people") / "swap.mp4"
    graph = ("[0:v]scale=320:320,fps=25,split[k1][k2];[1:v]scale=320:320,fps=25,split[a1][a2];"
             f"[k1]trim=0:{HALF},setpts=PTS-STARTPTS[k1t];[a1]trim=0:{HALF},setpts=PTS-STARTPTS"
             f"[a1t];[k2]trim={HALF}:8,setpts=PTS-STARTPTS[k2t];[a2]trim={HALF}:8,"
             "setpts=PTS-STARTPTS[a2t];[k1t][a1t]hstack[top];[a2t][k2t]hstack[bot];"
             "[top][bot]concat=n=2:v=1[v]")
    ffmpeg("-i", str(katie), "-i", str(aoc), "-filter_complex", graph, "-map", "[v]", "-map",
           "0:a", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-t", "8", str(out))
    return out


@pytest.fixture(scope="module")
def annotated(swap_video, tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    r = CliRunner().invoke(main, ["annotate", str(swap_video), "--weights", str(tiny_ckpt),
                                  "--max-faces", "2", "--format", "csv,parquet,json,eaf",
                                  "-o", str(out), "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    written = r.stdout.split()
    assert [p.rsplit(".", 1)[1] for p in written] == ["csv", "parquet", "json", "eaf"]
    return out, pd.read_csv(out / "swap.avemo.csv")


def test_each_person_keeps_a_face_id_across_the_swap(annotated):
    _, table = annotated
    assert list(table.columns) == COLUMNS
    assert sorted(table["face_id"].unique()) == [0, 1]
    frames = table["frame"].nunique()
    assert len(table) == 2 * frames  # one row per frame per face
    centre = table["box_x"] + table["box_w"] / 2
    left = centre < 320
    before = table["time"] < HALF
    sides = {}
    for face_id, rows in table.groupby("face_id"):
        assert rows["face"].mean() >= 0.9, face_id  # each covers at least 90% of frames
        seen = rows["face"] == 1
        early = left[rows.index][seen & before[rows.index]]
        late = left[rows.index][seen & ~before[rows.index]]
        # the same person on one side before the cut and on the other after it
        sides[face_id] = (early.mean(), late.mean())
        assert early.mean() in (0.0, 1.0) or min(early.mean(), 1 - early.mean()) < 0.05
        assert abs(early.mean() - late.mean()) > 0.9, (face_id, sides[face_id])
    assert abs(sides[0][0] - sides[1][0]) > 0.9  # they start on different sides
    # at most one speaker at a time, and only while the voice is heard
    per_frame = table.groupby("frame")["speaking"].sum()
    assert per_frame.max() <= 1
    assert not (table["speaking"].astype(bool) & ~table["voice"].astype(bool)).any()
    assert table["confidence"].between(0, 1).all()


def test_the_four_formats_hold_the_same_values(annotated, swap_video):
    out, table = annotated
    parquet = pd.read_parquet(out / "swap.avemo.parquet")
    assert list(parquet.columns) == COLUMNS
    assert len(parquet) == len(table)
    for col in ("valence", "arousal", "confidence", "box_x", "box_w"):
        assert np.allclose(parquet[col], table[col], atol=1e-4, equal_nan=True), col
    doc = json.loads((out / "swap.avemo.json").read_text())
    assert doc["faces"] == [0, 1]
    assert doc["columns"] == COLUMNS
    assert doc["fps"] == 25.0
    assert doc["model"]
    assert doc["avemo"]
    assert doc["source"] in ("av", "video")
    rows = pd.DataFrame(doc["rows"])
    assert np.allclose(rows["valence"].astype(float), table["valence"], atol=1e-4)

    root = ET.parse(out / "swap.avemo.eaf").getroot()
    assert root.tag == "ANNOTATION_DOCUMENT"
    media = root.find("HEADER/MEDIA_DESCRIPTOR")
    assert media is not None
    assert media.get("MEDIA_URL", "").endswith("swap.mp4")
    slots = {s.get("TIME_SLOT_ID"): int(s.get("TIME_VALUE"))
             for s in root.iter("TIME_SLOT")}  # integers: milliseconds
    tiers = {t.get("TIER_ID"): t for t in root.iter("TIER")}
    speakers = {u["face_id"] for u in doc["segments"]}  # a speech tier per face that speaks
    assert speakers and None not in speakers  # (Katie's voice all through: one of the two)
    assert set(tiers) == {f"face {i} {t}" for i in (0, 1) for t in ("valence", "arousal")} | \
        {f"face {i} speech" for i in speakers}
    for face_id in (0, 1):
        rows = table[table["face_id"] == face_id].set_index("time")
        checked = 0
        for ann in tiers[f"face {face_id} valence"].iter("ALIGNABLE_ANNOTATION"):
            start = slots[ann.get("TIME_SLOT_REF1")]
            assert slots[ann.get("TIME_SLOT_REF2")] - start == 250
            if start % 1000 == 0:  # a whole second: a frame at the step's own time
                value = float(ann.findtext("ANNOTATION_VALUE"))
                assert value == pytest.approx(rows.loc[start / 1000, "valence"], abs=2e-3)
                checked += 1
        assert checked >= 6
    duration = probe(swap_video).duration  # nothing past the media's end, nothing unseen
    for face_id in (0, 1):
        steps = table[table["face_id"] == face_id]
        for ann in tiers[f"face {face_id} valence"].iter("ALIGNABLE_ANNOTATION"):
            start = slots[ann.get("TIME_SLOT_REF1")] / 1000
            assert start < duration
            near = steps.iloc[(steps["time"] - start).abs().argmin()]
            assert near["face"] == 1 or near["speaking"] == 1, (face_id, start)
    from pympi import Elan  # the library ELAN users script with reads it too

    assert len(Elan.Eaf(str(out / "swap.avemo.eaf")).get_annotation_data_for_tier(
        "face 1 arousal")) > 20


def test_formats_resume_and_a_bad_format_is_one_line(annotated, swap_video, tiny_ckpt):
    out, _ = annotated
    run = CliRunner()
    args = ["annotate", str(swap_video), "--weights", str(tiny_ckpt), "--max-faces", "2",
            "-o", str(out)]
    r = run.invoke(main, args + ["--format", "eaf,csv"])
    assert r.exit_code == 0
    assert r.stdout == ""
    assert "skip" in r.stderr  # all there: skipped
    bad = run.invoke(main, args + ["--format", "csv,xlsx"])
    assert bad.exit_code == 2
    assert bad.stdout == ""
    assert bad.stderr.strip().count("\n") == 0
    assert "unknown output format 'xlsx'" in bad.stderr


def test_single_face_run_has_face_id_0_and_boxes(tiny_ckpt, tmp_path):
    video = shared_file("videos", "WDA_KatieHill_000.mp4")
    r = CliRunner().invoke(main, ["annotate", str(video), "--weights", str(tiny_ckpt), "-o",
                                  str(tmp_path), "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    table = pd.read_csv(tmp_path / "WDA_KatieHill_000.avemo.csv")
    assert list(table.columns) == COLUMNS
    assert (table["face_id"] == 0).all()
    assert len(table) == table["frame"].nunique()  # one row per frame, as before
    seen = table["face"] == 1
    assert seen.mean() > 0.9
    assert (table.loc[seen, ["box_w", "box_h"]] > 50).all().all()  # source pixels (512 wide)
    assert table.loc[seen, "box_x"].between(0, 512).all()
    assert (table["speaking"] == (table["face"] & table["voice"])).all()


def _talking_track(opening: np.ndarray) -> FaceTrack:
    n = len(opening)
    lm = np.zeros((n, 68, 2), np.float32)
    lm[:, 27] = (0, 0)
    lm[:, 8] = (0, 100)  # nose bridge to chin: 100 px
    for top, bottom in ((61, 67), (62, 66), (63, 65)):
        lm[:, top] = np.stack([np.zeros(n), 70 - 50 * opening], 1)
        lm[:, bottom] = np.stack([np.zeros(n), 70 + 50 * opening], 1)
    return FaceTrack(np.zeros((n, 8, 8), np.uint8), np.ones(n, bool), np.zeros((n, 4)), lm,
                     np.zeros((n, 2, 3)))


def test_the_face_whose_mouth_follows_the_voice_speaks():
    """The talker's mouth opens and closes more when the voice is louder; the other face's
    mouth moves more, but not with the voice (as in the fixture: AOC talks, unheard)."""
    rng = np.random.default_rng(0)
    n = 60
    loud = rng.uniform(-40, -10, n)  # dB per step
    talker = 0.3 + (-1) ** np.arange(n) * (loud + 40) / 150
    other = 0.3 + rng.uniform(-0.3, 0.3, n)
    voice = np.ones(n, bool)
    voice[:5] = False
    who = speaking([_talking_track(other), _talking_track(talker)], loud, voice)
    assert not who[:, :5].any()
    assert (who.sum(0)[5:] == 1).all()
    assert who[1, 8:].all()  # once the window holds a few steps
    one = speaking([_talking_track(other)], loud, voice)
    assert (one[0] == voice).all()  # one face: the voice is its own


def test_the_heard_person_speaks_in_the_fixture(swap_video):
    """Katie Hill's voice, both mouths moving: the voice goes to her face at most steps."""
    from avemo_cli.pipeline import Annotator
    from avemo_cli.settings import AnnotatorSettings
    from avemo_cli.testing.tiny_checkpoint import tiny_model
    from avemo_cli.checkpoint import Checkpoint

    model = tiny_model("av")
    ann = Annotator(Checkpoint(model, model.cfg, {}, {}, None), AnnotatorSettings(max_faces=2))
    result = ann.annotate(swap_video)
    katie = result.people[0]  # on the left before the cut, seen at every step
    assert np.nanmean(katie.track.boxes[:16, 0]) < 240
    heard = result.voice & katie.face
    assert katie.speaking[heard].mean() > 0.8
