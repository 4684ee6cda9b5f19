"""Stragglers demo: order-statistic step times, backups, updates per second."""
import numpy as np

from cryorecon.demos import run_demo, stragglers


def test_closed_forms():
    assert stragglers.harmonic(1) == 1.0
    assert np.isclose(stragglers.harmonic(4), 1 + 1 / 2 + 1 / 3 + 1 / 4)
    assert np.isclose(stragglers.expected_step_time(10), stragglers.harmonic(10))
    # N = 1 of 1 + b: the minimum of b + 1 exponentials has mean 1 / (b + 1).
    assert np.isclose(stragglers.expected_step_time(1, 3), 0.25)


def test_simulation_uses_exactly_the_first_finishers():
    rng = np.random.default_rng(0)
    step, used = stragglers.simulate_step_times(5, 3, 100, rng)
    assert used.shape == (100, 8) and np.all(used.sum(1) == 5)
    assert np.all(step > 0)


def test_demo_figures_within_5_percent(tmp_path):
    m = run_demo("stragglers", out_dir=tmp_path, quick=True, seed=0)
    png = tmp_path / "stragglers.png"
    assert png.exists() and png.stat().st_size > 5000
    assert m["max_rel_err_HN"] < 0.05
    assert m["max_rel_err_backup"] < 0.05
    assert m["max_rel_err_updates_per_s"] < 0.05
    assert abs(m["step_time_N32"] / m["H_32"] - 1) < 0.05
    assert abs(m["step_time_N32_b4"] / m["H_36_minus_H_4"] - 1) < 0.05
    # Backups cut the step time substantially; smaller batches give more updates/s.
    assert m["step_time_N32_b4"] < 0.6 * m["step_time_N32"]
    assert m["updates_per_s_decreasing"] == 1.0
    assert m["updates_per_s_B16"] > 5 * m["updates_per_s_B1024"]
    assert m["sim_seconds_per_step_2_backups"] < m["sim_seconds_per_step_no_backup"]
