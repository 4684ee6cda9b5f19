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
from typing import Callable, NamedTuple

from ._tree import xp_of


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

    Holds ``count`` (n), ``sum_grad`` (sum of g_i, a (d,) array) and ``sum_sq`` (sum of
    ``|g_i|^2``, a float). Then ``tr Cov = (sum_sq - n |G|^2) / (n - 1)``. Start from
    :meth:`zeros`, add batches with :meth:`add` or precomputed sums with
    :meth:`add_sums`; states are immutable and :func:`~cryorecon.optim.save_state`
    can write them.

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

    def add(self, per_example_grads):
        """Add an ``(n, d)`` batch of per-example gradients."""
        g = per_example_grads
        xp = xp_of(g)
        g64 = g.astype(xp.float64, copy=False)
        return self.add_sums(g64.sum(axis=0), float((g64 * g64).sum()), g.shape[0])

    def add_sums(self, sum_grad, sum_sq, count):
        """Add precomputed ``sum g_i``, ``sum |g_i|^2`` and their count."""
        return GradientNoiseStats(self.count + int(count), self.sum_grad + sum_grad,
                                  self.sum_sq + float(sum_sq))

    @property
    def mean(self):
        """Mean gradient ``G``."""
        return self.sum_grad / self.count

    @property
    def mean_sq(self) -> float:
        """``|G|^2``."""
        m = self.mean
        return float(m @ m)

    @property
    def trace_cov(self) -> float:
        """Unbiased trace of the per-example covariance (needs ``count >= 2``)."""
        n = self.count
        if n < 2:
            raise ValueError("need at least two per-example gradients to estimate a covariance")
        return max(self.sum_sq - n * self.mean_sq, 0.0) / (n - 1)

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


class SnrSwitchState(NamedTuple):
    """Consecutive checks above the threshold, whether the switch happened, the last SNR."""

    streak: int
    switched: bool
    last_batch_snr: float
    checks: int


class SnrSwitch(NamedTuple):
    """``init() -> state``; ``update(per_example_grads, state, batch_size=None)``."""

    init: Callable
    update: Callable


def switch_when_snr_high(threshold: float = 10.0, patience: int = 3, debias: bool = True):
    """Controller that says when to hand over from a stochastic to a full-batch optimizer.

    Criterion: the batch-mean gradient's SNR, ``B |G|^2 / tr Cov`` (``B`` the batch size,
    by default the number of per-example gradients given), is at least ``threshold`` on
    ``patience`` consecutive checks. An SNR of ``s`` means the mini-batch gradient's
    expected squared error is ``1/s`` of its squared norm, so at ``s = 10`` the
    stochastic direction is already about as good as the full gradient and a
    deterministic method (L-BFGS) that needs exact gradients will make faster progress:
    the PINN recipe of training with Adam, then switching to L-BFGS. Once switched, it
    stays switched. With ``debias`` the noise bias of ``|G_hat|^2`` is removed first, so
    pure noise does not trigger a switch.

    Parameters
    ----------
    threshold : float
        Batch SNR at or above which a check counts as high.
    patience : int
        Consecutive high checks needed.
    debias : bool
        Debias ``|G|^2`` (see :func:`grad_snr`).

    Returns
    -------
    SnrSwitch
        ``update(per_example_grads_or_stats, state, batch_size=None) -> (switch, state)``
        where the first argument is an ``(n, d)`` array or a :class:`GradientNoiseStats`.

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon.optim import noise
    >>> ctl = noise.switch_when_snr_high(threshold=10.0, patience=2)
    >>> s = ctl.init()
    >>> rng = np.random.default_rng(0)
    >>> g = 1.0 + 0.1 * rng.standard_normal((32, 4))   # strong signal
    >>> go, s = ctl.update(g, s); go
    False
    >>> go, s = ctl.update(g, s); go
    True

    References
    ----------
    McCandlish et al. (2018), arXiv:1812.06162 (gradient noise scale); the Adam-then-
    L-BFGS schedule of physics-informed networks: Raissi, Perdikaris & Karniadakis
    (2019), J. Comput. Phys. 378.
    """
    threshold, patience = float(threshold), int(patience)

    def init():
        return SnrSwitchState(0, False, 0.0, 0)

    def update(grads_or_stats, state, batch_size=None):
        if isinstance(grads_or_stats, GradientNoiseStats):
            st = grads_or_stats
            n, mean_sq, trace_cov = st.count, st.mean_sq, st.trace_cov
        else:
            n, mean_sq, trace_cov = _moments(grads_or_stats)
        b = n if batch_size is None else int(batch_size)
        signal = _signal(mean_sq, trace_cov, n, debias)
        snr = b * signal / trace_cov if trace_cov > 0 else math.inf
        streak = state.streak + 1 if snr >= threshold else 0
        switched = state.switched or streak >= patience
        return switched, SnrSwitchState(streak, switched, snr, state.checks + 1)

    return SnrSwitch(init, update)
