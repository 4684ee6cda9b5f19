"""Post-processing of half-maps (reconstruct/postprocess), checked against known answers.

The maps are random point atoms: beyond about 10 A their spectrum is flat (Wilson
statistics), so a blur by a known B-factor is the only fall-off, and a band limit put
in by hand is the only place where the signal ends.
"""
import doctest
import importlib
import pkgutil
import warnings

import numpy as np
import pytest
import starfile

import cryorecon.reconstruct.postprocess as pp
from cryorecon.cli import main
from cryorecon.errors import InputError
from cryorecon.forward.fourier import fft3c, ifft3c
from cryorecon.forward.masks import radial_distance, soft_sphere
from cryorecon.io.mrc import read_map, write_map
from cryorecon.reconstruct.postprocess import (
    AutoMaskSettings, PostprocessWarning, SharpenSettings, auto_mask, corrected_fsc, postprocess,
    randomise_phases_beyond, read_inputs, star_blocks, write_postprocess,
)
from cryorecon.reconstruct.postprocess.bfactor import fit_guinier, guinier_values
from cryorecon.reconstruct.postprocess.filters import RadialGrid, raised_cosine_falloff
from cryorecon.validate import fsc, fsc_resolution_A


def random_atoms(L, n_atoms, radius_frac, rng):
    """Point atoms of height 0.5..1 on voxels within ``radius_frac * L`` of the centre."""
    r = radial_distance(L, 3, dtype=np.float64)
    inside = np.argwhere(r < radius_frac * L)
    pick = inside[rng.choice(len(inside), n_atoms, replace=False)]
    v = np.zeros((L, L, L))
    v[tuple(pick.T)] = rng.uniform(0.5, 1.0, n_atoms)
    return v


def filtered(v, per_voxel):
    return ifft3c(fft3c(v) * per_voxel).real


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PostprocessWarning)
        return fn(*args, **kwargs)


# 64 px at 1.5 A, blurred by B = 150 A^2, white noise in each half: resolution ~3.6 A.
L_B, PX_B, B_TRUE = 64, 1.5, 150.0


@pytest.fixture(scope="module")
def blurred_halves():
    rng = np.random.default_rng(1)
    v = random_atoms(L_B, 600, 0.35, rng)
    s = radial_distance(L_B, 3, dtype=np.float64) / (L_B * PX_B)
    clean = filtered(v, np.exp(-B_TRUE * s**2 / 4))
    h1, h2 = (clean + rng.normal(scale=0.01, size=clean.shape) for _ in range(2))
    return h1, h2


@pytest.fixture(scope="module")
def blurred_result(blurred_halves):
    h1, h2 = blurred_halves
    return postprocess(h1, h2, PX_B, mask=soft_sphere(L_B, 0.35 * L_B + 3, 5), rng=0)


# 48 px at 2 A, signal tapered off between shells 9 and 14 (10.7 to 6.9 A), pure
# noise beyond: the truth beyond shell 14 is FSC = 0.
L_T, PX_T = 48, 2.0


@pytest.fixture(scope="module")
def band_limited_halves():
    rng = np.random.default_rng(1)
    v = random_atoms(L_T, 400, 0.3, rng)
    clean = filtered(v, raised_cosine_falloff(radial_distance(L_T, 3, dtype=np.float64), 9, 5))
    sd = clean[radial_distance(L_T, 3) < 0.3 * L_T].std()
    return tuple(clean + rng.normal(scale=0.3 * sd, size=clean.shape) for _ in range(2))


def test_doctests():
    names = ["cryorecon.reconstruct.postprocess"] + [
        m.name for m in pkgutil.walk_packages(pp.__path__, "cryorecon.reconstruct.postprocess.")]
    for name in names:
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, f"{result.failed} doctest failures in {name}"


# ---- B-factor ---------------------------------------------------------------------

