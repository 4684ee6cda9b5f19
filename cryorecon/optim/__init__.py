"""cryorecon.optim: composable, array-agnostic optimizers (numpy or cupy), optax-style.

A :class:`GradientTransformation` is a pair of pure functions ``init(params) -> state``
and ``update(grads, state, params=None, **extra) -> (updates, state)``; :func:`chain`
composes them and :func:`apply_updates` adds the updates to the parameters. Parameters
are arrays or dicts (lists, tuples) of arrays. This package imports nothing from the
cryo-EM side of cryorecon.

>>> import numpy as np
>>> from cryorecon import optim
>>> opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(1e-2))
>>> params = {"w": np.zeros(3, np.float32)}
>>> state = opt.init(params)
>>> grads = {"w": np.ones(3, np.float32)}
>>> updates, state = opt.update(grads, state, params)
>>> params = optim.apply_updates(params, updates)
"""
from . import noise, schedules
from .alias import adagrad, adam, adamw, rmsprop, sgd
from .base import EmptyState, GradientTransformation, apply_updates, chain, identity
from .clipping import (
    ClipByGlobalNormState,
    ClipByNormState,
    ClipState,
    clip,
    clip_by_global_norm,
    clip_by_norm,
)
from .ema import ParamEMA, ParamEmaState, param_ema
from .lbfgs import LbfgsState, lbfgs, lbfgs_minimize
from .linesearch import strong_wolfe
from .hyperparams import InjectHyperparamsState, inject_hyperparams
from .precondition import ScaleByDiagonalState, precondition, scale_by_diagonal
from .plateau import ReduceOnPlateauState, reduce_on_plateau
from .state_io import StateFileError, load_state, save_state
from .subgradients import hinge_loss, l1
from .transforms import (
    ScaleByAdamState,
    ScaleByRmsState,
    ScaleByRssState,
    ScaleByScheduleState,
    TraceState,
    add_decayed_weights,
    scale,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_rms,
    scale_by_rss,
    scale_by_schedule,
    trace,
)
from .wrappers import AccumulateState, SkipNotFiniteState, accumulate, skip_not_finite
from ._tree import tree_map, tree_norm, tree_vdot
