"""Chapters 5 and 6a's views, widgets and self-checks, on the running Xen model."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("networkx")
pytest.importorskip("ipywidgets")

import matplotlib

matplotlib.use("Agg")

import nbformat

import virtcore.viz.selfcheck_xen as sx
from virtcore.viz import xen_chapters as xc
from virtcore.viz.selfcheck import REGISTRY, check_answer, solution
from virtcore.xen import Xen
from virtcore.xen.constants import (
    EVTCHNSTAT_interdomain,
    GNTMAP_host_map,
    GNTTABOP_map_grant_ref,
    HYPERVISOR_grant_table_op,
)
from virtcore.xen.grant import GnttabMapGrantRef

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = {"05-xen": 5, "06a-xen-internals": 6}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


# ------------------------------------------------------------------ graphs from the running model


def _drives(g, node):
    return {g.nodes[b]["label"] for b in g.successors(node)
            if g.edges[node, b]["kind"] == "native driver"}


def test_domain_stack_graph_follows_the_toolstack():
    xen = Xen(frames=256)
    web = xen.xl.create({"name": "web", "memory_pages": 8, "disk": True})
    g = xc.domain_stack_graph(xen)
    assert {"d0", f"d{web.domid}"} <= set(g.predecessors("xen"))
    assert _drives(g, "d0") == {"disk", "nic", "serial"}  # Dom0 owns every device
    assert g.nodes[f"d{web.domid}"]["role"] == "domu"
    assert g.edges[f"d{web.domid}", "d0"]["kind"] == "split driver"  # blkfront → blkback
    assert "vbd → d0" in xc.stack_html(xen)
    xen.xl.destroy("web")
    assert f"d{web.domid}" not in xc.domain_stack_graph(xen)


def test_driver_domain_owns_its_device_in_the_graph():
    from virtcore.xen.constants import HYPERVISOR_domctl, XEN_DOMCTL_assign_device
    from virtcore.xen.control import XenDomctl

    xen = Xen(frames=256)
    net = xen.xl.create({"name": "netdom", "memory_pages": 8})
    assert xen.hypercall(0, HYPERVISOR_domctl,
                         XenDomctl(XEN_DOMCTL_assign_device, net.domid, {"dev": "nic"})) == 0
    g = xc.domain_stack_graph(xen)
    assert _drives(g, f"d{net.domid}") == {"nic"}
    assert g.nodes[f"d{net.domid}"]["role"] == "driver"
    assert "nic" not in _drives(g, "d0")
    assert xc.platform_table(xen).rows[1][-1] == f"d{net.domid} netdom"


def test_event_channel_graph_shows_pairs_virqs_and_bits():
    c = xc.EventBitsConsole()
    g = xc.event_channel_graph(c.xen)
    back, front = (0, c.back_port), (c.front.domid, c.front_port)
    assert g.edges[back, front]["kind"] == g.edges[front, back]["kind"] == "interdomain"
    assert g.nodes[back]["state"] == "interdomain"
    c.do("mask")
    c.do("send")
    g = xc.event_channel_graph(c.xen)
    assert g.nodes[back]["masked"] and g.nodes[back]["pending"]
    assert c.xen.dom0.evtchn[c.back_port].state == EVTCHNSTAT_interdomain


def test_grant_graph_marks_mapping_only_after_xen_maps():
    xen = Xen(frames=256)
    a = xen.xl.create({"name": "a", "memory_pages": 4})
    b = xen.xl.create({"name": "b", "memory_pages": 4})
    assert a.grant_table is not None
    ref = a.grant_table.grant_access(b.domid, xen.pfn_to_mfn(a.domid, 0))
    edges = list(xc.grant_graph(xen).edges(data=True))
    assert [(u, v, d["mapped"]) for u, v, d in edges] == [(f"d{a.domid}", f"d{b.domid}", False)]
    op = GnttabMapGrantRef(host_addr=0x10000, flags=GNTMAP_host_map, ref=ref, dom=a.domid)
    xen.hypercall(b, HYPERVISOR_grant_table_op, GNTTABOP_map_grant_ref, op, 1)
    assert op.status == 0
    assert [d["mapped"] for _, _, d in xc.grant_graph(xen).edges(data=True)] == [True]


def test_drawings_return_axes():
    xen = Xen(frames=256)
    xen.xl.create({"name": "w", "memory_pages": 4})
    for draw in (xc.draw_domain_stack, xc.draw_event_channels, xc.draw_grants):
        ax = draw(xen)
        assert ax.get_title()


# ------------------------------------------------------------------ event bits (S6.3)


def test_masked_edge_is_lost_and_unmask_delivers():
    c = xc.EventBitsConsole()
    assert c.do("send").upcalls == 1  # unmasked 0 -> 1 edge: upcall, handler clears PENDING
    assert c.do("mask").masked == 1
    b = c.do("send")
    assert (b.pending, b.upcalls) == (1, 1)  # edge lost
    assert c.do("send").upcalls == 1  # already pending: no new edge
    b = c.do("unmask")
    assert (b.pending, b.upcalls, b.masked) == (0, 2, 0)


def test_upcall_mask_holds_the_upcall_until_cleared():
    c = xc.EventBitsConsole()
    c.do("block upcalls")
    b = c.do("send")
    assert (b.pending, b.upcall_pending, b.upcalls) == (1, 1, 0)
    assert c.do("allow upcalls").upcalls == 1
    with pytest.raises(xc.ViewError):
        c.do("jump")


def test_event_bits_panel_buttons():
    p = xc.event_bits_panel()
    p.buttons["mask"].click()
    p.buttons["send"].click()
    assert "edge is lost" in p.message.value
    p.buttons["unmask"].click()
    assert p.console.bits().upcalls == 1 and "re-delivers" in p.message.value


# ------------------------------------------------------------------ toolstack widget


def test_toolstack_panel_drives_domains():
    p = xc.toolstack_panel()
    p.buttons["create"].click()
    assert p.target.value == "guest1" and "guest1" in p.listing.value
    p.buttons["pause"].click()
    assert p.console.xen.domain("guest1").state_letters() == "--p---"
    assert "--p---" in p.listing.value
    p.buttons["unpause"].click()
    p.buttons["unpause"].click()  # not paused: the toolstack reports Xen's error, caught
    assert not p.console.ok and "-EINVAL" in p.message.value
    p.buttons["destroy"].click()
    assert "guest1" not in p.console.names() and "Domain-0" in p.graph.value


# ------------------------------------------------------------ control and hardware (S6.1, S6.2)


def test_control_matrix_domu_gets_eperm_and_changes_nothing():
    xen = Xen(frames=512)
    xen.xl.create({"name": "web", "memory_pages": 8})
    xen.xl.create({"name": "db", "memory_pages": 8})
    m = xc.control_matrix(xen)
    assert set(m.results["web"]) == {"-EPERM"} and m.unchanged["web"]
    assert set(m.results["Domain-0"]) == {"0"} and not m.unchanged["Domain-0"]
    assert "db" not in [d.name for d in xen.domains.values()]
    assert m.table().rows[-1] == ("state unchanged?", "no", "yes")


def test_hardware_access_only_for_the_owner():
    xen = Xen(frames=256)
    xen.xl.create({"name": "app", "memory_pages": 8})
    assert [xc.hardware_access(xen, "Domain-0", "disk", a) for a in xc.HW_ACCESSES] == \
        ["ok"] * 4
    refused = [xc.hardware_access(xen, "app", "disk", a) for a in xc.HW_ACCESSES]
    assert refused == ["#GP", "all ones (no device)", "IOMMU fault: -EPERM", "-EPERM"]
    # the probes leave no pirq bound
    assert not xen.dom0.pirq_to_port


# ------------------------------------------------------------------ vCPU paths (S3.6, S5.5, S6.4)


def test_pv_traps_on_cli_sti_hvm_exits_only_on_io():
    prog = "movi r1, 2\nloop: cli\nsti\nout 0x3f8, r1\naddi r1, -1\ncmpi r1, 0\njnz loop\nhlt"
    c = xc.pv_hvm_paths(prog)
    assert (c.entries("pv"), c.entries("hvm")) == (6, 2)
    pv, hvm = c.paths["pv"], c.paths["hvm"]
    assert pv.direct + pv.via_xen == hvm.direct + hvm.via_xen == pv.steps - 1
    assert {e.kind for e in pv.events} >= {"trap"} and "exit" in {e.kind for e in hvm.events}
    assert pv.total_ns == pv.direct * pv.instruction_ns + pv.xen_ns


def test_refused_port_without_permission():
    p = xc.vcpu_paths("movi r1, 65\nout 0x3f8, r1\nhlt", "pv")
    assert p.refused == 1


def test_vcpu_table_lists_every_vcpu():
    xen = Xen(frames=256)
    xen.xl.create({"name": "smp", "memory_pages": 8, "vcpus": 4})
    rows = xc.vcpu_table(xen).rows
    assert [r[2] for r in rows if r[0].endswith("smp")] == ["0", "1", "2", "3"]


# ------------------------------------------------------------------ split driver (S5.3, S5.4, S4.1)


def test_split_request_steps_show_ring_and_events():
    r = xc.split_request("read", 5, data=b"xen")
    assert r.result.status == 0 and r.result.data[:3] == b"xen"
    first, last = r.steps[0].indices, r.steps[-1].indices
    assert (first["req_prod"], first["req_event"], first["rsp_event"]) == (0, 1, 1)
    assert last["req_prod"] == last["rsp_prod"] == last["rsp_cons"] == last["req_cons"] == 1
    stages = [s.stage for s in r.steps]
    assert stages[0] == "frontend" and "hardware" in stages and "backend" in stages
    assert stages.index("backend") < stages.index("hardware")
    assert any(s.bits["back_pending"] for s in r.steps)  # the event became pending …
    assert r.steps[-1].bits["back_pending"] == r.steps[-1].bits["front_pending"] == 0  # … handled
    assert r.notifications == 2
    assert r.total_ns == sum(s.cost for s in r.steps) > 0
    # every data page was mapped through Xen and unmapped again
    kinds = [s.text for s in r.steps if s.kind == "hypercall"]
    assert any("map_grant_ref" in t for t in kinds) and any("unmap_grant_ref" in t for t in kinds)


def test_split_driver_stepper_walks_the_steps():
    w = xc.split_driver_stepper()
    n = len(w.request.steps)
    for _ in range(n + 2):
        w.buttons["next"].click()
    assert w.slider.value == n - 1 and f"step {n}/{n}" in w.view.value
    w.buttons["prev"].click()
    assert w.slider.value == n - 2


@pytest.mark.parametrize(("requests", "batch", "sends"), [(8, 4, 4), (10, 3, 8), (5, 1, 10)])
def test_batching_needs_one_notification_per_batch(requests, batch, sends):
    b = xc.batch_requests(requests, batch)
    assert b.notifications == sends and b.front_sends == b.back_sends == b.pushes


# ------------------------------------------------------------------ self-checks


@pytest.mark.parametrize("qid", [c.qid for c in sx.CHECKS])
def test_solution_is_correct_and_placeholder_never_is(qid):
    """The computed answer passes; the chapter's example answer fails for seeds 0–99."""
    placeholder = sx.PLACEHOLDERS[qid]
    check = REGISTRY[qid]
    for seed in range(100):
        sol = solution(qid, seed=seed)
        assert check.normalize(placeholder) != check.normalize(sol), (qid, seed)
    assert check_answer(qid, solution(qid, seed=3), seed=3).status == "correct"
    assert check_answer(qid, ..., seed=3).status == "unanswered"


