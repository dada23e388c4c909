"""virtcore.xen.mmu: PV direct paging validated as Xen validates it, with Xen's numbers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtcore.errors import ConfigurationError
from virtcore.hw.events import Access, PageFault
from virtcore.hw.paging import PTE_P, PTE_U, PTE_W, PagingConfig
from virtcore.xen import mmu as X
from virtcore.xen.memory import (
    DOMID_SELF,
    EBUSY,
    EINVAL,
    ENOSYS,
    EPERM,
    ESRCH,
    PFN,
    MachineMemory,
    PGT_l1_page_table,
    PGT_l2_page_table,
    PGT_writable_page,
    XenMemoryError,
)
from virtcore.xen.mmu import MMUExtOp, MMUUpdate, XenMM, translate_many


def make(levels: int = 2, nframes: int = 96):
    cfg = PagingConfig.tiny() if levels == 2 else PagingConfig.tiny4()
    xen = XenMM(MachineMemory(nframes, frame_size=32), cfg)
    dom0 = xen.create_pv_domain(0, 8, privileged=True)
    g1 = xen.create_pv_domain(1, 24)
    g2 = xen.create_pv_domain(2, 24)
    return xen, dom0, g1, g2


def test_hypercall_and_command_numbers():
    """[XEN-H] hypercalls, MMU_*, MMUEXT_*, UVMF_*; [XEN-MEMORY] XENMEM_*."""
    assert (X.__HYPERVISOR_mmu_update, X.__HYPERVISOR_memory_op,
            X.__HYPERVISOR_update_va_mapping, X.__HYPERVISOR_mmuext_op) == (1, 12, 14, 26)
    assert (X.MMU_NORMAL_PT_UPDATE, X.MMU_MACHPHYS_UPDATE, X.MMU_PT_UPDATE_PRESERVE_AD,
            X.MMU_PT_UPDATE_NO_TRANSLATE) == (0, 1, 2, 3)
    assert list(range(8)) == [X.MMUEXT_PIN_L1_TABLE, X.MMUEXT_PIN_L2_TABLE, X.MMUEXT_PIN_L3_TABLE,
            X.MMUEXT_PIN_L4_TABLE, X.MMUEXT_UNPIN_TABLE, X.MMUEXT_NEW_BASEPTR,
            X.MMUEXT_TLB_FLUSH_LOCAL, X.MMUEXT_INVLPG_LOCAL]
    assert (X.UVMF_NONE, X.UVMF_TLB_FLUSH, X.UVMF_INVLPG, X.UVMF_LOCAL, X.UVMF_ALL) == (
        0, 1, 2, 0, 4)
    assert (X.XENMEM_increase_reservation, X.XENMEM_decrease_reservation,
            X.XENMEM_populate_physmap) == (0, 1, 6)
    assert sorted(XenMM(MachineMemory(4)).hypercall_handlers()) == [1, 12, 14, 26]


def test_page_table_page_cannot_be_mapped_writable():
    """§10 item 33: a PT page may not be mapped writable; the update is rejected."""
    xen, _, g, _ = make()
    g.build({0x40: (5, True)})
    for pfn in g.table_pfns:
        before = xen.snapshot()
        req = g.map_request(0x60, pfn, writable=True)
        assert xen.mmu_update(1, [req]) == X.HypercallResult(-EBUSY, 0)
        assert xen.snapshot() == before
        # read-only is fine: PV guests map their own tables read-only
        assert xen.mmu_update(1, [g.map_request(0x60, pfn, writable=False)]).ok
    # and through update_va_mapping
    l2 = g.mem.pfn_to_mfn(PFN(g.table_pfns[0]))
    assert xen.update_va_mapping(1, 0x60, l2 << 12 | PTE_P | PTE_W) == -EBUSY


def test_writable_page_cannot_become_page_table():
    xen, _, g, _ = make()
    g.build({0x40: (5, True), 0x100: (7, True)})
    # point the L2 entry for 0x200 at pfn 5's frame, which is mapped writable at 0x40
    before = xen.snapshot()
    res = xen.mmu_update(1, [g.map_request(0x200, 5, level=2)])
    assert res == X.HypercallResult(-EINVAL, 0)
    assert xen.snapshot() == before
    # once the writable mapping is gone, the same frame may become an L1 table
    assert xen.mmu_update(1, [g.unmap_request(0x40)]).ok
    assert xen.mmu_update(1, [g.map_request(0x200, 5, level=2)]).ok
    assert xen.machine.type[g.mem.pfn_to_mfn(PFN(5))] == PGT_l1_page_table


def test_bad_l1_flags_and_foreign_frames():
    xen, _, g1, g2 = make()
    g1.build({0x40: (5, True)})
    ok = g1.map_request(0x60, 6)
    for bad_flags in (0x08, 0x10, 0x80):  # PWT, PCD, PAT
        assert xen.mmu_update(1, [MMUUpdate(ok.ptr, ok.val | bad_flags)]).rc == -EINVAL
    assert xen.mmu_update(1, [MMUUpdate(ok.ptr, ok.val | 0x100 | 0xE00)]).ok  # G, AVL fine
    theirs = g2.mem.pfn_to_mfn(PFN(3))
    assert xen.mmu_update(1, [MMUUpdate(ok.ptr, theirs << 12 | PTE_P)]).rc == -EBUSY
    assert xen.mmu_update(1, [MMUUpdate(ok.ptr, 4000 << 12 | PTE_P)]).rc == -EPERM  # not RAM
    assert xen.mmu_update(1, [MMUUpdate(ok.ptr, 1 << 32)]).rc == -EINVAL
    # the PTE's own frame must be the caller's
    t2 = g2.mem.pfn_to_mfn(PFN(0))
    assert xen.mmu_update(1, [MMUUpdate(t2 << 5, 0)]).rc == -EINVAL


def test_batch_stops_at_first_failure_and_keeps_earlier():
    xen, _, g, _ = make()
    g.build({0x40: (5, True)})
    reqs = [g.map_request(0x60, 6), g.map_request(0x80, g.table_pfns[0]),
            g.map_request(0xA0, 7)]
    assert xen.mmu_update(1, reqs) == X.HypercallResult(-EBUSY, 1)
    assert g.access(0x60, write=True) == g.pfn_maddr(6)
    assert g.access(0xA0).present is False  # never applied


def test_plain_write_to_ordinary_page_and_preserve_ad():
    xen, _, g, _ = make()
    g.build({0x40: (5, True)})
    data = g.mem.pfn_to_mfn(PFN(9))
    assert xen.mmu_update(1, [MMUUpdate(data << 5 | 4, 0x1234)]).ok  # not a PT: plain store
    assert xen.machine.read_word(data, 4) == 0x1234
    assert xen.machine.type_count[data] == 0
    g.access(0x44, write=True)  # the walker sets A and D in the leaf
    req = g.map_request(0x40, 5)
    assert xen.mmu_update(1, [MMUUpdate(req.ptr | X.MMU_PT_UPDATE_PRESERVE_AD, req.val)]).ok
    assert xen.machine.physical.words[req.ptr >> 2] & 0x60 == 0x60


def test_pin_validates_whole_tree_and_is_not_refcounted():
    xen, _, g, g2 = make()
    m = xen.machine
    # a hand-built tree with a leaf that maps another domain's frame
    l2, l1 = (g.mem.pfn_to_mfn(PFN(p)) for p in (20, 21))
    m.write_word(l2, 0, l1 << 12 | PTE_P | PTE_W | PTE_U)
    m.write_word(l1, 4, g.mem.pfn_to_mfn(PFN(3)) << 12 | PTE_P | PTE_W)
    m.write_word(l1, 8, g2.mem.pfn_to_mfn(PFN(3)) << 12 | PTE_P)
    before = xen.snapshot()
    assert xen.mmuext_op(1, [MMUExtOp(X.MMUEXT_PIN_L2_TABLE, l2)]).rc == -EBUSY
    assert xen.snapshot() == before  # the partial validation was undone
    m.write_word(l1, 8, 0)
    assert xen.mmuext_op(1, [MMUExtOp(X.MMUEXT_PIN_L2_TABLE, l2)]).ok
    assert (m.type[l2], m.type[l1], m.type_count[l1]) == (PGT_l2_page_table, 1, 1)
    assert m.type[g.mem.pfn_to_mfn(PFN(3))] == PGT_writable_page
    assert xen.mmuext_op(1, [(X.MMUEXT_PIN_L2_TABLE, l2)]).rc == -EINVAL  # already pinned
    assert xen.mmuext_op(1, [(X.MMUEXT_PIN_L1_TABLE, l1)]).ok  # its own pin
    assert xen.mmuext_op(1, [(X.MMUEXT_UNPIN_TABLE, l2)]).ok
    assert xen.mmuext_op(1, [(X.MMUEXT_UNPIN_TABLE, l2)]).rc == -EINVAL  # not pinned
    assert m.type_count[l2] == 0 and m.type_count[l1] == 1  # L1 still pinned
    assert m.type_count[g.mem.pfn_to_mfn(PFN(3))] == 1
    assert xen.mmuext_op(1, [(X.MMUEXT_UNPIN_TABLE, l1)]).ok
    assert m.type_count[g.mem.pfn_to_mfn(PFN(3))] == 0  # free_page_type released the leaf
    assert xen.mmuext_op(1, [(X.MMUEXT_PIN_L4_TABLE, l2)]).ok  # level 4 on 2 levels: ignored
    assert xen.mmuext_op(1, [(99, 0)]).rc == -ENOSYS
    m.check_invariants()


def test_four_level_tree():
    xen, _, g, _ = make(levels=4, nframes=160)
    g.build({0x1000: (3, True), 0x1FFE0: (4, False)})
    assert xen.machine.type[g.baseptr] == 4
    assert g.access(0x1004, write=True) == g.pfn_maddr(3) + 4
    assert g.access(0x1FFE0, write=True).present
    t = g.translate(0x1FFE4)
    assert t.ok and t.references == 4 and t.pfn == 4


def test_new_baseptr_swaps_references():
    xen, _, g, _ = make()
    g.build({0x40: (5, True)})
    old = g.baseptr
    other = g.mem.pfn_to_mfn(PFN(15))  # an empty table: a valid root
    assert xen.mmuext_op(1, [(X.MMUEXT_NEW_BASEPTR, other)]).ok
    assert xen.machine.type_count[old] == 1  # only the pin left
    assert g.access(0x40).present is False
    assert xen.mmuext_op(1, [(X.MMUEXT_NEW_BASEPTR, g.mem.pfn_to_mfn(PFN(5)))]).rc == -EINVAL


def test_foreigndom_needs_privilege():
    xen, dom0, g1, _ = make()
    dom0.build({0x40: (1, True)})
    g1.build({0x40: (5, True)})
    req = dom0.map_request(0x60, 0)
    target = g1.mem.pfn_to_mfn(PFN(9))
    foreign = MMUUpdate(req.ptr, target << 12 | PTE_P | PTE_W)
    assert xen.mmu_update(0, [foreign]).rc == -EBUSY  # DOMID_SELF: not dom0's frame
    assert xen.mmu_update(0, [foreign], foreigndom=1).ok  # toolstack-style foreign map
    assert xen.mmu_update(1, [g1.map_request(0x60, 9)], foreigndom=0).rc == -EPERM
    assert xen.mmu_update(0, [foreign], foreigndom=77).rc == -ESRCH
    assert xen.mmu_update(1, [], foreigndom=DOMID_SELF).ok


class Grants:
    """A minimal grant policy for this test: frame -> (grantee, readonly), with in-use counts."""

    def __init__(self) -> None:
        self.grants: dict[int, tuple[int, bool]] = {}
        self.in_use: dict[int, int] = {}

    def may_map(self, mapper: int, mfn: int, writable: bool) -> bool:
        g = self.grants.get(mfn)
        return g is not None and g[0] == mapper and not (writable and g[1])

    def mapped(self, mapper: int, mfn: int, writable: bool) -> None:
        self.in_use[mfn] = self.in_use.get(mfn, 0) + 1

    def unmapped(self, mapper: int, mfn: int, writable: bool) -> None:
        self.in_use[mfn] -= 1


def test_grant_hook_allows_granted_frames_only():
    xen, _, g1, g2 = make()
    g1.build({0x40: (5, True)})
    grants = Grants()
    xen.foreign = grants
    shared = g2.mem.pfn_to_mfn(PFN(4))
    slot = g1.map_request(0x60, 0)
    assert xen.mmu_update(1, [MMUUpdate(slot.ptr, shared << 12 | PTE_P)]).rc == -EBUSY
    grants.grants[shared] = (1, True)  # read-only grant to d1
    assert xen.mmu_update(1, [MMUUpdate(slot.ptr, shared << 12 | PTE_P | PTE_W)]).rc == -EBUSY
    assert xen.mmu_update(1, [MMUUpdate(slot.ptr, shared << 12 | PTE_P | PTE_U)]).ok
    assert grants.in_use[shared] == 1 and xen.machine.owner_of(shared) == 2
    assert g1.access(0x60) == shared << 5
    assert xen.mmu_update(1, [g1.unmap_request(0x60)]).ok
    assert grants.in_use[shared] == 0


def test_machphys_update_and_memory_op():
    xen, _, g, _ = make()
    mfn = g.mem.pfn_to_mfn(PFN(2))
    assert xen.mmu_update(1, [MMUUpdate(mfn << 5 | X.MMU_MACHPHYS_UPDATE, 40)]).ok
    assert xen.machine.m2p[mfn] == 40 and g.mem.p2m[40] == mfn
    theirs = xen.guests[2].mem.pfn_to_mfn(PFN(0))
    assert xen.mmu_update(1, [(theirs << 5 | 1, 3)]).rc == -EINVAL
    assert xen.memory_op(1, X.XENMEM_decrease_reservation, [40, 41]) == 1
    assert xen.memory_op(1, X.XENMEM_current_reservation) == 23
    assert xen.memory_op(1, X.XENMEM_populate_physmap, [40]) == 1
    assert xen.memory_op(1, 99) == -ENOSYS
    xen.machine.check_invariants()


def test_stale_tlb_flushed_when_page_becomes_table():
    """After the writable mapping is removed without a flush, the stale TLB entry is gone by
    the time the frame becomes a page table (Xen's type-change flush)."""
    xen, _, g, _ = make()
    g.build({0x40: (5, True)})
    assert g.access(0x40, write=True) == g.pfn_maddr(5)  # writable TLB entry now
    assert xen.mmu_update(1, [g.unmap_request(0x40)]).ok  # no flush asked
    assert g.mmu.tlb.entries  # stale entry still there (the guest's job to flush)
    assert xen.mmu_update(1, [g.map_request(0x200, 5, level=2)]).ok
    assert not g.mmu.tlb.entries
    assert g.access(0x40, write=True).present is False


def test_update_va_mapping_flags():
    xen, _, g, _ = make()
    g.build({0x40: (5, True)})
    g.access(0x40)
    mfn6 = g.mem.pfn_to_mfn(PFN(6))
    assert xen.update_va_mapping(1, 0x40, mfn6 << 12 | PTE_P | PTE_U, X.UVMF_NONE) == 0
    assert g.access(0x40) == g.pfn_maddr(5)  # stale: no flush requested
    assert xen.update_va_mapping(1, 0x40, mfn6 << 12 | PTE_P | PTE_U, X.UVMF_INVLPG) == 0
    assert g.access(0x40) == g.pfn_maddr(6)
    flushes = g.mmu.tlb.flushes
    assert xen.update_va_mapping(1, 0x40, 0, X.UVMF_TLB_FLUSH | X.UVMF_ALL) == 0
    assert g.mmu.tlb.flushes == flushes + 1
    assert xen.update_va_mapping(1, 1 << 20, 0) == -EINVAL
    assert xen.update_va_mapping(9, 0x40, 0) == -ESRCH


def test_translation_trace_three_spaces():
    _, _, g, _ = make()
    g.build({0x40: (5, True)})
    t = g.translate(0x45, write=True)
    assert t.ok and t.references == 2
    assert t.pfn == 5 and t.mfn == g.mem.pfn_to_mfn(PFN(5)) and t.maddr == (t.mfn << 5) + 5
    assert [r.level for r in t.refs] == [2, 1]
    assert all(r.space == "machine" for r in t.refs)
    assert "index:0x2 [decimal 2]" in str(t)
    assert g.mmu.tlb.lookups == 0  # pure
    miss = g.translate(0x300)
    assert not miss.ok and "not present" in (miss.fault or "")


def test_destroy_pv_domain_returns_frames():
    xen, _, g, _ = make()
    g.build({0x40: (5, True)})
    free_before = xen.machine.allocator.free_count
    assert xen.destroy_pv_domain(1) == 24
    assert xen.machine.allocator.free_count == free_before + 24
    assert xen.machine.frames_of(1) == []
    xen.machine.check_invariants()


def test_host_misuse_raises():
    with pytest.raises(ConfigurationError, match="page size"):
        XenMM(MachineMemory(8, 32), PagingConfig.x86_32())
    _, _, g, _ = make()
    with pytest.raises(XenMemoryError, match="no level-1 table"):
        g.map_request(0x40, 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([8, 11, 14, 17, 20, 23, 5, 70]), st.booleans(),
                          st.booleans()), max_size=80),
       st.integers(0, 5))
