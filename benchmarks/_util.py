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
