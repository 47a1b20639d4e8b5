"""A sweep from a validated space to its results: Ray, the Tuner and its parts, the confirmation.

`launch` connects to Ray (a local instance, a cluster at an address, or the cluster of the Ray
Job it runs in), sizes the trials (`search.cluster`), runs or resumes the Tuner (`run_sweep`:
Optuna TPE from `search.searcher`, ASHA from `search.scheduler`, the live output and experiment
files from `search.progress`, Tune's JSON, CSV and TensorBoard loggers), confirms the best
configuration with several seeds when the space asks for it (`search.confirm`) and prints the
outcome (`search.outcome`). `search.run` is its command line.

Metric wiring: TuneConfig gets no metric/mode (Tune refuses a scheduler that has its own when
TuneConfig sets them); ASHA ranks on the scheduler metric (val_psnr_best under scheduler_metric
"best", val_psnr under "last"), Optuna gets that metric as intermediate values and the best
val_psnr of a full-length trial as its value, and the launcher picks the best config by the best
val_psnr over each trial's history.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from search import cluster as clusters
from search import orphans
from search import ray_internals as internals
from search.outcome import SweepResult, finish
from search.progress import SweepCallback, trial_dirname, trial_name
from search.scheduler import SweepScheduler
from search.searcher import JOURNAL, SweepSearcher, make_sampler
from search.space import Space, define_by_run, describe, to_json, trial_config
from search.storage import UsageError, download, open_storage, read_json, short, storage_root
from search.storage import write_json

MAX_FAILURES = 2  # retries of a trial whose worker died or raised, from its latest checkpoint
NUM_TO_KEEP = 2  # checkpoints kept per trial: the best by the metric (the latest always stays)
TABLE_EVERY_S = 60.0  # seconds between compact progress tables
# Tune's output and logging settings (read when a sweep starts; set only when unset):
TUNE_ENV = {
    **internals.LEGACY_OUTPUT_ENV,  # silent with verbose=0: the launcher prints its own lines
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # the launcher adds JSON, CSV and TensorBoard
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",  # SweepCallback prints one line per failure
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # num_to_keep saves
}
# Ray loggers whose warnings the launcher replaces with its own lines: "interrupted, resume with
# Tuner.restore(...)" (we print the command line), "failed to fetch metrics" of trials that had
# not started when a sweep was interrupted.
QUIET_LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")
# sweep.json keys that must match when resuming (the restored experiment keeps its settings).
RESUME_KEYS = ("metric", "mode", "scheduler_metric", "num_samples", "epochs", "searched", "base",
               "seed", "max_concurrent", "points_to_evaluate", "asha")


@dataclass
class Dashboard:
    """The Ray dashboard of a local instance."""

    enabled: bool = True
    host: str = "127.0.0.1"  # reach it from elsewhere through an SSH tunnel
    port: int = 8265  # Ray picks another when it is taken


def launch(space: Space, storage: str, *, resume_command: str, address: Optional[str] = None,
           resume: bool = False, dashboard: Dashboard = Dashboard(),
           allow_unauthenticated: bool = False, report: bool = True,
           trainable: Optional[Callable] = None) -> int:
    """Run (or `resume`) the sweep of `space` into `storage` and report on it; the exit code
    (0 done, 1 the report or a confirmation run failed, 2 nothing started, 130 interrupted).
    `address`: a cluster to join (default $RAY_ADDRESS; inside a Ray Job, the job's cluster),
    else a local instance is started; `trainable` replaces cvae.trainable.train_cvae (tests)."""
    from cvae.data import DataError

    print(describe(space), flush=True)
    job = internals.job_submission_id()
    joined = address or os.environ.get("RAY_ADDRESS")
    if job is not None:  # the job's driver: its cluster, whose code it already runs
        print(f"ray: running as Ray job {job or '(no submission id)'}; joining its cluster")
        joined = joined or "auto"
    data = space.base.get("data")
    if trainable is None and not (joined or resume):
        try:  # a local CVAE sweep: the data is prepared here, once (on clusters, by each node)
            data = prepare_data(data, skip_bad=bool(space.base.get("skip_bad")), base=space.base)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    for line in orphans.end_orphans():  # of local instances whose launcher was killed
        print(line, flush=True)
    try:
        ray_cluster = clusters.connect(joined, dashboard=dashboard.enabled,
                                       dashboard_host=dashboard.host,
                                       dashboard_port=dashboard.port,
                                       allow_unauthenticated=allow_unauthenticated
                                       or job is not None)
    except clusters.ConnectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        where = "started a local Ray instance" if ray_cluster.started else "joined"
        res = ray_cluster.resources
        print(f"ray: {where} at {ray_cluster.address} ({res.get('CPU', 0):g} CPUs, "
              f"{res.get('GPU', 0):g} GPUs)")
        if joined and not ray_cluster.started and ray_cluster.auth_mode != "token":
            print(f"warning: token authentication is {ray_cluster.auth_mode or 'unknown'} on "
                  "this cluster (--allow-unauthenticated-cluster)", file=sys.stderr)
        print(clusters.dashboard_help(ray_cluster, requested=dashboard.enabled), flush=True)
        try:
            running = clusters.concurrency(space.num_samples, space.max_concurrent,
                                           space.resources["cpu"], ray_cluster)
            resources = clusters.trial_resources(space.resources["cpu"], space.resources["gpu"],
                                                 ray_cluster, running)
        except clusters.ResourceError as e:
            print(f"error: {space.path}: {e}", file=sys.stderr)
            return 2
        print(resources.describe(), flush=True)
        sweep = run_sweep(space, trainable=trainable, storage=storage, resources=resources,
                          resume=resume, data=data)
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
    return finish(sweep, space, resume_command, report=report) or confirmed


def prepare_data(data: Optional[str], skip_bad: bool = False,
                 base: Optional[dict[str, Any]] = None) -> str:
    """Generate the synthetic data (when no data is given) and decode the training and
    validation splits once in the driver, so that concurrent trials find them ready instead
    of all building them at once (`skip_bad`: bad sequences are listed, not fatal). `base`:
    the space's fixed config, whose task (and preset) says which data (default: bair).
    Returns the dataset root the trials use."""
    from cvae.config import from_dict
    from cvae.tasks import prepare_data as prepare

    fixed = {k: v for k, v in (base or {}).items() if k != "preset"}
    root = prepare(from_dict({**fixed, "data": data, "skip_bad": skip_bad}), quiet=True)
    print(f"data: {root}", flush=True)
    return root


def check_experiment(storage: str, space: Space, resume: bool) -> None:
    """A new sweep must not overwrite an experiment; --resume needs one started with the same
    space and overrides (raises UsageError)."""
    from ray.tune import Tuner

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
                                 f"{short(json.dumps(now.get(key)))} vs "
                                 f"{short(json.dumps(started.get(key)))}): "
                                 "pass the space and overrides it was started with")


def run_sweep(space: Space, *, resources: Any, trainable: Optional[Callable] = None,
              storage: str = "ray_results", resume: bool = False,
              table_every_s: float = TABLE_EVERY_S, data: Optional[str] = None) -> SweepResult:
    """Run (or resume) the sweep on the connected Ray cluster; returns when it ends or is
    interrupted (Ctrl-C). `resources`: a search.cluster.TrialResources; `data`: the dataset
    root trials read (default: the space's)."""
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner

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
                callbacks=[callback, *result_loggers()]))
        sweep_json = {**to_json(space), "started": _now(), "finished": False,
                      "wall_time_s": None, "trial_resources": dataclasses.asdict(resources)}
    write_json(fs, f"{fs_path}/sweep.json", sweep_json)

    start = time.monotonic()
    results = tuner.fit()
    try:
        trials = read_json(fs, f"{fs_path}/trials.json")
    except FileNotFoundError:
        trials = {}
    finished = (len(trials) >= sweep_json["num_samples"]
                and all(t["status"] not in ("running", "pending") for t in trials.values()))
    sweep_json["wall_time_s"] = (sweep_json.get("wall_time_s") or 0.0) + time.monotonic() - start
    sweep_json["finished"] = finished
    write_json(fs, f"{fs_path}/sweep.json", sweep_json)
    return SweepResult(path=path, results=results, finished=finished, trials=trials)


