"""The ab initio observer hook: told of every SGD iteration; a stop checkpoints and resumes bit for bit."""
from pathlib import Path

import numpy as np
import pytest

from cryorecon.io.mrc import read_map
from cryorecon.pipeline import Pipeline
from cryorecon.reconstruct.abinitio import RunStopped, watching
from cryorecon.reconstruct.abinitio.observe import current_observer

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


def _tiny_pipeline(out):
    """The sample particles, reduced: 20 px working box, 8 SGD iterations, one full-data pass."""
    config = {
        "pipeline": {"name": "tiny", "seed": 0, "device": "cpu", "stages": ["preprocess", "abinitio"]},
        "preprocess": {"particles": str(SAMPLE / "particles.star"), "working_box": 20},
        "abinitio": {"max_iter": 8, "checkpoint_every": 3, "handover_passes": 1},
    }
    return Pipeline.from_config(config, out, out, progress=False)


def _run(out, observer=None, resume=False):
    with watching(observer):
        return _tiny_pipeline(out).run(force=() if resume else ("all",))


def test_watching_nests_and_restores():
    f, g = (lambda r: None), (lambda r: None)
    with watching(f):
        with watching(g):
            assert current_observer() is g
        assert current_observer() is f
    assert current_observer() is None


def test_stop_then_resume_gives_the_uninterrupted_map(tmp_path):
    reports = []
    _run(tmp_path / "whole", lambda r: reports.append((r.iteration, r.fraction, r.row["loss"], r.maps().shape)))
    assert [r[0] for r in reports] == list(range(1, 9))
    assert all(0 < r[1] <= 1 for r in reports) and all(np.isfinite(r[2]) for r in reports)
    assert reports[0][3] == (1, 20, 20, 20)

    # stop at iteration 5, between the checkpoints at 3 and 6
    with pytest.raises(RunStopped) as stop:
        _run(tmp_path / "cut", lambda r: r.iteration == 5)
    assert stop.value.iteration == 5 and stop.value.checkpoint.is_file()
    assert not (tmp_path / "cut" / "map.mrc").exists()
    resumed = _run(tmp_path / "cut", resume=True)
    assert resumed["abinitio"]["resumed"] is True
    a, pa = read_map(tmp_path / "whole" / "map.mrc")
    b, pb = read_map(tmp_path / "cut" / "map.mrc")
    np.testing.assert_array_equal(a, b)
    assert pa == pb


def test_stop_without_checkpoint_says_so():
    err = RunStopped(4, None)
    assert "cannot be resumed" in str(err) and err.iteration == 4
