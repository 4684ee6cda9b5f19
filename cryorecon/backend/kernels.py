"""CUDA kernels for the projector's two hot loops, and the scoring GEMMs' precision.

:func:`extract` (trilinear slice extraction) and :func:`backproject` (its exact
adjoint, a scatter-add with atomics) are ``cupy.RawKernel`` versions of the vectorised
``xp`` code in :mod:`cryorecon.forward.projector`, which stays the reference they are tested
against. One thread handles one (rotation, frequency) pair: it computes the point
``pL//2 + pad * A^T (kx, ky, 0)`` and its eight trilinear weights in registers, where
the ``xp`` path materialises eight index and eight weight arrays per chunk; that memory
traffic, not arithmetic, is what the generic path spends its time on.

The kernels are compiled with ``-fmad=false`` and evaluate the point coordinates and
weights with the same operations, in the same order and precision, as the reference,
so extraction agrees with it to rounding of the final sum. Backprojection accumulates
with ``atomicAdd`` in the values' own precision, so its summation order (and the last
bits) vary from run to run.

:func:`assemble_errors` finishes the pose-scoring errors in one pass. The GEMMs stay
float32: TF32 inputs (cuBLAS's ``FAST_TF32`` compute type, through cupy's compute-type
switch) moved the final poses of the local search on an H200 (median error 1.2 -> 6.8
degrees, 50,000 particles at 128 px), and in the coarse search cuBLAS did not always
apply it (same bits as float32 for the scoring products). bf16 had no effect at all.

CuPy is imported only inside the functions that run on cupy arrays, so this module
imports on a machine without it.
"""
from __future__ import annotations

import functools

import numpy as np

from . import array_module

_THREADS = 256
# Grid-stride loops cover any (R, M); more blocks than this only adds launch overhead.
_MAX_BLOCKS = 1 << 20

