"""Stochastic Moving MNIST (SVG, Denton & Fergus 2018; edenton/svg `data/moving_mnist.py`):
digits of 32x32 move over a black 64x64 frame at a constant integer velocity and take a random
new direction, away from the wall, each time they hit one; the frames are the digits added and
clipped at 1. The future after a bounce is not determined by the past: the latent must carry
it.

Digits come from real MNIST in torchvision's on-disk layout (`--data DIR`: the 60,000 training
digits train; the 10,000 test digits are halved, the first 5,000 validate and the rest test) or,
with no download, from glyphs rendered out of the fonts matplotlib ships, each with its own
jitter of font, size, slant, rotation, stroke width and position in the box, generated once into
the cache (`ensure_digits`). Sequences are drawn from the digits: training sequences on the fly
from the trainer's generator (as SVG draws them on the fly), validation and test sequence i from
its own seed (seed, split, i), so that every evaluation sees the same ones.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cvae.data import DataError
from cvae.synth import default_cache_dir, ensure_generated

FRAME = 64  # frame height and width (SVG's image_size)
DIGIT = 32  # digit box (SVG scales MNIST's 28x28 to 32x32)
SPEED = 4  # velocity components are integers in [-SPEED, SPEED] pixels per frame (SVG)
EVAL_FRAMES = 30  # validation and test sequences hold 30 frames (SVG's n_eval)
SPLITS = ("train", "validate", "test")
SPLIT_IDS = {"train": 0, "validate": 1, "test": 2}  # the split's place in a sequence's seed
EVAL_SEQUENCES = {"validate": 128, "test": 128}  # sequences scored per evaluation split
VERSION = 1  # of the rendered digits; part of the cache directory name
GLYPHS = {"train": 10000, "validate": 1000, "test": 1000}  # rendered digits per split
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
         "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "STIXGeneral.ttf", "cmss10.ttf")


# ----------------------------------------------------------------------------- motion

def simulate(n: int, seq_len: int, n_digits: int, rng: np.random.Generator) -> np.ndarray:
    """Positions (n, seq_len, n_digits, 2) as (row, col) of each digit's top-left corner by
    SVG's rule
    with deterministic=False: start uniform in [0, FRAME - DIGIT), velocity uniform in
    [-4, 4]^2; before a frame is drawn, a coordinate below 0 is set to 0 and one at or beyond
    FRAME - DIGIT to FRAME - DIGIT - 1, and the velocity is drawn again: the component across
    that wall pointing away from it (1..4 or -4..-1), the other in [-4, 4]."""
    lim = FRAME - DIGIT
    pos = np.zeros((n, seq_len, n_digits, 2), np.int64)
    p = rng.integers(lim, size=(n, n_digits, 2))
    v = rng.integers(-SPEED, SPEED + 1, size=(n, n_digits, 2))
    for t in range(seq_len):
        for axis in (0, 1):  # SVG checks the row (y) first, then the column (x)
            low, high = p[..., axis] < 0, p[..., axis] >= lim
            for wall, side, away in ((low, 0, (1, SPEED + 1)), (high, lim - 1, (-SPEED, 0))):
                k = int(wall.sum())
                if not k:
                    continue
                p[..., axis][wall] = side
                v[..., axis][wall] = rng.integers(*away, size=k)
                v[..., 1 - axis][wall] = rng.integers(-SPEED, SPEED + 1, size=k)
        pos[:, t] = p
        p = p + v
    return pos


def render(digits: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Frames float32 (n, T, 64, 64) in [0, 1]: digits (n, n_digits, 32, 32) in [0, 1] added at
    their positions (n, T, n_digits, 2) and clipped at 1 (SVG: `x[x > 1] = 1`)."""
    n, t, d = pos.shape[:3]
    frames = np.zeros((n, t, FRAME, FRAME), np.float32)
    for i in range(n):
        for j in range(d):
            for k in range(t):
                r, c = pos[i, k, j]
                frames[i, k, r:r + DIGIT, c:c + DIGIT] += digits[i, j]
    return np.minimum(frames, 1.0, out=frames)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(n, T, 64, 64) -> float (n, T, 1, 64, 64): one channel, as SVG's SM-MNIST."""
    return torch.from_numpy(frames).unsqueeze(2)


