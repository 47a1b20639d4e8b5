"""Running a confirmation (search.confirm): the plan's runs as their own Ray Tune experiment,
each run scored on the test split as it ends, then confirm.json.

The runs form a grid in `<EXPERIMENT_DIR>/confirm-<factor>/`, one directory per run
(`c<rank>-<level>-s<seed>`), with the sweep's resource model (resources.cpu and resources.gpu of
sweep.json, search.cluster): full epochs, no early stopping, no searcher. Runs found finished
are kept, runs cut short (Ctrl-C, a lost machine) start again from scratch. Each run's final
checkpoint is scored on the test split (cvae.evaluate, the task's protocol) and kept in the
run's test_metrics.json, with what the schedule did to the latent.
"""
from __future__ import annotations

import json
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

from ray.tune import Callback

from search.confirm_plan import (DEFAULT_FACTOR, DEFAULT_SEEDS, ConfirmError, Plan, Run, label,
                                 make_plan)
from search.confirm_results import (CONFIRM_FILE, TEST_FILE, describe, final_checkpoint,
                                    read_kept, run_state, summarize)
from search.storage import write_local_json

LATENT_SEQUENCES = 64  # validation sequences for a run's KL per dimension and active units


def execute(plan: Plan, runs: list[Run], resources: Any, trainable: Callable[[dict], None],
            max_concurrent: Optional[int] = None, verbose: int = 0,
            evaluate: bool = True) -> dict[str, str]:
    """Train `runs` as a grid in the plan's Ray Tune experiment on the connected cluster,
    scoring each on the test split as it ends (`evaluate`); returns {run name: error message}
    of runs that failed."""
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from search.launcher import MAX_FAILURES

    configs = {r.name: {**r.config, **resources.config()} for r in runs}
    scorer = _EvaluateAsRunsEnd(plan, resources.device) if evaluate else None

    def train(config: dict) -> None:  # the grid holds run names; each trial trains its config
        trainable(configs[config["run"]])

    tuner = Tuner(
        tune.with_resources(train, {"cpu": resources.cpu, "gpu": resources.gpu}),
        param_space={"run": tune.grid_search([r.name for r in runs])},
        tune_config=TuneConfig(num_samples=1, max_concurrent_trials=max_concurrent,
                               trial_name_creator=_run_name, trial_dirname_creator=_run_name),
        run_config=RunConfig(
            name=plan.directory.name, storage_path=str(plan.experiment), verbose=verbose,
            checkpoint_config=CheckpointConfig(num_to_keep=1),  # the latest: the final model
            failure_config=FailureConfig(max_failures=MAX_FAILURES),
            callbacks=[_Progress(len(runs)), JsonLoggerCallback(), CSVLoggerCallback(),
                       *([scorer] if scorer else [])]))
    try:
        results = tuner.fit()
    finally:
        if scorer:
            scorer.close(cancel=sys.exc_info()[0] is not None)
    return {str(r.config.get("run")): (str(r.error).strip().splitlines() or ["error"])[-1]
            for r in results if r.error is not None}


def _run_name(trial: Any) -> str:
    return str(trial.config["run"])


class _Progress(Callback):
    """One line per run started, finished or failed."""

    def __init__(self, total: int):
        self.total, self.ended, self.start = total, 0, time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:6.0f} s] {text}", flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.say(f"{_run_name(trial)}: started")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended += 1
        last = trial.last_result or {}
        psnr = last.get("val_psnr")
        what = (f"diverged at epoch {last.get('epoch')}" if last.get("diverged") else
                f"val_psnr {psnr:.2f} dB after {last.get('epoch')} epochs"
                if isinstance(psnr, (int, float)) else "ended")
        self.say(f"{_run_name(trial)}: {what} ({self.ended}/{self.total} runs ended)")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended += 1
        self.say(f"{_run_name(trial)}: failed ({self.ended}/{self.total} runs ended)")


