"""The scheduler benchmark module runs and reports sane numbers (tiny sizes here)."""

from __future__ import annotations

import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("benchmarks.bench_sched")


def test_bench_credit_small(monkeypatch):
    mod = _load(monkeypatch)
    r = mod.bench_credit(n_vcpus=8, n_pcpus=2, seconds=0.3, repeat=1)
    assert set(r) == {"wall_s", "events", "segments", "utilisation"}
    assert r["utilisation"] == 1.0, "8 CPU-bound vCPUs keep 2 pCPUs busy"
    # 0.3 s: 8 first wake-ups + 29 ticks + 9 accountings + 2 pCPUs x 9 timeslice ends
    assert r["events"] == 8 + 29 + 9 + 18
    mixed = mod.bench_credit(n_vcpus=16, n_pcpus=4, seconds=0.3, workload="mixed", repeat=1)
    assert mixed["events"] > r["events"]
    assert mod.bare_event_loop(1000, repeat=1) > 0
