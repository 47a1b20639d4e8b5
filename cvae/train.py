"""The training loop (`fit`, which knows nothing about Ray) and `cvae train`.

Loss (SVG, Denton & Fergus 2018, Eq. 3): sum over predicted steps of the per-pixel MSE plus
beta * KL(q(z_t | x_1:t) || p(z_t)), beta from the KL annealing schedule.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from cvae import checkpoint, jsonsafe
from cvae.config import PRESETS, Config, preset
from cvae.data import BairDataset, CondStats, DataError, N_FRAMES, resolve_root
from cvae.evaluate import evaluate
from cvae.model import SVG
from cvae.schedules import kl_beta, teacher_forcing_ratio

Report = Callable[[dict, str], None]  # (metrics of the epoch, checkpoint directory)
Progress = Callable[[int, int, dict], None]  # (1-based epoch, step in epoch, step metrics)


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: CUDA is not available on this machine")
    return device


def reuse_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse: by default it gives blocks over
    32 MB back to the OS, and every training step of a lab-size model on CPU faults its large
    activations in again (README, Performance: 8.3 s of system time in 6 bench steps, 1.8 s
    with this). Process wide; a no-op returning False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def channels_last_default(device: torch.device) -> bool:
    """The memory format for channels_last="auto": channels_last on CUDA, as PyTorch's
    performance guide advises for convolutional networks under autocast (not measured here:
    no GPU); NCHW on CPU, where teacher-forced steps measured faster with this decoder
    (README, Performance)."""
    return device.type == "cuda"


def _flag(value: str, default: bool) -> bool:
    return default if value == "auto" else value == "on"


class Trainer:
    """Model, optimizer, data and RNGs of one run; `epoch()` trains and validates one epoch."""

    def __init__(self, cfg: Config, state: Optional[dict] = None):
        self.cfg = cfg
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.device = select_device(cfg.device)
        cuda = self.device.type == "cuda"
        self.amp = _flag(cfg.amp, cuda) and cuda  # bf16 autocast is a CUDA feature here
        self.channels_last = _flag(cfg.channels_last, channels_last_default(self.device))
        if cuda:
            torch.backends.cudnn.benchmark = True
            if cfg.gpu_memory_fraction > 0:  # fractional GPU trials share memory unisolated
                torch.cuda.set_per_process_memory_fraction(cfg.gpu_memory_fraction, self.device)
        else:
            reuse_freed_memory()
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)  # batches, windows, teacher-forcing coins
        root = resolve_root(cfg.data)
        self.train_set = BairDataset(root, "train", cfg.n_past + cfg.n_future,
                                     skip_bad=cfg.skip_bad)
        stats = None  # from the checkpoint, or of the split just loaded (not loaded twice)
        if state is not None:
            stats = CondStats.from_dict(state.get("cond_stats"))
        elif cfg.normalize_conditions:
            stats = CondStats.of(self.train_set.arrays.conds)
        self.cond_stats = self.train_set.cond_stats = stats
        self.val_set = BairDataset(root, "validate", cfg.n_past + cfg.eval_n_future, stats,
                                   skip_bad=cfg.skip_bad)
        self.model = SVG(cfg).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr,
                                          betas=(cfg.beta1, 0.999))
        self.epochs_done, self.history = 0, []
        if state is not None:
            self._restore(state)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        cuda_rng = ([s for s in torch.cuda.get_rng_state_all()]
                    if self.device.type == "cuda" else [])
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epochs_done,
            "history": self.history,
            "cond_stats": self.cond_stats.to_dict() if self.cond_stats else None,
            "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng,
                    "numpy": json.dumps(self.rng.bit_generator.state)},
        }

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epochs_done, self.history = state["epoch"], list(state["history"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.rng.bit_generator.state = json.loads(state["rng"]["numpy"])

    # ------------------------------------------------------------------ training
    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg, n = self.cfg, len(self.train_set)
        t = cfg.n_past + cfg.n_future
        idx = self.rng.integers(n, size=cfg.batch_size)
        starts = self.rng.integers(N_FRAMES - t + 1, size=cfg.batch_size)  # random windows
        if cfg.train_window == "first":  # drawn anyway: both choices see the same other draws
            starts = np.zeros_like(starts)
        x, c = self.train_set.batch(idx, starts)
        pin = self.device.type == "cuda"
        x = (x.pin_memory() if pin else x).to(self.device, non_blocking=True)
        c = (c.pin_memory() if pin else c).to(self.device, non_blocking=True)
        return x, c, idx

    def train_step(self, x, c, tf: torch.Tensor, beta: float) -> dict[str, float]:
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.amp
                    else contextlib.nullcontext())
        with autocast:
            out = self.model(x, c, tf)
            loss = out.mse + beta * out.kld
        if not torch.isfinite(loss):
            return {"loss": math.nan, "mse": math.nan, "kld": math.nan}
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return {"loss": loss.item() / out.steps, "mse": out.mse.item() / out.steps,
                "kld": out.kld.item() / out.steps}

    def epoch(self, progress: Optional[Progress] = None) -> dict[str, Any]:
        """Train one epoch and validate; returns the epoch's metrics (see CONTRACTS.md)."""
        cfg, e = self.cfg, self.epochs_done
        start = time.time()
        self.model.train()
        tfr = teacher_forcing_ratio(cfg, e)
        sums = {"loss": 0.0, "mse": 0.0, "kld": 0.0}
        diverged = False
        for step in range(cfg.epoch_size):
            beta = kl_beta(cfg, e, step)
            x, c, _ = self._batch()
            tf = torch.from_numpy(self.rng.random(cfg.batch_size) < tfr).to(self.device)
            m = self.train_step(x, c, tf, beta)
            if not math.isfinite(m["loss"]):
                diverged = True
                break
            for k in sums:
                sums[k] += m[k]
            if progress:
                progress(self.epochs_done + 1, step, m)
        self.epochs_done += 1
        best = max([h["val_psnr"] for h in self.history], default=0.0)
        row: dict[str, Any] = {"epoch": self.epochs_done, "beta": kl_beta(cfg, e), "tfr": tfr,
                               "diverged": diverged}
        if diverged:  # a finite worst case keeps TPE and ASHA working
            row.update(loss=math.nan, mse=math.nan, kld=math.nan, val_psnr=0.0, val_ssim=0.0,
                       val_psnr_best=best)
        else:
            row.update({k: v / cfg.epoch_size for k, v in sums.items()})
            val = evaluate(self.model, self.val_set, cfg.n_past, cfg.eval_n_future,
                           max_sequences=cfg.val_sequences, device=self.device, seed=cfg.seed)
            row.update(val_psnr=val["psnr"], val_ssim=val["ssim"],
                       val_psnr_best=max(best, val["psnr"]),
                       val_baseline_psnr=val["baseline_psnr"])  # copy-last, same sequences
        row["epoch_time_s"] = time.time() - start
        self.history.append(row)
        return row


