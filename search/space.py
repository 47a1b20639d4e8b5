"""Search spaces: one YAML file per sweep, validated against `cvae.config.Config`.

A space file fixes a base config (a preset plus field overrides), lists the searched Config
fields with their distributions, and holds the Tune settings (metric, ASHA, resources). Every
mistake is reported as one line naming the file and the key:
`<file>: <key path>: <problem> (got <value>; expected <what>)`. Files over MAX_BYTES, YAML
aliases expanding beyond MAX_NODES values and duplicate keys are refused before anything is
built.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Union

from search.space_checks import Invalid, fail
from search.space_schema import METRICS, TYPES, Param, Space, build, override, point_values
from search.space_yaml import read_yaml

if TYPE_CHECKING:
    import optuna

__all__ = ["METRICS", "TYPES", "Param", "Space", "SpaceError", "define_by_run", "describe",
           "load_space", "to_json", "trial_config", "validate_point"]


class SpaceError(Exception):
    """An invalid space file or override; the message is one line naming the file and key."""


def load_space(path: Union[str, Path], overrides: Optional[dict[str, Any]] = None) -> Space:
    """Read and validate a space file; `overrides` (CLI values, None = not given) apply first."""
    with errors_in(path):
        raw = read_yaml(Path(path))
        if not isinstance(raw, dict):
            fail("top level", "not a mapping", raw, "a mapping of sweep settings")
        return build(override(raw, overrides or {}), str(path))


def define_by_run(space: Space) -> Callable[[optuna.trial.Trial], None]:
    """A define-by-run function for search.searcher: suggests each active param in order.

    It only calls `trial.suggest_*` and returns None (no constants: trial_config adds the base).
    """
    def define(trial: optuna.trial.Trial) -> None:
        chosen: dict[str, Any] = {}
        for param in space.params:
            if param.active(chosen):
                chosen[param.name] = param.suggest(trial)

    return define


def trial_config(space: Space, searched: dict[str, Any]) -> dict[str, Any]:
    """The flat config of one trial: the fixed base (without `preset`) plus searched values."""
    return {**{k: v for k, v in space.base.items() if k != "preset"}, **searched}


def validate_point(space: Space, point: Any, key: str = "point") -> dict[str, Any]:
    """A starting point (partial dict of searched values) checked against the space; values are
    converted to the fields' types. `key` names the point in errors."""
    with errors_in(space.path):
        return point_values(space.params, point, key)


def describe(space: Space) -> str:
    """A few lines for the launcher to print at start."""
    asha = space.asha
    cpu, gpu = space.resources["cpu"], space.resources["gpu"]
    lines = [
        f"sweep {space.name} ({space.path}): {space.num_samples} trials, {space.mode}imize "
        f"{space.metric}, TPE seed {space.seed}",
        f"fixed: preset {space.base['preset']}, epochs {asha['max_t']}, "
        f"data {space.base.get('data') or 'embedded synthetic'}",
        f"ASHA on {'best-so-far ' if space.scheduler_metric == 'best' else ''}{space.metric}: "
        f"grace {asha['grace_period']}, reduction {asha['reduction_factor']}, "
        f"brackets {asha['brackets']}, max_t {asha['max_t']}",
        f"per trial: cpu {cpu:g}, gpu {gpu if gpu == 'auto' else format(gpu, 'g')}; "
        + (f"{space.max_concurrent} trials at a time" if space.max_concurrent
           else "as many trials at a time as resources allow"),
    ]
    width = max(len(p.name) for p in space.params)
    for p in space.params:
        if p.type == "categorical":
            dist = "categorical " + " | ".join(map(str, p.choices or []))
        else:
            extras = (f" step {p.step}" if p.step else "") + (" log" if p.log else "")
            dist = f"{p.type} {p.low} .. {p.high}{extras}"
        cond = "".join(f"  when {k} in {' | '.join(map(str, v))}" for k, v in p.when.items())
        lines.append(f"  {p.name:<{width}}  {dist}{cond}")
    lines.append(f"starting points: {len(space.points_to_evaluate)}")
    return "\n".join(lines)


def to_json(space: Space) -> dict[str, Any]:
    """Plain data for sweep.json."""
    return {
        "name": space.name, "space_file": space.path, "metric": space.metric,
        "mode": space.mode, "scheduler_metric": space.scheduler_metric,
        "num_samples": space.num_samples, "epochs": space.asha["max_t"],
        "searched": {p.name: p.spec() for p in space.params}, "base": dict(space.base),
        "seed": space.seed, "max_concurrent": space.max_concurrent,
        "points_to_evaluate": space.points_to_evaluate, "asha": dict(space.asha),
        "resources": dict(space.resources), "confirm": space.confirm,
    }


@contextmanager
def errors_in(path: Union[str, Path]) -> Iterator[None]:
    try:
        yield
    except Invalid as e:
        raise SpaceError(f"{path}: " + " ".join(str(e).splitlines())) from None
