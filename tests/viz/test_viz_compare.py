"""Chapters 3 and 4's comparison views and self-checks, on the running KVM and Xen models."""

from __future__ import annotations

import pytest

pytest.importorskip("networkx")
pytest.importorskip("ipywidgets")

import matplotlib

matplotlib.use("Agg")

import virtcore.viz.selfcheck_ch3_4 as sc
import virtcore.viz.selfcheck_kvm  # the kvm.* questions the chapters ask
import virtcore.viz.selfcheck_xen  # noqa: F401  (registers the xen.* questions)
from virtcore.kvm.host import Host
from virtcore.kvm.qemu import compare_block_io
from virtcore.sched import RoundRobin
from virtcore.viz import ViewError
from virtcore.viz import compare as cmp
from virtcore.viz.selfcheck import REGISTRY, check_answer, solution

WORKLOADS = [(16, 1, 512), (16, 4, 4096), (16, 16, 16384), (12, 5, 8192)]


@pytest.mark.parametrize(("requests", "batch", "size"), WORKLOADS)
def test_every_path_moves_the_right_data_and_none_beats_its_native_baseline(
        requests: int, batch: int, size: int) -> None:
    p = cmp.block_paths(requests, batch, size)
    assert [r.name for r in p.rows] == list(cmp.PATH_NAMES)
    assert all(r.data_ok for r in p.rows)
    native = p["native"].time_ns
    for name in ("virtio", "virtio+ioeventfd", "vhost", "split driver"):
        assert p[name].time_ns > native, name
    assert p["emulated"].time_ns > p["native-legacy"].time_ns


def test_the_kvm_rows_are_compare_block_io_and_the_xen_row_counts_its_trace() -> None:
    p = cmp.block_paths(16, 4, 4096)
    ref = compare_block_io(16, 4, 4096)
    assert p["virtio"].time_ns == ref["virtio"].time_ns
    assert p["emulated"].entries == ref["emulated"].exits == 80
    x = p["split driver"]
    assert x.checks == 16  # one grant map per one-page request, each checked by Xen
    row, events = cmp.xen_block_run(16, 4, 4096)
    assert row.entries == sum(1 for e in events if e.kind == "hypercall")
    assert row.checks == 16 and row.copies == 0
    # 16 KiB requests: 4 pages, 4 mappings each
    assert cmp.block_paths(16, 4, 16384)["split driver"].checks == 64


def test_batching_divides_notifications_on_both_sides() -> None:
    one, many = cmp.block_paths(16, 1, 4096), cmp.block_paths(16, 16, 4096)
    assert one["virtio"].per("entries") == 1 and many["virtio"].per("entries") == 1 / 16
    assert many["split driver"].per("entries") < one["split driver"].per("entries")
    # the grant maps do not batch away: one per page whatever the batch
    assert many["split driver"].per("checks") == one["split driver"].per("checks") == 1


def test_bad_workloads_are_refused() -> None:
    for bad in ((0, 1, 512), (4, 1, 100), (4, 32, 512), (4, 1, 12 * 4096)):
        with pytest.raises(ViewError):
            cmp.block_paths(*bad)


def test_traces_come_from_each_model() -> None:
    k = cmp.kvm_trace(path="virtio")
    assert [r[0] for r in k] == ["vCPU 0", "KVM", "QEMU", "QEMU"]
    assert all(r[3] >= 0 for r in k)
    io = cmp.kvm_trace(path="virtio+ioeventfd")
    assert [r[1] for r in io] == ["VM exit", "handled in KVM"]
    x = cmp.xen_trace()
    texts = " ".join(r[2] for r in x)
    assert "EVTCHNOP_send" in texts and "GNTTABOP_map_grant_ref" in texts
    assert {r[0] for r in x} >= {"Dom0", "DomU d1"}


def test_kvm_stack_is_read_from_the_host_and_the_vmm() -> None:
    host = Host(pcpus=2)
    host.add_vm("a", vcpus=3)
    host.add_process("make", threads=2)
    g = cmp.kvm_stack(host)
    assert sorted(n for n, d in g.nodes(data=True) if d["kind"] == "vcpu") == [
        "a: vCPU 0", "a: vCPU 1", "a: vCPU 2"]
    assert g.nodes["make"]["kind"] == "host process"
    assert g.has_edge("Linux scheduler", "make: make.1") or any(
        u == "Linux scheduler" and v.startswith("make:") for u, v in g.edges())
    used = cmp.kvm_path_edges(g)
    assert ("a: vCPU 0", "kvm.ko") in used and ("a: vCPU 1", "kvm.ko") not in used
    other = cmp.kvm_stack(Host(pcpus=1, scheduler=RoundRobin))
    assert other.nodes["Linux scheduler"]["text"] == "RoundRobin"


def test_xen_stack_and_the_split_driver_path() -> None:
    xen = cmp._xen_host(256)
    _row, ev = cmp.xen_block_run(2, 2, 4096, xen=xen)
    g = cmp.xen_stack(xen)
    assert {g.nodes[n]["layer"] for n in g} == {"domain", "hypervisor", "hardware"}
    used = set(cmp.xen_path_edges(g, ev))
    assert {("d1", "xen"), ("d0", "xen"), ("d1", "d0"), ("d0", "dev:disk")} <= used
    svg = cmp.graph_svg(g, highlight=sorted(used))
    assert svg.count("stroke='#d62728' stroke-width='3'") == len(used)


