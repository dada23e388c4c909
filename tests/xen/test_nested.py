"""virtcore.xen.nested / shadow / paging_compare: the 2-D walk, VPID tags, shadow sync."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtcore.hw.events import Access, PageFault
from virtcore.hw.paging import PagingConfig
from virtcore.xen.memory import MachineMemory
from virtcore.xen.nested import (
    VMX_NR_VPIDS,
    HVMGuest,
    NestedPaging,
    TaggedTLB,
    VPIDAllocator,
    populate,
    two_d_walk_references,
)
from virtcore.xen.paging_compare import compare_paging, compare_tlb_tagging, make_workload
from virtcore.xen.shadow import ShadowPaging


def cfg(levels: int) -> PagingConfig:
    return PagingConfig(5, levels, 3, f"teaching size: {levels} levels")


@pytest.mark.parametrize(("n", "m"), [(1, 2), (2, 2), (2, 4), (3, 2), (4, 3), (4, 4)])
def test_two_d_walk_measured_equals_formula(n, m):
    """§10 item 34: a cold TLB miss reads (n+1)(m+1)-1 entries; 24 for 4 x 4 [BHAR08]."""
    machine = MachineMemory(1024, 32)
    guest = HVMGuest(machine, populate(machine, 1, 48), cfg(n))
    hap = NestedPaging(machine, cfg(m), TaggedTLB(8))
    hap.add_guest(guest)
    hap.map(1, 0, 0x20, guest.take_data_page())
    mmu = hap.mmus[1]
    assert not isinstance(mmu.translate(0x24, Access.READ, True), PageFault)
    assert mmu.memory_references == two_d_walk_references(n, m) == (n + 1) * (m + 1) - 1
    assert mmu.nested_references == two_d_walk_references(n, m) - n
    assert hap.translate(1, 0x24).references == two_d_walk_references(n, m)
    mmu.translate(0x28, Access.READ, True)  # a TLB hit: no more references
    assert mmu.memory_references == two_d_walk_references(n, m)


def test_24_references_for_four_by_four():
    assert two_d_walk_references(4, 4) == 24
    assert two_d_walk_references(4, 0) == 4  # native


def test_vpid_is_16_bit_with_zero_reserved():
    """§10 item 37: VPID is a 16-bit field; 0 is the host's [SDM; VMX-C]."""
    assert VMX_NR_VPIDS == 1 << 16
    a = VPIDAllocator()
    tags = [a.alloc() for _ in range(VMX_NR_VPIDS - 1)]
    assert tags[0] == 1 and tags[-1] == 0xFFFF and 0 not in tags
    assert a.alloc() == 0  # exhausted: no tag, flush on every entry
    a.free(0)
    assert a.alloc() == 0  # freeing the host's tag does nothing
    a.free(7)
    assert a.alloc() == 7


def test_tagged_tlb_shares_capacity_and_flushes_per_tag():
    tlb = TaggedTLB(3)
    a, b = tlb.view(1), tlb.view(2)
    for vpn in range(3):
        a.insert(vpn, 0x20 * vpn | 1)
    b.insert(9, 0x100 | 1)
    assert sorted(a.entries) == [1, 2] and list(b.entries) == [9] and len(tlb) == 3
    a.flush()
    assert not a.entries and list(b.entries) == [9] and len(tlb) == 1
    b.invalidate(9)
    assert len(tlb) == 0


def reference_translation(guest: HVMGuest, proc: int, va: int) -> int | None:
    """gva -> gpa by the guest's own tables, then gpa -> maddr by the P2M (no hardware)."""
    _, gfn, _ = guest.guest_walk(guest.roots[proc], va)
    if gfn is None:
        return None
    return (guest.mem.p2m[gfn] << guest.config.page_bits) | (va & guest.config.offset_mask)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["map", "unmap", "access", "cr3"]),
                          st.integers(0, 1), st.integers(1, 40), st.integers(0, 9),
                          st.booleans()), max_size=60))
