"""Memory isolation of the PV MMU as properties (issue 9 §2), on a few hundred random sequences.

The same properties run on >= 10,000 sequences with ``python -m benchmarks.soak_xen_mmu``.
"""

from __future__ import annotations

import importlib

import pytest

soak = importlib.import_module("benchmarks.soak_xen_mmu")


def test_isolation_properties_hold_on_random_sequences():
    """No foreign frame without a grant, no writable page table, P2M/M2P inverse, rejected
    calls change nothing — after every operation of 200 random sequences."""
    soak.make_property(200)()


def test_properties_catch_a_validator_that_forgets_ownership(monkeypatch):
    """The properties can fail: a get_page_from_l1e that skips the owner check is caught."""
    original = soak.XenMM.get_page_from_l1e

    def careless(self, l1e, l1e_owner, pg_owner):
        m = self.machine
        mfn = l1e >> 12
        if mfn < m.nframes and m.owner[mfn] not in (-1, pg_owner) and not l1e & 0x2:
            m.count[mfn] += 1
            return 0
        return original(self, l1e, l1e_owner, pg_owner)

    monkeypatch.setattr(soak.XenMM, "get_page_from_l1e", careless)
    with pytest.raises(AssertionError, match="without a grant"):
        soak.make_property(300, shrink=False)()


def test_one_hand_written_sequence():
    """A grant, a grant map, a PTE through it (read-only only), a refused revocation, the
    unmap (which clears the PTE first), a revocation."""
    w = soak.World()
    g1 = w.xen.guests[1]
    granter = w.hv.domains[2]
    shared = int(w.xen.guests[2].mem.pfn_to_mfn(5))
    ref = granter.grant_table.grant_access(1, shared, readonly=True)
    w.refs.append((2, ref))
    slot = g1.map_request(0x80, 0)
    pte_ro = soak.MMUUpdate(slot.ptr, shared << 12 | 0x5)
    assert w.xen.mmu_update(1, [pte_ro]).rc == -16  # no grant mapping yet: -EBUSY
    soak._map_grant(w, 1, 2, ref, readonly=True, va=0xA0, pte_writable=False)
    assert w.hv.domains[1].maptrack.allows(shared, False)
    assert g1.access(0xA4) == (shared << 5) + 4
    assert not w.xen.mmu_update(1, [soak.MMUUpdate(slot.ptr, shared << 12 | 0x7)]).ok
    assert w.xen.mmu_update(1, [pte_ro]).ok
    soak.check(w)
    assert not granter.grant_table.end_foreign_access(ref)  # in use
    soak.apply(w, (6, 1, 0, 0, 0, 0))  # d1 undoes its grant mapping: the PTEs go first
    assert g1.access(0x80).present is False
    assert g1.access(0xA0).present is False
    assert granter.grant_table.end_foreign_access(ref)
    soak.check(w)
