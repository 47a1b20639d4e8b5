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

ASHA's rung records are not part of Tune's experiment state; `rung_state()` /
`load_rung_state()` let the launcher's callback carry them through a resume.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from ray.tune.schedulers import AsyncHyperBandScheduler


class SweepScheduler(AsyncHyperBandScheduler):
    """ASHA on `metric` with forced experiment-state saves (see the module docstring)."""

    def __init__(self, *, metric: str, mode: str, max_t: int, grace_period: int,
                 reduction_factor: int, brackets: int,
                 after_save: Optional[Callable[[], None]] = None):
        super().__init__(time_attr="training_iteration", metric=metric, mode=mode, max_t=max_t,
                         grace_period=grace_period, reduction_factor=reduction_factor,
                         brackets=brackets)
        self.after_save = after_save
        self._save_pending = False

    def on_trial_add(self, tune_controller, trial) -> None:
        if trial.trial_id not in self._trial_info:  # a restored trial keeps its bracket
            super().on_trial_add(tune_controller, trial)
        self._save_pending = True

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)
        self._save_pending = True

    def on_trial_error(self, tune_controller, trial) -> None:
        self._trial_info.pop(trial.trial_id, None)
        self._save_pending = True

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._trial_info.pop(trial.trial_id, None)
        self._save_pending = True

    def choose_trial_to_run(self, tune_controller):
        if self._save_pending:
            self._save_pending = False
            controller = getattr(tune_controller, "_tune_controller", tune_controller)
            controller.checkpoint(force=True, wait=True)
            if self.after_save is not None:
                self.after_save()
        return super().choose_trial_to_run(tune_controller)

    def rung_state(self) -> dict[str, Any]:
        """Plain data: each bracket's rung records and each live trial's bracket index."""
        return {"rungs": [[dict(recorded) for _, recorded in b._rungs] for b in self._brackets],
                "trial_bracket": {tid: self._brackets.index(b)
                                  for tid, b in self._trial_info.items()}}

    def load_rung_state(self, state: dict[str, Any]) -> None:
        for bracket, rungs in zip(self._brackets, state["rungs"]):
            for (_, recorded), saved in zip(bracket._rungs, rungs):
                recorded.clear()
                recorded.update(saved)
        self._trial_info = {tid: self._brackets[i]
                            for tid, i in state["trial_bracket"].items()}
