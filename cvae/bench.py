"""`cvae bench`: time training steps of the real model on random data, or the data loader.

The preset picks the task. For BAIR, with `--compare`, the same model and batch are also timed
with
- `reference`: a straightforward per-timestep loop, as the lab's and SVG's training scripts
  are written (every step encodes x_{t-1} and x_t and decodes one frame), and
- `floor`: one batched forward + backward pass of encoder and decoder over the same frames,
  each predicted frame decoded with its own skip maps. The project's teacher-forced step can
  go below it: steps that share the last context frame's skip maps share the skip maps'
  convolutions (`Decoder.skip_terms`).
For the dance task, `--compare` times the project's step (teacher-forced steps batched over
time, each frame encoded once) against `reference`, the lab's `training_one_step` written
step by step (every step encodes the previous and the current frame and the pose).
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from typing import Callable

import numpy as np
import torch

from cvae import tasks
from cvae.config import PRESETS, preset
from cvae.model import SVG, kl_divergence
from cvae.tasks.dance.model import DanceVAE, kl_criterion
from cvae.train import channels_last_default, reuse_freed_memory, select_device


def reference_step(model: SVG, x: torch.Tensor, c: torch.Tensor, teacher_forcing: bool):
    """The lab's loop, step by step: encoder twice per step, decoder once per step."""
    mse = kld = x.new_zeros(())
    post_state = pred_state = None
    x_in = x[:, 0]
    skip = None
    for i in range(1, x.shape[1]):
        h, s = model.encoder(x_in)
        if i <= model.n_past or model.last_frame_skip:
            skip = s
        h_target, _ = model.encoder(x[:, i])
        z, mu, logvar, post_state = model.posterior(h_target, post_state)
        h_pred, pred_state = model.frame_predictor(torch.cat([c[:, i], h, z], 1), pred_state)
        x_pred = model.decoder(h_pred, skip)
        mse = mse + (x_pred - x[:, i]).pow(2).mean()
        kld = kld + kl_divergence(mu, logvar)
        x_in = x[:, i] if teacher_forcing or i < model.n_past else x_pred
    return mse, kld


def floor_step(model: SVG, x: torch.Tensor, c: torch.Tensor, teacher_forcing: bool):
    """Encoder over all B*T frames and decoder over all B*(T-1) predicted frames, batched."""
    h, skips = model.encode(x)  # (T, B, g); skips (T, B, c, s, s)
    x_pred = model.decoder(h[:-1].flatten(0, 1), [s[:-1].flatten(0, 1) for s in skips])
    return (x_pred - x[:, 1:].transpose(0, 1).flatten(0, 1)).pow(2).mean(), h.new_zeros(())


def project_step(model: SVG, x: torch.Tensor, c: torch.Tensor, teacher_forcing: bool):
    out = model(x, c, teacher_forcing)
    return out.mse, out.kld


def dance_reference_step(model: DanceVAE, x: torch.Tensor, c: torch.Tensor,
                         teacher_forcing: bool):
    """The dance lab's loop, step by step: previous frame, current frame and pose encoded at
    every step, one decoder and generator call per step."""
    mse = kld = x.new_zeros(())
    prev = x[:, 0]
    for i in range(1, x.shape[1]):
        l_cur = model.label_transformation(c[:, i])
        z, mu, logvar = model.Gaussian_Predictor(model.frame_transformation(x[:, i]), l_cur)
        pred = model.Generator(model.Decoder_Fusion(model.frame_transformation(prev), l_cur, z))
        mse = mse + (pred - x[:, i]).pow(2).mean()
        kld = kld + kl_criterion(mu, logvar, x.shape[0])
        prev = x[:, i] if teacher_forcing else pred.detach()
    return mse, kld


def dance_project_step(model: DanceVAE, x: torch.Tensor, c: torch.Tensor,
                       teacher_forcing: bool, chunk: int = 0):
    """The project's step; `chunk` steps batched per call (0: all)."""
    mse, kld, _ = model(x, c, teacher_forcing, chunk=chunk or None)
    return mse, kld


