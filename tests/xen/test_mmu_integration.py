"""The PV MMU wired into the hypervisor (virtcore.xen.Xen): hypercalls 1, 14, 26 and grants."""

from __future__ import annotations

from virtcore.hw.paging import PTE_P, PTE_U, PTE_W
from virtcore.xen import Xen
from virtcore.xen.grant import GNTMAP_host_map, GNTMAP_readonly, GnttabMapGrantRef
from virtcore.xen.memory import DOMID_SELF, EBUSY, EFAULT, ENOSYS, PFN
from virtcore.xen.mmu import (
    MMUEXT_TLB_FLUSH_LOCAL,
    UVMF_INVLPG,
    MMUExtOp,
    MMUUpdate,
    install_pv_mmu,
)

HC_MMU_UPDATE, HC_UPDATE_VA_MAPPING, HC_MMUEXT_OP, HC_GRANT_TABLE_OP = 1, 14, 26, 20


def setup():
    xen = Xen(frames=256)
    mm = install_pv_mmu(xen)
    a = xen.create_guest("a", memory_pages=16)
    b = xen.create_guest("b", memory_pages=16)
    g = mm.adopt_domain(b.domid)
    g.build({0x0040_0000: (1, True), 0x0040_1000: (2, False)})
    return xen, mm, a, b, g


def test_hypercalls_go_through_the_dispatcher():
    xen, _, _, b, g = setup()
    done = [None]
    req = g.map_request(0x0040_2000, 3)
    assert xen.hypercall(b, HC_MMU_UPDATE, [req], 1, done, DOMID_SELF) == 0
    assert done == [1]
    pt = g.map_request(0x0040_3000, g.table_pfns[0])  # its own L2, writable
    assert xen.hypercall(b, HC_MMU_UPDATE, [req, pt], 2, done, DOMID_SELF) == -EBUSY
    assert done == [1]
    assert xen.hypercall(b, HC_MMU_UPDATE, "not a list") == -EFAULT
    mfn = g.mem.pfn_to_mfn(PFN(4))
    assert xen.hypercall(b, HC_UPDATE_VA_MAPPING, 0x0040_0000, mfn << 12 | PTE_P | PTE_U,
                         UVMF_INVLPG) == 0
    assert g.access(0x0040_0004) == (mfn << 12) + 4
    assert xen.hypercall(b, HC_MMUEXT_OP, [MMUExtOp(MMUEXT_TLB_FLUSH_LOCAL)], 1, done,
                         DOMID_SELF) == 0
    xen.memory.check_invariants()


def test_hvm_domains_get_enosys():
    xen = Xen(frames=256)
    install_pv_mmu(xen)
    h = xen.create_guest("h", memory_pages=8, type="hvm")
    assert xen.hypercall(h, HC_MMU_UPDATE, [], 0) == -ENOSYS


def test_grant_mapped_frame_may_enter_page_tables_until_unmapped():
    xen, mm, a, b, g = setup()
    mfn = xen.pfn_to_mfn(a.domid, 5)
    slot = g.map_request(0x0040_5000, 0)
    ro = MMUUpdate(slot.ptr, mfn << 12 | PTE_P | PTE_U)
    assert xen.hypercall(b, HC_MMU_UPDATE, [ro], 1) == -EBUSY  # no grant yet
    ref = a.grant_table.grant_access(b.domid, mfn, readonly=True)
    op = GnttabMapGrantRef(host_addr=0x0040_5000, flags=GNTMAP_host_map | GNTMAP_readonly,
                           ref=ref, dom=a.domid)
    assert xen.hypercall(b, HC_GRANT_TABLE_OP, 0, op, 1) == 0 and op.status == 0
    rw = MMUUpdate(slot.ptr, mfn << 12 | PTE_P | PTE_U | PTE_W)
    assert xen.hypercall(b, HC_MMU_UPDATE, [rw], 1) == -EBUSY  # the grant is read-only
    assert xen.hypercall(b, HC_MMU_UPDATE, [ro], 1) == 0
    assert g.access(0x0040_5008) == (mfn << 12) + 8
    assert mm.foreign.pte_uses(b.domid, mfn) == 1
    assert mm.zap_foreign_mappings(b.domid, mfn) == 1
    assert mm.foreign.pte_uses(b.domid, mfn) == 0
    assert g.access(0x0040_5008).present is False
    xen.memory.check_invariants()
