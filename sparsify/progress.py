"""Progress bars for long steps: on stderr, shown only on a terminal and only for work worth watching."""

from __future__ import annotations

import sys

from tqdm import tqdm

# Exports and conversions of fewer bytes of weights take seconds: no bar for them.
LARGE_BYTES = 256 << 20


def bar(total: float, desc: str, *, unit: str = "B", large: bool = True) -> tqdm:
    """A bar with a rate and an ETA; ``unit="B"`` counts bytes (scaled to KiB/MiB/GiB).

    ``large`` False hides it; so does a stderr that is not a terminal (logs and tests).
    """
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1024 if unit == "B" else 1000,
                file=sys.stderr, leave=False, dynamic_ncols=True, disable=None if large else True)
