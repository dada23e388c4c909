"""Chapter 1's views: the stack graph and layout, drawings, cost plots, explorers, self-checks."""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import matplotlib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtcore.arch import (
    DEFAULT_MODEL,
    Architecture,
    CrossingKind,
    EdgeKind,
    Event,
    assist_configs,
    bare_metal,
    compare_architectures,
    event_path,
    hosted,
    kvm_nested,
    native,
    normalize_mix,
    ordering_sweep,
    os_level,
    simulate_fault,
    stack_for,
    type1_diagram,
    type2_diagram,
    workload_cost,
)
from virtcore.viz import ViewError
from virtcore.viz import arch as va
from virtcore.viz.selfcheck import check_answer, questions, solution

matplotlib.use("Agg")

EVENTS = (Event.COMPUTE, Event.SYSCALL, Event.PRIVILEGED_INSTRUCTION, Event.IO, Event.TLB_MISS)


def _stacks() -> list:
    """Every kind of stack the chapter draws."""
    out = [stack_for(a, n) for a in Architecture for n in (1, 2, 3)]
    out += [native(), type1_diagram(), type2_diagram(), kvm_nested(2), kvm_nested(3)]
    out.append(bare_metal(embedded=True))
    out += [stack_for("bare-metal (Xen-style)", n) for n in (1, 2, 3)]
    return out


def _paths():
    """(stack, path) for every architecture, event and assist setting the library allows."""
    for arch, ev, assist in itertools.product(Architecture, EVENTS, (False, True)):
        stack = stack_for(arch, 2)
        if stack.requires_hardware_assist and not assist:
            continue
        yield stack, event_path(stack, ev, hardware_assist=assist)
    nested = kvm_nested(2)
    for ev in EVENTS:
        yield nested, event_path(nested, ev, hardware_assist=True, guest="L2")


# ---------------------------------------------------------------------------
# graph and layout


@pytest.mark.parametrize("stack", _stacks(), ids=lambda s: s.name)
def test_graph_has_one_node_per_layer_and_the_stacks_edges(stack) -> None:
    g = va.stack_graph(stack)
    assert sorted(g.nodes) == sorted(layer.name for layer in stack.layers)
    assert g.number_of_nodes() == len(stack.layers)
    assert {(u, v, d["kind"]) for u, v, d in g.edges(data=True)} == {
        (e.lower, e.upper, e.kind.value) for e in stack.edges
    }
    for layer in stack.layers:
        assert g.nodes[layer.name]["level"] == layer.level
        assert g.nodes[layer.name]["chinese"] == layer.chinese


@pytest.mark.parametrize(("stack", "path"), list(_paths()),
                         ids=lambda x: getattr(x, "name", None) or "")
def test_every_step_of_a_path_is_an_edge_of_the_graph(stack, path) -> None:
    g = va.stack_graph(stack, path)
    assert g.number_of_nodes() == len(stack.layers)  # the path adds no node
    for i, step in enumerate(path.steps, 1):
        if step.src == step.dst:
            assert (i, step.kind.value) in g.nodes[step.src]["work"]
        else:
            assert g.has_edge(step.src, step.dst), step
            assert i in g.edges[step.src, step.dst]["steps"]
            assert step.kind.value in g.edges[step.src, step.dst]["crossings"]
    # device work and interrupts follow the stack's own edges (one way or the other)
    structural = {(e.lower, e.upper) for e in stack.edges}
    for step in path.steps:
        if step.kind in (CrossingKind.DEVICE, CrossingKind.INTERRUPT):
            assert (step.src, step.dst) in structural or (step.dst, step.src) in structural


def test_graph_refuses_a_path_of_another_stack() -> None:
    with pytest.raises(ViewError, match="does not belong"):
        va.stack_graph(bare_metal(), event_path(hosted(), "io"))


def _overlap(a: va.Box, b: va.Box) -> bool:
    return a.x0 < b.x1 - 1e-9 and b.x0 < a.x1 - 1e-9


