"""Grant tables: map/unmap/copy/setup/query with the checks of grant_table.c."""

from __future__ import annotations

import pytest

from virtcore.xen import Xen
from virtcore.xen import constants as k
from virtcore.xen.grant import (
    GnttabCopy,
    GnttabCopyPtr,
    GnttabMapGrantRef,
    GnttabQuerySize,
    GnttabSetupTable,
    GnttabUnmapGrantRef,
)

GT = k.HYPERVISOR_grant_table_op


@pytest.fixture
def xen() -> Xen:
    return Xen(frames=512)


def grant(xen: Xen, granter: str, grantee: int, pfn: int = 0, readonly: bool = False) -> int:
    d = xen.domain(granter)
    assert d.grant_table is not None
    return d.grant_table.grant_access(grantee, d.frame_of(pfn), readonly=readonly)


def mapop(xen: Xen, mapper: int, granter: int, ref: int, flags: int = k.GNTMAP_host_map
          ) -> GnttabMapGrantRef:
    op = GnttabMapGrantRef(host_addr=0x20000, flags=flags, ref=ref, dom=granter)
    assert xen.hypercall(mapper, GT, k.GNTTABOP_map_grant_ref, op, 1) == 0
    return op


def test_first_eight_refs_reserved(xen: Xen) -> None:
    xen.create_guest("a")
    assert grant(xen, "a", 0) == k.GNTTAB_NR_RESERVED_ENTRIES == 8


def test_map_gives_access_only_while_mapped(xen: Xen) -> None:
    a, b = xen.create_guest("a"), xen.create_guest("b")
    mfn = xen.pfn_to_mfn(a.domid, 0)
    assert xen.guest_read(b.domid, mfn, 0, 4) == -k.EFAULT
    ref = grant(xen, "a", b.domid)
    op = mapop(xen, b.domid, a.domid, ref)
    assert op.status == k.GNTST_okay
    assert a.grant_table.entries[ref].flags & (k.GTF_reading | k.GTF_writing) == 24
    assert xen.guest_write(b.domid, mfn, 0, b"hi") == 0
    assert xen.guest_read(a.domid, mfn, 0, 2) == b"hi"
    assert not a.grant_table.end_foreign_access(ref)          # in use: CMPXCHG fails
    u = GnttabUnmapGrantRef(host_addr=0x20000, handle=op.handle)
    assert xen.hypercall(b, GT, k.GNTTABOP_unmap_grant_ref, u, 1) == 0 and u.status == 0
    assert a.grant_table.entries[ref].flags == k.GTF_permit_access
    assert xen.guest_read(b.domid, mfn, 0, 2) == -k.EFAULT
    assert a.grant_table.end_foreign_access(ref)
    again = mapop(xen, b.domid, a.domid, ref)
    assert again.status == k.GNTST_general_error               # revoked


def test_readonly_grant_stays_readonly(xen: Xen) -> None:
    a, b = xen.create_guest("a"), xen.create_guest("b")
    ref = grant(xen, "a", b.domid, readonly=True)
    snap = xen.snapshot()
    assert mapop(xen, b.domid, a.domid, ref).status == k.GNTST_general_error
    assert xen.snapshot() == snap                               # failed map changed nothing
    ro = mapop(xen, b.domid, a.domid, ref, k.GNTMAP_host_map | k.GNTMAP_readonly)
    assert ro.status == k.GNTST_okay
    mfn = xen.pfn_to_mfn(a.domid, 0)
    assert xen.guest_read(b.domid, mfn, 0, 1) == b"\0"
    assert xen.guest_write(b.domid, mfn, 0, b"x") == -k.EFAULT
    assert a.grant_table.entries[ref].flags & k.GTF_writing == 0


def test_map_errors(xen: Xen) -> None:
    a, b, c = xen.create_guest("a"), xen.create_guest("b"), xen.create_guest("c")
    ref = grant(xen, "a", b.domid)
    assert mapop(xen, b.domid, a.domid, ref, flags=0).status == k.GNTST_bad_gntref
    assert mapop(xen, b.domid, 999, ref).status == k.GNTST_bad_domain
    assert mapop(xen, b.domid, a.domid, 10**6).status == k.GNTST_bad_gntref
    assert mapop(xen, c.domid, a.domid, ref).status == k.GNTST_general_error  # not granted to c
    op = GnttabMapGrantRef(host_addr=0x123, flags=k.GNTMAP_host_map, ref=ref, dom=a.domid)
    xen.hypercall(b, GT, 0, op, 1)
    assert op.status == k.GNTST_bad_virt_addr
    bad = GnttabUnmapGrantRef(handle=77)
    xen.hypercall(b, GT, 1, bad, 1)
    assert bad.status == k.GNTST_bad_handle
    assert xen.hypercall(b, GT, 99, op, 1) == -k.ENOSYS
    assert xen.hypercall(b, GT, 0, "op", 1) == -k.EFAULT
    assert xen.hypercall(b, GT, 0, [op], 5) == -k.EINVAL


