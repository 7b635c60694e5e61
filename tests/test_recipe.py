"""The default model's recipe (examples/train_default.py) cannot rot unseen: every phase runs end
to end on a tiny budget (two FER+ faces per split and two clips per speaker, a few updates) and
assembles a checkpoint that annotates, with its metrics file beside it; and it is repeatable: a
second run from scratch gives the same weights, bit for bit, and the same metrics."""
import json
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from avemo_cli.checkpoint import load_checkpoint

from conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]


def run_recipe(where: Path) -> Path:
    """The whole recipe on a tiny budget, from an empty work folder; the checkpoint's path."""
    out = where / "model.safetensors"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "train_default.py"),
                           "--work", str(where / "work"), "--limit", "2",
                           "--visual-clips", "32", "--audio-updates", "3", "--jobs", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_the_default_recipe_runs_end_to_end_on_a_tiny_budget_and_repeats_exactly(tmp_path):
    for need in (("ferplus", "ferplus.npz"), ("emodb",), ("ravdess",), ("emovo",), ("nemo",),
                 ("crema-d",), ("videos", "WDA_KatieHill_000.mp4")):
        shared_file(*need)  # (skips, saying what is missing, without ../shared/data)
    out = run_recipe(tmp_path / "first")
    model = load_checkpoint(out)
    cfg = model.config
    assert cfg.modality == "av"
    assert cfg.fusion == "weighted"
    assert cfg.input_size == 48
    for t in ("valence", "arousal"):
        weights = cfg.fusion_weights[t]
        assert len(weights) == 2
        assert abs(sum(weights) - 1) < 1e-3
        assert min(weights) >= 0
    metrics = json.loads(out.with_name("model_metrics.json").read_text())
    assert {"visual_ferplus", "audio_speech", "fusion", "videos"} <= set(metrics)
    held = metrics["audio_speech"]["held_out"]
    assert {"speaker_cv", "loco_emodb", "loco_emovo", "loco_ravdess", "loco_nemo"} <= set(held)
    assert {"network", "network_causal", "svr"} <= set(held["speaker_cv"])  # both designs
    assert cfg.audio_lookahead == 15
    assert metrics["visual_ferplus"]["test"]["n_test"] == 2
    assert [v["file"] for v in metrics["videos"]][0] == "sample.mp4"
    assert all(v["source"] == "av" for v in metrics["videos"])
    assert metrics["trained_with"]["torch_threads"] >= 1

    again = run_recipe(tmp_path / "second")
    first, second = load_file(out), load_file(again)
    assert first.keys() == second.keys()
    differ = [k for k in first if not (first[k] == second[k]).all()]
    assert not differ, f"a second run from scratch trained different weights: {differ[:5]}"
    metrics_again = json.loads(again.with_name("model_metrics.json").read_text())
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from train_default import differences
    finally:
        sys.path.remove(str(ROOT / "examples"))
    assert differences(metrics_again, metrics, tolerance=0.0) == []
    assert differences({**metrics, "x": 1.0}, metrics) == ["/x: only in one"]


def test_the_nemo_reader_takes_speaker_and_emotion_from_the_names():
    from avemo_cli.recipes import corpora as C

    clips = C.nemo(shared_file("nemo"))
    assert len(clips) == 4481  # the data README's count
    assert len({c.speaker for c in clips}) == 9
    assert {c.emotion for c in clips} == {"anger", "fear", "happiness", "neutral", "sadness",
                                          "surprise"}
    assert all(c.corpus == "nemo" and c.speaker == f"nemo:{c.path.parent.name}" for c in clips)
    assert sum(c.speaker == "nemo:MP0" for c in clips) == 256
    rows = {line.split("\t")[0].rsplit(".", 1)[0]: line.split("\t")[1]
            for line in (shared_file("nemo") / "data.tsv").read_text().splitlines()[1:]}
    for c in clips[::97]:  # the file name's label is data.tsv's
        assert C.NEMO_EMOTIONS[rows[c.path.stem]] == c.emotion
