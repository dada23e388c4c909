"""The Xen facts of the reference sheet (§10 items 19–32), asserted on the constants *and* on
behaviour of the model (item 33 — PV page tables never writable — is the MMU model's test)."""

from __future__ import annotations

import pytest

from virtcore.sched.credit import (
    CSCHED_CREDITS_PER_MSEC,
    CSCHED_DEFAULT_TSLICE_MS,
    CSCHED_DEFAULT_WEIGHT,
    CSCHED_PRI_IDLE,
    CSCHED_PRI_TS_BOOST,
    CSCHED_PRI_TS_OVER,
    CSCHED_PRI_TS_UNDER,
    CSCHED_TICKS_PER_TSLICE,
)
from virtcore.xen import Xen
from virtcore.xen import constants as k
from virtcore.xen.control import XenDomctl
from virtcore.xen.evtchn import EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnSend
from virtcore.xen.grant import GnttabMapGrantRef, GnttabUnmapGrantRef
from virtcore.xen.ring import BLKIF_RING, MemoryAccessor, read_header, shared_ring_init
from virtcore.xen.sched import schedule


@pytest.fixture
def xen() -> Xen:
    return Xen(frames=512, pcpus=1)


def test_19_default_weight_256_and_range(xen: Xen) -> None:
    assert CSCHED_DEFAULT_WEIGHT == 256
    d = xen.create_guest("a")
    assert d.weight == 256
    assert xen.xl.sched_credit("a")[0][2] == 256
    for bad in (-1, 65536):
        op = XenDomctl(k.XEN_DOMCTL_scheduler_op, d.domid,
                       {"cmd": k.XEN_DOMCTL_SCHEDOP_putinfo, "weight": bad})
        assert xen.hypercall(0, k.HYPERVISOR_domctl, op) == -k.EINVAL
    assert xen.xl.sched_credit("a", weight=65535)[0][2] == 65535


def test_20_21_timeslice_tick_credits() -> None:
    assert CSCHED_DEFAULT_TSLICE_MS == 30 and CSCHED_TICKS_PER_TSLICE == 3
    assert CSCHED_CREDITS_PER_MSEC == 10
    assert CSCHED_CREDITS_PER_MSEC * CSCHED_DEFAULT_TSLICE_MS // CSCHED_TICKS_PER_TSLICE == 100


def test_22_priorities() -> None:
    assert (CSCHED_PRI_TS_BOOST, CSCHED_PRI_TS_UNDER, CSCHED_PRI_TS_OVER, CSCHED_PRI_IDLE) == (
        0, -1, -2, -64)


def test_23_cap_100_is_one_pcpu(xen: Xen) -> None:
    xen.create_guest("capped", vcpus=2, cap=100)
    two = Xen(frames=512, pcpus=2)
    two.create_guest("capped", vcpus=2, cap=100)
    two.create_guest("free")
    r = schedule(two, duration_us=1_200_000, include_dom0=False)
    # 3 CPU-bound vCPUs on 2 pCPUs: the capped domain's two vCPUs get one pCPU's worth
    assert r.domain_share["capped"] == pytest.approx(1.0, abs=0.05)
    assert xen.domain("capped").cap == 100


def test_24_weights_512_256_give_2_to_1(xen: Xen) -> None:
    xen.create_guest("w512", weight=512)
    xen.create_guest("w256")
    r = schedule(xen, duration_us=900_000, include_dom0=False)
    assert r.domain_share["w512"] / r.domain_share["w256"] == pytest.approx(2.0, rel=0.05)


def test_25_state_letters_in_order_r_b_p_s_c_d(xen: Xen) -> None:
    d = xen.create_guest("g", on_poweroff="preserve")
    assert d.state_letters() == "r-----"
    xen.xl.pause("g")
    assert d.state_letters() == "--p---"
    xen.xl.unpause("g")
    xen.hypercall(d, k.HYPERVISOR_sched_op, k.SCHEDOP_block)
    assert d.state_letters() == "-b----"
    d.vcpus[0].blocked = False
    assert xen.xl.shutdown("g", "suspend")
    assert d.state_letters() == "---ss-"       # xl_info.c: "-rscwS"[SHUTDOWN_suspend]
    crash = xen.create_guest("c", on_poweroff="preserve")
    xen.hypercall(crash, k.HYPERVISOR_sched_op, k.SCHEDOP_shutdown, {"reason": k.SHUTDOWN_crash})
    assert crash.state_letters() == "---sc-"
    header = xen.xl.list_text().splitlines()[0]
    assert header.split() == ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)"]


