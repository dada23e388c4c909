"""Chapter 1 widgets: each explorer's redraw on a control change, and the chapter's run time.

Targets: every widget callback returns in <= 100 ms (median of >= 20 calls), and
``notebooks/01-architectures.ipynb`` executes headless (nbclient, kernel ``python3``)
in < 30 s, kernel start included.

For each explorer two figures are timed, cycling through a set of control values:

- *callback* (a redraw): what a control change costs in the widget — the trait change fires
  the observer, which computes the scene (a pure, cached function), draws it over the
  widget's kept picture (the stack explorers blit it over the plain stack; the cost chart
  keeps its figure), encodes the PNG and sets the image and the HTML text (ipywidgets
  without a frontend). The first change to each stack also renders the kept picture of
  that stack: those calls are the slowest, not the median;
- *pure*: the pure view function alone (``_explorer_view`` …), which draws the same scene
  on a new figure but does not render it — the baseline, measured in the same run.

matplotlib runs on the Agg backend; the views make figures outside pyplot, and any
pyplot figure left open at the end is an error.  Whether Chinese labels are drawn
depends on an installed CJK font (:func:`virtcore.viz.arch.cjk_font`); the note
of the first row says which case was measured.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import _util
from benchmarks._util import Row, changing, chapter_rows, cycling, verdict

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = (ROOT / "notebooks" / "01-architectures.ipynb",)
CALLBACK_TARGET_MS = 100.0
NOTEBOOK_TARGET_S = 30.0
CALLS = 20


def _explorer() -> tuple[Callable[[], None], Callable[[], None]]:
    from virtcore.viz import arch as va

    w = va.architecture_explorer()
    changes: list[tuple[str, Any]] = []
    for arch in ("hosted", "bare-metal", "os-level", "hybrid"):
        changes.append(("architecture", arch))
        for event in ("io", "syscall", "privileged_instruction"):
            changes.append(("event", event))
            changes.append(("assist", True))
            changes.append(("assist", False))
    pure = cycling(lambda a: va._explorer_view(*a),
                   itertools.product(("hosted", "bare-metal", "os-level", "hybrid"),
                                     ("io", "syscall", "privileged_instruction", "tlb_miss"),
                                     (True, False)))
    return changing(w, changes), pure


def _overhead() -> tuple[Callable[[], None], Callable[[], None]]:
    from virtcore.viz import arch as va

    w = va.overhead_explorer()
    changes: list[tuple[str, Any]] = []
    for io, assist in itertools.product((0.05, 0.3, 0.0, 0.6), (True, False)):
        changes += [("io", io), ("syscall", 0.1 + io / 3), ("assist", assist)]
    pure = cycling(lambda a: va._overhead_view(*a),
                   [({"compute": c, "io": i, "syscall": 0.05, "tlb_miss": 0.02}, x)
                    for c, i, x in itertools.product((0.5, 0.9), (0.01, 0.1, 0.3),
                                                     (False, True))])
    return changing(w, changes), pure


def _isolation() -> tuple[Callable[[], None], Callable[[], None]]:
    from virtcore.viz import arch as va

    w = va.isolation_explorer()
    changes: list[tuple[str, Any]] = []
    for arch in ("hosted", "bare-metal", "os-level", "hybrid"):
        changes.append(("architecture", arch))
        for fault in ("kernel_crash", "vmm_crash", "hypervisor_exploit"):
            changes += [("fault", fault), ("guest", 2), ("guest", 1)]
    pure = cycling(lambda a: va._isolation_view(*a),
                   itertools.product(("hosted", "bare-metal", "os-level", "hybrid"),
                                     ("kernel_crash", "hypervisor_crash", "vmm_crash"), (1, 2)))
    return changing(w, changes), pure


WIDGETS: dict[str, _util.WidgetMaker] = {
    "architecture_explorer": _explorer,
    "overhead_explorer": _overhead,
    "isolation_explorer": _isolation,
}


def time_callbacks(calls: int = CALLS) -> dict[str, dict[str, float]]:
    """Median / max ms of each explorer's redraw (control change) and of its pure view."""
    return _util.time_callbacks(WIDGETS, calls)


def run() -> list[Row]:
    """The figures: per widget, callback and pure medians; the chapter's headless run time."""
    from virtcore.viz.arch import cjk_font

    font = cjk_font()
    rows = []
    for i, (name, t) in enumerate(time_callbacks().items()):
        note = verdict(t["callback_ms"], CALLBACK_TARGET_MS)
        if i == 0:
            note += f" (labels: {'Chinese + English, ' + font if font else 'English only'})"
        rows += [
            Row(f"{name}: control change -> redraw, median of {CALLS}", t["callback_ms"], "ms",
                note),
            Row(f"  slowest of the {CALLS}", t["callback_max_ms"], "ms"),
            Row("  pure view function (no PNG render), median", t["pure_ms"], "ms"),
        ]
    return rows + chapter_rows(CHAPTERS, NOTEBOOK_TARGET_S)


if __name__ == "__main__":
    for row in run():
        print(row)
