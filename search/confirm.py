"""Confirm a finished sweep with several seeds: `python -m search.confirm EXPERIMENT_DIR`.

A sweep ranks single runs, one seed each. This takes the best configuration of a finished sweep
(by best validation PSNR, diverged trials excluded; `--top-k K`: the K best) and re-runs it for
each level of one factor (default `kl_anneal`: monotonic, cyclical, cyclical-sigmoid, none), only
that factor changed, S seeds each (config key `seed`: the configuration's seed, +1, +2, ...), for
the full number of epochs: no early stopping, no searcher, a grid of (configuration, level, seed)
runs. The factor's conditional parameters (those whose `when` names it, e.g. kl_anneal_cycle for
the cyclical modes) come from the best sweep trial of that level when there is one, else from
the configuration itself; parameters inactive at a level return to the sweep's base value.

The runs form their own Ray Tune experiment in `<EXPERIMENT_DIR>/confirm-<factor>/`, one
directory per run (`c<rank>-<level>-s<seed>`), with the sweep's resource model (resources.cpu
and resources.gpu of sweep.json, search.cluster). Running the same command again continues it:
finished runs are kept, runs cut short (Ctrl-C, a lost machine) start again from scratch. Each
run's final checkpoint is scored on the test split (cvae.evaluate, 2 past -> 10 future frames;
kept in the run's test_metrics.json), and `confirm.json` holds every run's final val_psnr and test
PSNR, per level the mean and 95% confidence interval over seeds and the pairwise Welch tests with
Holm correction (analysis.stats). The sweep's report (analysis.report) shows them.

`search.run` calls `confirm_sweep` at the end of a sweep whose space file has a `confirm:`
section ({seeds, factor, levels, top_k, epochs}).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import re
import shlex
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from ray.tune import Callback

from analysis import stats
from analysis.results import Experiment, ExperimentError, load_experiment, read_history
from analysis.speed import level_speed, seconds_to_quality
from cvae.config import KL_ANNEAL_MODES, coerce, field_names, from_dict
from cvae.jsonsafe import number
from search.storage import write_local_json

DEFAULT_FACTOR = "kl_anneal"
DEFAULT_SEEDS = 3
METRICS = ("val_psnr", "test_psnr")  # per-run numbers that get per-level statistics
NOT_FACTORS = ("seed", "device", "threads", "gpu_memory_fraction", "data")  # set by confirm
CONFIRM_FILE = "confirm.json"
TEST_FILE = "test_metrics.json"  # a run's test-split evaluation, in its run directory
LATENT_SEQUENCES = 64  # validation sequences for a run's KL per dimension and active units


class ConfirmError(Exception):
    """A usage or experiment problem; the message is one line naming the flag, file or key."""


@dataclass
class Run:
    """One (configuration, level, seed) training run."""

    name: str  # its directory under the confirmation experiment
    rank: int  # 1-based rank of its configuration in the sweep
    level: Any  # the factor's value (the Config field's type)
    seed: int
    config: dict[str, Any]  # flat trial config


@dataclass
class Plan:
    """What a confirmation runs."""

    experiment: Path
    sweep: dict[str, Any]  # sweep.json
    factor: str
    levels: list[Any]
    seeds: list[int]
    epochs: int
    configs: list[dict[str, Any]]  # per rank: trial, best val PSNR, params of each level
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one-line warnings

    @property
    def directory(self) -> Path:
        return self.experiment / f"confirm-{self.factor}"

    def run_dir(self, run: Run) -> Path:
        return self.directory / run.name


# --- the plan ----------------------------------------------------------------------------------

def make_plan(exp_dir: Path | str, factor: str = DEFAULT_FACTOR,
              levels: Optional[Sequence[Any]] = None, top_k: int = 1,
              seeds: int = DEFAULT_SEEDS, epochs: Optional[int] = None,
              data: Optional[str] = None) -> Plan:
    """The runs of a confirmation of the sweep in `exp_dir` (raises ConfirmError)."""
    try:
        exp = load_experiment(exp_dir)
    except ExperimentError as e:
        raise ConfirmError(str(e)) from None
    if factor not in field_names():
        raise ConfirmError(f"--factor {factor}: not a field of cvae.config.Config")
    if factor in NOT_FACTORS:
        raise ConfirmError(f"--factor {factor}: set by the confirmation itself (seeds, "
                           "resources, data); choose another config key")
    for flag, value in (("--top-k", top_k), ("--seeds", seeds), ("--epochs", epochs)):
        if value is not None and value < 1:
            raise ConfirmError(f"{flag} {value}: expected an integer >= 1")
    levels = _levels(exp, factor, levels)
    ranked = _ranked(exp)
    if ranked.empty:
        raise ConfirmError(f"{exp.path}: no trial reported a finite val_psnr without diverging")
    epochs = epochs or exp.epochs
    plan = Plan(exp.path, exp.sweep, factor, levels, [], epochs, [])
    conditional = [p for p, spec in (exp.sweep.get("searched") or {}).items()
                   if factor in ((spec or {}).get("when") or {})]
    for rank, (tid, trial) in enumerate(ranked.head(top_k).iterrows(), start=1):
        params = _params(exp, trial)
        if not plan.seeds:
            first = int(params.get("seed", 1))
            plan.seeds = list(range(first, first + seeds))
        entry = {"rank": rank, "trial_id": tid, "dir": trial["dir"],
                 "best_val_psnr": float(trial["best_val_psnr"]),
                 "searched": {p: params.get(p) for p in exp.searched}, "levels": {}}
        plan.configs.append(entry)
        plan.notes += _inactive_factor(exp, factor, params, rank)
        for level in levels:
            config, source = _level_config(exp, ranked, params, factor, level, conditional)
            config.update(epochs=epochs, **({"data": data} if data else {}))
            entry["levels"][label(level)] = {
                "from_trial": source, "params": {p: config.get(p) for p in conditional}}
            for seed in plan.seeds:
                run = Run(f"c{rank}-{_slug(label(level))}-s{seed}", rank, level, seed,
                          {**config, "seed": seed})
                _check_config(run)
                plan.runs.append(run)
    return plan


def label(level: Any) -> str:
    """A level as text: JSON keys, table rows, run names."""
    return json.dumps(level) if not isinstance(level, str) else level


def _levels(exp: Experiment, factor: str, levels: Optional[Sequence[Any]]) -> list[Any]:
    """The given levels coerced to the field's type; default: every KL annealing mode for
    kl_anneal, else the choices of the factor when the sweep searched it as a categorical."""
    if not levels:
        spec = (exp.sweep.get("searched") or {}).get(factor) or {}
        levels = (list(KL_ANNEAL_MODES) if factor == "kl_anneal"
                  else list(spec.get("choices") or []))
        if not levels:
            raise ConfirmError(f"--levels: required for --factor {factor} (the sweep did not "
                               "search it as a categorical parameter)")
    out: list[Any] = []
    for value in levels:
        try:
            value = coerce(factor, value)
        except ValueError as e:
            raise ConfirmError(f"--levels: {e}") from None
        if value in out:
            raise ConfirmError(f"--levels: {label(value)} is given twice")
        out.append(value)
    slugs = [_slug(label(v)) for v in out]
    if len(set(slugs)) < len(slugs):
        raise ConfirmError(f"--levels: {', '.join(map(label, out))} do not give distinct run "
                           "names")
    return out


def _ranked(exp: Experiment):
    """Trials with a finite best val_psnr that did not diverge, best first."""
    ranked = exp.ranked().dropna(subset=["best_val_psnr"])
    return ranked[ranked["status"] != "diverged"]


def _params(exp: Experiment, trial: Any) -> dict[str, Any]:
    """A trial's flat config (params.json: the sweep's base plus its searched values)."""
    path = exp.path / str(trial["dir"]) / "params.json"
    try:
        params = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfirmError(f"{path}: cannot read the trial's config ({e})") from None
    return {k: v for k, v in params.items() if k in field_names() or k == "preset"}


def _level_config(exp: Experiment, ranked: Any, params: dict[str, Any], factor: str,
                  level: Any, conditional: list[str]) -> tuple[dict[str, Any], Optional[str]]:
    """(config with factor = level, the sweep trial its conditional parameters come from)."""
    config = {**params, factor: level}
    same = ranked[ranked[factor].map(lambda v: _same(v, level))] if factor in ranked else []
    source = same.index[0] if len(same) else None
    donor = _params(exp, same.iloc[0]) if source is not None else params
    base = exp.sweep.get("base") or {}
    for p in conditional:
        when = exp.sweep["searched"][p]["when"][factor]
        active = any(_same(level, v) for v in (when if isinstance(when, list) else [when]))
        value = donor.get(p, params.get(p)) if active else base.get(p)
        if value is None:
            config.pop(p, None)
        else:
            config[p] = value
    return config, source


def _inactive_factor(exp: Experiment, factor: str, params: dict, rank: int) -> list[str]:
    """A warning when the factor is conditional and inactive in the configuration."""
    spec = (exp.sweep.get("searched") or {}).get(factor) or {}
    notes = []
    for parent, values in (spec.get("when") or {}).items():
        values = values if isinstance(values, list) else [values]
        if not any(_same(params.get(parent), v) for v in values):
            notes.append(f"configuration {rank}: {factor} has no effect while {parent} is "
                         f"{params.get(parent)} (it applies when {parent} is "
                         f"{' or '.join(map(str, values))})")
    return notes


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-12)
    return a == b


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "level"


def _check_config(run: Run) -> None:
    values = dict(run.config)
    values.pop("preset", None)
    try:
        from_dict(values)
    except ValueError as e:
        raise ConfirmError(f"--levels {label(run.level)}: rejected by cvae.config in run "
                           f"{run.name}: {e}") from None


# --- running -----------------------------------------------------------------------------------

def run_state(run_dir: Path, epochs: int) -> tuple[str, Any]:
    """(status, history) of a run directory: completed | diverged | incomplete | missing."""
    history = read_history(run_dir)
    if history.empty or history["epoch"].isna().all():
        return "missing", history
    if history["diverged"].any():
        return "diverged", history
    done = history.dropna(subset=["val_psnr"])
    if len(done) and int(done["epoch"].max()) >= epochs:
        return "completed", history
    return "incomplete", history


def final_checkpoint(run_dir: Path) -> Optional[Path]:
    """The run's latest kept checkpoint directory holding a state.pt."""
    found = sorted(p.parent for p in run_dir.glob("checkpoint_*/state.pt"))
    return found[-1] if found else None


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
        evaluate_run(plan.run_dir(run), plan.epochs, device)


