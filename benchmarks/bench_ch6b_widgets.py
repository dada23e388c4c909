"""Chapter 6b widget: the translation explorer's callbacks, and the chapter's run time.

Targets: every widget callback returns in <= 100 ms (median), and
``notebooks/06b-xen-mmu.ipynb`` executes headless (nbclient, kernel ``python3``) in < 30 s,
kernel start included.

Two callbacks of :func:`virtcore.viz.xen_mmu.translation_explorer` are timed, each beside the
pure function it wraps, measured in the same run (the machine is shared, so read the ratios):

- *step*: a click on ◀ / ▶ moves the slider, which re-renders the step
  (``render_story_step``) — cycling forward and back through a nested-paging story (25 steps);
- *mode / address change*: a new (mode, address) pair builds that translation's story
  (``translation_story``; for shadow paging a fresh lab, the miss, the fill and the retry) and
  renders step 1.  Every change is to a pair not seen before, so no call is served from the
  widget's cache.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

from benchmarks._util import Row, median_ms, time_notebook, verdict

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "notebooks" / "06b-xen-mmu.ipynb"
CALLBACK_TARGET_MS = 100.0
NOTEBOOK_TARGET_S = 30.0
CALLS = 20


def _steps() -> tuple[Callable[[], object], Callable[[], object]]:
    from virtcore.viz import xen_mmu as xm

    w = xm.translation_explorer(workload_events=300)
    w.mode.value = xm.MODES[1]
    n = len(w.story.steps)
    clicks = itertools.cycle(["next"] * (n - 1) + ["prev"] * (n - 1))
    story = w.story
    idx = itertools.cycle(range(n))
    return (lambda: w.buttons[next(clicks)].click()), \
        (lambda: xm.render_story_step(story, next(idx)))


def _changes() -> tuple[Callable[[], object], Callable[[], object], int]:
    from virtcore.viz import xen_mmu as xm

    w = xm.translation_explorer(workload_events=300)
    pairs = [(m, va) for va in w.lab.vas for m in xm.MODES if (m, va) != (xm.MODES[0],
                                                                         w.lab.vas[0])]
    todo = iter(pairs)

    def change() -> None:
        mode, va = next(todo)
        if w.address.value != va:
            w.address.value = va  # with the current mode: itself a new pair when first seen
        w.mode.value = mode

    lab = xm.MMULab(0)
    pure_pairs = itertools.cycle(pairs)

    def pure() -> None:
        mode, va = next(pure_pairs)
        xm.render_story_step(xm.translation_story(lab, mode, va), 0)

    # each change may trigger two new stories (address, then mode): count what it costs
    return change, pure, len(pairs)


def time_callbacks() -> dict[str, dict[str, float]]:
    """Median / max ms of each callback and of its pure function."""
    out: dict[str, dict[str, float]] = {}
    click, pure = _steps()
    c_med, c_max = median_ms(click, CALLS)
    p_med, p_max = median_ms(pure, CALLS)
    out["step (◀ / ▶)"] = {"callback_ms": c_med, "callback_max_ms": c_max, "pure_ms": p_med,
                           "pure_max_ms": p_max, "calls": CALLS}
    change, pure_change, n = _changes()
    calls = n // 2  # warm-up uses 1; never run out of unseen pairs
    c_med, c_max = median_ms(change, calls, warmup=1)
    p_med, p_max = median_ms(pure_change, calls, warmup=1)
    out["mode / address change (uncached)"] = {"callback_ms": c_med, "callback_max_ms": c_max,
                                               "pure_ms": p_med, "pure_max_ms": p_max,
                                               "calls": calls}
    return out


def run() -> list[Row]:
    """The figures: per callback, callback and pure medians and their ratio; the chapter."""
    from virtcore.viz import xen_mmu as xm

    rows = []
    for name, t in time_callbacks().items():
        rows += [
            Row(f"{name}: callback, median of {t['calls']:.0f}", t["callback_ms"], "ms",
                verdict(t["callback_ms"], CALLBACK_TARGET_MS)),
            Row("  slowest of them", t["callback_max_ms"], "ms"),
            Row("  pure function (no widget), median", t["pure_ms"], "ms"),
            Row("  callback / pure", t["callback_ms"] / max(t["pure_ms"], 1e-6), "x"),
        ]
    made, _ = median_ms(lambda: xm.translation_explorer(workload_events=1200), calls=3,
                        warmup=1)
    rows.append(Row("translation_explorer() (once, when the cell runs), median", made, "ms"))
    seconds = time_notebook(CHAPTER)
    rows.append(Row(f"{CHAPTER.name} headless (nbclient, python3)", seconds, "s",
                    verdict(seconds, NOTEBOOK_TARGET_S)))
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
