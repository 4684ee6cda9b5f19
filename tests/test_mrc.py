"""MRC maps and stacks: round trips, an independent reader (gemmi), bad files, atomic writes."""
import os
import warnings

import mrcfile
import numpy as np
import pytest

gemmi = pytest.importorskip("gemmi")  # the test extra; skipped where it is missing (the GPU machine's image)

from cryorecon.errors import InputError
from cryorecon.io import atomic_open, atomic_write, open_stack, read_map, write_map, write_stack
from cryorecon.io.mrc import read_header_info


def _one_line(err):
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".tmp" in p.name]


def test_map_round_trip_keeps_data_voxel_size_and_origin(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(6, 7, 8)).astype(np.float32)
    path = tmp_path / "v.mrc"
    write_map(path, vol, voxel_size_A=1.3, origin_A=(10.0, -2.5, 3.0))
    data, voxel = read_map(path)
    assert data.dtype == np.float32 and data.shape == (6, 7, 8)
    np.testing.assert_array_equal(data, vol)
    assert voxel == 1.3
    with mrcfile.open(path) as m:
        assert m.header.ispg == 1
        assert (float(m.header.origin.x), float(m.header.origin.y), float(m.header.origin.z)) == (10.0, -2.5, 3.0)
    assert _leftovers(tmp_path) == []


def test_gemmi_reads_what_we_write(tmp_path):
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(5, 6, 7)).astype(np.float32)  # (z, y, x), all sides different
    path = tmp_path / "v.mrc"
    write_map(path, vol, voxel_size_A=2.25)
    ccp4 = gemmi.read_ccp4_map(str(path))
    ccp4.setup(float("nan"))
    grid = np.array(ccp4.grid, copy=True)  # gemmi indexes (x, y, z)
    np.testing.assert_array_equal(grid.transpose(2, 1, 0), vol)
    assert ccp4.grid.spacing == pytest.approx((2.25, 2.25, 2.25))


def test_read_map_agrees_with_gemmi_on_reference_map(shared_data):
    path = shared_data / "ribosome70S" / "ribosome70S_L64.mrc"
    data, voxel = read_map(path)
    assert data.shape == (64, 64, 64) and voxel == 5.078125
    ccp4 = gemmi.read_ccp4_map(str(path))
    np.testing.assert_array_equal(np.array(ccp4.grid, copy=True).transpose(2, 1, 0), data)


def test_unknown_voxel_size_is_reported_as_zero(shared_data):
    data, voxel = read_map(shared_data / "ribosome70S" / "clean70SRibosome_vol_65p.mrc")
    assert data.shape == (65, 65, 65)
    assert voxel == 0.0


@pytest.mark.parametrize("dtype", [np.float16, np.int8, np.int16, np.uint16])
def test_other_data_modes_come_back_as_float32(tmp_path, dtype):
    vol = (np.arange(4 * 5 * 6) % 100).reshape(4, 5, 6).astype(dtype)
    path = tmp_path / "m.mrc"
    with mrcfile.new(path) as m:
        m.set_data(vol)
        m.voxel_size = 0.5
    data, voxel = read_map(path)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, vol.astype(np.float32))
    assert voxel == 0.5


def test_truncated_file_is_refused_with_one_line(tmp_path):
    path = tmp_path / "cut.mrc"
    write_map(path, np.ones((8, 8, 8)), 1.0)
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    with pytest.raises(InputError) as err:
        read_map(path)
    msg = _one_line(err)
    assert "cut.mrc" in msg and "truncated" in msg and "re-export" in msg
    with pytest.raises(InputError, match="truncated"):
        open_stack(path)
    path.write_bytes(raw[:500])  # shorter than the header itself
    with pytest.raises(InputError, match="truncated"):
        read_map(path)


