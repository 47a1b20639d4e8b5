"""Search space files: validation errors name file and key in one line; spaces drive Optuna."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from cvae.config import PRESETS, from_dict
from search.space import (SpaceError, define_by_run, describe, load_space, to_json, trial_config,
                          validate_point)

SPACES = Path(__file__).resolve().parent.parent / "spaces"
SHIPPED = sorted(SPACES.glob("*.yaml"))
DELETE = object()
# TPESampler(group=True), which conditional spaces need, is flagged experimental
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

VALID: dict[str, Any] = {
    "name": "t", "metric": "val_psnr", "mode": "max", "num_samples": 3, "seed": 0,
    "base": {"preset": "tiny", "epochs": 4},
    "params": {
        "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "tfr_start_decay_epoch": {"type": "int", "low": 0, "high": 3},
        "kl_anneal": {"type": "categorical",
                      "choices": ["monotonic", "cyclical", "cyclical-sigmoid"]},
        "kl_anneal_cycle": {"type": "int", "low": 1, "high": 4,
                            "when": {"kl_anneal": ["cyclical", "cyclical-sigmoid"]}},
        "kl_anneal_ratio": {"type": "uniform", "low": 0.25, "high": 1.0, "step": 0.25},
    },
    "points_to_evaluate": [{"lr": 0.002, "kl_anneal": "cyclical", "kl_anneal_cycle": 2}],
    "asha": {"grace_period": 1, "reduction_factor": 2},
    "resources": {"cpu": 1, "gpu": 0},
}


def write(tmp_path: Path, content: Any, changes: dict[str, Any] | None = None) -> Path:
    """A space file from raw text, or from VALID-like data with dotted-key changes applied."""
    path = tmp_path / "space.yaml"
    if isinstance(content, str):
        path.write_text(content)
        return path
    data = copy.deepcopy(content)
    for dotted, value in (changes or {}).items():
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def error(path: Path, overrides: dict[str, Any] | None = None) -> str:
    """The SpaceError message, checked to be one line starting with the file name."""
    with pytest.raises(SpaceError) as info:
        load_space(path, overrides)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"{path}: "), message
    return message[len(f"{path}: "):]


@pytest.mark.parametrize("changes, expected", [
    # top level
    ({"num_sample": 3}, "num_sample: unknown key (did you mean 'num_samples'?)"),
    ({"num_samples": "ten"}, "num_samples: not a number (got 'ten'; expected an integer)"),
    ({"num_samples": 0}, "num_samples: too small (got 0; expected an integer >= 1)"),
    ({"num_samples": DELETE}, "num_samples: required key missing"),
    ({"metric": "psnr"}, "metric: unknown value (got 'psnr'; expected one of val_psnr, "),
    ({"mode": "maximize"}, "mode: unknown value (got 'maximize'; expected one of max, min)"),
    ({"metric": "val_ssim"}, "scheduler_metric: no best-so-far value is reported for val_ssim"),
    ({"name": "my sweep"}, "name: not a usable experiment name (got 'my sweep'"),
    ({"max_concurrent": 0}, "max_concurrent: too small (got 0"),
    # params: keys, types, ranges
    ({"params.lr.hihg": 0.1}, "params.lr.hihg: unknown key (did you mean 'high'?)"),
    ({"params.lr.step": 0.1}, "params.lr.step: not allowed for type loguniform"),
    ({"params.lr.type": "logunif"}, "params.lr.type: unknown distribution (got 'logunif'"),
    ({"params.lr.type": DELETE}, "params.lr.type: missing (expected one of loguniform, "),
    ({"params.lr.low": [1, 2]}, "params.lr.low: not a number (got [1, 2]; expected a number)"),
    ({"params.lr.low": 0.1}, "params.lr.low: not below high (got 0.1; expected a value < high"),
    ({"params.lr.low": 0}, "params.lr.low: not positive (loguniform) (got 0.0"),
    ({"params.lr": 0.001}, "params.lr: not a mapping (got 0.001"),
    ({"params": {}}, "params: nothing to search"),
    ({"params.kl_aneal": {"type": "categorical", "choices": ["none"]}},
     "params.kl_aneal: unknown Config field (did you mean 'kl_anneal'?)"),
    ({"params.kl_anneal.choices": []}, "params.kl_anneal.choices: not a non-empty list (got []"),
    ({"params.kl_anneal.choices": ["monotonic", "monotonic"]},
     "params.kl_anneal.choices: duplicate choice (got 'monotonic'"),
    ({"params.kl_anneal.choices": ["monotonic", "cyclic"]},
     "params.kl_anneal.choices: rejected by cvae.config for kl_anneal (got 'cyclic'; expected one"),
    ({"params.kl_anneal_cycle.low": 0},
     "params.kl_anneal_cycle.low: rejected by cvae.config for kl_anneal_cycle (got 0; expected "
     "an integer >= 1)"),
    ({"params.kl_anneal_ratio.high": 1.5},
     "params.kl_anneal_ratio.high: rejected by cvae.config for kl_anneal_ratio (got 1.5"),
    ({"params.tfr_start_decay_epoch.low": 0.5},
     "params.tfr_start_decay_epoch.low: not an integer (got 0.5; expected an integer)"),
    ({"params.batch_size": {"type": "uniform", "low": 2, "high": 8}},
     "params.batch_size.type: not usable for the int field batch_size (got 'uniform'; expected "
     "int or categorical)"),
    ({"params.amp": {"type": "int", "low": 0, "high": 1}},
     "params.amp.type: not usable for the str field amp (got 'int'; expected categorical)"),
    ({"params.tfr_start_decay_epoch.log": True},
     "params.tfr_start_decay_epoch.low: below 1 with log: true (got 0"),
    ({"params.kl_anneal_ratio.step": 2}, "params.kl_anneal_ratio.step: out of range (got 2.0"),
    ({"params.epochs": {"type": "int", "low": 2, "high": 4}},
     "params.epochs: cannot be searched"),
    # conditions
    ({"params.kl_anneal_cycle.when": {"kl_anneal": "cyclic"}},
     "params.kl_anneal_cycle.when.kl_anneal: not among the choices of kl_anneal (got 'cyclic'"),
    ({"params.kl_anneal_cycle.when": {"kl_aneal": "cyclical"}},
     "params.kl_anneal_cycle.when.kl_aneal: unknown parameter (did you mean 'kl_anneal'?)"),
    ({"params.kl_anneal_cycle.when": {"kl_anneal_ratio": 0.5}},
     "params.kl_anneal_cycle.when.kl_anneal_ratio: refers to a parameter not defined before"),
    ({"params.kl_anneal_cycle.when": {"lr": 0.001}},
     "params.kl_anneal_cycle.when.lr: refers to a non-categorical parameter"),
    # base
    ({"base.epoch": 4}, "base.epoch: unknown Config field (did you mean 'epochs'?)"),
    ({"base.lr": 0.001}, "params.lr: also set in base (got 0.001"),
    ({"base.preset": "huge"}, "base.preset: unknown preset (got 'huge'; expected one of lab, "),
    ({"base.batch_size": "many"}, "base.batch_size: wrong type for batch_size (got 'many'"),
    ({"base.epochs": 0},
     "base.epochs: rejected by cvae.config for epochs (got 0; expected an integer >= 1)"),
    ({"base": [1]}, "base: not a mapping (got [1]"),
    ({"base.preset": ["cpu"]}, "base.preset: unknown preset (got ['cpu']"),
    ({"base.n_past": 27}, "base: rejected by cvae.config for n_future (got 4; expected n_past + "),
    # points_to_evaluate
    ({"points_to_evaluate": [{"lrr": 0.001}]},
     "points_to_evaluate[0].lrr: unknown searched parameter (did you mean 'lr'?)"),
    ({"points_to_evaluate": [{"lr": 0.5}]},
     "points_to_evaluate[0].lr: outside the range (got 0.5"),
    ({"points_to_evaluate": [{"kl_anneal": "cyclic"}]},
     "points_to_evaluate[0].kl_anneal: not among the choices (got 'cyclic'"),
    ({"points_to_evaluate": [{"tfr_start_decay_epoch": 1.5}]},
     "points_to_evaluate[0].tfr_start_decay_epoch: not an integer (got 1.5"),
    ({"points_to_evaluate": [{"kl_anneal_ratio": 0.3}]},
     "points_to_evaluate[0].kl_anneal_ratio: off the step grid (got 0.3"),
    ({"points_to_evaluate": [{"kl_anneal": "monotonic", "kl_anneal_cycle": 2}]},
     "points_to_evaluate[0].kl_anneal_cycle: set while kl_anneal is monotonic (got 2"),
    ({"points_to_evaluate": {"lr": 0.001}}, "points_to_evaluate: not a list"),
    ({"points_to_evaluate": [0.001]}, "points_to_evaluate[0]: not a mapping"),
    # asha and resources
    ({"asha.grace_period": 0}, "asha.grace_period: too small (got 0; expected an integer >= 1)"),
    ({"asha.grace_period": 5},
     "asha.grace_period: longer than the run (got 5; expected at most base epochs = 4)"),
    ({"asha.reduction_factor": 1},
     "asha.reduction_factor: too small (got 1; expected an integer >= 2)"),
    ({"asha.grace": 1}, "asha.grace: unknown key (did you mean 'grace_period'?)"),
    ({"resources.cpu": 0}, "resources.cpu: not positive (got 0; expected a number > 0)"),
    ({"resources.gpu": -1}, "resources.gpu: negative (got -1; expected a number >= 0 or 'auto')"),
    ({"resources.gpu": "lots"},
     "resources.gpu: not a number (got 'lots'; expected a number >= 0 or 'auto')"),
    ({"resources.gpus": 1}, "resources.gpus: unknown key (did you mean 'gpu'?)"),
])
def test_invalid_space_names_the_key(tmp_path: Path, changes: dict[str, Any],
                                     expected: str) -> None:
    assert error(write(tmp_path, VALID, changes)).startswith(expected)


def test_valid_space_loads(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, VALID))
    assert [p.name for p in space.params] == list(VALID["params"])
    assert space.base == {"preset": "tiny", **PRESETS["tiny"], "epochs": 4}
    assert space.asha == {"grace_period": 1, "reduction_factor": 2, "brackets": 1, "max_t": 4}
    assert space.resources == {"cpu": 1.0, "gpu": 0.0}
    assert space.params[3].when == {"kl_anneal": ["cyclical", "cyclical-sigmoid"]}


def test_missing_file(tmp_path: Path) -> None:
    assert error(tmp_path / "nope.yaml") == "cannot read the file (No such file or directory)"


def test_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    assert error(path).startswith("cannot read the file (")


def test_yaml_syntax_error_gives_line(tmp_path: Path) -> None:
    text = "name: t\nnum_samples: 3\n  seed: 0\n"
    assert error(write(tmp_path, text)) == (
        "line 3, column 7: invalid YAML: mapping values are not allowed here")


def test_python_tags_are_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    text = f"name: t\nnum_samples: !!python/object/apply:os.system ['touch {marker}']\n"
    assert error(write(tmp_path, text)).startswith(
        "line 2, column 14: unsupported YAML tag (got '!!python/object/apply:os.system'")
    assert not marker.exists()


@pytest.mark.parametrize("text, got", [("- 1\n- 2\n", "[1, 2]"), ("", "None"), ("7\n", "7")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    assert error(write(tmp_path, text)) == (
        f"top level: not a mapping (got {got}; expected a mapping of sweep settings)")


def test_numeric_strings_are_numbers(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-4 (no dot) as a string
    text = yaml.safe_dump(VALID, sort_keys=False).replace("low: 0.0001", "low: 1e-4")
    assert "low: 1e-4" in text
    path = write(tmp_path, text.replace("num_samples: 3", "num_samples: '3'"))
    space = load_space(path)
    assert space.params[0].low == 1e-4 and isinstance(space.params[0].low, float)
    assert space.num_samples == 3


def test_int_distribution_on_float_field(tmp_path: Path) -> None:
    changes = {"params.grad_clip": {"type": "int", "low": 0, "high": 5}}
    space = load_space(write(tmp_path, VALID, changes))
    cfg = from_dict(trial_config(space, {"grad_clip": 3}))
    assert cfg.grad_clip == 3.0 and isinstance(cfg.grad_clip, float)


def test_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    space = load_space(path, {"num_samples": 2, "seed": 5, "name": "other", "preset": "cpu",
                              "epochs": "3", "data": "/d", "gpu": 0.5})
    assert (space.num_samples, space.seed, space.name) == (2, 5, "other")
    assert space.base["preset"] == "cpu"
    assert space.base["batch_size"] == PRESETS["cpu"]["batch_size"]
    assert space.base["epochs"] == 3 and space.asha["max_t"] == 3 and space.base["data"] == "/d"
    assert space.resources["gpu"] == 0.5
    assert load_space(path, {"gpu": "auto", "seed": None}).resources["gpu"] == "auto"


@pytest.mark.parametrize("overrides, expected", [
    ({"num_sample": 2}, "overrides.num_sample: unknown override (did you mean 'num_samples'?)"),
    ({"lr": 0.1}, "overrides.lr: unknown override (expected one of num_samples, seed, name, "),
    ({"epochs": 0}, "base.epochs: rejected by cvae.config for epochs (got 0"),
    ({"preset": "gpu"}, "base.preset: unknown preset (got 'gpu'"),
    ({"num_samples": 0}, "num_samples: too small (got 0"),
])
def test_bad_overrides(tmp_path: Path, overrides: dict[str, Any], expected: str) -> None:
    assert error(write(tmp_path, VALID), overrides).startswith(expected)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_spaces_load(path: Path) -> None:
    space = load_space(path)
    assert space.name == path.stem
    assert space.asha["max_t"] == space.base["epochs"] >= space.asha["grace_period"]
    assert space.points_to_evaluate, "each shipped space starts from known settings"
    for point in space.points_to_evaluate:
        from_dict(trial_config(space, point))
    summary = describe(space)
    assert all(p.name in summary for p in space.params) and "when kl_anneal in" in summary
    sweep = json.loads(json.dumps(to_json(space)))
    assert sweep["epochs"] == space.base["epochs"] and sweep["space_file"] == str(path)
    assert list(sweep["searched"]) == [p.name for p in space.params]


def test_shipped_spaces_cover_the_mission() -> None:
    assert {p.stem for p in SHIPPED} >= {"annealing", "bair", "smoke", "lab"}
    annealing = load_space(SPACES / "annealing.yaml")  # the question where z carries the future
    assert annealing.base["preset"] == "smmnist-cpu" and annealing.base.get("data") is None
    searched = {p.name: p for p in annealing.params}
    assert {"lr", "tfr_start_decay_epoch", "kl_anneal", "kl_anneal_cycle",
            "beta_max"} <= set(searched)
    assert {"monotonic", "cyclical", "none"} <= set(searched["kl_anneal"].choices or [])
    assert annealing.confirm["factor"] == "kl_anneal" and annealing.confirm["seeds"] >= 3
    assert annealing.confirm["best_of"] > 1
    bair = load_space(SPACES / "bair.yaml")  # what annealing.yaml ran before
    assert bair.base["preset"] == "cpu" and bair.confirm["levels"] == ["monotonic", "cyclical",
                                                                       "none"]
    assert load_space(SPACES / "smoke.yaml").base["preset"] == "tiny"
    assert load_space(SPACES / "lab.yaml").resources == {"cpu": 4.0, "gpu": 0.25}


@pytest.mark.parametrize("name", ["annealing", "lab"])
def test_to_json_searched_matches_the_file(name: str) -> None:
    path = SPACES / f"{name}.yaml"
    assert to_json(load_space(path))["searched"] == yaml.safe_load(path.read_text())["params"]


class OnlySuggest:
    """A trial proxy that fails on anything but trial.suggest_* (Ray's captor only wraps those)."""

    def __init__(self, trial: optuna.trial.Trial) -> None:
        self._trial = trial

    def __getattr__(self, name: str) -> Any:
        assert name.startswith("suggest_"), f"define-by-run used trial.{name}"
        return getattr(self._trial, name)


@pytest.mark.parametrize("file", ["annealing.yaml", "smoke.yaml", "lab.yaml", None])
def test_define_by_run_conditional_space(tmp_path: Path, file: str | None) -> None:
    space = load_space(SPACES / file if file else write(tmp_path, VALID))
    define = define_by_run(space)
    cyclical = next(p for p in space.params if p.name == "kl_anneal_cycle").when["kl_anneal"]
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0, group=True))
    modes = set()
    for _ in range(30):
        trial = study.ask()
        assert define(OnlySuggest(trial)) is None
        params = trial.params
        modes.add(params["kl_anneal"])
        assert ("kl_anneal_cycle" in params) == (params["kl_anneal"] in cyclical)
        assert set(params) <= {p.name for p in space.params}
        for p in space.params:
            if p.name not in params:
                continue
            value = params[p.name]
            if p.type == "categorical":
                assert value in (p.choices or [])
                continue
            assert p.low <= value <= p.high
            assert isinstance(value, int) == (p.type == "int")
            assert trial.distributions[p.name].log == (p.type == "loguniform" or p.log)
        cfg = from_dict(trial_config(space, params))
        assert all(getattr(cfg, k) == v for k, v in params.items())
        study.tell(trial, -abs(math.log(params["lr"] / 0.002)))
    assert len(modes) >= 2


