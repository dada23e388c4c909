"""Chapter 6b's views, widget and self-checks, on the running virtual-MMU models."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("ipywidgets")

import matplotlib

matplotlib.use("Agg")

import virtcore.viz.selfcheck_xen_mmu as sx
from virtcore.viz import xen_mmu as xm
from virtcore.viz.selfcheck import REGISTRY, ask, check_answer, solution
from virtcore.xen.memory import PFN
from virtcore.xen.mmu import MMUEXT_PIN_L4_TABLE, MMUExtOp, MMUUpdate
from virtcore.xen.nested import two_d_walk_references
from virtcore.xen.paging_compare import compare_paging, compare_tlb_tagging, make_workload

PV, NESTED, SHADOW = xm.MODES


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def lab() -> xm.MMULab:
    return xm.MMULab(seed=3)


# ------------------------------------------------------------------ the lab and the three spaces


def test_the_lab_maps_the_same_pages_three_ways_through_one_p2m(lab):
    p2m = lab.pv.mem.p2m
    assert any(pfn != mfn for pfn, mfn in p2m.items())  # pseudo-physical is not machine
    for va, pfn in zip(lab.vas, lab.pfns):
        pv = lab.pv.translate(va)
        nested = lab.hap.translate(1, va)
        assert pv.pfn == nested.pfn == pfn
        assert pv.mfn == p2m[pfn] == lab.hap.guests[1].mem.p2m[pfn] == nested.mfn
        assert pv.maddr == lab.pv.access(va)  # the hardware MMU agrees with the trace


def test_p2m_and_m2p_stay_inverse_through_a_balloon(lab):
    fresh = xm.MMULab(seed=lab.seed)
    mem, m2p = fresh.pv.mem, fresh.xen.machine.m2p
    spare = fresh.spare_pfn
    assert spare not in fresh.pfns and spare not in fresh.pv.table_pfns
    mfn = mem.p2m[spare]
    assert mem.decrease_reservation([spare]) == 1
    assert spare not in mem.p2m and m2p[mfn] == 2**64 - 1
    assert all(m2p[f] == p for p, f in mem.p2m.items())
    t = xm.p2m_m2p_table(mem, limit=100)
    assert len(t.rows) == len(mem.p2m) and {r[3] for r in t.rows} == {"yes"}


def test_spaces_table_is_the_translations(lab):
    t = xm.spaces_table(lab.pv)
    assert [int(r[0], 16) for r in t.rows] == sorted(lab.vas)
    for row in t.rows:
        tr = lab.pv.translate(int(row[0], 16))
        assert row[1].startswith(f"{tr.pfn:#x} ") and row[2].startswith(f"{tr.mfn:#x} ")


def test_three_spaces_graph_is_the_page_tables_and_the_p2m(lab):
    g = xm.three_spaces_graph(lab.pv)
    for va, pfn in zip(lab.vas, lab.pfns):
        mfn = lab.pv.mem.p2m[pfn]
        assert g.edges[("gva", va), ("pfn", pfn)]["kind"] == "guest's view"
        assert g.edges[("pfn", pfn), ("mfn", mfn)]["kind"] == "P2M"
        assert g.edges[("gva", va), ("mfn", mfn)]["kind"] == "page table"
    assert g.number_of_edges() == 3 * len(lab.vas)
    ax = xm.draw_three_spaces(lab.pv)
    labels = [t.get_text() for t in ax.texts if t.get_text()]  # arrows are empty annotations
    assert len(labels) == 3 * len(lab.vas) + 3  # a box per node, a title per column
    assert {f"mfn {lab.pv.mem.p2m[p]:#x}" for p in lab.pfns} <= set(labels)


def test_free_slots_are_free_and_have_tables(lab):
    assert lab.pv.translate(lab.free_va).fault is not None
    assert lab.pv.entry_maddr(lab.free_va, 1) is not None
    words = lab.xen.machine.physical.words
    assert words[lab.pv.entry_maddr(lab.free_l2_va, 2) >> 2] == 0


# ------------------------------------------------------------------ validated and rejected updates


def test_the_chapters_update_attempts_get_xens_answers():
    lab = xm.MMULab(seed=0)
    xen, g = lab.xen, lab.pv
    log = xm.UpdateLog()
    l1 = g.table_pfns[-1]
    log.attempt("ro", xen.mmu_update(1, [g.map_request(lab.free_va, lab.pfns[1], writable=False)]))
    before = xen.snapshot()
    log.attempt("l1 rw", xen.mmu_update(1, [g.map_request(lab.free_va, l1, writable=True)]))
    dom0_frame = lab.dom0.mem.pfn_to_mfn(PFN(0))
    log.attempt("dom0", xen.mmu_update(1, [MMUUpdate(g.entry_maddr(lab.free_va),
                                                     (dom0_frame << 12) | 1)]))
    req = g.map_request(lab.free_va, lab.pfns[1], writable=False)
    log.attempt("pcd", xen.mmu_update(1, [MMUUpdate(req.ptr, req.val | 0x10)]))
    log.attempt("rw table", xen.mmu_update(1, [g.map_request(lab.free_l2_va, lab.pfns[0],
                                                             level=2)]))
    log.attempt("pin", xen.mmuext_op(1, [MMUExtOp(MMUEXT_PIN_L4_TABLE, g.baseptr)]))
    assert xen.snapshot() == before  # every rejected request changed nothing
    log.attempt("l1 ro", xen.mmu_update(1, [g.map_request(lab.free_va, l1, writable=False)]))
    assert [a.rc for a in log.attempts] == [0, -16, -16, -22, -22, -22, 0]
    table = log.table()
    assert [r[2] for r in table.rows] == ["ok", "-EBUSY", "-EBUSY", "-EINVAL", "-EINVAL",
                                          "-EINVAL", "ok"]
    assert table.rows[1][4] == xm.WHY[-16]
    assert xm.UpdateLog().attempt("x", -22, "why not").why == "why not"


# ------------------------------------------------------------------ stories and the 2-D walk


def test_stories_count_every_reference(lab):
    va = lab.vas[1]
    pv = xm.translation_story(lab, PV, va)
    nested = xm.translation_story(lab, NESTED, va)
    assert (pv.references, nested.references) == (4, 24)
    assert sum(s.table.startswith("EPT") for s in nested.steps) == 20
    assert {s.translating for s in nested.steps if s.table.startswith("EPT")} == \
        {"pseudo-physical"}
    assert pv.mfn == nested.mfn and pv.maddr == nested.maddr
    assert str(pv).endswith("4 page-table memory references")


def test_the_shadow_story_is_miss_exit_software_walk_fill_retry(lab):
    va = lab.vas[2]
    s = xm.translation_story(lab, SHADOW, va)
    phases = list(dict.fromkeys(x.phase for x in s.steps))
    assert phases == ["hardware walk", "VM exit", "software walk (Xen)", "shadow write",
                      "retry", "result"]
    soft = [x for x in s.steps if x.phase == "software walk (Xen)"]
    retry = [x for x in s.steps if x.phase == "retry"]
    assert len(soft) == len(retry) == 4 and all(x.table_space == "pseudo-physical" for x in soft)
    assert s.mfn == lab.pv.translate(va).mfn
    # pure for the caller: the lab's own shadow was not filled, the story repeats itself
    assert lab.shadow.translate(1, va).fault is not None
    assert str(xm.translation_story(lab, SHADOW, va)) == str(s)


def test_an_unknown_mode_is_a_view_error(lab):
    from virtcore.viz import ViewError

    with pytest.raises(ViewError):
        xm.translation_story(lab, "magic paging", lab.vas[0])


def test_render_highlights_the_spaces_of_the_step(lab):
    s = xm.translation_story(lab, NESTED, lab.vas[0])
    html = xm.render_story_step(s, 0)  # the first step is an EPT read for the guest's root
    assert "step 1/25" in html and "EPT L4" in html
    first = s.steps[0]
    assert html.count("translating") == 1 and f"translating {first.address:#x}" in html
    assert f"table at {first.table_addr:#x}" in html and f"machine {first.maddr:#x}" in html
    last = xm.render_story_step(s, len(s.steps) - 1)
    assert f"maddr {s.maddr:#x}" in last and "references so far <b>24</b>" in last


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("m", [0, 1, 2, 3, 4])
def test_measured_walks_follow_the_formula(n, m):
    assert xm.measured_2d_walk(n, m) == two_d_walk_references(n, m)


def test_two_d_walk_table():
    t = xm.two_d_walk_table([(4, 4), (2, 4)])
    assert t.rows == (("4", "4", "4", "24", "24", "6.0x"), ("2", "4", "2", "14", "14", "7.0x"))


# ------------------------------------------------------------------ comparisons


def test_comparison_and_cost_tables_read_the_runs():
    c = compare_paging(make_workload(seed=1, nevents=400))
    t = xm.comparison_table(c)
    assert [r[0] for r in t.rows] == [r[0] for r in c.rows()]
    costs = xm.cost_table(c)
    total = costs.rows[-1]
    assert total[0] == "total"
    assert float(total[1]) == pytest.approx(c.shadow.time_ns / 1000, abs=0.05)
    assert sum(float(r[2]) for r in costs.rows[:-1]) == pytest.approx(c.nested.time_ns / 1000,
                                                                       abs=0.5)
    ax = xm.draw_paging_comparison(c)
    assert len(ax.patches) >= 4 and ax.get_xlabel().startswith("simulated time")


def test_tagging_table():
    tagged, flushed = compare_tlb_tagging(make_workload(seed=2, nevents=400))
    t = xm.tagging_table(tagged, flushed)
    rows = {r[0]: r[1:] for r in t.rows}
    assert rows["TLB flushes on switch"] == ("0", str(flushed.switches))
    assert int(rows["TLB misses"][0]) < int(rows["TLB misses"][1])


# ------------------------------------------------------------------ the widget


def test_translation_explorer_steps_and_switches_modes():
    w = xm.translation_explorer(seed=0, workload_events=300)
    assert w.slider.max == len(w.story.steps) - 1 == 4  # PV: 4 references and the result
    w.buttons["prev"].click()
    assert w.slider.value == 0  # clamped
    for _ in range(10):
        w.buttons["next"].click()
    assert w.slider.value == w.slider.max and "gva" in w.view.value
    w.mode.value = NESTED
    assert (w.slider.value, w.slider.max) == (0, 24) and "step 1/25" in w.view.value
    w.slider.value = 24
    assert f"maddr {w.story.maddr:#x}" in w.view.value
    w.mode.value = SHADOW
    assert "VM exit" in "".join(s.phase for s in w.story.steps)
    w.address.value = w.lab.vas[-1]
    assert w.story.va == w.lab.vas[-1] and w.slider.value == 0
    assert w.comparison.shadow.exits > 0 == w.comparison.nested.exits


def test_importing_the_views_loads_no_display_package():
    code = ("import sys, virtcore.viz.xen_mmu, virtcore.viz.selfcheck_xen_mmu; "
            "print(sorted(m for m in ('matplotlib', 'ipywidgets', 'networkx')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ self-checks, against hand rules


SEEDS = range(0, 100, 7)


def test_every_question_is_registered_with_a_placeholder_that_is_never_right():
    for check in sx.CHECKS:
        assert REGISTRY[check.qid] is check
        wrong = check.normalize(sx.PLACEHOLDERS[check.qid])
        assert all(check.normalize(solution(check.qid, seed=s)) != wrong for s in range(100))


@pytest.mark.parametrize("seed", SEEDS)
def test_spaces_answer_is_the_p2m_entry_times_the_page_plus_the_offset(seed):
    d = ask("xenmmu.spaces", seed=seed).data
    mfn = d["base"] + d["order"].index(d["pfn"])
    assert solution("xenmmu.spaces", seed=seed) == mfn * 4096 + (d["va"] & 0xFFF)


@pytest.mark.parametrize("seed", SEEDS)
def test_which_space_answers_follow_who_writes_what(seed):
    expected = {"pv-l1": "machine", "pv-table": "machine", "hvm-l1": "pseudo-physical",
                "hvm-table": "pseudo-physical", "ept-entry": "machine",
                "ept-input": "pseudo-physical", "shadow-l1": "machine",
                "program": "guest virtual"}
    d = ask("xenmmu.which-space", seed=seed).data
    assert solution("xenmmu.which-space", seed=seed) == [expected[k] for k in d["keys"]]
    assert check_answer("xenmmu.which-space",
                        ["gva" if expected[k] == "guest virtual" else expected[k]
                         for k in d["keys"]], seed=seed).status == "correct"


@pytest.mark.parametrize("seed", SEEDS)
def test_update_answers_follow_xens_rules(seed):
    expected = {"data-ro": 0, "data-rw": 0, "l1-ro": 0, "l1-rw": -16, "foreign": -16,
                "pcd": -22, "rw-as-table": -22, "pin-again": -22}
    d = ask("xenmmu.update", seed=seed).data
    assert solution("xenmmu.update", seed=seed) == [expected[k] for k in d["keys"]]


@pytest.mark.parametrize("seed", SEEDS)
def test_2d_walk_answer_is_the_formula(seed):
    d = ask("xenmmu.2d-walk", seed=seed).data
    assert solution("xenmmu.2d-walk", seed=seed) == (d["n"] + 1) * (d["m"] + 1) - 1


@pytest.mark.parametrize("seed", SEEDS)
def test_exits_answer_follows_the_rules_of_shadow_paging(seed):
    per_event = {"touch": 1, "again": 0, "cr3": 2, "unmap": 2, "invlpg": 1}
    d = ask("xenmmu.exits", seed=seed).data
    assert solution("xenmmu.exits", seed=seed) == (
        sum(per_event[k] for k, _ in d["events"]), 0)


@pytest.mark.parametrize("seed", SEEDS)
def test_tlb_tag_answer_counts_first_touches_and_refills_after_switches(seed):
    d = ask("xenmmu.tlb-tag", seed=seed).data
    runs, pages = d["runs"], d["pages"]
    switched_in = sum(1 for i, dom in enumerate(runs) if i == 0 or runs[i - 1] != dom)
    assert solution("xenmmu.tlb-tag", seed=seed) == (len(set(runs)) * pages,
                                                     switched_in * pages)


def test_a_right_answer_is_correct_and_names_work():
    qid = "xenmmu.update"
    sol = solution(qid, seed=5)
    names = ["ok" if rc == 0 else {-16: "EBUSY", -22: "-EINVAL"}[rc] for rc in sol]
    assert check_answer(qid, names, seed=5).status == "correct"
    assert check_answer(qid, ..., seed=5).status == "unanswered"
