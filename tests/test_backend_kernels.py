"""backend.kernels: the CUDA extraction/backprojection kernels against the numpy projector.

Without a GPU the kernel source still runs here: compiled as C++ for one thread that
walks the whole grid-stride loop, it must agree with the numpy reference, so a wrong
index or weight in the CUDA text fails on any machine with a C++ compiler. The
``gpu`` tests run the real kernels through cupy.
"""
import ctypes
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cryorecon.backend import kernels
from cryorecon.forward.fourier import band_coords
from cryorecon.geometry.rotations import random_rotations
from cryorecon.scoring.pose_search import BatchTerms, batch_terms, errors_shared
from cryorecon.forward.projector import backproject, backproject_weights, extract, full_coords, volume_ft

_HOST_PRELUDE = r"""
#include <math.h>
struct Dim3 { long long x; };
static const Dim3 blockIdx = {0}, blockDim = {1}, threadIdx = {0}, gridDim = {1};
#define __global__
#define __restrict__
template <class T> static void atomicAdd(T* p, T v) { *p += v; }
"""


def _compiler():
    return shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    """The CUDA source compiled for the CPU, one library per (REAL, N_PARTS)."""
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler to run the kernel source on the CPU")
    d = tmp_path_factory.mktemp("kernels")
    src = d / "kernels.cpp"
    src.write_text(_HOST_PRELUDE + kernels._SOURCE)
    libs = {}
    for real in ("float", "double"):
        for parts in (1, 2):
            so = d / f"k_{real}_{parts}.so"
            # -ffp-contract=off is the host twin of nvrtc's -fmad=false.
            cmd = [cxx, "-O1", "-ffp-contract=off", "-shared", "-fPIC", f"-DREAL={real}", f"-DN_PARTS={parts}", str(src), "-o", str(so)]
            subprocess.run(cmd, check=True, capture_output=True)
            libs[real, parts] = ctypes.CDLL(str(so))
    return libs


def _ptr(a):
    return ctypes.c_void_p(a.ctypes.data)


def _host_extract(libs, F, R, coords, pad):
    real = "double" if F.dtype == np.complex128 else "float"
    rdtype = np.float64 if real == "double" else np.float32
    rot = np.ascontiguousarray(R.reshape(-1, 9), dtype=rdtype)
    c = np.ascontiguousarray(coords, dtype=np.int32)
    out = np.zeros((rot.shape[0], c.shape[0]), dtype=F.dtype)
    fn = libs[real, 2].extract_slices
    ctype = ctypes.c_float if real == "float" else ctypes.c_double
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_longlong, ctypes.c_int, ctypes.c_int, ctype]
    Fc = np.ascontiguousarray(F)
    fn(_ptr(Fc), _ptr(rot), _ptr(c), _ptr(out), rot.shape[0], c.shape[0], F.shape[-1], pad)
    return out


def _host_backproject(libs, values, R, coords, shape, pad, real_values):
    rdtype = np.float64 if values.dtype in (np.float64, np.complex128) else np.float32
    real = "double" if rdtype == np.float64 else "float"
    rot = np.ascontiguousarray(R.reshape(-1, 9), dtype=rdtype)
    c = np.ascontiguousarray(coords, dtype=np.int32)
    if real_values:
        vals = np.ascontiguousarray(values.real, dtype=rdtype)
        out = np.zeros(shape, dtype=rdtype)
    else:
        vals = np.ascontiguousarray(values)
        out = np.zeros(shape, dtype=values.dtype)
    fn = libs[real, 1 if real_values else 2].backproject_slices
    ctype = ctypes.c_float if real == "float" else ctypes.c_double
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_longlong, ctypes.c_int, ctypes.c_int, ctype]
    fn(_ptr(vals), _ptr(rot), _ptr(c), _ptr(out), rot.shape[0], c.shape[0], shape[-1], pad)
    return out


CASES = [(np.float32, 16, 2), (np.float32, 15, 2), (np.float32, 12, 1.5), (np.float64, 13, 2)]


