"""The Ray Tune trainable: a thin adapter from a flat config dict to `fit`.

Ray's reporting API has changed often; this file and search/ are the only places that touch it.
"""
from __future__ import annotations

from typing import Any

from ray import tune

from cvae import checkpoint
from cvae.config import config_from_trial
from cvae.train import fit


def train_cvae(config: dict[str, Any]) -> None:
    """Function trainable: resumes from `tune.get_checkpoint()` and reports once per epoch."""
    cfg = config_from_trial(config)
    state = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = checkpoint.load(d)

    def report(metrics: dict, ckpt_dir: str) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(ckpt_dir))

    fit(cfg, report, state=state)
