"""search.confirm: the plan (best configs, levels, conditional parameters, seeds), usage errors,
confirm.json from run directories, the space file's `confirm:` section and the report's
confirmation section, without Ray; then Ctrl-C and the same command again with a fake trainable.
The end-to-end run with the real trainable is in test_sweep_smoke.py."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
from test_analysis import make_experiment

from analysis import stats
from analysis.report import build_report
from search.confirm import final_checkpoint, main, make_plan, run_state, summarize
from search.confirm_plan import ConfirmError
from search.space import SpaceError, load_space, to_json

ROOT = Path(__file__).resolve().parents[1]


def test_plan_changes_only_the_factor_and_takes_conditional_params_per_level(tmp_path):
    exp = make_experiment(tmp_path)
    plan = make_plan(exp, top_k=2, seeds=3, epochs=5)
    assert plan.levels == ["monotonic", "cyclical", "cyclical-sigmoid", "none"]
    assert plan.seeds == [1, 2, 3] and plan.epochs == 5
    assert [c["trial_id"] for c in plan.configs] == ["aaaa2_00002", "aaaa0_00000"]
    assert len(plan.runs) == 2 * 4 * 3
    assert len({r.name for r in plan.runs}) == len(plan.runs)
    by = {(r.rank, r.level, r.seed): r.config for r in plan.runs}
    best = {"lr": 2e-3, "tfr_start_decay_epoch": 0, "batch_size": 16, "epochs": 5}
    for level in plan.levels:
        for seed in (1, 2, 3):
            config = by[1, level, seed]
            assert {k: config[k] for k in best} == best
            assert config["kl_anneal"] == level and config["seed"] == seed
    # the cycle count: the best trial of the level's (cyclical: 2 from trial 2), else the
    # configuration's own (cyclical-sigmoid never ran: 2), the base value where inactive (4)
    assert [by[1, lv, 1]["kl_anneal_cycle"] for lv in plan.levels] == [4, 2, 2, 4]
    # configuration 2 is monotonic with an inactive cycle count 4: cyclical takes trial 2's 2
    assert by[2, "cyclical", 1]["kl_anneal_cycle"] == 2
    assert by[2, "cyclical", 1]["lr"] == 1e-3
    levels = plan.configs[1]["levels"]
    assert levels["cyclical"]["from_trial"] == "aaaa2_00002"
    assert levels["cyclical-sigmoid"]["from_trial"] is None


def test_fixed_values_set_every_run_in_a_directory_of_their_own(tmp_path):
    """--set beta_max=1e-5: the best configuration confirmed at another KL weight."""
    exp = make_experiment(tmp_path)
    plan = make_plan(exp, seeds=2, fixed={"beta_max": "1e-5"})
    assert plan.fixed == {"beta_max": 1e-5}
    assert {r.config["beta_max"] for r in plan.runs} == {1e-5}
    assert plan.directory.name == "confirm-kl_anneal-beta_max_1e-05"
    assert make_plan(exp, seeds=2).directory.name == "confirm-kl_anneal"
    for fixed, message in (({"kl_anneal": "none"}, "--set kl_anneal=none: expected a config key"),
                           ({"seed": 3}, "--set seed=3: expected"),
                           ({"beta_max": "x"}, "--set beta_max=x: beta_max='x': expected float")):
        with pytest.raises(ConfirmError) as err:
            make_plan(exp, seeds=2, fixed=fixed)
        assert str(err.value).startswith(message), str(err.value)


def test_diverged_trials_are_not_confirmed_and_any_key_can_be_the_factor(tmp_path):
    exp = make_experiment(tmp_path)
    plan = make_plan(exp, top_k=10, seeds=1)
    assert "aaaa4_00004" not in [c["trial_id"] for c in plan.configs]  # diverged
    assert len(plan.configs) == 5
    lr = make_plan(exp, factor="lr", levels=["1e-3", 0.002], seeds=2)
    assert lr.levels == [0.001, 0.002]
    assert [r.name for r in lr.runs] == ["c1-0.001-s1", "c1-0.001-s2", "c1-0.002-s1",
                                         "c1-0.002-s2"]
    tfr = make_plan(exp, factor="tfr_start_decay_epoch", levels=["0", "2"], seeds=1)
    assert [r.config["tfr_start_decay_epoch"] for r in tfr.runs] == [0, 2]
    assert all(r.config["kl_anneal"] == "cyclical" for r in tfr.runs)


@pytest.mark.parametrize("argv, message", [
    (["--factor", "nope"], "--factor nope: not a field"),
    (["--factor", "seed"], "--factor seed: set by the confirmation"),
    (["--factor", "lr"], "--levels: required for --factor lr"),
    (["--levels", "monotonic", "sideways"], "--levels sideways: rejected by cvae.config"),
    (["--levels", "monotonic", "monotonic"], "--levels: monotonic is given twice"),
    (["--factor", "batch_size", "--levels", "4", "x"], "--levels: batch_size='x'"),
    (["--seeds", "0"], "argument --seeds: expected an integer >= 1, got '0'"),
    (["--top-k", "0"], "argument --top-k: expected an integer >= 1, got '0'"),
    (["--max-concurrent", "0"], "argument --max-concurrent: expected an integer >= 1"),
    (["--epochs", "x"], "argument --epochs: expected an integer, got 'x'"),
    (["--ci", "normal"], "argument --ci: invalid choice"),
])
def test_usage_errors_are_one_line(tmp_path, capsys, argv, message):
    exp = make_experiment(tmp_path)
    assert main([str(exp), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_missing_experiment_and_dry_run(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "sweep.json" in capsys.readouterr().err
    exp = make_experiment(tmp_path)
    assert main([str(exp), "--dry-run", "--seeds", "2", "--levels", "none", "cyclical"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["c1-none-s1", "c1-none-s2",
                                                      "c1-cyclical-s1", "c1-cyclical-s2"]
    assert json.loads(lines[0].split(": ", 1)[1])["kl_anneal"] == "none"
    assert not (exp / "confirm-kl_anneal").exists()


FINAL = {("monotonic", 1): 21.0, ("monotonic", 2): 21.4, ("monotonic", 3): 21.2,
         ("cyclical", 1): 18.0, ("cyclical", 2): 18.4, ("cyclical", 3): 18.2}


def _write_runs(plan, skip=()):
    """Run directories as Ray writes them: result.json rows per epoch, plus test_metrics.json."""
    for run in plan.runs:
        if (run.level, run.seed) in skip:
            continue
        d = plan.run_dir(run)
        d.mkdir(parents=True)
        final = FINAL[run.level, run.seed]
        rows = [{"epoch": e, "training_iteration": e, "val_psnr": final - (plan.epochs - e),
                 "val_baseline_psnr": 17.5, "epoch_time_s": 10.0, "diverged": False}
                for e in range(1, plan.epochs + 1)]
        (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "checkpoint_000002").mkdir()
        # cyclical's test PSNR drifts with the seed, so paired differences vary (3.0, 3.1, 3.2)
        test = final + 0.5 - (0.1 * (run.seed - 1) if run.level == "cyclical" else 0.0)
        (d / "test_metrics.json").write_text(json.dumps(
            {"checkpoint": "checkpoint_000002", "psnr": test, "ssim": 0.8,
             "baseline_psnr": 19.0, "posterior_psnr": test + 0.25, "val_kl": 0.5,
             "val_kl_per_dim": [0.5, 0.0], "active_units": 1}))


def test_summary_of_finished_and_missing_runs(tmp_path):
    exp = make_experiment(tmp_path)
    plan = make_plan(exp, levels=["monotonic", "cyclical"], seeds=3, epochs=3)
    _write_runs(plan)
    summary = summarize(plan)
    assert summary["finished"] and len(summary["runs"]) == 6
    run = next(r for r in summary["runs"] if r["name"] == "c1-monotonic-s2")
    assert run["val_psnr"] == 21.4 and run["val_psnr_curve"] == pytest.approx([19.4, 20.4, 21.4])
    assert run["test_psnr"] == 21.9 and run["checkpoint"] == "c1-monotonic-s2/checkpoint_000002"
    group = summary["configs"][0]
    mono = stats.mean_ci([21.0, 21.4, 21.2])
    got = group["statistics"]["monotonic"]["val_psnr"]
    assert (got["n"], got["mean"], got["low"], got["high"]) == pytest.approx(
        (3, mono.mean, mono.low, mono.high))
    assert group["statistics"]["cyclical"]["test_psnr"]["mean"] == pytest.approx(18.6)  # 18.5 18.8 18.5
    (val,) = group["comparisons"]["val_psnr"]
    assert (val["a"], val["b"]) == ("monotonic", "cyclical") and val["diff"] == pytest.approx(3)
    assert val["significant"] and val["sentence"].startswith("monotonic vs cyclical: +3.00 dB")
    json.dumps(summary, allow_nan=False)  # strict JSON: no NaN

    (plan.run_dir(plan.runs[0]) / "result.json").write_text(
        json.dumps({"epoch": 1, "val_psnr": 15.0, "diverged": False}) + "\n")
    assert run_state(plan.run_dir(plan.runs[0]), 3)[0] == "incomplete"
    assert run_state(plan.directory / "nope", 3)[0] == "missing"
    partial = summarize(plan)
    assert not partial["finished"]
    assert partial["configs"][0]["statistics"]["monotonic"]["val_psnr"]["n"] == 2
    assert partial["runs"][0]["status"] == "incomplete" and partial["runs"][0]["val_psnr"] is None


def test_report_shows_the_confirmation(tmp_path):
    exp = make_experiment(tmp_path)
    plan = make_plan(exp, levels=["monotonic", "cyclical"], seeds=3, epochs=3)
    _write_runs(plan)
    (plan.directory / "confirm.json").write_text(json.dumps(summarize(plan)))
    report = build_report(exp, quiet=True, evaluate=False).read_text()
    assert "## Confirmation over seeds: kl_anneal" in report
    assert "- val psnr: monotonic vs cyclical: +3.00 dB (95% CI " in report
    assert "highest mean test PSNR **monotonic**, 21.70 dB" in report
    for name in ("confirm-kl_anneal_levels", "confirm-kl_anneal_comparisons"):
        for ext in ("md", "tex", "csv"):
            assert (exp / "tables" / f"{name}.{ext}").is_file()
    for name in ("confirm-kl_anneal_curves", "confirm-kl_anneal_levels",
                 "confirm-kl_anneal_latent"):
        assert (exp / "plots" / f"{name}.png").stat().st_size > 1000
    # matched by seed: the test differences 3.0, 3.1, 3.2 give a paired interval around 3.1
    assert "- test psnr: monotonic vs cyclical (paired by seed): +3.10 dB (95% CI 2.85 to 3.35)" \
        in report
    assert "n = 3 seed pairs" in report and "(1 of 1 when paired by seed)" in report
    # seconds to copy-last (17.5) + 1 / + 2 dB at 10 s per epoch: monotonic (19.0-19.4 at
    # epoch 1, 20.0-20.4 at epoch 2) at 10 and 20 s; cyclical (at most 18.4) never
    speed = (exp / "tables" / "confirm-kl_anneal_speed.csv").read_text().splitlines()
    assert speed[1:] == ["monotonic,3/3,3/3,10.0,20.0", "cyclical,0/3,0/3,,"]
    levels = (exp / "tables" / "confirm-kl_anneal_levels.csv").read_text().splitlines()
    assert levels[1].startswith("1,monotonic,3,0,21.2")
    assert "single runs" in report  # the sweep's own tables say what they rank


SPACE = """
name: s
num_samples: 2
base: {preset: tiny}
params:
  lr: {type: loguniform, low: 1.0e-3, high: 5.0e-3}
  kl_anneal: {type: categorical, choices: [monotonic, cyclical]}
