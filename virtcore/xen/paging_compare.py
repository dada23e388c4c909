"""Shadow versus nested paging on the same workload, priced on the course's one cost model.

One seeded workload — the same memory accesses, the same guest page-table updates, the same
guest process switches (CR3 loads) and the same switches between domains — is run under
:class:`~virtcore.xen.shadow.ShadowPaging` (``hap=0``) and
:class:`~virtcore.xen.nested.NestedPaging` (``hap=1``) [XL-CFG], on identical machines with the
same TLB and the same tagging policy.  Counts come from the models; prices from
:data:`virtcore.costs.DEFAULT_COSTS`:

=========================  =====================================================
event                      price
=========================  =====================================================
guest memory access        ``instruction`` (same in both)
page-table reference       ``memory_reference`` (hardware walks, and the shadow
                           fault handler's reads of guest tables)
VM exit + entry            ``2 * vm_exit``
emulated guest PTE store   ``emulate``
PTE / shadow entry written ``pte_update`` (guest stores in both; shadow entries)
TLB flush on a switch      ``tlb_flush`` (only when TLB entries are untagged)
switch between domains     ``context_switch`` (same in both)
=========================  =====================================================

The comparison is fair by construction: both runs replay the identical event list on
identically built guests; only the paging mode differs.  What it shows is the textbook trade
[BHAR08; AA06; KVM-MMU]: shadow paging pays exits for page-table work and CR3 loads, nested
paging pays longer TLB misses ((n+1)(m+1)−1 references instead of n).

>>> w = make_workload(seed=0, nevents=300)
>>> w
Workload(seed=0: 2 domains x 2 processes, 300 events: ... accesses, ... PTE updates, ...)
>>> c = compare_paging(w)
>>> c.shadow.exits > c.nested.exits == 0, c.nested.refs_per_miss > c.shadow.hw_refs_per_miss
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from virtcore.costs import DEFAULT_COSTS, Costs
from virtcore.errors import ConfigurationError
from virtcore.hw.events import PageFault
from virtcore.hw.paging import PagingConfig
from virtcore.rng import make_rng
from virtcore.xen.memory import MachineMemory
from virtcore.xen.nested import HVMGuest, NestedPaging, TaggedTLB, populate
from virtcore.xen.shadow import ShadowPaging

__all__ = [
    "PagingComparison",
    "PagingRun",
    "Workload",
    "compare_paging",
    "compare_tlb_tagging",
    "make_workload",
    "run_paging",
]

Event = tuple[Any, ...]


@dataclass(frozen=True)
class Workload:
    """A replayable list of events for HVM guests (see :func:`make_workload`).

    Events: ``("switch", d)``, ``("cr3", d, proc)``, ``("map", d, proc, va, slot, writable)``,
    ``("unmap", d, proc, va)``, ``("access", d, va, write)``; ``slot`` names one of the
    domain's data pages (the same gfn in every run).
    """

    seed: int
    ndomains: int
    nprocs: int
    slots: int
    guest_config: PagingConfig
    events: tuple[Event, ...] = field(repr=False)

    def count(self, kind: str) -> int:
        """How many events of ``kind``."""
        return sum(1 for e in self.events if e[0] == kind)

    def __repr__(self) -> str:
        return (f"Workload(seed={self.seed}: {self.ndomains} domains x {self.nprocs} processes,"
                f" {len(self.events)} events: {self.count('access')} accesses,"
                f" {self.count('map') + self.count('unmap')} PTE updates,"
                f" {self.count('cr3')} CR3 loads, {self.count('switch')} domain switches)")


def make_workload(seed: int = 0, *, ndomains: int = 2, nprocs: int = 2, pages: int = 8,
                  nevents: int = 2000, p_write: float = 0.3, p_remap: float = 0.04,
                  p_cr3: float = 0.02, p_switch: float = 0.02,
                  guest_config: PagingConfig | None = None) -> Workload:
    """A seeded workload: each process maps ``pages`` pages, then accesses them (skewed: most
    accesses go to a few hot pages), sometimes remapping a page, switching process or domain.

    >>> make_workload(1, nevents=50).events[:2]
    (('switch', 0), ('map', 0, 0, 17632, 0, True))
    """
    cfg = guest_config or PagingConfig.tiny4()
    if min(ndomains, nprocs, pages) < 1 or nevents < 0:
        raise ConfigurationError("need at least one domain, process and page")
    rng = make_rng(seed)
    va_pages = cfg.va_limit >> cfg.page_bits
    slots = nprocs * pages + 8
    events: list[Event] = []
    mapped: dict[tuple[int, int], dict[int, bool]] = {}
    pool: dict[tuple[int, int], list[int]] = {}
    free_slots = {d: list(range(slots)) for d in range(ndomains)}
    for d in range(ndomains):
        events.append(("switch", d))
        for p in range(nprocs):
            if p:
                events.append(("cr3", d, p))
            vas = rng.sample(range(1, va_pages), 2 * pages)  # half mapped now, half later
            pool[(d, p)] = [vpn << cfg.page_bits for vpn in vas]
            mapped[(d, p)] = {}
            for vpn in vas[:pages]:
                writable = rng.random() < 0.7
                events.append(("map", d, p, vpn << cfg.page_bits, free_slots[d].pop(0), writable))
                mapped[(d, p)][vpn << cfg.page_bits] = writable
        events.append(("cr3", d, 0))
    cur_d, cur_p = ndomains - 1, dict.fromkeys(range(ndomains), 0)
    while len(events) < nevents:
        r = rng.random()
        if r < p_switch and ndomains > 1:
            cur_d = rng.choice([d for d in range(ndomains) if d != cur_d])
            events.append(("switch", cur_d))
        elif r < p_switch + p_cr3 and nprocs > 1:
            cur_p[cur_d] = rng.choice([p for p in range(nprocs) if p != cur_p[cur_d]])
            events.append(("cr3", cur_d, cur_p[cur_d]))
        elif r < p_switch + p_cr3 + p_remap:
            m = mapped[(cur_d, cur_p[cur_d])]
            va = rng.choice(sorted(m))
            events.append(("unmap", cur_d, cur_p[cur_d], va))
            del m[va]
            new_va = rng.choice([v for v in pool[(cur_d, cur_p[cur_d])] if v not in m])
            writable = rng.random() < 0.7
            events.append(("map", cur_d, cur_p[cur_d], new_va,
                           rng.randrange(slots), writable))
            m[new_va] = writable
        else:
            m = mapped[(cur_d, cur_p[cur_d])]
            vas = sorted(m)
            hot = vas[: max(1, len(vas) // 4)]
            va = rng.choice(hot) if rng.random() < 0.8 else rng.choice(vas)
            write = m[va] and rng.random() < p_write
            events.append(("access", cur_d, va + 4 * rng.randrange(cfg.page_size // 4), write))
    return Workload(seed, ndomains, nprocs, slots, cfg, tuple(events))


@dataclass(frozen=True)
class PagingRun:
    """Counts and priced time of one workload under one paging mode."""

    mode: str
    use_vpid: bool
    accesses: int
    tlb_lookups: int
    tlb_misses: int
    hw_refs: int
    software_refs: int
    exits: int
    shadow_faults: int
    emulations: int
    shadow_writes: int
    pte_writes: int
    switch_flushes: int
    switches: int
    guest_faults: int
    time_ns: float
    breakdown: tuple[tuple[str, float], ...]

    @property
    def hit_rate(self) -> float:
        """TLB hits / lookups."""
        return 1 - self.tlb_misses / self.tlb_lookups if self.tlb_lookups else 0.0

    @property
    def refs_per_miss(self) -> float:
        """Page-table references (hardware and the hypervisor's software walks) per TLB miss."""
        return (self.hw_refs + self.software_refs) / self.tlb_misses if self.tlb_misses else 0.0

    @property
    def hw_refs_per_miss(self) -> float:
        """Hardware walk references per TLB miss."""
        return self.hw_refs / self.tlb_misses if self.tlb_misses else 0.0

    def __repr__(self) -> str:
        return (f"PagingRun({self.mode}, vpid={self.use_vpid}: {self.accesses} accesses,"
                f" hit rate {100 * self.hit_rate:.1f}%, {self.refs_per_miss:.1f} refs/miss,"
                f" {self.exits} exits, {self.time_ns / 1000:.1f} µs)")


def run_paging(mode: str, workload: Workload, *, ept_config: PagingConfig | None = None,
               tlb_capacity: int = 32, use_vpid: bool = True,
               costs: Costs = DEFAULT_COSTS) -> PagingRun:
    """Replay ``workload`` under ``mode`` (``"shadow"`` or ``"nested"``) and price it.

    >>> w = make_workload(seed=3, nevents=200)
    >>> run_paging("nested", w).exits, run_paging("shadow", w).exits > 0
    (0, True)
    """
    cfg = workload.guest_config
    ept_cfg = ept_config or PagingConfig(cfg.page_bits, 4, cfg.index_bits,
                                         "EPT: 4 levels, like x86-64's")
    # data pages, then page tables: at most a root plus one table per level per pool page
    pages = workload.slots + workload.nprocs * (1 + workload.slots * (cfg.levels - 1)) + 8
    machine = MachineMemory(workload.ndomains * (pages + 4 * pages) + 64, cfg.page_size)
    tlb = TaggedTLB(tlb_capacity)
    pager: ShadowPaging | NestedPaging
    if mode == "shadow":
        pager = ShadowPaging(machine, tlb, use_vpid=use_vpid)
    elif mode == "nested":
        pager = NestedPaging(machine, ept_cfg, tlb, use_vpid=use_vpid)
    else:
        raise ConfigurationError(f"mode {mode!r} is neither 'shadow' nor 'nested'")
    data: dict[int, list[int]] = {}
    for d in range(workload.ndomains):
        guest = HVMGuest(machine, populate(machine, d + 1, pages), cfg, workload.nprocs)
        data[d] = [guest.take_data_page() for _ in range(workload.slots)]
        pager.add_guest(guest)
    accesses = 0
    for ev in workload.events:
        kind = ev[0]
        d = ev[1]
        dom = d + 1
        if kind == "access":
            accesses += 1
            if isinstance(pager.access(dom, ev[2], ev[3]), PageFault):
                raise AssertionError(f"workload access faulted: {ev}")
        elif kind == "map":
            pager.map(dom, ev[2], ev[3], data[d][ev[4]], ev[5])
        elif kind == "unmap":
            pager.unmap(dom, ev[2], ev[3])
        elif kind == "cr3":
            pager.load_cr3(dom, ev[2])
        elif kind == "switch":
            pager.switch(dom)
    lookups = sum(m.tlb.lookups for m in pager.mmus.values())
    c = costs
    parts = (
        ("guest accesses", accesses * c.instruction),
        ("page-table references", (pager.hw_refs + pager.software_refs) * c.memory_reference),
        ("VM exits + entries", pager.exits * 2 * c.vm_exit),
        ("emulated PTE stores", pager.emulations * c.emulate),
        ("PTE and shadow writes", (pager.pte_writes + pager.shadow_writes) * c.pte_update),
        ("TLB flushes on switch", pager.flushes_on_switch * c.tlb_flush),
        ("domain switches", pager.switches * c.context_switch),
    )
    guest_faults = getattr(pager, "guest_faults", 0)
    return PagingRun(pager.mode, use_vpid, accesses, lookups, pager.misses, pager.hw_refs,
                     pager.software_refs, pager.exits, getattr(pager, "shadow_faults", 0),
                     pager.emulations, pager.shadow_writes, pager.pte_writes,
                     pager.flushes_on_switch, pager.switches, guest_faults,
                     sum(v for _, v in parts), parts)


@dataclass(frozen=True)
class PagingComparison:
    """Shadow and nested paging on one workload."""

    workload: Workload
    shadow: PagingRun
    nested: PagingRun

    def rows(self) -> list[tuple[str, float, float]]:
        """``(measure, shadow, nested)`` rows, for a table or a widget."""
        s, n = self.shadow, self.nested
        return [
            ("TLB hit rate %", round(100 * s.hit_rate, 1), round(100 * n.hit_rate, 1)),
            ("TLB misses", s.tlb_misses, n.tlb_misses),
            ("page-table refs per miss (all)", round(s.refs_per_miss, 2),
             round(n.refs_per_miss, 2)),
            ("VM exits", s.exits, n.exits),
            ("  of which shadow faults", s.shadow_faults, n.shadow_faults),
            ("emulated guest PTE stores", s.emulations, n.emulations),
            ("shadow entries written", s.shadow_writes, n.shadow_writes),
            ("simulated time (µs)", round(s.time_ns / 1000, 1), round(n.time_ns / 1000, 1)),
        ]

    def __str__(self) -> str:
        lines = [repr(self.workload), f"{'':34}{'shadow':>12}{'nested':>12}"]
        lines += [f"{name:34}{a:>12g}{b:>12g}" for name, a, b in self.rows()]
        return "\n".join(lines)


def compare_paging(workload: Workload, *, costs: Costs = DEFAULT_COSTS, tlb_capacity: int = 32,
                   use_vpid: bool = True, ept_config: PagingConfig | None = None
                   ) -> PagingComparison:
    """Run ``workload`` under shadow and under nested paging with the same TLB and policy."""
    runs = [run_paging(mode, workload, costs=costs, tlb_capacity=tlb_capacity,
                       use_vpid=use_vpid, ept_config=ept_config)
            for mode in ("shadow", "nested")]
    return PagingComparison(workload, runs[0], runs[1])


def compare_tlb_tagging(workload: Workload, *, mode: str = "nested", tlb_capacity: int = 32,
                        costs: Costs = DEFAULT_COSTS) -> tuple[PagingRun, PagingRun]:
    """The same workload with VPID-tagged TLB entries and with a flush on every switch.

    >>> tagged, flushed = compare_tlb_tagging(make_workload(seed=2, nevents=400))
    >>> tagged.switch_flushes, flushed.switch_flushes == flushed.switches > 0
    (0, True)
    >>> tagged.tlb_misses < flushed.tlb_misses
    True
    """
    return (run_paging(mode, workload, tlb_capacity=tlb_capacity, use_vpid=True, costs=costs),
            run_paging(mode, workload, tlb_capacity=tlb_capacity, use_vpid=False, costs=costs))