@pytest.mark.parametrize("stack", _stacks(), ids=lambda s: s.name)
def test_layout_boxes_do_not_overlap_and_sit_on_what_carries_them(stack) -> None:
    layout = va.stack_layout(stack)
    assert list(layout) == [layer.name for layer in stack.layers]
    width = max(b.x1 for b in layout.values())
    assert len(stack.guests) <= width <= len(stack.guests) + 1
    for box in layout.values():
        assert 0 <= box.x0 < box.x1 <= width
        assert box.level == stack.layer(box.name).level
    plain = [b for b in layout.values() if b.inset_of is None]
    for a, b in itertools.combinations(plain, 2):
        if a.level == b.level:
            assert not _overlap(a, b), (a, b)
    part_of = {e.upper: e.lower for e in stack.edges if e.kind is EdgeKind.PART_OF}
    for box in layout.values():
        if box.inset_of is not None:  # a kernel module, drawn inside its kernel
            host = layout[box.inset_of]
            assert part_of[box.name] == host.name
            assert host.x0 < box.x0 < box.x1 < host.x1 and host.level == box.level
    for e in stack.edges:
        lower, upper = layout[e.lower], layout[e.upper]
        if e.kind in (EdgeKind.RUNS_ON, EdgeKind.HOSTS) and upper.level > lower.level:
            # what runs on a kernel module sits on the module's kernel
            carriers = [lower] + ([layout[part_of[e.lower]]] if e.lower in part_of else [])
            assert any(_overlap(c, upper) for c in carriers), e
    hw = layout[stack.role("hardware").name]
    assert (hw.x0, hw.x1) == (0.0, width)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(list(Architecture)), st.integers(1, 6))
def test_layout_gives_each_guest_its_own_column(arch, n) -> None:
    stack = stack_for(arch, n)
    layout = va.stack_layout(stack)
    for i, g in enumerate(stack.guests):
        app = layout[stack.role("app", g).name]
        assert (app.x0, app.x1) == (float(i), float(i + 1))


# ---------------------------------------------------------------------------
# drawing


@pytest.fixture
def figure():
    """A fresh pyplot figure, closed after the test."""
    import matplotlib.pyplot as plt

    fig = plt.figure()
    yield fig
    plt.close(fig)


@pytest.mark.parametrize(("stack", "path"), list(_paths())[::3],
                         ids=lambda x: getattr(x, "name", None) or "")
def test_draw_stack_draws_a_box_per_layer_and_an_arrow_per_crossing(figure, stack, path) -> None:
    from matplotlib.axes import Axes
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    ax = figure.subplots()
    assert va.draw_stack(stack, path, ax=ax, chinese=False) is ax
    assert isinstance(ax, Axes)
    boxes = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(boxes) == len(stack.layers)
    assert len(arrows) == sum(s.src != s.dst for s in path.steps)
    colours = {matplotlib.colors.to_hex(a.get_edgecolor()) for a in arrows}
    assert colours == {va.CROSSING_COLOURS[s.kind] for s in path.steps if s.src != s.dst}
    texts = [t.get_text() for t in ax.texts]
    for layer in stack.layers:
        assert any(t.startswith(layer.name) for t in texts), layer.name
    legend = ax.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == list(
        dict.fromkeys(s.kind.value for s in path.steps)
    )
    figure.canvas.draw()  # renders without error


def test_draw_stack_without_ax_makes_a_pyplot_figure() -> None:
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    ax = va.draw_stack(bare_metal(), event_path(bare_metal(), "io"), chinese=False)
    try:
        assert ax.figure.number not in before
        assert ax.get_title() == "bare-metal — Type 1"
    finally:
        plt.close(ax.figure)