def evaluate_run(run_dir: Path, epochs: int, device: str = "cpu") -> None:
    """evaluate_runs for one run directory (a finished run not yet scored on this checkpoint)."""
    from cvae.evaluate import evaluate_checkpoint

    status, _ = run_state(run_dir, epochs)
    ckpt = final_checkpoint(run_dir)
    if status not in ("completed", "diverged") or ckpt is None:
        return
    kept = _read(run_dir / TEST_FILE)
    if kept and kept.get("checkpoint") == ckpt.name:
        return
    print(f"confirm: {run_dir.name}: test split, {ckpt.name}", flush=True)
    try:
        r = evaluate_checkpoint(ckpt, split="test", device=device)
        # what the schedule did to the latent: z from the posterior on the test split, KL per
        # dimension and active units on (at most LATENT_SEQUENCES of) the validation split
        post = evaluate_checkpoint(ckpt, split="test", device=device, z="posterior")
        val = evaluate_checkpoint(ckpt, split="validate", device=device, latent=True,
                                  max_sequences=LATENT_SEQUENCES)
    except Exception as e:  # a failed evaluation leaves test PSNR empty, not the rest
        print(f"warning: {run_dir.name}: the test evaluation failed: {type(e).__name__}: {e}",
              file=sys.stderr)
        return
    keys = ("psnr", "ssim", "baseline_psnr", "baseline_ssim", "n_sequences", "n_past",
            "n_future")
    write_local_json(run_dir / TEST_FILE, {"checkpoint": ckpt.name, **{k: r[k] for k in keys},
                                           "posterior_psnr": post["psnr"], "val_kl": val["kl"],
                                           "val_kl_per_dim": val["kl_per_dim"],
                                           "active_units": val["active_units"]})


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _last_checkpoint_name(run_dir: Path) -> Optional[str]:
    """checkpoint_dir_name of the last row of the run's result.json (None: none yet)."""
    try:
        lines = (run_dir / "result.json").read_text().strip().splitlines()
        return json.loads(lines[-1]).get("checkpoint_dir_name") if lines else None
    except (OSError, ValueError, AttributeError):
        return None


