"""Argument checks shared by the library's functions, raised before any compute."""

from __future__ import annotations

import math


def check_temperature(name: str, value) -> None:
    """Raises ValueError unless `value` is a finite number > 0 (a softmax temperature)."""
    try:
        ok = 0.0 < float(value) < math.inf
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a finite float > 0, got {value!r}")
