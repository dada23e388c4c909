"""Soak: memory isolation of Xen's PV MMU as properties over random hypercall sequences.

``python -m benchmarks.soak_xen_mmu [N]`` runs N (default 10,000) random sequences with
hypothesis and prints how long it took; ``tests/xen/test_mmu_properties.py`` runs the same
properties on a few hundred sequences in CI.

Each sequence boots the hypervisor (:class:`virtcore.xen.Xen`, teaching-size 32-byte frames,
2-level tables) with a privileged dom0 and three unprivileged DomUs, gives it this PV MMU
(:func:`~virtcore.xen.mmu.install_pv_mmu`), builds and pins an address space for each domain,
then applies random operations from random domains: raw ``mmu_update`` batches (entries
pointing anywhere: own, foreign, free, Xen's and non-existent frames, page-table frames, any
flags, any level), well-formed guest-kernel updates, ``update_va_mapping`` with flush flags,
``mmuext_op`` pin / unpin / new base pointer / flushes on any frame, grants, grant maps
(``GNTTABOP_map_grant_ref``) followed by page-table entries for the granted frame, grant unmaps
and revocations through the hypervisor's real grant-table code, balloon ops
(``XENMEM_decrease_reservation`` / ``populate_physmap``) and hardware accesses that fill TLBs.
After every operation it checks:

1. no DomU can reach a machine frame it neither owns nor was granted (walk of every table
   reachable from its base pointer, and every TLB entry);
2. no page-table frame in use is writable by any guest (same walks, W at every level; TLB
   entries with W);
3. P2M and M2P are inverse and the frame table is consistent
   (:meth:`~virtcore.xen.memory.MachineMemory.check_invariants`);
4. a rejected request changed nothing: a single rejected call leaves the whole state (memory,
   frame table, M2P, P2Ms, base pointers, TLBs, grant-map counts) equal; a batch that fails
   after ``done`` requests leaves the state of applying those ``done`` requests alone (checked
   on a deep copy, for a quarter of the multi-request batches — copies are slow).

Grants are the hypervisor's own (:mod:`virtcore.xen.grant`); the MMU's grant hook is
:class:`~virtcore.xen.mmu.MaptrackPolicy` (a foreign frame may enter a page table only while
the mapper's maptrack holds a grant mapping of it).  A grant unmap first clears the page-table
entries that map the frame (:meth:`~virtcore.xen.mmu.XenMM.zap_foreign_mappings`, as Xen's
``replace_grant_host_mapping()`` clears the PTE).
"""

from __future__ import annotations

import copy
import sys
import time
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from virtcore.hw.paging import PTE_P, PTE_U, PTE_W, PagingConfig
from virtcore.xen import Xen
from virtcore.xen import mmu as X  # noqa: N812 - short name for the constants
from virtcore.xen.grant import (
    GNTMAP_host_map,
    GNTMAP_readonly,
    GnttabMapGrantRef,
    GNTTABOP_map_grant_ref,
    GnttabUnmapGrantRef,
    GrantTable,
    MapTrack,
)
from virtcore.xen.memory import MFN
from virtcore.xen.mmu import MMUExtOp, MMUUpdate, XenMM, install_pv_mmu

HC_GRANT_TABLE_OP = 20
GNTTABOP_unmap_grant_ref = 1

__all__ = ["OPS", "World", "XenMM", "apply", "check", "main", "make_property", "run_sequence"]

DOMUS = (1, 2, 3)
FLAG_BITS = (0x001, 0x002, 0x004, 0x008, 0x010, 0x020, 0x040, 0x080, 0x100, 0x200)


