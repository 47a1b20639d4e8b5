"""Searcher and scheduler of the sweep launcher, driven directly (no Ray cluster).

ASHA on the best-so-far metric lets a trial through a rung that falls in a dip of its curve;
Optuna hears PRUNED / COMPLETE / FAIL as the trials really ended.
"""
from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler

from search.launcher import components, scheduler_metric
from search.space import load_space

SPACE = """
name: unit
num_samples: 12
seed: 3
scheduler_metric: {scheduler_metric}
base: {{preset: tiny, epochs: {epochs}}}
params:
  lr: {{type: loguniform, low: 1.0e-4, high: 1.0e-2}}
  kl_anneal: {{type: categorical, choices: [monotonic, cyclical]}}
  kl_anneal_cycle: {{type: int, low: 1, high: 4, when: {{kl_anneal: cyclical}}}}
points_to_evaluate:
  - {{lr: 0.002, kl_anneal: cyclical, kl_anneal_cycle: 2}}
asha: {{grace_period: 2, reduction_factor: 2}}
"""


def make_space(tmp_path, scheduler_metric="best", epochs=8):
    path = tmp_path / f"unit_{scheduler_metric}_{epochs}.yaml"
    path.write_text(textwrap.dedent(SPACE.format(scheduler_metric=scheduler_metric,
                                                 epochs=epochs)))
    return load_space(path)


def row(epoch, psnr, best, diverged=False):
    return {"training_iteration": epoch, "epoch": epoch, "val_psnr": psnr,
            "val_psnr_best": best, "diverged": diverged}


@pytest.mark.parametrize("mode, survives", [("best", True), ("last", False)])
def test_asha_rung_in_a_kl_dip(tmp_path, mode, survives):
    """Three steady trials set the epoch-2 rung (20, 21, 22 dB: cutoff 21). A cyclical trial
    at 23 dB after epoch 1 dips to 18 dB at epoch 2 (a KL restart): ranked on its best so far
    it continues, ranked on its last value it is stopped."""
    space = make_space(tmp_path, mode)
    _, scheduler, _ = components(space)
    assert scheduler.metric == scheduler_metric(space) == (
        "val_psnr_best" if mode == "best" else "val_psnr")
    trials = {name: SimpleNamespace(trial_id=name) for name in "abcd"}
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)
    for name, psnr in zip("abc", (20.0, 21.0, 22.0)):
        assert scheduler.on_trial_result(None, trials[name], row(1, psnr - 1, psnr - 1)) \
            == TrialScheduler.CONTINUE
        assert scheduler.on_trial_result(None, trials[name], row(2, psnr, psnr)) \
            == TrialScheduler.CONTINUE  # the first trials at a rung always pass
    d = trials["d"]
    assert scheduler.on_trial_result(None, d, row(1, 23.0, 23.0)) == TrialScheduler.CONTINUE
    decision = scheduler.on_trial_result(None, d, row(2, 18.0, 23.0))
    assert decision == (TrialScheduler.CONTINUE if survives else TrialScheduler.STOP)


def test_asha_stops_at_max_t_and_rung_state_round_trips(tmp_path):
    space = make_space(tmp_path, epochs=4)
    _, scheduler, _ = components(space)
    trial = SimpleNamespace(trial_id="a")
    scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, trial, row(2, 20.0, 20.0)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, trial, row(4, 21.0, 21.0)) == TrialScheduler.STOP
    state = scheduler.rung_state()
    _, fresh, _ = components(space)
    fresh.load_rung_state(state)
    assert fresh.rung_state() == state
    assert any(rung.get("a") == 20.0 for rung in state["rungs"][0])


def suggest_all(searcher, n):
    return {f"t{i}": searcher.suggest(f"t{i}") for i in range(n)}


def test_points_to_evaluate_and_conditional_params(tmp_path):
    searcher, _, _ = components(make_space(tmp_path))
    configs = suggest_all(searcher, 12)
    assert configs["t0"] == {"lr": 0.002, "kl_anneal": "cyclical", "kl_anneal_cycle": 2}
    kinds = {c["kl_anneal"] for c in configs.values()}
    assert kinds == {"monotonic", "cyclical"}
    for config in configs.values():
        assert ("kl_anneal_cycle" in config) == (config["kl_anneal"] == "cyclical")
    first = components(make_space(tmp_path))[0]
    assert suggest_all(first, 12) == configs  # seeded


