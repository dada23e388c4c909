"""Small helpers shared by the benchmarks."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


def cycling(fn: Callable[[Any], object], values: Iterable[Any]) -> Callable[[], None]:
    """A callable that calls ``fn`` with the next of ``values`` (cycled)."""
    it = itertools.cycle(list(values))

    def step() -> None:
        fn(next(it))

    return step


def changing(w: Any, changes: Iterable[tuple[str, Any]]) -> Callable[[], None]:
    """A callable that makes the next change of ``changes`` (cycled) that really changes a control.

    ``w.controls`` maps a name to an ipywidgets control.  Setting a control to the value it
    has fires no observer, so such steps are skipped.
    """
    it = itertools.cycle(list(changes))

    def step() -> None:
        for key, value in it:
            if w.controls[key].value != value:
                w.controls[key].value = value
                return

    return step


#: A widget to time: ``make()`` builds it and returns ``(callback, pure)`` — what a control
#: change or a click costs in the widget, and the pure function it wraps (the baseline).
WidgetMaker = Callable[[], tuple[Callable[[], object], Callable[[], object]]]


def time_callbacks(widgets: Mapping[str, WidgetMaker], calls: int = 20
                   ) -> dict[str, dict[str, float]]:
    """Median / max ms of each widget's callback and of its pure function, on matplotlib's Agg.

    Returns ``{name: {"callback_ms", "callback_max_ms", "pure_ms", "pure_max_ms"}}``.

    Raises
    ------
    RuntimeError
        If a pyplot figure is left open at the end (the widgets draw outside pyplot).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, dict[str, float]] = {}
    for name, make in widgets.items():
        callback, pure = make()
        c_med, c_max = median_ms(callback, calls)
        p_med, p_max = median_ms(pure, calls)
        out[name] = {"callback_ms": c_med, "callback_max_ms": c_max, "pure_ms": p_med,
                     "pure_max_ms": p_max}
    if plt.get_fignums():
        raise RuntimeError(f"pyplot figures left open: {plt.get_fignums()}")
    return out


def chapter_rows(paths: Iterable[Path], target_s: float) -> list[Row]:
    """One row per notebook: seconds to run it headless (:func:`time_notebook`) against a target."""
    rows = []
    for path in paths:
        seconds = time_notebook(path)
        rows.append(Row(f"{path.name} headless (nbclient, python3)", seconds, "s",
                        verdict(seconds, target_s)))
    return rows
