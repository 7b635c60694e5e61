"""The default model's recipe (examples/train_default.py) cannot rot unseen: every phase runs end
to end on a tiny budget (two FER+ faces per split and two clips per speaker, a few updates) and
assembles a checkpoint that annotates, with its metrics file beside it."""
import json
import subprocess
import sys
from pathlib import Path

from avemo_cli.checkpoint import load_checkpoint

from conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]


def test_the_default_recipe_runs_end_to_end_on_a_tiny_budget(tmp_path):
    for need in (("ferplus", "ferplus.npz"), ("emodb",), ("ravdess",), ("emovo",),
                 ("crema-d",), ("videos", "WDA_KatieHill_000.mp4")):
        shared_file(*need)  # (skips, saying what is missing, without ../shared/data)
    out = tmp_path / "model.safetensors"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "train_default.py"),
                           "--work", str(tmp_path / "work"), "--limit", "2",
                           "--visual-clips", "32", "--audio-updates", "3", "--jobs", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model = load_checkpoint(out)
    cfg = model.config
    assert cfg.modality == "av" and cfg.fusion == "weighted" and cfg.input_size == 48
    for t in ("valence", "arousal"):
        weights = cfg.fusion_weights[t]
        assert len(weights) == 2 and abs(sum(weights) - 1) < 1e-3 and min(weights) >= 0
    metrics = json.loads(out.with_name("model_metrics.json").read_text())
    assert {"visual_ferplus", "audio_speech", "fusion", "videos"} <= set(metrics)
    assert {"speaker_cv", "loco_emodb", "loco_emovo", "loco_ravdess"} <= \
        set(metrics["audio_speech"]["held_out"])
    assert metrics["visual_ferplus"]["test"]["n_test"] == 2
    assert [v["file"] for v in metrics["videos"]][0] == "sample.mp4"
    assert all(v["source"] == "av" for v in metrics["videos"])