"""


def _space(tmp_path, confirm):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(SPACE) + (f"confirm: {confirm}\n" if confirm else ""))
    return load_space(path)


def test_space_confirm_section(tmp_path):
    assert _space(tmp_path, None).confirm is None
    space = _space(tmp_path, "{seeds: 2, levels: [monotonic, cyclical], epochs: 2}")
    assert space.confirm == {"seeds": 2, "factor": "kl_anneal", "levels": ["monotonic", "cyclical"],
                             "top_k": 1, "epochs": 2, "best_of": 0}
    assert _space(tmp_path, "{best_of: 10}").confirm["best_of"] == 10
    assert to_json(space)["confirm"] == space.confirm
    lr = _space(tmp_path, "{factor: lr, levels: ['1e-3', 2]}")
    assert lr.confirm["levels"] == [0.001, 2.0]


@pytest.mark.parametrize("confirm, message", [
    ("{seeds: 0}", "confirm.seeds: too small"),
    ("{best_of: -1}", "confirm.best_of: too small"),
    ("{factor: sed}", "confirm.factor: not a factor"),
    ("{factor: seed}", "confirm.factor: not a factor"),
    ("{levels: [monotonic, sideways]}", "confirm.levels: rejected by cvae.config"),
    ("{factor: lr}", "confirm.levels: required key missing"),
    ("{levels: []}", "confirm.levels: not a non-empty list"),
    ("{seedz: 2}", "confirm.seedz: unknown key (did you mean 'seeds'?)"),
    ("[3]", "confirm: not a mapping"),
])
def test_space_confirm_errors(tmp_path, confirm, message):
    with pytest.raises(SpaceError) as err:
        _space(tmp_path, confirm)
    assert f"s.yaml: {message}" in str(err.value) and "\n" not in str(err.value)


# search.confirm with the fake trainable of tests/fakes.py (1 s per epoch, no data needed).
DRIVER = ("import sys; sys.path[:0] = ['tests']; import fakes; from search.confirm import main; "
          "sys.exit(main(sys.argv[1:], trainable=fakes.fake_slow))")


def _complete(exp, epochs):
    return {d.name for d in (exp / "confirm-kl_anneal").glob("c1-*")
            if run_state(d, epochs)[0] == "completed"}


@pytest.mark.slow
def test_ctrl_c_then_the_same_command_continues_without_rerunning_finished_seeds(tmp_path):
    exp = make_experiment(tmp_path)
    argv = [sys.executable, "-c", DRIVER, str(exp), "--seeds", "3", "--levels", "monotonic",
            "cyclical", "--epochs", "3"]
    log = tmp_path / "first.log"
    first = subprocess.Popen(argv, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
    end = time.monotonic() + 240
    while len(_complete(exp, 3)) < 2:  # Ctrl-C once two runs have finished
        assert first.poll() is None and time.monotonic() < end, log.read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGINT)
    assert first.wait(timeout=120) == 130, log.read_text()[-3000:]
    time.sleep(1)
    with contextlib.suppress(ProcessLookupError):  # Ray processes that outlived the driver
        os.killpg(first.pid, signal.SIGKILL)
    assert "interrupted; continue with: python -m search.confirm " in log.read_text()
    done = _complete(exp, 3)
    assert 2 <= len(done) < 6
    partial = json.loads((exp / "confirm-kl_anneal" / "confirm.json").read_text())
    assert not partial["finished"]
    kept = {name: (exp / "confirm-kl_anneal" / name / "result.json").read_text()
            for name in done}

    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"6 runs, {len(done)} already done, {6 - len(done)} to run" in again.stdout
    assert not any(f"{name}: started" in again.stdout for name in done)
    assert again.stdout.count(": started") == 6 - len(done)
    for name, rows in kept.items():  # finished runs untouched
        assert (exp / "confirm-kl_anneal" / name / "result.json").read_text() == rows
    summary = json.loads((exp / "confirm-kl_anneal" / "confirm.json").read_text())
    assert summary["finished"] and len(summary["runs"]) == 6
    assert all(r["status"] == "completed" and r["epochs"] == 3 for r in summary["runs"])
    final = 15.0 + 12.0 * (1 - 0.6 ** 3)  # the fake's curve after 3 epochs at lr 2e-3
    assert all(r["val_psnr"] == pytest.approx(final) for r in summary["runs"])


def test_the_runs_data_is_prepared_for_their_task(tmp_path, monkeypatch, capsys):
    """search.confirm decodes the data once before Ray starts: that of the runs' task (a dance
    sweep's confirmation must not prepare the BAIR data)."""
    import cvae.tasks
    from cvae.data import DataError
    from search import confirm

    plan = make_plan(make_experiment(tmp_path), seeds=1, levels=["none"])
    seen = []

    def prepare(cfg, quiet=False):
        seen.append((cfg.task, cfg.data))
        raise DataError("stop here")

    monkeypatch.setattr(cvae.tasks, "prepare_data", prepare)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for task in ("bair", "dance"):
        for run in plan.runs:
            run.config.update(task=task, data=None)
        assert confirm._launch(plan, None, address=None, max_concurrent=None, ci_method="t",
                               debug=False) == 2
    assert seen == [("bair", None), ("dance", None)]
    assert capsys.readouterr().err.count("error: stop here") == 2


