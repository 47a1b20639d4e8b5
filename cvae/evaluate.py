"""PSNR / SSIM evaluation (one function serves validation, test and reports, for every task)
and `cvae evaluate`.

Protocol: the first n_past + n_future frames of each sequence, n_past given, n_future predicted
autoregressively, z sampled from the prior; PSNR per frame with data range 1, averaged over
frames and sequences; the baseline repeats the last given frame. The task fixes the numbers
(cvae.tasks): BAIR, the lab's demo, 2 -> 10 by default; dance, the lab's, the first frame
given and the rest of the sequence (630 frames) generated from the poses. `samples` > 1 is
SVG's best-of-N protocol (the sample with the best mean SSIM per sequence is scored).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cvae import jsonsafe, tasks
from cvae.data import DataError
from cvae.metrics import psnr, ssim
from cvae.model import gaussian_kl

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016: Cov_x(E_q[z_u]) > 0.01


@torch.no_grad()
def evaluate(model, dataset, n_past: int = 2, n_future: int = 10, samples: int = 1,
             max_sequences: int = 0, batch_size: int = 32, device: str | torch.device = "cpu",
             shuffle_conditions: bool = False, seed: int = 0,
             keep_predictions: int = 0, z: str = "prior", ssim_kind: str = "finn",
             latent: bool = False) -> dict:
    """Score `model` on the first n_past + n_future frames of each sequence of `dataset`.

    `dataset`: a task's sequences (`len`, `batch(idx, starts, seq_len)` -> frames (B, T, 3,
    H, W) and conditions (B, T, ...)); where it has no ground truth (`has_truth` False: the
    dance lab's test split) the scores are NaN and only the predictions count.
    Returns mean and per-frame PSNR/SSIM of the model and of the copy-last-frame baseline,
    and the PSNR of the first of the `samples` draws (`first_sample_psnr`: one sample, on the
    same sequences, what the best of N is measured against);
    with `keep_predictions` = k, also the first k sequences' ground truth and prediction (and
    their conditions, when those are images).
    `shuffle_conditions` gives each sequence the conditions of another one (a derangement), or
    with a single sequence its own, shifted by half its length in time (rolled).
    `z`: "prior" (the protocol) or "posterior" (z from q(z_t | x_1:t) on the true frames: what
    z can carry at most). `ssim_kind`: see `cvae.metrics.ssim`. With `latent`, also the KL of
    the posterior from the prior on the true frames: per predicted step (summed over latent
    dimensions), per latent dimension (averaged over predicted steps) and the active units
    (Burda et al. 2016: dimensions whose posterior mean varies across inputs with variance
    > 0.01; each (sequence, predicted step) counts as one input). A spatial latent (the dance
    task's N_dim x H x W) counts its channels as the dimensions: KL summed over positions, and
    each (sequence, step, position) one input.
    """
    if z not in ("prior", "posterior"):
        raise ValueError(f"z={z!r}: expected 'prior' or 'posterior'")
    truth = getattr(dataset, "has_truth", True)
    if z == "posterior" and not truth:
        raise ValueError("z='posterior' needs the true frames, which this split lacks")
    latent = latent and truth and hasattr(model, "latents")
    was_training = model.training
    model.eval()
    n = len(dataset) if max_sequences <= 0 else min(max_sequences, len(dataset))
    t = n_past + n_future
    gen = np.random.default_rng(seed)
    perm = np.arange(n)
    if shuffle_conditions:
        perm = (np.arange(n) + 1 + gen.integers(max(1, n - 1))) % n if n > 1 else perm
    roll = t // 2 if shuffle_conditions and n == 1 else 0  # one sequence: its own, shifted
    scores = {k: [] for k in ("psnr", "ssim", "base_psnr", "base_ssim", "first_psnr")}
    kls, mus = [], []
    kept_gt, kept_pred, kept_cond = [], [], []
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for lo in range(0, n, batch_size):
            idx = np.arange(lo, min(n, lo + batch_size))
            x, _ = dataset.batch(idx, np.zeros(len(idx), int), seq_len=t)
            _, cond = dataset.batch(perm[idx], np.zeros(len(idx), int), seq_len=t)
            if roll:
                cond = cond.roll(roll, dims=1)
            x, cond = x.to(device, non_blocking=True), cond.to(device, non_blocking=True)
            target = x[:, n_past:]

            def score(pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                """PSNR and SSIM (B, n_future) of pred against the target (NaN without one)."""
                if not truth:
                    return (pred.new_full(pred.shape[:2], math.nan),) * 2
                return psnr(pred, target), ssim(pred, target, kind=ssim_kind)

            best_psnr = best_ssim = best_pred = None
            for _ in range(samples):
                extra = {"x_future": target} if z == "posterior" else {}
                pred = model.predict(x[:, :n_past], cond, n_future, **extra).float().clamp_(0, 1)
                p, s = score(pred)  # (B, n_future)
                if best_ssim is None:
                    best_psnr, best_ssim, best_pred = p, s, pred
                    scores["first_psnr"].append(p.cpu())  # one sample: best-of-N's reference
                else:
                    better = s.mean(1) > best_ssim.mean(1)  # SVG: best sample by mean SSIM
                    best_psnr = torch.where(better[:, None], p, best_psnr)
                    best_ssim = torch.where(better[:, None], s, best_ssim)
                    best_pred = torch.where(better[:, None, None, None, None], pred, best_pred)
            copy = x[:, n_past - 1:n_past].expand_as(target)  # copy-last-frame baseline
            base_psnr, base_ssim = score(copy)
            scores["psnr"].append(best_psnr.cpu())
            scores["ssim"].append(best_ssim.cpu())
            scores["base_psnr"].append(base_psnr.cpu())
            scores["base_ssim"].append(base_ssim.cpu())
            if latent:  # q and p of the predicted steps: rows n_past-1.. of steps 1..T-1
                with torch.random.fork_rng(devices=devices):  # z draws unchanged by this pass
                    params = model.latents(x, cond)
                mu, logvar, mu_p, logvar_p = (v[n_past - 1:].float() for v in params)
                # (n_future, B, z) per latent dimension, a spatial latent (the dance task's
                # (z, H, W)) summed over its positions
                kl = gaussian_kl(mu, logvar, mu_p, logvar_p)
                kls.append(kl.reshape(*kl.shape[:3], -1).sum(3).cpu())
                # one row per input: (sequence, step), and for a spatial latent each position
                mus.append(mu.movedim(2, -1).reshape(-1, mu.shape[2]).cpu())
            if len(kept_gt) * batch_size < keep_predictions:
                kept_gt.append(x.cpu())
                kept_pred.append(best_pred.cpu())
                kept_cond.append(cond.cpu())
    model.train(was_training)
    per = {k: torch.cat(v).double() for k, v in scores.items()}  # (N, n_future)
    out = {
        "n_sequences": n, "n_past": n_past, "n_future": n_future, "samples": samples,
        "shuffle_conditions": shuffle_conditions, "z": z, "ssim_kind": ssim_kind,
        "ground_truth_available": truth,
        "psnr": per["psnr"].mean().item(), "ssim": per["ssim"].mean().item(),
        "first_sample_psnr": per["first_psnr"].mean().item(),
        "baseline_psnr": per["base_psnr"].mean().item(),
        "baseline_ssim": per["base_ssim"].mean().item(),
        "psnr_per_frame": per["psnr"].mean(0).tolist(),
        "ssim_per_frame": per["ssim"].mean(0).tolist(),
        "baseline_psnr_per_frame": per["base_psnr"].mean(0).tolist(),
        "baseline_ssim_per_frame": per["base_ssim"].mean(0).tolist(),
    }
    if latent:
        kl = torch.cat(kls, 1).double()  # (n_future, N, z_dim)
        variance = torch.cat(mus).double().var(0, correction=0)  # (z_dim,)
        out.update(kl=kl.sum(2).mean().item(), kl_per_step=kl.sum(2).mean(1).tolist(),
                   kl_per_dim=kl.mean((0, 1)).tolist(), posterior_mean_variance=variance.tolist(),
                   active_units=int((variance > ACTIVE_UNIT_THRESHOLD).sum()))
    if keep_predictions:
        out["ground_truth"] = torch.cat(kept_gt)[:keep_predictions]
        out["prediction"] = torch.cat(kept_pred)[:keep_predictions]
        if kept_cond[0].dim() == 5:  # conditions that are images (the dance lab's poses)
            out["conditions"] = torch.cat(kept_cond)[:keep_predictions]
    return out


GRID_COLUMNS = 16  # a longer sequence's grid shows every k-th frame, at most this many
LONG = 60  # frames from which GIFs play at the dance lab's speed and plots drop their markers


def baseline_name(n_past: int) -> str:
    """The copy baseline in words: the last given frame repeated."""
    return "copy last frame" if n_past > 1 else "first frame repeated"


def protocol_words(n_past: int, n_future: int) -> str:
    """A test protocol and its baseline in words (BAIR: 2 past -> 10 future; the dance lab: the
    first frame given -> 629 generated)."""
    frames = (f"{n_past} past -> {n_future} future frames" if n_past > 1
              else f"the first frame given -> {n_future} generated frames")
    return f"{frames}, against the baseline {baseline_name(n_past)}"


def save_media(result: dict, media_dir: Path, label: str = "",
               gif_names: Optional[list[str]] = None) -> dict:
    """GIF (poses where conditions are images, ground truth where there is some, prediction),
    per-timestep grid and PSNR-per-frame plot of an `evaluate(..., keep_predictions=k)`
    result. The GIF and grid show the first kept sequence; with `gif_names`, one GIF per kept
    sequence, named <name>.gif, is written instead of prediction.gif."""
    from cvae import visualize

    media_dir = Path(media_dir)
    media_dir.mkdir(parents=True, exist_ok=True)
    n_past, truth = result["n_past"], result.get("ground_truth_available", True)

    def columns(i: int) -> dict[str, torch.Tensor]:
        gt = result["ground_truth"][i]
        out = {"pose": result["conditions"][i]} if "conditions" in result else {}
        if truth:
            out["ground truth"] = gt
        out["prediction"] = torch.cat([gt[:n_past], result["prediction"][i]])
        return out

    first = columns(0)
    t = len(first["prediction"])
    fps = 20 if t >= LONG else 4  # the dance lab's GIFs play at 25 frames/s
    names = gif_names or ["prediction"]
    scale = 1 if t >= LONG else 2  # a 630-frame GIF at twice the size takes ~7 MB
    gifs = [visualize.save_gif(media_dir / f"{name}.gif", columns(i), fps=fps, n_past=n_past,
                               scale=scale) for i, name in enumerate(names)]
    rows = dict(first)
    if truth:
        rows["|difference|"] = (first["ground truth"] - first["prediction"]).abs()
    shown = list(range(0, t, max(1, -(-t // GRID_COLUMNS))))  # every k-th frame of long ones
    media = {
        "gif": str(gifs[0]),
        "grid": str(visualize.save_grid(media_dir / "grid.png",
                                        {k: v[shown] for k, v in rows.items()}, n_past=n_past,
                                        frame_numbers=shown)),
    }
    if gif_names:
        media["gifs"] = [str(g) for g in gifs]
    if truth:
        media["psnr_plot"] = str(visualize.plot_psnr_per_frame(
            media_dir / "psnr_per_frame.png",
            {"model": result["psnr_per_frame"],
             baseline_name(n_past): result["baseline_psnr_per_frame"]},
            n_past=n_past, title=label or None))
    return media


def default_test_outputs(path: str | Path) -> Path:
    """Where the dance test protocol writes when not told: test/ beside the checkpoint."""
    path = Path(path)
    return (path if path.is_dir() else path.parent).parent / "test"


def evaluate_checkpoint(path, data: Optional[str] = None, split: str = "test",
                        n_past: Optional[int] = None, n_future: Optional[int] = None,
                        samples: int = 1, shuffle_conditions: bool = False,
                        media_dir: Optional[str | Path] = None, max_sequences: int = 0,
                        device: str = "cpu", seed: int = 0, z: str = "prior",
                        ssim_kind: str = "finn", latent: bool = False,
                        skip_bad: bool = False) -> dict:
    """Evaluate a checkpoint on a split of its task with the task's protocol (data=None: the
    data it was trained on, else the embedded synthetic data); with `media_dir`, also write a
    GIF, a grid and a PSNR plot. n_past, n_future: the BAIR protocol's frames (None: 2, 10);
    the dance protocol is the lab's and ignores them. The dance test split with z from the
    prior also writes a GIF per test sequence and the lab's submission.csv into `media_dir` (by
    default test/ beside the checkpoint). `skip_bad` leaves out (and lists) sequences that fail
    the data checks."""
    from cvae.checkpoint import load_model

    model, cfg, stats = load_model(path, device)
    task = tasks.get(cfg.task)
    root = task.resolve_root(data if data is not None else cfg.data)
    dataset, n_past, n_future = task.eval_setup(root, split, cfg, stats, n_past, n_future,
                                                skip_bad=skip_bad)
    # the lab's test outputs (a GIF per sequence, submission.csv) are made from the prior, as
    # the lab's tester does: z from the posterior would have seen the frames it predicts
    lab_test = cfg.task == "dance" and split == "test" and z == "prior"
    if lab_test and media_dir is None:
        media_dir = default_test_outputs(path)
    n = len(dataset) if max_sequences <= 0 else min(max_sequences, len(dataset))
    keep = n if lab_test else 1 if media_dir else 0
    result = evaluate(model, dataset, n_past, n_future, samples=samples, device=device,
                      max_sequences=max_sequences, shuffle_conditions=shuffle_conditions,
                      seed=seed, keep_predictions=keep, z=z, ssim_kind=ssim_kind,
                      latent=latent)
    skipped = dataset.skipped if hasattr(dataset, "skipped") else dataset.arrays.skipped
    result.update(checkpoint=str(path), data=str(root), split=split, task=cfg.task,
                  skipped=skipped)
    if media_dir:
        names = [f"test_{name}" for name in dataset.names[:n]] if lab_test else None
        result["media"] = save_media(result, Path(media_dir), gif_names=names)
    if lab_test:
        from cvae.tasks.dance.submission import write_submission

        given = result["ground_truth"][:, :n_past]
        generated = torch.cat([given, result["prediction"]], 1)  # (K, T, 3, H, W)
        path_csv = Path(media_dir) / "submission.csv"
        result["submission_rows"] = write_submission(path_csv, list(generated))
        result["media"]["submission"] = str(path_csv)
    for key in ("ground_truth", "prediction", "conditions"):
        result.pop(key, None)
    return result


def score_checkpoint(path, device: str = "cpu", samples: int = 1, sample_sequences: int = 32,
                     latent_sequences: int = 64) -> dict:
    """What a confirmation keeps of a run, with the model and its data loaded once: the test
    split with z from the prior (the protocol) and from the posterior (what z carries); with
    `samples` > 1, SVG's best of N prior samples by SSIM and the first sample, on the first
    `sample_sequences` test sequences; the latent statistics (KL per dimension, active units)
    on the first `latent_sequences` validation sequences."""
    from cvae.checkpoint import load_model

    model, cfg, stats = load_model(path, device)
    task = tasks.get(cfg.task)
    root = task.resolve_root(cfg.data)
    test, n_past, n_future = task.eval_setup(root, "test", cfg, stats, None, None)
    r = evaluate(model, test, n_past, n_future, device=device)
    keep = {k: r[k] for k in ("psnr", "ssim", "baseline_psnr", "baseline_ssim", "n_sequences",
                              "n_past", "n_future")}
    keep["posterior_psnr"] = (evaluate(model, test, n_past, n_future, device=device,
                                       z="posterior")["psnr"]
                              if r["ground_truth_available"] else None)
    if samples > 1 and r["ground_truth_available"]:
        best = evaluate(model, test, n_past, n_future, device=device, samples=samples,
                        max_sequences=sample_sequences)
        keep.update(samples=samples, best_of_n_psnr=best["psnr"],
                    best_of_n_sequences=best["n_sequences"],
                    first_sample_psnr=best["first_sample_psnr"])
    val, v_past, v_future = task.eval_setup(root, "validate", cfg, stats, None, None)
    lat = evaluate(model, val, v_past, v_future, device=device, latent=True,
                   max_sequences=latent_sequences)
    keep.update(val_kl=lat.get("kl"), val_kl_per_dim=lat.get("kl_per_dim"),
                active_units=lat.get("active_units"))
    return keep


def _print_result(r: dict) -> None:
    print(f"{r['split']} split of {r['data']}: {r['n_sequences']} sequences, "
          f"{r['n_past']} past -> {r['n_future']} future, {r['samples']} sample(s)"
          + (", conditions shuffled" if r["shuffle_conditions"] else "")
          + (", z from the posterior" if r["z"] == "posterior" else "")
          + (", SSIM as SVG's eval_seq" if r["ssim_kind"] == "svg" else ""))
    base = baseline_name(r["n_past"])
    if not r.get("ground_truth_available", True):
        print("  no ground truth in this split: nothing to score (the lab's test split)")
    else:
        w = max(16, len(base))
        print(f"  {'model':{w}s} PSNR {r['psnr']:6.2f} dB   SSIM {r['ssim']:.4f}")
        print(f"  {base:{w}s} PSNR {r['baseline_psnr']:6.2f} dB   SSIM {r['baseline_ssim']:.4f}")
        print(f"  {'model - baseline':{w}s} {r['psnr'] - r['baseline_psnr']:+6.2f} dB")
        per = r["psnr_per_frame"]
        every = max(1, -(-len(per) // 30))
        print("  PSNR per frame" + (f" (one in {every})" if every > 1 else "") + ": "
              + " ".join(f"{v:.1f}" for v in per[::every]))
    if "kl" in r:
        print(f"  KL(q || p) per predicted step {r['kl']:.3f} nats; per step: "
              + " ".join(f"{v:.2f}" for v in r["kl_per_step"]))
        print(f"  active latent units {r['active_units']} of {len(r['kl_per_dim'])}; KL per dim: "
              + " ".join(f"{v:.2f}" for v in r["kl_per_dim"]))
    for name, value in (r.get("media") or {}).items():
        print(f"  {name}: {', '.join(value) if isinstance(value, list) else value}")


def run(args: argparse.Namespace) -> int:
    if args.samples < 1:
        print(f"error: --samples {args.samples}: expected an integer >= 1", file=sys.stderr)
        return 2
    try:
        result = evaluate_checkpoint(args.checkpoint, data=args.data, split=args.split,
                                     n_past=args.n_past, n_future=args.n_future,
                                     samples=args.samples,
                                     shuffle_conditions=args.shuffle_conditions,
                                     media_dir=args.media, max_sequences=args.max_sequences,
                                     device=args.device, seed=args.seed, z=args.z,
                                     ssim_kind=args.ssim, latent=True, skip_bad=args.skip_bad)
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(jsonsafe.dumps(result, indent=2))
    else:
        _print_result(result)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="PSNR/SSIM of a checkpoint and of the copy-last-frame baseline",
        description="Evaluate a checkpoint with its task's protocol: PSNR/SSIM per frame and "
                    "averaged over a split, beside the copy-last-frame baseline. Dance: the "
                    "first frame given, the whole sequence generated from the poses; --split "
                    "test also writes a GIF per test sequence and the lab's submission.csv.")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint directory (holding state.pt) or the state.pt file")
    p.add_argument("--data", default=None,
                   help="dataset root (default: the data the checkpoint was trained on)")
    p.add_argument("--split", default="test", choices=["train", "validate", "test"],
                   help="split to score (default: test)")
    p.add_argument("--n-past", type=int, default=None,
                   help="bair: given frames (default: 2); the dance protocol gives the first")
    p.add_argument("--n-future", type=int, default=None,
                   help="bair: predicted frames (default: 10; 28 for SVG's long horizon); "
                        "dance: the rest of each sequence")
    p.add_argument("--samples", type=int, default=1,
                   help="z samples per sequence; the best by mean SSIM is scored (default: 1)")
    p.add_argument("--shuffle-conditions", action="store_true",
                   help="give each sequence the conditions (actions, poses) of another, or a "
                        "single sequence its own shifted in time (how much they matter)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out sequences that fail the data checks, listing them, instead of "
                        "stopping")
    p.add_argument("--max-sequences", type=int, default=0,
                   help="score only the first N sequences (default: 0 = all)")
    p.add_argument("--media", default=None, metavar="DIR",
                   help="also write a GIF, a per-timestep grid and a PSNR plot into DIR "
                        "(dance --split test: GIFs and submission.csv, by default into test/ "
                        "beside the checkpoint)")
    p.add_argument("--z", default="prior", choices=["prior", "posterior"],
                   help="where z comes from for the predicted frames: the prior (the protocol; "
                        "default) or the posterior on the true frames (an upper bound on what z "
                        "can carry)")
    p.add_argument("--ssim", default="finn", choices=["finn", "svg"],
                   help="SSIM definition: finn (11x11 Gaussian window, the lab's and SVG's "
                        "finn_eval_seq; default) or svg (SVG's eval_seq: skimage defaults, 7x7 "
                        "uniform window, data range 2)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the z samples (default: 0)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)
