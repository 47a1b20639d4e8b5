"""ASHA that makes Tune's experiment state durable whenever a trial is added or ends.

Tune saves its experiment state (trial statuses, latest checkpoints, searcher state) at most
every max(10 s, 19 x save cost) (`TUNE_GLOBAL_CHECKPOINT_S`, read once by the TuneController).
A driver killed with SIGKILL therefore loses every trial event since the last save: a trial
that finished is resumed from an older checkpoint and re-run, a trial created since is
forgotten and its directory orphaned. Callbacks get no handle on the controller, but scheduler
hooks do (`choose_trial_to_run(tune_controller)`, called at the start of every controller
step), so `SweepScheduler` forces a synchronous save (`TuneController.checkpoint(force=True,
wait=True)`: write the state, upload it to the storage path and wait) at the first step after
a trial was added, completed or errored, i.e. after the controller has set the trial's final
status, and before the new trial's actor starts. Then it calls `after_save` (the launcher
writes trials.json there), so a trial listed as finished in trials.json is finished in the
saved state and is never re-run by `--resume`.

The controller's save and ASHA's bookkeeping are Ray internals: reached through
`search.ray_internals`, the module that fences them.

ASHA's rung records are not part of Tune's experiment state; `rung_state()` /
`load_rung_state()` let the launcher's callback carry them through a resume.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from ray.tune.schedulers import AsyncHyperBandScheduler

from search import ray_internals as internals


class SweepScheduler(AsyncHyperBandScheduler):
    """ASHA on `metric` with forced experiment-state saves (see the module docstring)."""

    def __init__(self, *, metric: str, mode: str, max_t: int, grace_period: int,
                 reduction_factor: int, brackets: int,
                 after_save: Optional[Callable[[], None]] = None):
        super().__init__(time_attr="training_iteration", metric=metric, mode=mode, max_t=max_t,
                         grace_period=grace_period, reduction_factor=reduction_factor,
                         brackets=brackets)
        self.after_save = after_save
        self.save_pending = False

    def on_trial_add(self, tune_controller, trial) -> None:
        if not internals.asha_knows(self, trial.trial_id):  # a restored trial keeps its bracket
            super().on_trial_add(tune_controller, trial)
        self.save_pending = True

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if internals.asha_knows(self, trial.trial_id):
            super().on_trial_complete(tune_controller, trial, result)
        self.save_pending = True

    def on_trial_error(self, tune_controller, trial) -> None:
        internals.asha_forget(self, trial.trial_id)
        self.save_pending = True

    def on_trial_remove(self, tune_controller, trial) -> None:
        internals.asha_forget(self, trial.trial_id)
        self.save_pending = True

    def choose_trial_to_run(self, tune_controller):
        if self.save_pending:
            self.save_pending = False
            internals.force_experiment_save(tune_controller)
            if self.after_save is not None:
                self.after_save()
        return super().choose_trial_to_run(tune_controller)

    def rung_state(self) -> dict[str, Any]:
        """Plain data: each bracket's rung records and each live trial's bracket index."""
        return internals.asha_state(self)

    def load_rung_state(self, state: dict[str, Any]) -> None:
        internals.load_asha_state(self, state)
