"""Event channels: the EVTCHNOP_* rules of event_channel.c and the 2-level bit semantics."""

from __future__ import annotations

import pytest

from virtcore.xen import Xen
from virtcore.xen import constants as k
from virtcore.xen.domain import Domain
from virtcore.xen.evtchn import (
    EvtchnAllocUnbound,
    EvtchnBindInterdomain,
    EvtchnBindIpi,
    EvtchnBindPirq,
    EvtchnBindVcpu,
    EvtchnBindVirq,
    EvtchnClose,
    EvtchnReset,
    EvtchnSend,
    EvtchnStatus,
    EvtchnUnmask,
    set_pending,
)

EV = k.HYPERVISOR_event_channel_op


@pytest.fixture
def xen() -> Xen:
    return Xen(frames=512)


def connect(xen: Xen, a: Domain, b: Domain) -> tuple[int, int]:
    al = EvtchnAllocUnbound(remote_dom=b.domid)
    assert xen.hypercall(a, EV, k.EVTCHNOP_alloc_unbound, al) == 0
    bi = EvtchnBindInterdomain(remote_dom=a.domid, remote_port=al.port)
    assert xen.hypercall(b, EV, k.EVTCHNOP_bind_interdomain, bi) == 0
    return al.port, bi.local_port


def test_bind_interdomain_sets_local_port_pending(xen: Xen) -> None:
    a, b = xen.create_guest("a"), xen.create_guest("b")
    b.vcpus[0].evtchn_upcall_mask = 1            # hold the upcall so the bit stays visible
    _pa, pb = connect(xen, a, b)
    assert b.shared_info.test(b.shared_info.evtchn_pending, pb)
    assert b.vcpus[0].evtchn_upcall_pending == 1 and b.vcpus[0].evtchn_pending_sel == 1


def test_bind_only_to_an_unbound_port_that_accepts_you(xen: Xen) -> None:
    a, b, c = xen.create_guest("a"), xen.create_guest("b"), xen.create_guest("c")
    al = EvtchnAllocUnbound(remote_dom=b.domid)
    assert xen.hypercall(a, EV, k.EVTCHNOP_alloc_unbound, al) == 0
    snap = xen.snapshot()
    assert xen.hypercall(c, EV, k.EVTCHNOP_bind_interdomain,
                         EvtchnBindInterdomain(a.domid, al.port)) == -k.EINVAL
    assert xen.hypercall(b, EV, k.EVTCHNOP_bind_interdomain,
                         EvtchnBindInterdomain(a.domid, 999)) == -k.EINVAL
    assert xen.hypercall(b, EV, k.EVTCHNOP_bind_interdomain,
                         EvtchnBindInterdomain(4321, al.port)) == -k.ESRCH
    assert xen.snapshot() == snap


def test_alloc_unbound_for_another_domain_needs_privilege(xen: Xen) -> None:
    a, b = xen.create_guest("a"), xen.create_guest("b")
    assert xen.hypercall(a, EV, 6, EvtchnAllocUnbound(dom=b.domid, remote_dom=0)) == -k.EPERM
    op = EvtchnAllocUnbound(dom=b.domid, remote_dom=a.domid)
    assert xen.hypercall(0, EV, 6, op) == 0 and b.evtchn[op.port].state == k.EVTCHNSTAT_unbound


def test_send_delivers_upcall_once_per_unmasked_edge(xen: Xen) -> None:
    a, b = xen.create_guest("a"), xen.create_guest("b")
    pa, pb = connect(xen, a, b)
    seen: list[int] = []
    b.on_event(pb, seen.append)
    before = b.stats.upcalls
    assert xen.hypercall(a, EV, 4, EvtchnSend(pa)) == 0
    assert seen == [pb] and b.stats.upcalls == before + 1
    assert not b.shared_info.test(b.shared_info.evtchn_pending, pb)   # the guest cleared it


def test_masked_edge_is_lost_until_unmask_redelivers(xen: Xen) -> None:
    a, b = xen.create_guest("a"), xen.create_guest("b")
    pa, pb = connect(xen, a, b)
    seen: list[int] = []
    b.on_event(pb, seen.append)
    si = b.shared_info
    si.test_and_set(si.evtchn_mask, pb)               # the guest masks its port
    upcalls = b.stats.upcalls
    xen.hypercall(a, EV, 4, EvtchnSend(pa))
    xen.hypercall(a, EV, 4, EvtchnSend(pa))            # second edge: already pending, lost
    assert si.test(si.evtchn_pending, pb) and seen == [] and b.stats.upcalls == upcalls
    assert b.vcpus[0].evtchn_upcall_pending == 0
    assert xen.hypercall(b, EV, k.EVTCHNOP_unmask, EvtchnUnmask(pb)) == 0
    assert seen == [pb] and b.stats.upcalls == upcalls + 1   # one delivery for both sends


def test_upcall_mask_defers_delivery(xen: Xen) -> None:
    a, b = xen.create_guest("a"), xen.create_guest("b")
    pa, pb = connect(xen, a, b)
    seen: list[int] = []
    b.on_event(pb, seen.append)
    xen.set_upcall_mask(b.domid, 0, True)
    xen.hypercall(a, EV, 4, EvtchnSend(pa))
    assert seen == [] and b.vcpus[0].evtchn_upcall_pending == 1
    xen.set_upcall_mask(b.domid, 0, False)
    assert seen == [pb]


