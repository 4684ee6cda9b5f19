"""STAR files: RELION 3.0 / 3.1 / 5 read into one per-particle table, written back as 3.1."""
import numpy as np
import pandas as pd
import pytest
import starfile

from cryorecon.errors import InputError
from cryorecon.io import read_particle_table, read_star, write_particle_star


def _relion30_table(n=6):
    """A RELION 3.0 particle table: everything per particle, pixel origins, DetectorPixelSize."""
    rng = np.random.default_rng(3)
    return pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@Particles/stack.mrcs" for i in range(n)],
        "rlnMicrographName": [f"mic{i % 2}.mrc" for i in range(n)],
        "rlnDefocusU": rng.uniform(10000, 30000, n).round(2),
        "rlnDefocusV": rng.uniform(10000, 30000, n).round(2),
        "rlnDefocusAngle": rng.uniform(-90, 90, n).round(3),
        "rlnVoltage": [300.0] * (n // 2) + [200.0] * (n - n // 2),
        "rlnSphericalAberration": 2.7,
        "rlnAmplitudeContrast": 0.1,
        "rlnMagnification": 10000.0,
        "rlnDetectorPixelSize": 5.0,  # micrometre -> 5 A/px at 10000x
        "rlnAngleRot": rng.uniform(-180, 180, n).round(4),
        "rlnAngleTilt": rng.uniform(0, 180, n).round(4),
        "rlnAnglePsi": rng.uniform(-180, 180, n).round(4),
        "rlnOriginX": rng.uniform(-5, 5, n).round(3),
        "rlnOriginY": rng.uniform(-5, 5, n).round(3),
        "rlnClassNumber": np.arange(n) % 3 + 1,
    })


def _assert_same_information(original: pd.DataFrame, back: pd.DataFrame):
    """Every original column is present after the round trip with the same values."""
    assert len(back) == len(original)
    for col in original.columns:
        assert col in back.columns, f"{col} lost"
        a, b = original[col], back[col]
        if pd.api.types.is_numeric_dtype(a):
            np.testing.assert_allclose(b.to_numpy(np.float64), a.to_numpy(np.float64),
                                       rtol=1e-9, atol=1e-6, err_msg=col)
        else:
            assert list(b.astype(str)) == list(a.astype(str)), col


def test_read_star_returns_all_blocks(shared_data):
    blocks = read_star(shared_data / "aspire_ctf_shift_200" / "particles.star")
    assert set(blocks) == {"optics", "particles"}
    assert len(blocks["particles"]) == 200


def test_read_star_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_star(tmp_path / "missing.star")
    junk = tmp_path / "junk.star"
    junk.write_text("this is not\na star file\n")
    with pytest.raises(InputError) as err:
        read_star(junk)
    assert "junk.star" in str(err.value) and "\n" not in str(err.value)
    ragged = tmp_path / "ragged.star"
    ragged.write_text("data_particles\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n1@a.mrcs 1000\n2@a.mrcs\n")
    with pytest.raises(InputError, match="row 2"):
        read_star(ragged)


def test_relion31_file_is_normalised(shared_data):
    path = shared_data / "aspire_ctf_shift_200" / "particles.star"
    table = read_particle_table(path)
    raw = starfile.read(path, always_dict=True)["particles"]
    df = table.particles
    assert table.version == "3.1" and table.origin_units == "angstrom" and len(table) == 200
    assert (df["rlnImagePixelSize"] == 5.078125).all()
    assert (df["rlnImageSize"] == 64).all()
    np.testing.assert_array_equal(df["rlnOriginXAngst"], raw["rlnOriginXAngst"])
    np.testing.assert_allclose(df["rlnOriginX"] * 5.078125, raw["rlnOriginXAngst"], rtol=1e-12)
    np.testing.assert_allclose(df["rlnOriginY"] * 5.078125, raw["rlnOriginYAngst"], rtol=1e-12)
    assert list(df["rlnImageName"]) == list(raw["rlnImageName"])


def test_pixel_origins_with_optics_table_are_converted(shared_data):
    # RELION's relion_project output: optics table but RELION 3.0 pixel offsets.
    table = read_particle_table(shared_data / "relion_project_reference" / "rln_proj_64_shifted.star")
    df = table.particles
    assert table.origin_units == "pixel"
    np.testing.assert_array_equal(df["rlnOriginX"], [6, 10, -8, -13])
    np.testing.assert_array_equal(df["rlnOriginY"], [10, -5, 11, -3])
    # The file says 1.0 A/px, so Angstrom and pixel offsets coincide.
    np.testing.assert_array_equal(df["rlnOriginXAngst"], df["rlnOriginX"])
    both = read_particle_table(shared_data / "relion_project_reference" / "rln_proj_64_shifted.star",
                               pixel_size_A=2.0)
    np.testing.assert_array_equal(both.particles["rlnOriginXAngst"], [12, 20, -16, -26])


