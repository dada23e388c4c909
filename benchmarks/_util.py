"""Small helpers shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Row:
    """One printed figure."""

    name: str
    value: float
    unit: str
    note: str = ""

    def __str__(self) -> str:
        v = f"{self.value:,.3f}" if abs(self.value) < 100 else f"{self.value:,.0f}"
        return f"  {self.name:<58} {v:>16} {self.unit:<10} {self.note}"


def best_of(fn: Callable[[], int], repeat: int = 5) -> tuple[float, int]:
    """Run ``fn`` (which returns a count of work done) ``repeat`` times; best seconds, count."""
    best, count = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        count = fn()
        best = min(best, time.perf_counter() - t0)
    return best, count


def median_ms(fn: Callable[[], object], calls: int = 20, warmup: int = 2) -> tuple[float, float]:
    """Median and maximum wall time of ``fn()`` in milliseconds, after ``warmup`` calls."""
    import statistics

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times), 1000 * max(times)


def time_notebook(path: object) -> float:
    """Seconds to run a notebook headless with nbclient (kernel ``python3``), start included."""
    from pathlib import Path

    import nbclient
    import nbformat

    path = Path(str(path))
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    nbclient.NotebookClient(
        nb, timeout=60, kernel_name="python3", shutdown_kernel="immediate",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    return time.perf_counter() - t0


def verdict(value: float, target: float) -> str:
    """``target <= T: ok`` or ``... OVER``."""
    return f"target <= {target:g}: {'ok' if value <= target else 'OVER'}"
