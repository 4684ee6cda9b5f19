"""The plugin's dock widgets: run a reconstruction and watch it, and show a finished run.

Faces only: the work is :class:`.jobs.AbinitioJob` (the pipeline of ``cryorecon
abinitio``), :class:`.runs.RunFolder` and :mod:`.display`; these classes hold Qt
controls and move results to layers and plots.

The job runs in a napari thread worker. The engine tells its observer of each SGD
iteration in that thread; the observer hands the news to the GUI thread through a Qt
signal (a queued connection), because layers and plots may only be touched there, and
answers the engine with whether Cancel was pressed, which stops the run at a checkpoint.
"""
from __future__ import annotations

import threading
import tomllib
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import InputError
from .display import map_layer
from .jobs import AbinitioJob
from .runs import RunFolder

__all__ = ["ReconstructionWidget", "ResultsWidget", "LIVE_LAYER"]

LIVE_LAYER = "cryorecon live map"


def parse_settings(text: str) -> dict:
    """``"checkpoint_every=4, handover_passes=1"`` -> a dict, each value read as TOML (as ``--set``)."""
    out = {}
    for item in filter(None, (t.strip() for t in text.replace(";", ",").split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InputError(f"other settings: {item!r} is not KEY=VALUE (e.g. checkpoint_every=10)")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            raise InputError(f"other settings: {item!r}: the value is not a number, true/false or a quoted string") from None
    return out


def _path_row(edit: QLineEdit, pick) -> QWidget:
    row = QWidget()
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit)
    button = QPushButton("Browse...")
    button.clicked.connect(pick)
    lay.addWidget(button)
    return row


def _set_map_layer(viewer, name: str, volume, pixel_size_A: float):
    """Show ``volume`` in layer ``name``, adding it the first time and replacing its data after."""
    data, kwargs, _ = map_layer(volume, pixel_size_A, name=name)
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = data
        layer.scale = kwargs["scale"]
        layer.contrast_limits = kwargs["contrast_limits"]
        layer.iso_threshold = kwargs["iso_threshold"]
        return layer
    layer = viewer.add_image(data, **kwargs)
    viewer.dims.ndisplay = 3
    return layer


class _Messenger(QObject):
    """Carries the observer's news from the worker thread to the GUI thread."""

    iteration = Signal(object)


class ReconstructionWidget(QWidget):
    """Dock widget "cryorecon reconstruction": run ab initio on a STAR file and watch the map.

    Parameters
    ----------
    napari_viewer : napari.Viewer

    Attributes
    ----------
    map_updated : Signal(object)
        Emitted after the live map layer changed: the SGD iteration, or None for the
        finished run's map.
    """

    map_updated = Signal(object)

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self._cancel = threading.Event()
        self._messenger = _Messenger()
        self._messenger.iteration.connect(self._on_iteration)
        self._loss, self._res = [], []

        self.particles = QLineEdit()
        self.out = QLineEdit()
        self.classes = QSpinBox()
        self.classes.setRange(1, 50)
        self.target_res = QDoubleSpinBox()
        self.target_res.setRange(0.0, 200.0)
        self.target_res.setDecimals(1)
        self.target_res.setSpecialValueText("auto (Nyquist + 10%)")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "gpu"])
        self.working_box = QSpinBox()
        self.working_box.setRange(0, 1024)
        self.working_box.setSpecialValueText("auto")
        self.max_iter = QSpinBox()
        self.max_iter.setRange(0, 100000)
        self.max_iter.setSpecialValueText("auto")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.update_every = QSpinBox()
        self.update_every.setRange(1, 1000)
        self.update_every.setValue(5)
        self.other = QLineEdit()
        self.other.setPlaceholderText("e.g. checkpoint_every=10, handover_passes=2")

        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.resume_button = QPushButton("Resume")
        self.run_button.clicked.connect(lambda: self.start(resume=False))
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.status = QLabel("choose a particle STAR file and an output folder")
        self.status.setWordWrap(True)
        self.figure = Figure(figsize=(4, 3), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self._ax_loss = self.figure.add_subplot(2, 1, 1)
        self._ax_res = self.figure.add_subplot(2, 1, 2, sharex=self._ax_loss)

        form = QFormLayout()
        form.addRow("particles (STAR)", _path_row(self.particles, self._pick_particles))
        form.addRow("output folder", _path_row(self.out, self._pick_out))
        form.addRow("classes", self.classes)
        form.addRow("target resolution (A)", self.target_res)
        form.addRow("device", self.device)
        form.addRow("working box (px)", self.working_box)
        form.addRow("SGD iterations", self.max_iter)
        form.addRow("seed", self.seed)
        form.addRow("update map every", self.update_every)
        form.addRow("other settings", self.other)
        buttons = QHBoxLayout()
        for b in (self.run_button, self.cancel_button, self.resume_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.canvas)
        self._set_running(False)

    # ----------------------------------------------------------------- choices
    def _pick_particles(self):
        path, _ = QFileDialog.getOpenFileName(self, "Particle STAR file", "", "STAR files (*.star)")
        if path:
            self.particles.setText(path)

    def _pick_out(self):
        path = QFileDialog.getExistingDirectory(self, "Output folder")
        if path:
            self.out.setText(path)

    def job(self) -> AbinitioJob:
        """The job the controls describe (raises InputError for a bad choice)."""
        if not self.particles.text().strip():
            raise InputError("choose the particles' STAR file")
        if not self.out.text().strip():
            raise InputError("choose an output folder")
        return AbinitioJob(
            Path(self.particles.text().strip()), Path(self.out.text().strip()),
            classes=self.classes.value(), target_res_A=self.target_res.value() or None,
            device=self.device.currentText(), seed=self.seed.value(),
            working_box=self.working_box.value() or None, max_iter=self.max_iter.value() or None,
            settings=parse_settings(self.other.text()),
        )

    # ----------------------------------------------------------------- running
    def _set_running(self, running: bool):
        self.run_button.setEnabled(not running)
        self.resume_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def start(self, resume: bool = False):
        """Start the job in a thread worker (``resume``: continue from the checkpoint)."""
        try:
            job = self.job()
            job.pipeline()  # every setting checked before a thread starts
            if resume and not job.can_resume():
                raise InputError(f"{job.out}: no checkpoint to resume from: press Run")
        except InputError as err:
            self.status.setText(f"error: {err}")
            return None
        self._cancel.clear()
        if not resume:
            self._loss, self._res = [], []
        self.progress.setValue(0)
        self.status.setText("resuming..." if resume else "preprocessing...")
        every = self.update_every.value()
        self.worker = create_worker(self._work, job, resume, every, _start_thread=False)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(lambda: self._set_running(False))
        self._job = job
        self._set_running(True)
        self.worker.start()
        return self.worker

    def cancel(self):
        """Stop the run at its next SGD iteration, with a checkpoint to resume from."""
        self._cancel.set()
        self.status.setText("stopping at the next iteration...")

    def _work(self, job: AbinitioJob, resume: bool, every: int):
        # runs in the worker thread: only the messenger's signal crosses to the GUI
        def observer(report):
            volume = report.maps()[0] if report.iteration % every == 0 else None
            self._messenger.iteration.emit((report.iteration, report.fraction, report.row, volume, report.pixel_size_A))
            return self._cancel.is_set()

        return job.run(observer=observer, resume=resume)

    # ----------------------------------------------------------- GUI-thread news
    def _on_iteration(self, news):
        iteration, fraction, row, volume, px = news
        self.progress.setValue(int(round(1000 * fraction)))
        self._loss.append((iteration, row["loss"]))
        self._res.append((iteration, row["resolution_A"]))
        self.status.setText(f"SGD iteration {iteration}: band {row['resolution_A']:.1f} A, batch {int(row['batch_size'])}, "
                            f"loss {row['loss']:.5g}" + (" (then the full-data passes)" if fraction >= 1 else ""))
        if volume is not None:
            _set_map_layer(self.viewer, LIVE_LAYER, volume, px)
            self.map_updated.emit(iteration)
        self._plot()

    def _plot(self):
        for ax, points, label in ((self._ax_loss, self._loss, "loss"), (self._ax_res, self._res, "band (A)")):
            ax.clear()
            if points:
                x, y = np.array(points).T
                ax.plot(x, y, lw=1.2)
            ax.set_ylabel(label)
        self._ax_res.set_xlabel("SGD iteration")
        self.canvas.draw_idle()

    def _on_returned(self, outcome):
        if outcome.finished:
            from ..io.mrc import read_map

            volume, px = read_map(outcome.map_path)
            _set_map_layer(self.viewer, LIVE_LAYER, volume, px)
            self.map_updated.emit(None)
            self.progress.setValue(1000)
            self.status.setText(f"done: {outcome.map_path}")
        else:
            self.status.setText(f"stopped at SGD iteration {outcome.iteration}, checkpoint kept: press Resume, "
                                f"or run: {self._job.resume_command()}")

    def _on_error(self, err):
        self.status.setText(f"error: {err}")


class ResultsWidget(QWidget):
    """Dock widget "cryorecon results": a finished run's maps, FSC curve and pose distribution.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.run = None
        self.folder = QLineEdit()
        open_button = QPushButton("Open")
        open_button.clicked.connect(lambda: self.open_folder(self.folder.text().strip()))
        row = QHBoxLayout()
        row.addWidget(QLabel("run folder"))
        row.addWidget(_path_row(self.folder, self._pick))
        row.addWidget(open_button)
        self.status = QLabel("open a folder that a cryorecon run wrote")
        self.status.setWordWrap(True)
        self.figure = Figure(figsize=(4, 5), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addWidget(self.canvas)

    def _pick(self):
        path = QFileDialog.getExistingDirectory(self, "Run folder")
        if path:
            self.folder.setText(path)
            self.open_folder(path)

    def open_folder(self, path):
        """Show the run folder ``path``: its maps as layers, its FSC and pose plots here."""
        try:
            run = RunFolder.open(path)
            layers = run.layers()
            fsc, poses = run.fsc_curves(), run.pose_histogram()
        except InputError as err:
            self.status.setText(f"error: {err}")
            return None
        self.run = run
        self.folder.setText(str(path))
        added = []
        for data, kwargs, kind in layers:
            name = f"{Path(path).name}: {kwargs['name']}"
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            added.append(self.viewer.add_image(data, **{**kwargs, "name": name}))
        self.viewer.dims.ndisplay = 3
        self._plot(fsc, poses)
        self.status.setText(f"{path}: {len(layers)} map(s)" + ("" if fsc else ", no fsc.csv")
                            + ("" if poses else ", no poses"))
        return added

    def _plot(self, fsc, poses):
        self.figure.clear()
        ax = self.figure.add_subplot(2, 1, 1)
        if fsc is not None:
            for label, curve in fsc.curves.items():
                ax.plot(fsc.frequency, curve, lw=1.2, label=label)
            for t in (0.143, 0.5):
                ax.axhline(t, color="0.6", lw=0.8, ls="--")
            ax.set_xlabel(f"spatial frequency (1/{fsc.unit})")
            ax.set_ylabel("FSC")
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no fsc.csv in this run", ha="center", va="center", transform=ax.transAxes)
        ax = self.figure.add_subplot(2, 1, 2)
        if poses is not None:
            counts, az, el = poses
            mesh = ax.pcolormesh(az, el, counts, cmap="viridis")
            self.figure.colorbar(mesh, ax=ax, label="particles")
            ax.set_xlabel("azimuth (deg)")
            ax.set_ylabel("elevation (deg)")
            ax.set_title("viewing directions", fontsize=9)
        else:
            ax.text(0.5, 0.5, "no poses in this run", ha="center", va="center", transform=ax.transAxes)
        self.canvas.draw_idle()
