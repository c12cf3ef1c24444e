"""Argument checks shared by the family's constructors and by the engine's
check of the param groups at every step: each names the argument. Numbers
must be finite: an infinite radius, step or threshold has no meaning here."""
import math
from typing import Any


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_nonnegative(name: str, value: Any) -> None:
    if not (_number(value) and value >= 0):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")


def check_positive(name: str, value: Any) -> None:
    if not (_number(value) and value > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")


def check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def check_fraction(name: str, value: Any) -> None:
    """A number in (0, 1]."""
    if not (_number(value) and 0 < value <= 1):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