def evaluate_runs(plan: Plan, device: str = "cpu") -> None:
    """Score the final checkpoint of every finished run on the test split, once: the result
    is kept in the run's test_metrics.json (and redone when the checkpoint changed)."""
    for run in plan.runs:
        evaluate_run(plan.run_dir(run), plan.epochs, device, plan.best_of)


def evaluate_run(run_dir: Path, epochs: int, device: str = "cpu", best_of: int = 0) -> None:
    """evaluate_runs for one run directory (a finished run not yet scored on this checkpoint):
    cvae.evaluate.score_checkpoint, the best of `best_of` prior samples when > 1."""
    from cvae.evaluate import score_checkpoint

    status, _ = run_state(run_dir, epochs)
    ckpt = final_checkpoint(run_dir)
    if status not in ("completed", "diverged") or ckpt is None:
        return
    kept = read_kept(run_dir / TEST_FILE)
    if kept and kept.get("checkpoint") == ckpt.name and kept.get("samples", 0) >= best_of:
        return
    print(f"confirm: {run_dir.name}: test split, {ckpt.name}", flush=True)
    try:
        scores = score_checkpoint(ckpt, device=device, samples=best_of,
                                  latent_sequences=LATENT_SEQUENCES)
    except Exception as e:  # a failed evaluation leaves test PSNR empty, not the rest
        print(f"warning: {run_dir.name}: the test evaluation failed: {type(e).__name__}: {e}",
              file=sys.stderr)
        return
    write_local_json(run_dir / TEST_FILE, {"checkpoint": ckpt.name, **scores})


def _one_thread() -> None:
    """Initialiser of the scoring process: one torch thread, and exit when the confirmation
    process that started it is gone (killed with SIGKILL, its pool cannot tell this process;
    it would otherwise block forever on its task queue)."""
    import os
    import signal
    import threading

    import torch

    torch.set_num_threads(1)
    parent = os.getppid()

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)  # no clean-up left to do: it scored nothing

    threading.Thread(target=orphaned, name="parent-watch", daemon=True).start()


def _last_checkpoint_name(run_dir: Path) -> Optional[str]:
    """checkpoint_dir_name of the last row of the run's result.json (None: none yet)."""
    try:
        lines = (run_dir / "result.json").read_text().strip().splitlines()
        return json.loads(lines[-1]).get("checkpoint_dir_name") if lines else None
    except (OSError, ValueError, AttributeError):
        return None