@pytest.mark.parametrize("dtype, L, pad", CASES)
def test_kernel_source_equals_reference_on_cpu(host_kernels, dtype, L, pad):
    rng = np.random.default_rng(3)
    V = rng.standard_normal((L, L, L)).astype(dtype)
    F = volume_ft(V, pad)
    F = (F + rng.standard_normal(F.shape) + 1j * rng.standard_normal(F.shape)).astype(F.dtype)
    R = random_rotations(6, rng)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    # Full grid: with pad 1.5 its corners fall off the padded cube (zero neighbours).
    for coords in (full_coords(L), band_coords(L, L / 3)):
        ref = extract(F, R, coords, pad)
        got = _host_extract(host_kernels, F, R, coords, pad)
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())
        y = (rng.standard_normal(ref.shape) + 1j * rng.standard_normal(ref.shape)).astype(ref.dtype)
        b_ref = backproject(y, R, coords, F.shape, pad)
        b_got = _host_backproject(host_kernels, y, R, coords, F.shape, pad, real_values=False)
        np.testing.assert_allclose(b_got, b_ref, rtol=tol, atol=tol * np.abs(b_ref).max())
        w = rng.random(ref.shape).astype(dtype)
        bw_ref = backproject_weights(w, R, coords, F.shape, pad)
        bw_got = _host_backproject(host_kernels, w, R, coords, F.shape, pad, real_values=True)
        assert bw_got.dtype == bw_ref.dtype
        np.testing.assert_allclose(bw_got, bw_ref, rtol=tol, atol=tol * np.abs(bw_ref).max())


def test_kernel_source_skips_zero_rows_without_changing_the_sum(host_kernels):
    """Zero-weight rows are skipped; a sparse posterior must give the dense result."""
    rng = np.random.default_rng(4)
    L = 12
    F_shape = (2 * L,) * 3
    R = random_rotations(5, rng)
    coords = band_coords(L, L / 2)
    y = (rng.standard_normal((5, len(coords))) + 1j * rng.standard_normal((5, len(coords)))).astype(np.complex64)
    y[[1, 3]] = 0
    got = _host_backproject(host_kernels, y, R, coords, F_shape, 2, real_values=False)
    ref = backproject(y[[0, 2, 4]], R[[0, 2, 4]], coords, F_shape)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_module_does_not_import_cupy():
    code = "import sys, cryorecon.backend.kernels, cryorecon.backend.memory, cryorecon.forward.projector; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"


# --------------------------------------------------------------------- on the GPU
def _cupy():
    import cupy

    return cupy


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, L, pad", CASES + [(np.float32, 64, 2)])
def test_gpu_extract_and_backproject_equal_numpy(dtype, L, pad):
    cp = _cupy()
    rng = np.random.default_rng(5)
    V = rng.standard_normal((L, L, L)).astype(dtype)
    F = volume_ft(V, pad)
    F = (F + rng.standard_normal(F.shape) + 1j * rng.standard_normal(F.shape)).astype(F.dtype)
    F_d = cp.asarray(F)
    R = random_rotations(11, rng)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for coords in (full_coords(L), band_coords(L, L / 3)):
        ref = extract(F, R, coords, pad)
        got = extract(F_d, cp.asarray(R), cp.asarray(coords), pad)
        assert got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_allclose(cp.asnumpy(got), ref, rtol=tol, atol=tol * np.abs(ref).max())
        y = (rng.standard_normal(ref.shape) + 1j * rng.standard_normal(ref.shape)).astype(ref.dtype)
        b_ref = backproject(y, R, coords, F.shape, pad)
        b_got = backproject(cp.asarray(y), cp.asarray(R), cp.asarray(coords), F.shape, pad)
        assert b_got.dtype == b_ref.dtype
        # Atomic float32 sums come in any order: tolerance relative to the largest voxel.
        np.testing.assert_allclose(cp.asnumpy(b_got), b_ref, rtol=10 * tol, atol=10 * tol * np.abs(b_ref).max())
        # the adjoint identity on the device alone
        lhs = complex(cp.vdot(got.astype(cp.complex128), cp.asarray(y)))
        rhs = complex(cp.vdot(F_d.astype(cp.complex128), b_got))
        assert abs(lhs.real - rhs.real) <= 10 * tol * max(abs(lhs.real), 1.0)
        w = rng.random(ref.shape).astype(dtype)
        bw_ref = backproject_weights(w, R, coords, F.shape, pad)
        bw_got = backproject_weights(cp.asarray(w), R, coords, F.shape, pad)
        assert bw_got.dtype == bw_ref.dtype
        np.testing.assert_allclose(cp.asnumpy(bw_got), bw_ref, rtol=10 * tol, atol=10 * tol * np.abs(bw_ref).max())


