"""Statistics that compare a dataset with real BAIR: `python -m cvae check-data DIR --stats`.

The synthetic simulator is calibrated against these numbers on the real sample
(`../shared/data/bair_sample`), so anyone can put a dataset beside it:

- colour: per-channel mean and standard deviation of the pixels (in [0, 1]);
- sensor noise and motion: fraction of pixels (any channel) that change between consecutive
  frames at all, and by more than 2/255;
- how actions drive the arm: least-squares slope of the planar end-effector step
  p[t+1] - p[t] on the planar action a[t], and their correlation; the mean absolute planar
  action; the number of distinct values in action columns 2 and 3;
- how hard the protocol is: PSNR of the copy-last-frame baseline, 2 given -> 10 predicted
  frames on the first 12 frames of each sequence (mean, min and max over sequences).

A GIF file stands for one frames-only sequence (the sample's second sequence is one).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageSequence

from cvae.data import SPLITS, DataError, read_sequence, sequence_dirs
from cvae.metrics import psnr

N_PAST, N_FUTURE = 2, 10  # the lab's demo protocol
CONTINUOUS = 20  # more distinct values than this: reported as continuous


def _gif_frames(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
    except OSError as e:
        raise DataError(f"{path}: cannot decode GIF ({type(e).__name__})") from None


def _sequences(path: Path, split: Optional[str], max_sequences: int):
    """(frames uint8 (T, H, W, 3), conditions (T, 7) or None) of up to max_sequences."""
    if path.is_file():
        yield _gif_frames(path), None
        return
    splits = [split] if split else [s for s in SPLITS if (path / s).is_dir()]
    dirs = [d for s in splits for d in sequence_dirs(path, s)]
    if not dirs:
        raise DataError(f"{path}: no sequences found" + (f" in split {split!r}" if split else ""))
    for d in dirs[:max_sequences]:
        yield read_sequence(d)


def dataset_stats(path: str | Path, split: Optional[str] = None, max_sequences: int = 40) -> dict:
    """The statistics above over the first `max_sequences` sequences of the split (default:
    all splits present, in order). Keys whose inputs are missing (a GIF has no CSVs) are None."""
    return sequence_stats(_sequences(Path(path), split, max_sequences), str(path))


def sequence_stats(sequences, name: str = "") -> dict:
    """The statistics of (frames uint8 (T, H, W, 3), conditions (T, 7) or None) pairs."""
    pixels, changed, changed2, copy_psnr = [], [], [], []
    dp, da, lift, grip = [], [], [], []
    n = 0
    for frames, conds in sequences:
        n += 1
        f = frames.astype(np.float64) / 255.0
        pixels.append(f.reshape(-1, 3))
        step = np.abs(np.diff(frames.astype(np.int16), axis=0)).max(-1)  # (T-1, H, W)
        changed.append((step > 0).mean())
        changed2.append((step > 2).mean())
        if len(frames) >= N_PAST + N_FUTURE:
            x = torch.from_numpy(f[:N_PAST + N_FUTURE]).permute(0, 3, 1, 2)[None]
            copy = x[:, N_PAST - 1:N_PAST].expand(-1, N_FUTURE, -1, -1, -1)
            copy_psnr.append(psnr(copy, x[:, N_PAST:]).mean().item())
        if conds is not None:
            actions, positions = conds[:, :4].astype(np.float64), conds[:, 4:].astype(np.float64)
            dp.append(np.diff(positions[:, :2], axis=0).ravel())
            da.append(actions[:-1, :2].ravel())
            lift.append(actions[:, 2])
            grip.append(actions[:, 3])
    allpix = np.concatenate(pixels)
    out = {
        "path": name, "sequences": n,
        "channel_mean": allpix.mean(0).tolist(), "channel_std": allpix.std(0).tolist(),
        "changed_any": float(np.mean(changed)), "changed_over_2": float(np.mean(changed2)),
        "copy_last_psnr": float(np.mean(copy_psnr)) if copy_psnr else None,
        "copy_last_psnr_min": float(np.min(copy_psnr)) if copy_psnr else None,
        "copy_last_psnr_max": float(np.max(copy_psnr)) if copy_psnr else None,
        "position_step_per_action": None, "position_action_corr": None,
        "planar_action_size": None, "action2_values": None, "action3_values": None,
    }
    if da:
        x, y = np.concatenate(da), np.concatenate(dp)
        out.update(position_step_per_action=float((x * y).sum() / (x * x).sum()),
                   position_action_corr=float(np.corrcoef(x, y)[0, 1]),
                   planar_action_size=float(np.abs(x).mean()),
                   action2_values=len(np.unique(np.concatenate(lift))),
                   action3_values=len(np.unique(np.concatenate(grip))))
    return out


ROWS = [  # (label, key, format)
    ("sequences", "sequences", "{}"),
    ("pixel mean R/G/B", "channel_mean", "{:.3f}"),
    ("pixel std R/G/B", "channel_std", "{:.3f}"),
    ("pixels changed between frames (>0)", "changed_any", "{:.3f}"),
    ("pixels changed between frames (>2/255)", "changed_over_2", "{:.3f}"),
    ("copy-last PSNR 2 -> 10 (dB, mean)", "copy_last_psnr", "{:.2f}"),
    ("  min / max over sequences", ("copy_last_psnr_min", "copy_last_psnr_max"), "{:.2f}"),
    ("planar position step per action (LS slope)", "position_step_per_action", "{:.3f}"),
    ("  correlation", "position_action_corr", "{:.3f}"),
    ("mean |planar action|", "planar_action_size", "{:.4f}"),
    ("distinct values, action column 2", "action2_values", "{}"),
    ("distinct values, action column 3", "action3_values", "{}"),
]


def _cell(stats: dict, key, fmt: str) -> str:
    keys = key if isinstance(key, tuple) else (key,)
    values = [stats.get(k) for k in keys]
    if any(v is None for v in values):
        return "-"
    parts = []
    for v in values:
        if isinstance(v, list):
            parts.append("/".join(fmt.format(x) for x in v))
        elif key in ("action2_values", "action3_values") and v > CONTINUOUS:
            parts.append(f"{v} (continuous)")
        else:
            parts.append(fmt.format(v))
    return " / ".join(parts)


def format_stats(columns: list[dict]) -> str:
    """A text table, one column per dataset."""
    names = [Path(c["path"]).name or c["path"] for c in columns]
    rows = [[label] + [_cell(c, key, fmt) for c in columns] for label, key, fmt in ROWS]
    widths = [max(len(r[i]) for r in rows + [["statistic"] + names]) for i in range(len(names) + 1)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(["statistic"] + names, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
