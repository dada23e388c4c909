"""virtcore.xen.memory: the frame table, page types and counts, P2M/M2P, ballooning."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtcore.errors import VirtcoreError
from virtcore.xen.memory import (
    DOMID_SELF,
    DOMID_XEN,
    EINVAL,
    INVALID_M2P_ENTRY,
    INVALID_MFN,
    MFN,
    PFN,
    MachineMemory,
    PGT_l1_page_table,
    PGT_l2_page_table,
    PGT_none,
    PGT_writable_page,
    XenMemoryError,
)


def test_xen_numbers():
    """DOMID_SELF, DOMID_XEN and the PGT_* indices are Xen's [XEN-H; XEN-ASM-MM]."""
    assert DOMID_SELF == 0x7FF0
    assert DOMID_XEN == 0x7FF2
    assert (PGT_none, PGT_l1_page_table, PGT_l2_page_table, PGT_writable_page) == (0, 1, 2, 7)
    assert INVALID_M2P_ENTRY == INVALID_MFN == 2**64 - 1


def test_alloc_owner_and_free():
    m = MachineMemory(4, frame_size=32)
    mfn = m.alloc(3)
    assert m.owner_of(mfn) == 3 and m.count[mfn] == 1
    m.write_word(mfn, 0, 0x1234)
    assert m.free(mfn) == 0
    assert m.owner_of(mfn) is None and m.count[mfn] == 0
    assert m.free(mfn) == -EINVAL  # double free is a guest-style error, not an exception
    assert m.alloc(1) == mfn and m.read_word(mfn, 0) == 0  # scrubbed on allocation


def test_alloc_rejects_reserved_domids():
    m = MachineMemory(2)
    with pytest.raises(XenMemoryError):
        m.alloc(DOMID_SELF)
    assert issubclass(XenMemoryError, VirtcoreError)


def test_type_changes_only_at_type_count_zero():
    """'A page can only change its type when its type count is zero' [XEN-MM-C]."""
    m = MachineMemory(2)
    mfn = m.alloc(1)
    assert m.get_page_type(mfn, PGT_writable_page) == 0
    assert m.get_page_type(mfn, PGT_writable_page) == 0
    assert m.type_count[mfn] == 2
    assert m.get_page_type(mfn, PGT_l1_page_table) == -EINVAL
    m.put_page_type(mfn)
    assert m.get_page_type(mfn, PGT_l1_page_table) == -EINVAL
    m.put_page_type(mfn)
    assert m.get_page_type(mfn, PGT_l1_page_table) == 0
    assert m.page_info(mfn).type_name == "PGT_l1_page_table"
    assert m.get_page_type(mfn, PGT_writable_page) == -EINVAL


def test_get_page_checks_owner_and_rejected_call_changes_nothing():
    m = MachineMemory(3)
    mfn = m.alloc(1)
    before = m.snapshot()
    assert m.get_page(mfn, 2) == -EINVAL
    assert m.get_page(MFN(99), 1) == -EINVAL
    assert m.get_page_and_type(mfn, 2, PGT_writable_page) == -EINVAL
    assert m.get_page_type(MFN(2), PGT_writable_page) == -EINVAL  # free frame
    assert m.snapshot() == before


def test_validation_hooks_called_on_type_change():
    m = MachineMemory(2)
    calls: list[tuple[str, int, int]] = []

    def alloc_type(mfn: int, t: int) -> int:
        calls.append(("alloc", mfn, t))
        return -EINVAL if t == PGT_l2_page_table else 0

    m.alloc_page_type = alloc_type
    m.free_page_type = lambda mfn, t: calls.append(("free", mfn, t))
    mfn = m.alloc(1)
    assert m.get_page_type(mfn, PGT_l2_page_table) == -EINVAL
    assert m.type_count[mfn] == 0 and not m.validated[mfn]
    assert m.get_page_type(mfn, PGT_l1_page_table) == 0
    assert m.get_page_type(mfn, PGT_l1_page_table) == 0  # no second validation
    m.put_page_type(mfn)
    m.put_page_type(mfn)
    assert calls == [("alloc", 0, 2), ("alloc", 0, 1), ("free", 0, 1)]
    assert m.get_page_type(mfn, PGT_l1_page_table) == 0  # re-validated after free_page_type
    assert calls[-1] == ("alloc", 0, 1)


def test_frame_freed_on_last_reference():
    m = MachineMemory(2)
    d = m.new_domain_memory(1, 2)
    assert d.populate_physmap([0]) == 1
    mfn = d.pfn_to_mfn(PFN(0))
    assert m.get_page(mfn, 1) == 0  # e.g. a mapping
    assert d.decrease_reservation([0]) == 1
    assert m.owner_of(mfn) == 1  # still referenced: still d1's, but no longer in the P2M
    assert d.pfn_to_mfn(PFN(0)) == INVALID_MFN and m.m2p[mfn] == INVALID_M2P_ENTRY
    assert d.nr_pages == 0
    m.put_page(mfn)
    assert m.owner_of(mfn) is None
    m.check_invariants()


def test_populate_limits_and_enomem():
    m = MachineMemory(3)
    d1 = m.new_domain_memory(1, 2)
    d2 = m.new_domain_memory(2, 5)
    assert d1.populate_physmap([0, 1, 2]) == 2  # max_pages
    assert d1.populate_physmap([1]) == 0  # already populated
    assert d2.populate_physmap([0, 1]) == 1  # out of machine frames
    assert (d1.nr_pages, d2.nr_pages) == (2, 1)
    m.check_invariants()


def test_set_m2p_keeps_tables_inverse():
    m = MachineMemory(4)
    d = m.new_domain_memory(1, 4)
    d.populate_physmap([0, 1])
    assert d.set_m2p(MFN(0), PFN(1)) == 0  # pfn 1's old frame loses its m2p entry
    assert d.p2m_table() == {1: 0}
    assert m.m2p[1] == INVALID_M2P_ENTRY
    assert d.set_m2p(MFN(3), PFN(2)) == -EINVAL  # not d1's frame
    m.check_invariants()


def test_address_space_helpers():
    m = MachineMemory(4, frame_size=32)
    assert m.maddr(MFN(3), 4) == 0x64
    with pytest.raises(XenMemoryError):
        m.maddr(MFN(4), 0)
    with pytest.raises(XenMemoryError):
        m.read_bytes(MFN(0), 30, 4)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["pop", "dec", "m2p", "ref", "unref"]),
                          st.integers(1, 3), st.integers(0, 7), st.integers(0, 9)),
                max_size=40))
def test_p2m_and_m2p_stay_inverse(ops):
    """m2p[p2m[pfn]] == pfn for every populated pfn, whatever the balloon does."""
    m = MachineMemory(10)
    doms = {d: m.new_domain_memory(d, 6) for d in (1, 2, 3)}
    refs: list[int] = []
    for op, d, pfn, mfn in ops:
        dom = doms[d]
        if op == "pop":
            dom.populate_physmap([pfn])
        elif op == "dec":
            dom.decrease_reservation([pfn])
        elif op == "m2p":
            dom.set_m2p(MFN(mfn), PFN(pfn))
        elif op == "ref" and m.get_page(MFN(mfn), d) == 0:
            refs.append(mfn)
        elif op == "unref" and refs:
            m.put_page(MFN(refs.pop()))
        m.check_invariants()
        for p, f in dom.p2m.items():
            assert m.m2p[f] == p and m.owner_of(MFN(f)) == d