def test_grant_of_a_frame_the_granter_does_not_own(xen: Xen) -> None:
    a, b = xen.create_guest("a"), xen.create_guest("b")
    foreign = xen.pfn_to_mfn(b.domid, 0)                        # a PV guest names mfns
    ref = a.grant_table.grant_access(b.domid, foreign)
    assert mapop(xen, b.domid, a.domid, ref).status == k.GNTST_general_error


def test_hvm_grant_frame_is_a_gfn(xen: Xen) -> None:
    h, b = xen.create_guest("h", type="hvm"), xen.create_guest("b")
    ref = h.grant_table.grant_access(b.domid, 3)                 # pfn 3
    op = mapop(xen, b.domid, h.domid, ref)
    assert op.status == 0
    assert b.maptrack.handles[op.handle].mfn == xen.pfn_to_mfn(h.domid, 3)


def test_copy(xen: Xen) -> None:
    a, b = xen.create_guest("a"), xen.create_guest("b")
    src = xen.pfn_to_mfn(a.domid, 1)
    xen.guest_write(a.domid, src, 100, b"payload")
    ref = grant(xen, "a", b.domid, pfn=1, readonly=True)
    dst = b.frame_of(2)
    op = GnttabCopy(GnttabCopyPtr(ref=ref, domid=a.domid, offset=100),
                    GnttabCopyPtr(gmfn=dst, offset=0), 7, k.GNTCOPY_source_gref)
    assert xen.hypercall(b, GT, k.GNTTABOP_copy, op, 1) == 0 and op.status == 0
    assert xen.guest_read(b.domid, xen.pfn_to_mfn(b.domid, 2), 0, 7) == b"payload"
    # the other way would write into a read-only grant
    back = GnttabCopy(GnttabCopyPtr(gmfn=dst), GnttabCopyPtr(ref=ref, domid=a.domid), 7,
                      k.GNTCOPY_dest_gref)
    xen.hypercall(b, GT, k.GNTTABOP_copy, back, 1)
    assert back.status == k.GNTST_general_error
    long = GnttabCopy(GnttabCopyPtr(ref=ref, domid=a.domid, offset=4000),
                      GnttabCopyPtr(gmfn=dst), 200, k.GNTCOPY_source_gref)
    xen.hypercall(b, GT, k.GNTTABOP_copy, long, 1)
    assert long.status == k.GNTST_bad_copy_arg
    theirs = GnttabCopy(GnttabCopyPtr(gmfn=src, domid=a.domid), GnttabCopyPtr(gmfn=dst), 4, 0)
    xen.hypercall(b, GT, k.GNTTABOP_copy, theirs, 1)
    assert theirs.status == k.GNTST_permission_denied


def test_setup_and_query_size_limit_64_frames(xen: Xen) -> None:
    a, b = xen.create_guest("a"), xen.create_guest("b")
    q = GnttabQuerySize()
    assert xen.hypercall(a, GT, k.GNTTABOP_query_size, q, 1) == 0
    assert (q.nr_frames, q.max_nr_frames) == (1, k.GNTTAB_MAX_FRAMES_DEFAULT) == (1, 64)
    s = GnttabSetupTable(nr_frames=65)
    xen.hypercall(a, GT, k.GNTTABOP_setup_table, s, 1)
    assert s.status == k.GNTST_general_error and a.grant_table.nr_frames == 1
    s = GnttabSetupTable(nr_frames=64)
    xen.hypercall(a, GT, k.GNTTABOP_setup_table, s, 1)
    assert s.status == 0 and len(a.grant_table.entries) == 64 * 512
    other = GnttabQuerySize(dom=a.domid)
    xen.hypercall(b, GT, k.GNTTABOP_query_size, other, 1)
    assert other.status == k.GNTST_permission_denied
    xen.hypercall(0, GT, k.GNTTABOP_query_size, other, 1)
    assert other.status == 0 and other.nr_frames == 64


def test_destroying_the_mapper_releases_its_mappings(xen: Xen) -> None:
    a, b = xen.create_guest("a"), xen.create_guest("b")
    ref = grant(xen, "a", b.domid)
    mapop(xen, b.domid, a.domid, ref)
    xen.xl.destroy("b")
    assert a.grant_table.entries[ref].flags == k.GTF_permit_access
    assert a.grant_table.end_foreign_access(ref)


def test_destroyed_granter_frame_stays_until_unmapped(xen: Xen) -> None:
    a, b = xen.create_guest("a"), xen.create_guest("b")
    ref = grant(xen, "a", b.domid)
    op = mapop(xen, b.domid, a.domid, ref)
    mfn = b.maptrack.handles[op.handle].mfn
    a_id = a.domid
    xen.xl.destroy("a")
    assert xen.memory.owner_of(mfn) == a_id          # still referenced by b's mapping
    assert xen.guest_read(b.domid, mfn, 0, 1) == b"\0"
    xen.hypercall(b, GT, 1, GnttabUnmapGrantRef(handle=op.handle), 1)
    assert xen.memory.owner_of(mfn) is None           # freed at the last reference
    xen.memory.check_invariants()
