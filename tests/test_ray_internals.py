"""Every Ray internal search/ relies on, checked against the installed Ray (search.ray_internals).

Checked with Ray 2.60 and Optuna 5.0 / 5.1 (CHECKED_RAY, CHECKED_OPTUNA); setup.cfg pins ray to
that range. After an upgrade: run this file, fix search/ray_internals.py where it fails, then
add the version.
"""
from __future__ import annotations

import inspect
import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import ray
from ray.tune.schedulers import AsyncHyperBandScheduler

from search import ray_internals as internals

ROOT = Path(__file__).resolve().parents[1]


def minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def test_installed_versions_are_the_checked_ones():
    assert minor(ray.__version__) in internals.CHECKED_RAY, (
        f"Ray {ray.__version__}: re-check search/ray_internals.py, then add it to CHECKED_RAY")
    assert minor(optuna.__version__) in internals.CHECKED_OPTUNA, (
        f"Optuna {optuna.__version__}: re-check search/searcher.py, then add it to "
        "CHECKED_OPTUNA")


def test_setup_cfg_pins_ray_to_the_checked_range():
    text = (ROOT / "setup.cfg").read_text()
    (checked,) = internals.CHECKED_RAY
    major, minor_ = map(int, checked.split("."))
    assert f"ray[default,tune]>={checked},<{major}.{minor_ + 1}" in text


def asha(brackets=1):
    return AsyncHyperBandScheduler(time_attr="training_iteration", metric="m", mode="max",
                                   max_t=8, grace_period=1, reduction_factor=2,
                                   brackets=brackets)


def test_asha_rung_records_survive_a_round_trip_through_plain_data():
    scheduler = asha()
    trials = [SimpleNamespace(trial_id=name) for name in "abc"]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
        assert internals.asha_knows(scheduler, trial.trial_id)
    for i, trial in enumerate(trials):
        scheduler.on_trial_result(None, trial, {"training_iteration": 1, "m": float(i)})
    state = json.loads(json.dumps(internals.asha_state(scheduler)))  # plain data
    assert sum(len(recorded) for rungs in state["rungs"] for recorded in rungs) == 3
    assert sorted(state["trial_bracket"]) == ["a", "b", "c"]

    fresh = asha()
    internals.load_asha_state(fresh, state)
    assert internals.asha_state(fresh) == state
    internals.asha_forget(fresh, "a")
    internals.asha_forget(fresh, "never-added")  # no error
    assert not internals.asha_knows(fresh, "a") and internals.asha_knows(fresh, "b")
    # the restored rungs decide as the original's: trial b was at 1.0 among 0, 1, 2
    for scheduler_ in (scheduler, fresh):
        assert scheduler_.on_trial_result(None, trials[1], {"training_iteration": 2, "m": 5.0}) \
            == "CONTINUE"


def test_a_scheduler_reaches_the_controllers_save_through_its_wrapper():
    from ray.tune.execution.tune_controller import TuneController, TrialRunnerWrapper

    assert {"force", "wait"} <= set(inspect.signature(TuneController.checkpoint).parameters)
    assert "TrialRunnerWrapper" in inspect.getsource(TuneController._wrapped)
    calls = []
    controller = SimpleNamespace(checkpoint=lambda **kw: calls.append(kw))
    wrapper = TrialRunnerWrapper(controller, trial_executor=None)
    internals.force_experiment_save(wrapper)
    internals.force_experiment_save(controller)  # unwrapped also works
    assert calls == [{"force": True, "wait": True}] * 2


def test_the_legacy_output_switch_silences_tune(monkeypatch):
    from ray.tune.experimental.output import get_air_verbosity

    (key, value), = internals.LEGACY_OUTPUT_ENV.items()
    monkeypatch.setenv(key, value)
    assert get_air_verbosity(0) is None  # legacy engine: verbose=0 prints nothing
    monkeypatch.delenv(key)
    assert get_air_verbosity(0) is not None  # the new engine prints even at verbose=0


def test_the_token_setup_logger_exists():
    import importlib

    module = importlib.import_module(internals.TOKEN_SETUP_LOGGER)
    assert "getLogger(__name__)" in inspect.getsource(module)
    assert logging.getLogger(internals.TOKEN_SETUP_LOGGER).name == module.__name__


def test_a_job_driver_is_recognised_by_its_environment(monkeypatch):
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
    from ray.dashboard.modules.job.common import JOB_ID_METADATA_KEY

    assert (RAY_JOB_CONFIG_JSON_ENV_VAR, JOB_ID_METADATA_KEY) == (
        internals.JOB_CONFIG_ENV, internals.SUBMISSION_ID_KEY)
    monkeypatch.delenv(internals.JOB_CONFIG_ENV, raising=False)
    assert internals.job_submission_id() is None
    monkeypatch.setenv(internals.JOB_CONFIG_ENV, json.dumps(
        {"runtime_env": {}, "metadata": {JOB_ID_METADATA_KEY: "raysubmit_x"}}))
    assert internals.job_submission_id() == "raysubmit_x"
    monkeypatch.setenv(internals.JOB_CONFIG_ENV, "not json")
    assert internals.job_submission_id() == ""


def test_no_other_module_of_search_reaches_into_private_names():
    """`grep -rn "\\._[a-z]" search/` lists the fenced module only."""
    out = subprocess.run(["grep", "-rln", r"\._[a-z]", "search/", "--include=*.py"], cwd=ROOT,
                         capture_output=True, text=True).stdout.split()
    assert out == ["search/ray_internals.py"], out


@pytest.mark.skipif(sys.platform != "linux", reason="grep")
def test_nothing_else_imports_ray_private():
    out = subprocess.run(["grep", "-rln", "ray._private\\|ray._raylet", "search/", "analysis/",
                          "cvae/", "--include=*.py"], cwd=ROOT, capture_output=True,
                         text=True).stdout.split()
    assert out in ([], ["search/ray_internals.py"]), out
