import math

import numpy as np
import pytest

from avemo_cli.metrics import aggregate, cc, ccc, rmse, table


def test_hand_computed_values():
    x = [1.0, 2.0, 3.0]
    y = [2.0, 4.0, 6.0]
    # means 2 and 4; population vars 2/3 and 8/3; cov 4/3
    assert math.isclose(ccc(x, y), 2 * (4 / 3) / (2 / 3 + 8 / 3 + 4))
    assert math.isclose(cc(x, y), 1.0)
    assert math.isclose(rmse(x, y), math.sqrt((1 + 4 + 9) / 3))
    assert math.isclose(ccc(x, x), 1.0)
    assert math.isclose(ccc(x, [3, 2, 1]), -1.0)


def test_constant_and_nan_inputs():
    assert math.isnan(ccc([1, 1, 1], [1, 1, 1]))  # 0 / 0
    assert ccc([1, 1, 1], [1, 2, 3]) == 0.0  # no covariance, non-zero denominator
    assert math.isnan(cc([1, 1, 1], [1, 2, 3]))
    assert rmse([1, 1], [1, 1]) == 0.0
    x = [1.0, np.nan, 2.0, 3.0]
    y = [2.0, 5.0, 4.0, np.nan]
    assert math.isclose(ccc(x, y), ccc([1, 2], [2, 4]))  # NaN pairs dropped
    assert math.isnan(ccc([np.nan], [1.0]))
    assert math.isnan(rmse([], []))
    with pytest.raises(ValueError, match="length mismatch"):
        ccc([1, 2], [1, 2, 3])


def test_aggregations_differ_as_defined():
    p = [np.array([0.0, 1.0]), np.array([5.0, 6.0])]
    g = [np.array([0.0, 1.0]), np.array([6.0, 5.0])]
    concat = ccc(np.r_[p[0], p[1]], np.r_[g[0], g[1]])
    assert math.isclose(aggregate("ccc", p, g, "concat"), concat)
    assert math.isclose(aggregate("ccc", p, g, "mean"), (1.0 + -1.0) / 2)
    t = table({"a": {"valence": p[0]}, "b": {"valence": p[1]}},
              {"a": {"valence": g[0]}, "b": {"valence": g[1]}, "c": {"valence": g[0]}},
              ["valence"], how="mean")
    assert math.isclose(t["valence"]["ccc"], 0.0)
    assert set(t["valence"]) == {"ccc", "cc", "rmse"}


def test_one_pair_has_no_agreement_to_score():
    """A one-row gold file: CCC is undefined (NaN, shown as n/a and null), not 0."""
    assert math.isnan(ccc([0.3], [0.1]))
    assert math.isnan(cc([0.3], [0.1]))
    assert rmse([0.3], [0.1]) == pytest.approx(0.2)