_SOURCE = r"""
// REAL is float or double (set at compile time); complex arrays are interleaved (re, im).

// The same text also builds as plain C++ for the CPU check in the tests (nvcc defines
// __CUDACC__, NVRTC __CUDACC_RTC__).
#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#define __device__
#define __forceinline__ inline
#endif

// Trilinear neighbourhood of the point pL//2 + pad * A^T (kx, ky, 0) of the padded grid,
// one copy for extraction and its adjoint so that both use bit-identical weights.
// Axis a = 0, 1, 2 is z, y, x; i0[a] is the lower neighbour, w0[a] and w1[a] the weights
// of the lower and upper one, 0 where that neighbour is off the grid.
__device__ __forceinline__ void trilinear_setup(
    const REAL* __restrict__ A, const REAL kx, const REAL ky, const int pL, const REAL pad,
    int* __restrict__ i0, REAL* __restrict__ w0, REAL* __restrict__ w1)
{
    const REAL centre = (REAL)(pL / 2);
    // (A^T k)_j = A[0, j] kx + A[1, j] ky; j = 0, 1, 2 are x, y, z.
    const REAL g[3] = {(A[2] * kx + A[5] * ky) * pad + centre,
                       (A[1] * kx + A[4] * ky) * pad + centre,
                       (A[0] * kx + A[3] * ky) * pad + centre};
    for (int a = 0; a < 3; ++a) {
        const REAL f0 = floor(g[a]);
        const REAL f = g[a] - f0;
        i0[a] = (int)f0;
        w0[a] = ((unsigned)i0[a] < (unsigned)pL) ? (REAL)1 - f : (REAL)0;
        w1[a] = ((unsigned)(i0[a] + 1) < (unsigned)pL) ? f : (REAL)0;
    }
}

// Weight of corner c = 4 cz + 2 cy + cx of that neighbourhood, and its flat voxel index
// in *idx. The product runs z, then y, then x, the reference's order.
__device__ __forceinline__ REAL trilinear_corner(
    const int* __restrict__ i0, const REAL* __restrict__ w0, const REAL* __restrict__ w1,
    const int c, const int pL, long long* __restrict__ idx)
{
    const int cz = c >> 2, cy = (c >> 1) & 1, cx = c & 1;
    *idx = ((long long)(i0[0] + cz) * pL + (i0[1] + cy)) * pL + i0[2] + cx;
    return (cz ? w1[0] : w0[0]) * (cy ? w1[1] : w0[1]) * (cx ? w1[2] : w0[2]);
}

extern "C" __global__ void extract_slices(
    const REAL* __restrict__ vol, const REAL* __restrict__ rot, const int* __restrict__ coords,
    REAL* __restrict__ out, const long long n_rot, const int n_coef, const int pL, const REAL pad)
{
    const long long total = n_rot * (long long)n_coef;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const long long r = t / n_coef;
        const int m = (int)(t - r * n_coef);
        int i0[3];
        REAL w0[3], w1[3];
        trilinear_setup(rot + 9 * r, (REAL)coords[2 * m], (REAL)coords[2 * m + 1], pL, pad, i0, w0, w1);
        REAL re = 0, im = 0;
        for (int c = 0; c < 8; ++c) {
            long long idx;
            const REAL w = trilinear_corner(i0, w0, w1, c, pL, &idx);
            if (w != (REAL)0) {
                re += vol[2 * idx] * w;
                im += vol[2 * idx + 1] * w;
            }
        }
        out[2 * t] = re;
        out[2 * t + 1] = im;
    }
}

// N_PARTS = 2 scatters interleaved complex values, N_PARTS = 1 real ones.
extern "C" __global__ void backproject_slices(
    const REAL* __restrict__ values, const REAL* __restrict__ rot, const int* __restrict__ coords,
    REAL* __restrict__ out, const long long n_rot, const int n_coef, const int pL, const REAL pad)
{
    const long long total = n_rot * (long long)n_coef;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        REAL v[N_PARTS];
        bool any = false;
        for (int p = 0; p < N_PARTS; ++p) {
            v[p] = values[N_PARTS * t + p];
            any = any || v[p] != (REAL)0;
        }
        // Rows of zero posterior weight are common; they add nothing.
        if (!any) continue;
        const long long r = t / n_coef;
        const int m = (int)(t - r * n_coef);
        int i0[3];
        REAL w0[3], w1[3];
        trilinear_setup(rot + 9 * r, (REAL)coords[2 * m], (REAL)coords[2 * m + 1], pL, pad, i0, w0, w1);
        for (int c = 0; c < 8; ++c) {
            long long idx;
            const REAL w = trilinear_corner(i0, w0, w1, c, pL, &idx);
            if (w != (REAL)0) {
                for (int p = 0; p < N_PARTS; ++p)
                    atomicAdd(out + N_PARTS * idx + p, v[p] * w);
            }
        }
    }
}
"""


@functools.lru_cache(maxsize=None)
def _kernel(name: str, real: str, n_parts: int = 2):
    import cupy

    # -fmad=false: no fused multiply-adds, so the point coordinates round exactly as
    # numpy's separate multiplies and adds do, and the weights match the reference.
    options = (f"-DREAL={real}", f"-DN_PARTS={n_parts}", "-fmad=false")
    return cupy.RawKernel(_SOURCE, name, options=options)


def _real_name(dtype) -> str:
    return "double" if np.dtype(dtype) in (np.float64, np.complex128) else "float"