def test_relion30_file_is_normalised(tmp_path):
    original = _relion30_table()
    path = tmp_path / "p30.star"
    starfile.write(original, path)
    table = read_particle_table(path)
    df = table.particles
    assert table.version == "3.0" and table.origin_units == "pixel"
    np.testing.assert_allclose(df["rlnImagePixelSize"], 5.0)
    np.testing.assert_allclose(df["rlnOriginXAngst"], original["rlnOriginX"] * 5.0)
    # Two voltages -> two optics groups.
    assert sorted(df["rlnOpticsGroup"].unique()) == [1, 2]
    assert (df.groupby("rlnOpticsGroup")["rlnVoltage"].nunique() == 1).all()


def test_relion30_round_trip_is_written_as_31_without_losing_columns(tmp_path):
    original = _relion30_table()
    src, dst = tmp_path / "p30.star", tmp_path / "out.star"
    starfile.write(original, src)
    write_particle_star(dst, read_particle_table(src))
    blocks = starfile.read(dst, always_dict=True)
    assert set(blocks) == {"optics", "particles"}
    optics, particles = blocks["optics"], blocks["particles"]
    assert len(optics) == 2 and set(optics["rlnVoltage"]) == {300.0, 200.0}
    np.testing.assert_allclose(optics["rlnImagePixelSize"], 5.0)
    assert "rlnOriginXAngst" in particles and "rlnOriginX" not in particles
    assert "rlnVoltage" not in particles  # optics live in data_optics in 3.1
    back = read_particle_table(dst)
    assert back.version == "3.1" and back.origin_units == "angstrom"
    _assert_same_information(original, back.particles)


def test_relion31_round_trip_without_losing_columns(tmp_path, shared_data):
    src = shared_data / "aspire_ctf_shift_200" / "particles.star"
    raw = starfile.read(src, always_dict=True)
    dst = tmp_path / "out.star"
    write_particle_star(dst, read_particle_table(src))
    back = read_particle_table(dst)
    _assert_same_information(raw["particles"], back.particles)
    written = starfile.read(dst, always_dict=True)["optics"]
    _assert_same_information(raw["optics"], written)


def test_relion5_is_detected(tmp_path, shared_data):
    text = (shared_data / "aspire_ctf_shift_200" / "particles.star").read_text()
    path = tmp_path / "r5.star"
    path.write_text("\n# version 50001\n" + text)
    assert read_particle_table(path).version == "5"


def _optics_star(tmp_path, pixel_sizes, name="p.star"):
    optics = pd.DataFrame({
        "rlnOpticsGroup": np.arange(1, len(pixel_sizes) + 1),
        "rlnOpticsGroupName": [f"og{i + 1}" for i in range(len(pixel_sizes))],
        "rlnVoltage": 300.0,
        "rlnImagePixelSize": pixel_sizes,
        "rlnImageSize": 32,
    })
    particles = pd.DataFrame({
        "rlnImageName": ["000001@s.mrcs", "000002@s.mrcs"],
        "rlnOpticsGroup": [1, len(pixel_sizes)],
        "rlnOriginXAngst": [1.5, -2.0],
        "rlnOriginYAngst": [0.5, 3.0],
    })
    path = tmp_path / name
    starfile.write({"optics": optics, "particles": particles}, path)
    return path


@pytest.mark.parametrize("bad", [0.0, -1.2])
def test_bad_pixel_size_in_star_is_refused(tmp_path, bad):
    path = _optics_star(tmp_path, [bad])
    with pytest.raises(InputError) as err:
        read_particle_table(path)
    msg = str(err.value)
    assert "p.star" in msg and "--pixel-size" in msg and "\n" not in msg
    fixed = read_particle_table(path, pixel_size_A=1.1)
    assert (fixed.particles["rlnImagePixelSize"] == 1.1).all()
    np.testing.assert_allclose(fixed.particles["rlnOriginX"], np.array([1.5, -2.0]) / 1.1)


def test_particles_in_unknown_optics_group_are_refused(tmp_path):
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.0]})
    particles = pd.DataFrame({"rlnImageName": ["1@s.mrcs"], "rlnOpticsGroup": [2]})
    path = tmp_path / "g.star"
    starfile.write({"optics": optics, "particles": particles}, path)
    with pytest.raises(InputError, match="optics group 2"):
        read_particle_table(path)


def test_pixel_origins_without_pixel_size_warn(tmp_path):
    path = tmp_path / "nopx.star"
    starfile.write(pd.DataFrame({"rlnImageName": ["1@s.mrcs"], "rlnOriginX": [2.0], "rlnOriginY": [1.0]}), path)
    with pytest.warns(UserWarning, match="--pixel-size"):
        table = read_particle_table(path)
    assert "rlnOriginXAngst" not in table.particles
    with pytest.raises(InputError, match="--pixel-size"):
        write_particle_star(tmp_path / "out.star", table)
    converted = table.with_pixel_size(3.0)
    assert converted.particles["rlnOriginXAngst"].tolist() == [6.0]