def test_nonstandard_header_is_read_permissively_with_a_warning(tmp_path):
    path = tmp_path / "odd.mrc"
    vol = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    write_map(path, vol, 1.0)
    raw = bytearray(path.read_bytes())
    raw[208:212] = b"XXXX"  # the MAP identifier
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="odd.mrc"):
        data, _ = read_map(path)
    np.testing.assert_array_equal(data, vol)


def test_missing_and_non_mrc_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_map(tmp_path / "nope.mrc")
    junk = tmp_path / "junk.mrc"
    junk.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(InputError):
        read_map(junk)


def test_complex_data_is_refused(tmp_path):
    path = tmp_path / "c.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.ones((2, 3, 3), np.complex64))
    with pytest.raises(InputError, match="complex"):
        read_map(path)


def test_stack_round_trip_is_memory_mapped(tmp_path):
    rng = np.random.default_rng(2)
    imgs = rng.normal(size=(5, 16, 16)).astype(np.float32)
    path = tmp_path / "s.mrcs"
    write_stack(path, imgs, pixel_size_A=1.75)
    with mrcfile.open(path) as m:
        assert m.header.ispg == 0 and m.is_image_stack()
    stack, px = open_stack(path)
    assert isinstance(stack, np.memmap)
    assert not stack.flags.writeable
    assert stack.shape == (5, 16, 16) and px == 1.75
    np.testing.assert_array_equal(stack[[3, 1]], imgs[[3, 1]])


def test_single_image_is_a_stack_of_one(tmp_path):
    path = tmp_path / "one.mrc"
    img = np.arange(64, dtype=np.float32).reshape(8, 8)
    with mrcfile.new(path) as m:
        m.set_data(img)
    stack, px = open_stack(path)
    assert stack.shape == (1, 8, 8) and px == 0.0
    np.testing.assert_array_equal(stack[0], img)


def test_non_square_stack_is_refused(tmp_path):
    path = tmp_path / "rect.mrcs"
    write_stack(path, np.zeros((3, 8, 10)), 1.0)
    with pytest.raises(InputError) as err:
        open_stack(path)
    assert "square" in _one_line(err)


def test_header_info_describes_the_data_block(shared_data):
    info = read_header_info(shared_data / "aspire_ctf_shift_200" / "particles.mrcs")
    assert info["shape"] == (200, 64, 64)
    assert info["voxel_size_A"] == 5.078125
    assert info["data_offset"] == 1024 and not info["nonstandard"]


def test_bad_voxel_size_is_refused(tmp_path):
    with pytest.raises(InputError, match="voxel size"):
        write_map(tmp_path / "v.mrc", np.zeros((2, 2, 2)), -1.0)
    assert not (tmp_path / "v.mrc").exists()


def test_atomic_write_leaves_old_file_intact_when_writer_raises(tmp_path):
    path = tmp_path / "state.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert _leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        with atomic_write(path):
            pass  # wrote nothing
    assert path.read_text() == "old"
    with atomic_open(path) as handle:
        handle.write("new")
    assert path.read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_write_map_leaves_old_map_intact_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "map.mrc"
    write_map(path, np.full((4, 4, 4), 7.0), 1.0)
    before = path.read_bytes()

    def broken(self, *args, **kwargs):
        raise OSError("simulated failure after the data were written")

    monkeypatch.setattr(mrcfile.mrcfile.MrcFile, "set_volume", broken)
    with pytest.raises(OSError, match="simulated"):
        write_map(path, np.zeros((4, 4, 4)), 2.0)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_atomic_write_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    path = tmp_path / "ckpt.npz"
    with atomic_write(path) as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path and not tmp.exists()
        np.savez(tmp, x=np.arange(3))
    with np.load(path) as z:
        np.testing.assert_array_equal(z["x"], np.arange(3))
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]


def test_read_map_emits_no_warning_for_clean_files(tmp_path):
    path = tmp_path / "v.mrc"
    write_map(path, np.ones((3, 3, 3)), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_map(path)
