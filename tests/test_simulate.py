"""Tests of cryorecon.simulation.simulate and `cryorecon simulate`, against RELION and ASPIRE output."""
import mrcfile
import numpy as np
import pytest

from cryorecon.cli import main
from cryorecon.errors import InputError
from cryorecon.geometry.rotations import euler_to_matrix
from cryorecon.io.star import read_particle_table
from cryorecon.forward.masks import disc
from cryorecon.simulation.simulate import simulate_dataset

MAP = "ribosome70S/ribosome70S_L64.mrc"


def _corrs(a, b):
    return np.array([np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)])


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


@pytest.mark.parametrize("name", ["rln_proj_64_centered", "rln_proj_64_shifted"])
def test_cli_reproduces_relion_project(shared_data, tmp_path, capsys, name):
    ref = shared_data / "relion_project_reference"
    code, out = _run(["simulate", shared_data / MAP, "--from-star", ref / f"{name}.star",
                      "--snr", "inf", "--out", tmp_path], capsys)
    assert code == 0
    # The STAR says 1 A/px and the map 5.08 A/px: harmless here, so one warning line.
    assert "warning" in out.err and "--pixel-size" in out.err and len(out.err.strip().splitlines()) == 1
    ours = mrcfile.read(tmp_path / "particles.mrcs")
    theirs = mrcfile.read(ref / f"{name}.mrcs")
    assert ours.shape == theirs.shape == (4, 64, 64)
    assert _corrs(ours, theirs).min() >= 0.99


def test_cli_reproduces_aspire_ctf_and_shifts(shared_data, tmp_path, capsys):
    src = shared_data / "aspire_ctf_shift_200"
    code, out = _run(["simulate", shared_data / MAP, "--from-star", src / "particles.star",
                      "--out", tmp_path], capsys)
    assert code == 0 and out.err == ""
    assert _corrs(mrcfile.read(tmp_path / "particles.mrcs"), mrcfile.read(src / "particles.mrcs")).min() >= 0.99
    # The STAR written holds the true poses (RELION 3.1, Angstrom origins, the CTF).
    table = read_particle_table(tmp_path / "particles.star")
    df = table.particles
    assert table.version == "3.1" and len(df) == 200
    A = euler_to_matrix(df["rlnAngleRot"], df["rlnAngleTilt"], df["rlnAnglePsi"])
    np.testing.assert_allclose(A, np.load(src / "relion_A_matrices.npy"), atol=1e-5)
    orig = read_particle_table(src / "particles.star").particles
    np.testing.assert_allclose(df["rlnOriginXAngst"], orig["rlnOriginXAngst"], atol=1e-9)
    np.testing.assert_allclose(df["rlnDefocusU"], orig["rlnDefocusU"])
    assert df["rlnImageName"].iloc[1] == "000002@particles.mrcs"


def test_pixel_size_disagreement_with_ctf_needs_pixel_size(shared_data, tmp_path, capsys):
    src = shared_data / "aspire_ctf_shift_200"
    text = (src / "particles.star").read_text()
    assert "5.078125\t64" in text
    star = tmp_path / "wrong_px.star"
    star.write_text(text.replace("5.078125\t64", "1.000000\t64"))
    code, out = _run(["simulate", shared_data / MAP, "--from-star", star, "--n", 5, "--out", tmp_path / "a"], capsys)
    assert code == 2
    line = out.err.strip()
    assert len(line.splitlines()) == 1 and "--pixel-size" in line and "CTF" in line
    # --pixel-size settles it: the CTF and the (physical) Angstrom origins come out right.
    code, out = _run(["simulate", shared_data / MAP, "--from-star", star, "--n", 5,
                      "--pixel-size", "5.078125", "--out", tmp_path / "b"], capsys)
    assert code == 0
    ours = mrcfile.read(tmp_path / "b" / "particles.mrcs")
    assert _corrs(ours, mrcfile.read(src / "particles.mrcs")[:5]).min() >= 0.99


def test_box_mismatch_is_an_input_error(shared_data, tmp_path):
    with pytest.raises(InputError, match="rlnImageSize"):
        simulate_dataset(shared_data / "ribosome70S/clean70SRibosome_vol_65p.mrc", tmp_path,
                         from_star=shared_data / "aspire_ctf_shift_200/particles.star", pixel_size_A=5.0)


def test_realised_snr_matches_request(shared_data, tmp_path):
    clean = simulate_dataset(shared_data / MAP, tmp_path / "clean", n=40, snr=np.inf, seed=3)
    noisy = simulate_dataset(shared_data / MAP, tmp_path / "noisy", n=40, snr=0.5, seed=3)
    a = mrcfile.read(tmp_path / "clean" / "particles.mrcs").astype(np.float64)
    b = mrcfile.read(tmp_path / "noisy" / "particles.mrcs").astype(np.float64)
    noise = b - a
    inside = disc(64, 32.0, inclusive=False)  # the SNR disc r < L/2 of the module docstring
    realised = np.mean(a[:, inside] ** 2) / np.var(noise)
    assert realised == pytest.approx(0.5, rel=0.03)
    assert noisy["noise_sigma"] == pytest.approx(np.std(noise), rel=0.01)
    assert clean["noise_sigma"] == 0.0
    # Poses, shifts and defoci do not depend on the noise level.
    assert (tmp_path / "clean" / "particles.star").read_text().split("data_particles")[1] == (
        tmp_path / "noisy" / "particles.star").read_text().split("data_particles")[1]


def test_same_seed_same_output(shared_data, tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        simulate_dataset(shared_data / MAP, tmp_path / name, n=8, snr=1.0, seed=seed)
    read = lambda name: mrcfile.read(tmp_path / name / "particles.mrcs")  # noqa: E731
    np.testing.assert_array_equal(read("a"), read("b"))
    assert not np.array_equal(read("a"), read("c"))


def test_drawn_particles_follow_the_options(shared_data, tmp_path):
    info = simulate_dataset(shared_data / MAP, tmp_path / "d", n=300, seed=1, defocus_range_um=(1.0, 1.2),
                            shift_sigma_px=3.0, max_shift_px=4.0)
    df = read_particle_table(tmp_path / "d" / "particles.star").particles
    assert info["ctf"] and len(df) == 300
    px = info["pixel_size_A"]
    assert px == pytest.approx(5.078125)
    assert df["rlnDefocusU"].between(1e4, 1.2e4).all()
    shifts = df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / px
    assert np.abs(shifts).max() <= 4.0 + 1e-9 and np.isclose(np.abs(shifts), 4.0).any()
    # Uniform poses: the viewing directions (third rows of A) average to ~0.
    A = euler_to_matrix(df["rlnAngleRot"], df["rlnAngleTilt"], df["rlnAnglePsi"])
    assert np.linalg.norm(A[:, 2].mean(0)) < 0.15
    # The STAR written is the truth: simulating from it gives the same images again.
    simulate_dataset(shared_data / MAP, tmp_path / "e", from_star=tmp_path / "d" / "particles.star", n=None)
    np.testing.assert_allclose(mrcfile.read(tmp_path / "e" / "particles.mrcs"),
                               mrcfile.read(tmp_path / "d" / "particles.mrcs"), atol=1e-5)


def test_no_ctf_option(shared_data, tmp_path, capsys):
    code, out = _run(["simulate", shared_data / MAP, "--n", 3, "--no-ctf", "--out", tmp_path], capsys)
    assert code == 0 and "without CTF" in out.out
    assert "rlnDefocusU" not in read_particle_table(tmp_path / "particles.star").particles.columns
