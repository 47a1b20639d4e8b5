"""Launch (or resume) a sweep: `python -m search.run --space spaces/annealing.yaml`.

Optuna TPE (seeded, multivariate, grouped so conditional parameters are modelled) proposes
configs define-by-run, ASHA stops weak trials early on the scheduler metric (best-so-far
val_psnr by default, so a dip at a rung in the middle of a KL cycle does not kill a trial), and
Optuna hears how each trial really ended (`search.searcher`). Results go to
`<storage>/<name>/` (sweep.json, trials.json, per-trial result.json/history.json/checkpoints;
docs/CONTRACTS.md). Every usage or space-file error is one line on stderr and exit code 2,
before Ray starts. When the space file has a `confirm:` section, the best configuration is then
re-run with several seeds per level of one factor (`search.confirm`), before the report.

Interrupted sweeps (Ctrl-C, a killed driver, a lost machine) continue with the same command
plus `--resume`: trials that finished are kept as they are (the experiment state is saved
durably whenever a trial starts or ends, `search.scheduler`), unfinished ones continue from
their latest checkpoints with the original settings. A trial whose worker dies is retried from
its latest checkpoint up to MAX_FAILURES times.

Multi-node use and the dashboard: see `search.cluster`.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import errno
import importlib.util
import json
import logging
import math
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from search.space import Space, SpaceError, define_by_run, describe, load_space, to_json
from search.space import trial_config

MAX_FAILURES = 2  # retries of a trial whose worker died or raised, from its latest checkpoint
NUM_TO_KEEP = 2  # checkpoints kept per trial: the best by the metric (the latest always stays)
TABLE_EVERY_S = 60.0  # seconds between compact progress tables
# Tune's output and logging settings (read when a sweep starts; set only when unset):
TUNE_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # legacy output engine: silent with verbose=0
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # we add the JSON and CSV loggers; no TensorBoard
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",  # SweepCallback prints one line per failure
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # num_to_keep saves
}

# Ray loggers whose warnings the launcher replaces with its own lines: "interrupted, resume with
# Tuner.restore(...)" (we print the command line), "failed to fetch metrics" of trials that had
# not started when a sweep was interrupted.
QUIET_LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")


class UsageError(Exception):
    """A command-line mistake; the message is one line."""


@dataclass
class SweepResult:
    path: str  # experiment directory (local path or URI)
    results: Any  # ray.tune.ResultGrid
    finished: bool  # every trial ended (False: interrupted, resume with --resume)
    trials: dict[str, dict]  # trials.json


# --- command line ------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2 (argparse prints usage too)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m search.run", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Exit codes: 0 done; 1 the report failed; 2 a usage, space-file or "
                       "resource error (nothing started); 130 interrupted (continue with "
                       "--resume).\nExample: python -m search.run --space spaces/smoke.yaml")
    p.add_argument("--space", required=True, metavar="FILE",
                   help="search space YAML file (spaces/*.yaml)")
    p.add_argument("--num-samples", type=_positive_int, metavar="N",
                   help="number of trials (overrides num_samples)")
    p.add_argument("--data", metavar="DIR",
                   help="dataset root in the BAIR layout (overrides base.data; default: the "
                        "space's, else built-in synthetic data)")
    p.add_argument("--preset", metavar="NAME", help="config preset: lab, cpu or tiny "
                                                    "(overrides base.preset)")
    p.add_argument("--epochs", type=_positive_int, metavar="N",
                   help="epochs per trial, ASHA's max_t (overrides base.epochs)")
    p.add_argument("--gpus-per-trial", metavar="X|auto",
                   help="GPU per trial: a fraction (0.25 = four trials share a GPU), a whole "
                        "number, 0 for CPU, or auto (GPUs when the cluster has them) "
                        "(overrides resources.gpu)")
    p.add_argument("--max-concurrent", type=_positive_int, metavar="N",
                   help="at most N trials at a time (overrides max_concurrent)")
    p.add_argument("--name", help="experiment name, the directory under --storage "
                                  "(default: the space's name)")
    p.add_argument("--seed", type=_int, metavar="S", help="TPE sampler seed (overrides seed)")
    p.add_argument("--storage", default="ray_results", metavar="PATH|URI",
                   help="where experiments go: a local directory (made absolute) or a URI "
                        "Ray supports (s3://bucket/dir, gs://...); with several nodes, use "
                        "storage they all reach (default: ./ray_results)")
    p.add_argument("--address", metavar="ADDR",
                   help="join a running Ray cluster ('auto' or host:port; default: "
                        "$RAY_ADDRESS, else start a local Ray instance)")
    p.add_argument("--allow-unauthenticated-cluster", action="store_true",
                   help="join an --address cluster even when its token authentication is off "
                        "(anyone who reaches its ports can run code on it)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted experiment <storage>/<name>: finished "
                        "trials are kept, unfinished and failed ones continue from their "
                        "latest checkpoints")
    p.add_argument("--no-dashboard", action="store_true",
                   help="do not start the Ray dashboard (local Ray only)")
    p.add_argument("--dashboard-host", default="127.0.0.1", metavar="H",
                   help="interface the dashboard listens on (default 127.0.0.1; reach it from "
                        "elsewhere with an SSH tunnel rather than exposing it)")
    p.add_argument("--dashboard-port", type=_port, default=8265, metavar="P",
                   help="dashboard port (default 8265; Ray picks another if it is taken)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out (and list) sequences that fail the data checks instead of "
                        "stopping: skip_bad in every trial's config (overrides base.skip_bad)")
    p.add_argument("--no-report", action="store_true",
                   help="skip the analysis report at the end (analysis.report.build_report)")
    return p


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return value


def space_from_args(args: argparse.Namespace) -> Space:
    """The validated space with the command-line overrides applied (raises SpaceError)."""
    overrides = {"num_samples": args.num_samples, "seed": args.seed, "name": args.name,
                 "preset": args.preset, "epochs": args.epochs, "data": args.data,
                 "gpu": args.gpus_per_trial, "skip_bad": True if args.skip_bad else None}
    space = load_space(args.space, overrides)
    if args.max_concurrent is not None:
        space = dataclasses.replace(space, max_concurrent=args.max_concurrent)
    return space


def storage_root(storage: str) -> str:
    """A URI unchanged, a local path made absolute (Ray needs absolute paths)."""
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def check_storage(storage: str) -> None:
    """A local --storage must be a directory, or creatable, and writable: probed with a
    temporary file in it or in its nearest existing parent, nothing left behind (raises
    UsageError). URIs are left to Ray."""
    if "://" in storage:
        return
    path = Path(storage)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == path else f"{existing} is a file"
        raise UsageError(f"--storage {storage}: {what} (expected a directory)")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UsageError(f"--storage {storage}: not writable ({existing}: "
                         f"{e.strerror or e})") from None


def main(argv: Optional[Sequence[str]] = None,
         trainable: Optional[Callable[[dict], None]] = None) -> int:
    """Command-line entry point; `trainable` replaces cvae.trainable.train_cvae (tests)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if not (args.address or os.environ.get("RAY_ADDRESS")):
            from search.cluster import keep_local_ray_on_loopback
            keep_local_ray_on_loopback()  # before anything imports ray
        space = space_from_args(args)
        storage = storage_root(args.storage)
        check_storage(storage)
        check_experiment(storage, space, args.resume)
    except (UsageError, SpaceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in space.warnings:
        print(f"warning: {note}", file=sys.stderr)
    resume_command = shlex.join(["python", "-m", "search.run", *argv]) + (
        "" if args.resume else " --resume")
    try:
        return _launch(args, space, storage, trainable, resume_command)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the sweep started
        print(f"interrupted; continue with: {resume_command}", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: no space left on the device ({e.filename or storage}): free some, then "
              f"try: {resume_command} (if Ray could not save the experiment state, start anew "
              "with another --name)", file=sys.stderr)
        return 1


def _launch(args: argparse.Namespace, space: Space, storage: str,
            trainable: Optional[Callable], resume_command: str) -> int:
    from search import cluster as clusters
    from search import orphans

    from cvae.data import DataError

    print(describe(space), flush=True)
    data = space.base.get("data")
    if trainable is None and not (args.address or os.environ.get("RAY_ADDRESS") or args.resume):
        try:  # a local CVAE sweep: the data is prepared here, once (on clusters, by each node)
            data = prepare_data(data, skip_bad=bool(space.base.get("skip_bad")))
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    for line in orphans.end_orphans():  # of local instances whose launcher was killed
        print(line, flush=True)
    try:
        ray_cluster = clusters.connect(args.address, dashboard=not args.no_dashboard,
                                       dashboard_host=args.dashboard_host,
                                       dashboard_port=args.dashboard_port,
                                       allow_unauthenticated=args.allow_unauthenticated_cluster)
    except clusters.ConnectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        where = "started a local Ray instance" if ray_cluster.started else "joined"
        print(f"ray: {where} at {ray_cluster.address} ({_describe_resources(ray_cluster)})")
        joined = args.address or os.environ.get("RAY_ADDRESS")
        if joined and not ray_cluster.started and ray_cluster.auth_mode != "token":
            print(f"warning: token authentication is {ray_cluster.auth_mode or 'unknown'} on "
                  "this cluster (--allow-unauthenticated-cluster)", file=sys.stderr)
        print(clusters.dashboard_help(ray_cluster, requested=not args.no_dashboard), flush=True)
        try:
            running = clusters.concurrency(space.num_samples, space.max_concurrent,
                                           space.resources["cpu"], ray_cluster)
            resources = clusters.trial_resources(space.resources["cpu"], space.resources["gpu"],
                                                 ray_cluster, running)
        except clusters.ResourceError as e:
            print(f"error: {args.space}: {e}", file=sys.stderr)
            return 2
        print(resources.describe(), flush=True)
        sweep = run_sweep(space, trainable=trainable, storage=storage, resources=resources,
                          resume=args.resume, data=data)
        confirmed = 0
        if sweep.finished and space.confirm is not None:  # multi-seed re-runs, before the report
            from search.confirm import confirm_sweep
            confirmed = confirm_sweep(sweep.path, space.confirm, ray_cluster,
                                      trainable=trainable, max_concurrent=space.max_concurrent)
            if confirmed == 130:
                print(f"confirmation interrupted; continue with: {resume_command}")
    finally:
        if ray_cluster.started:
            import ray
            ray.shutdown()
            orphans.forget()
    return finish(sweep, space, resume_command, report=not args.no_report) or confirmed


def prepare_data(data: Optional[str], skip_bad: bool = False) -> str:
    """Generate the synthetic data (when no data is given) and decode the training and
    validation splits once in the driver, so that concurrent trials find them ready instead
    of all building them at once (`skip_bad`: bad sequences are listed, not fatal). Returns
    the dataset root the trials use."""
    from cvae.data import load_split, resolve_root

    root = resolve_root(data)
    for split in ("train", "validate"):
        load_split(root, split, skip_bad=skip_bad)
    print(f"data: {root}", flush=True)
    return str(root)


def _describe_resources(c: Any) -> str:
    res = c.resources
    return f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"


# sweep.json keys that must match when resuming (the restored experiment keeps its settings).
RESUME_KEYS = ("metric", "mode", "scheduler_metric", "num_samples", "epochs", "searched", "base",
               "seed", "max_concurrent", "points_to_evaluate", "asha")


def check_experiment(storage: str, space: Space, resume: bool) -> None:
    """A new sweep must not overwrite an experiment; --resume needs one started with the same
    space and overrides (raises UsageError)."""
    from ray.tune import Tuner

    from search.progress import open_storage, read_json

    path = f"{storage}/{space.name}"
    exists = Tuner.can_restore(path)
    if resume and not exists:
        raise UsageError(f"--resume: no experiment to resume at {path}")
    if not resume and exists:
        raise UsageError(f"experiment {path} exists: continue it with --resume, or choose "
                         "another --name")
    if resume:
        fs, root = open_storage(storage)
        try:
            started = read_json(fs, f"{root}/{space.name}/sweep.json")
        except FileNotFoundError:
            raise UsageError(f"--resume: {path}/sweep.json is missing") from None
        now = json.loads(json.dumps(to_json(space)))
        for key in RESUME_KEYS:
            if now.get(key) != started.get(key):
                raise UsageError(f"--resume: {key} differs from the experiment's ("
                                 f"{_short(now.get(key))} vs {_short(started.get(key))}): "
                                 "pass the space and overrides it was started with")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def finish(sweep: SweepResult, space: Space, resume_command: str, report: bool) -> int:
    """Print the outcome and the best config, build the report; the exit code."""
    counts: dict[str, int] = {}
    for t in sweep.trials.values():
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    summary = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(counts.items()))
    print(f"sweep {space.name}: {summary}")
    if not sweep.finished:
        print(f"interrupted; continue with: {resume_command}")
        return 130
    best = best_trial(sweep.results, space)
    if best is None:
        diverged = sum(t["status"] == "diverged" for t in sweep.trials.values())
        print(f"no trial converged: none reported a finite {space.metric} without diverging "
              f"({diverged} of {len(sweep.trials)} diverged); no best config")
    else:
        path, value, config = best
        print(f"best {space.metric} {value:.4g} in {path}")
        print("best config: " + ", ".join(f"{p.name}={config[p.name]!r}" for p in space.params
                                          if p.name in config and p.active(config)))
    print(f"results: {sweep.path}")
    if report:
        return build_report(sweep.path)
    return 0