@pytest.mark.gpu
def test_gpu_kernels_handle_empty_and_large_launches(monkeypatch):
    cp = _cupy()
    rng = np.random.default_rng(6)
    L = 32
    F = cp.asarray(volume_ft(rng.standard_normal((L, L, L)).astype(np.float32)))
    coords = cp.asarray(full_coords(L))
    assert extract(F, np.zeros((0, 3, 3)), coords).shape == (0, L * L)
    assert float(cp.abs(backproject(cp.zeros((0, L * L), cp.complex64), np.zeros((0, 3, 3)), coords, F.shape)).max()) == 0
    # More (rotation, frequency) pairs than one grid of blocks covers: the stride loop. The
    # real cap (2^20 blocks) would need 2^28 pairs, so the test lowers it.
    R = random_rotations(300, rng)
    one_grid = extract(F, R, coords)
    monkeypatch.setattr(kernels, "_MAX_BLOCKS", 7)
    assert one_grid.size > 7 * kernels._THREADS * 100
    strided = extract(F, R, coords)
    np.testing.assert_array_equal(cp.asnumpy(strided), cp.asnumpy(one_grid))
    y = cp.asarray(rng.standard_normal(one_grid.shape) + 1j * rng.standard_normal(one_grid.shape), dtype=cp.complex64)
    bp_strided = backproject(y, R, coords, F.shape)
    monkeypatch.undo()
    bp_one_grid = backproject(y, R, coords, F.shape)
    cp.testing.assert_allclose(bp_strided, bp_one_grid, rtol=1e-5, atol=1e-5 * float(cp.abs(bp_one_grid).max()))


def _scoring_problem(cp, n_images=16, L=48, k_px=12.0, n_rot=600, snr=0.5, seed=7):
    """Noisy slices of a random map, and the search terms with a 5 x 5 shift grid."""
    from cryorecon.forward.fourier import shift_phase

    rng = np.random.default_rng(seed)
    V = rng.standard_normal((L, L, L)).astype(np.float32)
    F = cp.asarray(volume_ft(V))
    coords = band_coords(L, k_px, half=True)[0]
    R = cp.asarray(random_rotations(n_rot, rng), dtype=cp.float32)
    slices = extract(F, R, coords)
    truth = rng.integers(0, n_rot, n_images)
    y = slices[cp.asarray(truth)]
    scale = float(cp.sqrt(cp.mean(cp.abs(y) ** 2)))
    noise = (rng.standard_normal(y.shape) + 1j * rng.standard_normal(y.shape)) * scale / np.sqrt(2 * snr)
    y = (y + cp.asarray(noise)).astype(cp.complex64)
    ctf = cp.ones(y.shape, cp.float32)
    w = cp.full(y.shape[1], 1.0 / scale**2, cp.float32)
    grid = np.arange(-2.0, 3.0)
    shifts = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    phases = shift_phase(cp.asarray(coords), L, cp.asarray(shifts, dtype=cp.float32), dtype=cp.complex64)
    return batch_terms(y, ctf, w, phases), slices


@pytest.mark.gpu
def test_gpu_error_assembly_equals_numpy():
    cp = _cupy()
    terms, slices = _scoring_problem(cp)
    got = errors_shared(terms, slices)
    host_terms = BatchTerms(cross_lhs=cp.asnumpy(terms.cross_lhs), norm_lhs=cp.asnumpy(terms.norm_lhs), const=cp.asnumpy(terms.const))
    ref = errors_shared(host_terms, cp.asnumpy(slices))
    np.testing.assert_allclose(cp.asnumpy(got), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