class World:
    """The hypervisor with this PV MMU, dom0 + three DomUs with built address spaces."""

    def __init__(self) -> None:
        self.hv = Xen(frames=200, frame_size=32, dom0_memory_pages=16)
        self.hv.trace.enabled = False
        self.xen = install_pv_mmu(self.hv, PagingConfig.tiny(), tlb_size=4)
        self.machine = self.xen.machine
        for name in ("a", "b", "c"):
            new = self.hv.create_domain(name, "pv", 24)
            new.memory.populate_physmap(range(24))
            new.pause_count = 0
        for domid in self.hv.domains:  # GNTTABOP_setup_table: 8 usable refs at 4 per frame
            self.table(domid).grow(4)
        self.xen.adopt_domain(0, privileged=True)
        for domid in DOMUS:
            self.xen.adopt_domain(domid)
        for domid in (0, *DOMUS):
            self.xen.guests[domid].build({0x40: (1, True), 0x60: (2, False), 0x120: (3, True)})
        self.refs: list[tuple[int, int]] = []  # (granter, ref) granted so far

    def table(self, domid: int) -> GrantTable:
        """Domain ``domid``'s grant table."""
        t = self.hv.domains[domid].grant_table
        assert t is not None
        return t

    def maptrack(self, domid: int) -> MapTrack:
        """Domain ``domid``'s maptrack table."""
        t = self.hv.domains[domid].maptrack
        assert t is not None
        return t

    def allows(self, mapper: int, mfn: int, writable: bool) -> bool:
        """Does ``mapper`` hold a live grant mapping of ``mfn`` (writable, if asked)?"""
        return self.maptrack(mapper).allows(mfn, writable)

    def snapshot(self) -> Any:
        grants = tuple((d, self.table(d).snapshot(), self.maptrack(d).snapshot())
                       for d in sorted(self.hv.domains))
        return (self.xen.snapshot(), grants)


# -- operations --------------------------------------------------------------------------------

def _frame(w: World, caller: int, pick: int) -> int:
    """A frame chosen by ``pick``: the caller's own, a page table, another domain's, anything."""
    m = w.machine
    choice = pick % 4
    if choice == 0:
        own = m.frames_of(caller)
        if own:
            return int(own[(pick >> 2) % len(own)])
    elif choice == 1:
        tables = [f for f in range(m.nframes) if 1 <= m.type[f] <= 4 and m.type_count[f]]
        if tables:
            return tables[(pick >> 2) % len(tables)]
    elif choice == 2:
        others = [f for f in range(m.nframes) if m.owner[f] not in (-1, caller)]
        if others:
            return others[(pick >> 2) % len(others)]
    return pick % (m.nframes + 4)  # anything, including frames that do not exist


def _table_frame(w: World, caller: int, pick: int) -> int:
    """Where a request's ``ptr`` points: mostly one of the caller's page tables."""
    m = w.machine
    if pick % 4:
        mine = [f for f in range(m.nframes)
                if m.owner[f] == caller and 1 <= m.type[f] <= 4 and m.type_count[f]]
        if mine:
            return mine[(pick >> 2) % len(mine)]
    return _frame(w, caller, pick >> 2)


def _flags(bits: int) -> int:
    f = 0
    for i, bit in enumerate(FLAG_BITS):
        if bits >> i & 1:
            f |= bit
    return f


