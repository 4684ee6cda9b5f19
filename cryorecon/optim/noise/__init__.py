"""How noisy is a mini-batch gradient, and when is it accurate enough to stop sampling?

- :mod:`.estimators`: the per-example signal-to-noise ratio, McCandlish et al.'s noise
  scale, Chebyshev's batch size, streaming sums (:class:`GradientNoiseStats`), their
  host-side summary (:class:`NoiseEstimate`) and its running average;
- :mod:`.switch`: :func:`switch_when_snr_high`, the controller that hands over from a
  stochastic optimizer to full-data steps.
"""
from .estimators import (
    GradientNoiseStats,
    NoiseEstimate,
    chebyshev_batch_size,
    grad_snr,
    running_average,
    simple_noise_scale,
)
from .switch import SnrSwitch, SnrSwitchState, switch_when_snr_high

__all__ = [
    "GradientNoiseStats", "NoiseEstimate", "SnrSwitch", "SnrSwitchState", "chebyshev_batch_size",
    "grad_snr", "running_average", "simple_noise_scale", "switch_when_snr_high",
]
