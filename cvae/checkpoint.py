"""Checkpoints as plain data: state_dicts plus the config, loaded with weights_only=True."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cvae.config import Config, from_dict

STATE_FILE = "state.pt"


def save(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` (config dict, state_dicts, counters, RNG states, history) atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(directory / STATE_FILE)
    return directory / STATE_FILE


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint directory (or its state.pt) without unpickling arbitrary objects."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    return torch.load(path, map_location=map_location, weights_only=True)


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, Config, CondStats or None) from a checkpoint."""
    from cvae.data import CondStats
    from cvae.model import SVG

    state = load(path, map_location=device)
    cfg: Config = from_dict(state["config"])
    model = SVG(cfg).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg, CondStats.from_dict(state.get("cond_stats"))
