"""KL annealing (Fu et al. 2019, "Cyclical Annealing Schedule") and teacher forcing decay.

Both are pure functions of the position in the run, so resuming a run needs no schedule state
beyond the epoch / step counters kept in the checkpoint.
"""
from __future__ import annotations

import math

from cvae.config import Config


def kl_beta(cfg: Config, epoch: int, step_in_epoch: int = 0) -> float:
    """KL weight beta for 0-based `epoch` (and step within it when the unit is "step").

    cyclical: `frange_cycle_linear(n_iter, beta_min, beta_max, kl_anneal_cycle, ratio)`: each
    of the `kl_anneal_cycle` cycles ramps linearly from beta_min to beta_max over `ratio` of the
    cycle, then holds beta_max. cyclical-sigmoid: the same with a sigmoid-shaped ramp
    (`frange_cycle_sigmoid`). monotonic: one cycle over the whole run. none: beta_max.
    """
    if cfg.kl_anneal == "none":
        return cfg.beta_max
    if cfg.kl_anneal_unit == "step":
        n, n_iter = epoch * cfg.epoch_size + step_in_epoch, cfg.epochs * cfg.epoch_size
    else:
        n, n_iter = epoch, cfg.epochs
    cycles = 1 if cfg.kl_anneal == "monotonic" else cfg.kl_anneal_cycle
    period = n_iter / cycles
    ramp = min(1.0, (n % period) / (period * cfg.kl_anneal_ratio))  # progress in [0, 1]
    if cfg.kl_anneal == "cyclical-sigmoid" and ramp < 1.0:
        ramp = 1.0 / (1.0 + math.exp(-(12.0 * ramp - 6.0)))
    return cfg.beta_min + (cfg.beta_max - cfg.beta_min) * ramp


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
