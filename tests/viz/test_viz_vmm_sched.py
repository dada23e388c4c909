"""Chapter 2's views: scheduling Gantt/shares/playground, lifecycle, migration, traps, self-checks.

Views are functions of results: every test builds the result with the library, then checks the
view shows exactly that (one Gantt bar per trace segment, the lifecycle graph is TRANSITIONS, the
trap steps are the VMM's counts), and that widgets drive the real library (a panel button changes
the live VM's state; an illegal one shows the typed error and changes nothing).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtcore.sched import FIFO, Credit, Domain, IOBound, RoundRobin, simulate
from virtcore.viz import ViewError, selfcheck
from virtcore.viz import sched as vs
from virtcore.viz import selfcheck_ch2 as sc2
from virtcore.viz import vmm as vv
from virtcore.vmm import (
    POPF_GUEST,
    POPF_GUEST_PV,
    TRANSITIONS,
    HandlerTable,
    VMState,
    allowed_ops,
    compare_fixes,
    next_state,
    precopy,
    run_guest,
)
from virtcore.vmm.lifecycle import MANAGEMENT_OPS

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def figure():
    """A fresh pyplot figure, closed after the test."""
    import matplotlib.pyplot as plt

    fig = plt.figure()
    yield fig
    plt.close(fig)


def _bars(ax) -> int:
    return sum(len(c.get_paths()) for c in ax.collections)


# ---------------------------------------------------------------------------
# scheduling views

WORKLOADS = st.sampled_from(sorted(vs.WORKLOADS))


@settings(max_examples=25, deadline=None)
@given(
    sched=st.sampled_from(["FIFO", "RR", "Credit"]),
    pcpus=st.integers(1, 3),
    specs=st.lists(st.tuples(st.integers(1, 1024), st.sampled_from([0, 0, 30, 70]), WORKLOADS),
                   min_size=1, max_size=4),
    slice_ms=st.integers(1, 50),
    seed=st.integers(0, 5),
)
def test_gantt_has_one_bar_per_segment_on_the_right_row_in_the_right_colour(
        sched, pcpus, specs, slice_ms, seed) -> None:
    import matplotlib.colors as mcolors
    import matplotlib.figure

    vms = [vs.VMSpec(f"v{i}", w, c, k) for i, (w, c, k) in enumerate(specs)]
    result = vs.run_playground(sched, pcpus, vms, slice_ms, 200, seed)
    bars = vs.gantt_bars(result)
    assert sum(len(v) for v in bars.values()) == len(result.segments)
    ax = matplotlib.figure.Figure().add_subplot()
    assert vs.gantt(result, ax) is ax
    assert _bars(ax) == len(result.segments)
    colours = vs.domain_colours(result)
    for coll, ((pcpu, dom), xs) in zip(ax.collections, bars.items()):
        assert mcolors.to_hex(coll.get_facecolor()[0]) == colours[dom]
        boxes = [p.get_extents() for p in coll.get_paths()]
        assert [(round(b.x0, 6), round(b.width, 6)) for b in boxes] == [
            (round(x, 6), round(w, 6)) for x, w in xs]
        assert all(abs((b.y0 + b.y1) / 2 - pcpu) < 1e-9 for b in boxes)
    # the bars of each pCPU never overlap and stay within the run
    for p in range(result.pcpus):
        spans = sorted((s.start, s.end) for s in result.segments if s.pcpu == p)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
        assert all(0 <= a < b <= result.duration_us for a, b in spans)


def test_gantt_bar_lengths_add_up_to_each_domains_cpu_time() -> None:
    r = simulate([Domain("a", weight=512), Domain("b"), Domain("c", workload=IOBound())],
                 Credit(), pcpus=2, duration_us=300_000, seed=1)
    per_domain: dict[str, float] = {}
    for (_, dom), xs in vs.gantt_bars(r).items():
        per_domain[dom] = per_domain.get(dom, 0.0) + sum(w for _, w in xs)
    assert {d: round(ms * 1000) for d, ms in per_domain.items()} == r.domain_cpu_us


def test_plot_shares_and_share_table_show_the_results_numbers(figure) -> None:
    from matplotlib.axes import Axes

    r = simulate([Domain("a", weight=512), Domain("b", cap=20), Domain("c")], Credit(),
                 duration_us=600_000, seed=0)
    ax = vs.plot_shares(r, figure.subplots())
    assert isinstance(ax, Axes)
    assert [round(p.get_height(), 6) for p in ax.patches] == [
        round(100 * r.domain_share[d], 6) for d in r.domain_params]
    table = vs.share_table(r, {"a": "cpu"})
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:4]}
    for d in ("a", "b", "c"):
        assert rows[d][1] == str(r.domain_params[d]["weight"])
        assert f"{100 * r.domain_share[d]:.1f}%" in rows[d]
        lat = r.domain_latency(d)
        assert rows[d][-2] == ("-" if lat.mean is None else f"{lat.mean:.0f}")
    assert rows["b"][2] == "20" and rows["a"][3] == "cpu"
    assert table._repr_html_().startswith("<pre")


def test_gantt_without_ax_makes_a_pyplot_figure() -> None:
    import matplotlib.pyplot as plt

    r = simulate([Domain("a"), Domain("b")], RoundRobin(10_000), duration_us=50_000)
    ax = vs.gantt(r)
    try:
        assert _bars(ax) == 5
        assert [t.get_text() for t in ax.get_yticklabels()] == ["pCPU0"]
        assert ax.get_legend() is not None
    finally:
        plt.close(ax.figure)


def test_make_scheduler_by_name() -> None:
    assert isinstance(vs.make_scheduler("fifo"), FIFO)
    assert vs.make_scheduler("RR", 7).timeslice_us == 7_000
    c = vs.make_scheduler("Credit", 30)
    assert isinstance(c, Credit) and c.tslice_ms == 30 and c.tick_us == 10_000
    with pytest.raises(Exception, match="unknown scheduler"):
        vs.make_scheduler("lottery")


def test_playground_view_is_a_function_of_its_arguments() -> None:
    vms = [vs.VMSpec("x", 512), vs.VMSpec("y", 256, 0, "interactive")]
    fig1, text1 = vs.playground_view("Credit", 1, vms, 30, 300, seed=2)
    _, text2 = vs.playground_view("Credit", 1, vms, 30, 300, seed=2)
    assert text1 == text2
    result = vs.run_playground("Credit", 1, vms, 30, 300, seed=2)
    assert _bars(fig1.axes[0]) == len(result.segments)
    assert str(vs.share_table(result, {"x": "cpu", "y": "interactive"})) in text1
    _, fifo = vs.playground_view("FIFO", 1, vms, 30, 300, seed=2)
    assert "FIFO" in fifo and fifo != text1


def test_playground_widget_callbacks_follow_the_controls() -> None:
    w = vs.scheduler_playground(seed=0)
    assert "Xen credit" in w.text.value and len(w.image.value) > 1000
    w.controls["scheduler"].value = "RR"
    w.controls["timeslice_ms"].value = 10
    assert "round-robin: 10 ms" in w.text.value
    w.controls["vms"].value = 4
    assert [s.name for s in w.specs()] == ["vm1", "vm2", "vm3", "vm4"]
    assert "vm4" in w.text.value
    w.controls["vms"].value = 2
    assert "vm3" not in w.text.value
    w.controls["weight1"].value = 1024
    w.controls["cap2"].value = 50
    w.controls["scheduler"].value = "Credit"
    assert w.specs()[0] == vs.VMSpec("vm1", 1024, 0, "cpu")
    expected = vs.share_table(vs.run_playground("Credit", 1, w.specs(), 10, 600, 0),
                              {s.name: s.workload for s in w.specs()})
    assert vs.esc(str(expected)) in w.text.value
    w.controls["pcpus"].value = 3
    assert "on 3 pCPU(s)" in w.text.value


# ---------------------------------------------------------------------------
# lifecycle


def test_lifecycle_graph_is_exactly_the_transition_table() -> None:
    g = vv.lifecycle_graph()
    assert set(g.nodes) == set(VMState)
    rebuilt = {(s, op): t for s, t, d in g.edges(data=True) for op in d["ops"]}
    assert rebuilt == TRANSITIONS
    for s, t, d in g.edges(data=True):
        assert d["label"] == " / ".join(d["ops"])
        assert d["kind"] == ("management" if set(d["ops"]) & set(MANAGEMENT_OPS) else "guest")
        assert all(TRANSITIONS[(s, op)] is t for op in d["ops"])


@pytest.mark.parametrize("state", [None, *VMState, "paused"])
def test_draw_lifecycle_highlights_one_state(figure, state) -> None:
    from matplotlib.axes import Axes

    ax = vv.draw_lifecycle(state, figure.subplots())
    assert isinstance(ax, Axes)
    names = [t.get_text() for t in ax.texts if t.get_text() in {s.value for s in VMState}]
    assert sorted(names) == sorted(s.value for s in VMState)
    thick = [t.get_text() for t in ax.texts
             if t.get_bbox_patch() is not None and t.get_bbox_patch().get_linewidth() > 2]
    expected = [] if state is None else [VMState(state).value if isinstance(state, str)
                                         else state.value]
    assert thick == expected
    figure.canvas.draw()


def test_console_buttons_change_the_live_vm_and_illegal_ones_show_typed_errors() -> None:
    p = vv.lifecycle_panel()
    c = p.console
    assert c.state is None and c.allowed() == ["define"]
    p.buttons["start"].click()
    assert "UnknownVMError" in p.message.value
    p.buttons["define"].click()
    assert c.state is VMState.DEFINED and "host0" in p.message.value
    p.buttons["start"].click()
    vm = c.manager.vm("web")
    assert vm.state is VMState.RUNNING
    p.buttons["run"].click()
    clock = vm.clock
    assert clock > 0 and str(clock) in p.vm_list.value       # the guest really ran
    p.buttons["resume"].click()                              # illegal: running
    assert "IllegalTransition" in p.message.value and "cannot resume" in p.message.value
    assert vm.state is VMState.RUNNING and vm.clock == clock
    p.buttons["pause"].click()
    p.buttons["run"].click()
    assert vm.state is VMState.PAUSED and vm.clock == clock  # paused: not scheduled
    p.buttons["migrate"].click()                             # paused: moves, stays paused
    assert c.host == "host1" and vm.state is VMState.PAUSED
    p.buttons["resume"].click()
    p.buttons["migrate"].click()                             # running: live, back to host0
    assert c.host == "host0" and vm.state is VMState.RUNNING
    assert vm.host is c.manager.host("host0")
    p.buttons["destroy"].click()                             # forced off, still defined
    assert vm.state is VMState.SHUTOFF
    p.buttons["shutdown"].click()
    assert "IllegalTransition" in p.message.value
    p.buttons["undefine"].click()
    assert vm.state is VMState.UNDEFINED
    assert [e.op for e in c.manager.events] == [
        "define", "start", "pause", "migrate", "resume", "migrate", "migrated", "destroy",
        "undefine"]
    assert "destroy" in p.event_log.value
    # the graph shows the current state, the legal buttons are marked
    assert p.graph.value == vv._lifecycle_png(VMState.UNDEFINED)
    assert [op for op, b in p.buttons.items() if b.button_style == "info"] == ["define"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(vv.LifecycleConsole.OPS), max_size=12))
def test_console_never_raises_and_follows_the_state_machine(ops) -> None:
    c = vv.LifecycleConsole(run_steps=50)
    model: VMState | None = None
    host = None
    for op in ops:
        message = c.do(op)
        if op == "define":
            if model in (None, VMState.UNDEFINED):
                model, host = VMState.DEFINED, "host0"
                assert message.startswith("✔")
            else:
                assert message.startswith("✘ ConfigurationError")
        elif model is None:
            assert message.startswith("✘ UnknownVMError")
        elif (model, op) not in TRANSITIONS:
            allowed = ", ".join(allowed_ops(model)) or "no operation is allowed"
            assert message.startswith(f"✘ IllegalTransition: cannot {op} VM 'web': it is "
                                      f"{model.value} (")
            assert allowed in message
        else:
            assert message.startswith(f"✔ {op}")
            before = model
            model = next_state(model, op)
            if op == "migrate":
                if before is VMState.RUNNING:
                    model = next_state(model, "migrated")
                host = "host1" if host == "host0" else "host0"
        assert c.state is model and c.host == host
        c.run()


def test_console_on_a_single_hypervisor_cannot_migrate() -> None:
    from virtcore.vmm import Hypervisor

    c = vv.LifecycleConsole(Hypervisor(), vm="solo")
    c.do("define")
    c.do("start")
    assert c.do("migrate").startswith("✘ ViewError: migrate needs a second host")
    assert c.state is VMState.RUNNING
    assert c.do("bogus").startswith("✘ unknown operation")
    with pytest.raises(ViewError):
        vv.LifecycleConsole("not a manager")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# migration


def test_plot_precopy_has_a_bar_per_round_then_the_stop_and_copy(figure) -> None:
    r = precopy(5_000, 400, 2_000, stop_threshold=10, seed=0)
    ax = vv.plot_precopy(r, figure.subplots())
    assert [float(p.get_height()) for p in ax.patches] == [float(x) for x in r.pages_per_round]
    reds = [p for p in ax.patches if matplotlib.colors.to_hex(p.get_facecolor()) == "#d62728"]
    assert reds == [ax.patches[-1]]
    assert "converged" in ax.get_title()


@settings(max_examples=30, deadline=None)
@given(mib=st.integers(64, 4096), dirty=st.integers(0, 60_000),
       bandwidth=st.integers(1_000, 100_000), threshold=st.integers(0, 500),
       rounds=st.integers(1, 30))
def test_migration_view_says_what_precopy_returned(mib, dirty, bandwidth, threshold,
                                                   rounds) -> None:
    fig, text = vv.migration_view(mib, dirty, bandwidth, threshold, rounds)
    r = precopy(mib * 256, dirty, bandwidth, stop_threshold=threshold, max_rounds=rounds)
    head = text.splitlines()[0]
    assert head.startswith("converged" if r.converged else "NOT converged")
    assert f"{len(r.rounds)} live rounds" in head and f"{r.stop_and_copy_pages} pages" in head
    assert r.reason in text and f"total sent {r.total_pages} pages" in text
    assert [float(p.get_height()) for p in fig.axes[0].patches] == [
        float(x) for x in r.pages_per_round]


def test_migration_explorer_callback_reflects_converged_or_not() -> None:
    w = vv.migration_explorer()
    assert "converged" in w.text.value and "NOT converged" not in w.text.value
    first = w.image.value
    w.controls["dirty_rate"].value = 40_000
    assert "NOT converged" in w.text.value and "did not converge" in w.text.value
    assert w.image.value != first
    w.controls["bandwidth"].value = 100_000
    assert "NOT converged" not in w.text.value
    w.controls["max_rounds"].value = 1
    assert "NOT converged" in w.text.value and "within 1 rounds" in w.text.value


# ---------------------------------------------------------------------------
# traps, the three fixes


@pytest.mark.parametrize("technique", ["trap", "bt", "pv", "hw"])
def test_trap_trace_records_every_trap_or_exit_the_vmm_handled(technique) -> None:
    t = vv.trap_trace(technique)
    _, vm = run_guest(POPF_GUEST_PV if technique == "pv" else POPF_GUEST,
                      technique=technique)
    assert len(t.steps) == vm.stats.emulated == t.stats.emulated
    last = t.steps[-1]
    assert (last.traps, last.exits, last.hypercalls) == (
        vm.stats.traps, vm.stats.exits, vm.stats.hypercalls)
    assert [s.index for s in t.steps] == list(range(len(t.steps)))
    assert all(a.emulated < b.emulated for a, b in zip(t.steps, t.steps[1:]))
    assert t.output == vm.console
    assert t.matches_bare is (technique != "trap")
    if technique == "hw":
        assert all(s.event.startswith("VM exit") for s in t.steps)
    elif technique == "bt":  # the kernel's sensitive instructions ran as translated code
        assert all(s.event.startswith("BT") for s in t.steps) and last.traps == 0
    else:
        assert all(s.event.startswith("trap") for s in t.steps)
    silent = {name for _, name in t.silent}
    assert silent == (set() if technique in ("bt", "pv") else {"popf", "pushf"})


def test_trap_trace_shows_the_virtual_if_and_control_registers() -> None:
    t = vv.trap_trace("trap")
    sti = next(s for s in t.steps if s.instruction == "sti")
    assert (sti.if_before, sti.if_after, sti.handler) == (False, True, "handle_sti")
    wrcr = t.steps[0]
    assert wrcr.instruction.startswith("wrcr tvec") and any(
        c.startswith("virtual tvec 0x0 →") for c in wrcr.changes)
    assert all(s.pc_after == s.pc + 4 for s in t.steps)


def test_a_forgetful_handler_shows_up_as_a_pc_that_does_not_move() -> None:
    def lazy_cli(vcpu, insn):
        vcpu.interrupts_enabled = False

    t = vv.trap_trace("trap", handlers=HandlerTable.reference().replace(cli=lazy_cli),
                      max_steps=400, max_records=50)
    assert t.truncated and len(t.steps) == 50
    stuck = [s for s in t.steps if s.handler == "lazy_cli"]
    assert len(stuck) > 40 and {(s.pc, s.pc_after) for s in stuck} == {(stuck[0].pc,) * 2}
    assert "the pc did not move" in vv.render_trap_step(t, stuck[0].index)


def test_render_trap_step_and_the_stepper_widget() -> None:
    t = vv.trap_trace("bt")
    text = vv.render_trap_step(t, 0)
    assert text.startswith(f"event 1 of {len(t.steps)}: ")
    assert "— end of the run —" in vv.render_trap_step(t, len(t.steps) - 1)
    for bad in (-1, len(t.steps)):
        with pytest.raises(ViewError):
            vv.render_trap_step(t, bad)
    w = vv.trap_stepper("bt")
    assert w.slider.max == len(w.trace.steps) - 1
    w.buttons["prev"].click()
    assert w.slider.value == 0
    w.buttons["next"].click()
    w.buttons["next"].click()
    assert w.slider.value == 2 and w.view.value == vv.render_trap_step(w.trace, 2).html
    w.buttons["last"].click()
    assert "end of the run" in w.view.value
    w.buttons["next"].click()
    assert w.slider.value == len(w.trace.steps) - 1
    w.buttons["first"].click()
    assert w.slider.value == 0


def test_plot_fix_comparison_draws_the_comparisons_counts_and_costs(figure) -> None:
    c = compare_fixes()
    ax = vv.plot_fix_comparison(c, figure.subplots())
    recs = c.records()
    heights = [round(float(p.get_height())) for p in ax.patches]
    n = len(recs)
    assert heights[:n] == [r["traps"] for r in recs]
    assert heights[n:2 * n] == [r["exits"] for r in recs]
    assert heights[2 * n:] == [r["hypercalls"] for r in recs]
    assert list(ax.cost_axes.lines[0].get_ydata()) == [r["cost"] for r in recs]
    wrong = [t.get_text() for t in ax.get_xticklabels() if "WRONG" in t.get_text()]
    assert wrong == ["trap-and-emulate\n(WRONG)"]
    figure.canvas.draw()


# ---------------------------------------------------------------------------
# self-checks


def test_chapter_two_registers_its_questions_once() -> None:
    import importlib

    ids = [c.qid for c in sc2.CHECKS]
    assert selfcheck.questions(2) == ids
    importlib.reload(sc2)  # importing again registers nothing twice
    assert selfcheck.questions(2) == ids
    assert {c for check in sc2.CHECKS for c in check.covers} == {
        "S1.3", "S2.1", "S2.2", "S2.3", "S2.4"}


@pytest.mark.parametrize("qid", [c.qid for c in sc2.CHECKS])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_every_question_accepts_its_answer_and_rejects_others(qid, seed) -> None:
    problem = selfcheck.ask(qid, seed=seed)
    assert problem.text and selfcheck.ask(qid, seed=seed) == problem
    answer = selfcheck.solution(qid, seed=seed)
    assert selfcheck.check_answer(qid, answer, seed=seed).status == "correct"
    assert selfcheck.check_answer(qid, ..., seed=seed).status == "unanswered"
    assert repr(selfcheck.check_answer(qid, seed=seed)).startswith("… not answered yet")
    wrong = (not answer if isinstance(answer, bool)
             else (answer[0] + 1, answer[1]) if isinstance(answer, tuple)
             else [*answer, "add"] if isinstance(answer, list) else answer + 1)
    assert selfcheck.check_answer(qid, wrong, seed=seed).status == "wrong"
    assert selfcheck.check_answer(qid, object(), seed=seed).status == "wrong"


def test_questions_vary_with_the_seed() -> None:
    for check in sc2.CHECKS:
        texts = {selfcheck.ask(check.qid, seed=s).text for s in range(8)}
        assert len(texts) > 2, check.qid


def test_answers_are_computed_from_the_library() -> None:
    # ch2.traps: counting privileged instructions by hand agrees with the VMM
    from virtcore.hw import ISA

    for seed in range(5):
        data = selfcheck.ask("ch2.traps", seed=seed).data
        lines = [ln.split(":")[-1].strip() for ln in data["source"].splitlines()]
        n = int(lines[0].split(",")[1])
        body = lines[1:-4]
        per_pass = sum(ISA[ln.split()[0]].privileged for ln in body)
        assert selfcheck.solution("ch2.traps", seed=seed) == n * per_pass + 1
    # ch2.p2m: the answer is the P2M arithmetic
    for seed in range(5):
        p = selfcheck.ask("ch2.p2m", seed=seed)
        p2m = eval(p.text.split("p2m = ")[1].splitlines()[0])
        gpa = p.data["gpa"]
        assert selfcheck.solution("ch2.p2m", seed=seed) == (p2m[gpa >> 12] << 12) | (gpa & 0xFFF)


def test_as_bool() -> None:
    assert sc2.as_bool(True) is True and sc2.as_bool(" No ") is False
    with pytest.raises(selfcheck.AnswerFormatError):
        sc2.as_bool("maybe")


# ---------------------------------------------------------------------------
# layering


def test_importing_the_chapter_two_views_pulls_no_display_package() -> None:
    script = ("import virtcore.viz.vmm, virtcore.viz.sched, virtcore.viz.selfcheck_ch2\n"
              "from virtcore.viz.selfcheck import check_answer, solution\n"
              "check_answer('ch2.credit', solution('ch2.credit'))\n"
              "import virtcore.viz.vmm as v; v.trap_trace('hw')\n"
              "v.LifecycleConsole().do('define')\n"
              "import sys; print(' '.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=REPO)
    loaded = {m.split(".")[0] for m in out.stdout.split()}
    assert not loaded & {"matplotlib", "ipywidgets", "IPython", "networkx"}