def test_where_table_follows_the_models() -> None:
    rows = cmp.where_table()
    assert rows[0][1].startswith("Linux (CFSLike)")
    assert rows[3][2].startswith("Domain-0")
    rr = cmp.where_table(Host(scheduler=RoundRobin))
    assert rr[0][1].startswith("Linux (RoundRobin)")


def test_the_same_weights_give_the_same_shares_under_both_schedulers() -> None:
    k, x = cmp.schedulers(600_000)
    assert k.scheduler == "CFS" and x.scheduler == "Credit"
    assert k.domain_share["db"] > 1.8 * k.domain_share["batch"]
    assert x.domain_share["db"] > x.domain_share["batch"]
    assert sum(k.domain_share.values()) == pytest.approx(1.0, abs=0.01)


def test_sharing_a_page_costs_hypercalls_under_xen_and_nothing_under_kvm() -> None:
    x, k = cmp.sharing_costs(8)
    assert x.checks == 8 and x.entries == 2  # one batched map, one batched unmap
    assert x.time_ns > 0 and k.per_page() == (0.0, 0.0, 0.0)
    with pytest.raises(ViewError):
        cmp.sharing_costs(0)


def test_forged_mappings_fail_and_qemu_reads_anything() -> None:
    got = cmp.forged_map()
    assert got[0][1] == "GNTST_okay"
    assert [s for _a, s in got[1:]] == ["GNTST_general_error"] * 3 + ["GNTST_bad_gntref"]
    assert cmp.qemu_reads_guest(b"secret") == (b"secret", 0)


def test_io_view_and_widget() -> None:
    html = cmp.io_view(4096, 4, "vhost", "KVM")
    assert "vhost" in html and "#d62728" in html
    assert "not a path of Xen" in cmp.io_view(4096, 4, "virtio", "Xen")
    with pytest.raises(ViewError):
        cmp.io_view(4096, 4, "virtio", "VMware")
    box = cmp.io_explorer()
    before = box.view.value
    box.controls["hypervisor"].value = "Xen"
    assert box.controls["device"].value == "split driver"
    assert box.view.value != before and "split driver" in box.view.value
    box.controls["size"].value = 16384
    assert "16384 B" in box.view.value


def test_schedulers_plot_has_both() -> None:
    k, x = cmp.schedulers(90_000)
    ax = cmp.plot_schedulers(k, x)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("KVM" in t for t in labels) and any("Xen" in t for t in labels)


@pytest.mark.parametrize("qid", sorted(sc.PLACEHOLDERS))
def test_selfchecks_solve_and_placeholders_never_pass(qid: str) -> None:
    check = REGISTRY[qid]
    answers = set()
    for seed in range(100):
        sol = solution(qid, seed=seed)
        answers.add(str(check.normalize(sol)))
        assert check_answer(qid, sol, seed=seed).status == "correct"
        assert check_answer(qid, sc.PLACEHOLDERS[qid], seed=seed).status == "wrong"
    assert len(answers) > 1  # the answer depends on the problem


def test_who_does_answers_follow_the_table() -> None:
    assert sc._solve_who_does({"job": "CPU: schedules the vCPUs", "hyp": "KVM"}) == "linux"
    assert sc._solve_who_does({"job": "CPU: schedules the vCPUs", "hyp": "Xen"}) == "xen"
    assert sc._solve_who_does({"job": "VM management", "hyp": "Xen"}) == "dom0"
    assert sc._solve_who_does({"job": "I/O: device models / back ends", "hyp": "KVM"}) == "qemu"


@pytest.mark.parametrize(("stem", "claims"), [
    ("03-kvm-vs-xen", ("S3.1", "S3.2", "S3.3", "S3.4", "S3.5", "S3.6", "N3", "N5")),
    ("04-security-vs-performance", ("S4.1", "S4.2", "S4.3", "S4.4", "S4.5", "S4.6", "N3", "N4",
                                    "N5", "N6")),
])
def test_each_chapter_closes_with_a_row_per_claim(stem: str, claims: tuple[str, ...]) -> None:
    import json
    import re
    from pathlib import Path

    nb = json.loads((Path(__file__).resolve().parents[2] / "notebooks" / f"{stem}.ipynb")
                    .read_text(encoding="utf-8"))
    text = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    table = text.split("where each is covered", 1)[1]
    rows = {m[0]: m[1] for m in re.findall(
        r"^\| ((?:S\d\.\d)|(?:N\d)) [^|]*\|[^|]*\|[^|]*\| ([^|]+) \|$", table, re.M)}
    assert sorted(rows) == sorted(claims)
    asked = set(re.findall(r'check_answer\("([^"]+)"', "".join(
        "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")))
    for claim, cell in rows.items():
        for q in re.findall(r"`([a-z]+\.[a-z-]+)`", cell):
            assert q in REGISTRY, (claim, q)
            if "chapter" not in cell:  # another chapter's self-check is marked as such
                assert q in asked, (claim, q)


def test_the_split_driver_run_is_the_same_on_a_fresh_and_a_reused_host() -> None:
    xen = cmp._xen_host(256)
    first, ev1 = cmp.xen_block_run(8, 4, 4096, xen=xen)
    again, ev2 = cmp.xen_block_run(8, 4, 4096, xen=xen)
    fresh, _ = cmp.xen_block_run(8, 4, 4096)
    assert first == again == fresh
    assert ev1[0].seq < ev1[-1].seq < ev2[0].seq  # each run reports only its own events
    assert [e.kind for e in ev1] == [e.kind for e in ev2]