def test_draw_stack_marks_failed_layers(figure) -> None:
    from matplotlib.patches import FancyBboxPatch

    stack = os_level(containers=3)
    out = simulate_fault(stack, "kernel_crash", in_="ct2")
    ax = va.draw_stack(stack, ax=figure.subplots(), failed=out.failed_layers, chinese=False)
    red = matplotlib.colors.to_rgba(va._FAILED_FILL)
    filled = {t.get_text().split(" ✗")[0] for t in ax.texts if "✗" in t.get_text()}
    assert filled == set(out.failed_layers)
    assert {"host kernel", "ct1 app", "ct2 app", "ct3 app"} <= filled
    boxes = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
    assert sum(p.get_facecolor() == red for p in boxes) == len(out.failed_layers)


def test_draw_stack_chinese_labels_when_asked(figure) -> None:
    stack = bare_metal(guests=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no CJK font on a test machine
        ax = va.draw_stack(stack, ax=figure.subplots(), chinese=True)
        texts = "\n".join(t.get_text() for t in ax.texts)
        assert "虚拟机监控程序" in texts and "物理硬件" in texts
        ax2 = va.draw_stack(stack, ax=figure.add_subplot(2, 1, 2), chinese=False)
        assert "物理硬件" not in "\n".join(t.get_text() for t in ax2.texts)


def test_draw_stack_rejects_foreign_paths_and_layers(figure) -> None:
    ax = figure.subplots()
    with pytest.raises(ViewError, match="does not fit"):
        va.draw_stack(bare_metal(), event_path(hosted(), "io"), ax=ax)
    with pytest.raises(ViewError, match="no layer"):
        va.draw_stack(bare_metal(), ax=ax, failed=["host kernel"])


def test_plot_costs_bars_follow_the_comparison(figure) -> None:
    from matplotlib.axes import Axes

    mix = {Event.IO: 0.1, Event.COMPUTE: 0.9}
    comp = compare_architectures(mix, hardware_assist=True)
    ax = va.plot_costs(comp, ax=figure.subplots())
    assert isinstance(ax, Axes)
    assert [t.get_text() for t in ax.get_xticklabels()] == [n for n, _ in comp]
    (bars,) = ax.collections
    heights = [p.vertices[:, 1].max() for p in bars.get_paths()]
    assert heights == pytest.approx([c for _, c in comp])


def test_plot_costs_breakdown_stacks_to_the_totals(figure) -> None:
    mix = {"io": 0.2, "syscall": 0.3, "compute": 0.5}
    rows = va.cost_rows(mix, hardware_assist=True)
    ax = va.plot_costs([(n, t) for n, t, _ in rows], ax=figure.subplots(),
                       breakdown={n: p for n, _, p in rows}, reference=("native", 10.0))
    (bars,) = ax.collections
    tops: dict[int, float] = {}
    for p in bars.get_paths():
        x = round(float(p.vertices[:, 0].mean()))
        tops[x] = max(tops.get(x, 0.0), float(p.vertices[:, 1].max()))
    assert [tops[i] for i in range(len(rows))] == pytest.approx([t for _, t, _ in rows])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        k.value for k in CrossingKind if any(p.get(k) for _, _, p in rows)
    ]


def test_plot_costs_sweep_marks_each_crossover(figure) -> None:
    s = ordering_sweep(Event.PRIVILEGED_INSTRUCTION, base={Event.SYSCALL: 1},
                       configs=assist_configs(bare_metal()))
    ax = va.plot_costs(s, ax=figure.subplots())
    vertical = [ln for ln in ax.get_lines() if len(set(ln.get_xdata())) == 1]
    assert [ln.get_xdata()[0] for ln in vertical] == pytest.approx([0.6])
    curves = [ln for ln in ax.get_lines() if ln not in vertical]
    assert [list(ln.get_ydata()) for ln in curves] == [list(c) for c in s.costs]