def test_latent_statistics_average_each_levels_runs():
    from search.confirm import latent_statistics

    runs = [
        {"label": "monotonic", "val_kl": 1.0, "val_kl_per_dim": [0.5, 0.5], "active_units": 2,
         "posterior_psnr": 25.0, "test_psnr": 24.0},
        {"label": "monotonic", "val_kl": 3.0, "val_kl_per_dim": [2.5, 0.5], "active_units": 1,
         "posterior_psnr": 24.0, "test_psnr": 24.0},
        {"label": "none", "val_kl": 0.0, "val_kl_per_dim": [0.0, 0.0], "active_units": 0,
         "posterior_psnr": 20.0, "test_psnr": 20.0},
        {"label": "none", "val_kl_per_dim": None},  # not evaluated: left out
    ]
    out = latent_statistics(runs)
    assert out == {"monotonic": {"n": 2, "kl_per_dim": [1.5, 0.5]},
                   "none": {"n": 1, "kl_per_dim": [0.0, 0.0]}}


def test_a_run_is_scored_once_the_checkpoint_its_last_result_names_is_on_disk(tmp_path,
                                                                               monkeypatch):
    from search import confirm_runs as confirm_module

    run_dir = tmp_path / "c1-monotonic-s1"
    (run_dir / "checkpoint_000000").mkdir(parents=True)
    (run_dir / "checkpoint_000000" / "state.pt").write_bytes(b"")
    (run_dir / "result.json").write_text(json.dumps(
        {"epoch": 1, "val_psnr": 20.0, "diverged": False,
         "checkpoint_dir_name": "checkpoint_000001"}) + "\n")
    seen = []
    monkeypatch.setattr(confirm_module, "evaluate_run",
                        lambda d, epochs, device, best_of: seen.append(final_checkpoint(d).name))
    confirm_module.evaluate_when_saved(run_dir, 1, "cpu", wait_s=0.3)  # never lands: times out
    assert seen == ["checkpoint_000000"]
    (run_dir / "checkpoint_000001").mkdir()
    (run_dir / "checkpoint_000001" / "state.pt").write_bytes(b"")
    confirm_module.evaluate_when_saved(run_dir, 1, "cpu", wait_s=60)  # there: at once
    assert seen[-1] == "checkpoint_000001"
    (run_dir / "checkpoint_000002").mkdir()  # a checkpoint without model state (a fake run's)
    (run_dir / "result.json").write_text(json.dumps({"checkpoint_dir_name": "checkpoint_000002"}))
    clock = types.SimpleNamespace(now=0.0)
    clock.monotonic = lambda: clock.now
    clock.sleep = lambda s: setattr(clock, "now", clock.now + s)
    monkeypatch.setattr(confirm_module, "time", clock)  # a simulated clock
    confirm_module.evaluate_when_saved(run_dir, 1, "cpu", wait_s=600)
    assert 5.0 <= clock.now <= 6.0  # not the full wait: 5 s once the directory is there


def test_the_scoring_process_exits_when_the_confirmation_process_is_killed(tmp_path):
    """The pool worker that scores runs must not outlive a driver killed with SIGKILL."""
    driver = textwrap.dedent("""
        import multiprocessing, os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from search.confirm_runs import _one_thread
        if __name__ == "__main__":
            pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_one_thread)
            print(pool.submit(os.getpid).result(), flush=True)
            time.sleep(600)
    """)
    script = tmp_path / "driver.py"
    script.write_text(driver)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    worker = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    end = time.monotonic() + 120  # a hang guard, not a speed check
    while time.monotonic() < end:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(worker, os.WNOHANG)
        time.sleep(0.5)
    os.kill(worker, signal.SIGKILL)
    pytest.fail(f"the scoring process {worker} outlived its killed parent")
