"""Optuna TPE for Ray Tune, telling Optuna how each trial really ended.

Ray's `OptunaSearch.on_trial_complete` tells Optuna COMPLETE with the last reported value for
every trial that produced a result, so a trial ASHA stopped after two epochs looks to TPE like a
finished two-epoch run. `SweepSearcher` tells Optuna instead:

- stopped before `max_t` epochs, not diverged, no error  -> PRUNED (its intermediate values
  stay; TPE ranks pruned trials by their last step, then their last intermediate value)
- diverged (a result with `diverged=True`)               -> COMPLETE with the worst-case value
  the trainable reported (0.0 dB for val_psnr), so TPE learns to avoid the region
- errored (retries exhausted)                            -> FAIL (TPE ignores it)
- ran all `max_t` epochs                                 -> COMPLETE with its best value over
  the run (max val_psnr for mode max), the value ASHA also ranks trials by when
  scheduler_metric is "best" and the one the launcher picks the best config by

Intermediate values (`trial.report(value, step=training_iteration)`) are the scheduler metric:
val_psnr_best under "best", val_psnr under "last". Ray 2.60's base class already reports each
result it sees, but Tune skips `on_trial_result` for the result ASHA stops a trial on, so the
last step would be missing; here `on_trial_complete` reports it, and a step replayed after a
restore is not reported twice. (Optuna stores a PRUNED trial's last intermediate value as its
value.)
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Optional

import optuna
from optuna.trial import TrialState
from ray import cloudpickle
from ray.tune.search.optuna import OptunaSearch

TRAINING_ITERATION = "training_iteration"
logger = logging.getLogger(__name__)


class SweepSearcher(OptunaSearch):
    """OptunaSearch with truthful trial states (see the module docstring).

    Args:
        space: define-by-run function (only `trial.suggest_*` calls).
        metric: the objective (e.g. val_psnr); a trial's value is its best over its history.
        mode: "max" or "min".
        report_metric: the per-epoch intermediate value (the scheduler metric).
        max_t: epochs of a full-length trial (ASHA's max_t).
        sampler, points_to_evaluate: as for OptunaSearch.
    """

    def __init__(self, space: Callable[[optuna.trial.Trial], Any], *, metric: str, mode: str,
                 report_metric: str, max_t: int, sampler: optuna.samplers.BaseSampler,
                 points_to_evaluate: Optional[list[dict]] = None):
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per study/trial
        super().__init__(space, metric=report_metric, mode=mode, sampler=sampler,
                         points_to_evaluate=points_to_evaluate)
        self.objective = metric
        self.max_t = max_t
        self.best: dict[str, float] = {}  # trial_id -> best objective value so far
        self.last_step: dict[str, int] = {}  # trial_id -> last step reported to Optuna
        self.outcomes: dict[str, str] = {}  # trial_id -> Optuna state name once told

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def suggest(self, trial_id: str) -> Optional[dict]:
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._track(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        if result:
            self._track(trial_id, result)
        if error or not result or TRAINING_ITERATION not in result:
            state, value = TrialState.FAIL, None  # errored, or never produced a result
        elif result.get("diverged"):
            state, value = TrialState.COMPLETE, self._worst(result)
        elif result[TRAINING_ITERATION] < self.max_t:
            state, value = TrialState.PRUNED, None
        else:
            state, value = TrialState.COMPLETE, self.best.get(trial_id)
            if value is None:
                state = TrialState.FAIL
        try:
            self._ot_study.tell(ot_trial, value, state=state)
        except (RuntimeError, ValueError) as e:  # e.g. told before, in a restored state
            logger.warning("Optuna refused the end of trial %s: %s", trial_id, e)
        self.outcomes[trial_id] = state.name
        self._completed_trials.add(trial_id)

    def save(self, checkpoint_path: str) -> None:
        """As OptunaSearch.save, with cloudpickle: the define-by-run space may be a closure."""
        with open(checkpoint_path, "wb") as f:
            cloudpickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(cloudpickle.load(f))

    def _track(self, trial_id: str, result: dict) -> None:
        """Report the intermediate value once per step and update the best objective."""
        step = result.get(TRAINING_ITERATION)
        value = _finite(result.get(self.metric))
        if step is not None and value is not None and step > self.last_step.get(trial_id, 0):
            self._ot_trials[trial_id].report(value, step)
            self.last_step[trial_id] = step
        objective = _finite(result.get(self.objective))
        if objective is not None and not result.get("diverged"):
            best = self.best.get(trial_id)
            better = max if self.mode == "max" else min
            self.best[trial_id] = objective if best is None else better(best, objective)

    def _worst(self, result: dict) -> float:
        """The value a diverged trial reported (finite by contract), else the worst possible."""
        value = _finite(result.get(self.objective))
        if value is not None:
            return value
        return 0.0 if self.mode == "max" else float("inf")


def _finite(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def startup_trials(num_samples: int) -> int:
    """Random trials before TPE models the results: Optuna's 10 would leave a 10-trial laptop
    sweep without any TPE proposal, so a quarter of the budget, between 3 and 10."""
    return min(10, max(3, num_samples // 4))


def make_sampler(seed: int, num_samples: int = 40) -> optuna.samplers.TPESampler:
    """Seeded multivariate TPE that models conditional parameters jointly (group=True)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          n_startup_trials=startup_trials(num_samples))


def trial_summary(study: optuna.Study) -> list[dict[str, Any]]:
    """Plain data about every Optuna trial (for <exp>/optuna_trials.json)."""
    return [{"number": t.number, "ray_trial_id": t.user_attrs.get("ray_trial_id"),
             "state": t.state.name, "value": t.value, "params": t.params,
             "intermediate_values": {str(k): v for k, v in sorted(t.intermediate_values.items())}}
            for t in study.trials]
