"""Every public optim factory documents its rule, runs its example, and names its source."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import cryorecon.optim as optim

MODULES = sorted(m.name for m in pkgutil.walk_packages(optim.__path__, "cryorecon.optim."))

FACTORIES = [
    "sgd", "adam", "adamw", "rmsprop", "adagrad", "chain", "clip", "clip_by_norm",
    "clip_by_global_norm", "accumulate", "skip_not_finite", "inject_hyperparams",
    "scale_by_adam", "scale_by_rms", "scale_by_rss", "scale_by_diagonal",
    "add_decayed_weights", "reduce_on_plateau", "param_ema", "lbfgs", "lbfgs_minimize",
    "hinge_loss", "l1",
]
NOISE = ["grad_snr", "simple_noise_scale", "chebyshev_batch_size", "switch_when_snr_high", "running_average"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest failures in {name}"


@pytest.mark.parametrize("fn", [getattr(optim, n) for n in FACTORIES]
                         + [getattr(optim.noise, n) for n in NOISE],
                         ids=FACTORIES + NOISE)
def test_public_factory_docstring_has_example_and_reference(fn):
    doc = fn.__doc__ or ""
    assert ">>>" in doc, f"{fn.__name__}: no runnable example"
    assert "References" in doc, f"{fn.__name__}: no paper named"
