"""The plugin's readers, writer, sample data and run folders, as plain data (no napari needed)."""
import bz2
import gzip
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from cryorecon.errors import InputError
from cryorecon.io.mrc import read_map, write_map
from cryorecon.napari._reader import get_reader, read_layers, read_mrc_layers, read_star_layers
from cryorecon.napari._sample_data import sample_map, sample_particles
from cryorecon.napari._writer import write_image_layer
from cryorecon.napari.display import iso_threshold
from cryorecon.napari.jobs import AbinitioJob, to_toml
from cryorecon.napari.runs import RunFolder, pose_histogram, read_fsc_csv

REPO = Path(__file__).resolve().parents[1]
REALWORLD = REPO.parent / "shared" / "data" / "realworld"
SAMPLE = REPO / "sample_data"


def _only(layers):
    assert len(layers) == 1
    return layers[0]


@pytest.mark.parametrize("path, voxel, shape", [
    (REALWORLD / "particles" / "trpv1_10" / "trpv1_volume.mrc", 4.88, (48, 48, 48)),
    (REALWORLD / "mrc" / "EMD-3197.map", 11.4, (20, 20, 20)),
    (REALWORLD / "mrc" / "EMD-3197.map.bz2", 11.4, (20, 20, 20)),
])
def test_real_maps_come_at_their_voxel_size(path, voxel, shape):
    data, kwargs, kind = _only(read_layers(path))
    assert kind == "image" and data.shape == shape
    assert kwargs["scale"] == pytest.approx((voxel,) * 3, rel=1e-6)
    assert kwargs["translate"] == (0.0, 0.0, 0.0)
    assert kwargs["rendering"] == "iso"
    lo, hi = float(data.min()), float(data.max())
    assert lo < kwargs["iso_threshold"] < hi


def test_origin_becomes_translate_in_napari_axis_order(tmp_path):
    vol = np.random.default_rng(0).normal(size=(6, 8, 10)).astype(np.float32)
    write_map(tmp_path / "m.mrc", vol, 1.0, origin_A=(10.0, 20.0, 30.0))  # x, y, z
    data, kwargs, _ = _only(read_mrc_layers(tmp_path / "m.mrc"))
    np.testing.assert_array_equal(data, vol)
    assert kwargs["scale"] == (1.0, 1.0, 1.0)
    assert kwargs["translate"] == (30.0, 20.0, 10.0)  # z, y, x


def test_gzip_map_reads_like_the_plain_one(tmp_path):
    src = REALWORLD / "particles" / "trpv1_10" / "trpv1_volume.mrc"
    with open(src, "rb") as a, gzip.open(tmp_path / "v.mrc.gz", "wb") as b:
        shutil.copyfileobj(a, b)
    plain, gz = read_layers(src)[0], read_layers(tmp_path / "v.mrc.gz")[0]
    np.testing.assert_array_equal(plain[0], gz[0])
    assert gz[1]["scale"] == plain[1]["scale"] and gz[1]["name"] == "v"


def test_broken_compressed_file_is_one_input_error(tmp_path):
    (tmp_path / "x.map.bz2").write_bytes(b"not bzip2 at all")
    with pytest.raises(InputError, match="decompress"):
        read_layers(tmp_path / "x.map.bz2")


def test_stack_is_a_2d_stack():
    data, kwargs, _ = _only(read_layers(REALWORLD / "particles" / "trpv1_10" / "trpv1_small_stack.mrcs"))
    assert data.shape == (10, 48, 48)
    assert kwargs["scale"] == pytest.approx((1.0, 4.88, 4.88))
    assert "rendering" not in kwargs and kwargs["metadata"]["cryorecon_kind"] == "stack"


def test_star_reader_gives_one_feature_row_per_particle():
    (images, ikw, ikind), (points, pkw, pkind) = read_star_layers(SAMPLE / "particles.star")
    assert (ikind, pkind) == ("image", "points")
    assert images.shape == (1200, 48, 48) and ikw["scale"] == (1.0, 3.0, 3.0)
    features = pkw["features"]
    assert len(features) == 1200 == len(points)
    assert {"rlnDefocusU", "rlnDefocusV", "rlnImageName"} <= set(features.columns)
    # point i sits in image i, at its centre; its row is particle i's
    np.testing.assert_array_equal(points[:, 0], np.arange(1200))
    assert points[0, 1] == points[0, 2] == 24 * 3.0
    first = features.iloc[7]
    assert first["particle"] == 7 and first["rlnImageName"].startswith("000008@")


