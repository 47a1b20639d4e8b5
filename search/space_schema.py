"""The schema of a space file: what each section may hold (KEYS, with defaults), the types it
becomes (`Param`, `Space`) and `build`, which turns the file's mapping into a `Space`, checking
every value against cvae.config (search.space_checks). (Over 350 lines: the key table, the two
types and one short validator per section, kept together so that a key and its check are read
side by side.)
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from cvae.config import PRESETS, ConfigError, field_names, field_type, from_dict
from search.space_checks import (MISSING, check_field, check_keys, fail, field_value, gpu,
                                 integer, join_key, mapping, number_value, one_of, positive)

if TYPE_CHECKING:
    import optuna

METRICS = ("val_psnr", "val_ssim", "loss", "mse", "kld")  # per-epoch metrics fit reports
TYPES = ("loguniform", "uniform", "int", "categorical")

# Every key a space file may hold, by mapping, with its default (MISSING: required). Drives
# the unknown-key check, its "did you mean" suggestions and the defaults.
KEYS: dict[str, dict[str, Any]] = {
    "top": {"name": None, "metric": "val_psnr", "mode": "max", "scheduler_metric": "best",
            "num_samples": MISSING, "seed": 0, "max_concurrent": None, "base": {},
            "params": MISSING, "points_to_evaluate": [], "asha": {}, "resources": {},
            "confirm": None},
    "asha": {"grace_period": 1, "reduction_factor": 2, "brackets": 1},
    # multi-seed re-runs of the best configuration after the sweep (search.confirm)
    "confirm": {"seeds": 3, "factor": "kl_anneal", "levels": None, "top_k": 1, "epochs": None,
                "best_of": 0},
    "resources": {"cpu": 1, "gpu": 0},
    "loguniform": {"type": MISSING, "low": MISSING, "high": MISSING, "when": {}},
    "uniform": {"type": MISSING, "low": MISSING, "high": MISSING, "step": None, "when": {}},
    "int": {"type": MISSING, "low": MISSING, "high": MISSING, "step": None, "log": False,
            "when": {}},
    "categorical": {"type": MISSING, "choices": MISSING, "when": {}},
}
# Overrides load_space accepts (from the command line) and the key each one replaces.
OVERRIDES: dict[str, tuple[str, ...]] = {
    "num_samples": ("num_samples",), "seed": ("seed",), "name": ("name",),
    "preset": ("base", "preset"), "epochs": ("base", "epochs"), "data": ("base", "data"),
    "gpu": ("resources", "gpu"), "skip_bad": ("base", "skip_bad"),
}


@dataclass
class Param:
    """One searched Config field and its distribution."""

    name: str
    type: str  # one of TYPES
    low: Optional[Union[int, float]] = None
    high: Optional[Union[int, float]] = None
    step: Optional[Union[int, float]] = None
    log: bool = False  # int only; loguniform is always log
    choices: Optional[list[Any]] = None
    when: dict[str, list[Any]] = field(default_factory=dict)  # earlier categorical -> values

    def active(self, chosen: dict[str, Any]) -> bool:
        """Whether every `when` condition holds for the values chosen so far."""
        return all(chosen.get(parent, MISSING) in values for parent, values in self.when.items())

    def suggest(self, trial: optuna.trial.Trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1,
                                     log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step,
                                   log=self.type == "loguniform")

    def spec(self) -> dict[str, Any]:
        """The YAML form: type plus the keys that are set."""
        keys = {"low": self.low, "high": self.high, "step": self.step, "log": self.log or None,
                "choices": self.choices, "when": self.when or None}
        return {"type": self.type, **{k: v for k, v in keys.items() if v is not None}}


@dataclass
class Space:
    """A validated sweep: fixed base config, searched params and Tune settings."""

    name: str
    path: str
    metric: str
    mode: str  # max | min
    scheduler_metric: str  # best (ASHA on val_psnr_best) | last
    num_samples: int
    seed: int  # TPE sampler seed
    max_concurrent: Optional[int]  # None: as many trials as resources allow
    # Flat Config fields: PRESETS[preset] merged with the file's base, plus "preset" (the name
    # or None). A searched field's preset value is what a trial uses while its `when` fails.
    base: dict[str, Any]
    params: list[Param]
    points_to_evaluate: list[dict[str, Any]]
    asha: dict[str, int]  # grace_period, reduction_factor, brackets, max_t (= base epochs)
    resources: dict[str, Any]  # per trial: cpu (float), gpu (float or "auto")
    warnings: list[str] = field(default_factory=list)  # one-line notes for the launcher
    # search.confirm after the sweep: seeds, factor, levels (None: its default), top_k,
    # epochs (None: base epochs), best_of (> 1: SVG's best of N samples scored); None: none
    confirm: Optional[dict[str, Any]] = None


def section(mapping: dict[str, Any], schema: str, where: str) -> dict[str, Any]:
    """The mapping with unknown keys rejected and defaults filled in."""
    check_keys(mapping, KEYS[schema], where)
    values = {**KEYS[schema], **mapping}
    for key, value in values.items():
        if value is MISSING:
            fail(join_key(where, key), "required key missing")
    return values


def override(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The file's mapping with CLI overrides put in place (values are validated with the rest)."""
    check_keys(overrides, OVERRIDES, "overrides", noun="override")
    raw = dict(raw)
    for key, value in overrides.items():
        if value is None:
            continue
        *section, leaf = OVERRIDES[key]
        if section:
            raw[section[0]] = {**mapping(raw.get(section[0]) or {}, section[0]), leaf: value}
        else:
            raw[leaf] = value
    return raw


