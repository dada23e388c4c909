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
    """A grant, a mapping through it, a refused revocation, an unmap, a revocation."""
    w = soak.World()
    g1, g2 = w.xen.guests[1], w.xen.guests[2]
    shared = int(g2.mem.pfn_to_mfn(5))
    assert w.grants.grant(2, 1, shared, readonly=True)
    slot = g1.map_request(0x80, 0)
    assert not w.xen.mmu_update(1, [soak.MMUUpdate(slot.ptr, shared << 12 | 0x7)]).ok  # RW
    assert w.xen.mmu_update(1, [soak.MMUUpdate(slot.ptr, shared << 12 | 0x5)]).ok
    soak.check(w)
    assert not w.grants.revoke(shared)  # in use
    assert w.xen.mmu_update(1, [g1.unmap_request(0x80)]).ok
    assert w.grants.revoke(shared)
    soak.check(w)
