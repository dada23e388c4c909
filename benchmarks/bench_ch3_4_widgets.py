"""Chapters 3 and 4: the I/O explorer's callbacks, the views behind them, the chapters' run times.

Targets: every widget callback returns in <= 100 ms (median of >= 20 calls), and
``notebooks/03-kvm-vs-xen.ipynb`` and ``notebooks/04-security-vs-performance.ipynb`` each
execute headless (nbclient, kernel ``python3``) in < 30 s, kernel start included.

The explorer (:func:`virtcore.viz.compare.io_explorer`) re-renders on every change: the path of
one request on its stack (SVG) and every path's time per request for the workload (SVG bars).
Timed:

- *callback*: setting a control's value (I/O size, batch, hypervisor, device model, in a cycle
  that visits every combination), which fires the handler — ipywidgets without a frontend;
- *pure*: :func:`~virtcore.viz.compare.io_view` alone, the baseline in the same run;
- *cold*: :func:`~virtcore.viz.compare.block_paths` for a workload not seen before (its cache
  cleared): the seven paths simulated, the KVM ones and Xen's split driver.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

from benchmarks._util import Row, chapter_rows, median_ms, verdict

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = (ROOT / "notebooks" / "03-kvm-vs-xen.ipynb",
            ROOT / "notebooks" / "04-security-vs-performance.ipynb")
CALLBACK_TARGET_MS = 100.0
NOTEBOOK_TARGET_S = 30.0
CALLS = 24

#: (control, value) changes, cycling: sizes, batches, hypervisors and device models.
_CHANGES = (("size", 512), ("device", "emulated"), ("batch", 16), ("hypervisor", "Xen"),
            ("size", 16384), ("hypervisor", "native"), ("batch", 1), ("hypervisor", "KVM"),
            ("device", "vhost"), ("size", 4096), ("batch", 4), ("device", "virtio+ioeventfd"))


def _explorer() -> tuple[Callable[[], None], Callable[[], None]]:
    from virtcore.viz import compare

    box = compare.io_explorer()
    changes = itertools.cycle(_CHANGES)

    def change() -> None:
        name, value = next(changes)
        box.controls[name].value = value

    views = itertools.cycle([(512, 1, "emulated", "KVM"), (16384, 16, "split driver", "Xen"),
                             (4096, 4, "vhost", "KVM"), (4096, 1, "native", "native")])

    def pure() -> None:
        compare.io_view(*next(views))

    return change, pure


def time_callbacks(calls: int = CALLS) -> dict[str, float]:
    """Median / max ms of the explorer's callback, the pure view and a cold workload."""
    import matplotlib

    matplotlib.use("Agg")
    from virtcore.viz import compare

    callback, pure = _explorer()
    c_med, c_max = median_ms(callback, calls)
    p_med, p_max = median_ms(pure, calls)
    sizes = itertools.cycle([(16, b, s) for b in (1, 4, 16) for s in (512, 4096, 16384)])

    def cold() -> None:
        compare.block_paths.cache_clear()
        compare.block_paths(*next(sizes))

    k_med, k_max = median_ms(cold, 9, warmup=0)
    return {"callback_ms": c_med, "callback_max_ms": c_max, "pure_ms": p_med,
            "pure_max_ms": p_max, "cold_ms": k_med, "cold_max_ms": k_max}


def run() -> list[Row]:
    """The figures: explorer callback and pure medians, a cold workload, the chapters' run times."""
    t = time_callbacks()
    rows = [
        Row(f"io_explorer: callback (change -> view), median of {CALLS}", t["callback_ms"], "ms",
            verdict(t["callback_ms"], CALLBACK_TARGET_MS)),
        Row("  slowest of them", t["callback_max_ms"], "ms"),
        Row("  pure io_view(...), median", t["pure_ms"], "ms"),
        Row("  callback / pure", t["callback_ms"] / max(t["pure_ms"], 1e-6), "x"),
        Row("  a workload not seen before (block_paths, cache cleared), median of 9",
            t["cold_ms"], "ms"),
        Row("  slowest of them", t["cold_max_ms"], "ms"),
    ]
    return rows + chapter_rows(CHAPTERS, NOTEBOOK_TARGET_S)


if __name__ == "__main__":
    for row in run():
        print(row)
