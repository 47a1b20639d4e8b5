"""Argument types the command lines share (`python -m cvae ...`, search.run, search.confirm)."""
from __future__ import annotations

import argparse
from typing import Callable, Optional


def integer(minimum: Optional[int] = None, maximum: Optional[int] = None,
            expected: str = "") -> Callable[[str], int]:
    """An argparse type: an integer within [minimum, maximum], else a one-line usage error."""
    expected = expected or ("an integer" if minimum is None else f"an integer >= {minimum}")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors raise `error_type(message)` (one line, for the caller
    to print with exit code 2) instead of printing the usage block and exiting."""

    error_type: type[Exception] = ValueError

    def error(self, message: str) -> None:  # type: ignore[override]
        raise self.error_type(message)


def one_line_parser(error_type: type[Exception], **kwargs) -> OneLineParser:
    """A OneLineParser raising `error_type`; kwargs as for ArgumentParser."""
    parser = OneLineParser(**kwargs)
    parser.error_type = error_type
    return parser