def test_b_factor_of_a_blurred_map_recovered_within_15_percent(blurred_result):
    r = blurred_result
    assert r.warnings == ()
    assert r.fit is not None and r.fit.n_shells >= 10 and r.fit.correlation < -0.99
    assert r.fit.low_res_A == 10.0 and r.fit.high_res_A == pytest.approx(r.resolution_A)
    # RELION's sign: the B used for sharpening is negative.
    assert r.b_factor_A2 == pytest.approx(-B_TRUE, rel=0.15)


def test_b_factor_with_the_auto_mask_and_without_a_mask(blurred_halves):
    h1, h2 = blurred_halves
    auto = postprocess(h1, h2, PX_B, rng=0)
    bare = postprocess(h1, h2, PX_B, auto_mask=None)
    assert auto.mask_source == "auto" and bare.mask is None and bare.curves is None
    assert auto.b_factor_A2 == pytest.approx(-B_TRUE, rel=0.15)
    assert bare.b_factor_A2 == pytest.approx(-B_TRUE, rel=0.15)
    # The mask removes solvent noise: a better resolution than without.
    assert auto.resolution_A < bare.resolution_A


def test_sharpening_flattens_the_guinier_plot(blurred_result):
    g, fit = blurred_result.guinier, blurred_result.fit
    flat = fit_guinier(g.resolution_squared, g.sharpened, fit.low_res_A, fit.high_res_A)
    weighted = fit_guinier(g.resolution_squared, g.weighted, fit.low_res_A, fit.high_res_A)
    assert weighted.slope == pytest.approx(fit.slope)
    assert abs(flat.b_factor_A2) < 0.02 * B_TRUE


def test_given_b_factor_multiplies_the_spectrum_by_exp_minus_b_s2_over_4(blurred_halves):
    h1, h2 = blurred_halves
    plain = SharpenSettings(fsc_weighting=False, low_pass_A=0)
    r = postprocess(h1, h2, PX_B, auto_mask=None, b_factor=-100.0, sharpening=plain)
    grid = RadialGrid(L_B, PX_B)
    s = grid.k_px / grid.box_A
    expected = filtered(0.5 * (h1 + h2), np.exp(25.0 * s**2))
    assert r.b_factor_A2 == -100.0 and r.fit is None and r.low_pass_A is None
    np.testing.assert_allclose(r.map, expected, atol=1e-4 * np.abs(expected).max())