def evaluate_when_saved(run_dir: Path, epochs: int, device: str, wait_s: float = 120.0) -> None:
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
    evaluate_run(run_dir, epochs, device)


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
                         self.plan.epochs, self.device)

    def close(self, cancel: bool = False) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=cancel)


# --- results -----------------------------------------------------------------------------------

def summarize(plan: Plan, ci_method: str = "t", wall_time_s: Optional[float] = None) -> dict:
    """confirm.json: the plan, every run's numbers, per-level statistics per configuration."""
    runs = []
    for run in plan.runs:
        run_dir = plan.run_dir(run)
        status, history = run_state(run_dir, plan.epochs)
        kept = history.dropna(subset=["val_psnr"])
        kept = kept[~kept["diverged"]]
        test = _read(run_dir / TEST_FILE) or {}
        final = (0.0 if status == "diverged"  # fit's finite worst case
                 else float(kept["val_psnr"].iloc[-1]) if status == "completed" else None)
        runs.append({
            "name": run.name, "rank": run.rank, "level": run.level, "label": label(run.level),
            "seed": run.seed, "status": status, "epochs": len(history),
            "val_psnr": final,
            "val_psnr_best": float(kept["val_psnr"].max()) if len(kept) else None,
            "val_psnr_curve": [number(v) for v in history["val_psnr"]],
            "seconds_to": seconds_to_quality(history),
            "test_psnr": test.get("psnr"), "test_ssim": test.get("ssim"),
            "baseline_psnr": test.get("baseline_psnr"),
            "checkpoint": f"{run.name}/{test['checkpoint']}" if test else None,
            **{k: test.get(k) for k in ("posterior_psnr", "val_kl", "val_kl_per_dim",
                                        "active_units")},
            "config": run.config,
        })
    groups = []
    for entry in plan.configs:
        mine = [r for r in runs if r["rank"] == entry["rank"]]
        levels, comparisons, paired = {}, {}, {}
        for metric in METRICS:
            by_seed = {label(v): {r["seed"]: r[metric] for r in mine if r["label"] == label(v)
                                  and r["status"] in ("completed", "diverged")}
                       for v in plan.levels}
            by_level = {lv: list(values.values()) for lv, values in by_seed.items()}
            for lv, interval in stats.summarize(by_level, method=ci_method).items():
                levels.setdefault(lv, {})[metric] = interval.to_dict()
            comparisons[metric] = [c.to_dict() for c in stats.compare(by_level)]
            # one seed = the same initialisation and batches at every level: matched pairs
            paired[metric] = [c.to_dict() for c in stats.compare_paired(by_seed)]
        for lv in levels:
            levels[lv]["diverged"] = sum(r["status"] == "diverged" for r in mine
                                         if r["label"] == lv)
        groups.append({**entry, "statistics": levels, "comparisons": comparisons,
                       "paired_comparisons": paired})
    finished = all(r["status"] in ("completed", "diverged") for r in runs)
    return {
        "experiment": str(plan.experiment), "factor": plan.factor,
        "levels": plan.levels, "labels": [label(v) for v in plan.levels],
        "seeds": plan.seeds, "epochs": plan.epochs, "confidence": stats.CONFIDENCE,
        "alpha": stats.ALPHA, "ci_method": ci_method, "finished": finished,
        "wall_time_s": wall_time_s, "notes": plan.notes, "configs": groups, "runs": runs,
        "latent": latent_statistics(runs), "speed": level_speed(runs),
    }