def best_trial(results: Iterable[Any], space: Space) -> Optional[tuple[str, float, dict]]:
    """(trial path, best value over its history, config) of the best trial that did not
    diverge, if any: a diverged trial's 0 dB (or its values before diverging) is no result."""
    better = max if space.mode == "max" else min
    found = []
    for result in results:
        history = result.metrics_dataframe
        if history is None or space.metric not in history or _diverged(result):
            continue
        values = [float(v) for v in history[space.metric] if math.isfinite(v)]
        if values:
            found.append((result.path, better(values), result.config))
    return better(found, key=lambda item: item[1]) if found else None


def _diverged(result: Any) -> bool:
    """Whether a Tune result's last row or any row of its history is flagged diverged."""
    flags = result.metrics_dataframe.get("diverged")
    return bool((result.metrics or {}).get("diverged")) or (
        flags is not None and bool(flags.fillna(False).astype(bool).any()))


def build_report(exp_path: str) -> int:
    """analysis.report.build_report(exp_path) when that module exists; 1 if it fails."""
    if importlib.util.find_spec("analysis.report") is None:
        print("warning: analysis.report is not available; no report built", file=sys.stderr)
        return 0
    if exp_path.startswith("file://"):
        exp_path = exp_path[len("file://"):]
    elif "://" in exp_path:
        print(f"warning: no report for remote storage: copy {exp_path} to a local directory "
              "and run analysis.report.build_report on it", file=sys.stderr)
        return 0
    from analysis.report import build_report as build
    try:
        out = build(exp_path)
    except Exception as e:  # the sweep's results stay valid; say what failed and exit 1
        print(f"warning: the report failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if out:
        print(f"report: {out}")
    return 0


# --- the sweep ---------------------------------------------------------------------------------

def run_sweep(space: Space, *, resources: Any, trainable: Optional[Callable] = None,
              storage: str = "ray_results", resume: bool = False,
              table_every_s: float = TABLE_EVERY_S, data: Optional[str] = None) -> SweepResult:
    """Run (or resume) the sweep on the connected Ray cluster; returns when it ends or is
    interrupted (Ctrl-C). `resources`: a search.cluster.TrialResources; `data`: the dataset
    root trials read (default: the space's)."""
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from search.progress import open_storage, read_json, trial_dirname, trial_name, write_json
    from search.searcher import JOURNAL

    quiet_tune()
    if trainable is None:
        from cvae.trainable import train_cvae as trainable
    storage = storage_root(storage)
    fs, root = open_storage(storage)
    path = f"{storage}/{space.name}"
    fs_path = f"{root}/{space.name}"
    wrapped = tune.with_resources(trainable, {"cpu": resources.cpu, "gpu": resources.gpu})

    journal, remote = journal_path(storage, space.name), "://" in storage
    if not resume:  # a new sweep starts a new study, whatever a failed start left
        Path(journal).unlink(missing_ok=True)
    if resume:
        if remote:  # the study's journal continues from the uploaded copy
            download(fs, f"{fs_path}/{JOURNAL}", journal)
        tuner = Tuner.restore(path, trainable=wrapped, resume_unfinished=True,
                              resume_errored=True)
        sweep_json = read_json(fs, f"{fs_path}/sweep.json")
    else:
        searcher, scheduler, callback = components(space, table_every_s, journal=journal,
                                                   upload_journal=remote)
        limited = (tune.search.ConcurrencyLimiter(searcher, max_concurrent=space.max_concurrent)
                   if space.max_concurrent else searcher)
        param_space = {**trial_config(space, {}), **resources.config()}
        if data is not None:
            param_space["data"] = data
        tuner = Tuner(
            wrapped, param_space=param_space,
            tune_config=TuneConfig(search_alg=limited, scheduler=scheduler,
                                   num_samples=space.num_samples,
                                   trial_name_creator=trial_name,
                                   trial_dirname_creator=trial_dirname),
            run_config=RunConfig(
                name=space.name, storage_path=storage, verbose=0,
                checkpoint_config=CheckpointConfig(num_to_keep=NUM_TO_KEEP,
                                                   checkpoint_score_attribute=space.metric,
                                                   checkpoint_score_order=space.mode),
                failure_config=FailureConfig(max_failures=MAX_FAILURES),
                callbacks=[callback, JsonLoggerCallback(), CSVLoggerCallback()]))
        sweep_json = {**to_json(space), "started": _now(), "finished": False,
                      "wall_time_s": None, "trial_resources": dataclasses.asdict(resources)}
    write_json(fs, f"{fs_path}/sweep.json", sweep_json)

    start = time.monotonic()
    results = tuner.fit()
    trials = _read_trials(fs, f"{fs_path}/trials.json")
    finished = (len(trials) >= sweep_json["num_samples"]
                and all(t["status"] not in ("running", "pending") for t in trials.values()))
    sweep_json["wall_time_s"] = (sweep_json.get("wall_time_s") or 0.0) + time.monotonic() - start
    sweep_json["finished"] = finished
    write_json(fs, f"{fs_path}/sweep.json", sweep_json)
    return SweepResult(path=path, results=results, finished=finished, trials=trials)


def quiet_tune() -> None:
    """Tune's output and logging settings of the launcher (TUNE_ENV, QUIET_LOGGERS)."""
    for key, value in TUNE_ENV.items():
        os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def journal_path(storage: str, name: str) -> str:
    """The local file holding the sweep's Optuna study: in the experiment directory, or for
    remote storage in a local folder whose journal the callback uploads at every flush."""
    from search.searcher import JOURNAL

    if "://" not in storage:
        return f"{storage}/{name}/{JOURNAL}"
    return str(Path(tempfile.gettempdir()) / "cvae-sweeps" / name / JOURNAL)


def download(fs: Any, src: str, dst: str) -> None:
    """Copy a file from the experiment's filesystem to a local path, if it exists there."""
    import pyarrow.fs

    if fs.get_file_info(src).type != pyarrow.fs.FileType.File:
        return
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(src) as f:
        Path(dst).write_bytes(f.readall())


def components(space: Space, table_every_s: float = TABLE_EVERY_S,
               journal: Optional[str] = None, upload_journal: bool = False):
    """(searcher, scheduler, callback) of a new sweep; `journal`: the Optuna study's journal
    file (None: in memory), uploaded by the callback when `upload_journal`.

    Metric wiring: TuneConfig gets no metric/mode (Tune refuses a scheduler that has its own
    when TuneConfig sets them); ASHA ranks on the scheduler metric (val_psnr_best under
    scheduler_metric "best", val_psnr under "last"), Optuna gets that metric as intermediate
    values and the best val_psnr of a full-length trial as its value, and the launcher picks the
    best config by the best val_psnr over each trial's history.
    """
    from search.progress import SweepCallback
    from search.scheduler import SweepScheduler
    from search.searcher import SweepSearcher, make_sampler

    rank_on = scheduler_metric(space)
    searcher = SweepSearcher(define_by_run(space), metric=space.metric, mode=space.mode,
                             report_metric=rank_on, max_t=space.asha["max_t"],
                             sampler=make_sampler(space.seed, space.num_samples),
                             points_to_evaluate=space.points_to_evaluate or None,
                             journal=journal)
    scheduler = SweepScheduler(metric=rank_on, mode=space.mode, max_t=space.asha["max_t"],
                               grace_period=space.asha["grace_period"],
                               reduction_factor=space.asha["reduction_factor"],
                               brackets=space.asha["brackets"])
    callback = SweepCallback(searched=[p.name for p in space.params], metric=space.metric,
                             when={p.name: p.when for p in space.params if p.when},
                             mode=space.mode, max_t=space.asha["max_t"], searcher=searcher,
                             scheduler=scheduler, table_every_s=table_every_s,
                             journal_copy=journal if upload_journal else None)
    scheduler.after_save = callback.flush
    return searcher, scheduler, callback


def scheduler_metric(space: Space) -> str:
    """The metric ASHA ranks trials on at its rungs."""
    return f"{space.metric}_best" if space.scheduler_metric == "best" else space.metric


def _read_trials(fs: Any, path: str) -> dict[str, dict]:
    from search.progress import read_json
    try:
        return read_json(fs, path)
    except FileNotFoundError:
        return {}


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


if __name__ == "__main__":
    sys.exit(main())
