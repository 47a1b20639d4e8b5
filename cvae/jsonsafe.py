"""JSON that is JSON: non-finite floats (a diverged epoch's NaN loss) are written as null,
never as the bare `NaN`/`Infinity` that Python's json module emits and other parsers reject."""
from __future__ import annotations

import json
import math
import numbers
from typing import Any, Callable, Optional


def finite(value: Any) -> Any:
    """`value` with every non-finite float (Python or numpy) replaced by None, through dicts,
    lists and tuples; numpy numbers become Python numbers."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, numbers.Integral):
        return value if isinstance(value, int) else int(value)  # numpy ints are not int
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def dumps(data: Any, default: Optional[Callable[[Any], Any]] = None, **kwargs: Any) -> str:
    """`json.dumps` writing non-finite floats as null, also those `default` returns."""
    hook = None if default is None else (lambda v: finite(default(v)))
    return json.dumps(finite(data), default=hook, allow_nan=False, **kwargs)


def number(value: Any) -> Optional[float]:
    """A finite real number (not a bool) as a float, else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def plain(value: Any) -> Any:
    """A `default` for `dumps`: numpy scalars and arrays as Python numbers and lists, anything
    else json cannot write as its text."""
    return value.tolist() if hasattr(value, "tolist") else str(value)