STEPS: dict[str, dict[str, Callable]] = {
    "bair": {"project": project_step, "reference": reference_step, "floor": floor_step},
    "dance": {"project": dance_project_step, "reference": dance_reference_step},
}


def time_steps(runs: dict[str, tuple[Callable, SVG]], x, c, tf: bool, steps: int,
               warmup: int) -> dict[str, list[float]]:
    """Seconds per forward + backward + Adam update of each (step, model), after `warmup`
    untimed steps. The runs take turns step by step, so that a machine slowing down or
    speeding up (shared hosts do) affects them alike."""
    opts = {name: torch.optim.Adam(model.parameters(), lr=1e-4)
            for name, (_, model) in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(warmup + steps):
        for name, (step, model) in runs.items():
            if x.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            mse, kld = step(model, x, c, tf)
            opts[name].zero_grad(set_to_none=True)
            (mse + 1e-4 * kld).backward()
            opts[name].step()
            if x.is_cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
        print(f"  step {i + 1}/{warmup + steps}" + (" (warm-up)" if i < warmup else ""),
              file=sys.stderr, flush=True)
    return times


def bench_model(args: argparse.Namespace) -> dict:
    overrides = {"width": args.width} if args.width else {}
    cfg = preset(args.preset, **overrides)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    if device.type == "cpu":
        reuse_freed_memory()  # as training does
    dance = cfg.task == "dance"
    batch = args.batch or (cfg.batch_size if dance else 4)
    seq_len = args.seq_len or (cfg.clip_len if dance else 12)
    torch.manual_seed(0)
    if dance:  # frames and pose images, (B, T, 3, 32, 64) each
        x = torch.rand(batch, seq_len, 3, 32, 64, device=device)
        c = torch.rand(batch, seq_len, 3, 32, 64, device=device)
    else:
        x = torch.rand(batch, seq_len, 3, 64, 64, device=device)
        c = torch.randn(batch, seq_len, cfg.cond_dim, device=device)
    tf = args.tfr >= 0.5
    result = {"preset": args.preset, "task": cfg.task, "width": cfg.width, "batch": batch,
              "seq_len": seq_len, "teacher_forcing": tf, "device": str(device),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "runs": {}}
    steps = dict(STEPS[cfg.task])
    if dance:
        steps["project"] = functools.partial(dance_project_step, chunk=args.chunk or cfg.chunk)
        result["chunk"] = args.chunk or cfg.chunk
    names = list(steps) if args.compare else ["project"]
    # the project's step and the floor run in training's memory format unless told; the
    # straightforward reference keeps the default (NCHW)
    channels_last = (channels_last_default(device) if args.channels_last is None
                     else args.channels_last)
    formats = {name: channels_last and name != "reference" for name in names}
    build = tasks.get(cfg.task).build_model
    variants = {name: (steps[name], build(cfg).to(device).to(
        memory_format=torch.channels_last if formats[name] else torch.contiguous_format))
                for name in names}
    result["parameters"] = sum(p.numel() for p in variants["project"][1].parameters())
    print(f"timing {', '.join(names)} ({args.steps} steps each after {args.warmup} warm-up, "
          f"taking turns)...", file=sys.stderr)
    times = time_steps(variants, x, c, tf, args.steps, args.warmup)
    for name in names:
        s = statistics.median(times[name])
        result["runs"][name] = {"s_per_step": s, "frames_per_s": batch * seq_len / s,
                                "channels_last": formats[name], "times": times[name]}
    runs = result["runs"]
    if args.compare:
        result["speedup_vs_reference"] = (runs["reference"]["s_per_step"]
                                          / runs["project"]["s_per_step"])
        if "floor" in runs:
            result["time_vs_floor"] = runs["project"]["s_per_step"] / runs["floor"]["s_per_step"]
    return result


def bench_loader(args: argparse.Namespace) -> dict:
    from cvae.data import BairDataset, N_FRAMES, resolve_root

    batch, seq_len = args.batch or 4, args.seq_len or 12
    ds = BairDataset(resolve_root(args.data), args.split, seq_len)
    rng = np.random.default_rng(0)
    ds.batch(rng.integers(len(ds), size=batch), np.zeros(batch, int))  # warm-up
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 3.0:
        idx = rng.integers(len(ds), size=batch)
        ds.batch(idx, rng.integers(N_FRAMES - seq_len + 1, size=batch))
        n += batch
    elapsed = time.perf_counter() - start
    return {"data": args.data, "split": args.split, "sequences": len(ds), "batch": batch,
            "seq_len": seq_len, "sequences_per_s": n / elapsed,
            "threads": torch.get_num_threads()}


def run(args: argparse.Namespace) -> int:
    dance = preset(args.preset).task == "dance"
    if args.seq_len is not None and not 2 <= args.seq_len <= (10 ** 4 if dance else 30):
        print(f"error: --seq-len {args.seq_len}: expected 2.." + ("" if dance else "30"),
              file=sys.stderr)
        return 2
    if dance and args.data:
        print("error: --data: the loader bench reads the BAIR layout", file=sys.stderr)
        return 2
    if args.batch is not None and args.batch < 1:
        print(f"error: --batch {args.batch}: expected an integer >= 1", file=sys.stderr)
        return 2
    from cvae.data import DataError

    try:
        result = bench_loader(args) if args.data else bench_model(args)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.data:
        print(f"loader: {result['sequences_per_s']:.0f} sequences/s of {result['seq_len']} "
              f"frames (batch {result['batch']}, {result['threads']} threads)")
    else:
        size = (f", chunk {result['chunk'] or 'all'}" if result["task"] == "dance"
                else f", width {result['width']}")
        print(f"model: preset {result['preset']} ({result['task']}){size}, "
              f"{result['parameters']:,} parameters, batch {result['batch']} x "
              f"{result['seq_len']} frames, teacher forcing "
              f"{'on' if result['teacher_forcing'] else 'off'}, {result['device']}, "
              f"{result['threads']} threads")
        for name, r in result["runs"].items():
            print(f"  {name:9s} {r['s_per_step']:8.3f} s/step {r['frames_per_s']:8.1f} frames/s"
                  + ("  (channels_last)" if r["channels_last"] else ""))
        if args.compare:
            print(f"  speed-up over the per-timestep reference: "
                  f"{result['speedup_vs_reference']:.2f}x"
                  + (f"; time / floor: {result['time_vs_floor']:.2f}"
                     if "time_vs_floor" in result else ""))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="time training steps (frames/s) or the data loader (sequences/s)",
        description="Time training steps of the real model on random data after warm-up, or "
                    "with --data the data loader alone.")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="model configuration, which picks the task (default: cpu)")
    p.add_argument("--width", type=float, default=None,
                   help="override the preset's channel width multiplier (1.0 = lab size)")
    p.add_argument("--batch", type=int, default=None,
                   help="sequences per batch (default: 4; dance: the preset's batch_size)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="frames per sequence (default: 12; dance: the preset's clip_len)")
    p.add_argument("--tfr", type=float, default=1.0, choices=[0.0, 1.0],
                   help="1.0: teacher-forced steps; 0.0: free-running steps (default: 1.0)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (default: 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (default: 2)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (default: 0 = torch's default)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format for the project's step and the floor "
                        "(default: as training: on for CUDA, off for CPU; the reference "
                        "always NCHW)")
    p.add_argument("--chunk", type=int, default=0,
                   help="dance: steps batched per call in the project's step (default: the "
                        "preset's chunk, 0 = all; on CPU 4 measured fastest at lab size)")
    p.add_argument("--compare", action="store_true",
                   help="also time the per-timestep reference loop and the encoder+decoder floor")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="time the data loader on DIR instead of the model")
    p.add_argument("--split", default="train", choices=["train", "validate", "test"],
                   help="split the loader reads with --data (default: train)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)
