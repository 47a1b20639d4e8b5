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
run's final checkpoint is scored on the test split (cvae.evaluate, the task's test protocol;
kept in the run's test_metrics.json), and `confirm.json` holds every run's final val_psnr and test
PSNR, per level the mean and 95% confidence interval over seeds and the pairwise Welch tests with
Holm correction (analysis.stats). The sweep's report (analysis.report) shows them.

`search.run` calls `confirm_sweep` at the end of a sweep whose space file has a `confirm:`
section ({seeds, factor, levels, top_k, epochs}).

The library is split by job: `search.confirm_plan` (which runs: Plan, Run, make_plan),
`search.confirm_runs` (running them on Ray Tune, scoring each on the test split, `confirm` and
`confirm_sweep`), `search.confirm_results` (run states, confirm.json, the terminal summary). This
module is the command line only: it turns flags into explicit arguments of those.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Callable, Optional, Sequence

from analysis import stats
from cvae.arguments import integer, one_line_parser
from search.confirm_plan import DEFAULT_FACTOR, DEFAULT_SEEDS, ConfirmError, Plan, make_plan
from search.confirm_results import final_checkpoint, latent_statistics, run_state, summarize
from search.confirm_runs import confirm, confirm_sweep

# the library's entry points, importable from here as before the split
__all__ = ["confirm", "confirm_sweep", "final_checkpoint", "latent_statistics", "main",
           "make_plan", "run_state", "summarize"]


def build_parser() -> argparse.ArgumentParser:
    p = one_line_parser(ConfirmError, prog="python -m search.confirm",
                        description=__doc__.split("\n\n")[0],
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
    p.add_argument("--top-k", type=integer(minimum=1), default=1, metavar="K",
                   help="confirm each of the K best configurations (default: 1)")
    p.add_argument("--seeds", type=integer(minimum=1), default=DEFAULT_SEEDS, metavar="S",
                   help=f"seeds per level (default: {DEFAULT_SEEDS})")
    p.add_argument("--epochs", type=integer(minimum=1), metavar="N",
                   help="epochs per run (default: the sweep's)")
    p.add_argument("--best-of", type=integer(minimum=0), default=0, metavar="N",
                   help="also score each run's best of N prior samples per test sequence by "
                        "SSIM (SVG's protocol) against one sample, on its first 32 sequences "
                        "(default: 0, off)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="fixed",
                   help="config values set in every run, e.g. beta_max=1e-5: the best "
                        "configuration confirmed at another KL weight (its own directory, "
                        "confirm-<factor>-<key>=<value>)")
    p.add_argument("--data", metavar="DIR",
                   help="dataset root in the task's layout (default: the sweep's)")
    p.add_argument("--max-concurrent", type=integer(minimum=1), metavar="N",
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
        fixed = {}
        for item in args.fixed:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfirmError(f"--set {item}: expected KEY=VALUE")
            fixed[key.strip()] = value
        plan = make_plan(args.experiment, factor=args.factor, levels=args.levels,
                         top_k=args.top_k, seeds=args.seeds, epochs=args.epochs, data=args.data,
                         best_of=args.best_of, fixed=fixed)
    except ConfirmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run in plan.runs:
            print(f"{run.name}: " + json.dumps(run.config, sort_keys=True))
        return 0
    again = shlex.join(["python", "-m", "search.confirm", *argv])
    try:
        code = _launch(plan, trainable, address=args.address,
                       max_concurrent=args.max_concurrent, ci_method=args.ci, debug=args.debug)
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


def _launch(plan: Plan, trainable: Optional[Callable], *, address: Optional[str],
            max_concurrent: Optional[int], ci_method: str, debug: bool) -> int:
    """Prepare the data (a local run with the real trainable), connect to Ray, confirm."""
    from cvae.data import DataError
    from search import cluster as clusters
    from search.launcher import prepare_data

    if trainable is None and not (address or os.environ.get("RAY_ADDRESS")):
        config = plan.runs[0].config if plan.runs else {}
        try:  # decoded once here rather than by every run at once, for the runs' task
            root = prepare_data(config.get("data"), skip_bad=bool(config.get("skip_bad")),
                                base=config)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for run in plan.runs:
            run.config["data"] = root
    try:
        ray_cluster = clusters.connect(address, dashboard=False)
    except clusters.ConnectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return confirm(plan, ray_cluster, trainable=trainable, max_concurrent=max_concurrent,
                       ci_method=ci_method, debug=debug)
    except clusters.ResourceError as e:
        print(f"error: {plan.experiment / 'sweep.json'}: {e}", file=sys.stderr)
        return 2
    finally:
        if ray_cluster.started:
            import ray
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