def test_write_keeps_groups_and_regroups_inconsistent_ones(tmp_path):
    path = _optics_star(tmp_path, [1.0, 2.0])
    table = read_particle_table(path)
    write_particle_star(tmp_path / "same.star", table)
    optics = starfile.read(tmp_path / "same.star", always_dict=True)["optics"]
    assert optics["rlnOpticsGroupName"].tolist() == ["og1", "og2"]
    np.testing.assert_array_equal(optics["rlnImagePixelSize"], [1.0, 2.0])
    # Per-particle voltages that differ inside one group cannot stay one optics group.
    df = table.particles.copy()
    df["rlnOpticsGroup"] = 1
    df["rlnOpticsGroupName"] = "og1"
    with pytest.warns(UserWarning, match="regrouping"):
        write_particle_star(tmp_path / "split.star", df)
    back = read_particle_table(tmp_path / "split.star")
    np.testing.assert_array_equal(back.particles["rlnImagePixelSize"], [1.0, 2.0])
    assert back.particles["rlnOpticsGroup"].nunique() == 2


def test_write_is_atomic(tmp_path, shared_data, monkeypatch):
    dst = tmp_path / "out.star"
    dst.write_text("previous")

    def broken(*args, **kwargs):
        raise OSError("simulated full disk")

    monkeypatch.setattr(starfile, "write", broken)
    with pytest.raises(OSError):
        write_particle_star(dst, read_particle_table(shared_data / "aspire_ctf_shift_200" / "particles.star"))
    assert dst.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.star"]


# ------------------------------------------------------------------ CTF columns
def test_ctf_params_from_a_relion30_table_in_our_names():
    from cryorecon.io.star import CTF_COLUMNS, ctf_params_from_table, has_ctf_columns

    df = _relion30_table()
    assert has_ctf_columns(df)
    ctf = ctf_params_from_table(df)
    assert list(ctf) == list(CTF_COLUMNS)
    assert all(v.dtype == np.float64 and v.shape == (len(df),) for v in ctf.values())
    np.testing.assert_array_equal(ctf["defocus_u_A"], df["rlnDefocusU"])
    np.testing.assert_array_equal(ctf["defocus_v_A"], df["rlnDefocusV"])
    np.testing.assert_array_equal(ctf["defocus_angle_deg"], df["rlnDefocusAngle"])
    np.testing.assert_array_equal(ctf["voltage_kV"], df["rlnVoltage"])
    np.testing.assert_array_equal(ctf["cs_mm"], 2.7)
    np.testing.assert_array_equal(ctf["amplitude_contrast"], 0.1)
    np.testing.assert_array_equal(ctf["phase_shift_deg"], 0.0)  # absent: default
    np.testing.assert_array_equal(ctf["bfactor_A2"], 0.0)
    sub = ctf_params_from_table(df, [4, 1])
    np.testing.assert_array_equal(sub["defocus_u_A"], df["rlnDefocusU"].to_numpy()[[4, 1]])
    np.testing.assert_array_equal(sub["phase_shift_deg"], [0.0, 0.0])


def test_ctf_without_defocus_v_is_not_astigmatic_and_missing_columns_mean_no_ctf():
    from cryorecon.io.star import CTF_REQUIRED_COLUMNS, ctf_params_from_table, has_ctf_columns

    df = _relion30_table().drop(columns=["rlnDefocusV", "rlnDefocusAngle"])
    ctf = ctf_params_from_table(df, [2, 0])
    np.testing.assert_array_equal(ctf["defocus_v_A"], ctf["defocus_u_A"])
    np.testing.assert_array_equal(ctf["defocus_angle_deg"], [0.0, 0.0])
    for column in CTF_REQUIRED_COLUMNS:
        partial = _relion30_table().drop(columns=[column])
        assert not has_ctf_columns(partial) and ctf_params_from_table(partial) is None


def test_ctf_columns_round_trip_through_a_star_file(tmp_path):
    from cryorecon.io.star import ctf_columns_from_params, ctf_params_from_table

    rng = np.random.default_rng(5)
    n = 7
    params = {"defocus_u_A": rng.uniform(1e4, 2e4, n), "defocus_v_A": rng.uniform(1e4, 2e4, n),
              "defocus_angle_deg": rng.uniform(-90, 90, n), "voltage_kV": np.full(n, 300.0),
              "cs_mm": np.full(n, 2.7), "amplitude_contrast": np.full(n, 0.07),
              "phase_shift_deg": rng.uniform(0, 90, n)}
    columns = ctf_columns_from_params(params)
    assert list(columns) == ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
                             "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnPhaseShift"]
    df = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@s.mrcs" for i in range(n)], **columns})
    write_particle_star(tmp_path / "c.star", df, pixel_size_A=1.5)
    back = ctf_params_from_table(read_particle_table(tmp_path / "c.star").particles)
    for key, values in params.items():
        np.testing.assert_array_equal(back[key], values, err_msg=key)
    np.testing.assert_array_equal(back["bfactor_A2"], 0.0)
    with pytest.raises(ValueError, match="defocus_A"):
        ctf_columns_from_params({"defocus_A": 1.0})
