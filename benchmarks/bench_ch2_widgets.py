"""Chapter 2 widgets: each callback on a control change or a click, and the chapter's run time.

Targets: every widget callback returns in <= 100 ms (median of >= 20 calls), and each of
chapter 2's notebooks (``notebooks/02a-vm-and-vmm.ipynb``,
``notebooks/02b-scheduling-and-management.ipynb``) executes headless (nbclient, kernel
``python3``) in < 30 s, kernel start included.

Per widget two figures are timed, cycling through a set of control values or buttons:

- *callback*: what the widget does on a change — the trait change (or ``button.click()``)
  fires the observer, which calls the pure view function, renders its figure to PNG and
  sets the image and the HTML (ipywidgets without a frontend);
- *pure*: the pure function alone — ``playground_view`` (simulate + figure, no PNG),
  ``LifecycleConsole.do``, ``migration_view``, ``render_trap_step``.

The scheduler playground's changes include its most expensive settings (4 VMs, 4 pCPUs,
a 1 ms timeslice, 1 s of simulated time).  The lifecycle panel's clicks mix legal
operations (a live migration among them) and illegal ones (caught typed errors).
matplotlib runs on the Agg backend; any pyplot figure left open is an error.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import _util
from benchmarks._util import Row, changing, chapter_rows, cycling, median_ms, verdict

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = (ROOT / "notebooks" / "02a-vm-and-vmm.ipynb",
            ROOT / "notebooks" / "02b-scheduling-and-management.ipynb")
CALLBACK_TARGET_MS = 100.0
NOTEBOOK_TARGET_S = 30.0
CALLS = 20


def _playground() -> tuple[Callable[[], None], Callable[[], None]]:
    from virtcore.viz import sched as vs

    w = vs.scheduler_playground(seed=0)
    changes: list[tuple[str, Any]] = []
    for sched, pcpus in itertools.product(("Credit", "RR", "FIFO"), (1, 2, 4)):
        changes += [("scheduler", sched), ("pcpus", pcpus), ("vms", 4), ("timeslice_ms", 1),
                    ("duration_ms", 1000), ("weight2", 512), ("cap3", 40),
                    ("workload4", "mixed"), ("vms", 2), ("timeslice_ms", 30),
                    ("duration_ms", 600), ("weight2", 256), ("cap3", 0), ("workload4", "io")]
    specs = [vs.VMSpec(f"vm{i}", 256 * i, 20 * (i == 3), k)
             for i, k in enumerate(vs.WORKLOADS, start=1)]
    pure = cycling(lambda a: vs.playground_view(*a),
                    [(s, p, specs[:n], t, d, 0)
                     for s, p, n, t, d in itertools.product(("Credit", "RR", "FIFO"), (1, 4),
                                                            (2, 4), (1, 30), (300, 1000))])
    return changing(w, changes), pure


def _lifecycle() -> tuple[Callable[[], None], Callable[[], None]]:
    from virtcore.viz import vmm as vv

    p = vv.lifecycle_panel(run_steps=500)
    ops = ["define", "start", "resume", "run", "pause", "migrate", "resume", "migrate",
           "run", "shutdown", "pause", "start", "destroy", "undefine", "start"]
    clicks = cycling(lambda op: p.buttons[op].click(), ops)
    console = vv.LifecycleConsole(run_steps=500)
    pure = cycling(lambda op: console.run() if op == "run" else console.do(op), ops)
    return clicks, pure


def _migration() -> tuple[Callable[[], None], Callable[[], None]]:
    from virtcore.viz import vmm as vv

    w = vv.migration_explorer()
    changes: list[tuple[str, Any]] = []
    for dirty, mib in itertools.product((2_000, 40_000, 20_000, 29_000), (512, 8192)):
        changes += [("dirty_rate", dirty), ("memory_mib", mib), ("stop_threshold", 20),
                    ("max_rounds", 30), ("bandwidth", 30_000), ("stop_threshold", 200)]
    pure = cycling(lambda a: vv.migration_view(*a),
                    itertools.product((512, 8192), (2_000, 29_000, 40_000), (30_000,),
                                      (20, 200), (30,)))
    return changing(w, changes), pure


def _stepper() -> tuple[Callable[[], None], Callable[[], None]]:
    from virtcore.viz import vmm as vv

    w = vv.trap_stepper("bt")
    n = len(w.trace.steps)
    clicks = cycling(lambda b: w.buttons[b].click(), ["next"] * (n - 1) + ["first", "last",
                                                                            "prev"])
    pure = cycling(lambda i: vv.render_trap_step(w.trace, i), range(n))
    return clicks, pure


WIDGETS: dict[str, _util.WidgetMaker] = {
    "scheduler_playground": _playground,
    "lifecycle_panel": _lifecycle,
    "migration_explorer": _migration,
    "trap_stepper": _stepper,
}


def time_callbacks(calls: int = CALLS) -> dict[str, dict[str, float]]:
    """Median / max ms of each widget's callback and of its pure function."""
    return _util.time_callbacks(WIDGETS, calls)


def time_trace() -> float:
    """Milliseconds to record a trap trace (what trap_stepper does once, when it is made)."""
    from virtcore.viz import vmm as vv

    return median_ms(lambda: vv.trap_trace("bt"), calls=CALLS)[0]


def run() -> list[Row]:
    """The figures: per widget, callback and pure medians; the chapter's headless run time."""
    rows = []
    for name, t in time_callbacks().items():
        rows += [
            Row(f"{name}: callback (change/click -> redraw), median of {CALLS}",
                t["callback_ms"], "ms", verdict(t["callback_ms"], CALLBACK_TARGET_MS)),
            Row("  slowest of them", t["callback_max_ms"], "ms"),
            Row("  pure function (no PNG render), median", t["pure_ms"], "ms"),
        ]
    rows.append(Row("trap_trace('bt') (once, when trap_stepper is made), median", time_trace(),
                    "ms"))
    return rows + chapter_rows(CHAPTERS, NOTEBOOK_TARGET_S)


if __name__ == "__main__":
    for row in run():
        print(row)
