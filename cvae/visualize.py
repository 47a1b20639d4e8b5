"""Pictures of predicted videos and of training runs: GIFs, prediction grids, frame strips, curves.

Frame sequences are float tensors or arrays shaped (T, 3, H, W) in [0, 1] (what the model and the
data loader produce) or uint8 arrays shaped (T, H, W, 3) (what image files hold). Frame pictures are
composed pixel-exactly with numpy (labels drawn with PIL), tiled with torchvision's `make_grid` and
written with imageio; curves are drawn with matplotlib's Agg canvas through
`matplotlib.figure.Figure`, so nothing needs a display or touches pyplot's global state. Every
function creates missing parent directories and returns the path it wrote, as a string.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import imageio.v3 as iio
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

Frames = Union[torch.Tensor, np.ndarray]
PathLike = Union[str, Path]

PAD = 2  # border around every frame, in output pixels; also the gap between neighbouring frames
BACKGROUND = (255, 255, 255)
CONTEXT_COLOR = (46, 160, 67)  # border of the given context frames (t < n_past)
TEXT_COLOR = (0, 0, 0)
TEXT_MARGIN = 3  # space around labels, in pixels
FONT = ImageFont.load_default()  # PIL's built-in font: no font files needed
_, LINE_TOP, _, LINE_BOTTOM = FONT.getbbox("Ag")  # ink extent of a text line below its origin


def to_uint8(frames: Frames) -> np.ndarray:
    """Frames as uint8 (T, H, W, 3), from float (T, 3, H, W) in [0, 1] (or (T, 1, H, W): grey)
    or uint8 (T, H, W, 3)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        frames = (frames if frames.dtype == torch.uint8 else frames.float()).numpy()  # bf16 too
    frames = np.asarray(frames)
    if frames.ndim == 4 and len(frames) > 0:
        if frames.dtype == np.uint8 and frames.shape[3] == 3:
            return frames
        if np.issubdtype(frames.dtype, np.floating) and frames.shape[1] == 1:  # grey
            frames = np.repeat(frames, 3, axis=1)
        if np.issubdtype(frames.dtype, np.floating) and frames.shape[1] == 3:
            return np.round(np.clip(frames, 0.0, 1.0) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    raise ValueError(
        f"expected T >= 1 float frames (T, 3, H, W) in [0, 1] or uint8 frames (T, H, W, 3), "
        f"got {frames.dtype} {frames.shape}"
    )


def _framed(frames: np.ndarray, scale: int, n_past: int) -> np.ndarray:
    """Upscale uint8 (T, H, W, 3) frames by `scale` (nearest neighbour) and add a PAD-pixel border,
    CONTEXT_COLOR for t < n_past and BACKGROUND otherwise.

    Returns (T, H*scale + 2*PAD, W*scale + 2*PAD, 3).
    """
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    big = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    t, h, w, _ = big.shape
    out = np.empty((t, h + 2 * PAD, w + 2 * PAD, 3), np.uint8)
    out[:] = BACKGROUND
    out[:n_past] = CONTEXT_COLOR
    out[:, PAD:PAD + h, PAD:PAD + w] = big
    return out


def _sequences(named: Mapping[str, Frames]) -> dict[str, np.ndarray]:
    """Convert named sequences to uint8 and check they share length and frame size."""
    if not named:
        raise ValueError("expected at least one sequence")
    out = {label: to_uint8(frames) for label, frames in named.items()}
    shapes = {label: frames.shape for label, frames in out.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"sequences differ in length or frame size (T, H, W, 3): {shapes}")
    return out


def _text_width(text: str) -> int:
    return math.ceil(FONT.getlength(text))


def _label(text: str, width: int, height: int, color: tuple[int, int, int] = TEXT_COLOR,
           align: str = "center") -> np.ndarray:
    """A (height, width, 3) uint8 tile with `text` vertically centred, centred or left-aligned."""
    tile = Image.new("RGB", (width, height), BACKGROUND)
    x = max(0, (width - _text_width(text)) // 2) if align == "center" else TEXT_MARGIN
    y = (height - LINE_TOP - LINE_BOTTOM) // 2
    ImageDraw.Draw(tile).text((x, y), text, fill=color, font=FONT)
    return np.asarray(tile)


def _header_height() -> int:
    """Height of a one-line label row."""
    return LINE_BOTTOM - LINE_TOP + 2 * TEXT_MARGIN


def _prepare(path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_gif(path: PathLike, columns: Mapping[str, Frames], fps: float = 4, n_past: int = 0,
             scale: int = 2) -> str:
    """Write an endlessly looping GIF playing the `columns` sequences side by side.

    Each column is upscaled by `scale`, framed by a PAD-pixel border (green on the n_past context
    frames) and titled with its label, so the GIF is sum(W*scale + 2*PAD) pixels wide.
    """
    seqs = _sequences(columns)
    framed = [_framed(frames, scale, n_past) for frames in seqs.values()]
    height = _header_height()
    header = np.concatenate([_label(label, f.shape[2], height) for label, f in zip(seqs, framed)],
                            axis=1)
    body = np.concatenate(framed, axis=2)  # (T, h, sum of column widths, 3)
    frames = np.stack([np.concatenate([header, frame], axis=0) for frame in body])
    path = _prepare(path)
    iio.imwrite(path, frames, extension=".gif", duration=round(1000 / fps), loop=0)
    return str(path)


def save_grid(path: PathLike, rows: Mapping[str, Frames], n_past: int = 0, scale: int = 1,
              frame_numbers: Optional[Sequence[int]] = None) -> str:
    """Write a PNG grid with one row per sequence and one column per timestep.

    Columns are numbered from 1 on top (context timesteps in green, their frames framed in green);
    row labels sit at the left. Typical rows: ground truth, prediction, |difference|, samples.
    `frame_numbers`: the 0-based timesteps the columns show, when they are a selection (every
    k-th frame of a long sequence); by default 0, 1, 2, ...
    """
    seqs = _sequences(rows)
    t = len(next(iter(seqs.values())))
    steps = list(range(t)) if frame_numbers is None else list(frame_numbers)
    if len(steps) != t:
        raise ValueError(f"{len(steps)} frame numbers for {t} columns")
    context = np.array([s < n_past for s in steps])
    framed = {label: _framed(frames, scale, 0) for label, frames in seqs.items()}
    for frames in framed.values():  # the context border on the columns of context timesteps
        inner = frames[context, PAD:-PAD, PAD:-PAD].copy()
        frames[context] = CONTEXT_COLOR
        frames[context, PAD:-PAD, PAD:-PAD] = inner
    _, cell_h, cell_w, _ = next(iter(framed.values())).shape
    label_w = max(_text_width(label) for label in seqs) + 2 * TEXT_MARGIN
    header_h = _header_height()

    header = [np.full((header_h, label_w, 3), BACKGROUND, np.uint8)]
    header += [_label(str(s + 1), cell_w, header_h, CONTEXT_COLOR if s < n_past else TEXT_COLOR)
               for s in steps]
    # the framed cells tiled row by row (torchvision's make_grid; the borders are in the cells)
    cells = torch.from_numpy(np.concatenate(list(framed.values()))).permute(0, 3, 1, 2)
    tiled = make_grid(cells, nrow=t, padding=0).permute(1, 2, 0).numpy()
    labels = [_label(label, label_w, cell_h, align="left") for label in framed]
    lines = [np.concatenate(header, axis=1),
             np.concatenate([np.concatenate(labels, axis=0), tiled], axis=1)]
    path = _prepare(path)
    iio.imwrite(path, np.concatenate(lines, axis=0), extension=".png")
    return str(path)


def save_strip(path: PathLike, frames: Frames, scale: int = 2, every: int = 1) -> str:
    """Write every `every`-th frame side by side as one PNG strip, upscaled by `scale`."""
    strip = torch.from_numpy(_framed(to_uint8(frames)[::every], scale, n_past=0))
    row = make_grid(strip.permute(0, 3, 1, 2), nrow=len(strip), padding=0)
    path = _prepare(path)
    iio.imwrite(path, row.permute(1, 2, 0).numpy(), extension=".png")
    return str(path)


def _series(history: Sequence[Mapping], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of `key` over the rows that hold a finite value; rows without an epoch
    count from 1."""
    xs, ys = [], []
    for i, row in enumerate(history):
        value = row.get(key)
        if value is not None and math.isfinite(value):
            xs.append(row.get("epoch", i + 1))
            ys.append(float(value))
    return xs, ys


def _plot_keys(ax: Axes, history: Sequence[Mapping], keys: Mapping[str, tuple[str, str]],
               **style) -> list[float]:
    """Plot each present key of `keys` ({key: (label, color)}) on `ax`; return the values drawn."""
    plotted = []
    for key, (label, color) in keys.items():
        xs, ys = _series(history, key)
        if ys:
            ax.plot(xs, ys, label=label, color=color, **style)
            plotted += ys
    return plotted


def _legend(ax: Axes, *axes: Axes, **placement) -> None:
    """One legend on `ax` for the lines of all `axes` (a twin axis included), placed by `placement`
    (keyword arguments of `Axes.legend`)."""
    handles = [h for a in axes for h in a.get_legend_handles_labels()[0]]
    if handles:
        ax.legend(handles, [h.get_label() for h in handles], fontsize="small", **placement)


def plot_curves(path: PathLike, history: Sequence[Mapping], title: Optional[str] = None,
                beta: Optional[tuple[Sequence[float], Sequence[float]]] = None) -> str:
    """Write the training figure of one run as a PNG: two panels over epochs sharing x.

    Top: validation PSNR (left axis) with the teacher-forcing ratio and the KL weight beta (right
    axis). Bottom: training loss, MSE and KL, on a log axis when they span more than two decades.
    `history` holds the per-epoch metric rows (epoch, loss, mse, kld, beta, tfr, val_psnr); missing
    keys and None or non-finite values are skipped. `beta`: the schedule as (x, value) per
    training step or epoch (cvae.schedules.beta_curve: step i of 0-based epoch e at e + i /
    steps), drawn as steps over [0, epochs], so an epoch's values lie left of its row's x;
    without it, the rows' beta (each epoch's mean).
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    fig = Figure(figsize=(7, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)

    _plot_keys(top, history, {"val_psnr": ("val PSNR", "tab:blue")}, marker=".")
    top.set_ylabel("PSNR (dB)")
    twin = top.twinx()
    _plot_keys(twin, history, {"tfr": ("teacher forcing ratio", "tab:gray")}, linestyle="--")
    epochs, betas = _series(history, "beta")
    style = {}
    if beta is not None and len(beta[0]):  # each value holds until the next: a step curve
        x = list(beta[0])
        epochs = x + [x[-1] + (x[-1] - x[-2] if len(x) > 1 else 1.0)]  # ... to the run's end
        betas, style = list(beta[1]) + [beta[1][-1]], {"drawstyle": "steps-post"}
    if betas:
        label, peak = "KL weight beta", max(betas)
        if peak > 1 or 0 < peak < 0.1:  # e.g. SVG's beta = 1e-4: draw the shape, state the scale
            betas, label = [b / peak for b in betas], f"{label} / {peak:g}"
        twin.plot(epochs, betas, "--", color="tab:purple", label=label, **style)
    twin.set_ylim(-0.05, 1.05)
    twin.set_ylabel("ratio / weight")
    _legend(top, top, twin, loc="lower left", bbox_to_anchor=(0, 1), ncols=3, frameon=False)

    losses = _plot_keys(bottom, history, {"loss": ("loss", "tab:red"), "mse": ("MSE", "tab:orange"),
                                          "kld": ("KL", "tab:green")})
    positive = [v for v in losses if v > 0]
    if positive and max(positive) > 100 * min(positive):
        bottom.set_yscale("log", nonpositive="mask")
    bottom.set_ylabel("training loss")
    bottom.set_xlabel("epoch")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend(bottom, bottom, loc="best")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    path = _prepare(path)
    fig.savefig(path, dpi=120)
    return str(path)


def plot_psnr_per_frame(path: PathLike, curves: Mapping[str, Sequence[float]], n_past: int = 2,
                        title: Optional[str] = None) -> str:
    """Write a PNG of PSNR against predicted frame number (n_past + 1, n_past + 2, ...), one line
    per label, e.g. {"model": ..., "copy last frame": ...}."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for label, values in curves.items():
        ax.plot(range(n_past + 1, n_past + 1 + len(values)), values,
                marker="o" if len(values) <= 50 else None, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"frame (after {n_past} context frame{'s' if n_past != 1 else ''})")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    _legend(ax, ax, loc="best")
    if title:
        ax.set_title(title)
    path = _prepare(path)
    fig.savefig(path, dpi=120)
    return str(path)