def test_plot_costs_accepts_a_mapping_and_refuses_nothing(figure) -> None:
    ax = va.plot_costs({"a": 2.0, "b": 1.0}, ax=figure.subplots())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    with pytest.raises(ViewError):
        va.plot_costs([], ax=figure.add_subplot(2, 1, 2))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=5, max_size=5).filter(any), st.booleans())
def test_cost_rows_parts_sum_to_the_total(weights, assist) -> None:
    mix = dict(zip(EVENTS, weights))
    rows = va.cost_rows(mix, hardware_assist=assist)
    per_event = compare_architectures(normalize_mix(mix), hardware_assist=assist)
    assert [n for n, _, _ in rows] == [n for n, _ in per_event]
    assert [t for _, t, _ in rows] == pytest.approx([c for _, c in per_event])
    for _, total, parts in rows:
        assert sum(parts.values()) == pytest.approx(total)


# ---------------------------------------------------------------------------
# the explorers: pure views, and widgets driven without a frontend


def test_explorer_view_text_is_the_paths_table() -> None:
    fig, text = va._explorer_view("hosted", "io", False)
    path = event_path(stack_for("hosted"), "io")
    assert path.describe(DEFAULT_MODEL) in text
    assert "type 2" in text.splitlines()[0]
    assert len(fig.axes) == 1 and fig.axes[0].get_legend() is None  # the key is in the text
    _, text = va._explorer_view("hybrid", "syscall", False)
    assert "needs hardware virtualization" in text


def test_overhead_view_ranks_like_the_library() -> None:
    weights = {"compute": 0.5, "io": 0.3, "syscall": 0.2}
    _, text = va._overhead_view(weights, True)
    ranking = " < ".join(n for n, _ in compare_architectures(weights, hardware_assist=True))
    assert f"ranking: {ranking}" in text
    native_cost = workload_cost(native(), normalize_mix(weights))
    assert f"  native      {native_cost:>10,.1f}" in text
    _, text = va._overhead_view({"io": 1.0}, False)
    assert "hybrid (KVM) is left out" in text


def test_isolation_view_matches_simulate_fault() -> None:
    for arch in Architecture:
        stack = stack_for(arch, 3)
        out = simulate_fault(stack, "kernel_crash", in_=stack.guests[1])
        _, text = va._isolation_view(arch, "kernel_crash", 2)
        assert f"affected: {', '.join(out.affected)} ({len(out.affected)} of 3)" in text
    _, text = va._isolation_view("bare-metal", "vmm_crash")
    assert "not possible here" in text
    with pytest.raises(ViewError):
        va._isolation_view("bare-metal", "app_crash", 4)


def test_architecture_explorer_updates_on_each_control() -> None:
    w = va.architecture_explorer()
    seen = [(w.text.value, bytes(w.image.value))]
    assert seen[0][1].startswith(b"\x89PNG")
    w.controls["architecture"].value = "bare-metal"
    w.controls["event"].value = "privileged_instruction"
    assert "bare-metal" in w.text.value and "trap" in w.text.value
    seen.append((w.text.value, bytes(w.image.value)))
    w.controls["assist"].value = True
    assert "vm_exit" in w.text.value and "trap" not in w.text.value.split("colours:")[0]
    seen.append((w.text.value, bytes(w.image.value)))
    w.controls["architecture"].value = "hybrid"
    w.controls["assist"].value = False
    assert "needs hardware virtualization" in w.text.value
    assert len({t for t, _ in seen}) == len({i for _, i in seen}) == 3


def test_overhead_explorer_updates_ranking_and_handles_an_empty_mix() -> None:
    w = va.overhead_explorer()
    for name in ("compute", "syscall", "privileged_instruction", "tlb_miss"):
        w.controls[name].value = 0.0
    w.controls["io"].value = 1.0
    assert "ranking: os-level &lt; bare-metal &lt; hosted" in w.text.value
    before = bytes(w.image.value)
    w.controls["assist"].value = True
    assert "ranking: os-level &lt; bare-metal &lt; hybrid &lt; hosted" in w.text.value
    assert bytes(w.image.value) != before
    w.controls["io"].value = 0.0
    assert "the mix is empty" in w.text.value


