"""The BAIR task: SVG (cvae.model) on robot pushing videos in the BAIR layout (cvae.data),
conditioned on actions and end-effector positions; embedded synthetic data from cvae.synth.

Protocol: the first n_past + n_future frames of each sequence, n_past = 2 given (the lab's
demo: 2 -> 10); training windows of n_past + n_future frames, teacher forcing per sequence.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cvae.config import Config
from cvae.data import N_FRAMES, BairDataset, CondStats, load_split, resolve_root
from cvae.model import SVG

SPLITS = ("train", "validate", "test")
DEFAULT_PROTOCOL = (2, 10)  # the lab's demo: 2 given frames, 10 predicted


def prepare(cfg: Config, quiet: bool = False) -> str:
    root = resolve_root(cfg.data)
    for split in ("train", "validate"):
        load_split(root, split, skip_bad=cfg.skip_bad)
    if not quiet:
        print(f"data: {root}", file=sys.stderr, flush=True)
    return str(root)


def build_model(cfg: Config) -> SVG:
    return SVG(cfg)


def step(model: SVG, x: torch.Tensor, cond: torch.Tensor, tf: torch.Tensor, cfg: Config):
    """(sum over predicted steps of the per-step MSE, summed KL, steps) of one batch."""
    out = model(x, cond, tf)
    return out.mse, out.kld, out.steps


class TrainingData:
    """Random training windows of the train split, the validation split and the condition
    statistics (from the checkpoint when resuming, else of the train split)."""

    def __init__(self, cfg: Config, root: Path, state: Optional[dict] = None):
        self.cfg = cfg
        self.train_set = BairDataset(root, "train", cfg.n_past + cfg.n_future,
                                     skip_bad=cfg.skip_bad)
        cond_stats = None  # from the checkpoint, or of the split just loaded (not loaded twice)
        if state is not None:
            cond_stats = load_stats(state)
        elif cfg.normalize_conditions:
            cond_stats = CondStats.of(self.train_set.arrays.conds)
        self.cond_stats = self.train_set.cond_stats = cond_stats
        self.val_set = BairDataset(root, "validate", cfg.n_past + cfg.eval_n_future, cond_stats,
                                   skip_bad=cfg.skip_bad)

    def extra_state(self) -> dict:
        return {"cond_stats": self.cond_stats.to_dict() if self.cond_stats else None}

    def steps(self, epoch: int, rng: np.random.Generator) -> int:
        return self.cfg.epoch_size

    def sample(self, rng: np.random.Generator, epoch: int, step: int):
        """(frames (B, T, 3, 64, 64), conditions (B, T, 7), sequence indices)."""
        cfg, n = self.cfg, len(self.train_set)
        t = cfg.n_past + cfg.n_future
        idx = rng.integers(n, size=cfg.batch_size)
        starts = rng.integers(N_FRAMES - t + 1, size=cfg.batch_size)  # random windows
        if cfg.train_window == "first":  # drawn anyway: both choices see the same other draws
            starts = np.zeros_like(starts)
        x, c = self.train_set.batch(idx, starts)
        return x, c, idx

    def teacher_forcing(self, rng: np.random.Generator, tfr: float) -> torch.Tensor:
        """One coin per sequence."""
        return torch.from_numpy(rng.random(self.cfg.batch_size) < tfr)

    def validation_protocol(self) -> dict:
        cfg = self.cfg
        return dict(n_past=cfg.n_past, n_future=cfg.eval_n_future,
                    max_sequences=cfg.val_sequences)


def load_stats(state: dict) -> Optional[CondStats]:
    return CondStats.from_dict(state.get("cond_stats"))


def eval_setup(root: Path, split: str, cfg: Config, stats: Optional[CondStats],
               n_past: Optional[int], n_future: Optional[int], skip_bad: bool = False
               ) -> tuple[BairDataset, int, int]:
    """(sequences of `split`, n_past, n_future): the first n_past + n_future frames of each
    sequence are scored (default: the lab's demo protocol, 2 -> 10)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    n_past = DEFAULT_PROTOCOL[0] if n_past is None else n_past
    n_future = DEFAULT_PROTOCOL[1] if n_future is None else n_future
    if min(n_past, n_future) < 1 or n_past + n_future > N_FRAMES:
        raise ValueError(f"n_past {n_past}, n_future {n_future}: expected n_past + n_future <= "
                         f"{N_FRAMES} frames, each >= 1")
    dataset = BairDataset(root, split, seq_len=n_past + n_future, cond_stats=stats,
                          skip_bad=skip_bad)
    return dataset, n_past, n_future


def run_synth(args) -> int:
    from cvae.synth import run
    return run(args)


def run_check(args) -> int:
    from cvae.data import run_check
    return run_check(args)
