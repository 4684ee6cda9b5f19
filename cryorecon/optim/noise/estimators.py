"""How noisy is a mini-batch gradient? Estimators from per-example gradients.

Notation: ``n`` per-example gradients ``g_i`` (rows of an ``(n, d)`` array, numpy or
cupy), mean ``G = (1/n) sum g_i`` and covariance trace
``tr Cov = (1/(n-1)) sum |g_i - G|^2`` (unbiased). For a mini-batch of ``B`` examples
drawn independently, the batch-mean gradient has error covariance ``Cov / B``, so:

- the per-example signal-to-noise ratio is ``|G|^2 / tr Cov`` and the batch SNR is
  ``B`` times that;
- the "simple noise scale" ``B_simple = tr Cov / |G|^2`` (McCandlish et al. 2018, "An
  Empirical Model of Large-Batch Training", eq. 2.5) is the batch size at which noise
  and signal are equal;
- Chebyshev's inequality gives ``P(|G_B - G| >= eps) <= tr Cov / (B eps^2)``, hence
  ``B >= tr Cov / (delta eps^2)`` bounds the error by ``eps`` with probability at
  least ``1 - delta``.

``|G_hat|^2`` over-estimates ``|G|^2`` by ``tr Cov / n`` on average; ``debias=True``
subtracts that (McCandlish et al., appendix A).
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .._tree import is_cupy, xp_of


def _sq_norm(v):
    """``sum |v_k|^2`` as a 0-d float64 array on ``v``'s device (complex entries count both parts).

    Squares in ``v``'s precision, sums in float64: the trace of the covariance is a
    difference of such sums, and float32 accumulation over millions of entries would
    leave too little of it.
    """
    xp = xp_of(v)
    if xp.iscomplexobj(v):
        return xp.sum(v.real * v.real, dtype=xp.float64) + xp.sum(v.imag * v.imag, dtype=xp.float64)
    return xp.sum(v * v, dtype=xp.float64)


def _to_floats(*values):
    """Several scalars (floats, or 0-d arrays on one device) as floats, in one read."""
    arrays = [v for v in values if hasattr(v, "dtype")]
    if not arrays:
        return [float(v) for v in values]
    xp = xp_of(arrays[0])
    stacked = xp.stack([xp.asarray(v, dtype=xp.float64) for v in values])
    host = stacked.get() if is_cupy(stacked) else stacked
    return [float(v) for v in host]


def _moments(per_example_grads):
    g = per_example_grads
    if g.ndim != 2:
        raise ValueError(f"per-example gradients must be an (n, d) array, got shape {g.shape}")
    n = g.shape[0]
    if n < 2:
        raise ValueError("need at least two per-example gradients to estimate a covariance")
    xp = xp_of(g)
    g64 = g.astype(xp.float64, copy=False)
    mean = g64.mean(axis=0)
    centred = g64 - mean
    trace_cov = float((centred * centred).sum()) / (n - 1)
    mean_sq = float(mean @ mean)
    return n, mean_sq, trace_cov


def _signal(mean_sq, trace_cov, n, debias):
    return max(mean_sq - trace_cov / n, 0.0) if debias else mean_sq


def grad_snr(per_example_grads, debias: bool = False) -> float:
    """Per-example gradient signal-to-noise ratio ``|G|^2 / tr Cov``.

    Multiply by the batch size for the SNR of a batch-mean gradient.

    Parameters
    ----------
    per_example_grads : (n, d) array
        One flattened gradient per row, n >= 2.
    debias : bool
        Remove the ``tr Cov / n`` bias of ``|G_hat|^2``.

    Returns
    -------
    float
        ``inf`` when the covariance trace is zero.

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon.optim import noise
    >>> g = np.array([[1.0, 0.0], [3.0, 0.0]])    # mean (2, 0), tr Cov = 2
    >>> noise.grad_snr(g)
    2.0

    References
    ----------
    McCandlish, Kaplan, Amodei et al. (2018), "An Empirical Model of Large-Batch
    Training", arXiv:1812.06162.
    """
    n, mean_sq, trace_cov = _moments(per_example_grads)
    signal = _signal(mean_sq, trace_cov, n, debias)
    return signal / trace_cov if trace_cov > 0 else math.inf


def simple_noise_scale(per_example_grads, debias: bool = False) -> float:
    """McCandlish et al.'s simple noise scale ``B_simple = tr Cov / |G|^2``.

    Parameters
    ----------
    per_example_grads : (n, d) array
        One flattened gradient per row, n >= 2.
    debias : bool
        Remove the ``tr Cov / n`` bias of ``|G_hat|^2``.

    Returns
    -------
    float
        ``inf`` when the (debiased) mean gradient is zero.

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon.optim import noise
    >>> noise.simple_noise_scale(np.array([[1.0, 0.0], [3.0, 0.0]]))
    0.5

    References
    ----------
    McCandlish et al. (2018), arXiv:1812.06162, eq. 2.5.
    """
    n, mean_sq, trace_cov = _moments(per_example_grads)
    signal = _signal(mean_sq, trace_cov, n, debias)
    return trace_cov / signal if signal > 0 else math.inf


def chebyshev_batch_size(trace_cov: float, eps: float, delta: float) -> int:
    """Smallest batch size with ``P(|G_B - G| >= eps) <= delta`` by Chebyshev's inequality.

    ``B = ceil(tr Cov / (delta eps^2))``, from
    ``P(|G_B - G| >= eps) <= E|G_B - G|^2 / eps^2 = tr Cov / (B eps^2)``. The bound
    assumes independent draws (with replacement); it needs no Gaussianity, which is why
    it is conservative.

    Parameters
    ----------
    trace_cov : float
        Trace of the per-example gradient covariance.
    eps : float
        Error tolerance on the batch-mean gradient (Euclidean norm), > 0.
    delta : float
        Allowed failure probability, in (0, 1].

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> from cryorecon.optim import noise
    >>> noise.chebyshev_batch_size(trace_cov=2.0, eps=0.1, delta=0.05)
    4000

    References
    ----------
    Chebyshev's inequality for random vectors; its use for batch sizes in Byrd, Chin,
    Nocedal & Wu (2012), "Sample size selection in optimization methods for machine
    learning", Math. Programming 134.
    """
    if eps <= 0 or not (0 < delta <= 1):
        raise ValueError(f"need eps > 0 and 0 < delta <= 1, got eps={eps}, delta={delta}")
    # Round before ceil so that an exact quotient is not pushed up by representation error.
    return max(1, math.ceil(round(float(trace_cov) / (delta * eps * eps), 9)))


class GradientNoiseStats(NamedTuple):
    """Streaming sums for the noise estimators, without keeping per-example gradients.

    Holds ``count`` (n), ``sum_grad`` (sum of g_i, a (d,) array, real or complex) and
    ``sum_sq`` (sum of ``|g_i|^2``, a float or a 0-d array on the gradients' device).
    Then ``tr Cov = (sum_sq - n |G|^2) / (n - 1)``. Start from :meth:`zeros`, add
    batches with :meth:`add` or precomputed sums with :meth:`add_sums`; states are
    immutable and :func:`~cryorecon.optim.save_state` can write them. On a GPU,
    :meth:`estimate` reads everything the estimators need back in one transfer, where
    the properties read one value each.

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon.optim import noise
    >>> s = noise.GradientNoiseStats.zeros(2)
    >>> s = s.add(np.array([[1.0, 0.0]])).add(np.array([[3.0, 0.0]]))
    >>> s.trace_cov, s.snr, s.noise_scale
    (2.0, 2.0, 0.5)
    """

    count: int
    sum_grad: object
    sum_sq: float

    @classmethod
    def zeros(cls, dim: int, xp=None, dtype=None):
        """Empty sums for gradients of ``dim`` entries (float64 unless ``dtype``)."""
        import numpy

        xp = xp or numpy
        return cls(0, xp.zeros(int(dim), dtype=dtype or xp.float64), 0.0)

    @classmethod
    def from_examples(cls, examples):
        """Sums of a few per-example gradients given as separate arrays of one shape.

        Real or complex, any shape (each is flattened), numpy or cupy: the sums stay on
        the arrays' device until :meth:`estimate` reads them.
        """
        examples = list(examples)
        total = examples[0]
        for g in examples[1:]:
            total = total + g
        sum_sq = _sq_norm(examples[0])
        for g in examples[1:]:
            sum_sq = sum_sq + _sq_norm(g)
        return cls(len(examples), total.ravel(), sum_sq)

    def add(self, per_example_grads):
        """Add an ``(n, d)`` batch of per-example gradients."""
        g = per_example_grads
        xp = xp_of(g)
        g64 = g.astype(xp.float64, copy=False)
        return self.add_sums(g64.sum(axis=0), float((g64 * g64).sum()), g.shape[0])

    def add_sums(self, sum_grad, sum_sq, count):
        """Add precomputed ``sum g_i``, ``sum |g_i|^2`` and their count.

        ``sum_sq`` may stay a 0-d device array: nothing is read back here.
        """
        return GradientNoiseStats(self.count + int(count), self.sum_grad + sum_grad,
                                  self.sum_sq + sum_sq)

    @property
    def mean(self):
        """Mean gradient ``G``."""
        return self.sum_grad / self.count

    @property
    def mean_sq(self) -> float:
        """``|G|^2`` (``sum |G_k|^2`` for complex gradients)."""
        return float(_sq_norm(self.mean))

    def estimate(self) -> "NoiseEstimate":
        """``n``, ``|G|^2`` and ``tr Cov`` on the host, read back in one transfer."""
        n = self.count
        if n < 2:
            raise ValueError("need at least two per-example gradients to estimate a covariance")
        mean_sq, sum_sq = _to_floats(_sq_norm(self.mean), self.sum_sq)
        return NoiseEstimate(n, mean_sq, max(sum_sq - n * mean_sq, 0.0) / (n - 1))

    @property
    def trace_cov(self) -> float:
        """Unbiased trace of the per-example covariance (needs ``count >= 2``)."""
        n = self.count
        if n < 2:
            raise ValueError("need at least two per-example gradients to estimate a covariance")
        return max(float(self.sum_sq) - n * self.mean_sq, 0.0) / (n - 1)

    @property
    def snr(self) -> float:
        """Per-example SNR ``|G|^2 / tr Cov``."""
        tc = self.trace_cov
        return self.mean_sq / tc if tc > 0 else math.inf

    @property
    def noise_scale(self) -> float:
        """Simple noise scale ``tr Cov / |G|^2``."""
        ms = self.mean_sq
        return self.trace_cov / ms if ms > 0 else math.inf


class NoiseEstimate(NamedTuple):
    """The noise estimators' inputs as host floats: ``count`` (n), ``|G|^2``, ``tr Cov``.

    What :meth:`GradientNoiseStats.estimate` returns; small enough to log, average
    (:func:`running_average`) and checkpoint (:func:`~cryorecon.optim.save_state`).
    ``count == 0`` stands for "nothing measured yet".

    Examples
    --------
    >>> from cryorecon.optim import noise
    >>> e = noise.NoiseEstimate(count=4, mean_sq=1.0, trace_cov=2.0)
    >>> e.snr, e.batch_snr(), e.batch_snr(debias=True)
    (0.5, 2.0, 1.0)
    >>> e.per_example(25)   # these were the means of 4 groups of 25 examples
    NoiseEstimate(count=100, mean_sq=1.0, trace_cov=50.0)
    """

    count: int
    mean_sq: float
    trace_cov: float

    @property
    def snr(self) -> float:
        """Per-example SNR ``|G|^2 / tr Cov``."""
        return self.mean_sq / self.trace_cov if self.trace_cov > 0 else math.inf

    @property
    def noise_scale(self) -> float:
        """Simple noise scale ``tr Cov / |G|^2``."""
        return self.trace_cov / self.mean_sq if self.mean_sq > 0 else math.inf

    def batch_snr(self, batch_size=None, debias: bool = False) -> float:
        """SNR of a mean over ``batch_size`` examples (default ``count``): ``B |G|^2 / tr Cov``."""
        b = self.count if batch_size is None else int(batch_size)
        signal = _signal(self.mean_sq, self.trace_cov, self.count, debias)
        return b * signal / self.trace_cov if self.trace_cov > 0 else math.inf

    def per_example(self, group_size: float) -> "NoiseEstimate":
        """The same batch seen as its examples, when these estimates came from group means.

        The mean of ``m`` independent examples has covariance ``Cov / m``: the examples'
        ``tr Cov`` is ``m`` times the groups', ``|G|^2`` is the same, and there are
        ``m`` times as many of them.
        """
        m = float(group_size)
        return NoiseEstimate(int(round(self.count * m)), self.mean_sq, self.trace_cov * m)


def running_average(previous: NoiseEstimate | None, current: NoiseEstimate, decay: float) -> NoiseEstimate:
    """Exponential running average of noise estimates, for a noisy per-step measurement.

    ``r_1 = e_1`` and ``r_t = decay r_{t-1} + (1 - decay) e_t`` for ``tr Cov`` and for
    the unbiased signal ``|G_hat|^2 - tr Cov / n``; the result's ``mean_sq`` is that
    signal plus ``tr Cov / n`` for the current count ``n`` (the size of the batch being
    judged). ``|G_hat|^2`` itself is not averaged because its noise part, ``tr Cov /
    n``, depends on each step's ``n``: averaging it while the batch grows would carry
    the larger noise of the earlier, smaller batches into the current one and show
    pure noise as signal (a batch SNR of about ``n_t / n_{t-1} - 1``). With equal
    counts the two averages are the same. A ``previous`` of ``None`` or with
    ``count == 0`` is "nothing yet".

    Parameters
    ----------
    previous : NoiseEstimate or None
    current : NoiseEstimate
    decay : float
        In [0, 1); the average's horizon is about ``1 / (1 - decay)`` steps.

    Returns
    -------
    NoiseEstimate

    Examples
    --------
    >>> from cryorecon.optim import noise
    >>> r = noise.running_average(None, noise.NoiseEstimate(8, 1.0, 4.0), 0.5)
    >>> noise.running_average(r, noise.NoiseEstimate(8, 3.0, 2.0), 0.5)
    NoiseEstimate(count=8, mean_sq=2.0, trace_cov=3.0)

    References
    ----------
    The smoothed gradient-noise estimates of McCandlish et al. (2018),
    arXiv:1812.06162, appendix A.1.
    """
    if previous is None or previous.count == 0:
        return current
    a = float(decay)
    signal = a * (previous.mean_sq - previous.trace_cov / previous.count) + (1 - a) * (current.mean_sq - current.trace_cov / current.count)
    trace_cov = a * previous.trace_cov + (1 - a) * current.trace_cov
    return NoiseEstimate(current.count, signal + trace_cov / current.count, trace_cov)
