"""Demo `temperature`: SGD's stationary spread and barrier escape follow eta/B."""
import numpy as np
import pytest

from cryorecon.demos import run_demo
from cryorecon.demos._common import check_gradient
from cryorecon.demos import temperature as demo


def test_quadratic_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    offsets = demo.make_offsets(64, 1.3, rng)
    x = rng.standard_normal(5)
    err = check_gradient(
        lambda v: float(demo.quadratic_loss(v, 2.0, offsets).sum()),
        lambda v: demo.quadratic_grad(v, 2.0, offsets),
        x,
    )
    assert err < 1e-7


def test_double_well_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    offsets = demo.make_offsets(64, 3.0, rng) + 0.1  # non-zero mean exercises the tilt term
    x = 1.5 * rng.standard_normal(5)
    err = check_gradient(
        lambda v: float(demo.double_well_loss(v, offsets).sum()),
        lambda v: demo.double_well_grad(v, offsets),
        x,
    )
    assert err < 1e-7


def test_minibatch_noise_has_the_variance_the_formula_assumes():
    # sampling with replacement: Var of the B-mean of h (x - c_i) is h^2 Var(c) / B exactly
    rng = np.random.default_rng(3)
    offsets = demo.make_offsets(100, 1.0, rng)
    idx = rng.integers(0, offsets.size, size=(200_000, 4))
    g = demo.quadratic_grad(np.zeros(200_000), 2.0, offsets, idx)
    assert abs(g.mean()) < 0.01
    assert g.var() == pytest.approx(4.0 / 4, rel=0.02)


def test_demo_reproduces_the_temperature_effects(tmp_path):
    m = run_demo("temperature", out_dir=tmp_path, quick=True, seed=0)
    png = tmp_path / "temperature.png"
    assert png.exists() and png.stat().st_size > 5_000
    # exact discrete formula within 10%, while the continuous one misses the large-eta cases
    assert m["stationary_var_max_rel_err"] < 0.10
    assert m["continuous_formula_max_rel_err"] > 0.3
    # same eta/B -> same spread; a 4x smaller eta/B -> half the standard deviation
    assert m["same_ratio_spread_max_over_min"] < 1.06
    assert m["quarter_ratio_spread_ratio"] == pytest.approx(2.0, rel=0.1)
    # escape time grows with B/eta, exponentially (Kramers' slope within a factor of 1.5)
    t = m["escape_time"]
    assert all(b > a for a, b in zip(t, t[1:]))
    assert t[-1] > 5 * t[0]
    assert m["escape_censored"] == 0
    assert m["escape_log_slope"] == pytest.approx(m["kramers_log_slope"], rel=0.5)