def test_26_evtchnop_numbers_and_behaviour(xen: Xen) -> None:
    assert (k.EVTCHNOP_bind_interdomain, k.EVTCHNOP_close, k.EVTCHNOP_send,
            k.EVTCHNOP_alloc_unbound) == (0, 3, 4, 6)
    a, b = xen.create_guest("a"), xen.create_guest("b")
    al = EvtchnAllocUnbound(remote_dom=b.domid)
    assert xen.hypercall(a, 32, 6, al) == 0
    bi = EvtchnBindInterdomain(remote_dom=a.domid, remote_port=al.port)
    assert xen.hypercall(b, 32, 0, bi) == 0
    before = a.stats.events_received
    assert xen.hypercall(b, 32, 4, EvtchnSend(bi.local_port)) == 0
    assert a.stats.events_received == before + 1


def test_27_4096_ports_on_64_bit(xen: Xen) -> None:
    assert k.EVTCHN_2L_NR_CHANNELS == 4096
    d = xen.create_guest("many")
    assert len(d.shared_info.evtchn_pending) * 64 == 4096
    ports = []
    while True:
        a = EvtchnAllocUnbound(remote_dom=0)
        rc = xen.hypercall(d, 32, 6, a)
        if rc:
            break
        ports.append(a.port)
    assert rc == -k.ENOSPC
    assert ports[0] == 1 and ports[-1] == 4095 and len(ports) == 4095   # port 0 is reserved


def test_28_grant_flags_and_entry_size(xen: Xen) -> None:
    assert (k.GTF_permit_access, k.GTF_readonly, k.GRANT_ENTRY_V1_SIZE) == (1, 4, 8)
    a = xen.create_guest("a")
    assert a.grant_table is not None
    assert len(a.grant_table.entries) == 512            # one 4 KiB frame of 8-byte entries
    ref = a.grant_table.grant_access(0, xen.pfn_to_mfn(a.domid, 0), readonly=True)
    assert a.grant_table.entries[ref].flags == k.GTF_permit_access | k.GTF_readonly


def test_29_map_unmap_numbers_and_okay(xen: Xen) -> None:
    assert (k.GNTTABOP_map_grant_ref, k.GNTTABOP_unmap_grant_ref, k.GNTST_okay) == (0, 1, 0)
    a = xen.create_guest("a")
    assert a.grant_table is not None
    ref = a.grant_table.grant_access(0, xen.pfn_to_mfn(a.domid, 0))
    m = GnttabMapGrantRef(host_addr=0x1000, ref=ref, dom=a.domid)
    assert xen.hypercall(0, 20, 0, m, 1) == 0 and m.status == k.GNTST_okay
    u = GnttabUnmapGrantRef(host_addr=0x1000, handle=m.handle)
    assert xen.hypercall(0, 20, 1, u, 1) == 0 and u.status == k.GNTST_okay


def test_30_shared_ring_init_and_sizes(xen: Xen) -> None:
    acc = MemoryAccessor(bytearray(4096))
    shared_ring_init(acc)
    assert read_header(acc) == (0, 1, 0, 1)
    assert BLKIF_RING.size == 32 and BLKIF_RING.size & (BLKIF_RING.size - 1) == 0
    d = xen.create_guest("g", disk=True)
    blk = xen.xl.frontends[(d.domid, "vbd")]
    assert blk.ring.nr_ents == 32
    # the frontend initialised the real shared page the backend mapped: indices 0, events 1
    assert read_header(blk.ring.acc)[1::2] == (1, 1)


def test_31_hypercall_numbers_and_dispatch(xen: Xen) -> None:
    assert (k.HYPERVISOR_mmu_update, k.HYPERVISOR_update_va_mapping, k.HYPERVISOR_grant_table_op,
            k.HYPERVISOR_sched_op, k.HYPERVISOR_event_channel_op) == (1, 14, 20, 29, 32)
    for nr in (20, 29, 32, 33, 35, 36):
        assert nr in xen.hypercalls
    assert xen.hypercall(0, 127) == -k.ENOSYS


def test_32_domid_self(xen: Xen) -> None:
    assert k.DOMID_SELF == 0x7FF0 == k.DOMID_FIRST_RESERVED
    d = xen.create_guest("me")
    a = EvtchnAllocUnbound(dom=k.DOMID_SELF, remote_dom=k.DOMID_SELF)
    assert xen.hypercall(d, 32, 6, a) == 0
    assert d.evtchn[a.port].remote_dom == d.domid          # DOMID_SELF means the caller
    assert all(domid < k.DOMID_FIRST_RESERVED for domid in xen.domains)