def build(raw: dict[str, Any], path: str) -> Space:
    top = section(raw, "top", "")
    name = top["name"] if top["name"] is not None else Path(path).stem
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        fail("name", "not a usable experiment name", name, "letters, digits, '_', '.', '-'")
    metric = one_of(top["metric"], "metric", METRICS)
    scheduler_metric = one_of(top["scheduler_metric"], "scheduler_metric", ("best", "last"))
    if scheduler_metric == "best" and metric != "val_psnr":
        fail("scheduler_metric", f"no best-so-far value is reported for {metric}",
             scheduler_metric, "'last' unless metric is val_psnr")
    explicit = mapping(top["base"], "base")
    base, fixed = base_config(explicit)
    max_t = fixed["epochs"]
    params = params_section(top["params"], explicit, fixed)
    notes = [f"{path}: {note}" for note in inert_values(params, max_t)]
    points = top["points_to_evaluate"] or []
    if not isinstance(points, list):
        fail("points_to_evaluate", "not a list", points, "a list of mappings")
    asha = section(mapping(top["asha"] or {}, "asha"), "asha", "asha")
    grace = integer(asha["grace_period"], "asha.grace_period", 1)
    if grace > max_t:
        fail("asha.grace_period", "longer than the run", grace, f"at most base epochs = {max_t}")
    resources = section(mapping(top["resources"] or {}, "resources"), "resources", "resources")
    return Space(
        name=name, path=path, metric=metric, mode=one_of(top["mode"], "mode", ("max", "min")),
        scheduler_metric=scheduler_metric,
        num_samples=integer(top["num_samples"], "num_samples", 1),
        seed=integer(top["seed"], "seed", 0),
        max_concurrent=(None if top["max_concurrent"] is None
                        else integer(top["max_concurrent"], "max_concurrent", 1)),
        base=base, params=params,
        points_to_evaluate=[point_values(params, p, f"points_to_evaluate[{i}]")
                            for i, p in enumerate(points)],
        asha={"grace_period": grace,
              "reduction_factor": integer(asha["reduction_factor"], "asha.reduction_factor", 2),
              "brackets": integer(asha["brackets"], "asha.brackets", 1), "max_t": max_t},
        resources={"cpu": positive(resources["cpu"], "resources.cpu"),
                   "gpu": gpu(resources["gpu"])},
        warnings=notes,
        confirm=confirm_section(top["confirm"], params, fixed),
    )