def test_low_pass_at_the_resolution_removes_what_lies_beyond(blurred_result):
    r = blurred_result
    shells = np.arange(r.box // 2 + 1)
    _, amplitude = guinier_values(fft3c(r.map), RadialGrid(r.box, r.pixel_size_A))
    beyond = shells > r.box * r.pixel_size_A / r.resolution_A + 1
    assert r.low_pass_A == pytest.approx(r.resolution_A)
    assert np.all(~np.isfinite(amplitude[beyond]) | (amplitude[beyond] < np.nanmax(amplitude) - 10))


def test_positive_b_factor_and_no_fit_range_warn(blurred_halves):
    h1, h2 = blurred_halves
    with pytest.warns(PostprocessWarning, match="positive B-factor"):
        postprocess(h1, h2, PX_B, auto_mask=None, b_factor=50.0)
    # A fit range that holds no shell: not sharpened, and said so.
    with pytest.warns(PostprocessWarning, match="no B-factor fitted"):
        r = postprocess(h1, h2, PX_B, auto_mask=None, sharpening=SharpenSettings(fit_low_res_A=3.0, fit_high_res_A=2.9))
    assert r.b_factor_A2 == 0.0 and r.fit is None


# ---- phase randomisation and the corrected FSC ----------------------------------

def test_randomised_phases_keep_amplitudes_and_low_frequencies():
    rng = np.random.default_rng(4)
    v = rng.normal(size=(32, 32, 32)).astype(np.float32)
    out = randomise_phases_beyond(v, 8.0, np.random.default_rng(0))
    F, G = fft3c(v), fft3c(out)
    k = radial_distance(32, 3, dtype=np.float64)
    # Amplitudes survive everywhere: the random phases are Hermitian, so nothing was
    # lost to taking the real part.
    np.testing.assert_allclose(np.abs(G), np.abs(F), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(G[k < 8], F[k < 8], rtol=1e-3, atol=1e-3)
    _, c = fsc(v, out)
    assert np.all(c[1:8] > 0.999) and np.abs(c[9:]).max() < 0.3
    again = randomise_phases_beyond(v, 8.0, np.random.default_rng(0))
    assert np.array_equal(out, again)


def test_corrected_fsc_keeps_the_masked_one_for_two_shells_past_the_randomisation():
    masked = np.linspace(1.0, 0.2, 12)
    randomised = np.full(12, 0.5)
    c = corrected_fsc(masked, randomised, 4)
    np.testing.assert_array_equal(c[:6], masked[:6])
    np.testing.assert_allclose(c[6:], (masked[6:] - 0.5) / 0.5)


def test_correction_brings_a_tight_mask_back_to_the_unmasked_resolution(band_limited_halves):
    h1, h2 = band_limited_halves
    tight = soft_sphere(L_T, 0.3 * L_T, 0.0)  # hard edge, cutting through the atoms
    with pytest.warns(PostprocessWarning, match="phase-randomised FSC is"):
        r = postprocess(h1, h2, PX_T, mask=tight, b_factor=0.0, rng=0)
    c = r.curves

    def shell(curve):
        return L_T * PX_T / fsc_resolution_A(curve, L_T, PX_T)

    # The hard mask correlates the noise beyond the band: the masked FSC reads Nyquist.
    assert shell(c.masked) >= shell(c.unmasked) + 8
    assert c.randomise_from_shell < 14
    assert abs(shell(c.corrected) - shell(c.unmasked)) <= 1.0
    assert r.resolution_A == pytest.approx(fsc_resolution_A(c.corrected, L_T, PX_T))


def test_same_seed_same_output(band_limited_halves):
    h1, h2 = band_limited_halves
    a, b, c = (quiet(postprocess, h1, h2, PX_T, rng=seed) for seed in (5, 5, 6))
    assert np.array_equal(a.map, b.map) and np.array_equal(a.curves.randomised, b.curves.randomised)
    assert not np.array_equal(a.curves.randomised, c.curves.randomised)


def test_fsc_of_a_map_with_itself_is_one(blurred_halves):
    h1, _ = blurred_halves
    with pytest.warns(PostprocessWarning, match="never drops below 0.8"):
        r = postprocess(h1, h1, PX_B, b_factor=0.0)
    np.testing.assert_allclose(r.unmasked_fsc, 1.0, atol=1e-9)
    np.testing.assert_allclose(r.final_fsc, 1.0, atol=1e-6)
    assert r.resolution_A == pytest.approx(2 * PX_B)


def test_unmasked_fsc_reaching_further_warns_and_is_reported(band_limited_halves):
    h1, h2 = band_limited_halves
    # A mask over solvent only: its corrected FSC is worse than the unmasked one.
    corner = np.roll(soft_sphere(L_T, 6.0, 3.0), (L_T // 2,) * 3, axis=(0, 1, 2))
    with pytest.warns(PostprocessWarning, match="unmasked FSC extends beyond"):
        r = postprocess(h1, h2, PX_T, mask=corner, b_factor=0.0)
    assert np.array_equal(r.final_fsc, r.curves.unmasked)
    assert r.resolution_A == pytest.approx(fsc_resolution_A(r.curves.unmasked, L_T, PX_T))
    with pytest.warns(PostprocessWarning, match="force_mask"):
        forced = postprocess(h1, h2, PX_T, mask=corner, b_factor=0.0, force_mask=True)
    assert np.array_equal(forced.final_fsc, forced.curves.corrected)
    assert forced.resolution_A > 2 * r.resolution_A


# ---- masks ------------------------------------------------------------------------

def test_auto_mask_threshold_extend_and_soft_edge():
    ball = soft_sphere(40, 6.0, 0.0)
    m = auto_mask(ball, 2.0, AutoMaskSettings(threshold=0.5, lowpass_A=0, extend_px=3, soft_edge_px=4))
    row = m[20, 20, 20:]
    assert row[:10].tolist() == [1.0] * 10  # radius 6, grown by 3
    assert row[11] == pytest.approx(0.5)  # half-way through the 4-px edge
    assert np.all(row[13:] == 0) and 0 <= m.min() and m.max() == 1
    # The default threshold is a fraction of the low-passed map's maximum.
    assert np.array_equal(auto_mask(ball, 2.0, AutoMaskSettings(lowpass_A=0)),
                          auto_mask(ball, 2.0, AutoMaskSettings(threshold=0.2, lowpass_A=0)))
    with pytest.raises(InputError, match="lower the threshold"):
        auto_mask(ball, 2.0, AutoMaskSettings(threshold=2.0))


# ---- bad input ----------------------------------------------------------------------

@pytest.mark.parametrize("case, match", [
    ("box", "same box"), ("mask_box", "mask box"), ("mask_range", r"outside \[0, 1\]"),
    ("pixel", "positive pixel size"), ("b", "--b-factor"),
])
def test_bad_input_is_one_line(case, match):
    v = np.zeros((16, 16, 16), np.float32)
    args = dict(half1=v, half2=v, pixel_size_A=1.0)
    kwargs = {}
    if case == "box":
        args["half2"] = np.zeros((12, 12, 12), np.float32)
    elif case == "mask_box":
        kwargs["mask"] = np.ones((12, 12, 12))
    elif case == "mask_range":
        kwargs["mask"] = np.full((16, 16, 16), 1.5)
    elif case == "pixel":
        args["pixel_size_A"] = 0.0
    else:
        kwargs["b_factor"] = "sharp"
    with pytest.raises(InputError, match=match) as err:
        postprocess(*args.values(), **kwargs)
    assert "\n" not in str(err.value)


def test_read_inputs_refuses_maps_of_different_pixel_sizes(tmp_path):
    v = np.zeros((16, 16, 16), np.float32)
    write_map(tmp_path / "h1.mrc", v, 1.0)
    write_map(tmp_path / "h2.mrc", v, 1.2)
    write_map(tmp_path / "m.mrc", np.ones_like(v), 1.2)
    with pytest.raises(InputError, match="h2.mrc: voxel size 1.2 A differs"):
        read_inputs(tmp_path / "h1.mrc", tmp_path / "h2.mrc")
    with pytest.raises(InputError, match="m.mrc: voxel size 1.2 A differs"):
        read_inputs(tmp_path / "h1.mrc", tmp_path / "h1.mrc", tmp_path / "m.mrc")
    # --pixel-size overrides the headers.
    assert read_inputs(tmp_path / "h1.mrc", tmp_path / "h2.mrc", pixel_size_A=1.1).pixel_size_A == 1.1


# ---- files --------------------------------------------------------------------------

def test_star_has_relions_blocks_and_labels(blurred_result, tmp_path, shared_data):
    paths = write_postprocess(blurred_result, tmp_path, half_map_names=("run_half1.mrc", "run_half2.mrc"))
    ours = starfile.read(paths["star"], always_dict=True)
    relion = starfile.read(shared_data / "realworld" / "star" / "postprocess.star", always_dict=True)
    assert list(ours) == list(relion) == ["general", "fsc", "guinier"]
    assert set(relion["general"]) <= set(ours["general"])
    assert list(ours["fsc"].columns) == list(relion["fsc"].columns)
    assert set(relion["guinier"].columns) <= set(ours["guinier"].columns)
    # What RELION adds with --auto_bfac, and nothing else.
    assert set(ours["general"]) - set(relion["general"]) == {
        "rlnFittedSlopeGuinierPlot", "rlnFittedInterceptGuinierPlot", "rlnCorrelationFitGuinierPlot"}
    assert set(ours["guinier"].columns) - set(relion["guinier"].columns) == {
        "rlnLogAmplitudesSharpened", "rlnLogAmplitudesIntercept"}
    g, r = ours["general"], blurred_result
    assert g["rlnFinalResolution"] == pytest.approx(r.resolution_A)
    assert g["rlnBfactorUsedForSharpening"] == pytest.approx(r.b_factor_A2) and g["rlnBfactorUsedForSharpening"] < 0
    assert g["rlnUnfilteredMapHalf1"] == "run_half1.mrc" and g["rlnMaskName"] == "mask.mrc"
    assert g["rlnRandomiseFrom"] == pytest.approx(r.box * r.pixel_size_A / r.curves.randomise_from_shell)
    fsc_table = ours["fsc"]
    assert len(fsc_table) == r.box // 2 + 1
    assert fsc_table["rlnResolution"][1] == pytest.approx(1 / (r.box * r.pixel_size_A))
    np.testing.assert_allclose(fsc_table["rlnFourierShellCorrelationCorrected"], r.final_fsc)
    assert ours["guinier"]["rlnResolutionSquared"][1] == pytest.approx(1 / (r.box * r.pixel_size_A) ** 2)


def test_written_files(blurred_result, tmp_path):
    paths = write_postprocess(blurred_result, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "postprocess.mrc", "postprocess_masked.mrc", "mask.mrc", "fsc.csv", "fsc.png", "guinier.png", "postprocess.star"}
    header = paths["fsc_csv"].read_text().splitlines()[0].split(",")
    assert header == ["shell", "frequency_1/A", "resolution_A", "corrected", "unmasked", "masked", "phase_randomised_masked"]
    for png in ("fsc_png", "guinier_png"):
        assert paths[png].read_bytes()[:4] == b"\x89PNG"
    mask, px = read_map(paths["mask"])
    assert px == PX_B and np.array_equal(mask, blurred_result.mask)


def test_unmasked_star_has_relions_unmasked_columns(blurred_halves, tmp_path):
    h1, h2 = blurred_halves
    r = postprocess(h1, h2, PX_B, auto_mask=None, b_factor=0.0)
    blocks = star_blocks(r)
    assert "rlnMaskName" not in blocks["general"] and "rlnRandomiseFrom" not in blocks["general"]
    assert list(blocks["fsc"].columns)[3:] == ["rlnFourierShellCorrelationUnmaskedMaps"]
    assert list(blocks["guinier"].columns) == ["rlnResolutionSquared", "rlnLogAmplitudesOriginal", "rlnLogAmplitudesWeighted"]
    assert "mask" not in write_postprocess(r, tmp_path)


# ---- command line ---------------------------------------------------------------------

def test_cli_end_to_end_and_bad_input_leaves_outputs(band_limited_halves, tmp_path, capsys):
    h1, h2 = band_limited_halves
    write_map(tmp_path / "half1.mrc", h1, PX_T)
    write_map(tmp_path / "half2.mrc", h2, PX_T)
    out = tmp_path / "pp"
    assert main(["postprocess", str(tmp_path / "half1.mrc"), str(tmp_path / "half2.mrc"), "--out", str(out),
                 "--auto-mask", "--mask-lowpass-A", "12"]) == 0
    printed = capsys.readouterr().out
    assert "final resolution" in printed
    star = starfile.read(out / "postprocess.star", always_dict=True)
    assert star["general"]["rlnFinalResolution"] > 2 * PX_T
    for name in ("postprocess.mrc", "mask.mrc", "fsc.csv", "fsc.png", "guinier.png"):
        assert (out / name).is_file()
    before = (out / "postprocess.star").read_bytes()

    write_map(tmp_path / "small.mrc", np.ones((16, 16, 16), np.float32), PX_T)
    write_map(tmp_path / "other_px.mrc", h2, 1.0)
    bad = [
        ["--mask", str(tmp_path / "small.mrc")],
        ["--b-factor", "much"],
    ]
    for extra in bad:
        code = main(["postprocess", str(tmp_path / "half1.mrc"), str(tmp_path / "half2.mrc"), "--out", str(out), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("cryorecon postprocess: error:")
    for half2 in ("small.mrc", "other_px.mrc"):
        code = main(["postprocess", str(tmp_path / "half1.mrc"), str(tmp_path / half2), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and half2 in err
    assert (out / "postprocess.star").read_bytes() == before