def evaluate_when_saved(run_dir: Path, epochs: int, device: str, best_of: int = 0,
                        wait_s: float = 120.0) -> None:
    """evaluate_run once the checkpoint named by the run's last result has landed on disk (at
    trial end Tune may still be moving it into place); after `wait_s`, whatever is there (a
    checkpoint that changes later is scored again by evaluate_runs)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        named = _last_checkpoint_name(run_dir)
        if named is None or (run_dir / named / "state.pt").is_file():
            break
        if (run_dir / named).is_dir():  # there, but no model state in it: give it a moment
            deadline = min(deadline, time.monotonic() + 5.0)
        time.sleep(0.5)
    evaluate_run(run_dir, epochs, device, best_of)


class _EvaluateAsRunsEnd(Callback):
    """Scores each run as soon as it ends, in one background process, so that the evaluations
    overlap the runs still training (on 2 cores, the last run of an odd grid trains alone)
    instead of all following the last run. evaluate_runs afterwards catches any it missed."""

    def __init__(self, plan: Plan, device: str):
        self.plan, self.device = plan, device
        self.pool: Optional[ProcessPoolExecutor] = None

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.pool is None:
            self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_one_thread)
        self.pool.submit(evaluate_when_saved, self.plan.directory / _run_name(trial),
                         self.plan.epochs, self.device, self.plan.best_of)

    def close(self, cancel: bool = False) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=cancel)


# --- the confirmation as a whole ---------------------------------------------------------------

def confirm(plan: Plan, cluster: Any, *, trainable: Optional[Callable] = None,
            max_concurrent: Optional[int] = None, ci_method: str = "t",
            debug: bool = False) -> int:
    """Run what is missing of `plan` on the connected cluster, evaluate, write confirm.json;
    the exit code: 0 done, 1 runs failed, 130 interrupted."""
    from search import cluster as clusters
    from search.launcher import quiet_tune

    spec = plan.sweep.get("resources") or {}
    if max_concurrent is None:
        max_concurrent = plan.sweep.get("max_concurrent")
    for note in plan.notes:
        print(f"warning: {note}", file=sys.stderr)
    states = {r.name: run_state(plan.run_dir(r), plan.epochs)[0] for r in plan.runs}
    pending = [r for r in plan.runs if states[r.name] not in ("completed", "diverged")]
    print(f"confirm: {plan.factor} = {', '.join(map(label, plan.levels))}; seeds "
          f"{', '.join(map(str, plan.seeds))}; {plan.epochs} epochs; {len(plan.configs)} "
          f"configuration(s): {len(plan.runs)} runs, {len(plan.runs) - len(pending)} already "
          f"done, {len(pending)} to run in {plan.directory}", flush=True)
    errors: dict[str, str] = {}
    start = time.monotonic()
    resources = None
    if pending:
        for run in pending:
            if plan.run_dir(run).exists():  # cut short earlier: starts again from scratch
                print(f"confirm: {run.name}: {states[run.name]}, starting it again", flush=True)
                shutil.rmtree(plan.run_dir(run))
        running = clusters.concurrency(len(pending), max_concurrent, float(spec.get("cpu", 1)),
                                       cluster)
        resources = clusters.trial_resources(float(spec.get("cpu", 1)), spec.get("gpu", 0),
                                             cluster, running)
        print(f"confirm: {resources.describe()}", flush=True)
        if not debug:
            quiet_tune()
        if trainable is None:
            from cvae.trainable import train_cvae as trainable
        errors = execute(plan, pending, resources, trainable, max_concurrent,
                         verbose=1 if debug else 0)
    evaluate_runs(plan, device=resources.device if resources else "cpu")
    previous = read_kept(plan.directory / CONFIRM_FILE) or {}
    wall = (previous.get("wall_time_s") or 0.0) + time.monotonic() - start
    summary = summarize(plan, ci_method, wall_time_s=wall)
    write_local_json(plan.directory / CONFIRM_FILE, summary)
    for line in describe(summary):
        print(line)
    print(f"confirm: {plan.directory / CONFIRM_FILE}", flush=True)
    for name, message in errors.items():
        print(f"confirm: {name} failed: {message}", file=sys.stderr)
    if summary["finished"]:
        return 0
    return 1 if errors else 130


def confirm_sweep(exp_path: str, options: dict[str, Any], cluster: Any, *,
                  trainable: Optional[Callable] = None,
                  max_concurrent: Optional[int] = None) -> int:
    """The confirmation a space file's `confirm:` section asks for ({seeds, factor, levels,
    top_k, epochs}), after its sweep; the exit code as `confirm`'s (2: nothing to confirm)."""
    if "://" in exp_path:
        print(f"warning: no confirmation for remote storage ({exp_path}): copy it to a local "
              "directory and run python -m search.confirm on it", file=sys.stderr)
        return 0
    try:
        plan = make_plan(exp_path, factor=options.get("factor") or DEFAULT_FACTOR,
                         levels=options.get("levels"), top_k=options.get("top_k") or 1,
                         seeds=options.get("seeds") or DEFAULT_SEEDS,
                         epochs=options.get("epochs"), best_of=options.get("best_of") or 0)
    except ConfirmError as e:
        print(f"error: confirm: {e}", file=sys.stderr)
        return 2
    return confirm(plan, cluster, trainable=trainable, max_concurrent=max_concurrent)
