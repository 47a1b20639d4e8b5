"""`python -m cvae <subcommand>`: the model side of the project on the command line."""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("synth", "data", "train", "evaluate", "bench")  # modules exposing register()
TASK_COMMANDS = ("synth", "check-data")  # subcommands that take --task (cvae.tasks run_<name>)


def _add_task_option(parser: argparse.ArgumentParser, command: str) -> None:
    """`--task` on a data subcommand: bair runs the subcommand as registered, another task its
    module's run_synth / run_check (cvae.tasks)."""
    from cvae import tasks
    from cvae.config import TASKS

    parser.add_argument("--task", default="bair", choices=TASKS,
                        help="the task whose data this is (default: bair)")
    if command == "synth":
        for name in TASKS:
            add = getattr(tasks.get(name), "add_synth_arguments", None)
            if add:
                add(parser)
    runner = "run_synth" if command == "synth" else "run_check"
    parser.set_defaults(func=lambda args: getattr(tasks.get(args.task), runner)(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvae", description="Conditional VAE video prediction: data, training, evaluation.")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"cvae.{name}").register(sub)
    for name in TASK_COMMANDS:
        _add_task_option(sub.choices[name], name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # a lab's own flag (--tfr_sde 5) gets the project's name for it
        from cvae.config import lab_name_hint

        hint = next((lab_name_hint(a.split("=")[0]) for a in extra if a.startswith("--")
                     and lab_name_hint(a.split("=")[0])), None)
        if hint:
            print(f"error: {hint} (give it as key=value)", file=sys.stderr)
            return 2
        parser.parse_args(argv)  # argparse's own error for anything else
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
