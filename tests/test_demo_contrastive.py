"""Demo `contrastive`: InfoNCE's value, gradient, batch coupling and learned embeddings."""
import numpy as np
import pytest

from cryorecon.demos import contrastive as demo
from cryorecon.demos import run_demo
from cryorecon.demos._common import check_gradient


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _params_and_views(seed, b=7):
    rng = np.random.default_rng(seed)
    params = demo.init_encoder(10, 6, 4, rng)
    params["b1"] += 0.1 * rng.standard_normal(6)
    params["b2"] += 0.1 * rng.standard_normal(4)
    return rng, params, rng.standard_normal((b, 10)), rng.standard_normal((b, 10))


@pytest.mark.parametrize("b", [1, 5, 64])
def test_loss_is_log_b_when_all_similarities_are_equal(b):
    z = np.tile(_unit(np.random.default_rng(b).standard_normal((1, 3))), (b, 1))
    loss, _, _ = demo.info_nce(z, z, temperature=0.3)
    assert abs(loss - np.log(b)) < 1e-12


def test_info_nce_gradient_in_the_embeddings():
    rng = np.random.default_rng(0)
    z_u, z_v = _unit(rng.standard_normal((6, 3))), _unit(rng.standard_normal((6, 3)))
    f_u = lambda v: demo.info_nce(v, z_v, 0.5)[0]  # noqa: E731
    g_u = lambda v: demo.info_nce(v, z_v, 0.5)[1]  # noqa: E731
    f_v = lambda v: demo.info_nce(z_u, v, 0.5)[0]  # noqa: E731
    g_v = lambda v: demo.info_nce(z_u, v, 0.5)[2]  # noqa: E731
    assert check_gradient(f_u, g_u, z_u) < 1e-6
    assert check_gradient(f_v, g_v, z_v) < 1e-6


@pytest.mark.parametrize("which", ["info_nce", "alignment"])
def test_encoder_gradient_matches_finite_differences(which):
    rng, params, x_u, x_v = _params_and_views(1)
    keys = sorted(params)
    sizes = [params[k].size for k in keys]

    def unflat(v):
        parts = np.split(v, np.cumsum(sizes)[:-1])
        return {k: p.reshape(params[k].shape) for k, p in zip(keys, parts)}

    def loss_grad(v):
        if which == "info_nce":
            return demo.contrastive_loss(unflat(v), x_u, x_v, 0.4)
        return demo.alignment_loss(unflat(v), x_u, x_v)

    flat = np.concatenate([params[k].ravel() for k in keys])
    err = check_gradient(
        lambda v: loss_grad(v)[0],
        lambda v: np.concatenate([loss_grad(v)[1][k].ravel() for k in keys]),
        flat,
    )
    assert err < 1e-5


def test_micro_batch_accumulation_differs_for_info_nce_only():
    _, params, x_u, x_v = _params_and_views(2, b=12)
    full = -np.concatenate([g.ravel() for _, g in sorted(demo.contrastive_loss(params, x_u, x_v, 0.4)[1].items())])
    acc = demo.accumulated_update(lambda p, a, b: demo.contrastive_loss(p, a, b, 0.4), params, x_u, x_v, 3)
    assert np.linalg.norm(acc - full) > 0.05 * np.linalg.norm(full)
    full_al = -np.concatenate([g.ravel() for _, g in sorted(demo.alignment_loss(params, x_u, x_v)[1].items())])
    acc_al = demo.accumulated_update(demo.alignment_loss, params, x_u, x_v, 3)
    np.testing.assert_allclose(acc_al, full_al, rtol=1e-12, atol=1e-15)


def test_augment_keeps_shape_and_is_seeded():
    imgs = np.random.default_rng(3).random((5, 64))
    a = demo.augment(imgs, np.random.default_rng(4))
    b = demo.augment(imgs, np.random.default_rng(4))
    assert a.shape == (5, 64)
    np.testing.assert_array_equal(a, b)
    # noise-free, drop-free views are pure shifts: total intensity can only be lost at the edge
    c = demo.augment(imgs, np.random.default_rng(5), noise=0.0, drop=0.0)
    assert np.all(c.sum(axis=1) <= imgs.sum(axis=1) + 1e-12)


def test_demo_learns_class_separating_embeddings(tmp_path):
    m = run_demo("contrastive", out_dir=tmp_path, quick=True, seed=0)
    png = tmp_path / "contrastive.png"
    assert png.exists() and png.stat().st_size > 5_000
    assert abs(m["equal_similarity_loss"] - m["log_batch_size"]) < 1e-12
    assert m["accumulated_vs_full_rel_diff"] > 0.1
    assert m["per_example_loss_accumulation_rel_diff"] < 1e-12
    assert m["mean_micro_batch_loss"] < m["full_batch_loss"] - 0.5  # fewer negatives, easier task
    assert m["final_loss"] < m["initial_loss"] - 1.0
    assert m["probe_accuracy_learned"] > m["probe_accuracy_random_projection"] + 0.1
    assert m["probe_accuracy_learned"] > m["probe_accuracy_untrained_encoder"] + 0.1