def latent_statistics(runs: list[dict]) -> dict:
    """Per level, what the schedule did to the latent (means over its finished runs): KL of the
    posterior from the prior per latent dimension on the validation split, active units
    (Burda et al. 2016: posterior-mean variance over inputs > 0.01), and test PSNR with z from
    the posterior minus with z from the prior (what z carries that the prior does not give)."""
    out = {}
    for r in runs:
        if r.get("val_kl_per_dim") is None:
            continue
        out.setdefault(r["label"], []).append(r)
    return {lv: {"n": len(rs),
                 "kl": float(np.mean([r["val_kl"] for r in rs])),
                 "kl_per_dim": np.mean([r["val_kl_per_dim"] for r in rs], 0).tolist(),
                 "active_units": float(np.mean([r["active_units"] for r in rs])),
                 "posterior_gain_db": float(np.mean([r["posterior_psnr"] - r["test_psnr"]
                                                     for r in rs]))}
            for lv, rs in out.items()}


def describe(summary: dict) -> list[str]:
    """Lines for the terminal: per level mean and CI, then the comparison sentences."""
    lines = []
    for group in summary["configs"]:
        lines.append(f"configuration {group['rank']} (sweep trial {group['trial_id']}, "
                     f"{summary['factor']} varied):")
        for lv, values in group["statistics"].items():
            parts = []
            for metric in METRICS:
                iv = values[metric]
                ci = (f" [{iv['low']:.2f}, {iv['high']:.2f}]"
                      if number(iv["low"]) is not None else "")
                mean = f"{iv['mean']:.2f}" if number(iv["mean"]) is not None else "-"
                parts.append(f"{metric} {mean}{ci}")
            lines.append(f"  {lv}: " + ", ".join(parts) + f" (n = {values['val_psnr']['n']})")
        for metric in METRICS:
            lines += [f"  {metric}: {c['sentence']}" for c in group["comparisons"][metric]]
            lines += [f"  {metric}: {c['sentence']}"
                      for c in group.get("paired_comparisons", {}).get(metric, [])]
    return lines


