"""What a confirmation runs (search.confirm): the best configurations of a finished sweep, the
factor's levels and the seeds, as a grid of (configuration, level, seed) runs.

Only the factor changes between the runs of a configuration. Its conditional parameters (those
whose `when` names it, e.g. kl_anneal_cycle for the cyclical modes) come from the best sweep
trial of that level when there is one, else from the configuration itself; parameters inactive
at a level return to the sweep's base value. Every run's config is checked by cvae.config.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from analysis.results import Experiment, ExperimentError, load_experiment
from cvae.config import KL_ANNEAL_MODES, coerce, field_names, from_dict

DEFAULT_FACTOR = "kl_anneal"
DEFAULT_SEEDS = 3
NOT_FACTORS = ("seed", "device", "threads", "gpu_memory_fraction", "data")  # set by confirm


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
    best_of: int = 0  # > 1: also score SVG's best of this many prior samples per sequence
    fixed: dict[str, Any] = field(default_factory=dict)  # config values set in every run

    @property
    def directory(self) -> Path:
        """confirm-<factor>, and -<key>=<value> for each fixed value (its own experiment)."""
        return self.experiment / _slug("-".join([f"confirm-{self.factor}",
                                                 *(f"{k}={v}" for k, v in self.fixed.items())]))

    def run_dir(self, run: Run) -> Path:
        return self.directory / run.name


def make_plan(exp_dir: Path | str, factor: str = DEFAULT_FACTOR,
              levels: Optional[Sequence[Any]] = None, top_k: int = 1,
              seeds: int = DEFAULT_SEEDS, epochs: Optional[int] = None,
              data: Optional[str] = None, best_of: int = 0,
              fixed: Optional[dict[str, Any]] = None) -> Plan:
    """The runs of a confirmation of the sweep in `exp_dir` (raises ConfirmError); `fixed`
    config values replace the sweep's in every run (the best configuration at another KL
    weight, say), in a directory of their own."""
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
    fixed = _fixed(factor, fixed or {})
    levels = _levels(exp, factor, levels)
    ranked = _ranked(exp)
    if ranked.empty:
        raise ConfirmError(f"{exp.path}: no trial reported a finite val_psnr without diverging")
    epochs = epochs or exp.epochs
    if best_of < 0:
        raise ConfirmError(f"--best-of {best_of}: expected an integer >= 0")
    plan = Plan(exp.path, exp.sweep, factor, levels, [], epochs, [], best_of=best_of,
                fixed=fixed)
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
            config.update(epochs=epochs, **fixed, **({"data": data} if data else {}))
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


def _fixed(factor: str, values: dict[str, Any]) -> dict[str, Any]:
    """`--set` values as the fields' types; neither the factor nor what confirm sets itself."""
    out = {}
    for key, value in values.items():
        if key not in field_names() or key in NOT_FACTORS or key == factor:
            raise ConfirmError(f"--set {key}={value}: expected a config key other than the "
                               f"factor ({factor}), seed and the resources")
        try:
            out[key] = coerce(key, value)
        except ValueError as e:
            raise ConfirmError(f"--set {key}={value}: {e}") from None
    return out


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