def apply(w: World, op: tuple[int, ...]) -> None:
    """Apply one encoded operation and check the 'rejected changes nothing' property."""
    kind, caller_i, a, b, c, d = op
    doms = (0, *DOMUS)
    caller = doms[caller_i % 4]
    xen = w.xen
    g = xen.guests.get(caller)
    if g is None:
        return
    page_bits = xen.config.page_bits
    kind %= 11
    if kind in (0, 1):  # raw mmu_update batch of 1-3 requests
        reqs = []
        for i in range(1 + c % 3):
            ptr_frame = _table_frame(w, caller, a + 7 * i)
            ptr = (ptr_frame << page_bits) | ((b + i) % 8) << 2 | ((d >> (2 * i)) % 4)
            val = (_frame(w, caller, b * 3 + i) << 12) | _flags(d + i * 97)
            if kind == 1:
                val &= ~0x098  # mostly well-formed flags
            reqs.append(MMUUpdate(ptr, val))
        fd = X.DOMID_SELF if c % 5 else doms[(c // 5) % 4]
        _checked_batch(w, caller, reqs, fd, replay=c % 4 == 0)
    elif kind == 2:  # a well-formed guest-kernel map / unmap
        va = (a % 64) << 5
        pfn = b % 26
        try:
            req = (g.unmap_request(va) if c % 4 == 0 else
                   g.map_request(va, pfn, writable=bool(d & 1), level=1 + (c % 7 == 1)))
        except Exception:  # no table there: nothing to send
            return
        if req.val >> 12 >= w.machine.nframes and req.val & PTE_P:
            return  # pfn not populated: the guest would not send this
        _checked_batch(w, caller, [req], X.DOMID_SELF)
    elif kind == 3:  # update_va_mapping
        va = (a % 64) << 5
        val = (_frame(w, caller, b) << 12) | _flags(d) & ~(0x098 if c % 2 else 0)
        flags = (X.UVMF_NONE, X.UVMF_TLB_FLUSH, X.UVMF_INVLPG)[c % 3] | (X.UVMF_ALL * (d % 2))
        _checked_single(w, lambda: xen.update_va_mapping(caller, va, val, flags))
    elif kind == 4:  # mmuext_op
        cmd = (X.MMUEXT_PIN_L1_TABLE, X.MMUEXT_PIN_L2_TABLE, X.MMUEXT_UNPIN_TABLE,
               X.MMUEXT_NEW_BASEPTR, X.MMUEXT_TLB_FLUSH_LOCAL, X.MMUEXT_INVLPG_LOCAL,
               X.MMUEXT_PIN_L3_TABLE)[b % 7]
        arg = _frame(w, caller, a) if cmd != X.MMUEXT_INVLPG_LOCAL else (a % 64) << 5
        _checked_single(w, lambda: xen.mmuext_op(caller, [MMUExtOp(cmd, arg)]).rc)
    elif kind == 5:  # the caller grants a frame (mostly its own) to a DomU; maybe it is mapped
        mix = (a * 7 + b * 13 + c * 31 + d * 61) & 0xFF  # varied bits even for small draws
        own = w.machine.frames_of(caller)
        mfn = int(own[a % len(own)]) if mix & 3 and own else _frame(w, caller, a)
        grantee = DOMUS[b % 3]
        ref = w.table(caller).grant_access(grantee, mfn, bool(mix & 4))
        if ref >= 0:
            w.refs.append((caller, ref))
            if mix & 8 and grantee != caller:
                _map_grant(w, grantee, caller, ref, readonly=bool(mix & 16),
                           va=(mix % 16) << 5, pte_writable=bool(mix & 32))
    elif kind == 6:  # revoke a grant, or undo a grant mapping of the caller
        if c % 2 and w.refs:
            granter, ref = w.refs[a % len(w.refs)]
            w.table(granter).end_foreign_access(ref)
        else:
            handles = w.maptrack(caller).handles
            if handles:
                h = sorted(handles)[a % len(handles)]
                m = handles[h]
                if not any(m2.mfn == m.mfn for h2, m2 in handles.items() if h2 != h):
                    xen.zap_foreign_mappings(caller, m.mfn)  # replace_grant_host_mapping()
                unmap = GnttabUnmapGrantRef(host_addr=m.host_addr, handle=h)
                w.hv.hypercall(caller, HC_GRANT_TABLE_OP, GNTTABOP_unmap_grant_ref, unmap, 1)
    elif kind == 7:  # map a grant (GNTTABOP_map_grant_ref), then put the frame in a PTE
        if w.refs:
            granter, ref = w.refs[a % len(w.refs)]
            if granter != caller:
                mix = (a * 7 + b * 13 + c * 31 + d * 61) & 0xFF
                _map_grant(w, caller, granter, ref, readonly=bool(mix & 16),
                           va=(mix % 16) << 5, pte_writable=bool(mix & 32))
    elif kind == 8:  # balloon out / in
        if c % 2:
            xen.memory_op(caller, X.XENMEM_decrease_reservation, [a % 26])
        else:
            xen.memory_op(caller, X.XENMEM_populate_physmap, [a % 30])
    elif kind == 9:  # the vCPU touches memory (fills the TLB)
        g.access((a % 64) << 5, write=bool(b % 2), user=True)
    elif kind == 10:  # MMU_MACHPHYS_UPDATE
        ptr = (_frame(w, caller, a) << page_bits) | X.MMU_MACHPHYS_UPDATE
        _checked_batch(w, caller, [MMUUpdate(ptr, b % 40)], X.DOMID_SELF)


def _map_grant(w: World, mapper: int, granter: int, ref: int, *, readonly: bool, va: int,
               pte_writable: bool) -> None:
    """``GNTTABOP_map_grant_ref`` by ``mapper``, then an ``mmu_update`` putting the granted
    frame at ``va`` (checked like every update)."""
    flags = GNTMAP_host_map | (GNTMAP_readonly if readonly else 0)
    op = GnttabMapGrantRef(host_addr=0x1000 * (1 + (va >> 5) % 8), flags=flags, ref=ref,
                           dom=granter)
    w.hv.hypercall(mapper, HC_GRANT_TABLE_OP, GNTTABOP_map_grant_ref, op, 1)
    frame = w.table(granter).entries[ref].frame
    try:
        slot = w.xen.guests[mapper].map_request(va, 0)
    except Exception:
        return
    val = frame << 12 | PTE_P | PTE_U | (PTE_W if pte_writable else 0)
    _checked_batch(w, mapper, [MMUUpdate(slot.ptr, val)], X.DOMID_SELF)


def _checked_single(w: World, call: Any) -> None:
    before = w.snapshot()
    rc = call()
    if rc < 0:
        assert w.snapshot() == before, "a rejected call changed the state"


def _checked_batch(w: World, caller: int, reqs: list[MMUUpdate], fd: int, *,
                   replay: bool = False) -> None:
    before = w.snapshot()
    replica = copy.deepcopy(w) if replay and len(reqs) > 1 else None
    res = w.xen.mmu_update(caller, reqs, foreigndom=fd)
    assert 0 <= res.done <= len(reqs)
    assert (res.rc == 0) == (res.done == len(reqs))
    if res.rc < 0:
        if res.done == 0:
            assert w.snapshot() == before, f"rejected {reqs[0]} changed the state"
        elif replica is not None:
            for r in reqs[: res.done]:
                assert replica.xen.mmu_update(caller, [r], foreigndom=fd).ok
            assert replica.snapshot() == w.snapshot(), "a partly applied batch left extra state"


# -- the invariants ----------------------------------------------------------------------------

def check(w: World) -> None:
    """The isolation properties (raise AssertionError on a violation)."""
    m = w.machine
    xen = w.xen
    m.check_invariants()
    page_bits = xen.config.page_bits
    tables_in_use = {f for f in range(m.nframes) if 1 <= m.type[f] <= 4 and m.type_count[f]}
    for d, g in xen.guests.items():
        reach: list[tuple[int, bool]] = [(mfn, wr) for _, mfn, wr in g.leaf_mappings()]
        for e in g.mmu.tlb.entries.values():
            reach.append((e >> page_bits, bool(e & PTE_W)))
        for mfn, writable in reach:
            if writable:
                assert mfn not in tables_in_use, f"d{d} can write page-table frame {mfn:#x}"
            if d == 0:
                continue  # dom0 is privileged: it may map its targets' frames
            owner = m.owner_of(MFN(mfn))
            assert owner == d or w.allows(d, mfn, writable), (
                f"d{d} reaches frame {mfn:#x} of {owner} without a grant")
    for g in xen.guests.values():
        if g.baseptr is not None:
            assert m.type[g.baseptr] == xen.levels, "the base pointer is not a root table"
            assert m.type_count[g.baseptr] > 0, "the base pointer holds no type reference"
        for pfn, mfn in g.mem.p2m.items():
            assert m.m2p[mfn] == pfn, f"m2p[p2m[{pfn:#x}]] != {pfn:#x}"


OPS = st.lists(st.tuples(*(st.integers(0, 255) for _ in range(6))), min_size=1, max_size=40)


def run_sequence(ops: list[tuple[int, ...]]) -> None:
    """One sequence: a fresh world, each op, the invariants after each."""
    w = World()
    check(w)
    for op in ops:
        apply(w, op)
        check(w)


def make_property(examples: int, *, shrink: bool = True) -> Any:
    """The property test with ``examples`` sequences (hypothesis-driven; ``shrink=False``
    reports the first failing sequence as found)."""
    phases = list(Phase) if shrink else [Phase.explicit, Phase.reuse, Phase.generate]
    return settings(max_examples=examples, deadline=None, database=None, phases=phases,
                    suppress_health_check=[HealthCheck.too_slow])(given(OPS)(run_sequence))


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 10_000
    t0 = time.perf_counter()
    make_property(n)()
    dt = time.perf_counter() - t0
    print(f"soak_xen_mmu: {n} random sequences of up to 40 operations, all properties held,"
          f" {dt:.1f} s ({1000 * dt / n:.2f} ms per sequence)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