def test_close_returns_peer_to_unbound_and_send_is_dropped(xen: Xen) -> None:
    a, b = xen.create_guest("a"), xen.create_guest("b")
    pa, pb = connect(xen, a, b)
    assert xen.hypercall(b, EV, k.EVTCHNOP_close, EvtchnClose(pb)) == 0
    st = EvtchnStatus(port=pa)
    assert xen.hypercall(a, EV, k.EVTCHNOP_status, st) == 0
    assert st.status == k.EVTCHNSTAT_unbound and st.remote_dom == b.domid
    received = b.stats.events_received
    assert xen.hypercall(a, EV, 4, EvtchnSend(pa)) == 0       # silently dropped
    assert b.stats.events_received == received
    assert xen.hypercall(b, EV, 4, EvtchnSend(pb)) == -k.EINVAL  # closed port
    assert xen.hypercall(b, EV, 3, EvtchnClose(pb)) == -k.EINVAL
    # the unbound port accepts the same peer again
    bi = EvtchnBindInterdomain(a.domid, pa)
    assert xen.hypercall(b, EV, 0, bi) == 0


def test_virq_ipi_pirq_binding_rules(xen: Xen) -> None:
    d = xen.create_guest("d", vcpus=2)
    assert xen.hypercall(d, EV, 1, EvtchnBindVirq(k.NR_VIRQS, 0)) == -k.EINVAL
    assert xen.hypercall(d, EV, 1, EvtchnBindVirq(k.VIRQ_TIMER, 5)) == -k.ENOENT
    assert xen.hypercall(d, EV, 1, EvtchnBindVirq(k.VIRQ_CONSOLE, 1)) == -k.EINVAL  # global
    v = EvtchnBindVirq(k.VIRQ_TIMER, 1)
    assert xen.hypercall(d, EV, 1, v) == 0
    assert xen.hypercall(d, EV, 1, EvtchnBindVirq(k.VIRQ_TIMER, 1)) == -k.EEXIST
    set_pending(xen, d, v.port)                         # Xen raises the timer virq
    assert d.vcpus[1].upcalls == 1 and d.vcpus[0].upcalls == 0
    ipi = EvtchnBindIpi(vcpu=1)
    assert xen.hypercall(d, EV, k.EVTCHNOP_bind_ipi, ipi) == 0
    assert xen.hypercall(d, EV, 4, EvtchnSend(ipi.port)) == 0
    assert d.vcpus[1].upcalls == 2
    # pirq: only the domain holding the IRQ (Dom0 has the disk's IRQ 14)
    assert xen.hypercall(d, EV, k.EVTCHNOP_bind_pirq, EvtchnBindPirq(14)) == -k.EPERM
    p = EvtchnBindPirq(14)
    assert xen.hypercall(0, EV, k.EVTCHNOP_bind_pirq, p) == 0
    st = EvtchnStatus(dom=0, port=p.port)
    assert xen.hypercall(d, EV, 5, st) == -k.EPERM        # another domain's port: privileged only
    assert xen.hypercall(0, EV, 5, st) == 0 and st.status == k.EVTCHNSTAT_pirq and st.pirq == 14


def test_bad_arguments_return_errors_and_change_nothing(xen: Xen) -> None:
    d = xen.create_guest("d")
    snap = xen.snapshot()
    for args in [(99, EvtchnSend(1)), (4, "port"), (4,), (k.EVTCHNOP_send, EvtchnClose(1)),
                 (4, EvtchnSend(-1)), (4, EvtchnSend(2**40)), (6, EvtchnAllocUnbound("x", 0)),
                 (0, EvtchnBindInterdomain(True, 1)), (9, EvtchnUnmask(4096))]:
        rc = xen.hypercall(d, EV, *args)
        assert rc in (-k.ENOSYS, -k.EFAULT, -k.EINVAL, -k.ESRCH), args
    assert xen.snapshot() == snap


def test_reset_closes_everything_and_bind_vcpu_moves_delivery(xen: Xen) -> None:
    a, b = xen.create_guest("a"), xen.create_guest("b", vcpus=2)
    pa, pb = connect(xen, a, b)
    assert xen.hypercall(b, EV, k.EVTCHNOP_bind_vcpu, EvtchnBindVcpu(pb, 1)) == 0
    before = b.vcpus[1].upcalls
    xen.hypercall(a, EV, 4, EvtchnSend(pa))
    assert b.vcpus[1].upcalls == before + 1
    assert xen.hypercall(a, EV, k.EVTCHNOP_reset, EvtchnReset(dom=b.domid)) == -k.EPERM
    assert xen.hypercall(b, EV, k.EVTCHNOP_reset, EvtchnReset()) == 0
    assert b.evtchn == {} and a.evtchn[pa].state == k.EVTCHNSTAT_unbound
    assert xen.hypercall(0, EV, k.EVTCHNOP_reset, EvtchnReset(dom=a.domid)) == 0
    assert a.evtchn == {}
