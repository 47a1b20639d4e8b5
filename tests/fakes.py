"""Fake function trainables for the launcher tests: the real trainable's report keys and
checkpoint behaviour (a `state.json` holding the epoch), with deterministic curves from the
config and no training. Pickled by value so Ray workers need not import this module.

Curve: quality q in [0, 1] peaks at lr = 2e-3 (log scale); val_psnr rises to 15 + 12 q. A trial
with lr > 2e-2 diverges in its first epoch (reports diverged=True, val_psnr = val_psnr_best = 0.0
and returns), before ASHA can judge it.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time

import ray.cloudpickle
from ray import tune

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

DIVERGE_LR = 2e-2


def curve(config: dict, epoch: int) -> float:
    q = max(0.0, 1.0 - abs(math.log10(config["lr"] / 2e-3)))
    return 15.0 + 12.0 * q * (1.0 - 0.6 ** epoch)


def _run(config: dict, epoch_s: float) -> None:
    start, best = 0, 0.0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            with open(os.path.join(d, "state.json")) as f:
                state = json.load(f)
        start, best = state["epoch"], state["best"]
    for epoch in range(start + 1, config["epochs"] + 1):
        time.sleep(epoch_s)
        diverged = config["lr"] > DIVERGE_LR
        psnr = 0.0 if diverged else curve(config, epoch)
        best = 0.0 if diverged else max(best, psnr)
        row = {"epoch": epoch, "loss": 1.0 / epoch, "mse": 0.5 / epoch, "kld": 0.1, "beta": 1e-3,
               "tfr": 1.0, "val_psnr": psnr, "val_ssim": psnr / 40.0, "val_psnr_best": best,
               "diverged": diverged, "epoch_time_s": epoch_s}
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "state.json"), "w") as f:
                json.dump({"epoch": epoch, "best": best}, f)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))
        if diverged:
            return


def fake_fast(config: dict) -> None:
    """0.1 s per epoch."""
    _run(config, 0.1)


def fake_broken(config: dict) -> None:
    """Raises in epoch 2, every time (also after each retry from the epoch-1 checkpoint)."""
    ckpt = tune.get_checkpoint()
    if ckpt is None:
        _run({**config, "epochs": 1}, 0.1)
    raise RuntimeError("broken trainable")


def fake_slow(config: dict) -> None:
    """1 s per epoch: long enough to kill a worker or the driver mid-run."""
    _run(config, 1.0)