def _notebook(stem: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4)


def _imported_names(nb: nbformat.NotebookNode) -> set[str]:
    names: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        if tree.body and all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in tree.body):
            for s in tree.body:
                names |= {(a.asname or a.name).split(".")[0] for a in s.names}
    return names


@pytest.mark.parametrize("stem", list(CHAPTERS))
def test_chapter_asks_its_questions_with_the_registered_placeholders(stem):
    import re

    nb = _notebook(stem)
    asked = {}
    for cell in nb.cells:
        m = re.search(r'# your answer.*e\.g\. (.+)\ncheck_answer\("([\w.-]+)"', cell.source)
        if m:
            asked[m.group(2)] = ast.literal_eval(m.group(1))
    expected = {c.qid for c in sx.CHECKS if c.chapter == CHAPTERS[stem]}
    assert set(asked) == expected
    assert all(asked[q] == sx.PLACEHOLDERS[q] for q in asked)


@pytest.mark.parametrize("stem", list(CHAPTERS))
def test_hints_name_only_what_the_chapter_imports(stem):
    import re

    names = _imported_names(_notebook(stem))
    for check in sx.CHECKS:
        if check.chapter != CHAPTERS[stem]:
            continue
        called = set(re.findall(r"\b([A-Za-z_][A-Za-z0-9_]*)\(", check.hint))
        called = {n for n in called if "_" in n or n[0].isupper()}
        assert called <= names, (check.qid, called - names)


def test_views_import_no_plotting_or_widget_library():
    code = ("import sys, virtcore.viz.xen_chapters, virtcore.viz.selfcheck_xen\n"
            "bad = [m for m in ('matplotlib', 'ipywidgets', 'networkx') if m in sys.modules]\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
