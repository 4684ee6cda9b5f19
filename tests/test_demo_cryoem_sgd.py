"""2-D ab initio demo: projector adjoint, marginal-likelihood gradient, recovery."""
import numpy as np

from cryorecon.demos import cryoem_sgd, run_demo
from cryorecon.demos._common import check_gradient


def test_projection_of_a_centred_blob_is_angle_independent_and_conserves_mass():
    L = 24
    yy, xx = np.mgrid[:L, :L] - L // 2
    blob = np.exp(-(yy ** 2 + xx ** 2) / (2 * 3.0 ** 2)).astype(np.float32)
    A = cryoem_sgd.projection_matrix(L, [0.0, 37.0, 90.0, 211.0])
    proj = A @ blob.ravel()
    np.testing.assert_allclose(proj.sum(1), blob.sum(), rtol=5e-3)  # unit-step ray sampling
    for g in range(1, 4):
        np.testing.assert_allclose(proj[g], proj[0], atol=0.02 * proj[0].max())
    # At 0 degrees the ray runs along y: the projection is the column sum.
    np.testing.assert_allclose(proj[0], blob.sum(0), atol=1e-5)
    # An off-centre point at (x, y) = (+5, 0) projects to bin L//2 + 5 at 0 degrees and
    # to bin L//2 - 5 at 180.
    point = np.zeros((L, L), np.float32)
    point[L // 2, L // 2 + 5] = 1.0
    p = cryoem_sgd.projection_matrix(L, [0.0, 180.0]) @ point.ravel()
    assert np.argmax(p[0]) == L // 2 + 5 and np.argmax(p[1]) == L // 2 - 5


def test_marginal_nll_gradient_check():
    rng = np.random.default_rng(0)
    L, G = 12, 8
    A = cryoem_sgd.projection_matrix(L, np.arange(G) * 45.0).reshape(G * L, L * L).astype(np.float64)
    x = rng.uniform(0, 1, L * L)
    images = rng.normal(1.0, 1.0, (5, L))

    def f(v):
        return cryoem_sgd.marginal_nll_and_grad(v, images, A, 4.0)[0]

    def g(v):
        return cryoem_sgd.marginal_nll_and_grad(v, images, A, 4.0)[1]

    assert check_gradient(f, g, x, n_probe=40, rng=rng) < 1e-5
    _, _, post = cryoem_sgd.marginal_nll_and_grad(x, images, A, 4.0)
    np.testing.assert_allclose(post.sum(1), 1.0)


def test_alignment_finds_a_rotated_mirror():
    from scipy import ndimage

    truth = cryoem_sgd.phantom(32).astype(np.float64)
    moved = ndimage.rotate(truth, 50.0, reshape=False, order=1)[:, ::-1]
    cc, _, mirrored, _ = cryoem_sgd.align_correlation(moved, truth)
    assert mirrored and cc > 0.97


def test_demo_recovers_the_image(tmp_path):
    m = run_demo("cryoem_sgd", out_dir=tmp_path, quick=True, seed=0)
    png = tmp_path / "cryoem_sgd.png"
    assert png.exists() and png.stat().st_size > 5000
    assert m["aligned_correlation"] > 0.9
    assert m["aligned_correlation"] > m["initial_correlation"] + 0.2