def test_star_reader_carries_pose_and_class():
    _, (_, pkw, _) = read_star_layers(SAMPLE / "truth_particles.star")
    f = pkw["features"]
    assert {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"} <= set(f.columns)
    assert np.isfinite(f["rlnAngleTilt"]).all() and f["rlnAngleTilt"].std() > 10


def test_writer_round_trip_keeps_voxel_size_and_origin(tmp_path):
    data, kwargs, _ = _only(read_layers(REALWORLD / "mrc" / "EMD-3197.map"))
    meta = {**kwargs, "translate": (3.0, 2.0, 1.0)}
    assert write_image_layer(str(tmp_path / "out.mrc"), data, meta) == [str(tmp_path / "out.mrc")]
    back, bkw, _ = _only(read_layers(tmp_path / "out.mrc"))
    np.testing.assert_array_equal(back, data)
    assert bkw["scale"] == pytest.approx(kwargs["scale"]) and bkw["translate"] == (3.0, 2.0, 1.0)


def test_writer_writes_stacks_and_refuses_anisotropic_scale(tmp_path):
    data, kwargs, _ = _only(read_layers(REALWORLD / "particles" / "trpv1_10" / "trpv1_small_stack.mrcs"))
    write_image_layer(str(tmp_path / "s.mrcs"), data, kwargs)
    back, px = read_map(tmp_path / "s.mrcs")
    np.testing.assert_array_equal(back, data)
    assert px == pytest.approx(4.88)
    with pytest.raises(InputError, match="isotropic"):
        write_image_layer(str(tmp_path / "a.mrc"), np.zeros((4, 4, 4)), {"scale": (1.0, 1.0, 2.0)})


def test_get_reader_declines_what_it_cannot_read(tmp_path):
    assert get_reader("x.tif") is None
    assert get_reader(str(SAMPLE / "truth.mrc")) is not None
    assert get_reader(str(tmp_path)) is None  # a folder without maps


def test_iso_threshold_separates_object_from_background():
    rng = np.random.default_rng(1)
    v = rng.normal(0.0, 0.05, size=(24, 24, 24))
    inside = np.zeros(v.shape, bool)
    inside[8:16, 8:16, 8:16] = True
    v[inside] += 1.0
    t = iso_threshold(v)
    # the level keeps the cube and drops the noise around it
    assert (v[inside] > t).mean() > 0.99 and (v[~inside] > t).mean() < 0.01
    assert iso_threshold(np.full((3, 3, 3), 2.0)) == 2.0


def test_sample_data():
    (m, mkw, _), = sample_map()
    assert m.shape == (48, 48, 48) and mkw["scale"] == (3.0, 3.0, 3.0)
    assert len(sample_particles()[1][1]["features"]) == 1200


def test_pose_histogram_is_flat_for_uniform_directions():
    from scipy.spatial.transform import Rotation

    r = Rotation.random(20000, random_state=3).as_matrix()
    counts, az, el = pose_histogram(r, bins=(8, 4))
    assert counts.sum() == 20000 and counts.shape == (4, 8)
    assert counts.min() > 0.85 * counts.mean() and counts.max() < 1.15 * counts.mean()
    assert el[0] == pytest.approx(-90) and el[-1] == pytest.approx(90)
    # all views down one axis land in one band
    one = pose_histogram(np.repeat(np.eye(3)[None], 10, axis=0), bins=(8, 4))[0]
    assert one[-1].sum() == 10


def test_run_folder(tmp_path):
    shutil.copy(SAMPLE / "truth.mrc", tmp_path / "map.mrc")
    shutil.copy(SAMPLE / "truth.mrc", tmp_path / "half1_map.mrc")
    shutil.copy(SAMPLE / "truth_particles.star", tmp_path / "particles.star")
    shutil.copy(SAMPLE / "particles.mrcs", tmp_path / "particles.mrcs")
    (tmp_path / "fsc.csv").write_text("shell,frequency_1/A,resolution_A,fsc\n0,0.0,inf,1.0\n1,0.01,100.0,0.9\n")
    run = RunFolder.open(tmp_path)
    layers = run.layers()
    assert [k["name"] for _, k, _ in layers] == ["map", "half1_map"]
    assert layers[0][1].get("visible", True) and layers[1][1]["visible"] is False
    assert layers[0][1]["scale"] == (3.0, 3.0, 3.0)
    fsc = run.fsc_curves()
    np.testing.assert_allclose(fsc.curves["fsc"], [1.0, 0.9])
    assert run.pose_histogram()[0].sum() == 1200
    with pytest.raises(InputError, match="no map"):
        RunFolder.open(tmp_path / "..")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="FSC"):
        read_fsc_csv(tmp_path / "bad.csv")


def test_job_config_is_what_the_abinitio_command_builds(tmp_path, monkeypatch):
    from cryorecon.cli import build_parser
    from cryorecon.cli import reconstruction
    from cryorecon.pipeline import Pipeline

    seen = {}

    def record(cls, config, *args, **kwargs):
        seen["config"] = config
        raise SystemExit  # the config is all this test needs; no run

    monkeypatch.setattr(Pipeline, "from_config", classmethod(record))
    args = build_parser().parse_args(["abinitio", str(SAMPLE / "particles.star"), "--out", str(tmp_path), "--classes", "2",
                                      "--target-res-A", "12", "--device", "cpu", "--seed", "3", "--working-box", "24"])
    with pytest.raises(SystemExit):
        reconstruction._cmd_abinitio(args)
    job = AbinitioJob(SAMPLE / "particles.star", tmp_path, classes=2, target_res_A=12.0, device="cpu", seed=3, working_box=24)
    assert job.config() == seen["config"]
    assert tomllib.loads(to_toml(job.config())) == job.config()


def test_job_refuses_bad_choices(tmp_path):
    with pytest.raises(InputError, match="device"):
        AbinitioJob(SAMPLE / "particles.star", tmp_path, device="tpu")
    with pytest.raises(InputError, match="not found"):
        AbinitioJob(tmp_path / "none.star", tmp_path).pipeline()


def test_view_without_napari_says_how_to_install(tmp_path):
    # a child process whose import of napari fails, as on an install without the viz extra
    code = ("import sys; sys.modules['napari'] = None; from cryorecon.cli import main; "
            f"sys.exit(main(['view', {str(SAMPLE / 'truth.mrc')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'cryorecon[viz]'" in lines[0]
