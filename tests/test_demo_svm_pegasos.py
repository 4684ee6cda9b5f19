"""The Pegasos demo: subgradient, projection, accuracy and agreement with scipy."""
import numpy as np

from cryorecon.demos import run_demo
from cryorecon.demos import svm_pegasos as demo
from cryorecon.demos._common import check_gradient


def test_subgradient_is_the_gradient_away_from_kinks():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 4))
    y = np.where(rng.standard_normal(50) > 0, 1.0, -1.0)
    w = rng.standard_normal(4)
    assert np.min(np.abs(1.0 - y * (X @ w))) > 1e-4  # generic point: no example on a kink
    err = check_gradient(lambda v: demo.primal_objective(v, X, y, 0.1),
                         lambda v: demo.primal_subgradient(v, X, y, 0.1), w)
    assert err < 1e-6


def test_subgradient_inequality_holds_at_kinks():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((20, 3))
    y = np.where(rng.standard_normal(20) > 0, 1.0, -1.0)
    w = np.zeros(3)
    g = demo.primal_subgradient(w, X, y, 0.1)
    f0 = demo.primal_objective(w, X, y, 0.1)
    for v in rng.standard_normal((200, 3)):
        assert demo.primal_objective(v, X, y, 0.1) >= f0 + g @ (v - w) - 1e-12


def test_projection_onto_the_pegasos_ball():
    w = np.array([30.0, 40.0])
    p = demo.project_to_ball(w, 0.01)
    assert np.isclose(np.linalg.norm(p), 10.0) and np.allclose(p / 10.0, w / 50.0)
    small = np.array([1.0, 2.0])
    assert np.array_equal(demo.project_to_ball(small, 0.01), small)


def test_pegasos_accuracy_and_objective_match_scipy(tmp_path):
    m = run_demo("svm_pegasos", out_dir=tmp_path, quick=True, seed=0)
    png = tmp_path / "svm_pegasos.png"
    assert png.exists() and png.stat().st_size > 5000
    assert m["breast_cancer_test_acc"] >= 0.94
    assert m["digits_3v8_test_acc"] >= 0.97
    for name in ("breast_cancer", "digits_3v8"):
        assert m[f"{name}_ref_duality_gap"] < 1e-5 * m[f"{name}_ref_primal"]
        # within 1% of the optimum, and never meaningfully below it
        assert -1e-4 <= m[f"{name}_rel_gap"] <= 0.01
