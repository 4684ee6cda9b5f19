"""The plugin inside napari: readers and writer through the manifest, a real 3D picture, the widgets.

Needs the viz extra (napari, a Qt binding, pytest-qt) and a display: CI runs these under
Xvfb (``.ci/run``). Without them the module is skipped, so the plain test command stays
honest on a machine without the viewer. The screenshots go to $CRYORECON_SCREENSHOTS
when that is set, for a person to look at.
"""
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("CRYORECON_REQUIRE_GUI"):
    # CI sets this: there a missing napari or display is a failure, not a skip
    import napari  # noqa: F401
    import pytestqt  # noqa: F401

    assert os.environ.get("DISPLAY"), "CRYORECON_REQUIRE_GUI is set but there is no DISPLAY"
else:
    napari = pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        pytest.skip("no display: run the napari tests under xvfb-run (as .ci/run does)", allow_module_level=True)

from scipy import ndimage  # noqa: E402

from cryorecon.io.mrc import read_map  # noqa: E402
from cryorecon.napari._widgets import LIVE_LAYER, ReconstructionWidget, ResultsWidget  # noqa: E402
from cryorecon.napari.display import map_layer  # noqa: E402
from cryorecon.napari.jobs import AbinitioJob  # noqa: E402
from cryorecon.napari.viewer import open_paths  # noqa: E402

pytestmark = pytest.mark.gui

REPO = Path(__file__).resolve().parents[1]
REALWORLD = REPO.parent / "shared" / "data" / "realworld"
SAMPLE = REPO / "sample_data"
STAR = SAMPLE / "particles.star"
# a reduced sample run: 20 px working box, 8 SGD iterations, one full-data pass
TINY = dict(working_box=20, max_iter=8, device="cpu", settings={"checkpoint_every": 3, "handover_passes": 1})
TINY_OTHER = "checkpoint_every=3, handover_passes=1"


def _keep(path):
    folder = os.environ.get("CRYORECON_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / Path(path).name)


@pytest.mark.parametrize("path, voxel", [
    (SAMPLE / "truth.mrc", 3.0),
    (REALWORLD / "particles" / "trpv1_10" / "trpv1_volume.mrc", 4.88),
    (REALWORLD / "mrc" / "EMD-3197.map.bz2", 11.4),
])
def test_viewer_opens_maps_through_the_manifest_at_true_scale(make_napari_viewer, path, voxel):
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="cryorecon")
    np.testing.assert_allclose(layer.scale, [voxel] * 3, rtol=1e-6)
    np.testing.assert_allclose(layer.translate, [0.0] * 3)
    assert layer.rendering == "iso"
    # the world extent is the box in Angstrom
    extent = np.asarray(viewer.layers.extent.world)
    np.testing.assert_allclose(extent[1] - extent[0], np.array(layer.data.shape) * voxel - voxel, rtol=1e-6)