def test_shadow_and_nested_agree_with_the_guest_tables(ops):
    """Whatever the guest does, both modes translate every address as its tables + P2M say."""
    machines = [MachineMemory(600, 32) for _ in range(2)]
    tlbs = [TaggedTLB(6) for _ in range(2)]
    pagers = [ShadowPaging(machines[0], tlbs[0]),
              NestedPaging(machines[1], PagingConfig.tiny4(), tlbs[1])]
    guests = []
    for mach, pager in zip(machines, pagers):
        g = HVMGuest(mach, populate(mach, 1, 96), PagingConfig.tiny4(), nprocs=2)
        data = [g.take_data_page() for _ in range(10)]
        pager.add_guest(g)
        guests.append((g, data))
    for op, proc, vpn, slot, write in ops:
        va = vpn << 5
        for pager, (g, data) in zip(pagers, guests):
            if op == "map":
                pager.map(1, proc, va, data[slot], writable=write)
            elif op == "unmap":
                pager.unmap(1, proc, va)
            elif op == "cr3":
                pager.load_cr3(1, proc)
            else:
                want = reference_translation(g, g.current, va + 4)
                leaf = g.leaf_gpa(g.current, va)
                writable = leaf is not None and bool(g.read_gpa(leaf) & 2)
                got = pager.access(1, va + 4, write and writable)
                if want is None:
                    assert isinstance(got, PageFault)
                else:
                    assert got == want
    assert pagers[1].exits == 0


def test_shadow_counts_exits_for_cr3_invlpg_and_pt_writes():
    machine = MachineMemory(256, 32)
    g = HVMGuest(machine, populate(machine, 1, 40), PagingConfig.tiny(), nprocs=2)
    sh = ShadowPaging(machine, TaggedTLB(8))
    sh.add_guest(g)
    d = g.take_data_page()
    sh.map(1, 0, 0x40, d)
    exits = sh.exits
    sh.load_cr3(1, 1)
    sh.invlpg(1, 0x40)
    assert sh.exits == exits + 2
    sh.load_cr3(1, 0)
    assert sh.access(1, 0x40, write=True) == g.gpa_to_maddr(d << 5)
    # the shadow leaf became writable only after the hypervisor set D in the guest entry
    assert g.read_gpa(g.leaf_gpa(0, 0x40)) & 0x40
    assert sh.guest_faults == 0
    assert isinstance(sh.access(1, 0x80), PageFault) and sh.guest_faults == 1


def test_comparison_is_same_workload_and_priced():
    w = make_workload(seed=5, nevents=600)
    c = compare_paging(w)
    assert c.shadow.accesses == c.nested.accesses == w.count("access")
    assert c.shadow.pte_writes == c.nested.pte_writes  # same guest PTE stores
    assert c.nested.exits == 0 and c.shadow.exits > 0
    assert c.nested.hw_refs_per_miss == 24.0  # 4-level guest on a 4-level EPT
    assert c.shadow.hw_refs_per_miss <= 4.0  # a shadow miss may stop early (a fault)
    assert dict(c.shadow.breakdown)["VM exits + entries"] > 0
    assert sum(v for _, v in c.nested.breakdown) == c.nested.time_ns
    assert "shadow" in str(c) and len(c.rows()) == 8


def test_tagging_saves_flushes_and_misses():
    tagged, flushed = compare_tlb_tagging(make_workload(seed=1, nevents=800, p_switch=0.1))
    assert tagged.switch_flushes == 0 and flushed.switch_flushes == flushed.switches > 0
    assert tagged.tlb_misses < flushed.tlb_misses
    assert tagged.time_ns < flushed.time_ns


def test_workload_is_deterministic():
    assert make_workload(seed=4).events == make_workload(seed=4).events
    assert make_workload(seed=4).events != make_workload(seed=5).events
