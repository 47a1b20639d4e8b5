"""`python -m cvae synth`: the command line of the synthetic pushing data (cvae.synth)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cvae.arguments import integer
from cvae.synth.dataset import DEFAULT_SIZES, VERSION, default_path, sequence_rng, write_dataset
from cvae.synth.sequence import simulate


def register(subparsers: Any) -> None:
    """Add `synth` to the `python -m cvae` subcommands."""
    p = subparsers.add_parser(
        "synth", help="generate the embedded synthetic robot-pushing dataset (BAIR layout)",
        description="Generate synthetic BAIR-like robot pushing videos in the BAIR layout.")
    p.add_argument("--out", default=None,
                   help=f"output directory (default: synthetic-v{VERSION}-seed<SEED> in "
                        "$CVAE_CACHE or ~/.cache/cvae-sweeps, the data used when none is given)")
    for split, n in DEFAULT_SIZES.items():
        p.add_argument(f"--{split}", type=integer(minimum=0), default=n,
                       help=f"{split} sequences (default {n})")
    p.add_argument("--seed", type=integer(minimum=0), default=0, help="dataset seed (default 0)")
    p.add_argument("--workers", type=integer(minimum=1), default=None,
                   help="generator processes (default: all available cores)")
    p.add_argument("--strip", default=None, metavar="PNG",
                   help="also save every third frame of the first training sequence as a "
                        "picture strip (the README's picture)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the dataset the parsed arguments describe; returns the exit code."""
    out = Path(args.out).expanduser() if args.out else default_path(seed=args.seed)
    try:
        stats = write_dataset(out, train=args.train, validate=args.validate, test=args.test,
                              seed=args.seed, workers=args.workers)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"synth: wrote {stats['sequences']} sequences to {stats['path']} in "
          f"{stats['elapsed_s']:.1f}s, {stats['disk_bytes'] / 1e6:.1f} MB on disk, "
          f"{100 * stats['push_fraction']:.0f}% with pushes", file=sys.stderr)
    if args.strip:
        from cvae.visualize import save_strip

        frames = simulate(sequence_rng(args.seed, "train", 0)).frames
        print(f"synth: strip of train sequence 0: {save_strip(args.strip, frames, every=3)}",
              file=sys.stderr)
    return 0
