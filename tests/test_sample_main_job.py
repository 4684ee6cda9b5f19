"""The README's main command, end to end, in a fresh virtual environment (slow).

The command is read from README.md itself, so the test and the README cannot drift
apart; only the venv and run-folder paths are moved into a temporary folder.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_main_command() -> str:
    """The README line that creates a venv, installs cryorecon and runs pipelines/sample.toml."""
    text = (REPO / "README.md").read_text()
    lines = [ln.strip() for ln in text.splitlines() if "cryorecon run pipelines/sample.toml" in ln and "venv" in ln]
    assert len(lines) == 1, "README.md must hold exactly one main command"
    return lines[0]


def test_readme_names_the_sample_pipeline():
    cmd = readme_main_command()
    assert cmd.startswith("python3.11 -m venv .venv") and "--out runs/sample" in cmd
    assert (REPO / "pipelines" / "sample.toml").is_file()
    assert (REPO / "sample_data" / "particles.star").is_file()


@pytest.mark.slow
def test_readme_main_command_in_fresh_venv(tmp_path):
    cmd = readme_main_command()
    venv, run_dir = tmp_path / "venv", tmp_path / "runs" / "sample"
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    moved = cmd.replace(".venv/", f"{venv}/").replace("-m venv .venv", f"-m venv {venv}")
    moved = moved.replace("--out runs/sample", f"--out {run_dir}").replace("python3.11", python)
    # a plain venv (no system site-packages): every dependency comes from PyPI through pyproject.toml
    assert "--system-site-packages" not in moved
    install, run = moved.rsplit(" && ", 1)
    subprocess.run(["bash", "-c", install], cwd=REPO, check=True, timeout=1800)
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.prefix != sys.base_prefix)"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "True"

    t0 = time.perf_counter()
    first = subprocess.run(["bash", "-c", run], cwd=REPO, capture_output=True, text=True, timeout=900)
    first_s = time.perf_counter() - t0
    assert first.returncode == 0, first.stdout + first.stderr
    for name in ("map.mrc", "particles.star", "history.csv", "loss.png", "slices.png", "projections.png",
                 "fsc.png", "fsc.csv", "report.md", "run.log", "run.json"):
        assert (run_dir / name).is_file(), name
    record = json.loads((run_dir / "run.json").read_text())
    assert list(record["stages"]) == ["preprocess", "abinitio", "compare", "plots", "report"]
    # the sample job must actually find the structure, not just write files
    compare = record["stages"]["compare"]["summary"]
    assert compare["fsc_0.5_A"] < 20.0 and compare["correlation"] > 0.8, compare

    t0 = time.perf_counter()
    second = subprocess.run(["bash", "-c", run], cwd=REPO, capture_output=True, text=True, timeout=900)
    second_s = time.perf_counter() - t0
    assert second.returncode == 0, second.stdout + second.stderr
    record = json.loads((run_dir / "run.json").read_text())
    assert all(rec["skipped"] for rec in record["stages"].values())
    assert second_s < 0.25 * first_s, (first_s, second_s)
    print(f"README main command: first run {first_s:.1f} s, second run {second_s:.1f} s")

    # the map is readable with its voxel size
    import mrcfile

    with mrcfile.open(run_dir / "map.mrc") as m:
        assert float(m.voxel_size.x) == pytest.approx(4.5) and np.isfinite(m.data).all()


def test_sample_data_is_small():
    total = sum(p.stat().st_size for p in (REPO / "sample_data").iterdir() if p.is_file())
    assert total < 20e6
