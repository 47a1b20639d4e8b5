"""The dance task: the lab's template model (`model`) on pose-labelled frames in the lab's
layout (`data`), embedded synthetic dancer (`synth`); the interface of cvae.tasks.

Training (the lab's `training_stage`): each epoch takes the training clips (a `fast_partial`
share during the first `fast_train_epochs` epochs, else `partial`) in a new random order, in
batches of `batch_size` clips of `clip_len` frames (the lab iterates them unshuffled); teacher
forcing is one coin per batch with probability tfr, as in the lab.

Protocol (the lab's validation and test): the first frame given, every later frame generated
from the model's own previous frame, the frame's pose and z ~ N(0, I); PSNR per generated frame
with data range 1, averaged over frames (and sequences). Validation: the first `val_len` frames
of the val sequence (630 in the lab); test: every test sequence in full.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cvae.config import Config
from cvae.data import DataError
from cvae.tasks.dance.data import (FRAME_H, FRAME_W, DanceClips, check_dance,
                                   format_dance_report, load_dance_split, load_dance_test,
                                   to_tensor)
from cvae.tasks.dance.model import DanceVAE

SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}  # -> lab folder


def resolve_root(data: Optional[str]) -> Path:
    """The dataset root: the given folder, or the embedded synthetic dance data (generated
    once into the cache)."""
    from cvae.tasks import data_root
    from cvae.tasks.dance.synth import ensure_synthetic_dance

    return data_root(data, ensure_synthetic_dance)


def prepare(cfg: Config, quiet: bool = False) -> str:
    root = resolve_root(cfg.data)
    DanceClips(root, "train", cfg.clip_len, cfg.partial)
    ValSequence(root, cfg.val_len)
    if not quiet:
        print(f"data: {root}", file=sys.stderr, flush=True)
    return str(root)


def build_model(cfg: Config) -> DanceVAE:
    return DanceVAE(f_dim=cfg.g_dim, l_dim=cfg.pose_dim, n_dim=cfg.z_dim,
                    d_out_dim=cfg.fusion_dim, clamp_feedback=cfg.clamp_feedback)


def step(model: DanceVAE, frames: torch.Tensor, labels: torch.Tensor, tf, cfg: Config):
    """(sum over steps of the per-step MSE, KL summed over latent elements / B, steps)."""
    return model(frames, labels, tf, chunk=cfg.chunk or None)


# ----------------------------------------------------------------------------- evaluation data

class Sequences:
    """Whole sequences to score with the autoregressive protocol, in the interface
    cvae.evaluate reads (`len`, `batch`): frames and pose labels uint8 (K, T, 32, 64, 3).
    Without ground truth (the lab's test split) `frames` holds the first frame only and
    `has_truth` is False."""

    def __init__(self, frames: np.ndarray, labels: np.ndarray, names: list[str],
                 has_truth: bool = True):
        self.frames, self.labels, self.names, self.has_truth = frames, labels, names, has_truth
        self.seq_len = labels.shape[1]
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: np.ndarray, starts: np.ndarray, seq_len: Optional[int] = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames and poses float (B, T, 3, 32, 64) of sequences `indices` from `starts`;
        frames past the first are zero where there is no ground truth."""
        t = seq_len or self.seq_len
        rows = np.asarray(starts)[:, None] + np.arange(t)  # (B, T)
        labels = to_tensor(self.labels[np.asarray(indices)[:, None], rows])
        frames = torch.zeros_like(labels)
        given = self.frames.shape[1]
        have = rows < given
        if have.all():
            frames = to_tensor(self.frames[np.asarray(indices)[:, None], rows])
        else:
            for j, i in enumerate(indices):
                frames[j, have[j]] = to_tensor(self.frames[i, rows[j][have[j]]])
        return frames, labels


class ValSequence(Sequences):
    """The first `length` frames of the val split's sequence (the lab's validation)."""

    def __init__(self, root: Path, length: int):
        data = load_dance_split(root, "val")
        if len(data) < length:
            raise DataError(f"{Path(root) / 'val' / 'val_img'}: {len(data)} frames, the "
                            f"validation protocol needs {length} (val_len)")
        super().__init__(np.asarray(data.frames[None, :length]),
                         np.asarray(data.labels[None, :length]), ["val"])


def test_split(root: Path) -> Sequences:
    """Every test sequence from its first frame; all must have as many pose labels."""
    test = load_dance_test(root)
    lengths = np.diff(test.offsets)
    if len(set(lengths.tolist())) != 1:
        raise DataError(f"{Path(root) / 'test' / 'test_label'}: sequences of "
                        f"{'/'.join(map(str, sorted(set(lengths.tolist()))))} labels; the test "
                        "protocol scores sequences of one length")
    t = int(lengths[0])
    labels = np.asarray(test.labels).reshape(len(test), t, FRAME_H, FRAME_W, 3)
    if test.truth is not None:
        frames = np.asarray(test.truth).reshape(labels.shape)
    else:
        frames = np.asarray(test.first)[:, None]
    return Sequences(frames, labels, list(test.names), has_truth=test.truth is not None)


def train_sequences(root: Path, length: int) -> Sequences:
    """The training frames cut into consecutive sequences of `length` frames."""
    clips = DanceClips(root, "train", length)
    rows = np.arange(len(clips) * length)
    shape = (len(clips), length, FRAME_H, FRAME_W, 3)
    return Sequences(np.asarray(clips.data.frames[rows]).reshape(shape),
                     np.asarray(clips.data.labels[rows]).reshape(shape),
                     [f"train {i}" for i in range(len(clips))])


def load_stats(state: dict) -> None:
    """Nothing: pose images need no statistics."""
    return None


def eval_setup(root: Path, split: str, cfg: Config, stats: None, n_past: Optional[int],
               n_future: Optional[int], skip_bad: bool = False
               ) -> tuple[Sequences, int, int]:
    """(sequences, 1, T - 1): the lab's protocol. n_past and n_future (the BAIR protocol's
    frames) do not apply and are ignored; `skip_bad` too (bad dance data is always an error)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of train, validate, test")
    folder = SPLITS[split]
    if folder == "val":
        data = ValSequence(root, cfg.val_len)
    elif folder == "test":
        data = test_split(root)
    else:
        data = train_sequences(root, cfg.val_len)
    return data, 1, data.seq_len - 1


# ----------------------------------------------------------------------------- training data

class TrainingData:
    """The training clips, drawn in a new random order each epoch, and the validation
    sequence."""

    def __init__(self, cfg: Config, root: Path, state: Optional[dict] = None):
        self.cfg = cfg
        self.train_set = DanceClips(root, "train", cfg.clip_len, cfg.partial)
        self.val_set = ValSequence(root, cfg.val_len)
        self.order = np.zeros(0, dtype=np.int64)

    def clips_in_epoch(self, epoch: int) -> int:
        """Clips of 0-based `epoch`: the first int(N * share) // clip_len of the split."""
        cfg = self.cfg
        share = cfg.fast_partial if epoch < cfg.fast_train_epochs else cfg.partial
        return max(1, int(len(self.train_set.data) * share) // cfg.clip_len)

    def extra_state(self) -> dict:
        return {}

    def steps(self, epoch: int, rng: np.random.Generator) -> int:
        """Batches of `epoch` (epoch_size, or 0: one pass over its clips without the last
        partial batch); draws the epoch's clip order."""
        cfg, n = self.cfg, self.clips_in_epoch(epoch)
        steps = cfg.epoch_size or n // cfg.batch_size
        if steps == 0:
            raise DataError(f"{n} training clips of {cfg.clip_len} frames make no batch of "
                            f"{cfg.batch_size} (lower batch_size or clip_len)")
        need = -(-steps * cfg.batch_size // n)  # whole permutations covering every batch
        self.order = np.concatenate([rng.permutation(n) for _ in range(need)])
        return steps

    def sample(self, rng: np.random.Generator, epoch: int, step: int):
        """(frames, poses) float (B, clip_len, 3, 32, 64) and the clip indices."""
        b = self.cfg.batch_size
        idx = self.order[step * b:(step + 1) * b]
        frames, labels = self.train_set.batch(idx)
        return frames, labels, idx

    def teacher_forcing(self, rng: np.random.Generator, tfr: float) -> bool:
        """One coin per batch (the lab's training_stage)."""
        return bool(rng.random() < tfr)

    def validation_protocol(self) -> dict:
        return dict(n_past=1, n_future=self.cfg.val_len - 1, max_sequences=0)


# ----------------------------------------------------------------------------- command line

def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    from cvae.tasks.dance.synth import DEFAULT_SIZES

    group = parser.add_argument_group("dance task (with --task dance)")
    group.add_argument("--dancers", type=int, default=DEFAULT_SIZES["dancers"],
                       help=f"cast members dancing the training frames (default "
                            f"{DEFAULT_SIZES['dancers']})")
    group.add_argument("--train-len", type=int, default=DEFAULT_SIZES["train_len"],
                       help=f"training frames per dancer, a multiple of 16 (default "
                            f"{DEFAULT_SIZES['train_len']})")
    group.add_argument("--val-len", type=int, default=DEFAULT_SIZES["val_len"],
                       help=f"frames of the validation sequence (default "
                            f"{DEFAULT_SIZES['val_len']})")
    group.add_argument("--test-sequences", type=int, default=DEFAULT_SIZES["test"],
                       help=f"test sequences (default {DEFAULT_SIZES['test']})")
    group.add_argument("--test-len", type=int, default=DEFAULT_SIZES["test_len"],
                       help=f"frames (pose labels) per test sequence (default "
                            f"{DEFAULT_SIZES['test_len']})")


def run_synth(args: argparse.Namespace) -> int:
    from cvae.tasks.dance import synth

    out = Path(args.out).expanduser() if args.out else synth.default_path(seed=args.seed)
    try:
        stats = synth.write_dataset(out, dancers=args.dancers, train_len=args.train_len,
                                    val_len=args.val_len, test=args.test_sequences,
                                    test_len=args.test_len, seed=args.seed)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"synth dance: wrote {stats['path']} in {stats['elapsed_s']:.1f}s, "
          f"{stats['bytes'] / 1e6:.1f} MB of PNG", file=sys.stderr)
    return 0


def run_check(args: argparse.Namespace) -> int:
    dirs = [Path(d) for d in args.dir] or [resolve_root(None)]
    status = 0
    for d in dirs:
        report = check_dance(d)
        print(json.dumps(report, indent=2) if args.json else format_dance_report(report))
        status = max(status, 1 if report["problems"] else 0)
    return status