def confirm_section(raw: Any, params: list[Param],
                    fixed: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The `confirm` section: seeds >= 1, a Config field as factor (not seed), its levels
    converted to the field's type (required unless the factor is kl_anneal or a categorical
    parameter), top_k >= 1, epochs >= 1 or None."""
    if raw is None:
        return None
    values = section(mapping(raw, "confirm"), "confirm", "confirm")
    factor = values["factor"]
    if factor not in field_names() or factor == "seed":
        fail("confirm.factor", "not a factor", factor, "a field of cvae.config.Config "
             "other than seed")
    levels = values["levels"]
    if levels is not None:
        if not isinstance(levels, list) or not levels:
            fail("confirm.levels", "not a non-empty list", levels, f"values of {factor}")
        levels = [field_value(factor, v, "confirm.levels") for v in levels]
        for value in levels:
            check_field(fixed, factor, value, "confirm.levels")
    elif factor != "kl_anneal" and not any(p.name == factor and p.type == "categorical"
                                           for p in params):
        fail("confirm.levels", "required key missing", expected=f"the values of {factor} to "
             "compare (only kl_anneal and categorical parameters have default levels)")
    return {"seeds": integer(values["seeds"], "confirm.seeds", 1), "factor": factor,
            "levels": levels, "top_k": integer(values["top_k"], "confirm.top_k", 1),
            "epochs": (None if values["epochs"] is None
                       else integer(values["epochs"], "confirm.epochs", 1)),
            "best_of": integer(values["best_of"], "confirm.best_of", 0)}


def inert_values(params: list[Param], epochs: int) -> list[str]:
    """tfr_start_decay_epoch values >= epochs leave teacher forcing undecayed (the epoch is
    0-based): an error when every value of the range is inert, else a warning."""
    notes = []
    for p in params:
        if p.name != "tfr_start_decay_epoch":
            continue
        values = p.choices if p.type == "categorical" else [p.low, p.high]
        bound = "choices" if p.type == "categorical" else "high"
        if min(values) >= epochs:
            fail(f"params.{p.name}", "beyond the run: teacher forcing would never decay",
                 values, f"values below base epochs = {epochs}")
        if max(values) >= epochs:
            notes.append(f"params.{p.name}.{bound}: values >= base epochs = {epochs} never "
                         f"decay teacher forcing (got {max(values)})")
    return notes


def base_config(explicit: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(base with "preset", fixed Config fields) from the file's base mapping."""
    check_keys(explicit, ["preset", *field_names()], "base", noun="Config field",
               fallback="a field of cvae.config.Config or 'preset'")
    preset = explicit.get("preset")
    if preset is not None and (not isinstance(preset, str) or preset not in PRESETS):
        fail("base.preset", "unknown preset", preset, "one of " + ", ".join(PRESETS))
    fixed = dict(PRESETS.get(preset, {}))
    for key, value in explicit.items():
        if key != "preset":
            fixed[key] = field_value(key, value, f"base.{key}")
    try:
        fixed = from_dict(fixed).to_dict()
    except ConfigError as e:
        culprit, expected = e.key, e.expected
        where = f"base.{culprit}" if culprit in explicit else "base"
        fail(where, f"rejected by cvae.config for {culprit}", fixed.get(culprit), expected)
    base = {"preset": preset, **PRESETS.get(preset, {}),
            **{k: fixed[k] for k in explicit if k != "preset"}}
    return base, fixed


def params_section(raw: Any, explicit: dict[str, Any], fixed: dict[str, Any]) -> list[Param]:
    specs = mapping(raw, "params")
    if not specs:
        fail("params", "nothing to search", raw, "at least one parameter")
    check_keys(specs, field_names(), "params", noun="Config field",
               fallback="a field of cvae.config.Config")
    params: list[Param] = []
    for name, spec in specs.items():
        key = f"params.{name}"
        if name == "epochs":
            fail(key, "cannot be searched", spec, "a fixed base.epochs (ASHA's max_t)")
        if name in explicit:
            fail(key, "also set in base", explicit[name], "each field fixed in base or searched")
        spec = mapping(spec, key)
        kind = spec.get("type", MISSING)
        if kind not in TYPES:
            fail(f"{key}.type", "unknown distribution" if kind is not MISSING else "missing",
                 kind, "one of " + ", ".join(TYPES))
        for k in spec:
            if k not in KEYS[kind] and any(k in KEYS[t] for t in TYPES):
                fail(f"{key}.{k}", f"not allowed for type {kind}", spec[k],
                     "one of " + ", ".join(KEYS[kind]))
        spec = section(spec, kind, key)
        param = (categorical(name, spec["choices"], fixed, key) if kind == "categorical"
                 else numeric(name, kind, spec, fixed, key))
        param.when = when_section(spec["when"], params, list(specs), f"{key}.when")
        params.append(param)
    return params


