"""Process settings every actor applies when it starts."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Collect the young generation less often."""
    gc.set_threshold(50_000, 50, 1000)


def settle_heap() -> None:
    """Move every object alive now out of the collector's sight.

    NOTE: partitions hold millions of long-lived objects (a few per field of every record).
    The collections that merging a batch triggers walked them again and again: measured with
    ``python -m bench e2e``, that cost a quarter of a partition's time. Frozen objects are
    still freed when their last reference goes; only reference cycles among them wait for
    `collect_all`.
    """
    gc.freeze()


def collect_all() -> None:
    """A full collection, frozen objects included (for idle moments: it takes a while)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
