"""The training loop (`fit`, which knows nothing about Ray or about tasks) and `cvae train`.

Loss, both tasks: sum over predicted steps of the per-pixel MSE plus beta * KL(q || p), beta
from the KL annealing schedule (SVG, Denton & Fergus 2018, Eq. 3; the dance lab's
`training_one_step`). What a batch is, the model and its step, and the validation protocol come
from the task (cvae.tasks); the schedules, optimizer, clipping, checkpoints and reports are
shared.
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
from tqdm import tqdm

from cvae import checkpoint, jsonsafe, tasks
from cvae.config import PRESETS, Config, lr_milestones, preset
from cvae.data import DataError
from cvae.evaluate import evaluate
from cvae.schedules import beta_curve, kl_beta, teacher_forcing_ratio

Report = Callable[[dict, str], None]  # (metrics of the epoch, checkpoint directory)
Progress = Callable[[int, int, dict, int], None]  # (1-based epoch, step, its metrics, steps)


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
    activations in again (docs/performance.md: 8.3 s of system time in 6 bench steps, 1.8 s
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
    (docs/performance.md)."""
    return device.type == "cuda"


def _flag(value: str, default: bool) -> bool:
    return default if value == "auto" else value == "on"


def learning_rate(cfg: Config, epoch: int) -> float:
    """lr of 0-based `epoch`: times lr_gamma for each milestone reached (MultiStepLR stepped
    once per epoch, as the dance lab's scheduler)."""
    return cfg.lr * cfg.lr_gamma ** sum(epoch >= m for m in lr_milestones(cfg))


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
        self.task = tasks.get(cfg.task)
        self.data = self.task.TrainingData(cfg, self.task.resolve_root(cfg.data), state)
        self.train_set, self.val_set = self.data.train_set, self.data.val_set
        self.model = self.task.build_model(cfg).to(self.device)
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
            **self.data.extra_state(),  # bair: cond_stats
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
    def _batch(self, step: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(frames, conditions, sequence indices) of training step `step` of this epoch, on
        the device."""
        x, c, idx = self.data.sample(self.rng, self.epochs_done, step)
        pin = self.device.type == "cuda"
        x = (x.pin_memory() if pin else x).to(self.device, non_blocking=True)
        c = (c.pin_memory() if pin else c).to(self.device, non_blocking=True)
        return x, c, idx

    def train_step(self, x, c, tf: torch.Tensor, beta: float) -> dict[str, float]:
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.amp
                    else contextlib.nullcontext())
        with autocast:
            mse, kld, steps = self.task.step(self.model, x, c, tf, self.cfg)
            loss = mse + beta * kld
        if not torch.isfinite(loss):
            return {"loss": math.nan, "mse": math.nan, "kld": math.nan}
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return {"loss": loss.item() / steps, "mse": mse.item() / steps, "kld": kld.item() / steps}

    def epoch(self, progress: Optional[Progress] = None) -> dict[str, Any]:
        """Train one epoch and validate; returns the epoch's metrics (see CONTRACTS.md)."""
        cfg, e = self.cfg, self.epochs_done
        start = time.time()
        self.model.train()
        tfr = teacher_forcing_ratio(cfg, e)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, e)
        sums = {"loss": 0.0, "mse": 0.0, "kld": 0.0}
        diverged = False
        steps = self.data.steps(e, self.rng)
        betas = []  # what each step used (a per-step schedule changes within the epoch)
        for step in range(steps):
            beta = kl_beta(cfg, e, step)
            betas.append(beta)
            x, c, _ = self._batch(step)
            tf = self.data.teacher_forcing(self.rng, tfr)
            tf = tf.to(self.device) if isinstance(tf, torch.Tensor) else tf
            m = self.train_step(x, c, tf, beta)
            if not math.isfinite(m["loss"]):
                diverged = True
                break
            for k in sums:
                sums[k] += m[k]
            if progress:
                progress(self.epochs_done + 1, step, m, steps)
        self.epochs_done += 1
        best = max([h["val_psnr"] for h in self.history], default=0.0)
        row: dict[str, Any] = {"epoch": self.epochs_done, "beta": float(np.mean(betas)),
                               "beta_last": betas[-1], "tfr": tfr, "diverged": diverged}
        if diverged:  # a finite worst case keeps TPE and ASHA working
            row.update(loss=math.nan, mse=math.nan, kld=math.nan, val_psnr=0.0, val_ssim=0.0,
                       val_psnr_best=best)
        else:
            row.update({k: v / steps for k, v in sums.items()})
            val = evaluate(self.model, self.val_set, device=self.device, seed=cfg.seed,
                           **self.data.validation_protocol())
            row.update(val_psnr=val["psnr"], val_ssim=val["ssim"],
                       val_psnr_best=max(best, val["psnr"]),
                       val_baseline_psnr=val["baseline_psnr"])  # the copy baseline, same sequences
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
    """A tqdm bar per epoch on stderr (steps, loss, elapsed and remaining time), closed by the
    epoch's validation line."""

    def __init__(self, cfg: Config):
        self.cfg, self.bar = cfg, None

    def step(self, epoch: int, step: int, m: dict, n: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=n, desc=f"epoch {epoch}/{self.cfg.epochs}", file=sys.stderr,
                            unit="step", dynamic_ncols=True,
                            mininterval=0.5 if sys.stderr.isatty() else 30.0)
        self.bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
        self.bar.update(1)

    def epoch(self, row: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
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
    visualize.plot_curves(out / "curves.png", history, title=f"preset {args.preset}",
                          beta=beta_curve(cfg))
    from cvae.evaluate import baseline_name, evaluate_checkpoint
    result = evaluate_checkpoint(out / "checkpoint", data=cfg.data, split="test",
                                 n_past=cfg.n_past, n_future=cfg.eval_n_future,
                                 media_dir=out, device=str(select_device(cfg.device)),
                                 skip_bad=cfg.skip_bad)
    (out / "test_metrics.json").write_text(jsonsafe.dumps(result, indent=2))
    media = sorted({Path(f).name for v in result["media"].values()
                    for f in (v if isinstance(v, list) else [v])})
    print(f"test: PSNR {result['psnr']:.2f} dB ({baseline_name(result['n_past'])} "
          f"{result['baseline_psnr']:.2f}), SSIM {result['ssim']:.4f}; wrote {out}/ metrics.csv "
          f"curves.png {' '.join(media)} test_metrics.json checkpoint/", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train one model and write metrics, curves, GIF, grid and checkpoint",
        description="Train one CVAE. Any config field can be overridden as key=value "
                    "(e.g. lr=0.001 kl_anneal=monotonic).")
    p.add_argument("--data", default=None,
                   help="dataset root in the task's layout (default: embedded synthetic data)")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="configuration preset, which also picks the task: lab, cpu, tiny "
                        "(bair), dance-lab, dance-cpu, dance-tiny, smmnist-lab, smmnist-cpu, "
                        "smmnist-tiny (default: cpu)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out sequences that fail the data checks, listing them, instead of "
                        "stopping (as skip_bad=true)")
    p.add_argument("--out", default=None, help="output directory (default: runs/<preset>-<time>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config field overrides")
    p.set_defaults(func=run)
