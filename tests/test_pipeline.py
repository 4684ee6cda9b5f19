"""Pipeline machinery (records, reuse, --force), config checks, and kill -9 / resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cryorecon.cli import main
from cryorecon.errors import InputError
from cryorecon.io.mrc import read_map
from cryorecon.pipeline import Pipeline, RunContext, load_config, parse_override, sha256_file

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------- toy stages
class CopyStage:
    """Reads ``src``, writes ``name.txt`` = its text times ``factor``; counts its runs."""

    def __init__(self, name, src, factor, calls):
        self.name, self.src, self.calls = name, src, calls
        self.params = {"factor": factor}

    def check(self, ctx):
        if not Path(self.src(ctx)).exists() and self.name == "first":
            raise InputError(f"{self.src(ctx)} missing")

    def inputs(self, ctx):
        return [Path(self.src(ctx))]

    def outputs(self, ctx):
        return [ctx.path(f"{self.name}.txt")]

    def run(self, ctx):
        self.calls.append(self.name)
        text = Path(self.src(ctx)).read_text()
        ctx.path(f"{self.name}.txt").write_text(text * self.params["factor"])
        return {"length": len(text) * self.params["factor"]}


def _toy(tmp_path, calls, factor=2):
    src = tmp_path / "input.txt"
    if not src.exists():
        src.write_text("ab")
    ctx = RunContext(run_dir=tmp_path / "run", config_dir=tmp_path)
    stages = [CopyStage("first", lambda c: src, factor, calls),
              CopyStage("second", lambda c: c.path("first.txt"), 1, calls)]
    return Pipeline(stages, ctx, {"pipeline": {"name": "toy"}})


def test_record_and_reuse(tmp_path):
    calls = []
    results = _toy(tmp_path, calls).run()
    assert calls == ["first", "second"] and results["second"] == {"length": 4}
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    first = record["stages"]["first"]
    assert first["params"] == {"factor": 2}
    assert first["inputs"] == {str(tmp_path / "input.txt"): sha256_file(tmp_path / "input.txt")}
    assert list(first["outputs"]) == [str(tmp_path / "run" / "first.txt")]
    assert record["seed"] == 0 and "version" in record and first["seconds"] >= 0
    assert "stage first: finished" in (tmp_path / "run" / "run.log").read_text()

    calls.clear()
    again = _toy(tmp_path, calls).run()
    assert calls == [] and again["second"] == {"length": 4}  # summaries come back from run.json

    # a changed parameter reruns that stage; its output changes, so the next one reruns too
    _toy(tmp_path, calls, factor=3).run()
    assert calls == ["first", "second"]


def test_changed_input_force_and_damaged_output(tmp_path):
    calls = []
    _toy(tmp_path, calls).run()
    calls.clear()
    _toy(tmp_path, calls).run(force=["second"])
    assert calls == ["second"]
    calls.clear()
    time.sleep(0.01)
    (tmp_path / "input.txt").write_text("xyz")  # a new input: both rerun
    _toy(tmp_path, calls).run()
    assert calls == ["first", "second"] and (tmp_path / "run" / "second.txt").read_text() == "xyzxyz"
    calls.clear()
    (tmp_path / "run" / "second.txt").write_text("damaged")  # a changed output is not trusted
    _toy(tmp_path, calls).run()
    assert calls == ["second"]
    with pytest.raises(InputError, match="not a stage"):
        _toy(tmp_path, calls).run(force=["nonsense"])


def test_same_output_does_not_cascade(tmp_path):
    """A forced stage that writes the same bytes leaves later stages reused."""
    calls = []
    _toy(tmp_path, calls).run()
    calls.clear()
    _toy(tmp_path, calls).run(force=["first"])
    assert calls == ["first"]


def test_parse_override():
    assert parse_override("abinitio.max_iter=50") == (["abinitio", "max_iter"], 50)
    assert parse_override("preprocess.whiten_noise=true") == (["preprocess", "whiten_noise"], True)
    assert parse_override("simulate.defocus_range_um=[1.0, 2.0]") == (["simulate", "defocus_range_um"], [1.0, 2.0])
    assert parse_override("preprocess.particles=data/p.star") == (["preprocess", "particles"], "data/p.star")
    for bad in ("max_iter=5", "abinitio.max_iter", "a.b.c=1"):
        with pytest.raises(InputError):
            parse_override(bad)


def test_set_paths_are_relative_to_the_working_folder(tmp_path, monkeypatch):
    toml = tmp_path / "conf" / "p.toml"
    toml.parent.mkdir()
    toml.write_text('[pipeline]\nstages = ["preprocess"]\n[preprocess]\nparticles = "a.star"\n')
    monkeypatch.chdir(tmp_path)
    config, folder = load_config(toml, ["preprocess.particles=data/b.star"])
    assert folder == toml.parent.resolve()
    assert config["preprocess"]["particles"] == str((tmp_path / "data" / "b.star").resolve())


# ----------------------------------------------------------------- real data, small
@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """80 particles of 32 px from the chiral phantom, SNR 1, with CTF."""
    from cryorecon.io.mrc import write_map
    from cryorecon.simulation.phantom import chiral_phantom
    from cryorecon.simulation.simulate import simulate_dataset

    d = tmp_path_factory.mktemp("small")
    write_map(d / "phantom.mrc", chiral_phantom(32, rng=np.random.default_rng(3)), 4.0)
    simulate_dataset(d / "phantom.mrc", d / "data", n=80, snr=1.0, seed=5, pixel_size_A=4.0)
    return d / "data"


def _write_toml(path, star, extra_pre="", extra_ab="", stages='["preprocess", "abinitio"]'):
    path.write_text(
        f'[pipeline]\nname = "small"\nseed = 3\ndevice = "cpu"\nstages = {stages}\n'
        f'[preprocess]\nparticles = "{star.as_posix()}"\nworking_box = 32\n{extra_pre}\n'
        f'[abinitio]\nmax_iter = 12\nbatch_size = 40\nadaptive_batch = false\ncheckpoint_every = 3\n'
        f'handover_passes = 1\n{extra_ab}\n'
    )
    return path


BAD_CONFIGS = {
    "unknown key": ("", "max_iters = 5", "unknown key(s) max_iters"),
    "unknown preprocess key": ("box = 32", "", "unknown key(s) box"),
    "missing file": ('particles = "nowhere/particles.star"', "", "does not exist"),
    "impossible box": ("working_box = 40", "", "working_box = 40"),
    "odd box": ("working_box = 31", "", "must be even"),
    "pixel size disagrees": ("pixel_size_A = 3.0", "", "disagrees with"),
    "impossible resolution": ("", "target_res_A = 2.0", "finer than Nyquist"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_one_line_before_any_work(case, small_data, tmp_path, capsys):
    pre, ab, expected = BAD_CONFIGS[case]
    star = small_data / "particles.star"
    toml = tmp_path / "bad.toml"
    if pre.startswith("particles"):
        toml.write_text(f'[pipeline]\nstages = ["preprocess", "abinitio"]\n[preprocess]\n{pre}\n[abinitio]\n')
    else:
        _write_toml(toml, star, pre, ab)
        # a key given twice is a TOML error of its own; keep only the bad one
        if pre.startswith("working_box"):
            toml.write_text(toml.read_text().replace("working_box = 32\n", "", 1))
    out = tmp_path / "run"
    assert main(["run", str(toml), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cryorecon run: error:") and expected in err[0], err
    assert not out.exists()  # stopped before any work


def test_unknown_table_and_stage(tmp_path, capsys):
    toml = tmp_path / "p.toml"
    toml.write_text('[pipeline]\nstages = ["preprocess", "refine"]\n[preprocess]\n')
    assert main(["run", str(toml)]) == 2
    assert "unknown stage 'refine'" in capsys.readouterr().err
    toml.write_text('[pipeline]\nstages = ["preprocess"]\n[preprocess]\n[abinitio]\n')
    assert main(["run", str(toml)]) == 2
    assert "[abinitio]: table is not in [pipeline] stages" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "none.toml")]) == 2
    assert "no such pipeline file" in capsys.readouterr().err


def test_compare_stage_is_compare_maps(small_data, tmp_path):
    """The compare stage writes what validate.compare_maps finds, on a larger reference too."""
    import csv

    from cryorecon.forward.fourier import fourier_crop
    from cryorecon.io.mrc import write_map
    from cryorecon.pipeline import CompareStage
    from cryorecon.validate import compare_maps

    truth, _ = read_map(small_data.parent / "phantom.mrc")  # 32 px at 4 A/px
    run = tmp_path / "run"
    run.mkdir()
    small = fourier_crop(truth, 24, ndim=3).astype(np.float32)  # the "map": 24 px at 16/3 A/px
    write_map(run / "map.mrc", small, 4.0 * 32 / 24)
    from cryorecon.io.particles import ParticleStack

    # "estimated" poses = the true ones (write_star points at the stack from the new folder)
    ParticleStack.from_star(small_data / "particles.star").write_star(run / "particles.star")
    stage = CompareStage({"reference": str(small_data.parent / "phantom.mrc"),
                          "truth_star": str(small_data / "particles.star"), "mask_radius_A": 50.0})
    ctx = RunContext(run_dir=run, config_dir=tmp_path)
    summary = Pipeline([stage], ctx, {"pipeline": {"name": "compare only"}}).run()["compare"]
    assert summary["mirrored"] is False and summary["pose_error_median_deg"] < 3.0
    assert summary["pose_within_15deg"] == 1.0
    from cryorecon.forward.masks import soft_sphere

    expected = compare_maps(small, truth, 4.0 * 32 / 24, reference_pixel_size_A=4.0,
                            mask=soft_sphere(24, 50.0 / (4.0 * 32 / 24)))
    assert summary["fsc_0.5_A"] == pytest.approx(expected.summary()["fsc_0.5_A"], rel=1e-6)
    rows = list(csv.reader(open(run / "fsc.csv")))
    assert rows[0][3] == "fsc_vs_reference" and len(rows) == 1 + 13
    np.testing.assert_allclose([float(r[3]) for r in rows[1:]], expected.fsc, atol=1e-6)
    aligned, px = read_map(run / "map_aligned.mrc")
    assert aligned.shape == (24, 24, 24) and px == pytest.approx(16 / 3)
    bad = CompareStage({"reference": str(small_data.parent / "phantom.mrc"), "mask_radius_A": -1})
    with pytest.raises(InputError, match="mask_radius_A"):
        Pipeline([bad], RunContext(run_dir=tmp_path / "bad", config_dir=tmp_path)).run()
    assert not (tmp_path / "bad").exists()


def _run_cli(toml, out):
    return subprocess.Popen([sys.executable, "-m", "cryorecon", "run", str(toml), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)


def test_kill9_then_resume_equals_uninterrupted(small_data, tmp_path):
    toml = _write_toml(tmp_path / "p.toml", small_data / "particles.star")
    ref_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    assert main(["run", str(toml), "--out", str(ref_dir)]) == 0

    proc = _run_cli(toml, cut_dir)
    checkpoint = cut_dir / "checkpoint.npz"
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    with np.load(checkpoint) as z:
        done = json.loads(bytes(z["meta"]).decode())["iteration"]
    assert 0 < done < 12
    # the earlier stage's output survived intact and the record says ab initio is unfinished
    record = json.loads((cut_dir / "run.json").read_text())
    assert "abinitio" not in record["stages"]
    pre = record["stages"]["preprocess"]["outputs"]
    assert all(sha256_file(p) == digest for p, digest in pre.items())
    assert not (cut_dir / "map.mrc").exists()

    assert main(["run", str(toml), "--out", str(cut_dir)]) == 0
    record = json.loads((cut_dir / "run.json").read_text())
    assert record["stages"]["preprocess"]["skipped"] is True
    assert record["stages"]["abinitio"]["summary"]["resumed"] is True
    assert "resuming from" in (cut_dir / "run.log").read_text()
    whole, _ = read_map(ref_dir / "map.mrc")
    resumed, _ = read_map(cut_dir / "map.mrc")
    np.testing.assert_allclose(resumed, whole, rtol=1e-5, atol=1e-6 * float(np.abs(whole).max()))
    h_whole = np.loadtxt(ref_dir / "history.csv", delimiter=",", skiprows=1)
    h_cut = np.loadtxt(cut_dir / "history.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(h_cut[:, :-1], h_whole[:, :-1], rtol=1e-5)  # all but the seconds column


def test_abinitio_command_shares_the_pipeline(small_data, tmp_path, capsys):
    out = tmp_path / "ab"
    args = ["abinitio", str(small_data / "particles.star"), "--out", str(out), "--max-iter", "4",
            "--batch-size", "40", "--working-box", "24", "--device", "cpu", "--seed", "1"]
    assert main(args) == 0
    assert "map.mrc (24 px" in capsys.readouterr().out
    vol, px = read_map(out / "map.mrc")
    assert vol.shape == (24, 24, 24) and px == pytest.approx(4.0 * 32 / 24)
    record = json.loads((out / "run.json").read_text())
    assert record["stages"]["abinitio"]["summary"]["settings"]["max_iter"] == 4
    # --resume reuses the finished stages
    assert main(args + ["--resume"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["stages"]["abinitio"]["skipped"] is True