def fit(cfg: Config, report: Report, state: Optional[dict] = None,
        progress: Optional[Progress] = None) -> list[dict]:
    """Train `cfg.epochs` epochs (continuing from a checkpoint `state` when given), calling
    `report(metrics, checkpoint_dir)` after every epoch; stops early on divergence.
    Returns the per-epoch history."""
    trainer = Trainer(cfg, state)
    while trainer.epochs_done < cfg.epochs:
        row = trainer.epoch(progress)
        with tempfile.TemporaryDirectory(prefix="cvae-ckpt-") as d:
            checkpoint.save(d, trainer.state())
            report(row, d)
        if row["diverged"]:
            break
    return trainer.history


# ---------------------------------------------------------------------------- command line

def parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r}: expected key=value")
        out[key.strip()] = value
    return out


class _Progress:
    """A one-line progress bar per epoch on stderr."""

    def __init__(self, cfg: Config):
        self.cfg, self.start = cfg, time.time()
        self.tty = sys.stderr.isatty()

    def step(self, epoch: int, step: int, m: dict) -> None:
        n = self.cfg.epoch_size
        if self.tty or step + 1 == n:
            done = int(20 * (step + 1) / n)
            sys.stderr.write(f"\repoch {epoch}/{self.cfg.epochs} [{'#' * done}{'.' * (20 - done)}]"
                             f" {step + 1}/{n} loss {m['loss']:.4f} "
                             f"{time.time() - self.start:.0f}s")
            sys.stderr.flush()

    def epoch(self, row: dict) -> None:
        sys.stderr.write(f"  val PSNR {row['val_psnr']:.2f} dB (best {row['val_psnr_best']:.2f})"
                         f" tfr {row['tfr']:.2f} beta {row['beta']:.2g}"
                         + (" DIVERGED" if row["diverged"] else "") + "\n")


def run(args: argparse.Namespace) -> int:
    from cvae import visualize

    try:
        overrides = parse_overrides(args.overrides)
        for key in ("data", "epochs"):
            if getattr(args, key) is not None:
                overrides[key] = getattr(args, key)
        if args.skip_bad:
            overrides["skip_bad"] = True
        cfg = preset(args.preset, **overrides)
        out = Path(args.out or f"runs/{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
        out.mkdir(parents=True, exist_ok=True)
        print(f"training preset {args.preset!r} for {cfg.epochs} epochs; output: {out}",
              file=sys.stderr)
        bar = _Progress(cfg)
        metrics_path = out / "metrics.csv"
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

        def report(row: dict, ckpt_dir: str) -> None:
            bar.epoch(row)
            new = not metrics_path.exists() or row["epoch"] == 1
            with open(metrics_path, "w" if new else "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    w.writeheader()
                w.writerow(row)
            checkpoint.save(out / "checkpoint", checkpoint.load(ckpt_dir))

        history = fit(cfg, report, progress=bar.step)
    except (DataError, ValueError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    visualize.plot_curves(out / "curves.png", history, title=f"preset {args.preset}")
    from cvae.evaluate import evaluate_checkpoint
    result = evaluate_checkpoint(out / "checkpoint", data=cfg.data, split="test",
                                 n_past=cfg.n_past, n_future=cfg.eval_n_future,
                                 media_dir=out, device=str(select_device(cfg.device)),
                                 skip_bad=cfg.skip_bad)
    (out / "test_metrics.json").write_text(jsonsafe.dumps(result, indent=2))
    print(f"test: PSNR {result['psnr']:.2f} dB (copy last frame {result['baseline_psnr']:.2f}), "
          f"SSIM {result['ssim']:.4f}; wrote {out}/ metrics.csv curves.png prediction.gif "
          f"grid.png psnr_per_frame.png checkpoint/", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train one model and write metrics, curves, GIF, grid and checkpoint",
        description="Train one CVAE. Any config field can be overridden as key=value "
                    "(e.g. lr=0.001 kl_anneal=monotonic).")
    p.add_argument("--data", default=None,
                   help="dataset root in the BAIR layout (default: embedded synthetic data)")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="configuration preset (default: cpu)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out sequences that fail the data checks, listing them, instead of "
                        "stopping (as skip_bad=true)")
    p.add_argument("--out", default=None, help="output directory (default: runs/<preset>-<time>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config field overrides")
    p.set_defaults(func=run)