def test_points_to_evaluate_are_enqueued(tmp_path: Path) -> None:
    space = load_space(SPACES / "annealing.yaml")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, group=True))
    for point in space.points_to_evaluate:
        study.enqueue_trial(point)
    for point in space.points_to_evaluate:
        trial = study.ask()
        define_by_run(space)(OnlySuggest(trial))
        assert trial.params == point


def test_trial_config_merges_base_and_searched(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, VALID))
    searched = {"lr": 0.003, "kl_anneal": "monotonic", "tfr_start_decay_epoch": 2}
    flat = trial_config(space, searched)
    assert "preset" not in flat and flat["epochs"] == 4
    assert flat == {**{k: v for k, v in space.base.items() if k != "preset"}, **searched}
    cfg = from_dict(flat)
    assert (cfg.lr, cfg.kl_anneal, cfg.tfr_start_decay_epoch) == (0.003, "monotonic", 2)
    assert cfg.batch_size == PRESETS["tiny"]["batch_size"]


def test_validate_point(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    space = load_space(path)
    assert validate_point(space, {"lr": "1e-3", "kl_anneal_cycle": 2.0}) == {
        "lr": 0.001, "kl_anneal_cycle": 2}
    with pytest.raises(SpaceError) as info:
        validate_point(space, {"lr": 1.0}, key="--point")
    assert str(info.value).startswith(f"{path}: --point.lr: outside the range (got 1.0")


# --- hostile or careless files: refused before anything is built --------------------------------

def test_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    from search.space_yaml import MAX_BYTES

    path = write(tmp_path, yaml.safe_dump(VALID) + "#" * MAX_BYTES + "\n")
    size = path.stat().st_size
    assert error(path) == f"file too large ({size} bytes; expected at most {MAX_BYTES})"


def alias_bomb(levels: int = 9) -> str:
    """A billion-laughs document: 9 ** levels values after expansion, a few lines on disk."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_as_a_value_fails_fast(tmp_path: Path) -> None:
    import time
    import tracemalloc

    from search.space_yaml import MAX_NODES

    text = yaml.safe_dump(VALID, sort_keys=False).replace("num_samples: 3", "num_samples: *a8")
    path = write(tmp_path, alias_bomb() + text)
    tracemalloc.start()
    start = time.monotonic()
    message = error(path)
    elapsed = time.monotonic() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert message == (f"YAML aliases expand to more than {MAX_NODES} values (expected a space "
                       "file of plain settings)")
    assert peak < 50e6, (elapsed, peak)  # refused before expanding (no timed assertion)


def test_small_aliases_still_work(tmp_path: Path) -> None:
    text = yaml.safe_dump(VALID, sort_keys=False)
    text = text.replace("num_samples: 3", "num_samples: &n 5").replace("seed: 0", "seed: *n")
    space = load_space(write(tmp_path, text))
    assert (space.num_samples, space.seed) == (5, 5)


@pytest.mark.parametrize("text, expected", [
    ("a: &a [*a]\n", "recursive YAML alias (expected a space file of plain settings)"),
    ("[" * 20000 + "]" * 20000, "YAML nested too deeply (expected a space file of plain "
                                "settings)"),
])
def test_pathological_yaml(tmp_path: Path, text: str, expected: str) -> None:
    assert error(write(tmp_path, text)) == expected


@pytest.mark.parametrize("text, expected", [
    ("name: t\nnum_samples: 3\nseed: 0\nnum_samples: 30\n",
     "line 4: duplicate key 'num_samples' (first at line 2; expected each key once)"),
    ("name: t\nnum_samples: 3\nparams:\n  lr: {type: loguniform, low: 1.0e-4, high: 0.01}\n"
     "  kl_anneal: {type: categorical, choices: [monotonic]}\n"
     "  lr: {type: loguniform, low: 1.0e-3, high: 0.1}\n",
     "line 6: duplicate key 'lr' (first at line 4; expected each key once)"),
    ("name: t\nnum_samples: 3\nparams:\n  lr: {type: loguniform, low: 1.0e-4, low: 0.01}\n",
     "line 4: duplicate key 'low' (first at line 4; expected each key once)"),
])
def test_duplicate_keys_name_both_lines(tmp_path: Path, text: str, expected: str) -> None:
    assert error(write(tmp_path, text)) == expected


def test_merge_keys_may_override(tmp_path: Path) -> None:
    text = yaml.safe_dump(VALID, sort_keys=False).replace(
        "resources:\n  cpu: 1\n  gpu: 0\n", "resources:\n  <<: {cpu: 4, gpu: 0}\n  cpu: 2\n")
    assert "<<:" in text
    assert load_space(write(tmp_path, text)).resources == {"cpu": 2.0, "gpu": 0.0}


@pytest.mark.parametrize("spec, expected", [
    ({"type": "int", "low": 4, "high": 6},
     "params.tfr_start_decay_epoch: beyond the run: teacher forcing would never decay (got "
     "[4, 6]; expected values below base epochs = 4)"),
    ({"type": "categorical", "choices": [5, 9]},
     "params.tfr_start_decay_epoch: beyond the run: teacher forcing would never decay (got "
     "[5, 9]; expected values below base epochs = 4)"),
])
def test_inert_tfr_decay_range_is_rejected(tmp_path: Path, spec: dict, expected: str) -> None:
    assert error(write(tmp_path, VALID, {"params.tfr_start_decay_epoch": spec})) == expected


@pytest.mark.parametrize("spec, epochs, warning", [
    ({"type": "int", "low": 0, "high": 3}, None, None),
    ({"type": "int", "low": 0, "high": 3}, 3,
     "params.tfr_start_decay_epoch.high: values >= base epochs = 3 never decay teacher forcing "
     "(got 3)"),
    ({"type": "categorical", "choices": [1, 8]}, None,
     "params.tfr_start_decay_epoch.choices: values >= base epochs = 4 never decay teacher "
     "forcing (got 8)"),
])
def test_partly_inert_tfr_decay_range_warns(tmp_path: Path, spec: dict, epochs: int | None,
                                            warning: str | None) -> None:
    path = write(tmp_path, VALID, {"params.tfr_start_decay_epoch": spec,
                                   "points_to_evaluate": []})
    space = load_space(path, {"epochs": epochs})
    assert space.warnings == ([f"{path}: {warning}"] if warning else [])
