"""Xen PV MMU: translations/s with and without a TLB vs a bare dict page walk; mmu_update ops/s.

The model: a PV guest with 512 pages mapped through validated x86 32-bit tables (4 KiB pages,
2 levels), translating a seeded access stream with locality (90 % of accesses to 48 hot pages)
through its vCPU's hw MMU — TLB hit inlined, misses walking the real tables and counting every
page-table reference (:func:`virtcore.xen.mmu.translate_many`).

The baseline is the simplest honest pure-Python equivalent: the page tables as nested dicts
(``pgd[vpn >> 10][vpn & 1023]``), a dict TLB with the same capacity and the same FIFO
replacement, the same access stream — so the same hit rate, printed for both.  It checks no
permissions, sets no A/D bits and counts nothing but misses.  "Without TLB" is the same stream
with a 0-entry TLB on both sides (every access walks).

Validated ``mmu_update``: batches of 64 L1 updates that remap pages among the guest's own
frames (each validated by ``get_page_from_l1e`` — ownership, flags, the writable type
reference — and the old entry's references dropped); the baseline is the same stores as plain
word writes with no checks.

Target (issue 9 §5): the model at >= 50 % of the baseline's translations/s.
"""

from __future__ import annotations

from functools import partial

from benchmarks._util import Row, best_of
from virtcore.hw.paging import PagingConfig
from virtcore.rng import make_rng
from virtcore.xen.memory import MachineMemory
from virtcore.xen.mmu import MMUUpdate, PVGuest, XenMM, translate_many

ACCESSES = 200_000
PAGES = 512
HOT = 48
TLB_SIZE = 64
BASE_VA = 0x0040_0000


def _stream(seed: int = 0) -> list[int]:
    rng = make_rng(seed)
    vas = [BASE_VA + (i << 12) for i in range(PAGES)]
    hot = vas[:HOT]
    return [(rng.choice(hot) if rng.random() < 0.9 else rng.choice(vas)) + 4 * rng.randrange(1024)
            for _ in range(ACCESSES)]


def _guest(tlb_size: int) -> tuple[XenMM, PVGuest]:
    xen = XenMM(MachineMemory(PAGES + 64), PagingConfig.x86_32(), tlb_size=tlb_size)
    g = xen.create_pv_domain(1, PAGES + 16)
    g.build({BASE_VA + (i << 12): (i, True) for i in range(PAGES)})
    for i in range(PAGES):  # touch once so the A bits are set (a warmed-up address space)
        g.access(BASE_VA + (i << 12))
    g.mmu.tlb.flush()
    g.mmu.tlb.reset_stats()
    g.mmu.memory_references = g.mmu.walks = 0
    return xen, g


def model_run(g: PVGuest, stream: list[int]) -> int:
    """Translate ``stream`` from an empty TLB and zeroed counters; returns the count."""
    mmu = g.mmu
    mmu.tlb.flush()
    mmu.tlb.reset_stats()
    mmu.memory_references = mmu.walks = 0
    faults = translate_many(mmu, stream)
    assert faults == 0
    return len(stream)


def baseline_run(stream: list[int], tlb_size: int, hits: list[float]) -> int:
    """The bare dict walk with a FIFO dict TLB of ``tlb_size``; returns the count and
    appends the hit rate to ``hits``."""
    pgd: dict[int, dict[int, int]] = {}
    for i in range(PAGES):
        vpn = (BASE_VA >> 12) + i
        pgd.setdefault(vpn >> 10, {})[vpn & 1023] = 0x100 + i
    tlb: dict[int, int] = {}
    misses = 0
    pa = 0
    for va in stream:
        vpn = va >> 12
        e = tlb.get(vpn)
        if e is None:
            misses += 1
            e = pgd[vpn >> 10][vpn & 1023] << 12
            if tlb_size:
                if len(tlb) >= tlb_size:
                    del tlb[next(iter(tlb))]
                tlb[vpn] = e
        pa = e | (va & 0xFFF)
    assert pa
    hits.append(1 - misses / len(stream))
    return len(stream)


def _update_batches(xen: XenMM, g: PVGuest, rounds: int) -> int:
    """Remap the first 64 pages back and forth between two sets of own frames."""
    reqs_a, reqs_b = [], []
    for i in range(64):
        va = BASE_VA + (i << 12)
        reqs_a.append(g.map_request(va, 200 + i))
        reqs_b.append(g.map_request(va, i))
    done = 0
    for r in range(rounds):
        res = xen.mmu_update(1, reqs_a if r % 2 == 0 else reqs_b)
        assert res.ok, res
        done += res.done
    return done


def _plain_stores(reqs: list[MMUUpdate], words: list[int], rounds: int) -> int:
    n = 0
    for _ in range(rounds):
        for req in reqs:
            words[req.ptr >> 2] = req.val
            n += 1
    return n


def run(repeat: int = 3) -> list[Row]:
    """Measure the model and its baselines in this run."""
    stream = _stream()
    rows = []
    for tlb_size, label in ((TLB_SIZE, f"{TLB_SIZE}-entry TLB"), (0, "no TLB")):
        hits: list[float] = []
        t_base, n_base = best_of(partial(baseline_run, stream, tlb_size, hits), repeat)
        _, g = _guest(tlb_size)  # built and warmed up outside the timing
        t_model, n = best_of(partial(model_run, g, stream), repeat)
        hit_base = hits[-1]
        hit = g.mmu.tlb.hits / g.mmu.tlb.lookups
        refs = g.mmu.memory_references
        base = n_base / t_base
        rate = n / t_model
        rows.append(Row(f"bare dict walk, {label} (baseline), hit rate {100 * hit_base:.1f}%",
                        base / 1e6, "M trans/s"))
        rows.append(Row(f"PV guest hw MMU, {label}, hit rate {100 * hit:.1f}%", rate / 1e6,
                        "M trans/s", f"{rate / base:.2f}x baseline (target >= 0.50x);"
                        f" {refs} refs counted"))
    xen, g = _guest(0)
    rounds = 60
    t_upd, n_upd = best_of(lambda: _update_batches(xen, g, rounds), repeat)
    reqs = [g.map_request(BASE_VA + (i << 12), i) for i in range(64)]
    words = list(xen.machine.physical.words)
    t_raw, n_raw = best_of(lambda: _plain_stores(reqs, words, rounds), repeat)
    rows.append(Row("unchecked PTE stores (baseline)", n_raw / t_raw / 1e6, "M ops/s"))
    rows.append(Row("validated mmu_update (get_page_from_l1e + put_page_from_l1e)",
                    n_upd / t_upd / 1e3, "k ops/s",
                    f"{(n_upd / t_upd) / (n_raw / t_raw):.3f}x unchecked stores"))
    xen.machine.check_invariants()
    return rows
