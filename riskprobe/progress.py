"""Progress bars: one rule for every long loop. A bar always has a total, goes to stderr, and is not shown
when there is nothing to do (a resumed run whose work is all done prints no empty bar)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def bar(total: int, desc: str, unit: str, *, enabled: bool = True):
    """A tqdm bar over ``total`` items (disabled when ``enabled`` is false or ``total`` is 0)."""
    return tqdm(total=int(total), desc=desc, unit=unit, disable=not enabled or not total, file=sys.stderr,
                dynamic_ncols=True)
