"""ParticleStack: lazy reading, metadata in RELION conventions, validation of bad inputs."""
import json

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

import cryorecon.io.stack_files as stack_files_module
from cryorecon.errors import InputError
from cryorecon.io import ParticleStack, read_particle_table

CTF_COLUMNS = {
    "rlnDefocusU": 15000.0,
    "rlnDefocusV": 14000.0,
    "rlnDefocusAngle": 30.0,
    "rlnVoltage": 300.0,
    "rlnSphericalAberration": 2.7,
    "rlnAmplitudeContrast": 0.07,
}


@pytest.fixture(scope="module")
def aspire(shared_data):
    return ParticleStack.from_star(shared_data / "aspire_ctf_shift_200" / "particles.star")


def _write_mrcs(path, images, pixel_size_A=2.0):
    # Written with mrcfile directly, so these fixtures do not depend on our writer.
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(images, dtype=np.float32))
        m.set_image_stack()
        m.voxel_size = pixel_size_A
    return path


def _write_star(path, names, ctf=True, optics=None, **columns):
    df = pd.DataFrame({"rlnImageName": names, **columns})
    if ctf:
        for key, value in CTF_COLUMNS.items():
            if key not in df.columns:
                df[key] = value
    if optics is None:
        starfile.write(df, path)
    else:
        if "rlnOpticsGroup" not in df.columns:
            df["rlnOpticsGroup"] = 1
        starfile.write({"optics": optics, "particles": df}, path)
    return path


def _message(err):
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_aspire_set_shape_and_pixel_size(aspire):
    assert aspire.n == len(aspire) == 200
    assert aspire.box == 64
    assert aspire.pixel_size_A == 5.078125
    assert aspire.header_pixel_size_A == 5.078125
    assert aspire.version == "3.1" and aspire.has_ctf


def test_aspire_images_match_the_stack(aspire, shared_data):
    with mrcfile.open(shared_data / "aspire_ctf_shift_200" / "particles.mrcs") as m:
        reference = np.array(m.data)
    idx = np.array([199, 0, 57, 57, 3])
    imgs = aspire.images(idx)
    assert imgs.dtype == np.float32 and imgs.shape == (5, 64, 64)
    np.testing.assert_array_equal(imgs, reference[idx])


def test_aspire_poses_follow_relion_conventions(aspire, shared_data):
    folder = shared_data / "aspire_ctf_shift_200"
    raw = starfile.read(folder / "particles.star", always_dict=True)["particles"]
    np.testing.assert_array_equal(aspire.shifts_A[:, 0], raw["rlnOriginXAngst"])
    np.testing.assert_array_equal(aspire.shifts_A[:, 1], raw["rlnOriginYAngst"])
    # The generator clipped shifts at 6 px; in Angstrom that is 6 * 5.078125.
    assert np.abs(aspire.shifts_A).max() <= 6 * 5.078125 + 1e-4
    np.testing.assert_allclose(aspire.euler_deg[:, 1], raw["rlnAngleTilt"])
    np.testing.assert_allclose(aspire.rotations, np.load(folder / "relion_A_matrices.npy"), atol=1e-6)
    np.testing.assert_array_equal(aspire.optics_group, np.ones(200))


def test_aspire_ctf_matches_the_simulation_parameters(aspire, shared_data):
    meta = json.loads((shared_data / "aspire_ctf_shift_200" / "meta.json").read_text())
    ctf = aspire.ctf_params()
    assert set(ctf) == {"defocus_u_A", "defocus_v_A", "defocus_angle_deg", "voltage_kV", "cs_mm",
                        "amplitude_contrast", "phase_shift_deg", "bfactor_A2"}
    assert all(v.shape == (200,) for v in ctf.values())
    assert np.all(ctf["voltage_kV"] == meta["args"]["voltage"])
    assert np.all(ctf["cs_mm"] == meta["args"]["cs"])
    assert np.all(ctf["amplitude_contrast"] == meta["args"]["q0"])
    np.testing.assert_array_equal(ctf["defocus_u_A"], ctf["defocus_v_A"])  # no astigmatism
    nearest = np.abs(ctf["defocus_u_A"][:, None] - np.array(meta["defoci_A"])[None]).min(axis=1)
    assert nearest.max() < 1e-3
    sub = aspire.ctf_params([4, 2])
    np.testing.assert_array_equal(sub["defocus_u_A"], ctf["defocus_u_A"][[4, 2]])