def categorical(name: str, choices: Any, fixed: dict[str, Any], key: str) -> Param:
    key = f"{key}.choices"
    if not isinstance(choices, list) or not choices:
        fail(key, "not a non-empty list", choices, "a list of values for " + name)
    values: list[Any] = []
    for choice in choices:
        value = field_value(name, choice, key)
        if value in values:
            fail(key, "duplicate choice", choice, "distinct values")
        check_field(fixed, name, value, key)
        values.append(value)
    return Param(name, "categorical", choices=values)


def numeric(name: str, kind: str, spec: dict[str, Any], fixed: dict[str, Any],
            key: str) -> Param:
    want = field_type(name)
    if want not in (int, float) or (want is int and kind != "int"):
        fail(f"{key}.type", f"not usable for the {want.__name__} field {name}", kind,
             "int or categorical" if want is int else "categorical")
    integer = kind == "int"
    low = number_value(spec["low"], f"{key}.low", integer)
    high = number_value(spec["high"], f"{key}.high", integer)
    if low >= high:
        fail(f"{key}.low", "not below high", low, f"a value < high = {high}")
    if kind == "loguniform" and low <= 0:
        fail(f"{key}.low", "not positive (loguniform)", low, "a value > 0")
    step = spec.get("step")
    if step is not None:
        step = number_value(step, f"{key}.step", integer)
        if not 0 < step <= high - low:
            fail(f"{key}.step", "out of range", step, f"0 < step <= high - low = {high - low}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        fail(f"{key}.log", "not a boolean", log, "true or false")
    if log and low < 1:
        fail(f"{key}.low", "below 1 with log: true", low, "an integer >= 1")
    if log and step not in (None, 1):
        fail(f"{key}.step", "cannot be combined with log: true", step, "no step")
    for bound, value in (("low", low), ("high", high)):
        check_field(fixed, name, value, f"{key}.{bound}")
    return Param(name, kind, low=low, high=high, step=step, log=log)


def when_section(raw: Any, earlier: list[Param], names: list[str],
                 key: str) -> dict[str, list[Any]]:
    """Conditions on earlier categorical params: {param: [values that activate this one]}."""
    by_name = {p.name: p for p in earlier}
    when: dict[str, list[Any]] = {}
    for parent, values in mapping(raw or {}, key).items():
        if parent in names and parent not in by_name:
            fail(f"{key}.{parent}", "refers to a parameter not defined before this one", parent,
                 "an earlier categorical parameter")
        check_keys([parent], by_name, key, noun="parameter",
                   fallback="an earlier categorical parameter")
        choices = by_name[parent].choices
        if choices is None:
            fail(f"{key}.{parent}", "refers to a non-categorical parameter",
                 by_name[parent].type, "a categorical parameter")
        values = values if isinstance(values, list) else [values]
        if not values:
            fail(f"{key}.{parent}", "no values", values, "a value or list of values")
        when[parent] = []
        for value in values:
            value = field_value(parent, value, f"{key}.{parent}")
            if value not in choices:
                fail(f"{key}.{parent}", f"not among the choices of {parent}", value,
                     "one of " + ", ".join(map(str, choices)))
            when[parent].append(value)
    return when


def point_values(params: list[Param], point: Any, key: str) -> dict[str, Any]:
    by_name = {p.name: p for p in params}
    point = mapping(point, key)
    check_keys(point, by_name, key, noun="searched parameter")
    values: dict[str, Any] = {}
    for name, value in point.items():
        p, where = by_name[name], f"{key}.{name}"
        if p.type == "categorical":
            value = field_value(name, value, where)
            if value not in (p.choices or []):
                fail(where, "not among the choices", value,
                     "one of " + ", ".join(map(str, p.choices or [])))
        else:
            value = number_value(value, where, p.type == "int")
            if not p.low <= value <= p.high:
                fail(where, "outside the range", value, f"{p.low} <= value <= {p.high}")
            if p.step and not math.isclose((value - p.low) / p.step,
                                           round((value - p.low) / p.step), abs_tol=1e-9):
                fail(where, "off the step grid", value, f"low + a multiple of {p.step}")
        values[name] = value
    for name, value in values.items():
        for parent, allowed in by_name[name].when.items():
            if parent in values and values[parent] not in allowed:
                fail(f"{key}.{name}", f"set while {parent} is {values[parent]}", value,
                     f"{parent} in " + ", ".join(map(str, allowed)))
    return values
