"""One check for every whole-number option (seeds, counts, batch sizes, threads), so each
says the same thing the same way: the flag, what arrived, the range expected."""

from __future__ import annotations

import numpy as np

from .errors import BadInputError


def whole(value: object, flag: str, low: int, high: int, unit: str = "", hint: str = "") -> int:
    """`value` as an int when it is a whole number in low..high (bools refused), else a
    BadInputError naming `flag`, e.g.
    "--batch-size 0: expected a whole number from 1 to 4,096 windows (e.g. 4)"."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        what = f" {unit}" if unit else ""
        raise BadInputError(f"{flag} {value}: expected a whole number from {low:,} to {high:,}{what}{hint}")
    return int(value)
