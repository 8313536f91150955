"""How bulk work (imports, batch eligibility) runs: the cycle collector kept out of the way.

Why: a bulk run allocates millions of short-lived, acyclic objects (records, resources,
index rows) on top of a large, long-lived heap (profiles, compiled rules and mappings,
caches). CPython's collector counts those allocations and, every so often, walks the whole
long-lived heap looking for cycles that are not there (`bench/adapter_bench.py` shows the
cost). Inside `bulk_gc` what exists
already is frozen (never walked again, still freed by reference counting) and young objects
are collected less often; on exit both are put back, so a server that imports keeps its
usual collector.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 20_000  # allocations between young collections (CPython's default: 700)

_lock = threading.Lock()
_depth = 0  # bulk runs under way in this process (nested, or in several threads)
_saved: tuple[int, int, int] = gc.get_threshold()


@contextmanager
def bulk_gc() -> Iterator[None]:
    """Enter once the run's long-lived data (mapping, rules) is loaded, so that it is frozen."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(_saved[0], YOUNG_THRESHOLD), *_saved[1:])
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.set_threshold(*_saved)
                gc.unfreeze()