def test_map_of_unit_voxel_size_and_origin(make_napari_viewer, tmp_path):
    from cryorecon.io.mrc import write_map

    write_map(tmp_path / "one.mrc", np.random.default_rng(0).normal(size=(8, 8, 8)), 1.0, origin_A=(4.0, 5.0, 6.0))
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(tmp_path / "one.mrc"), plugin="cryorecon")
    np.testing.assert_allclose(layer.scale, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(layer.translate, [6.0, 5.0, 4.0])


def test_layer_saved_as_mrc_reads_back_equal(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(REALWORLD / "particles" / "trpv1_10" / "trpv1_volume.mrc"), plugin="cryorecon")
    layer.translate = (9.76, 0.0, -4.88)
    viewer.layers.save(str(tmp_path / "saved.mrc"), selected=False, plugin="cryorecon")
    back, voxel = read_map(tmp_path / "saved.mrc")
    np.testing.assert_array_equal(back, layer.data)
    assert voxel == pytest.approx(4.88)
    [again] = viewer.open(str(tmp_path / "saved.mrc"), plugin="cryorecon")
    np.testing.assert_allclose(again.scale, layer.scale)
    np.testing.assert_allclose(again.translate, layer.translate)


def test_star_file_opens_as_stack_with_a_feature_row_per_particle(make_napari_viewer):
    viewer = make_napari_viewer()
    images, points = viewer.open(str(STAR), plugin="cryorecon")
    assert images.data.shape == (1200, 48, 48)
    np.testing.assert_allclose(images.scale, [1.0, 3.0, 3.0])
    assert len(points.features) == 1200 == len(points.data)
    assert "rlnDefocusU" in points.features.columns


# ------------------------------------------------------------------ a real picture
@pytest.fixture(scope="module")
def tiny_map(tmp_path_factory):
    """A map reconstructed from the sample particles with reduced settings (24 px, 25 iterations)."""
    out = tmp_path_factory.mktemp("tiny_run")
    job = AbinitioJob(STAR, out, working_box=24, max_iter=25, device="cpu", settings={"handover_passes": 2})
    assert job.run().finished
    return read_map(out / "map.mrc")


def _render(viewer, volume, voxel, path):
    viewer.layers.clear()
    data, kwargs, _ = map_layer(volume, voxel, name="map")
    viewer.add_image(data, **kwargs)
    viewer.dims.ndisplay = 3
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari 0.9 moved it
    camera.angles = (20.0, 35.0, 140.0)
    viewer.reset_view()
    shot = viewer.screenshot(path=str(path), canvas_only=True, flash=False)
    _keep(path)
    return np.asarray(shot)[..., :3]


def _foreground(img):
    # the canvas background is black; the iso-surface is shaded grey
    return img.astype(np.float64).mean(axis=2) > 10


def test_iso_rendering_is_a_picture_of_the_molecule(make_napari_viewer, tiny_map, tmp_path):
    volume, voxel = tiny_map
    viewer = make_napari_viewer(show=True)  # a hidden window screenshots black
    viewer.window.resize(700, 600)
    shot = _render(viewer, volume, voxel, tmp_path / "napari_iso_map.png")
    rng = np.random.default_rng(0)
    noise = rng.normal(volume.mean(), volume.std(), size=volume.shape).astype(np.float32)
    noise_shot = _render(viewer, noise, voxel, tmp_path / "napari_iso_noise.png")

    fg, noise_fg = _foreground(shot), _foreground(noise_shot)
    n_colours = len(np.unique(shot.reshape(-1, 3), axis=0))
    assert n_colours > 50, "the rendering is (nearly) blank"
    assert 0.02 < fg.mean() < 0.7, f"the surface covers {fg.mean():.1%} of the canvas"
    # structure: the molecule is one shaded body in an empty box, while noise at the
    # same level fills the box's whole outline with a rough surface
    labels, _ = ndimage.label(fg)
    largest = np.bincount(labels.ravel())[1:].max() / fg.sum()
    assert largest > 0.8, f"largest connected part holds only {largest:.0%} of the surface"
    assert shot[fg].std() > 10, "the surface is flat, not shaded"
    assert fg.mean() < 0.5 * noise_fg.mean()
    assert np.abs(shot.astype(float) - noise_shot.astype(float)).mean() > 5


# ---------------------------------------------------------------------- widgets
def _fill(widget, out, every=2):
    widget.particles.setText(str(STAR))
    widget.out.setText(str(out))
    widget.device.setCurrentText("cpu")
    widget.working_box.setValue(TINY["working_box"])
    widget.max_iter.setValue(TINY["max_iter"])
    widget.update_every.setValue(every)
    widget.other.setText(TINY_OTHER)


def _run_to_end(qtbot, widget, resume=False):
    worker = widget.start(resume=resume)
    assert worker is not None, widget.status.text()
    with qtbot.waitSignal(worker.finished, timeout=240_000):
        pass
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=10_000)