def test_iter_batches_visits_each_particle_once_in_seeded_order(aspire):
    seen, sizes = [], []
    for idx, imgs in aspire.iter_batches(64, rng=np.random.default_rng(5)):
        assert imgs.shape == (len(idx), 64, 64)
        seen.append(idx)
        sizes.append(len(idx))
    order = np.concatenate(seen)
    assert sizes == [64, 64, 64, 8]
    np.testing.assert_array_equal(np.sort(order), np.arange(200))
    again = np.concatenate([i for i, _ in aspire.iter_batches(64, rng=np.random.default_rng(5))])
    np.testing.assert_array_equal(order, again)
    plain = np.concatenate([i for i, _ in aspire.iter_batches(50, indices=[7, 3, 9])])
    np.testing.assert_array_equal(plain, [7, 3, 9])


def test_relion_reference_without_ctf(shared_data):
    star = shared_data / "relion_project_reference" / "rln_proj_64_shifted.star"
    with pytest.raises(InputError, match="add CTF columns or pass --no-ctf"):
        ParticleStack.from_star(star)
    stack = ParticleStack.from_star(star, require_ctf=False)
    assert not stack.has_ctf and stack.ctf_params() is None
    assert stack.n == 4 and stack.pixel_size_A == 1.0
    np.testing.assert_array_equal(stack.shifts_A, [[6, 10], [10, -5], [-8, 11], [-13, -3]])


class _RecordingStack:
    """Wraps a memmap and records which frames were read, to prove reads are lazy."""

    def __init__(self, data, log):
        self.data, self.log = data, log
        self.shape = data.shape

    def __getitem__(self, key):
        self.log.extend(np.atleast_1d(key).tolist())
        return self.data[key]


def test_several_stacks_opened_once_and_read_lazily(tmp_path, monkeypatch):
    rng = np.random.default_rng(8)
    a = rng.normal(size=(4, 16, 16)).astype(np.float32)
    b = rng.normal(size=(3, 16, 16)).astype(np.float32)
    _write_mrcs(tmp_path / "a.mrcs", a)
    _write_mrcs(tmp_path / "sub" / "b.mrcs", b)
    names = ["000002@a.mrcs", "000003@sub/b.mrcs", "000001@a.mrcs", "000001@sub/b.mrcs", "000004@a.mrcs"]
    star = _write_star(tmp_path / "p.star", names)
    opened, reads = [], []
    real_open = stack_files_module.open_stack

    def spy(path):
        opened.append(path.name)
        data, px = real_open(path)
        return _RecordingStack(data, reads), px

    monkeypatch.setattr(stack_files_module, "open_stack", spy)
    stack = ParticleStack.from_star(star)
    assert opened == []  # nothing mapped until pixels are asked for
    np.testing.assert_array_equal(stack.images([1, 0]), np.stack([b[2], a[1]]))
    np.testing.assert_array_equal(stack.images([4, 3, 2]), np.stack([a[3], b[0], a[0]]))
    assert sorted(opened) == ["a.mrcs", "b.mrcs"]
    assert sorted(reads) == [0, 0, 1, 2, 3]  # exactly the frames asked for
    assert stack.pixel_size_A == 2.0  # from the MRC header: the STAR file has none
    sub = stack.subset([3, 1])
    np.testing.assert_array_equal(sub.images([0, 1]), np.stack([b[0], b[2]]))
    assert sorted(opened) == ["a.mrcs", "b.mrcs"]  # the subset shares the open files


