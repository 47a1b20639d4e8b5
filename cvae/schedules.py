"""KL annealing (Fu et al. 2019, "Cyclical Annealing Schedule") and teacher forcing decay.

Both are pure functions of the position in the run, so resuming a run needs no schedule state
beyond the epoch / step counters kept in the checkpoint.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from cvae.config import Config


@functools.lru_cache(maxsize=32)
def frange_cycle(n_iter: int, start: float, stop: float, n_cycle: int, ratio: float,
                 shape: str = "linear") -> np.ndarray:
    """Fu et al.'s schedule arrays, exactly as their published code builds them
    (haofuml/cyclical_annealing): `frange_cycle_linear(n_iter, start, stop, n_cycle, ratio)`
    for shape "linear"; for "sigmoid", `frange_cycle_sigmoid` on [0, 1] (v -> 1 / (1 +
    exp(-(12 v - 6)))), mapped onto [start, stop].

    Cycle c starts at int(c * n_iter / n_cycle) and ramps by a fixed step from there, so when
    n_iter / n_cycle is not whole the cycles differ in length by one (6 epochs, 4 cycles:
    [0, 0, 1, 0, 0, 1]). The sigmoid ramp gets the linear one's bound check on the index (the
    published sigmoid code lacks it and can write one past the end when ratio = 1).
    """
    lo, hi = (start, stop) if shape == "linear" else (0.0, 1.0)
    out = np.full(n_iter, hi, dtype=np.float64)
    period = n_iter / n_cycle
    step = (hi - lo) / (period * ratio)
    for c in range(n_cycle):
        v, i = lo, 0
        while v <= hi and int(i + c * period) < n_iter:
            out[int(i + c * period)] = v if shape == "linear" else 1 / (1 + math.exp(6 - 12 * v))
            v += step
            i += 1
    if shape != "linear":
        out = start + (stop - start) * out
    out.flags.writeable = False
    return out


def kl_beta(cfg: Config, epoch: int, step_in_epoch: int = 0) -> float:
    """KL weight beta for 0-based `epoch` (and step within it when the unit is "step").

    cyclical: Fu's `frange_cycle_linear(n_iter, beta_min, beta_max, kl_anneal_cycle, ratio)`
    indexed by the epoch (or the global step); cyclical-sigmoid: `frange_cycle_sigmoid`;
    monotonic: `frange_cycle_linear` with one cycle; none: beta_max throughout.
    """
    if cfg.kl_anneal == "none":
        return cfg.beta_max
    if cfg.kl_anneal_unit == "step":
        n, n_iter = epoch * cfg.epoch_size + step_in_epoch, cfg.epochs * cfg.epoch_size
    else:
        n, n_iter = epoch, cfg.epochs
    cycles = 1 if cfg.kl_anneal == "monotonic" else cfg.kl_anneal_cycle
    shape = "sigmoid" if cfg.kl_anneal == "cyclical-sigmoid" else "linear"
    values = frange_cycle(n_iter, cfg.beta_min, cfg.beta_max, cycles, cfg.kl_anneal_ratio, shape)
    return float(values[min(n, n_iter - 1)])


def beta_curve(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(x, beta) of the whole run as the training steps see it: x in epochs, 0 at the start;
    one point per step of a per-step schedule (epoch + step / epoch_size), one per epoch
    otherwise. What a plot of the schedule draws: an epoch's logged beta is its mean."""
    if cfg.kl_anneal_unit == "step" and cfg.kl_anneal != "none":
        n = cfg.epoch_size
        x = np.arange(cfg.epochs * n) / n
        return x, np.array([kl_beta(cfg, i // n, i % n) for i in range(len(x))])
    x = np.arange(cfg.epochs, dtype=float)
    return x, np.array([kl_beta(cfg, e) for e in range(cfg.epochs)])


def teacher_forcing_ratio(cfg: Config, epoch: int) -> float:
    """Teacher forcing ratio used during 0-based `epoch`.

    Holds `tfr` for the first `tfr_start_decay_epoch` epochs, then decays by `tfr_decay_step`
    per epoch or, when that is 0, linearly to `tfr_lower_bound` at the last epoch; never
    below `tfr_lower_bound`.
    """
    decayed = epoch - cfg.tfr_start_decay_epoch + 1  # epochs of decay so far
    if decayed <= 0:
        return cfg.tfr
    if cfg.tfr_decay_step > 0:
        value = cfg.tfr - cfg.tfr_decay_step * decayed
    else:
        span = max(1, cfg.epochs - cfg.tfr_start_decay_epoch)
        value = cfg.tfr - (cfg.tfr - cfg.tfr_lower_bound) * min(1.0, decayed / span)
    return max(cfg.tfr_lower_bound, min(cfg.tfr, value))
