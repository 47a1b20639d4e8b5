"""The checks a space file's values go through; each failure is one line naming the key.

`fail` raises `Invalid` as `<key path>: <problem> (got <value>; expected <what>)`;
`search.space.load_space` puts the file name in front. Values of Config fields are converted
and checked by cvae.config itself, whose errors arrive as data (`cvae.config.ConfigError`).
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Iterable, NoReturn, Union

from cvae.config import LAB_NAMES, ConfigError, coerce, from_dict
from search.storage import short

MISSING = object()  # a required key (as a default) or no offending value (in fail)


class Invalid(Exception):
    """A problem at a key path; load_space and validate_point prefix the file name."""


def fail(key: str, problem: str, got: Any = MISSING, expected: str = "") -> NoReturn:
    details = [f"got {short(repr(got))}"] if got is not MISSING else []
    details += [f"expected {expected}"] if expected else []
    raise Invalid(f"{key}: {problem}" + (f" ({'; '.join(details)})" if details else ""))


def check_keys(mapping: Iterable[Any], allowed: Iterable[str], where: str, noun: str = "key",
               fallback: str = "") -> None:
    """Unknown keys are an error suggesting a close allowed key: the only one that the key
    begins, else difflib's closest."""
    allowed = list(allowed)
    for key in mapping:
        if key not in allowed:
            extended = [a for a in allowed if a.startswith(str(key))]
            close = (extended if len(extended) == 1
                     else difflib.get_close_matches(str(key), allowed, n=1))
            lab = LAB_NAMES.get(str(key))  # a lab's flag name: the field it is here
            hint = (f"the lab's name; here it is {lab!r}" if lab in allowed
                    else f"did you mean {close[0]!r}?" if close
                    else f"expected {fallback or 'one of ' + ', '.join(allowed)}")
            raise Invalid(f"{join_key(where, key)}: unknown {noun} ({hint})")


def join_key(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def mapping(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        fail(key, "not a mapping", value, "a mapping of keys to values")
    return value


def one_of(value: Any, key: str, options: tuple[str, ...]) -> str:
    if value not in options:
        fail(key, "unknown value", value, "one of " + ", ".join(options))
    return value


def number_value(value: Any, key: str, integer: bool = False,
                 expected: str = "") -> Union[int, float]:
    """A finite number; numeric strings such as '1e-4' (YAML 1.1 reads it as text) convert."""
    expected = expected or ("an integer" if integer else "a number")
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            fail(key, "not a number", value, expected)
    if (isinstance(number, bool) or not isinstance(number, (int, float))
            or not math.isfinite(number)):
        fail(key, "not a number", value, expected)
    if integer:
        if not float(number).is_integer():
            fail(key, "not an integer", value, expected)
        return int(number)
    return float(number)


def integer(value: Any, key: str, minimum: int) -> int:
    number = int(number_value(value, key, integer=True))
    if number < minimum:
        fail(key, "too small", value, f"an integer >= {minimum}")
    return number


def positive(value: Any, key: str) -> float:
    number = number_value(value, key)
    if number <= 0:
        fail(key, "not positive", value, "a number > 0")
    return number


def gpu(value: Any) -> Union[float, str]:
    """GPUs per trial: a number >= 0 (fractions share a device) or "auto"."""
    if value == "auto":
        return value
    expected = "a number >= 0 or 'auto'"
    number = number_value(value, "resources.gpu", expected=expected)
    if number < 0:
        fail("resources.gpu", "negative", value, expected)
    return number


def field_value(name: str, value: Any, key: str) -> Any:
    """A value converted to Config field `name`'s type."""
    try:
        return coerce(name, value)
    except ConfigError as e:
        fail(key, f"wrong type for {name}", value, e.expected)


def check_field(fixed: dict[str, Any], name: str, value: Any, key: str) -> None:
    """Config validation of the fixed config with `name` set to `value`."""
    try:
        from_dict({**fixed, name: value})
    except ConfigError as e:
        fail(key, f"rejected by cvae.config for {name}", value, e.expected)
