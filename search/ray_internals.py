"""The one module that reaches into Ray's internals; everything else in search/ uses public APIs.

Each function here stands for something Ray 2.60 offers no public way to do. On a Ray upgrade,
run `tests/test_ray_internals.py` first: it exercises every function below against the installed
Ray and names the versions it was checked with (CHECKED_RAY, CHECKED_OPTUNA); setup.cfg pins
`ray` to that range.

- A durable experiment-state save on demand (`force_experiment_save`): Tune saves its
  experiment state at most every max(10 s, 19 x save cost); `TuneController.checkpoint(force=True,
  wait=True)` is the only way to save now. Schedulers get the controller, wrapped
  (`TrialRunnerWrapper`) so that non-whitelisted attributes log a warning: unwrapped here.
- ASHA's rung records (`AsyncHyperBandScheduler._brackets[i]._rungs`, `_trial_info`): not part
  of Tune's experiment state, so a resumed sweep would forget them; read and restored as plain
  data here. (`AsyncHyperBandScheduler.save`/`restore` pickle the whole scheduler, metric and
  callbacks included, to a file: not what a JSON-able callback state can hold.)
- The legacy console output engine (`RAY_AIR_NEW_OUTPUT=0`): the new engine prints experiment
  and error blocks even with `verbose=0`; the launcher prints its own lines.
- The logger of Ray's token-setup warning, silenced for a local instance whose token the launcher
  explains itself.
- The environment of a Ray Job's driver: Ray sets RAY_ADDRESS (public) and passes the job's
  config, with its submission id, in RAY_JOB_CONFIG_JSON_ENV_VAR (not documented).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

CHECKED_RAY = ("2.60",)  # major.minor versions tests/test_ray_internals.py passed with
CHECKED_OPTUNA = ("5.0", "5.1")
# Tune's console settings the launcher needs (read when a sweep starts; set only when unset).
LEGACY_OUTPUT_ENV = {"RAY_AIR_NEW_OUTPUT": "0"}  # legacy output engine: silent with verbose=0
TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for a job's driver
SUBMISSION_ID_KEY = "job_submission_id"  # in that config's metadata


def force_experiment_save(tune_controller: Any) -> None:
    """Write Tune's experiment state, upload it to the storage path and wait (from a scheduler
    hook, which receives the controller)."""
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    controller.checkpoint(force=True, wait=True)


def asha_knows(scheduler: Any, trial_id: str) -> bool:
    """Whether ASHA has put the trial in a bracket (a restored trial keeps its own)."""
    return trial_id in scheduler._trial_info


def asha_forget(scheduler: Any, trial_id: str) -> None:
    """Take a trial out of ASHA's bookkeeping, if it is there (its rung records stay)."""
    scheduler._trial_info.pop(trial_id, None)


def asha_state(scheduler: Any) -> dict[str, Any]:
    """Plain data: each bracket's rung records and each live trial's bracket index."""
    brackets = scheduler._brackets
    return {"rungs": [[dict(recorded) for _, recorded in b._rungs] for b in brackets],
            "trial_bracket": {tid: brackets.index(b)
                              for tid, b in scheduler._trial_info.items()}}


def load_asha_state(scheduler: Any, state: dict[str, Any]) -> None:
    """Restore what `asha_state` returned into a scheduler built with the same settings."""
    brackets = scheduler._brackets
    for bracket, rungs in zip(brackets, state["rungs"]):
        for (_, recorded), saved in zip(bracket._rungs, rungs):
            recorded.clear()
            recorded.update(saved)
    scheduler._trial_info = {tid: brackets[i] for tid, i in state["trial_bracket"].items()}


def job_submission_id() -> Optional[str]:
    """The submission id of the Ray Job this process is the driver of, "" for a job without
    one, None when it is not a job's driver."""
    text = os.environ.get(JOB_CONFIG_ENV)
    if text is None:
        return None
    try:
        metadata = json.loads(text).get("metadata") or {}
    except (ValueError, AttributeError):
        return ""
    return str(metadata.get(SUBMISSION_ID_KEY) or "")
