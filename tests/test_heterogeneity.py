"""The consensus split: directions of variability and k-means on particle coordinates."""
import numpy as np
import pytest

from cryorecon.forward import fourier, projector
from cryorecon.scoring import likelihood
from cryorecon.geometry.rotations import random_rotations
from cryorecon.simulation.phantom import chiral_phantom
from cryorecon.reconstruct.abinitio import Abinitio, band_limit_px, default_settings
from cryorecon.reconstruct.heterogeneity import split_classes, variability_subspace
from cryorecon.simulation.simulate import simulate_images


def _low_pass(v, k_px):
    return fourier.ifft3c(fourier.fft3c(v) * (fourier.shell_index(v.shape[0], 3) < k_px)).real


@pytest.fixture(scope="module")
def mixture():
    """Two maps (with and without the arm), 50/50, true poses known, SNR 2."""
    L, px, n = 24, 6.0, 400
    rng = np.random.default_rng(4)
    sources = [chiral_phantom(L, rng=1), chiral_phantom(L, rng=1, arm=False)]
    truth = rng.permutation(np.repeat([0, 1], n // 2))
    rotations = random_rotations(n, rng)
    images = np.empty((n, L, L), np.float32)
    for k in (0, 1):
        images[truth == k], _ = simulate_images(sources[k], rotations[truth == k], pixel_size_A=px, snr=2.0, rng=rng)
    scale = images.std()
    images /= scale
    run = Abinitio(images, px, None, default_settings(n, L, px, use_ctf=False, n_classes=2))
    # the images were divided by ``scale``, and so must the maps that explain them
    consensus = 0.5 * (sources[0] + sources[1]) / scale
    poses = {"rotations": rotations.astype(np.float32), "shifts": np.zeros((n, 2), np.float32)}
    noise = likelihood.NoiseModel.from_images(fourier.fft2c(images), L // 2 + 2)
    return dict(run=run, sources=sources, truth=truth, consensus=consensus, poses=poses, noise=noise, L=L, px=px, scale=scale)


def test_leading_direction_is_the_missing_subunit(mixture):
    m = mixture
    k = band_limit_px(20.0, m["L"], m["px"])
    band = m["run"].band(k)
    ws = m["run"].ws
    vectors, coords = variability_subspace(
        ws.batch_data, projector.volume_ft(m["consensus"].astype(np.float32)), m["poses"], m["noise"], band, 1,
        mask=ws.mask, band_mask=ws.band_mask(band.k_max_px), regulariser=ws.flat_lambda, pad=ws.pad,
    )
    assert vectors.shape == (1, m["L"], m["L"], m["L"]) and coords.shape == (len(m["truth"]), 1)
    np.testing.assert_allclose(np.linalg.norm(vectors[0]), 1.0, rtol=1e-5)
    difference = _low_pass(m["sources"][0] - m["sources"][1], k) * m["run"].mask
    corr = np.corrcoef(vectors[0].ravel(), difference.ravel())[0, 1]
    assert abs(corr) > 0.8, corr
    # the coordinates are in map units: the two classes sit at +-(difference / 2) along it
    labels, centres = split_classes(coords, 2)
    agree = np.mean(labels == m["truth"])
    assert max(agree, 1 - agree) >= 0.97
    half = 0.5 * float(np.dot(vectors[0].ravel(), difference.ravel())) / m["scale"]
    np.testing.assert_allclose(np.sort(centres.ravel()), np.sort([half, -half]), rtol=0.3)


def test_split_classes_is_seeded_and_finds_separated_clusters():
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], 50)
    points = np.array([[0, 0], [5, 0], [0, 5]])[truth] + rng.normal(0, 0.5, (150, 2))
    labels, centres = split_classes(points, 3, seed=1)
    again, _ = split_classes(points, 3, seed=1)
    np.testing.assert_array_equal(labels, again)
    # the same partition up to a relabelling
    for k in range(3):
        assert len(set(labels[truth == k])) == 1
    assert np.sort(np.linalg.norm(centres, axis=1)).round(0).tolist() == [0.0, 5.0, 5.0]