def _launch(kernel, total, args):
    blocks = int(min(max(1, -(-total // _THREADS)), _MAX_BLOCKS))
    kernel((blocks,), (_THREADS,), args)


def _prepare(xp, rotations, coords, real_dtype, pL):
    rot = xp.ascontiguousarray(xp.asarray(rotations, dtype=real_dtype).reshape(-1, 9))
    c = xp.ascontiguousarray(xp.asarray(coords).astype(xp.int32, copy=False).reshape(-1, 2))
    return rot, c


def extract(vol_ft, rotations, coords, pad=2):
    """Central slices of a padded transform on the GPU; same contract as the projector's.

    Parameters
    ----------
    vol_ft : cupy array (pL, pL, pL) complex64 or complex128
    rotations : array (R, 3, 3)
        RELION matrices ``A`` (host or device); the slice is at ``A^T (kx, ky, 0)``.
    coords : int array (M, 2)
        ``(kx, ky)`` in pixel frequencies of the unpadded grid.
    pad : float

    Returns
    -------
    cupy array (R, M), dtype of ``vol_ft``
        Neighbours off the grid count as 0, as in :func:`cryorecon.forward.projector.extract`.
    """
    xp = array_module(vol_ft)
    pL = int(vol_ft.shape[-1])
    real = vol_ft.real.dtype
    rot, c = _prepare(xp, rotations, coords, real, pL)
    n_rot, n_coef = int(rot.shape[0]), int(c.shape[0])
    vol = xp.ascontiguousarray(vol_ft)
    out = xp.empty((n_rot, n_coef), dtype=vol_ft.dtype)
    if n_rot * n_coef == 0:
        return out
    args = (vol, rot, c, out, np.int64(n_rot), np.int32(n_coef), np.int32(pL), real.type(pad))
    _launch(_kernel("extract_slices", _real_name(real)), n_rot * n_coef, args)
    return out


def backproject(values, rotations, coords, shape, pad=2, real=False):
    """Scatter-add ``values`` with the trilinear weights of :func:`extract` (its adjoint).

    Parameters
    ----------
    values : cupy array (R, M)
        Complex values, or real ones when ``real`` is True (only the real part is used
        then, as in :func:`cryorecon.forward.projector.backproject_weights`).
    rotations : array (R, 3, 3)
    coords : int array (M, 2)
    shape : tuple (pL, pL, pL)
    pad : float
    real : bool
        Scatter real weights into a real grid instead of complex values.

    Returns
    -------
    cupy array ``shape``: complex of the values' precision, or real when ``real``.
    """
    xp = array_module(values)
    pL = int(shape[-1])
    real_dtype = np.dtype(np.float64 if values.dtype in (np.float64, np.complex128) else np.float32)
    if real:
        vals = xp.ascontiguousarray(xp.real(values).astype(real_dtype, copy=False))
        out = xp.zeros(tuple(shape), dtype=real_dtype)
    else:
        cdtype = np.complex128 if real_dtype == np.float64 else np.complex64
        vals = xp.ascontiguousarray(values.astype(cdtype, copy=False))
        out = xp.zeros(tuple(shape), dtype=cdtype)
    rot, c = _prepare(xp, rotations, coords, real_dtype, pL)
    n_rot, n_coef = int(rot.shape[0]), int(c.shape[0])
    if vals.size != n_rot * n_coef:
        raise ValueError(f"values of shape {values.shape} do not match {n_rot} rotations x {n_coef} coefficients")
    if n_rot * n_coef == 0:
        return out
    kernel = _kernel("backproject_slices", _real_name(real_dtype), 1 if real else 2)
    args = (vals, rot, c, out, np.int64(n_rot), np.int32(n_coef), np.int32(pL), real_dtype.type(pad))
    _launch(kernel, n_rot * n_coef, args)
    return out


@functools.lru_cache(maxsize=None)
def _assemble_kernel():
    import cupy

    # -2 * err is exact, so the fused multiply-add rounds as numpy's separate steps do.
    return cupy.ElementwiseKernel("T norm, T c", "T err", "err = (T(-2) * err + norm) + c", "cryorecon_assemble_errors")


def assemble_errors(cross, norm, const):
    """``cross <- -2 cross + norm[:, None, :] + const[:, None, None]``, in place, in one pass.

    The cupy version of :func:`cryorecon.scoring.pose_search.assemble_errors`. At coarse bands
    the three separate passes over the (B, T, R) block took as long as the GEMM that
    fills it (bench_gpu on an H200: scoring at 0.45 of the bare GEMM rate, 0.66 fused).
    """
    _assemble_kernel()(norm[:, None, :], const[:, None, None], cross)
    return cross
