"""User-facing errors: each names the bad value and what would be accepted."""
from __future__ import annotations

from collections.abc import Iterable


class TTScaleError(ValueError):
    """An error caused by user input; the CLI prints it as one line and exits with status 2."""


def unknown(kind: str, value: object, accepted: Iterable[object]) -> TTScaleError:
    """`unknown model 'x'; accepted: a, b, c`."""
    options = ", ".join(str(a) for a in accepted)
    return TTScaleError(f"unknown {kind} {value!r}; accepted: {options}")


def out_of_range(name: str, value: object, limits: str) -> TTScaleError:
    return TTScaleError(f"{name}={value!r} is out of range; accepted: {limits}")