def result_loggers() -> list:
    """Tune's per-trial result files: result.json, progress.csv and, when tensorboardX is
    installed, TensorBoard event files (every numeric result per epoch; the searched
    hyperparameters with the final metrics in the HParams view when the trial ends)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    loggers = [JsonLoggerCallback(), CSVLoggerCallback()]
    if importlib.util.find_spec("tensorboardX") is not None:
        from ray.tune.logger import TBXLoggerCallback
        loggers.append(TBXLoggerCallback())
    return loggers


def quiet_tune() -> None:
    """Tune's output and logging settings of the launcher (TUNE_ENV, QUIET_LOGGERS)."""
    for key, value in TUNE_ENV.items():
        os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def journal_path(storage: str, name: str) -> str:
    """The local file holding the sweep's Optuna study: in the experiment directory, or for
    remote storage in a local folder whose journal the callback uploads at every flush."""
    if "://" not in storage:
        return f"{storage}/{name}/{JOURNAL}"
    return str(Path(tempfile.gettempdir()) / "cvae-sweeps" / name / JOURNAL)


def components(space: Space, table_every_s: float = TABLE_EVERY_S,
               journal: Optional[str] = None, upload_journal: bool = False):
    """(searcher, scheduler, callback) of a new sweep; `journal`: the Optuna study's journal
    file (None: in memory), uploaded by the callback when `upload_journal`."""
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


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")
