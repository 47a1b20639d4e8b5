"""`python -m cvae <subcommand>`: the model side of the project on the command line."""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("synth", "data", "train", "evaluate", "bench")  # modules exposing register()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvae", description="Conditional VAE video prediction: data, training, evaluation.")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"cvae.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
