"""The momentum demo: gradients, Polyak's settings, and the heavy-ball speed-up it claims."""
import numpy as np

from cryorecon.demos import momentum as demo
from cryorecon.demos import run_demo
from cryorecon.demos._common import check_gradient


def test_gradients_and_hessian_match_central_differences():
    rng = np.random.default_rng(0)
    A = demo.quadratic_matrix(100.0)
    for _ in range(3):
        x = rng.uniform(-1.5, 1.5, size=2)
        assert check_gradient(lambda z: demo.quadratic_loss(z, A), lambda z: demo.quadratic_grad(z, A), x) < 1e-6
        assert check_gradient(demo.rosenbrock, demo.rosenbrock_grad, x) < 1e-6
        for i in range(2):
            row = check_gradient(lambda z: demo.rosenbrock_grad(z)[i],
                                 lambda z: demo.rosenbrock_hessian(z)[i], x)
            assert row < 1e-6


def test_quadratic_has_condition_number_100():
    eig = np.linalg.eigvalsh(demo.quadratic_matrix(100.0))
    np.testing.assert_allclose(eig, [1.0, 100.0])


def test_polyak_settings_for_kappa_100():
    alpha, beta = demo.polyak_settings(100.0, 1.0)
    assert np.isclose(alpha, 4.0 / 121.0)
    assert np.isclose(beta, (9.0 / 11.0) ** 2)


def test_heavy_ball_is_at_least_4x_faster(tmp_path):
    m = run_demo("momentum", out_dir=tmp_path, quick=True, seed=0)
    png = tmp_path / "momentum.png"
    assert png.exists() and png.stat().st_size > 5000
    # compared: GD at 2/(L+mu) = 2/101 against heavy ball at Polyak's alpha, beta
    assert np.isclose(m["quadratic_gd_lr"], 2.0 / 101.0)
    assert np.isclose(m["quadratic_hb_alpha"], 4.0 / 121.0)
    for name in ("quadratic", "rosenbrock"):
        assert m[f"{name}_gd_iters"] is not None and m[f"{name}_hb_iters"] is not None
        assert m[f"{name}_gd_iters"] >= 4 * m[f"{name}_hb_iters"]
    # GD's rate (kappa-1)/(kappa+1) on the loss squared: about ln(1e-6)/ln(0.961) steps
    assert 300 <= m["quadratic_gd_iters"] <= 400