def test_live_widget_updates_the_map_while_it_runs(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    widget = ReconstructionWidget(viewer)
    viewer.window.add_dock_widget(widget, name="cryorecon reconstruction")
    _fill(widget, tmp_path / "run")
    seen = []
    widget.map_updated.connect(lambda it: seen.append((it, np.array(viewer.layers[LIVE_LAYER].data))))
    _run_to_end(qtbot, widget)
    assert "done" in widget.status.text(), widget.status.text()
    live = [(it, m) for it, m in seen if it is not None]
    assert [it for it, _ in live] == [2, 4, 6, 8]
    assert len(live) >= 3
    # each update is a new map, and the last update is the finished run's map
    assert all(not np.array_equal(a[1], b[1]) for a, b in zip(live, live[1:]))
    assert seen[-1][0] is None
    final, voxel = read_map(tmp_path / "run" / "map.mrc")
    np.testing.assert_array_equal(viewer.layers[LIVE_LAYER].data, final)
    np.testing.assert_allclose(viewer.layers[LIVE_LAYER].scale, [voxel] * 3)
    assert widget.progress.value() == 1000
    assert len(widget._ax_loss.lines[0].get_xdata()) == TINY["max_iter"]


def test_cancel_then_resume_ends_with_the_uninterrupted_map(make_napari_viewer, qtbot, tmp_path):
    AbinitioJob(STAR, tmp_path / "whole", **TINY).run()
    whole, _ = read_map(tmp_path / "whole" / "map.mrc")

    viewer = make_napari_viewer()
    widget = ReconstructionWidget(viewer)
    _fill(widget, tmp_path / "cut", every=1)
    # press Cancel as soon as the first map shows
    widget.map_updated.connect(lambda it: widget.cancel() if it == 2 else None)
    _run_to_end(qtbot, widget)
    assert "stopped at SGD iteration" in widget.status.text(), widget.status.text()
    assert "cryorecon run" in widget.status.text()
    assert not (tmp_path / "cut" / "map.mrc").exists()
    assert (tmp_path / "cut" / "checkpoint.npz").exists()
    widget.map_updated.disconnect()
    _run_to_end(qtbot, widget, resume=True)
    assert "done" in widget.status.text(), widget.status.text()
    resumed, _ = read_map(tmp_path / "cut" / "map.mrc")
    np.testing.assert_array_equal(resumed, whole)


def test_widget_reports_bad_choices_in_one_line(make_napari_viewer, tmp_path):
    widget = ReconstructionWidget(make_napari_viewer())
    assert widget.start() is None and "STAR" in widget.status.text()
    _fill(widget, tmp_path / "x")
    widget.other.setText("checkpoint_every")
    assert widget.start() is None and "KEY=VALUE" in widget.status.text()
    widget.other.setText("")
    assert widget.start(resume=True) is None and "no checkpoint" in widget.status.text()


def test_results_widget_and_view_open_a_run_folder(make_napari_viewer, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(SAMPLE / "truth.mrc", run / "map.mrc")
    shutil.copy(SAMPLE / "truth.mrc", run / "half1_map.mrc")
    shutil.copy(SAMPLE / "truth_particles.star", run / "particles.star")
    shutil.copy(SAMPLE / "particles.mrcs", run / "particles.mrcs")
    (run / "fsc.csv").write_text("shell,frequency_1/A,resolution_A,fsc\n0,0.0,inf,1.0\n1,0.05,20.0,0.5\n2,0.1,10.0,0.1\n")
    viewer = make_napari_viewer()
    widget = ResultsWidget(viewer)
    layers = widget.open_folder(run)
    assert [layer.name for layer in layers] == ["run: map", "run: half1_map"]
    np.testing.assert_allclose(layers[0].scale, [3.0] * 3)
    assert layers[0].visible and not layers[1].visible
    fsc_ax, pose_ax = widget.figure.axes[:2]
    np.testing.assert_allclose(fsc_ax.lines[0].get_ydata(), [1.0, 0.5, 0.1])
    assert pose_ax.collections[0].get_array().sum() == 1200
    assert widget.open_folder(tmp_path / "nothing") is None and "error" in widget.status.text()

    viewer2 = make_napari_viewer()
    added = open_paths(viewer2, [run, SAMPLE / "truth.mrc"])
    assert [layer.name for layer in added] == ["run: map", "run: half1_map", "truth"]
    assert viewer2.dims.ndisplay == 3
