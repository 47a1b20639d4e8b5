"""The SM-MNIST task: SVG (cvae.model, one channel, no conditions) on Stochastic Moving MNIST
(`data`); the interface of cvae.tasks.

Training: batches of `batch_size` new sequences of n_past + n_future frames, drawn on the fly
from the training digits with the trainer's generator (SVG draws them on the fly too);
teacher forcing per sequence, as BAIR. Protocol (SVG's): n_past frames given, the next
eval_n_future predicted, z from the prior; PSNR/SSIM per frame against the copy-last-frame
baseline; `--samples N` scores the best of N samples by SSIM. Validation and test: 128 fixed
sequences each, made of digits the training never sees.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from cvae.config import Config
from cvae.data import DataError
from cvae.model import SVG
from cvae.tasks import bair, data_root
from cvae.tasks.smmnist.data import (EVAL_FRAMES, EVAL_SEQUENCES, SPLITS, Digits,
                                     ensure_digits, load_digits)


def resolve_root(data: Optional[str]) -> Path:
    """The digits' root: an MNIST folder in torchvision's layout, or the rendered digits
    (generated once into the cache)."""
    return data_root(data, ensure_digits)


def prepare(cfg: Config, quiet: bool = False) -> str:
    root = resolve_root(cfg.data)
    for split in ("train", "validate"):
        load_digits(root, split)
    if not quiet:
        print(f"data: {root}", file=sys.stderr, flush=True)
    return str(root)


def build_model(cfg: Config) -> SVG:
    return SVG(cfg, channels=1, cond_dim=0)


step = bair.step  # the same SVG training step


def sequences(root: Path, split: str, cfg: Config, seq_len: int = EVAL_FRAMES) -> Digits:
    """The fixed evaluation sequences of `split` (train: as many, from the training digits)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    return Digits(load_digits(root, split), cfg.digits, split, seed=0,
                  n_sequences=EVAL_SEQUENCES.get(split, EVAL_SEQUENCES["test"]), seq_len=seq_len)


class TrainingData:
    """New training sequences every batch and the validation sequences."""

    def __init__(self, cfg: Config, root: Path, state: Optional[dict] = None):
        self.cfg = cfg
        self.train_set = Digits(load_digits(root, "train"), cfg.digits, "train")
        self.val_set = sequences(root, "validate", cfg, cfg.n_past + cfg.eval_n_future)

    def extra_state(self) -> dict:
        return {}

    def steps(self, epoch: int, rng: np.random.Generator) -> int:
        return self.cfg.epoch_size

    def sample(self, rng: np.random.Generator, epoch: int, step: int):
        """(frames (B, T, 1, 64, 64), no conditions (B, T, 0), no sequence indices)."""
        cfg = self.cfg
        x = self.train_set.sample(rng, cfg.batch_size, cfg.n_past + cfg.n_future)
        return x, x.new_zeros(len(x), x.shape[1], 0), np.zeros(0, np.int64)

    # as BAIR's: one teacher-forcing coin per sequence; validation n_past -> eval_n_future
    teacher_forcing = bair.TrainingData.teacher_forcing
    validation_protocol = bair.TrainingData.validation_protocol


def load_stats(state: dict) -> None:
    return None


def eval_setup(root: Path, split: str, cfg: Config, stats: None, n_past: Optional[int],
               n_future: Optional[int], skip_bad: bool = False) -> tuple[Digits, int, int]:
    """(sequences of `split`, n_past, n_future); by default the run's own n_past ->
    eval_n_future (SVG's protocol)."""
    n_past = cfg.n_past if n_past is None else n_past
    n_future = cfg.eval_n_future if n_future is None else n_future
    if min(n_past, n_future) < 1:
        raise ValueError(f"n_past {n_past}, n_future {n_future}: expected each >= 1")
    return sequences(root, split, cfg, n_past + n_future), n_past, n_future


# ----------------------------------------------------------------------------- command line

def run_synth(args: argparse.Namespace) -> int:
    """Render the digits (into --out, default the cache) and write a strip of one sequence."""
    from cvae import visualize
    from cvae.synth import write_atomically
    from cvae.tasks.smmnist.data import digits_path, write_digits

    out = Path(args.out).expanduser() if args.out else digits_path(seed=args.seed)
    try:
        stats = write_atomically(out, lambda tmp: write_digits(tmp, seed=args.seed))
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seq = Digits(load_digits(out, "train"), 2, "train").sample(
        np.random.default_rng(args.seed), 1, 20)[0]
    strip = visualize.save_strip(Path(out) / "strip.png", seq)
    print(f"synth smmnist: wrote {stats['path']} ({sum(stats['sizes'].values())} digits) in "
          f"{stats['elapsed_s']:.1f}s; a sequence of 2 digits: {strip}", file=sys.stderr)
    return 0


def check(root: Path) -> dict:
    """Per split: how many digits, their mean ink, and the copy-last PSNR of 2 -> 10 on the
    first 64 evaluation sequences of 2 digits (how much there is to predict)."""
    from cvae.metrics import psnr

    report: dict = {"root": str(root), "splits": {}, "problems": []}
    if not Path(root).is_dir():
        report["problems"].append(f"{root}: data folder not found")
        return report
    for split in SPLITS:
        try:
            digits = load_digits(root, split)
        except DataError as e:
            if str(e) not in report["problems"]:  # a missing MNIST is one problem, not three
                report["problems"].append(str(e))
            continue
        seqs = Digits(digits, 2, split, n_sequences=64, seq_len=12)
        x, _ = seqs.batch(np.arange(64), np.zeros(64, int))
        copy = psnr(x[:, 1:2].expand(-1, 10, -1, -1, -1), x[:, 2:]).mean().item()
        report["splits"][split] = dict(digits=len(digits), mean_ink=float(digits.mean() / 255),
                                       copy_last_psnr_2_to_10=copy)
    return report


def run_check(args: argparse.Namespace) -> int:
    status = 0
    for d in [Path(d) for d in args.dir] or [resolve_root(None)]:
        report = check(d)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"{report['root']}:")
            for split, s in report["splits"].items():
                print(f"  {split}: {s['digits']} digits, mean ink {s['mean_ink']:.3f}, copy "
                      f"last frame 2 -> 10 PSNR {s['copy_last_psnr_2_to_10']:.2f} dB")
            for problem in report["problems"]:
                print(f"  problem: {problem}")
        status = max(status, 1 if report["problems"] else 0)
    return status
