import numpy as np
import pytest
import torch

from avemo_cli.model import AVModel, ModelConfig
from avemo_cli.predict import clip_ends, clip_steps, predict_steps
from avemo_cli.testing.tiny_checkpoint import tiny_config, tiny_model


def _inputs(k=40, seed=0, size=64):
    rng = np.random.default_rng(seed)
    audio = rng.normal(0, 10, (k, 88)).astype(np.float32)
    crops = rng.integers(0, 256, (k, size, size), dtype=np.uint8)
    return audio, crops


def test_paper_sized_shapes_and_attention():
    torch.manual_seed(0)
    model = AVModel(ModelConfig()).eval()
    video = torch.randn(2, 16, 1, 64, 64)
    audio = torch.randn(2, 16, 88)
    with torch.no_grad():
        out = model(audio=audio, video=video)
    assert out["pred"].shape == (2, 2)
    att = out["visual_attention"]
    assert att.shape == (2, 16, 16, 16)
    assert torch.allclose(att.sum(dim=(2, 3)), torch.ones(2, 16), atol=1e-5)  # eq. 3
    assert torch.allclose(out["audio_attention"].sum(1), torch.ones(2), atol=1e-5)  # eq. 1
    assert not torch.allclose(out["audio_attention"], torch.full((2, 16), 1 / 16))


def test_xavier_init_and_zero_bias():
    model = AVModel(ModelConfig())
    w = model.visual.conv2.weight
    fan_in, fan_out = w.shape[1] * w[0, 0].numel(), w.shape[0] * w[0, 0].numel()
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.9 * bound
    assert torch.all(model.fusion.bias == 0)


def test_shared_span_inference_equals_per_clip_forward():
    """Per-frame work computed once over a span and sliced into clips gives exactly what the
    per-clip forward gives on each (padded) 16-step clip."""
    model = tiny_model("av", seed=1)
    audio, crops = _inputs(k=40)
    steps = predict_steps(model, audio, crops, stride=1, batch_size=7)
    idx = clip_steps(np.arange(40), 16)
    with torch.no_grad():
        vid = model.visual.prepare(torch.from_numpy(crops[idx]))
        ref = model(audio=torch.from_numpy(audio[idx]), video=vid)
    assert np.allclose(steps.values, ref["pred"].numpy(), atol=1e-5)
    assert np.allclose(steps.visual_attention, ref["visual_attention"][:, -1].numpy(), atol=1e-6)


def test_thread_count_is_chosen_by_timing_and_given_back():
    """``ThreadChoice`` keeps one thread where work with every thread is slower (threads
    waiting for each other on a busy machine), every thread where it is faster, re-times every
    ``every`` units, and predict_steps leaves torch's count as it found it."""
    import time

    from avemo_cli.predict import ThreadChoice

    before = torch.get_num_threads()
    busy = {"machine": True}

    def work():  # with 2 threads: slow on a busy machine, fast on a quiet one
        many = torch.get_num_threads() > 1
        time.sleep(0.02 if many == busy["machine"] else 0.004)
        return torch.get_num_threads()

    try:
        torch.set_num_threads(2)
        choice = ThreadChoice(2, every=8)
        used = [choice(work, 4) for _ in range(8)]
        assert used[1:3] == [2, 1]
        assert set(used[3:]) == {1}
        assert choice.best == 1
        busy["machine"] = False
        used = [choice(work, 4) for _ in range(8)]
        assert used[0] == 1
        assert used[1:3] == [2, 1]
        assert set(used[3:]) == {2}
        one = ThreadChoice(1)  # one thread allowed: nothing to time
        assert [one(work, 4) for _ in range(4)] == [1] * 4
        assert not one.timed
        torch.set_num_threads(2)
        model = tiny_model("av", seed=1)
        audio, crops = _inputs(k=40)
        predict_steps(model, audio, crops, batch_size=4)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_stride_predicts_fewer_clips_and_interpolates():
    model = tiny_model("av")
    audio, crops = _inputs(k=23)
    full = predict_steps(model, audio, crops, stride=1)
    coarse = predict_steps(model, audio, crops, stride=4)
    assert list(clip_ends(23, 4)) == [0, 4, 8, 12, 16, 20, 22]
    assert coarse.predicted.sum() == 7
    on = coarse.predicted
    assert np.allclose(coarse.values[on], full.values[on], atol=1e-5)
    mid = 0.5 * (coarse.values[4] + coarse.values[8])
    assert np.allclose(coarse.values[6], mid, atol=1e-6)


def test_single_modality_heads_and_errors():
    audio, crops = _inputs(k=20)
    av = tiny_model("av")
    a_only = predict_steps(av, audio=audio).values
    v_only = predict_steps(av, crops=crops).values
    both = predict_steps(av, audio, crops).values
    assert not np.allclose(a_only, both)
    assert not np.allclose(v_only, both)
    with pytest.raises(ValueError, match="no visual branch"):
        tiny_model("audio")(video=torch.zeros(1, 16, 1, 64, 64))
    assert predict_steps(tiny_model("video"), crops=crops).values.shape == (20, 2)


@pytest.mark.parametrize("switches", [
    dict(audio_attention=False), dict(visual_attention=False),
    dict(visual_backbone="2d"), dict(targets=["valence"]), dict(channels=3),
    dict(batch_norm=True, input_size=48),
])
def test_ablation_switches_run_and_stay_exact(switches):
    model = tiny_model("av", **switches)
    if switches.get("batch_norm"):  # non-trivial running statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    audio, crops = _inputs(k=18, size=model.cfg.input_size)
    if switches.get("channels") == 3:
        crops = np.repeat(crops[..., None], 3, axis=-1)
    steps = predict_steps(model, audio, crops)
    assert steps.values.shape == (18, len(model.cfg.targets))
    idx = clip_steps(np.arange(18), 16)
    with torch.no_grad():
        ref = model(audio=torch.from_numpy(audio[idx]),
                    video=model.visual.prepare(torch.from_numpy(crops[idx])))["pred"]
    assert np.allclose(steps.values, ref.numpy(), atol=1e-5)


def test_config_validation():
    with pytest.raises(ValueError, match="modality"):
        ModelConfig(modality="text")
    with pytest.raises(ValueError, match="at least 12"):
        tiny_config(clip_steps=8)
    with pytest.raises(ValueError, match="unknown model settings"):
        ModelConfig.from_dict({"modality": "av", "layers": 3})
