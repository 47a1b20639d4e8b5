"""The end of a sweep: the outcome in a few lines, the best configuration, the report.

The best configuration is that of the trial with the best value of the metric over its history,
among the trials that did not diverge (a diverged trial's 0 dB, or its values before diverging,
are no result). The report is analysis.report's, built from the experiment directory.
"""
from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from search.space import Space


@dataclass
class SweepResult:
    path: str  # experiment directory (local path or URI)
    results: Any  # ray.tune.ResultGrid
    finished: bool  # every trial ended (False: interrupted, resume with --resume)
    trials: dict[str, dict]  # trials.json


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