def test_translate_many_is_exactly_the_hw_mmu(accesses, tlb_size):
    """The fast loop gives the same results, counters, A/D bits and TLB as hw translate."""
    worlds = []
    for _ in range(3):
        xen = XenMM(MachineMemory(96, 32), PagingConfig.tiny(), tlb_size=tlb_size)
        g = xen.create_pv_domain(1, 40)
        g.build({va << 5: (va % 30, va % 3 != 0) for va in range(8, 60, 3)})
        worlds.append((xen, g))
    (xa, ga), (xb, gb), (xc, gc) = worlds
    faults_a = faults_c = 0
    for vpn, write, user in accesses:
        va = (vpn << 5) | 4
        want = ga.mmu.translate(va, Access.WRITE if write else Access.READ, user)
        faults_a += isinstance(want, PageFault)
        got: list = []
        translate_many(gb.mmu, [va], write=write, user=user, out=got)  # the general loop
        assert got == [want]
        faults_c += translate_many(gc.mmu, [va, va], write=write, user=user)  # the tight one
        ga.mmu.translate(va, Access.WRITE if write else Access.READ, user)  # keep A in step
        translate_many(gb.mmu, [va], write=write, user=user, out=[])
    assert faults_c == 2 * faults_a
    for xen, g in ((xb, gb), (xc, gc)):
        assert xa.machine.physical.words == xen.machine.physical.words
        ta, tb = ga.mmu.tlb, g.mmu.tlb
        assert (ta.entries, ta.lookups, ta.misses, ta.evictions) == (
            tb.entries, tb.lookups, tb.misses, tb.evictions)
        assert list(ta.entries) == list(tb.entries)  # same FIFO order
        assert (ga.mmu.walks, ga.mmu.memory_references) == (
            g.mmu.walks, g.mmu.memory_references)


def test_translate_many_leaves_clean_pages_read_only_in_the_tlb():
    """A read that walks a clean (D=0) writable page must not cache W: the first write has to
    come back and set D, as on x86 and in hw.paging."""
    xen = XenMM(MachineMemory(96, 32), PagingConfig.tiny(), tlb_size=1)
    g = xen.create_pv_domain(1, 40)
    g.build({0x100: (3, True), 0x160: (4, True)})
    for va, write in ((0x100, False), (0x160, False), (0x100, False), (0x100, True)):
        translate_many(g.mmu, [va], write=write)  # the third read is a fast-path walk
    leaf = xen.machine.physical.words[g.entry_maddr(0x100) >> 2]
    assert leaf & 0x40, "the write did not set the leaf's D bit"