def test_overhead_explorer_uses_the_given_model() -> None:
    import dataclasses

    cheap = dataclasses.replace(DEFAULT_MODEL, world_switch=1000)
    w = va.overhead_explorer(model=cheap)
    for name in ("compute", "syscall", "privileged_instruction", "tlb_miss"):
        w.controls[name].value = 0.0
    w.controls["io"].value = 1.0
    w.controls["assist"].value = True
    # with a cheap world switch the hosted VMM beats KVM's trip through QEMU on I/O
    assert "bare-metal &lt; hosted &lt; hybrid" in w.text.value


def test_isolation_explorer_shows_who_is_affected() -> None:
    w = va.isolation_explorer(guests=4)
    w.controls["architecture"].value = "os-level"
    w.controls["fault"].value = "kernel_exploit"
    assert "(4 of 4)" in w.text.value
    w.controls["architecture"].value = "bare-metal"
    assert "(1 of 4)" in w.text.value
    w.controls["fault"].value = "hypervisor_crash"
    w.controls["guest"].value = 3
    assert "(4 of 4)" in w.text.value and "started in vm3" in w.text.value


def _pixels(png: bytes) -> Any:
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


@pytest.mark.parametrize("scene", [
    ("explorer", ("hosted", "io", False)), ("explorer", ("hybrid", "io", True)),
    ("explorer", ("hybrid", "syscall", False)), ("isolation", ("hybrid", "kernel_crash", 2, 3)),
    ("isolation", ("os-level", "kernel_crash", 1, 3)),
    ("isolation", ("bare-metal", "vmm_crash", 1, 3)),
    ("isolation", ("hybrid", "hypervisor_crash", 1, 3)),  # the host kernel and its inset module
    ("isolation", ("hosted", "hypervisor_exploit", 2, 3)),
])
def test_a_widget_draws_over_its_kept_stack_the_picture_of_a_new_figure(scene) -> None:
    """Blitting (the plain stack kept, a scene drawn over it) gives the pixels draw_stack gives."""
    kind, args = scene
    s = va._explorer_scene(*args) if kind == "explorer" else va._isolation_scene(*args)
    canvas = va._StackCanvas(s.stack)
    other = va._Scene(s.stack, "", failed=(s.stack.layers[-1].name,), title="another scene")
    first = _pixels(canvas.png(other))  # drawn and taken away again before the scene
    kept, fresh = _pixels(canvas.png(s)), _pixels(va._png(s.figure()))
    assert kept.shape == fresh.shape == first.shape
    assert (abs(kept - fresh).max(axis=2) > 40).sum() == 0  # anti-aliasing aside, the same
    assert (abs(kept - first).max(axis=2) > 40).sum() > 0  # and not the other scene's
    with pytest.raises(ViewError):
        canvas.png(va._explorer_scene("os-level", "io", False))


def test_a_failed_box_with_a_live_inset_is_drawn_not_copied() -> None:
    """The host kernel failed but not its kvm module (not a fault of the model): still exact."""
    stack = va._explorer_scene("hybrid", "io", True).stack
    scene = va._Scene(stack, "", failed=("host kernel", "vm1 kernel"), title="made up")
    kept, fresh = _pixels(va._StackCanvas(stack).png(scene)), _pixels(va._png(scene.figure()))
    assert (abs(kept - fresh).max(axis=2) > 40).sum() == 0


def test_the_kept_cost_chart_draws_the_picture_of_a_new_figure() -> None:
    chart = va._CostChart()
    for weights, assist in ((("io", 1.0),), True), ((("compute", 0.9), ("syscall", 0.1)), False):
        rows, base, text = va._overhead_scene(weights, assist)
        fig, words = va._overhead_view(dict(weights), assist)
        assert words == text
        kept, fresh = _pixels(chart.png(rows, base)), _pixels(va._png(fig))
        assert kept.shape == fresh.shape
        assert (abs(kept - fresh).max(axis=2) > 40).sum() == 0