def _read(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- entry points ------------------------------------------------------------------------------

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
    previous = _read(plan.directory / CONFIRM_FILE) or {}
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
                         epochs=options.get("epochs"))
    except ConfirmError as e:
        print(f"error: confirm: {e}", file=sys.stderr)
        return 2
    return confirm(plan, cluster, trainable=trainable, max_concurrent=max_concurrent)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        raise ConfirmError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m search.confirm", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Exit codes: 0 done; 1 a run failed; 2 a usage or experiment error "
                       "(nothing started); 130 interrupted (run the same command to continue)."
                       "\nExample: python -m search.confirm ray_results/annealing --seeds 5")
    p.add_argument("experiment", metavar="EXPERIMENT_DIR",
                   help="a finished sweep's directory (holds sweep.json and the trial dirs)")
    p.add_argument("--factor", default=DEFAULT_FACTOR, metavar="KEY",
                   help="the config key whose levels are compared (default: kl_anneal)")
    p.add_argument("--levels", nargs="+", metavar="VALUE",
                   help="the factor's values (default: every KL annealing mode for kl_anneal, "
                        "else the factor's choices in the sweep)")
    p.add_argument("--top-k", type=int, default=1, metavar="K",
                   help="confirm each of the K best configurations (default: 1)")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, metavar="S",
                   help=f"seeds per level (default: {DEFAULT_SEEDS})")
    p.add_argument("--epochs", type=int, metavar="N",
                   help="epochs per run (default: the sweep's)")
    p.add_argument("--data", metavar="DIR",
                   help="dataset root in the BAIR layout (default: the sweep's)")
    p.add_argument("--max-concurrent", type=int, metavar="N",
                   help="at most N runs at a time (default: the sweep's max_concurrent)")
    p.add_argument("--ci", choices=stats.METHODS, default="t",
                   help="per-level confidence intervals: t-based or bootstrap (default: t)")
    p.add_argument("--address", metavar="ADDR",
                   help="join a running Ray cluster ('auto' or host:port; default: "
                        "$RAY_ADDRESS, else start a local Ray instance)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the runs and their configs, start nothing")
    p.add_argument("--debug", action="store_true",
                   help="show Tune's own progress output and warnings, and tracebacks")
    return p


def main(argv: Optional[Sequence[str]] = None,
         trainable: Optional[Callable[[dict], None]] = None) -> int:
    """Command-line entry point; `trainable` replaces cvae.trainable.train_cvae (tests)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if args.max_concurrent is not None and args.max_concurrent < 1:
            raise ConfirmError(f"--max-concurrent {args.max_concurrent}: expected an integer "
                               ">= 1")
        plan = make_plan(args.experiment, args.factor, args.levels, args.top_k, args.seeds,
                         args.epochs, args.data)
    except ConfirmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run in plan.runs:
            print(f"{run.name}: " + json.dumps(run.config, sort_keys=True))
        return 0
    again = shlex.join(["python", "-m", "search.confirm", *argv])
    try:
        code = _launch(args, plan, trainable)
    except KeyboardInterrupt:
        code = 130
    except Exception as e:
        if args.debug:
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if code == 130:
        print(f"interrupted; continue with: {again}", file=sys.stderr)
    return code


def _launch(args: argparse.Namespace, plan: Plan, trainable: Optional[Callable]) -> int:
    import os

    from search import cluster as clusters
    from search.launcher import prepare_data

    from cvae.data import DataError

    if trainable is None and not (args.address or os.environ.get("RAY_ADDRESS")):
        data = plan.runs[0].config.get("data") if plan.runs else None
        try:  # decoded once here rather than by every run at once
            root = prepare_data(data)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for run in plan.runs:
            run.config["data"] = root
    try:
        ray_cluster = clusters.connect(args.address, dashboard=False)
    except clusters.ConnectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return confirm(plan, ray_cluster, trainable=trainable,
                       max_concurrent=args.max_concurrent, ci_method=args.ci, debug=args.debug)
    except clusters.ResourceError as e:
        print(f"error: {plan.experiment / 'sweep.json'}: {e}", file=sys.stderr)
        return 2
    finally:
        if ray_cluster.started:
            import ray
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