class Digits:
    """The digits of one split (uint8 (N, 32, 32)) and the sequences made of them: training
    batches from a generator, evaluation sequence i from its own seed."""

    def __init__(self, digits: np.ndarray, n_digits: int, split: str, seed: int = 0,
                 n_sequences: int = 0, seq_len: int = EVAL_FRAMES):
        self.digits, self.n_digits, self.split, self.seed = digits, n_digits, split, seed
        self.n_sequences, self.seq_len = n_sequences, seq_len
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return self.n_sequences

    def sample(self, rng: np.random.Generator, n: int, seq_len: int) -> torch.Tensor:
        """n new sequences of seq_len frames (n, T, 1, 64, 64), digits drawn with replacement."""
        pick = rng.integers(len(self.digits), size=(n, self.n_digits))
        digits = self.digits[pick].astype(np.float32) / 255.0
        pos = simulate(n, seq_len, self.n_digits, rng)
        return to_tensor(render(digits, pos))

    def sequence_rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLIT_IDS[self.split], int(i)])

    def batch(self, indices: np.ndarray, starts: np.ndarray, seq_len: Optional[int] = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames (B, T, 1, 64, 64) of evaluation sequences `indices` from frame `starts`, and
        their conditions: none, (B, T, 0)."""
        t = seq_len or self.seq_len
        frames = torch.cat([self.sample(self.sequence_rng(i), 1, s + t)[:, s:]
                            for i, s in zip(indices, starts)])
        return frames, frames.new_zeros(len(frames), t, 0)


# ----------------------------------------------------------------------------- digits

def render_glyphs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n digit glyphs uint8 (n, 32, 32) and their labels: a digit 0-9 drawn in one of FONTS at
    a random size, stroke width, slant and rotation, scaled into MNIST's 20x20 core, placed in
    the 28x28 box with its centre jittered by up to 2 pixels, then scaled to 32x32 as SVG scales
    MNIST."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng([seed, 7])
    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = {}
    out = np.zeros((n, DIGIT, DIGIT), np.uint8)
    labels = rng.integers(10, size=n)
    for i in range(n):
        name, size = FONTS[rng.integers(len(FONTS))], int(rng.integers(36, 49))
        if (name, size) not in fonts:
            fonts[name, size] = ImageFont.truetype(str(font_dir / name), size)
        canvas = Image.new("L", (96, 96))
        stroke = int(rng.integers(0, 3))
        ImageDraw.Draw(canvas).text((48, 48), str(labels[i]), fill=255, anchor="mm",
                                    font=fonts[name, size], stroke_width=stroke, stroke_fill=255)
        shear = rng.uniform(-0.35, 0.35)  # slant: x' = x + shear * (y - centre)
        canvas = canvas.transform(canvas.size, Image.Transform.AFFINE,
                                  (1, shear, -shear * 48, 0, 1, 0), Image.Resampling.BILINEAR)
        canvas = canvas.rotate(rng.uniform(-12, 12), Image.Resampling.BILINEAR)
        box = canvas.getbbox()
        if box is None:
            continue
        glyph = canvas.crop(box)
        scale = rng.uniform(17, 21) / max(glyph.size)  # MNIST: the digit fits 20x20
        glyph = glyph.resize((max(1, round(glyph.width * scale)),
                              max(1, round(glyph.height * scale))), Image.Resampling.LANCZOS)
        cell = Image.new("L", (28, 28))
        dx, dy = rng.integers(-2, 3, size=2)
        cell.paste(glyph, ((28 - glyph.width) // 2 + int(dx), (28 - glyph.height) // 2 + int(dy)))
        out[i] = np.asarray(cell.resize((DIGIT, DIGIT), Image.Resampling.BILINEAR))
    return out, labels


def digits_path(cache_dir: Optional[str | os.PathLike] = None, seed: int = 0) -> Path:
    """Where ensure_digits keeps the rendered digits of a seed."""
    base = Path(cache_dir or default_cache_dir()).expanduser()
    return base / f"smmnist-digits-v{VERSION}-seed{seed}"


def write_digits(out: Path, seed: int = 0, sizes: Optional[dict] = None) -> dict:
    """Render the digits of every split into out/digits.npz (+ SYNTH.json, written last)."""
    started = time.perf_counter()
    sizes = sizes or GLYPHS
    out.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split in SPLITS:
        arrays[split], arrays[f"{split}_labels"] = render_glyphs(sizes[split],
                                                                 seed * 10 + SPLIT_IDS[split])
    np.savez_compressed(out / "digits.npz", **arrays)
    info = dict(generator="cvae.tasks.smmnist.data", version=VERSION, seed=seed, sizes=sizes,
                digit_size=DIGIT, fonts=list(FONTS))
    (out / "SYNTH.json").write_text(json.dumps(info, indent=2) + "\n")
    return dict(info, elapsed_s=time.perf_counter() - started)


def ensure_digits(cache_dir: Optional[str | os.PathLike] = None, seed: int = 0,
                  quiet: bool = False) -> Path:
    """The rendered digits for seed, generated once into the cache."""
    target, stats = ensure_generated(digits_path(cache_dir, seed),
                                     lambda tmp: write_digits(tmp, seed), "synth smmnist", quiet)
    if stats and not quiet:
        print(f"synth smmnist: {target}: {sum(stats['sizes'].values())} digits, "
              f"{stats['elapsed_s']:.1f}s", file=sys.stderr)
    return target


def load_digits(root: Path, split: str) -> np.ndarray:
    """uint8 (N, 32, 32) digits of `split`: the rendered ones (a folder with digits.npz) or real
    MNIST (torchvision's layout: root/MNIST/raw/*-idx?-ubyte), scaled to 32x32. DataError, one
    line, when neither is there."""
    root = Path(root)
    if (root / "digits.npz").is_file():
        try:
            with np.load(root / "digits.npz") as f:
                return f[split]
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"{root / 'digits.npz'}: cannot read the {split} digits "
                            f"({type(e).__name__})") from None
    from torchvision.datasets import MNIST

    try:
        mnist = MNIST(str(root), train=split == "train", download=False)
    except RuntimeError:
        raise DataError(f"{root}: no MNIST in torchvision's layout (expected "
                        f"{root / 'MNIST' / 'raw'}/train-images-idx3-ubyte, "
                        "t10k-images-idx3-ubyte and their label files)") from None
    images = mnist.data  # uint8 (N, 28, 28)
    if split != "train":
        half = len(images) // 2
        images = images[:half] if split == "validate" else images[half:]
    if len(images) == 0:
        raise DataError(f"{root}: no MNIST {split} digits")
    scaled = torch.nn.functional.interpolate(images[:, None].float(), size=(DIGIT, DIGIT),
                                             mode="bilinear", align_corners=False)
    return scaled[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