def test_view_functions_make_figures_outside_pyplot() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    for fig, _ in (va._explorer_view("hybrid", "io", True), va._overhead_view({"io": 1}, False),
                   va._isolation_view("hosted", "vmm_crash")):
        assert va._png(fig).startswith(b"\x89PNG")
    assert plt.get_fignums() == before


# ---------------------------------------------------------------------------
# chapter 1's self-checks


def test_chapter_1_self_checks_are_registered_and_answerable() -> None:
    qs = questions(1)
    assert len(qs) == 10 and all(q.startswith("ch1.") for q in qs)
    for q in qs:
        answers = set()
        for seed in range(12):
            sol = solution(q, seed=seed)
            assert check_answer(q, sol, seed=seed).status == "correct", (q, seed)
            assert check_answer(q, ..., seed=seed).status == "unanswered"
            answers.add(repr(sol))
        assert len(answers) > 1, f"{q} always has the same answer"


def test_layer_count_question_agrees_with_a_formula() -> None:
    per_guest = {"hosted": (2, 3), "bare-metal": (2, 2), "os-level": (3, 1), "hybrid": (3, 3)}
    for seed in range(20):
        from virtcore.viz.selfcheck import ask

        data = ask("ch1.layers", seed=seed).data
        shared, each = per_guest[data["arch"]]
        assert solution("ch1.layers", seed=seed) == shared + each * data["n"]


def test_name_and_fraction_answers_are_forgiving_but_typed() -> None:
    assert va.as_name("Type-1") == va.as_name("type 1")
    assert va.as_fraction("0.6") == va.as_fraction(0.604) == 0.6
    assert check_answer("ch1.type", 1, seed=0).status == "wrong"  # a number is not a name
    assert check_answer("ch1.assist", 3, seed=0).status == "wrong"


def test_conceptual_checks_follow_the_model() -> None:
    """ch1.driver reads the device step off the path; ch1.kernel is N2; ch1.can-nest is N7."""
    from virtcore.viz.selfcheck import ask

    seen = set()
    for seed in range(40):
        data = ask("ch1.driver", seed=seed).data
        seen.add((data["stack"], solution("ch1.driver", seed=seed)))
    assert ("bare-metal", "hypervisor") in seen
    assert ("bare-metal (Xen-style)", "dom0 kernel") in seen
    assert ("hosted", "host kernel") in seen
    kernels = {ask("ch1.kernel", seed=s).data["product"]: solution("ch1.kernel", seed=s)
               for s in range(40)}
    assert kernels.get("Xen") == "xen" and kernels.get("VMware ESXi") == "vmkernel"
    assert [k for k, v in kernels.items() if v == "linux"] == ["Red Hat KVM"]
    for seed in range(20):
        names = ask("ch1.can-nest", seed=seed).data["products"]
        nest = solution("ch1.can-nest", seed=seed)
        assert set(nest) <= set(names)
        assert any(va.product(n).hypervisor_type.value == "type 1" for n in nest)


def test_benchmark_times_every_widget(monkeypatch) -> None:
    """The chapter-1 benchmark runs its callbacks (few calls here) and leaves no figure open."""
    import importlib
    from pathlib import Path

    import matplotlib.pyplot as plt

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    bench = importlib.import_module("benchmarks.bench_ch1_widgets")
    timings = bench.time_callbacks(calls=2)
    assert set(timings) == {"architecture_explorer", "overhead_explorer", "isolation_explorer"}
    for t in timings.values():
        assert 0 < t["pure_ms"] <= t["pure_max_ms"]
        assert 0 < t["callback_ms"] <= t["callback_max_ms"]
    assert plt.get_fignums() == []
