"""The virtual processor (PV traps vs HVM exits), credit scheduling hookup, graph data and views."""

from __future__ import annotations

import pytest

from virtcore.xen import Xen
from virtcore.xen import constants as k
from virtcore.xen.graphs import event_graph, grant_graph, stack_graph
from virtcore.xen.hypercall import hypercall_page
from virtcore.xen.sched import schedule
from virtcore.xen.vcpu import run_kernel

PROGRAM = """
    cli
    movi r1, 'x'
    out  0x3f8, r1
    hlt
"""


def test_pv_privileged_instructions_trap_and_hvm_ones_exit() -> None:
    xen = Xen(frames=512)
    pv = xen.create_guest("pv")
    hvm = xen.create_guest("hvm", type="hvm")
    seq = xen.trace.seq
    r_pv = run_kernel(xen, pv.domid, PROGRAM)
    pv_steps = xen.trace.since(seq)
    seq = xen.trace.seq
    r_hvm = run_kernel(xen, hvm.domid, PROGRAM)
    hvm_steps = xen.trace.since(seq)
    assert r_pv.emulated == {"cli": 1}       # PV: cli faults into Xen (upcall mask)
    assert r_hvm.emulated == {}              # HVM: VT-x runs cli in guest mode, no exit
    assert r_pv.refused == r_hvm.refused == {"out": 1}           # neither owns COM1
    assert {s.kind for s in pv_steps} >= {"trap"} and "exit" not in {s.kind for s in pv_steps}
    assert {s.kind for s in hvm_steps} >= {"exit"} and "trap" not in {s.kind for s in hvm_steps}
    assert pv.vcpus[0].evtchn_upcall_mask == 1                   # cli = the virtual IF
    assert r_hvm.exits > 0 and r_pv.exits == 0
    c = xen.costs
    pv_cost = sum(s.cost for s in pv_steps if s.kind == "trap")
    hvm_cost = sum(s.cost for s in hvm_steps if s.kind == "exit")
    assert (pv_cost, hvm_cost) == (2 * (2 * c.trap), 1 * (2 * c.vm_exit))  # cli+out vs out


def test_dom0_owns_the_serial_port_and_console() -> None:
    xen = Xen(frames=256)
    r = run_kernel(xen, 0, "movi r1, 'A'\nout 0x3f8, r1\nmovi r0, 18\nmovi r1, 0\nmovi r2, 'B'\n"
                           "hcall\nhlt")
    assert r.refused == {} and xen.platform["serial"].hw.text == "A"
    assert r.hypercalls == [(18, 0)] and r.console == "B"
    u = xen.create_guest("u")
    r = run_kernel(xen, u.domid, "movi r0, 18\nmovi r1, 0\nmovi r2, 'B'\nhcall\nhlt")
    assert r.hypercalls == [(18, -k.EPERM)]


def test_hypercall_page_layout() -> None:
    page = hypercall_page("pv")
    assert len(page) == 128 and page[29][0] == 29 * 32
    assert "syscall" in page[32][2] and "vmcall" in hypercall_page("hvm")[32][2]


def test_paused_domain_is_not_scheduled() -> None:
    xen = Xen(frames=512, pcpus=1)
    xen.create_guest("a")
    xen.create_guest("b")
    xen.xl.pause("b")
    r = schedule(xen, duration_us=900_000)
    assert set(r.domain_share) == {"Domain-0", "a"}
    assert r.domain_share["a"] == pytest.approx(0.5, abs=0.05)
    assert xen.domain("a").cpu_time_ns > 0 and xen.domain("b").cpu_time_ns == 0


def test_graph_data_follows_the_model() -> None:
    xen = Xen(frames=1024)
    xen.create_guest("drv", pci=["nic"])
    xen.create_guest("g", disk=True)
    s = stack_graph(xen)
    assert ("d1", "dev:nic", {"kind": "native driver", "label": "native driver"}) in s.edges
    assert dict(s.nodes)["d1"]["roles"] == ["driver"]
    assert any(u == "d2" and v == "d0" for u, v, a in grant_graph(xen).edges if a["mapped"])
    assert [a["kind"] for _u, _v, a in event_graph(xen).edges] == ["interdomain"]
    xen.xl.destroy("g")
    assert grant_graph(xen).edges == [] and event_graph(xen).edges == []


def test_networkx_views() -> None:
    pytest.importorskip("networkx")
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from virtcore.viz.xen import draw_xen_graph, xen_graph

    xen = Xen(frames=512)
    xen.create_guest("web", disk=True)
    g = xen_graph(xen, "events")
    assert list(g.edges) == [("d0", "d1")]
    for which in ("stack", "events", "grants"):
        assert draw_xen_graph(xen, which) is not None
