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
