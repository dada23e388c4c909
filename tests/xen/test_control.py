"""The control interface (domctl/sysctl, Dom0 only), the xl toolstack and the hardware interface."""

from __future__ import annotations

import pytest

from virtcore.xen import Xen, XenError
from virtcore.xen import constants as k
from virtcore.xen.control import XenDomctl, XenSysctl
from virtcore.xen.evtchn import EvtchnBindPirq
from virtcore.xen.hwiface import dma, pci_conf_read, pci_conf_write, port_io, raise_irq

DC = k.HYPERVISOR_domctl


@pytest.fixture
def xen() -> Xen:
    return Xen(frames=1024)


def test_boot_order_xen_first_then_dom0(xen: Xen) -> None:
    texts = [e.text for e in xen.boot_trace]
    assert texts[0].startswith("boot loader starts Xen")
    first_dom0 = next(i for i, t in enumerate(texts) if "Domain 0" in t)
    assert any("scheduler" in t for t in texts[:first_dom0])
    assert xen.dom0.is_privileged and xen.dom0.is_hardware and xen.dom0.domid == 0
    assert xen.dom0.devices == {"disk", "nic", "serial"}


def test_every_domctl_from_a_domu_is_eperm_and_changes_nothing(xen: Xen) -> None:
    u, v = xen.create_guest("u"), xen.create_guest("v")
    snap = xen.snapshot()
    for cmd, extra in [(k.XEN_DOMCTL_createdomain, {}), (k.XEN_DOMCTL_destroydomain, {}),
                       (k.XEN_DOMCTL_pausedomain, {}), (k.XEN_DOMCTL_unpausedomain, {}),
                       (k.XEN_DOMCTL_getdomaininfo, {}), (k.XEN_DOMCTL_max_mem,
                                                          {"max_memkb": 1 << 20}),
                       (k.XEN_DOMCTL_scheduler_op, {"cmd": 0, "weight": 9999}),
                       (k.XEN_DOMCTL_assign_device, {"dev": "disk"}),
                       (k.XEN_DOMCTL_ioport_permission, {"first_port": 0x1F0, "nr_ports": 8})]:
        for target in (v.domid, u.domid, 0, 4242):
            assert xen.hypercall(u, DC, XenDomctl(cmd, target, dict(extra))) == -k.EPERM
    assert xen.hypercall(u, k.HYPERVISOR_sysctl, XenSysctl(k.XEN_SYSCTL_physinfo)) == -k.EPERM
    assert xen.snapshot() == snap


def test_domctl_errors_from_dom0(xen: Xen) -> None:
    u = xen.create_guest("u")
    assert xen.hypercall(0, DC, XenDomctl(k.XEN_DOMCTL_pausedomain, 4242)) == -k.ESRCH
    assert xen.hypercall(0, DC, XenDomctl(k.XEN_DOMCTL_destroydomain, 0)) == -k.EINVAL
    assert xen.hypercall(0, DC, XenDomctl(k.XEN_DOMCTL_pausedomain, 0)) == -k.EINVAL
    assert xen.hypercall(0, DC, XenDomctl(k.XEN_DOMCTL_unpausedomain, u.domid)) == -k.EINVAL
    op = XenDomctl(k.XEN_DOMCTL_pausedomain, u.domid, interface_version=1)
    assert xen.hypercall(0, DC, op) == -k.EACCES
    assert xen.hypercall(0, DC, XenDomctl(k.XEN_DOMCTL_createdomain, u.domid)) == -k.EEXIST
    assert xen.hypercall(0, DC, "not a domctl") == -k.EFAULT
    info = XenDomctl(k.XEN_DOMCTL_getdomaininfo, u.domid)
    assert xen.hypercall(0, DC, info) == 0
    assert info.u["tot_pages"] == 16 and info.u["flags"] & k.XEN_DOMINF_running


def test_pause_is_counted(xen: Xen) -> None:
    u = xen.create_guest("u")
    for _ in range(2):
        assert xen.hypercall(0, DC, XenDomctl(k.XEN_DOMCTL_pausedomain, u.domid)) == 0
    assert xen.hypercall(0, DC, XenDomctl(k.XEN_DOMCTL_unpausedomain, u.domid)) == 0
    assert u.paused
    assert xen.hypercall(0, DC, XenDomctl(k.XEN_DOMCTL_unpausedomain, u.domid)) == 0
    assert not u.paused
    xen.xl.pause("u")
    with pytest.raises(XenError, match="paused"):
        xen.hypercall(u, k.HYPERVISOR_xen_version)


def test_xl_list_format(xen: Xen) -> None:
    xen.xl.create('name = "web"\nmemory = 1\nvcpus = 2\ntype = "hvm"')
    lines = xen.xl.list_text().splitlines()
    assert lines[0] == "Name                                        ID   Mem VCPUs\tState\tTime(s)"
    assert lines[2] == f"{'web':<40s} {1:5d} {1:5d} {2:5d}     r-----  {0.0:8.1f}"
    assert xen.domain("web").type == "hvm"
    assert xen.domain("web").hypercall_instruction == "VMCALL"


def test_xl_destroy_rules(xen: Xen) -> None:
    u = xen.create_guest("u")
    with pytest.raises(XenError, match="-f"):
        xen.xl.destroy(0)
    with pytest.raises(XenError, match="-EINVAL"):
        xen.xl.destroy(0, force=True)              # a domain cannot destroy itself
    free = xen.memory.allocator.free_count
    xen.xl.destroy("u")
    assert u.domid not in xen.domains and xen.memory.allocator.free_count == free + 16
    xen.memory.check_invariants()


