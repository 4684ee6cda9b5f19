"""Pose search against ASPIRE's simulated particles (an outside referee)."""
import numpy as np
import pytest

from cryorecon.forward import fourier, projector
from cryorecon.backend import kernels, memory
from cryorecon.scoring import likelihood, pose_search
from cryorecon.errors import InputError
from cryorecon.geometry.rotations import angular_distance_deg
from cryorecon.io.mrc import read_map
from cryorecon.io.particles import ParticleStack
from cryorecon.backend.memory import scoring_bytes_per_rotation
from cryorecon.reconstruct.engine import SearchGrids, evaluate_batch


@pytest.fixture(scope="module")
def aspire(shared_data):
    stack = ParticleStack.from_star(shared_data / "aspire_ctf_shift_200" / "particles.star")
    volume, _ = read_map(shared_data / "ribosome70S" / "ribosome70S_L64.mrc")
    return stack, volume


def test_best_pose_within_one_grid_step(aspire):
    """True map + nearly clean particles: the best pose lies within one coarse step."""
    stack, volume = aspire
    L, px = stack.box, stack.pixel_size_A
    images = stack.images(np.arange(stack.n))
    band = likelihood.Band.make(L, L * px / 12.0)  # 12 A
    noise = likelihood.NoiseModel.from_images(fourier.fft2c(images), L // 2 + 2)
    grids = SearchGrids.make(np, coarse_step_deg=15.0, max_shift_px=6.0, shift_step_px=2.0)
    f_pad = projector.volume_ft(volume)
    y = likelihood.image_coefficients(images, band)
    ctf = likelihood.ctf_on_band(band, px, stack.ctf_params(), stack.n, np)
    out = evaluate_batch([f_pad], y, ctf, noise, band, grids, k_coarse_px=L * px / 25.0)
    err = angular_distance_deg(out.best_rotation.astype(np.float64), stack.rotations)
    shift_err = np.hypot(*(out.best_shift - stack.shifts_A / px).T)
    assert np.mean(err <= grids.coarse_step_deg) >= 0.98
    # the local stage works at half the coarse step, so most land within that too
    assert np.median(err) <= grids.coarse_step_deg / 2
    assert np.median(shift_err) <= 1.0


def test_pose_accuracy_figures(aspire, capsys):
    """Report the measured accuracy (kept as a test so the numbers stay honest)."""
    stack, volume = aspire
    L, px = stack.box, stack.pixel_size_A
    images = stack.images(np.arange(64))
    band = likelihood.Band.make(L, L * px / 12.0)
    noise = likelihood.NoiseModel.from_images(fourier.fft2c(images), L // 2 + 2)
    grids = SearchGrids.make(np, coarse_step_deg=15.0)
    y = likelihood.image_coefficients(images, band)
    ctf = likelihood.ctf_on_band(band, px, stack.ctf_params(np.arange(64)), 64, np)
    out = evaluate_batch([projector.volume_ft(volume)], y, ctf, noise, band, grids, k_coarse_px=L * px / 25.0)
    err = angular_distance_deg(out.best_rotation.astype(np.float64), stack.rotations[:64])
    # a wrong-hand or transposed convention would put the median near 90-120 degrees
    assert np.percentile(err, 90) < 10.0


# ------------------------------------ global search: chunk sizing and OOM retries
class FakeOOM(Exception):
    """Stands for cupy.cuda.memory.OutOfMemoryError."""


class _NotNumpy:
    """numpy under another name, so that the search takes its device (cupy) branch."""

    def __getattr__(self, name):
        return getattr(np, name)


def _search_problem(b=5, t=4, r=61, m=20, seed=1):
    rng = np.random.default_rng(seed)
    y = (rng.standard_normal((b, m)) + 1j * rng.standard_normal((b, m))).astype(np.complex64)
    phases = np.exp(1j * rng.uniform(0, 6, (t, m))).astype(np.complex64)
    terms = pose_search.batch_terms(y, rng.uniform(0.2, 1, (b, m)).astype(np.float32), np.ones(m, np.float32), phases)
    slices = (rng.standard_normal((r, m)) + 1j * rng.standard_normal((r, m))).astype(np.complex64)
    log_prior = -0.1 * np.arange(t, dtype=np.float32)
    return terms, slices, log_prior


def _plain_chunk_loop(terms, slices, k, log_prior, chunk):
    """The search as one plain loop over fixed chunks: the reference for bit-identity."""
    b = terms.const.shape[0]
    best = None
    lse = None
    for start in range(0, slices.shape[0], chunk):
        score = pose_search.errors_shared(terms, slices[start:start + chunk]) - log_prior[None, :, None]
        part = pose_search.logsumexp_neg(score.reshape(b, -1))
        lse = part if lse is None else np.logaddexp(lse, part)
        ti, ri, v = pose_search.top_poses(score, k)
        cand = (ti, ri + start, v)
        if best is not None:
            cat = [np.concatenate([o, c], axis=1) for o, c in zip(best, cand)]
            order = np.argsort(cat[2], axis=1)[:, :k]
            cand = tuple(np.take_along_axis(c, order, axis=1) for c in cat)
        best = cand
    return best + (lse,)


def _fields(result):
    """(t_idx, r_idx, neg_logp, log_evidence) of a SearchResult or of such a tuple."""
    if isinstance(result, tuple):
        return result
    return result.t_idx, result.r_idx, result.neg_logp, result.log_evidence


def _assert_same(a, b):
    """Bit for bit."""
    for x, y in zip(_fields(a), _fields(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("chunk", [None, 7, 61])
def test_global_search_on_numpy_equals_the_plain_chunk_loop(chunk):
    terms, slices, log_prior = _search_problem()
    got = pose_search.global_search(terms, lambda a, z: slices[a:z], slices.shape[0], 3, log_prior=log_prior, chunk=chunk)
    b, t, m2 = terms.cross_lhs.shape
    default = pose_search.rotation_chunk(b, t, m2 // 2)
    _assert_same(got, _plain_chunk_loop(terms, slices, 3, log_prior, chunk or default))


def test_global_search_halves_the_chunk_on_oom_and_finds_the_same_poses():
    terms, slices, log_prior = _search_problem()
    r = slices.shape[0]
    tried = []

    def slice_fn(start, stop):
        tried.append(stop - start)
        if stop - start > 8:
            raise FakeOOM(f"{stop - start} rotations")
        return slices[start:stop]

    got = pose_search.global_search(terms, slice_fn, r, 3, log_prior=log_prior, chunk=32, oom_errors=(FakeOOM,))
    assert tried[:3] == [32, 16, 8]
    assert all(n <= 8 for n in tried[3:]) and sum(tried[2:]) == r  # every rotation scored once
    # the same as a search that used the halved chunk from the start ...
    _assert_same(got, pose_search.global_search(terms, lambda a, z: slices[a:z], r, 3, log_prior=log_prior, chunk=8))
    # ... and the same poses as one pass over all rotations
    whole = pose_search.global_search(terms, lambda a, z: slices[a:z], r, 3, log_prior=log_prior, chunk=r)
    np.testing.assert_array_equal(got.r_idx, whole.r_idx)
    np.testing.assert_array_equal(got.t_idx, whole.t_idx)
    np.testing.assert_allclose(got.log_evidence, whole.log_evidence, rtol=1e-5)


def test_global_search_out_of_memory_at_one_rotation_is_an_input_error():
    terms, slices, _ = _search_problem(r=10)

    def slice_fn(start, stop):
        raise FakeOOM

    with pytest.raises(InputError, match="--batch-size"):
        pose_search.global_search(terms, slice_fn, 10, 3, chunk=4, oom_errors=(FakeOOM,))


def test_global_search_on_the_device_sizes_chunks_from_free_memory(monkeypatch):
    terms, slices, log_prior = _search_problem()
    b, t, m2 = terms.cross_lhs.shape
    r = slices.shape[0]
    per = scoring_bytes_per_rotation(b, t, m2 // 2, itemsize=4)
    free = 2 * 10 * per + 3  # half of it holds 10 rotations
    asked = []
    monkeypatch.setattr(pose_search, "array_module", lambda *a: _NotNumpy())
    monkeypatch.setattr(kernels, "assemble_errors", pose_search.assemble_errors)  # the arrays are numpy's
    monkeypatch.setattr(memory, "free_bytes", lambda xp=None: asked.append(xp) or free)
    tried = []
    got = pose_search.global_search(terms, lambda a, z: tried.append(z - a) or slices[a:z], r, 3, log_prior=log_prior)
    monkeypatch.undo()
    assert len(asked) == 1 and isinstance(asked[0], _NotNumpy)
    assert tried == [10] * 6 + [1]
    _assert_same(got, _plain_chunk_loop(terms, slices, 3, log_prior, 10))
