import numpy as np
import pytest

from cryorecon import backend
from cryorecon.errors import InputError


def test_cpu_is_numpy():
    assert backend.set_device("cpu") is np
    assert backend.current_device() == "cpu"


def test_unknown_device_is_a_clear_error():
    with pytest.raises(InputError, match="not one of"):
        backend.set_device("tpu")


def test_auto_falls_back_to_cpu_without_gpu(monkeypatch):
    monkeypatch.setattr(backend, "_import_cupy_with_device", lambda: None)
    assert backend.set_device("auto") is np
    with pytest.raises(InputError, match="no CUDA device"):
        backend.set_device("gpu")
    backend.set_device("cpu")


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("CRYORECON_DEVICE", "cpu")
    assert backend.set_device(None) is np


def test_host_moves_are_explicit():
    a = np.arange(3.0)
    assert backend.array_module(a) is np
    assert backend.to_host(backend.to_device(a, xp=np)) is not None


@pytest.mark.gpu
def test_gpu_round_trip():
    cupy = pytest.importorskip("cupy")
    xp = backend.set_device("gpu")
    assert xp is cupy
    a = backend.to_device(np.arange(4.0))
    assert backend.array_module(a) is cupy
    np.testing.assert_array_equal(backend.to_host(a), np.arange(4.0))
    backend.set_device("cpu")