def test_write_star_round_trip_with_new_poses(tmp_path, aspire):
    rng = np.random.default_rng(9)
    euler = np.column_stack([rng.uniform(-180, 180, 200), rng.uniform(0, 180, 200),
                             rng.uniform(-180, 180, 200)])
    shifts = rng.normal(scale=4.0, size=(200, 2))
    out = tmp_path / "elsewhere" / "poses.star"
    out.parent.mkdir()
    aspire.write_star(out, euler_deg=euler, shifts_A=shifts,
                      extra_columns={"rlnClassNumber": np.arange(200) % 2 + 1})
    back = ParticleStack.from_star(out)
    assert back.n == 200 and back.box == 64 and back.pixel_size_A == 5.078125
    np.testing.assert_allclose(back.euler_deg, euler, atol=1e-6)
    np.testing.assert_allclose(back.shifts_A, shifts, atol=1e-6)
    np.testing.assert_array_equal(back.table["rlnClassNumber"], np.arange(200) % 2 + 1)
    np.testing.assert_array_equal(back.images([0, 150]), aspire.images([0, 150]))
    np.testing.assert_array_equal(back.ctf_params()["defocus_u_A"], aspire.ctf_params()["defocus_u_A"])
    blocks = starfile.read(out, always_dict=True)
    assert set(blocks) == {"optics", "particles"}
    assert blocks["optics"]["rlnImagePixelSize"].tolist() == [5.078125]
    # Own poses when none are given.
    aspire.subset([10, 20]).write_star(tmp_path / "own.star")
    own = ParticleStack.from_star(tmp_path / "own.star")
    np.testing.assert_allclose(own.euler_deg, aspire.euler_deg[[10, 20]], atol=1e-6)


def test_truncated_stack_is_refused(tmp_path):
    path = _write_mrcs(tmp_path / "s.mrcs", np.zeros((3, 16, 16)))
    path.write_bytes(path.read_bytes()[:-200])
    star = _write_star(tmp_path / "p.star", ["000001@s.mrcs"])
    with pytest.raises(InputError) as err:
        ParticleStack.from_star(star)
    msg = _message(err)
    assert "s.mrcs" in msg and "truncated" in msg


def test_missing_defocus_asks_for_ctf_columns(tmp_path):
    _write_mrcs(tmp_path / "s.mrcs", np.zeros((2, 8, 8)))
    star = _write_star(tmp_path / "p.star", ["000001@s.mrcs", "000002@s.mrcs"], ctf=False)
    with pytest.raises(InputError) as err:
        ParticleStack.from_star(star)
    msg = _message(err)
    assert "p.star" in msg and "rlnDefocusU" in msg and "add CTF columns or pass --no-ctf" in msg
    assert ParticleStack.from_star(star, require_ctf=False).ctf_params() is None


def test_index_past_end_of_stack(tmp_path):
    _write_mrcs(tmp_path / "s.mrcs", np.zeros((2, 8, 8)))
    star = _write_star(tmp_path / "p.star", ["000001@s.mrcs", "000003@s.mrcs"])
    with pytest.raises(InputError) as err:
        ParticleStack.from_star(star)
    msg = _message(err)
    assert "000003@s.mrcs" in msg and "2 images" in msg
    zero = _write_star(tmp_path / "z.star", ["000000@s.mrcs"])
    with pytest.raises(InputError, match="counting from 1"):
        ParticleStack.from_star(zero)


def test_missing_stack_file(tmp_path):
    star = _write_star(tmp_path / "p.star", ["000001@nowhere.mrcs"])
    with pytest.raises(InputError, match="nowhere.mrcs"):
        ParticleStack.from_star(star)


def test_nan_pixels_are_caught_when_read(tmp_path):
    imgs = np.ones((5, 8, 8), np.float32)
    imgs[3, 2, 2] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):  # mrcfile notices too, when writing
        _write_mrcs(tmp_path / "s.mrcs", imgs)
    star = _write_star(tmp_path / "p.star", [f"{i:06d}@s.mrcs" for i in range(1, 6)])
    stack = ParticleStack.from_star(star)  # not scanned up front: that would read everything
    assert stack.images([0, 1, 2, 4]).shape == (4, 8, 8)
    with pytest.raises(InputError) as err:
        stack.images([1, 3])
    msg = _message(err)
    assert "s.mrcs" in msg and "image 4" in msg and "NaN" in msg
    with pytest.raises(InputError, match="NaN"):
        stack.check_finite(chunk_size=2)
    stack.subset([0, 1, 2, 4]).check_finite(chunk_size=2)


