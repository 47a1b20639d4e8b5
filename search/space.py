"""Search spaces: one YAML file per sweep, validated against `cvae.config.Config`.

A space file fixes a base config (a preset plus field overrides), lists the searched Config
fields with their distributions, and holds the Tune settings (metric, ASHA, resources). Every
mistake is reported as one line naming the file and the key:
`<file>: <key path>: <problem> (got <value>; expected <what>)`. Files over MAX_BYTES, YAML
aliases expanding beyond MAX_NODES values and duplicate keys are refused before anything is
built.
"""
from __future__ import annotations

import difflib
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, NoReturn, Optional, Union

import yaml

from cvae.config import PRESETS, coerce, field_names, field_type, from_dict

if TYPE_CHECKING:
    import optuna

METRICS = ("val_psnr", "val_ssim", "loss", "mse", "kld")  # per-epoch metrics fit reports
TYPES = ("loguniform", "uniform", "int", "categorical")

_MISSING = object()  # a required key (as a default) or no offending value (in _fail)
MAX_BYTES = 1_000_000  # a space file is a few KB; larger files are refused unread
MAX_NODES = 100_000  # YAML values after alias expansion (a space file has a few hundred)

# Every key a space file may hold, by mapping, with its default (_MISSING: required). Drives
# the unknown-key check, its "did you mean" suggestions and the defaults.
_KEYS: dict[str, dict[str, Any]] = {
    "top": {"name": None, "metric": "val_psnr", "mode": "max", "scheduler_metric": "best",
            "num_samples": _MISSING, "seed": 0, "max_concurrent": None, "base": {},
            "params": _MISSING, "points_to_evaluate": [], "asha": {}, "resources": {},
            "confirm": None},
    "asha": {"grace_period": 1, "reduction_factor": 2, "brackets": 1},
    # multi-seed re-runs of the best configuration after the sweep (search.confirm)
    "confirm": {"seeds": 3, "factor": "kl_anneal", "levels": None, "top_k": 1, "epochs": None},
    "resources": {"cpu": 1, "gpu": 0},
    "loguniform": {"type": _MISSING, "low": _MISSING, "high": _MISSING, "when": {}},
    "uniform": {"type": _MISSING, "low": _MISSING, "high": _MISSING, "step": None, "when": {}},
    "int": {"type": _MISSING, "low": _MISSING, "high": _MISSING, "step": None, "log": False,
            "when": {}},
    "categorical": {"type": _MISSING, "choices": _MISSING, "when": {}},
}
# Overrides load_space accepts (from the command line) and the key each one replaces.
_OVERRIDES: dict[str, tuple[str, ...]] = {
    "num_samples": ("num_samples",), "seed": ("seed",), "name": ("name",),
    "preset": ("base", "preset"), "epochs": ("base", "epochs"), "data": ("base", "data"),
    "gpu": ("resources", "gpu"), "skip_bad": ("base", "skip_bad"),
}


class SpaceError(Exception):
    """An invalid space file or override; the message is one line naming the file and key."""


class _Invalid(Exception):
    """A problem at a key path; load_space and validate_point prefix the file name."""


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
        return all(chosen.get(parent, _MISSING) in values for parent, values in self.when.items())

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
    # epochs (None: base epochs); None: no confirmation
    confirm: Optional[dict[str, Any]] = None


def load_space(path: Union[str, Path], overrides: Optional[dict[str, Any]] = None) -> Space:
    """Read and validate a space file; `overrides` (CLI values, None = not given) apply first."""
    with _errors_in(path):
        raw = _read_yaml(Path(path))
        if not isinstance(raw, dict):
            _fail("top level", "not a mapping", raw, "a mapping of sweep settings")
        return _build(_override(raw, overrides or {}), str(path))


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
    with _errors_in(space.path):
        return _point(space.params, point, key)


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


# --- reading -------------------------------------------------------------------------------

