"""The named optimizers, each a short chain of building blocks from :mod:`.transforms`."""
from __future__ import annotations

from .base import GradientTransformation, chain
from .transforms import (
    ScalarOrSchedule,
    _adam_core,
    add_decayed_weights,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_rms,
    scale_by_rss,
    trace,
)


def sgd(learning_rate: ScalarOrSchedule, momentum: float = 0.0, nesterov: bool = False):
    """Stochastic gradient descent, optionally with heavy-ball or Nesterov momentum.

    Plain: ``p <- p - lr g``. With momentum ``beta``: ``t <- g + beta t``,
    ``p <- p - lr t`` (Polyak 1964, heavy ball), or ``p <- p - lr (g + beta t)`` with
    ``nesterov=True`` (Nesterov 1983; Sutskever et al. 2013, ICML).

    Parameters
    ----------
    learning_rate : float or callable
        Step size, or a schedule ``count -> float`` (see :mod:`.schedules`).
    momentum : float
        ``beta`` in [0, 1); 0 disables the trace.
    nesterov : bool
        Use the Nesterov look-ahead form.

    Returns
    -------
    GradientTransformation

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> opt = optim.sgd(0.1, momentum=0.5)
    >>> p = np.array([1.0, -2.0]); s = opt.init(p)
    >>> for _ in range(200):
    ...     u, s = opt.update(p, s)   # gradient of |p|^2 / 2
    ...     p = optim.apply_updates(p, u)
    >>> bool(np.abs(p).max() < 1e-6)
    True

    References
    ----------
    Robbins & Monro (1951), "A Stochastic Approximation Method"; Polyak (1964), "Some
    methods of speeding up the convergence of iteration methods"; Nesterov (1983);
    Sutskever, Martens, Dahl & Hinton (2013), "On the importance of initialization and
    momentum in deep learning", ICML.
    """
    if momentum:
        return chain(trace(momentum, nesterov), scale_by_learning_rate(learning_rate))
    return scale_by_learning_rate(learning_rate)


def adam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """Adam: bias-corrected first and second moment estimates.

    ``m <- b1 m + (1-b1) g``, ``v <- b2 v + (1-b2) g^2``,
    ``p <- p - lr m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m / (1-b1^t)``,
    ``v_hat = v / (1-b2^t)``.

    With a constant ``learning_rate`` the step is fused into the moment pass (the state
    is then a single ``ScaleByAdamState``); with a schedule it is
    ``chain(scale_by_adam, scale_by_learning_rate)``.

    Parameters
    ----------
    learning_rate : float or callable
        Step size or schedule.
    b1, b2 : float
        Decay rates of the first and second moments.
    eps : float
        Added to ``sqrt(v_hat)``.

    Returns
    -------
    GradientTransformation

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> opt = optim.adam(0.05)
    >>> p = np.array([1.0, -2.0]); s = opt.init(p)
    >>> for _ in range(500):
    ...     u, s = opt.update(p, s)
    ...     p = optim.apply_updates(p, u)
    >>> bool(np.abs(p).max() < 1e-2)
    True

    References
    ----------
    Kingma & Ba (2015), "Adam: A Method for Stochastic Optimization", ICLR.
    """
    if callable(learning_rate):
        return chain(scale_by_adam(b1, b2, eps), scale_by_learning_rate(learning_rate))
    return _adam_core(b1, b2, eps, -float(learning_rate))


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    mask=None,
):
    """Adam with decoupled weight decay.

    ``p <- p - lr (m_hat / (sqrt(v_hat) + eps) + weight_decay p)``: the decay acts on
    the parameters directly instead of passing through Adam's normalisation.

    Parameters
    ----------
    learning_rate : float or callable
        Step size or schedule.
    b1, b2, eps : float
        As in :func:`adam`.
    weight_decay : float
        Decay coefficient ``lambda``.
    mask : tree of bool or callable, optional
        Which parameters to decay (see :func:`add_decayed_weights`); ``update`` must be
        given ``params``.

    Returns
    -------
    GradientTransformation

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> p = {"w": np.ones(3), "b": np.ones(1)}
    >>> opt = optim.adamw(1e-2, weight_decay=0.1, mask={"w": True, "b": False})
    >>> s = opt.init(p)
    >>> zeros = {"w": np.zeros(3), "b": np.zeros(1)}
    >>> u, s = opt.update(zeros, s, p)
    >>> float(u["w"][0]), abs(float(u["b"][0]))
    (-0.001, 0.0)

    References
    ----------
    Loshchilov & Hutter (2019), "Decoupled Weight Decay Regularization", ICLR.
    """
    return chain(
        scale_by_adam(b1, b2, eps),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def rmsprop(learning_rate: ScalarOrSchedule, decay: float = 0.9, eps: float = 1e-8,
            momentum: float = 0.0, nesterov: bool = False):
    """RMSprop: divide by a running root-mean-square of the gradients.

    ``v <- decay v + (1-decay) g^2``, ``p <- p - lr g / (sqrt(v) + eps)``, optionally
    followed by a momentum trace on the normalised gradient.

    Parameters
    ----------
    learning_rate : float or callable
        Step size or schedule.
    decay : float
        Decay of the squared-gradient average.
    eps : float
        Added to ``sqrt(v)``.
    momentum : float
        Optional heavy-ball momentum on the normalised step.
    nesterov : bool
        Nesterov form of that momentum.

    Returns
    -------
    GradientTransformation

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> opt = optim.rmsprop(0.01)
    >>> p = np.array([1.0]); s = opt.init(p)
    >>> u, s = opt.update(p, s)
    >>> round(float(u[0]), 4)
    -0.0316

    References
    ----------
    Hinton, Srivastava & Swersky (2012), "Neural Networks for Machine Learning",
    lecture 6e.
    """
    parts = [scale_by_rms(decay, eps)]
    if momentum:
        parts.append(trace(momentum, nesterov))
    parts.append(scale_by_learning_rate(learning_rate))
    return chain(*parts)


def adagrad(learning_rate: ScalarOrSchedule, initial_accumulator_value: float = 0.1,
            eps: float = 1e-7):
    """Adagrad: per-coordinate steps shrinking with the sum of squared gradients.

    ``G <- G + g^2``, ``p <- p - lr g / (sqrt(G) + eps)``.

    Parameters
    ----------
    learning_rate : float or callable
        Step size or schedule.
    initial_accumulator_value : float
        Starting value of ``G``.
    eps : float
        Added to ``sqrt(G)``.

    Returns
    -------
    GradientTransformation

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> opt = optim.adagrad(0.5, initial_accumulator_value=0.0, eps=0.0)
    >>> p = np.array([4.0]); s = opt.init(p)
    >>> u, s = opt.update(p, s)
    >>> u.tolist()
    [-0.5]

    References
    ----------
    Duchi, Hazan & Singer (2011), "Adaptive Subgradient Methods for Online Learning and
    Stochastic Optimization", JMLR 12.
    """
    return chain(scale_by_rss(initial_accumulator_value, eps), scale_by_learning_rate(learning_rate))