def test_non_square_images(tmp_path):
    _write_mrcs(tmp_path / "s.mrcs", np.zeros((2, 8, 10)))
    star = _write_star(tmp_path / "p.star", ["000001@s.mrcs"])
    with pytest.raises(InputError) as err:
        ParticleStack.from_star(star)
    assert "square" in _message(err)


def _optics(pixel_sizes, sizes):
    return pd.DataFrame({
        "rlnOpticsGroup": np.arange(1, len(sizes) + 1),
        "rlnOpticsGroupName": [f"og{i + 1}" for i in range(len(sizes))],
        "rlnImagePixelSize": pixel_sizes,
        "rlnImageSize": sizes,
    })


@pytest.mark.parametrize("bad", [0.0, -2.0])
def test_bad_pixel_size_in_star(tmp_path, bad):
    _write_mrcs(tmp_path / "s.mrcs", np.zeros((1, 8, 8)))
    star = _write_star(tmp_path / "p.star", ["000001@s.mrcs"], optics=_optics([bad], [8]))
    with pytest.raises(InputError) as err:
        ParticleStack.from_star(star)
    assert "--pixel-size" in _message(err)
    assert ParticleStack.from_star(star, pixel_size_A=1.5).pixel_size_A == 1.5


def test_no_pixel_size_anywhere(tmp_path):
    _write_mrcs(tmp_path / "s.mrcs", np.zeros((1, 8, 8)), pixel_size_A=0.0)
    star = _write_star(tmp_path / "p.star", ["000001@s.mrcs"], rlnOriginX=[2.0], rlnOriginY=[-1.0])
    with pytest.warns(UserWarning):
        with pytest.raises(InputError) as err:
            ParticleStack.from_star(star)
    assert "pass --pixel-size" in _message(err)
    stack = ParticleStack.from_star(star, pixel_size_A=3.0)
    np.testing.assert_array_equal(stack.shifts_A, [[6.0, -3.0]])


def test_boxes_differ_between_optics_groups(tmp_path):
    _write_mrcs(tmp_path / "s.mrcs", np.zeros((2, 8, 8)))
    star = _write_star(tmp_path / "p.star", ["000001@s.mrcs", "000002@s.mrcs"],
                       optics=_optics([1.0, 1.0], [8, 16]), rlnOpticsGroup=[1, 2])
    with pytest.raises(InputError) as err:
        ParticleStack.from_star(star)
    assert "boxes differ between optics groups" in _message(err)


def test_stacks_with_different_boxes(tmp_path):
    _write_mrcs(tmp_path / "a.mrcs", np.zeros((1, 8, 8)))
    _write_mrcs(tmp_path / "b.mrcs", np.zeros((1, 10, 10)))
    star = _write_star(tmp_path / "p.star", ["000001@a.mrcs", "000001@b.mrcs"])
    with pytest.raises(InputError, match="different box sizes"):
        ParticleStack.from_star(star)


def test_header_and_star_pixel_sizes_may_disagree(tmp_path):
    _write_mrcs(tmp_path / "s.mrcs", np.zeros((1, 8, 8)), pixel_size_A=1.0)
    star = _write_star(tmp_path / "p.star", ["000001@s.mrcs"], optics=_optics([1.25], [8]))
    stack = ParticleStack.from_star(star)
    assert stack.pixel_size_A == 1.25 and stack.header_pixel_size_A == 1.0


def test_table_is_the_normalised_star(aspire):
    table = read_particle_table(aspire.star_path)
    pd.testing.assert_frame_equal(aspire.table, table.particles)


def test_pixel_sizes_differ_between_optics_groups(tmp_path):
    _write_mrcs(tmp_path / "s.mrcs", np.zeros((2, 8, 8)))
    star = _write_star(tmp_path / "p.star", ["000001@s.mrcs", "000002@s.mrcs"],
                       optics=_optics([1.0, 2.0], [8, 8]), rlnOpticsGroup=[1, 2])
    with pytest.raises(InputError) as err:
        ParticleStack.from_star(star)
    assert "pixel sizes differ between optics groups" in _message(err)
    stack = ParticleStack.from_star(star, pixel_size_A=1.0)  # an explicit override settles it
    np.testing.assert_array_equal(stack.optics_group, [1, 2])