@contextmanager
def _errors_in(path: Union[str, Path]) -> Iterator[None]:
    try:
        yield
    except _Invalid as e:
        raise SpaceError(f"{path}: " + " ".join(str(e).splitlines())) from None


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys and documents whose aliases expand beyond
    MAX_NODES values (checked on the composed node graph, before anything is built)."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        if node is not None and _expanded_size(node, {}, set()) > MAX_NODES:
            raise _Invalid(f"YAML aliases expand to more than {MAX_NODES} values (expected "
                           "a space file of plain settings)")
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)):
                    continue  # unhashable keys: SafeLoader's own error
                line = key_node.start_mark.line + 1
                if key in first:
                    raise _Invalid(f"line {line}: duplicate key {key!r} (first at line "
                                   f"{first[key]}; expected each key once)")
                first[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: Any, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Values `node` stands for with every alias expanded, stopping early past MAX_NODES."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise _Invalid("recursive YAML alias (expected a space file of plain settings)")
    open_nodes.add(id(node))
    size = 1
    if isinstance(node, yaml.SequenceNode):
        children: list[Any] = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        size += _expanded_size(child, sizes, open_nodes)
        if size > MAX_NODES:
            break
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


def _read_yaml(path: Path) -> Any:
    """Parse with a safe loader; syntax errors, python tags, duplicate keys, oversized files and
    alias bombs become one-line errors."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise _Invalid(f"file too large ({size} bytes; expected at most {MAX_BYTES})")
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise _Invalid(f"file too large (over {MAX_BYTES} bytes)")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _Invalid(f"cannot read the file ({getattr(e, 'strerror', None) or e})") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise _Invalid("YAML nested too deeply (expected a space file of plain settings)") \
            from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        tag = re.search(r"constructor for the tag '([^']*)'", e.problem or "")
        if tag:
            got = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            raise _Invalid(f"{where}: unsupported YAML tag (got '{got}'; expected "
                           "plain data: mappings, lists, strings, numbers, booleans)") from None
        context = f" ({e.context})" if e.context else ""
        raise _Invalid(f"{where}: invalid YAML: {e.problem}{context}") from None
    except yaml.YAMLError as e:
        raise _Invalid(f"invalid YAML: {str(e).splitlines()[0]}") from None


def _override(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The file's mapping with CLI overrides put in place (values are validated with the rest)."""
    _check_keys(overrides, _OVERRIDES, "overrides", noun="override")
    raw = dict(raw)
    for key, value in overrides.items():
        if value is None:
            continue
        *section, leaf = _OVERRIDES[key]
        if section:
            raw[section[0]] = {**_mapping(raw.get(section[0]) or {}, section[0]), leaf: value}
        else:
            raw[leaf] = value
    return raw


def _build(raw: dict[str, Any], path: str) -> Space:
    top = _section(raw, "top", "")
    name = top["name"] if top["name"] is not None else Path(path).stem
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        _fail("name", "not a usable experiment name", name, "letters, digits, '_', '.', '-'")
    metric = _one_of(top["metric"], "metric", METRICS)
    scheduler_metric = _one_of(top["scheduler_metric"], "scheduler_metric", ("best", "last"))
    if scheduler_metric == "best" and metric != "val_psnr":
        _fail("scheduler_metric", f"no best-so-far value is reported for {metric}",
              scheduler_metric, "'last' unless metric is val_psnr")
    explicit = _mapping(top["base"], "base")
    base, fixed = _base(explicit)
    max_t = fixed["epochs"]
    params = _params(top["params"], explicit, fixed)
    notes = [f"{path}: {note}" for note in _inert_values(params, max_t)]
    points = top["points_to_evaluate"] or []
    if not isinstance(points, list):
        _fail("points_to_evaluate", "not a list", points, "a list of mappings")
    asha = _section(_mapping(top["asha"] or {}, "asha"), "asha", "asha")
    grace = _int(asha["grace_period"], "asha.grace_period", 1)
    if grace > max_t:
        _fail("asha.grace_period", "longer than the run", grace, f"at most base epochs = {max_t}")
    resources = _section(_mapping(top["resources"] or {}, "resources"), "resources", "resources")
    return Space(
        name=name, path=path, metric=metric, mode=_one_of(top["mode"], "mode", ("max", "min")),
        scheduler_metric=scheduler_metric,
        num_samples=_int(top["num_samples"], "num_samples", 1),
        seed=_int(top["seed"], "seed", 0),
        max_concurrent=(None if top["max_concurrent"] is None
                        else _int(top["max_concurrent"], "max_concurrent", 1)),
        base=base, params=params,
        points_to_evaluate=[_point(params, p, f"points_to_evaluate[{i}]")
                            for i, p in enumerate(points)],
        asha={"grace_period": grace,
              "reduction_factor": _int(asha["reduction_factor"], "asha.reduction_factor", 2),
              "brackets": _int(asha["brackets"], "asha.brackets", 1), "max_t": max_t},
        resources={"cpu": _positive(resources["cpu"], "resources.cpu"),
                   "gpu": _gpu(resources["gpu"])},
        warnings=notes,
        confirm=_confirm(top["confirm"], params, fixed),
    )


def _confirm(raw: Any, params: list[Param], fixed: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The `confirm` section: seeds >= 1, a Config field as factor (not seed), its levels
    converted to the field's type (required unless the factor is kl_anneal or a categorical
    parameter), top_k >= 1, epochs >= 1 or None."""
    if raw is None:
        return None
    section = _section(_mapping(raw, "confirm"), "confirm", "confirm")
    factor = section["factor"]
    if factor not in field_names() or factor == "seed":
        _fail("confirm.factor", "not a factor", factor, "a field of cvae.config.Config "
              "other than seed")
    levels = section["levels"]
    if levels is not None:
        if not isinstance(levels, list) or not levels:
            _fail("confirm.levels", "not a non-empty list", levels, f"values of {factor}")
        levels = [_field_value(factor, v, "confirm.levels") for v in levels]
        for value in levels:
            _check_field(fixed, factor, value, "confirm.levels")
    elif factor != "kl_anneal" and not any(p.name == factor and p.type == "categorical"
                                           for p in params):
        _fail("confirm.levels", "required key missing", expected=f"the values of {factor} to "
              "compare (only kl_anneal and categorical parameters have default levels)")
    return {"seeds": _int(section["seeds"], "confirm.seeds", 1), "factor": factor,
            "levels": levels, "top_k": _int(section["top_k"], "confirm.top_k", 1),
            "epochs": (None if section["epochs"] is None
                       else _int(section["epochs"], "confirm.epochs", 1))}


def _inert_values(params: list[Param], epochs: int) -> list[str]:
    """tfr_start_decay_epoch values >= epochs leave teacher forcing undecayed (the epoch is
    0-based): an error when every value of the range is inert, else a warning."""
    notes = []
    for p in params:
        if p.name != "tfr_start_decay_epoch":
            continue
        values = p.choices if p.type == "categorical" else [p.low, p.high]
        bound = "choices" if p.type == "categorical" else "high"
        if min(values) >= epochs:
            _fail(f"params.{p.name}", "beyond the run: teacher forcing would never decay",
                  values, f"values below base epochs = {epochs}")
        if max(values) >= epochs:
            notes.append(f"params.{p.name}.{bound}: values >= base epochs = {epochs} never "
                         f"decay teacher forcing (got {max(values)})")
    return notes


def _base(explicit: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(base with "preset", fixed Config fields) from the file's base mapping."""
    _check_keys(explicit, ["preset", *field_names()], "base", noun="Config field",
                fallback="a field of cvae.config.Config or 'preset'")
    preset = explicit.get("preset")
    if preset is not None and (not isinstance(preset, str) or preset not in PRESETS):
        _fail("base.preset", "unknown preset", preset, "one of " + ", ".join(PRESETS))
    fixed = dict(PRESETS.get(preset, {}))
    for key, value in explicit.items():
        if key != "preset":
            fixed[key] = _field_value(key, value, f"base.{key}")
    try:
        fixed = from_dict(fixed).to_dict()
    except ValueError as e:
        culprit, expected = _config_error(e)
        where = f"base.{culprit}" if culprit in explicit else "base"
        _fail(where, f"rejected by cvae.config for {culprit}", fixed.get(culprit), expected)
    base = {"preset": preset, **PRESETS.get(preset, {}),
            **{k: fixed[k] for k in explicit if k != "preset"}}
    return base, fixed


def _params(raw: Any, explicit: dict[str, Any], fixed: dict[str, Any]) -> list[Param]:
    specs = _mapping(raw, "params")
    if not specs:
        _fail("params", "nothing to search", raw, "at least one parameter")
    _check_keys(specs, field_names(), "params", noun="Config field",
                fallback="a field of cvae.config.Config")
    params: list[Param] = []
    for name, spec in specs.items():
        key = f"params.{name}"
        if name == "epochs":
            _fail(key, "cannot be searched", spec, "a fixed base.epochs (ASHA's max_t)")
        if name in explicit:
            _fail(key, "also set in base", explicit[name], "each field fixed in base or searched")
        spec = _mapping(spec, key)
        kind = spec.get("type", _MISSING)
        if kind not in TYPES:
            _fail(f"{key}.type", "unknown distribution" if kind is not _MISSING else "missing",
                  kind, "one of " + ", ".join(TYPES))
        for k in spec:
            if k not in _KEYS[kind] and any(k in _KEYS[t] for t in TYPES):
                _fail(f"{key}.{k}", f"not allowed for type {kind}", spec[k],
                      "one of " + ", ".join(_KEYS[kind]))
        spec = _section(spec, kind, key)
        param = (_categorical(name, spec["choices"], fixed, key) if kind == "categorical"
                 else _numeric(name, kind, spec, fixed, key))
        param.when = _when(spec["when"], params, list(specs), f"{key}.when")
        params.append(param)
    return params


def _categorical(name: str, choices: Any, fixed: dict[str, Any], key: str) -> Param:
    key = f"{key}.choices"
    if not isinstance(choices, list) or not choices:
        _fail(key, "not a non-empty list", choices, "a list of values for " + name)
    values: list[Any] = []
    for choice in choices:
        value = _field_value(name, choice, key)
        if value in values:
            _fail(key, "duplicate choice", choice, "distinct values")
        _check_field(fixed, name, value, key)
        values.append(value)
    return Param(name, "categorical", choices=values)


def _numeric(name: str, kind: str, spec: dict[str, Any], fixed: dict[str, Any],
             key: str) -> Param:
    want = field_type(name)
    if want not in (int, float) or (want is int and kind != "int"):
        _fail(f"{key}.type", f"not usable for the {want.__name__} field {name}", kind,
              "int or categorical" if want is int else "categorical")
    integer = kind == "int"
    low = _number(spec["low"], f"{key}.low", integer)
    high = _number(spec["high"], f"{key}.high", integer)
    if low >= high:
        _fail(f"{key}.low", "not below high", low, f"a value < high = {high}")
    if kind == "loguniform" and low <= 0:
        _fail(f"{key}.low", "not positive (loguniform)", low, "a value > 0")
    step = spec.get("step")
    if step is not None:
        step = _number(step, f"{key}.step", integer)
        if not 0 < step <= high - low:
            _fail(f"{key}.step", "out of range", step, f"0 < step <= high - low = {high - low}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        _fail(f"{key}.log", "not a boolean", log, "true or false")
    if log and low < 1:
        _fail(f"{key}.low", "below 1 with log: true", low, "an integer >= 1")
    if log and step not in (None, 1):
        _fail(f"{key}.step", "cannot be combined with log: true", step, "no step")
    for bound, value in (("low", low), ("high", high)):
        _check_field(fixed, name, value, f"{key}.{bound}")
    return Param(name, kind, low=low, high=high, step=step, log=log)


def _when(raw: Any, earlier: list[Param], names: list[str], key: str) -> dict[str, list[Any]]:
    """Conditions on earlier categorical params: {param: [values that activate this one]}."""
    by_name = {p.name: p for p in earlier}
    when: dict[str, list[Any]] = {}
    for parent, values in _mapping(raw or {}, key).items():
        if parent in names and parent not in by_name:
            _fail(f"{key}.{parent}", "refers to a parameter not defined before this one", parent,
                  "an earlier categorical parameter")
        _check_keys([parent], by_name, key, noun="parameter",
                    fallback="an earlier categorical parameter")
        choices = by_name[parent].choices
        if choices is None:
            _fail(f"{key}.{parent}", "refers to a non-categorical parameter",
                  by_name[parent].type, "a categorical parameter")
        values = values if isinstance(values, list) else [values]
        if not values:
            _fail(f"{key}.{parent}", "no values", values, "a value or list of values")
        when[parent] = []
        for value in values:
            value = _field_value(parent, value, f"{key}.{parent}")
            if value not in choices:
                _fail(f"{key}.{parent}", f"not among the choices of {parent}", value,
                      "one of " + ", ".join(map(str, choices)))
            when[parent].append(value)
    return when


def _point(params: list[Param], point: Any, key: str) -> dict[str, Any]:
    by_name = {p.name: p for p in params}
    point = _mapping(point, key)
    _check_keys(point, by_name, key, noun="searched parameter")
    values: dict[str, Any] = {}
    for name, value in point.items():
        p, where = by_name[name], f"{key}.{name}"
        if p.type == "categorical":
            value = _field_value(name, value, where)
            if value not in (p.choices or []):
                _fail(where, "not among the choices", value,
                      "one of " + ", ".join(map(str, p.choices or [])))
        else:
            value = _number(value, where, p.type == "int")
            if not p.low <= value <= p.high:
                _fail(where, "outside the range", value, f"{p.low} <= value <= {p.high}")
            if p.step and not math.isclose((value - p.low) / p.step,
                                           round((value - p.low) / p.step), abs_tol=1e-9):
                _fail(where, "off the step grid", value, f"low + a multiple of {p.step}")
        values[name] = value
    for name, value in values.items():
        for parent, allowed in by_name[name].when.items():
            if parent in values and values[parent] not in allowed:
                _fail(f"{key}.{name}", f"set while {parent} is {values[parent]}", value,
                      f"{parent} in " + ", ".join(map(str, allowed)))
    return values


# --- checks ----------------------------------------------------------------------------------

def _fail(key: str, problem: str, got: Any = _MISSING, expected: str = "") -> NoReturn:
    details = [f"got {_show(got)}"] if got is not _MISSING else []
    details += [f"expected {expected}"] if expected else []
    raise _Invalid(f"{key}: {problem}" + (f" ({'; '.join(details)})" if details else ""))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_keys(mapping: Iterable[Any], allowed: Iterable[str], where: str, noun: str = "key",
                fallback: str = "") -> None:
    """Unknown keys are an error suggesting a close allowed key: the only one that the key
    begins, else difflib's closest."""
    allowed = list(allowed)
    for key in mapping:
        if key not in allowed:
            extended = [a for a in allowed if a.startswith(str(key))]
            close = (extended if len(extended) == 1
                     else difflib.get_close_matches(str(key), allowed, n=1))
            hint = (f"did you mean {close[0]!r}?" if close
                    else f"expected {fallback or 'one of ' + ', '.join(allowed)}")
            raise _Invalid(f"{_join(where, key)}: unknown {noun} ({hint})")


def _section(mapping: dict[str, Any], schema: str, where: str) -> dict[str, Any]:
    """The mapping with unknown keys rejected and defaults filled in."""
    _check_keys(mapping, _KEYS[schema], where)
    values = {**_KEYS[schema], **mapping}
    for key, value in values.items():
        if value is _MISSING:
            _fail(_join(where, key), "required key missing")
    return values


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(key, "not a mapping", value, "a mapping of keys to values")
    return value


def _one_of(value: Any, key: str, options: tuple[str, ...]) -> str:
    if value not in options:
        _fail(key, "unknown value", value, "one of " + ", ".join(options))
    return value


def _number(value: Any, key: str, integer: bool = False, expected: str = "") -> Union[int, float]:
    """A finite number; numeric strings such as '1e-4' (YAML 1.1 reads it as text) convert."""
    expected = expected or ("an integer" if integer else "a number")
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            _fail(key, "not a number", value, expected)
    if (isinstance(number, bool) or not isinstance(number, (int, float))
            or not math.isfinite(number)):
        _fail(key, "not a number", value, expected)
    if integer:
        if not float(number).is_integer():
            _fail(key, "not an integer", value, expected)
        return int(number)
    return float(number)


def _int(value: Any, key: str, minimum: int) -> int:
    number = int(_number(value, key, integer=True))
    if number < minimum:
        _fail(key, "too small", value, f"an integer >= {minimum}")
    return number


def _positive(value: Any, key: str) -> float:
    number = _number(value, key)
    if number <= 0:
        _fail(key, "not positive", value, "a number > 0")
    return number


def _gpu(value: Any) -> Union[float, str]:
    """GPUs per trial: a number >= 0 (fractions share a device) or "auto"."""
    if value == "auto":
        return value
    expected = "a number >= 0 or 'auto'"
    number = _number(value, "resources.gpu", expected=expected)
    if number < 0:
        _fail("resources.gpu", "negative", value, expected)
    return number


def _field_value(name: str, value: Any, key: str) -> Any:
    """A value converted to Config field `name`'s type."""
    try:
        return coerce(name, value)
    except ValueError as e:
        _fail(key, f"wrong type for {name}", value, _config_error(e)[1])


def _check_field(fixed: dict[str, Any], name: str, value: Any, key: str) -> None:
    """Config validation of the fixed config with `name` set to `value`."""
    try:
        from_dict({**fixed, name: value})
    except ValueError as e:
        _fail(key, f"rejected by cvae.config for {name}", value, _config_error(e)[1])


def _config_error(e: ValueError) -> tuple[str, str]:
    """(field, expectation) from cvae.config's "key=value: expected what" messages."""
    text = str(e)
    head, _, expected = text.partition(": expected ")
    return head.split("=", 1)[0], expected or text