def test_optuna_hears_how_trials_ended(tmp_path):
    searcher, _, _ = components(make_space(tmp_path, epochs=4))
    suggest_all(searcher, 6)
    # t0: stopped by ASHA after epoch 2. The controller skips on_trial_result for the result it
    # stops a trial on; on_trial_complete reports it.
    searcher.on_trial_result("t0", row(1, 19.0, 19.0))
    searcher.on_trial_complete("t0", row(2, 18.5, 19.0))
    # t1: all 4 epochs, the last one in a dip: the value is the best, 22.0, not the last 19.0.
    for epoch, (psnr, best) in enumerate([(20, 20), (22, 22), (21, 22)], start=1):
        searcher.on_trial_result("t1", row(epoch, psnr, best))
    searcher.on_trial_complete("t1", row(4, 19.0, 22.0))
    # t2: diverged at epoch 2 -> COMPLETE with the worst case it reported.
    searcher.on_trial_result("t2", row(1, 17.0, 17.0))
    searcher.on_trial_complete("t2", row(2, 0.0, 0.0, diverged=True))
    # t3: errored after retries; t4: removed before any result; t5: still running.
    searcher.on_trial_result("t3", row(1, 17.0, 17.0))
    searcher.on_trial_complete("t3", row(1, 17.0, 17.0), error=True)
    searcher.on_trial_complete("t4", None)

    by_id = {t.user_attrs["ray_trial_id"]: t for t in searcher.study.trials}
    assert by_id["t0"].state == TrialState.PRUNED
    assert by_id["t0"].intermediate_values == {1: 19.0, 2: 19.0}  # val_psnr_best per epoch
    assert by_id["t1"].state == TrialState.COMPLETE and by_id["t1"].value == 22.0
    assert by_id["t2"].state == TrialState.COMPLETE and by_id["t2"].value == 0.0
    assert by_id["t3"].state == TrialState.FAIL
    assert by_id["t4"].state == TrialState.FAIL
    assert by_id["t5"].state == TrialState.RUNNING
    assert searcher.outcomes == {"t0": "PRUNED", "t1": "COMPLETE", "t2": "COMPLETE",
                                 "t3": "FAIL", "t4": "FAIL"}
    # A repeated step (a result replayed after a restore) is not reported twice.
    searcher.on_trial_result("t5", row(1, 16.0, 16.0))
    searcher.on_trial_result("t5", row(1, 16.5, 16.5))
    assert by_id["t5"].number in [t.number for t in searcher.study.trials]
    assert searcher.study.trials[by_id["t5"].number].intermediate_values == {1: 16.0}
    # The next suggestion uses what TPE learnt (no error with pruned/failed trials around).
    assert "lr" in searcher.suggest("t6")


def test_last_metric_reports_last_values(tmp_path):
    searcher, _, _ = components(make_space(tmp_path, "last", epochs=4))
    suggest_all(searcher, 1)
    searcher.on_trial_result("t0", row(1, 19.0, 19.0))
    searcher.on_trial_complete("t0", row(2, 18.0, 19.0))
    trial = searcher.study.trials[0]
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values == {1: 19.0, 2: 18.0}


def test_study_is_in_its_journal_and_resume_continues_it(tmp_path):
    """The study lives in a journal file Optuna's own tools open; the searcher's state is JSON;
    a restored searcher (unpickled as Ray's tuner.pkl holds it, then given its JSON state)
    continues the same study, and marks FAIL what Ray never recorded."""
    import json

    import optuna
    from ray import cloudpickle

    from search.searcher import STUDY_NAME, journal_storage

    space = make_space(tmp_path, epochs=4)
    journal = str(tmp_path / "exp" / "optuna_journal.log")
    searcher, _, _ = components(space, journal=journal)
    pickled = cloudpickle.dumps(searcher)  # as Tuner pickles it into tuner.pkl before fit
    suggest_all(searcher, 2)
    searcher.on_trial_result("t0", row(1, 19.0, 19.0))
    searcher.on_trial_complete("t0", row(2, 18.5, 19.0))
    searcher.on_trial_result("t1", row(1, 20.0, 20.0))
    state = tmp_path / "searcher-state-1.json"
    searcher.save(str(state))
    assert json.loads(state.read_text())["numbers"] == {"t0": 0, "t1": 1}
    searcher.suggest("t2")  # asked from Optuna, then the driver died before Ray saved

    outside = optuna.load_study(study_name=STUDY_NAME, storage=journal_storage(journal))
    assert [t.state.name for t in outside.trials] == ["PRUNED", "RUNNING", "RUNNING"]
    assert outside.trials[1].intermediate_values == {1: 20.0}
    assert outside.trials[1].user_attrs["ray_trial_id"] == "t1"

    restored = cloudpickle.loads(pickled)
    restored.restore(str(state))
    assert restored.outcomes == {"t0": "PRUNED"}
    restored.on_trial_result("t1", row(1, 20.0, 20.0))  # replayed step: not reported twice
    restored.on_trial_result("t1", row(2, 20.5, 20.5))
    restored.on_trial_complete("t1", row(4, 21.0, 21.0))
    restored.suggest("t3")
    trials = optuna.load_study(study_name=STUDY_NAME, storage=journal_storage(journal)).trials
    assert [t.state.name for t in trials] == ["PRUNED", "COMPLETE", "FAIL", "RUNNING"]
    assert trials[1].value == 21.0 and trials[1].intermediate_values == {1: 20.0, 2: 20.5, 4: 21.0}
    assert trials[3].user_attrs["ray_trial_id"] == "t3"
    assert not list(tmp_path.glob("*.pkl"))


def test_restore_without_its_journal_says_so(tmp_path):
    space = make_space(tmp_path, epochs=4)
    journal = tmp_path / "exp" / "optuna_journal.log"
    searcher, _, _ = components(space, journal=str(journal))
    suggest_all(searcher, 1)
    searcher.save(str(tmp_path / "state.json"))
    journal.unlink()
    with pytest.raises(FileNotFoundError, match="optuna_journal.log is missing"):
        components(space, journal=str(journal))[0].restore(str(tmp_path / "state.json"))


def test_small_sweeps_get_tpe_proposals():
    """Optuna's default of 10 random startup trials would make a 10-trial sweep random search."""
    from search.searcher import make_sampler, startup_trials

    assert startup_trials(10) == 3 and startup_trials(40) == 10 and startup_trials(4) == 3
    assert make_sampler(0, 10)._n_startup_trials == 3
