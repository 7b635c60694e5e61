"""Post-processing (postprocess.py): the filter chain and its fitting on devel CCC."""
import numpy as np
import pytest

from avemo_cli.postprocess import apply_chain, apply_postprocess, median_filter, shift_forward


def test_median_filter_removes_spikes_and_keeps_steps():
    x = np.array([0, 0, 9, 0, 0, 1, 1, 1, 1], np.float32)
    assert np.array_equal(median_filter(x, 3), [0, 0, 0, 0, 0, 1, 1, 1, 1])
    assert np.array_equal(median_filter(x, 1), x)


def test_chain_order_filter_center_scale_shift():
    x = np.array([1, 5, 1, 1, 1], np.float32)
    y = apply_chain(x, {"median_window": 3, "bias": 1.0, "scale": 0.5, "shift": 1})
    assert np.allclose(y, [1.0, 1.0, 1.0, 1.0, 1.0])  # (median 1 + 1) * 0.5 = 1, shifted
    z = apply_chain(np.array([0, 1, 2, 3], np.float32), {"bias": -1.0, "scale": 2.0})
    assert np.allclose(z, [-2, 0, 2, 4])  # centre first, then scale
    assert np.allclose(shift_forward(np.array([1, 2, 3.0]), 2), [1, 1, 1])
    both = apply_postprocess(np.ones((3, 2), np.float32), ["valence", "arousal"],
                             {"arousal": {"scale": 0.5}})
    assert np.allclose(both[:, 0], 1)
    assert np.allclose(both[:, 1], 0.5)


def test_fit_chain_keeps_only_steps_that_raise_devel_ccc():
    from avemo_cli.metrics import ccc
    from avemo_cli.postprocess import fit_chain

    rng = np.random.default_rng(0)
    t = np.arange(400) / 4.0
    gold = [np.sin(t[:200] / 3), np.sin(t[200:] / 3 + 1)]
    # noisy, biased, shrunk predictions: filtering, centering and scaling should all help
    pred = [0.3 * g - 0.4 + rng.normal(0, 0.15, g.shape) for g in gold]
    prm = fit_chain(pred, gold, rate=4.0)
    assert {"median_window", "bias", "scale"} <= set(prm)
    assert prm["dev_ccc"] > prm["dev_ccc_raw"] + 0.2
    out = [np.clip(apply_chain(p, prm), -1, 1) for p in pred]  # as the CSV holds them
    assert np.isclose(ccc(np.concatenate(out), np.concatenate(gold)), prm["dev_ccc"], atol=1e-5)
    # already perfect predictions: nothing helps, nothing is kept
    prm = fit_chain([g.copy() for g in gold], gold, rate=4.0)
    assert not {"median_window", "bias", "scale"} & set(prm)
    assert np.isclose(prm["dev_ccc"], 1.0)


def test_fit_chain_ignores_unscored_sequences():
    from avemo_cli.postprocess import fit_chain

    t = np.arange(200) / 4.0
    gold = [np.sin(t / 3), np.sin(t / 3 + 1)]
    pred = [0.5 * gold[0] + 0.2, np.full(200, np.nan)]  # the second could not be predicted
    prm = fit_chain(pred, gold)
    assert np.isfinite(prm["bias"])
    assert np.isfinite(prm["dev_ccc"])
    assert prm["dev_ccc"] > prm["dev_ccc_raw"]


def test_fit_chain_reports_what_the_written_values_score_and_flattens_nothing():
    """The CSV holds values clipped to [-1, 1]: the CCC the fit reports is that of the clipped
    output (what eval gives on the written files), and no kept step makes a sequence constant
    (a scaling that saturates it at 1.0 scored well before it was clipped)."""
    from avemo_cli.metrics import ccc
    from avemo_cli.postprocess import apply_chain, fit_chain

    rng = np.random.default_rng(0)
    t = np.arange(200) / 4
    for _ in range(40):
        golds, preds = [], []
        for _ in range(3):
            g = np.clip(rng.uniform(-0.8, 0.8) + rng.uniform(0.01, 0.3) *
                        np.sin(t * rng.uniform(0.1, 1)), -1, 1)
            amp = rng.uniform(0.001, 0.1)
            p = rng.uniform(-0.3, 0.3) * rng.choice([0.01, 1]) + amp * np.sin(
                t * rng.uniform(0.1, 1) + rng.uniform(0, 3)) + 0.3 * amp * rng.standard_normal(200)
            golds.append(g)
            preds.append(p.astype(np.float32))
        prm = fit_chain(preds, golds)
        out = [np.clip(apply_chain(p, prm), -1, 1) for p in preds]
        assert all(np.ptp(o) > 0 for o in out), prm
        assert prm["dev_ccc"] == pytest.approx(ccc(np.concatenate(out), np.concatenate(golds)),
                                               abs=1e-5), prm
        assert prm["dev_ccc"] >= prm["dev_ccc_raw"] - 1e-9
