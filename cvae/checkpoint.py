"""Checkpoints as plain data: state_dicts plus the config, loaded with weights_only=True."""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from cvae.config import Config, from_dict

STATE_FILE = "state.pt"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message is one line naming the file and the
    problem."""


def save(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` (config dict, state_dicts, counters, RNG states, history) atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(directory / STATE_FILE)
    return directory / STATE_FILE


def _state_file(path: str | Path) -> Path:
    path = Path(path)
    return path / STATE_FILE if path.is_dir() else path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint directory (or its state.pt) without unpickling arbitrary objects;
    anything else (missing, empty, truncated, a pickle of other objects) is a CheckpointError."""
    path = _state_file(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused an object: never unpickle it
        found = re.search(r"GLOBAL (\S+)", str(e))
        raise CheckpointError(
            f"{path}: not a checkpoint of this project (it holds objects other than tensors and "
            f"plain data{': ' + found[1] if found else ''}); not loaded") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    except Exception:  # torch raises EOFError, RuntimeError, KeyError... on damaged files
        size = path.stat().st_size
        raise CheckpointError(f"{path}: " + ("empty file" if size == 0 else
                              f"not a readable checkpoint ({size} bytes: truncated, or not "
                              "written by torch.save)")) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint of this project (a "
                              f"{type(state).__name__}, expected a dict)")
    return state


def _check_weights(file: Path, weights: Any, expected: dict[str, torch.Tensor]) -> None:
    """Raise a one-line CheckpointError unless `weights` has exactly the expected tensor
    names and shapes."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"{file}: 'model' is a {type(weights).__name__}, expected a "
                              "state_dict")
    problems = [f"{k} missing" for k in expected if k not in weights]
    problems += [f"{k} not in the model" for k in weights if k not in expected]
    for k, want in expected.items():
        got = getattr(weights.get(k), "shape", None)
        if k in weights and (got is None or tuple(got) != tuple(want.shape)):
            have = "x".join(map(str, got)) if got is not None else type(weights[k]).__name__
            problems.append(f"{k} is {have or 'a scalar'} in the file, "
                            f"{'x'.join(map(str, want.shape)) or 'a scalar'} for the config")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{file}: weights do not fit the checkpoint's config: "
                              f"{problems[0]}{more}")


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(model of the config's task in eval mode, Config, what its evaluation needs besides:
    BAIR's CondStats or None) from a checkpoint; a checkpoint whose config is missing or
    invalid, or whose weights do not fit it, is a CheckpointError."""
    from cvae import tasks

    file = _state_file(path)
    state = load(file)
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{file}: no config in the checkpoint (not written by cvae train "
                              "or a sweep)")
    try:
        cfg: Config = from_dict(state["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{file}: bad config: {e}") from None
    task = tasks.get(cfg.task)
    model = task.build_model(cfg)
    _check_weights(file, state.get("model"), model.state_dict())
    try:
        model.load_state_dict(state["model"])
        stats = task.load_stats(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: cannot load ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    model.to(device).eval()
    return model, cfg, stats