def test_xl_shutdown_graceful_and_hvm_without_pv_drivers(xen: Xen) -> None:
    xen.create_guest("pv")
    assert xen.xl.shutdown("pv") and "pv" not in [d.name for d in xen.domains.values()]
    h = xen.create_guest("h", type="hvm", pv_drivers=False)
    assert not xen.xl.shutdown("h") and not h.is_shut_down


def test_save_restore_and_migrate_keep_memory(xen: Xen) -> None:
    g = xen.create_guest("g", memory_pages=8)
    mfn = xen.pfn_to_mfn(g.domid, 5)
    xen.guest_write(g.domid, mfn, 0, b"state")
    img = xen.xl.save("g")
    assert "g" not in [d.name for d in xen.domains.values()]
    back = xen.xl.restore(img)
    assert xen.guest_read(back.domid, xen.pfn_to_mfn(back.domid, 5), 0, 5) == b"state"
    other = Xen(frames=512, name="host1")
    rep = xen.xl.migrate("g", other)
    moved = other.domain("g")
    assert rep.new_domid == moved.domid and rep.pages_copied == 8
    assert other.guest_read(moved.domid, other.pfn_to_mfn(moved.domid, 5), 0, 5) == b"state"
    assert "g" not in [d.name for d in xen.domains.values()]
    assert rep.precopy.rounds[0].pages_sent == 8


def test_sched_credit_sets_weight_and_cap(xen: Xen) -> None:
    xen.create_guest("a", vcpus=2)
    assert xen.xl.sched_credit("a", weight=512, cap=150) == [("a", 1, 512, 150)]
    with pytest.raises(XenError):
        xen.xl.sched_credit("a", cap=300)       # more than 100 × vCPUs


def test_io_ports_pci_dma_irq_only_for_the_owner(xen: Xen) -> None:
    u = xen.create_guest("u")
    assert port_io(xen, u.domid, 0x1F7).fault.startswith("#GP")
    assert port_io(xen, 0, 0x1F7).ok
    assert pci_conf_read(xen, u.domid, "00:01.1", 0) == 0xFFFFFFFF
    assert pci_conf_write(xen, u.domid, "00:01.1", 4, 7) == -k.EPERM
    umfn = xen.pfn_to_mfn(u.domid, 0)
    assert dma(xen, "disk", umfn, 0, b"evil") == -k.EPERM          # IOMMU fault
    assert xen.guest_read(u.domid, umfn, 0, 4) == b"\0\0\0\0"
    assert dma(xen, "disk", xen.pfn_to_mfn(0, 0), 0, b"ok") == 0
    assert xen.hypercall(u, 32, k.EVTCHNOP_bind_pirq, EvtchnBindPirq(14)) == -k.EPERM
    assert not raise_irq(xen, 14)                                  # nobody bound it yet
    # Dom0 makes u a driver domain for the disk
    assert xen.hypercall(u, DC, XenDomctl(k.XEN_DOMCTL_assign_device, u.domid,
                                          {"dev": "disk"})) == -k.EPERM
    assert xen.hypercall(0, DC, XenDomctl(k.XEN_DOMCTL_assign_device, u.domid,
                                          {"dev": "disk"})) == 0
    assert port_io(xen, u.domid, 0x1F7).ok and not port_io(xen, 0, 0x1F7).ok
    assert pci_conf_read(xen, u.domid, "00:01.1", 0) == 0x70108086
    assert dma(xen, "disk", umfn, 0, b"mine") == 0
    p = EvtchnBindPirq(14)
    assert xen.hypercall(u, 32, k.EVTCHNOP_bind_pirq, p) == 0
    assert raise_irq(xen, 14) and u.stats.events_received >= 1
    xen.xl.destroy("u")                                            # the device goes back
    assert xen.platform["disk"].owner == 0 and 14 in xen.dom0.irqs


def test_driver_domain_serves_a_guest_disk(xen: Xen) -> None:
    xen.create_guest("drv", memory_pages=16, pci=["disk"])
    g = xen.create_guest("g", memory_pages=16, vcpus=4, disk=["backend=drv"])
    blk = xen.xl.frontends[(g.domid, "vbd")]
    assert blk.be == xen.domain("drv").domid
    assert blk.write(2, b"via driver domain").status == k.BLKIF_RSP_OKAY
    r = blk.read(2)
    assert r.data.startswith(b"via driver domain")
    assert {s.domid for s in r.steps if s.kind == "device"} == {xen.domain("drv").domid}


def test_xl_mem_set_balloons_through_memory_op(xen: Xen) -> None:
    g = xen.create_guest("g", memory_pages=16, disk=True)
    free = xen.memory.allocator.free_count
    assert xen.xl.mem_set("g", 10) == 10
    assert xen.memory.allocator.free_count == free + 6
    assert g.stats.by_hypercall["memory_op"] == 1
    blk = xen.xl.frontends[(g.domid, "vbd")]
    assert blk.write(0, b"still works").status == 0          # the ring page was kept
    assert xen.xl.mem_set("g", 16) == 16
    with pytest.raises(XenError, match="maxmem"):
        xen.xl.mem_set("g", 17)
    xen.memory.check_invariants()
