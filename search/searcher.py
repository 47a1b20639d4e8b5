"""Optuna TPE for Ray Tune, telling Optuna how each trial really ended.

Ray's `OptunaSearch.on_trial_complete` tells Optuna COMPLETE with the last reported value for
every trial that produced a result, so a trial ASHA stopped after two epochs looks to TPE like a
finished two-epoch run. `SweepSearcher`, a Tune `Searcher` on Optuna's public ask/tell API,
tells Optuna instead:

- stopped before `max_t` epochs, not diverged, no error  -> PRUNED (its intermediate values
  stay; TPE ranks pruned trials by their last step, then their last intermediate value)
- diverged (a result with `diverged=True`)               -> COMPLETE with the worst-case value
  the trainable reported (0.0 dB for val_psnr), so TPE learns to avoid the region
- errored (retries exhausted)                            -> FAIL (TPE ignores it)
- ran all `max_t` epochs                                 -> COMPLETE with its best value over
  the run (max val_psnr for mode max), the value ASHA also ranks trials by when
  scheduler_metric is "best" and the one the launcher picks the best config by

Intermediate values (`trial.report(value, step=training_iteration)`) are the scheduler metric:
val_psnr_best under "best", val_psnr under "last". Tune skips `on_trial_result` for the result
ASHA stops a trial on, so `on_trial_complete` reports that last step, and a step replayed after
a restore is not reported twice. (Optuna stores a PRUNED trial's last intermediate value as its
value.)

The study lives in Optuna storage, a journal file in the experiment directory
(`optuna_journal.log`, study "sweep"): `optuna.load_study(study_name="sweep",
storage=JournalStorage(JournalFileBackend(path)))` and `optuna-dashboard <path>` open a
running or finished sweep. The searcher's own state (which Ray trial is which Optuna trial,
best values, outcomes) is saved as JSON; `--resume` reopens the same study from the journal.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Optional

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from analysis.results import OPTUNA_JOURNAL, OPTUNA_STUDY, trial_status
from cvae.jsonsafe import number

TRAINING_ITERATION = "training_iteration"
JOURNAL, STUDY_NAME = OPTUNA_JOURNAL, OPTUNA_STUDY  # the study's journal in the experiment
logger = logging.getLogger(__name__)


def journal_storage(path: str) -> optuna.storages.JournalStorage:
    """Optuna storage in a journal file (works on NFS and other shared file systems)."""
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))


class SweepSearcher(Searcher):
    """Optuna TPE with truthful trial states (see the module docstring).

    Args:
        space: define-by-run function (only `trial.suggest_*` calls).
        metric: the objective (e.g. val_psnr); a trial's value is its best over its history.
        mode: "max" or "min".
        report_metric: the per-epoch intermediate value (the scheduler metric).
        max_t: epochs of a full-length trial (ASHA's max_t).
        sampler: the Optuna sampler.
        points_to_evaluate: partial configs enqueued when the study is created.
        journal: path of the study's journal file; None keeps the study in memory.
    """

    CKPT_FILE_TMPL = "searcher-state-{}.json"

    def __init__(self, space: Callable[[optuna.trial.Trial], Any], *, metric: str, mode: str,
                 report_metric: str, max_t: int, sampler: optuna.samplers.BaseSampler,
                 points_to_evaluate: Optional[list[dict]] = None,
                 journal: Optional[str] = None):
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per study/trial
        super().__init__(metric=report_metric, mode=mode)
        self.space = space
        self.objective = metric
        self.max_t = max_t
        self.sampler = sampler
        self.points = points_to_evaluate or []
        self.journal = journal
        self.numbers: dict[str, int] = {}  # trial_id -> Optuna trial number
        self.best: dict[str, float] = {}  # trial_id -> best objective value so far
        self.last_step: dict[str, int] = {}  # trial_id -> last step reported to Optuna
        self.outcomes: dict[str, str] = {}  # trial_id -> Optuna state name once told
        self.opened: Optional[optuna.Study] = None
        self.storage: Optional[optuna.storages.BaseStorage] = None
        self.handles: dict[str, optuna.trial.Trial] = {}

    @property
    def study(self) -> optuna.Study:
        """The study, created (with the starting points enqueued) or loaded on first use."""
        if self.opened is None:
            if self.journal:
                os.makedirs(os.path.dirname(self.journal) or ".", exist_ok=True)
            self.storage = (journal_storage(self.journal) if self.journal
                            else optuna.storages.InMemoryStorage())
            self.opened = optuna.create_study(
                storage=self.storage, sampler=self.sampler, pruner=optuna.pruners.NopPruner(),
                study_name=STUDY_NAME, load_if_exists=True,
                direction="maximize" if self.mode == "max" else "minimize")
            if not self.opened.trials:
                for point in self.points:
                    self.opened.enqueue_trial(point)
        return self.opened

    def suggest(self, trial_id: str) -> Optional[dict]:
        if trial_id in self.numbers:
            return dict(self.study.trials[self.numbers[trial_id]].params)
        trial = self.study.ask()
        trial.set_user_attr("ray_trial_id", trial_id)
        self.numbers[trial_id] = trial.number
        self.handles[trial_id] = trial
        self.space(trial)
        return dict(trial.params)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.outcomes or trial_id not in self.numbers:
            return
        self.track(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None,
                          error: bool = False) -> None:
        if trial_id in self.outcomes or trial_id not in self.numbers:
            return
        if result:
            self.track(trial_id, result)
        if error or not result or TRAINING_ITERATION not in result:
            status = "error"  # errored, or never produced a result
        else:
            status = trial_status(diverged=bool(result.get("diverged")),
                                  epochs=result[TRAINING_ITERATION], max_t=self.max_t)
        state, value = {"error": (TrialState.FAIL, None),
                        "diverged": (TrialState.COMPLETE, self.worst(result or {})),
                        "early_stopped": (TrialState.PRUNED, None),
                        "completed": (TrialState.COMPLETE, self.best.get(trial_id))}[status]
        if state == TrialState.COMPLETE and value is None:
            state = TrialState.FAIL  # ran its epochs without a finite value
        try:
            self.study.tell(self.numbers[trial_id], value, state=state)
        except (RuntimeError, ValueError) as e:  # e.g. told before, in a restored state
            logger.warning("Optuna refused the end of trial %s: %s", trial_id, e)
        self.outcomes[trial_id] = state.name

    def save(self, checkpoint_path: str) -> None:
        """The searcher's state as JSON; the study itself is in its journal."""
        state = {"journal": self.journal, "study": STUDY_NAME, "numbers": self.numbers,
                 "best": self.best, "last_step": self.last_step, "outcomes": self.outcomes}
        with open(checkpoint_path, "w") as f:
            json.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        """Reload the state saved by `save` and reopen the study from its journal. Optuna
        trials still RUNNING that Ray never recorded (the driver died between asking Optuna
        and saving the experiment) are marked FAIL."""
        with open(checkpoint_path) as f:
            state = json.load(f)
        if state["journal"] and not os.path.exists(state["journal"]):
            raise FileNotFoundError(f"the sweep's Optuna journal {state['journal']} is missing")
        self.journal = state["journal"]
        self.numbers = state["numbers"]
        self.best = state["best"]
        self.outcomes = state["outcomes"]
        self.opened, self.storage, self.handles = None, None, {}
        known = set(self.numbers.values())
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in known:
                self.study.tell(frozen.number, state=TrialState.FAIL)
        steps = {t.number: max(t.intermediate_values, default=0)
                 for t in self.study.get_trials(deepcopy=False)}
        self.last_step = {tid: max(state["last_step"].get(tid, 0), steps.get(number, 0))
                          for tid, number in self.numbers.items()}

    def __getstate__(self) -> dict[str, Any]:
        """Pickled by Ray's tuner.pkl: a journal-backed study is reopened, not pickled."""
        state = self.__dict__.copy()
        if self.journal:
            state.update(opened=None, storage=None, handles={})
        return state

    def trial_handle(self, trial_id: str) -> optuna.trial.Trial:
        """The Optuna trial of a Ray trial (rebuilt from its number after a restore)."""
        if trial_id not in self.handles:
            study, storage = self.study, self.storage
            study_id = storage.get_study_id_from_name(STUDY_NAME)
            storage_id = storage.get_trial_id_from_study_id_trial_number(
                study_id, self.numbers[trial_id])
            self.handles[trial_id] = optuna.trial.Trial(study, storage_id)
        return self.handles[trial_id]

    def track(self, trial_id: str, result: dict) -> None:
        """Report the intermediate value once per step and update the best objective."""
        step = result.get(TRAINING_ITERATION)
        value = number(result.get(self.metric))
        if step is not None and value is not None and step > self.last_step.get(trial_id, 0):
            self.trial_handle(trial_id).report(value, step)
            self.last_step[trial_id] = step
        objective = number(result.get(self.objective))
        if objective is not None and not result.get("diverged"):
            best = self.best.get(trial_id)
            better = max if self.mode == "max" else min
            self.best[trial_id] = objective if best is None else better(best, objective)

    def worst(self, result: dict) -> float:
        """The value a diverged trial reported (finite by contract), else the worst possible."""
        value = number(result.get(self.objective))
        if value is not None:
            return value
        return 0.0 if self.mode == "max" else float("inf")


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
