"""Shared fixtures: reference data from outside the project, and the GPU marker."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _cupy_with_device():
    try:
        import cupy

        cupy.zeros(1)
        return True
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if any("gpu" in item.keywords for item in items) and not _cupy_with_device():
        skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data():
    """Path of ../shared/data (RELION and ASPIRE reference files); fail loudly if absent."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"reference data not found at {SHARED_DATA}: put ../shared beside the repo")
    return SHARED_DATA
