"""Chapter 1 widgets: each explorer's redraw on a control change, and the chapter's run time.

Targets: every widget callback returns in <= 100 ms (median of >= 20 calls), and
``notebooks/01-architectures.ipynb`` executes headless (nbclient, kernel ``python3``)
in < 30 s, kernel start included.

For each explorer two figures are timed, cycling through a set of control values:

- *redraw*: what a control change costs in the widget — the trait change fires the
  observer, which calls the pure view function, renders its figure to PNG and sets
  the image and the HTML text (ipywidgets without a frontend);
- *view*: the pure view function alone (``_explorer_view`` …), which builds the
  figure but does not render it.

matplotlib runs on the Agg backend; the views make figures outside pyplot, and any
pyplot figure left open at the end is an error.  Whether Chinese labels are drawn
depends on an installed CJK font (:func:`virtcore.viz.arch.cjk_font`); the note
of the first row says which case was measured.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from benchmarks._util import Row, median_ms, time_notebook, verdict

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "notebooks" / "01-architectures.ipynb"
CALLBACK_TARGET_MS = 100.0
NOTEBOOK_TARGET_S = 30.0




def _cycling(setter: Callable[[Any], None], values: Iterable[Any]) -> Callable[[], None]:
    """A callable that applies the next of ``values`` (cycled) with ``setter``."""
    it = itertools.cycle(list(values))
    return lambda: setter(next(it))


def _redraw(w: Any, changes: list[tuple[str, Any]]) -> Callable[[], None]:
    """A callable that makes the next change of ``changes`` (cycled) that really changes a value.

    Setting a control to the value it has fires no observer, so such steps are skipped.
    """
    it = itertools.cycle(changes)

    def step() -> None:
        for key, value in it:
            if w.controls[key].value != value:
                w.controls[key].value = value
                return

    return step


def _explorer_changes() -> tuple[Any, list[tuple[str, Any]]]:
    from virtcore.viz.arch import architecture_explorer

    w = architecture_explorer()
    changes = []
    for arch in ("hosted", "bare-metal", "os-level", "hybrid"):
        changes.append(("architecture", arch))
        for event in ("io", "syscall", "privileged_instruction"):
            changes.append(("event", event))
            changes.append(("assist", True))
            changes.append(("assist", False))
    return w, changes


def _overhead_changes() -> tuple[Any, list[tuple[str, Any]]]:
    from virtcore.viz.arch import overhead_explorer

    w = overhead_explorer()
    changes: list[tuple[str, Any]] = []
    for io, assist in itertools.product((0.05, 0.3, 0.0, 0.6), (True, False)):
        changes += [("io", io), ("syscall", 0.1 + io / 3), ("assist", assist)]
    return w, changes


def _isolation_changes() -> tuple[Any, list[tuple[str, Any]]]:
    from virtcore.viz.arch import isolation_explorer

    w = isolation_explorer()
    changes: list[tuple[str, Any]] = []
    for arch in ("hosted", "bare-metal", "os-level", "hybrid"):
        changes.append(("architecture", arch))
        for fault in ("kernel_crash", "vmm_crash", "hypervisor_exploit"):
            changes += [("fault", fault), ("guest", 2), ("guest", 1)]
    return w, changes


def time_callbacks(calls: int = 20) -> dict[str, dict[str, float]]:
    """Median / max ms of each explorer's redraw (control change) and of its pure view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from virtcore.viz import arch as va

    views: dict[str, Callable[[], object]] = {
        "architecture_explorer": _cycling(
            lambda a: va._explorer_view(*a),
            itertools.product(("hosted", "bare-metal", "os-level", "hybrid"),
                              ("io", "syscall", "privileged_instruction", "tlb_miss"),
                              (True, False)),
        ),
        "overhead_explorer": _cycling(
            lambda a: va._overhead_view(*a),
            [({"compute": c, "io": i, "syscall": 0.05, "tlb_miss": 0.02}, x)
             for c, i, x in itertools.product((0.5, 0.9), (0.01, 0.1, 0.3), (False, True))],
        ),
        "isolation_explorer": _cycling(
            lambda a: va._isolation_view(*a),
            itertools.product(("hosted", "bare-metal", "os-level", "hybrid"),
                              ("kernel_crash", "hypervisor_crash", "vmm_crash"), (1, 2)),
        ),
    }
    widgets = {
        "architecture_explorer": _explorer_changes,
        "overhead_explorer": _overhead_changes,
        "isolation_explorer": _isolation_changes,
    }
    out: dict[str, dict[str, float]] = {}
    for name, make in widgets.items():
        w, changes = make()
        redraw = _redraw(w, changes)
        r_med, r_max = median_ms(redraw, calls)
        v_med, v_max = median_ms(views[name], calls)
        out[name] = {"redraw_ms": r_med, "redraw_max_ms": r_max, "view_ms": v_med,
                     "view_max_ms": v_max}
    if plt.get_fignums():
        raise RuntimeError(f"pyplot figures left open: {plt.get_fignums()}")
    return out


def time_chapter(path: Path = CHAPTER) -> float:
    """Seconds to run the chapter headless with nbclient (kernel ``python3``), start included."""
    return time_notebook(path)




def run() -> list[Row]:
    """The figures: per widget, redraw and view medians; the chapter's headless run time."""
    from virtcore.viz.arch import cjk_font

    timings = time_callbacks(calls=20)
    font = cjk_font()
    rows = []
    for i, (name, t) in enumerate(timings.items()):
        note = verdict(t["redraw_ms"], CALLBACK_TARGET_MS)
        if i == 0:
            note += f" (labels: {'Chinese + English, ' + font if font else 'English only'})"
        rows += [
            Row(f"{name}: control change -> redraw, median of 20", t["redraw_ms"], "ms", note),
            Row("  slowest of the 20", t["redraw_max_ms"], "ms"),
            Row("  pure view function (no PNG render), median", t["view_ms"], "ms"),
        ]
    seconds = time_chapter()
    rows.append(Row("01-architectures.ipynb headless (nbclient, python3)", seconds, "s",
                    verdict(seconds, NOTEBOOK_TARGET_S)))
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
