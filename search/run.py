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
its latest checkpoint up to MAX_FAILURES times (`search.launcher`).

Multi-node use and the dashboard: see `search.cluster`; submitted as a Ray Job (`ray job submit
... -- python -m search.run ...`), the launcher joins the job's cluster (docs/monitoring.md).
This module is the command line only: it turns flags into a validated space and explicit
arguments of `search.launcher.launch`.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import shlex
import sys
from typing import Callable, Optional, Sequence

from cvae.arguments import integer, one_line_parser
from cvae.config import PRESETS
from search.space import Space, SpaceError, load_space
from search.storage import UsageError, check_storage, storage_root


def build_parser() -> argparse.ArgumentParser:
    p = one_line_parser(UsageError, prog="python -m search.run",
                        description=__doc__.split("\n\n")[0],
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="Exit codes: 0 done; 1 the report failed; 2 a usage, space-file or "
                               "resource error (nothing started); 130 interrupted (continue with "
                               "--resume).\nExample: python -m search.run --space spaces/smoke.yaml")
    p.add_argument("--space", required=True, metavar="FILE",
                   help="search space YAML file (spaces/*.yaml)")
    p.add_argument("--num-samples", type=integer(minimum=1), metavar="N",
                   help="number of trials (overrides num_samples)")
    p.add_argument("--data", metavar="DIR",
                   help="dataset root in the task's layout: BAIR, the dance lab's, or MNIST in "
                        "torchvision's (overrides base.data; default: the space's, else the "
                        "embedded synthetic data)")
    p.add_argument("--preset", metavar="NAME",
                   help="config preset, which also picks the task: " + ", ".join(PRESETS)
                        + " (overrides base.preset)")
    p.add_argument("--epochs", type=integer(minimum=1), metavar="N",
                   help="epochs per trial, ASHA's max_t (overrides base.epochs)")
    p.add_argument("--gpus-per-trial", metavar="X|auto",
                   help="GPU per trial: a fraction (0.25 = four trials share a GPU), a whole "
                        "number, 0 for CPU, or auto (GPUs when the cluster has them) "
                        "(overrides resources.gpu)")
    p.add_argument("--max-concurrent", type=integer(minimum=1), metavar="N",
                   help="at most N trials at a time (overrides max_concurrent)")
    p.add_argument("--name", help="experiment name, the directory under --storage "
                                  "(default: the space's name)")
    p.add_argument("--seed", type=integer(), metavar="S",
                   help="TPE sampler seed (overrides seed)")
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
    p.add_argument("--dashboard-port", type=integer(1, 65535, "a port number 1-65535"),
                   default=8265, metavar="P",
                   help="dashboard port (default 8265; Ray picks another if it is taken)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out (and list) sequences that fail the data checks instead of "
                        "stopping: skip_bad in every trial's config (overrides base.skip_bad)")
    p.add_argument("--no-report", action="store_true",
                   help="skip the analysis report at the end (analysis.report.build_report)")
    return p


def space_from_args(args: argparse.Namespace) -> Space:
    """The validated space with the command-line overrides applied (raises SpaceError)."""
    overrides = {"num_samples": args.num_samples, "seed": args.seed, "name": args.name,
                 "preset": args.preset, "epochs": args.epochs, "data": args.data,
                 "gpu": args.gpus_per_trial, "skip_bad": True if args.skip_bad else None}
    space = load_space(args.space, overrides)
    if args.max_concurrent is not None:
        space = dataclasses.replace(space, max_concurrent=args.max_concurrent)
    return space


def main(argv: Optional[Sequence[str]] = None,
         trainable: Optional[Callable[[dict], None]] = None) -> int:
    """Command-line entry point; `trainable` replaces cvae.trainable.train_cvae (tests)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if not (args.address or os.environ.get("RAY_ADDRESS")):
            from search.cluster import keep_local_ray_on_loopback
            keep_local_ray_on_loopback()  # before anything imports ray
        from search import launcher
        space = space_from_args(args)
        storage = storage_root(args.storage)
        check_storage(storage)
        launcher.check_experiment(storage, space, args.resume)
    except (UsageError, SpaceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in space.warnings:
        print(f"warning: {note}", file=sys.stderr)
    resume_command = shlex.join(["python", "-m", "search.run", *argv]) + (
        "" if args.resume else " --resume")
    try:
        return launcher.launch(
            space, storage, resume_command=resume_command, address=args.address,
            resume=args.resume, allow_unauthenticated=args.allow_unauthenticated_cluster,
            dashboard=launcher.Dashboard(not args.no_dashboard, args.dashboard_host,
                                         args.dashboard_port),
            report=not args.no_report, trainable=trainable)
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


if __name__ == "__main__":
    sys.exit(main())
