"""Checkpoints (checkpoint.py): saved and loaded whole, refused when damaged, read once per run."""
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avemo_cli.checkpoint import load_checkpoint, read_metadata, resolve_weights, save_checkpoint
from avemo_cli.errors import CheckpointError
from avemo_cli.predict import predict_steps
from avemo_cli.testing.tiny_checkpoint import tiny_model


def test_round_trip_keeps_predictions_and_settings(tmp_path):
    model = tiny_model("av", seed=3)
    model.audio.mean.fill_(1.5)
    post = {"valence": {"median_window": 5, "bias": 0.1, "scale": 1.2}}
    path = save_checkpoint(tmp_path / "m.safetensors", model, post, {"data": "unit test"})
    ck = load_checkpoint(path)
    assert ck.config == model.cfg
    assert ck.postprocess == post
    assert ck.provenance["data"] == "unit test"
    rng = np.random.default_rng(0)
    audio = rng.normal(size=(20, 88)).astype(np.float32)
    crops = rng.integers(0, 255, (20, 64, 64), dtype=np.uint8)
    assert np.array_equal(predict_steps(model, audio, crops).values,
                          predict_steps(ck.model, audio, crops).values)
    assert not list(tmp_path.glob(".*tmp*"))


def test_bad_files_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    pickled = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(3)}, pickled)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    for path, cause in [(garbage, "not a readable checkpoint"), (pickled, "not a readable"),
                        (foreign, "not an avemo checkpoint"),
                        (tmp_path / "none.safetensors", "no such checkpoint")]:
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        assert str(path) in str(err.value)
        assert cause in str(err.value)


def test_mismatched_tensors_are_refused(tmp_path):
    path = save_checkpoint(tmp_path / "a.safetensors", tiny_model("av"))
    from safetensors.torch import load_file, save_file

    meta = {"avemo": __import__("json").dumps(read_metadata(path))}
    state = load_file(str(path))
    state.pop("fusion.weight")
    save_file(state, str(tmp_path / "b.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="b.safetensors: tensors do not match the model "
                                              "settings \\(fusion.weight is missing\\)"):
        load_checkpoint(tmp_path / "b.safetensors")
    state = load_file(str(path))
    name = next(k for k, v in state.items() if v.ndim == 2)
    state[name] = state[name][:, :-1].contiguous()  # one column short: the tensor is named
    save_file(state, str(tmp_path / "c.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "c.safetensors")
    assert f"{name} has shape" in str(err.value)
    assert "\n" not in str(err.value)


def test_resolve_weights(tmp_path, monkeypatch):
    import avemo_cli.checkpoint as ck

    monkeypatch.delenv("AVEMO_WEIGHTS", raising=False)
    p = save_checkpoint(tmp_path / "x.safetensors", tiny_model("audio"))
    assert resolve_weights(str(p)) == p
    assert resolve_weights(None).name == "default.safetensors"  # shipped in weights/
    monkeypatch.setattr(ck, "shipped_weights", lambda: {})  # an install without weights
    with pytest.raises(CheckpointError, match="no default model is installed"):
        resolve_weights(None)
    with pytest.raises(CheckpointError, match="no such checkpoint file or shipped model"):
        resolve_weights("nonexistent-name")
    with pytest.raises(CheckpointError, match="is a folder"):
        resolve_weights(str(tmp_path) + "/")


def test_shipped_names_resolve(tmp_path, monkeypatch):
    import avemo_cli.checkpoint as ck

    p = save_checkpoint(tmp_path / "default.safetensors", tiny_model("audio"))
    monkeypatch.setattr(ck, "shipped_weights", lambda: {"default": p})
    monkeypatch.delenv("AVEMO_WEIGHTS", raising=False)
    assert resolve_weights(None) == p
    assert resolve_weights("default") == p
    monkeypatch.setenv("AVEMO_WEIGHTS", str(p))
    assert resolve_weights(None) == p


_OPENED: list[str] = []  # paths opened while a test listens (Python's "open" audit event)
_LISTENING: list[bool] = []
_HOOKED: list[bool] = []  # (an audit hook cannot be removed: it is added once)


def _count_opens(event: str, args: tuple) -> None:
    if _LISTENING and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


def test_one_annotate_run_reads_the_checkpoint_once(tmp_path, tiny_ckpt, monkeypatch):
    """The checkpoint's header decides the features, its tensors the model and its digest the
    records: all from one read of the file. Every open by Python is counted (an audit hook),
    and safetensors' own readers, which open files outside Python, are counting stand-ins."""
    import safetensors
    import safetensors.torch

    from conftest import cli, make_synthetic_video

    if not _HOOKED:
        sys.addaudithook(_count_opens)
        _HOOKED.append(True)
    native = []
    for module, name in [(safetensors, "safe_open"), (safetensors.torch, "load_file"),
                         (safetensors.torch, "safe_open")]:
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, **k: native.append(a) or
                            _real(*a, **k))
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        make_synthetic_video(src / f"v{i}.mp4", seconds=2.0)
    ckpt = str(Path(tiny_ckpt).resolve())
    _OPENED.clear()
    _LISTENING.append(True)
    try:
        code, _, err = cli("annotate", src, "-o", tmp_path / "out", "--weights", ckpt, "-q",
                           "--format", "csv,json")
    finally:
        _LISTENING.clear()
    assert code == 0, err
    assert native == [], "safetensors opened the checkpoint itself"
    assert [p for p in _OPENED if os.path.realpath(p) == ckpt] == [ckpt]


@pytest.mark.parametrize("field, value, says", [
    ("audio_hidden", 100000, "audio_hidden must be a whole number from 1 to 4096, not 100000"),
    ("audio_layers", 3000000, "audio_layers must be a whole number from 1 to 16"),
    ("audio_hidden", -5, "not -5"), ("audio_hidden", "64", "not '64'"),
    ("encoder_channels", [16, "x"], "encoder_channels must be a list of whole numbers"),
    ("dropout", 2.0, "dropout must be a number from 0 to 0.99")])
def test_architecture_fields_are_checked_before_anything_is_built(tmp_path, field, value,
                                                                   says):
    """A small checkpoint whose header asks for a 160 GB layer, a million layers, a negative or
    a text width: one line naming the file and the field, before any tensor is allocated."""
    import json

    from safetensors.torch import save_file

    meta = read_metadata(save_checkpoint(tmp_path / "ok.safetensors", tiny_model("audio")))
    meta["model"][field] = value
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad), metadata={"avemo": json.dumps(meta)})
    assert bad.stat().st_size < 4000
    with pytest.raises(CheckpointError, match=re.escape(says)) as err:
        load_checkpoint(bad)
    assert str(err.value).startswith(f"{bad}: invalid model settings")


def test_a_device_given_as_weights_is_not_called_missing():
    from conftest import cli

    code, _, err = cli("annotate", "x.mp4", "--weights", "/dev/zero")
    assert code == 2, err
    assert err.strip() == "avemo: error: /dev/zero: not a checkpoint file (a folder, a device " \
        "or a pipe)"


@pytest.mark.parametrize("post, says", [
    ({"valence": {"median_window": "wide"}}, "valence median_window must be a whole number"),
    ({"valence": {"scale": float("nan")}}, "valence scale must be a finite number"),
    ({"valence": [1, 2]}, "valence: not an object"), ([3], "not an object of targets")])
def test_bad_post_processing_settings_are_one_line(tmp_path, post, says):
    model = tiny_model("audio")
    path = save_checkpoint(tmp_path / "m.safetensors", model, postprocess=post)
    with pytest.raises(CheckpointError, match=re.escape(says)) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{path}: invalid post-processing settings (")
