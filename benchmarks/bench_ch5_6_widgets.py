"""Chapters 5 and 6a widgets: each callback on a click or a change, and the chapters' run times.

Targets: every widget callback returns in <= 100 ms (median of >= 20 calls), and
``notebooks/05-xen.ipynb`` and ``notebooks/06a-xen-internals.ipynb`` each execute headless
(nbclient, kernel ``python3``) in < 30 s, kernel start included.

Per widget two figures are timed, cycling through its buttons:

- *callback*: ``button.click()`` fires the handler, which runs the operation on the live Xen
  model and re-renders the widget's views (for the toolstack panel: ``xl list`` and the domain
  stack graph as a PNG) — ipywidgets without a frontend;
- *pure*: the operation alone, on the console class the widget wraps
  (``ToolstackConsole.do``, ``EventBitsConsole.do``, ``render_ring_step``) — the baseline the
  callback is compared with in the same run.

The toolstack panel's clicks mix legal operations and illegal ones (unpausing a running domain,
destroying a destroyed one: caught, typed errors). matplotlib runs on the Agg backend; any
pyplot figure left open is an error.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

from benchmarks import _util
from benchmarks._util import Row, chapter_rows, median_ms, verdict

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = (ROOT / "notebooks" / "05-xen.ipynb", ROOT / "notebooks" / "06a-xen-internals.ipynb")
CALLBACK_TARGET_MS = 100.0
NOTEBOOK_TARGET_S = 30.0
CALLS = 20

_XL_CLICKS = ("create", "pause", "unpause", "unpause", "destroy", "destroy", "create", "create",
              "pause", "destroy")


def _toolstack() -> tuple[Callable[[], None], Callable[[], None]]:
    from virtcore.viz import xen_chapters as xc

    p = xc.toolstack_panel()
    clicks = itertools.cycle(_XL_CLICKS)

    def click() -> None:
        op = next(clicks)
        names = p.console.names()
        if op != "create" and len(names) > 1:
            p.target.value = names[-1]
        p.buttons[op].click()

    console = xc.ToolstackConsole()
    ops = itertools.cycle(_XL_CLICKS)

    def pure() -> None:
        op = next(ops)
        console.do(op, console.names()[-1])

    return click, pure


def _event_bits() -> tuple[Callable[[], object], Callable[[], object]]:
    from virtcore.viz import xen_chapters as xc

    ops = ("mask", "send", "send", "unmask", "block upcalls", "send", "allow upcalls", "send")
    p = xc.event_bits_panel()
    clicks = itertools.cycle(ops)
    console = xc.EventBitsConsole()
    pure_ops = itertools.cycle(ops)
    return (lambda: p.buttons[next(clicks)].click()), (lambda: console.do(next(pure_ops)) and None)


def _stepper() -> tuple[Callable[[], object], Callable[[], object]]:
    from virtcore.viz import xen_chapters as xc

    w = xc.split_driver_stepper()
    n = len(w.request.steps)
    clicks = itertools.cycle(["next"] * (n - 1) + ["prev"] * (n - 1))
    idx = itertools.cycle(range(n))
    return (lambda: w.buttons[next(clicks)].click()), \
        (lambda: xc.render_ring_step(w.request, next(idx)) and None)


WIDGETS: dict[str, _util.WidgetMaker] = {
    "toolstack_panel": _toolstack,
    "event_bits_panel": _event_bits,
    "split_driver_stepper": _stepper,
}


def time_callbacks(calls: int = CALLS) -> dict[str, dict[str, float]]:
    """Median / max ms of each widget's callback and of its pure operation."""
    return _util.time_callbacks(WIDGETS, calls)


def time_made() -> dict[str, float]:
    """Milliseconds to make each widget (what its notebook cell does once)."""
    from virtcore.viz import xen_chapters as xc

    return {name: median_ms(fn, calls=5, warmup=1)[0] for name, fn in (
        ("toolstack_panel()", xc.toolstack_panel), ("event_bits_panel()", xc.event_bits_panel),
        ("split_driver_stepper()", xc.split_driver_stepper))}


def run() -> list[Row]:
    """The figures: per widget, callback and pure medians; each chapter's headless run time."""
    rows = []
    for name, t in time_callbacks().items():
        rows += [
            Row(f"{name}: callback (click -> model -> redraw), median of {CALLS}",
                t["callback_ms"], "ms", verdict(t["callback_ms"], CALLBACK_TARGET_MS)),
            Row("  slowest of them", t["callback_max_ms"], "ms"),
            Row("  pure operation (no redraw), median", t["pure_ms"], "ms"),
            Row("  callback / pure", t["callback_ms"] / max(t["pure_ms"], 1e-6), "x"),
        ]
    for name, ms in time_made().items():
        rows.append(Row(f"{name} (once, when the cell runs), median", ms, "ms"))
    return rows + chapter_rows(CHAPTERS, NOTEBOOK_TARGET_S)


if __name__ == "__main__":
    for row in run():
        print(row)
