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
    for need in (("ferplus", "ferplus.npz"), ("emodb",), ("ravdess",), ("emovo",),
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
    assert {"speaker_cv", "loco_emodb", "loco_emovo", "loco_ravdess"} <= \
        set(metrics["audio_speech"]["held_out"])
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
