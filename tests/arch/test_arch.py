"""Tests for virtcore.arch: stacks, paths, costs, isolation, products, duties, nesting."""

from __future__ import annotations

import ast
import dataclasses
import math
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import virtcore.arch as arch
from virtcore.arch import (
    DEFAULT_MODEL,
    PRODUCTS,
    Architecture,
    ArchitectureError,
    CostModel,
    CrossingKind,
    Event,
    Fault,
    Host,
    HypervisorType,
    IncompatibleGuestError,
    LayerKind,
    Nesting,
    all_stacks,
    assist_configs,
    bare_metal,
    can_run,
    classify,
    compare_architectures,
    cost_breakdown,
    event_path,
    hosted,
    hybrid,
    kvm_nested,
    native,
    nested_cost,
    notes_corrections,
    ordering_sweep,
    os_level,
    path_cost,
    product,
    products,
    run_duties,
    simulate_fault,
    stack_for,
    stack_graph_data,
    type1_diagram,
    type2_diagram,
    workload_cost,
)
from virtcore.errors import ConfigurationError, VirtcoreError

ALL_EVENTS = [Event.COMPUTE, Event.SYSCALL, Event.PRIVILEGED_INSTRUCTION, Event.IO, Event.TLB_MISS]


def _configs():
    """Every (stack, hardware_assist) pair the model can price."""
    out = []
    for s in [*all_stacks(), native()]:
        for assist in (False, True):
            if s.requires_hardware_assist and not assist:
                continue
            out.append((s, assist))
    return out


def _names(ranking):
    return [name for name, _ in ranking]


def _is_subsequence(needle, haystack):
    it = iter(haystack)
    return all(any(x == y for y in it) for x in needle)


# -- package hygiene -----------------------------------------------------------------


def test_arch_imports_only_stdlib_and_allowed_virtcore_modules():
    """virtcore.arch must not import virtcore.hw, viz, networkx or any third-party package."""
    allowed_virtcore = {"virtcore.errors", "virtcore.rng", "virtcore.costs"}
    pkg = pathlib.Path(arch.__file__).parent
    import sys

    stdlib = set(sys.stdlib_module_names)
    for path in pkg.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                if top == "virtcore":
                    assert m.startswith("virtcore.arch") or m in allowed_virtcore, (path.name, m)
                else:
                    assert top in stdlib or top == "__future__", (path.name, m)


def test_errors_are_virtcore_errors():
    assert issubclass(ArchitectureError, ConfigurationError)
    assert issubclass(IncompatibleGuestError, VirtcoreError)
    with pytest.raises(ArchitectureError):
        event_path(bare_metal(), "teleport")
    with pytest.raises(ArchitectureError):
        product("no such hypervisor")
    with pytest.raises(ArchitectureError):
        stack_for("paravirtual")


# -- stacks --------------------------------------------------------------------------


def test_os_level_has_no_hypervisor_layer_and_one_shared_kernel():
    """S1.4: no hypervisor layer; every container runs on the same kernel."""
    s = os_level(containers=4)
    kinds = {layer.kind for layer in s.layers}
    assert LayerKind.HYPERVISOR not in kinds
    assert LayerKind.KERNEL_MODULE not in kinds
    assert LayerKind.GUEST_KERNEL not in kinds
    assert LayerKind.VMM_PROCESS not in kinds
    kernels = {s.role("kernel", g).name for g in s.guests}
    assert kernels == {"host kernel"}
    assert classify(s).type is HypervisorType.NONE


@pytest.mark.parametrize("n", [1, 2, 5])
def test_vm_stacks_give_each_guest_its_own_kernel(n):
    for s in (hosted(n), bare_metal(n), hybrid(n)):
        kernels = [s.role("kernel", g).name for g in s.guests]
        assert len(set(kernels)) == n
        assert all(s.layer(k).kind is LayerKind.GUEST_KERNEL for k in kernels)


def test_classification_is_read_off_the_stack():
    """S1.6 and N3: type by where the hypervisor sits."""
    assert classify(bare_metal()).type is HypervisorType.TYPE_1
    assert classify(bare_metal(embedded=True)).type is HypervisorType.TYPE_1
    assert classify(hosted()).type is HypervisorType.TYPE_2
    assert classify(type1_diagram()).type is HypervisorType.TYPE_1
    assert classify(type2_diagram()).type is HypervisorType.TYPE_2
    assert classify(native()).type is HypervisorType.NONE
    c = classify(hybrid())
    assert c.type is HypervisorType.DEBATED
    assert {v.type for v in c.views} == {HypervisorType.TYPE_1, HypervisorType.TYPE_2}
    assert all(v.argument and v.source for v in c.views)


def test_hosted_needs_a_host_os_and_bare_metal_does_not():
    assert hosted().host_os is not None
    assert bare_metal().host_os is None
    assert not any(layer.kind is LayerKind.HOST_KERNEL for layer in bare_metal().layers)


def test_stack_graph_data_is_plain_and_consistent():
    for s in [*all_stacks(3), native(), kvm_nested(3), type1_diagram(), type2_diagram()]:
        nodes, edges = stack_graph_data(s)
        names = [n for n, _ in nodes]
        assert names == [layer.name for layer in s.layers]
        assert len(set(names)) == len(names)
        for u, v, d in edges:
            assert u in names and v in names
            assert isinstance(d["kind"], str)
        for _, attrs in nodes:
            assert isinstance(attrs["level"], int) and isinstance(attrs["kind"], str)
        # every non-hardware layer rests on something
        uppers = {v for _, v, d in edges if d["kind"] != "manages"}
        assert set(names) - uppers == {s.role("hardware").name}


def test_bad_stack_arguments():
    with pytest.raises(ArchitectureError):
        hosted(guests=0)
    with pytest.raises(ArchitectureError):
        bare_metal(guests=["a", "a"])
    with pytest.raises(ArchitectureError):
        os_level(containers=["has space"])


# -- paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("assist", [False, True])
def test_hosted_guest_io_goes_guest_kernel_then_vmm_then_host_kernel(assist):
    """S1.8: VM kernel → hypervisor → host kernel, in that order, then the device."""
    p = event_path(hosted(), Event.IO, hardware_assist=assist)
    assert _is_subsequence(
        ["vm1 app", "vm1 kernel", "vm1 VMM", "host kernel", "hardware"], p.layers
    )
    first_host = p.layers.index("host kernel")
    assert "vm1 kernel" in p.layers[:first_host]
    assert "vm1 VMM" in p.layers[p.layers.index("vm1 kernel") : first_host]
    assert p.count(CrossingKind.WORLD_SWITCH) == 2
    assert p.layers[-1] == "vm1 app"


def test_bare_metal_io_never_touches_a_host_kernel():
    for assist in (False, True):
        p = event_path(bare_metal(), Event.IO, hardware_assist=assist)
        assert "hypervisor" in p.layers and "host kernel" not in p.layers
        assert p.count(CrossingKind.WORLD_SWITCH) == 0


def test_hybrid_io_goes_through_qemu_and_cpu_events_stay_in_the_kernel():
    p = event_path(hybrid(), Event.IO, hardware_assist=True)
    assert _is_subsequence(
        ["vm1 kernel", "kvm module", "vm1 QEMU", "host kernel", "hardware"], p.layers
    )
    q = event_path(hybrid(), Event.PRIVILEGED_INSTRUCTION, hardware_assist=True)
    assert "vm1 QEMU" not in q.layers and "kvm module" in q.layers


def test_hybrid_requires_hardware_assist():
    """S1.5: hybrid virtualization needs VT-x / AMD-V."""
    with pytest.raises(ArchitectureError, match="VT-x"):
        event_path(hybrid(), Event.IO)
    assert "hybrid" not in _names(compare_architectures({Event.IO: 1}))
    assert "hybrid" in _names(compare_architectures({Event.IO: 1}, hardware_assist=True))


def test_container_events_cross_no_virtualization_layer():
    s = os_level()
    assert Event.CONTAINER_SYSCALL is Event.SYSCALL
    for ev in ALL_EVENTS:
        for assist in (False, True):
            p = event_path(s, ev, hardware_assist=assist)
            assert not any(k.is_virtualization_overhead for k in p.kinds), (ev, assist)
    p = event_path(s, Event.CONTAINER_SYSCALL, guest="ct2")
    assert p.layers == ("ct2 app", "host kernel", "ct2 app")


@pytest.mark.parametrize(("stack", "assist"), _configs(), ids=lambda x: getattr(x, "name", str(x)))
def test_paths_are_connected_and_round_trips_return(stack, assist):
    for ev in ALL_EVENTS:
        p = event_path(stack, ev, hardware_assist=assist)
        assert p.steps
        for a, b in zip(p.steps, p.steps[1:]):
            assert a.dst == b.src, (ev, a, b)
        if ev in (Event.SYSCALL, Event.IO):
            assert p.layers[0] == p.layers[-1] == stack.role("app", p.guest).name


def test_tlb_miss_walks_24_references_only_in_hardware_assisted_vms():
    """facts §3.5: (4+1)(4+1)-1 = 24 page-table references for a 2-D walk."""
    for s in (hosted(), bare_metal()):
        assert event_path(s, Event.TLB_MISS).count(CrossingKind.MEMORY_REFERENCE) == 4
        assert event_path(s, Event.TLB_MISS, hardware_assist=True).count("memory_reference") == 24
    assert (
        event_path(os_level(), Event.TLB_MISS, hardware_assist=True).count("memory_reference") == 4
    )
    assert arch.tlb_miss_references(4, 4) == (4 + 1) * (4 + 1) - 1


# -- costs and orderings -------------------------------------------------------------


def test_notes_ordering_holds_for_io_heavy_work_without_assist():
    """S1.7/S1.8: OS-level fastest, bare-metal between, hosted slowest."""
    ranking = compare_architectures({Event.IO: 0.7, Event.COMPUTE: 0.3}, hardware_assist=False)
    assert _names(ranking) == ["os-level", "bare-metal", "hosted"]
    costs = [c for _, c in ranking]
    assert costs[0] < costs[1] < costs[2]


def test_hybrid_beats_hosted_on_io_with_assist():
    """S1.5: no redundant layer as in hosted, so faster."""
    ranking = dict(compare_architectures({Event.IO: 1}, hardware_assist=True))
    assert ranking["os-level"] < ranking["bare-metal"] < ranking["hybrid"] < ranking["hosted"]


@pytest.mark.parametrize("assist", [False, True])
def test_compute_only_mix_makes_the_differences_vanish(assist):
    costs = {c for _, c in compare_architectures({Event.COMPUTE: 1}, hardware_assist=assist)}
    assert len(costs) == 1


def test_hardware_assist_narrows_the_gap_for_system_calls():
    """Without assist a guest syscall traps to the monitor; with VT-x it goes straight in."""
    soft = dict(compare_architectures({Event.SYSCALL: 1}, hardware_assist=False))
    hard = dict(compare_architectures({Event.SYSCALL: 1}, hardware_assist=True))
    assert soft["os-level"] < soft["bare-metal"]
    assert hard["os-level"] == hard["bare-metal"] == hard["hosted"] == hard["hybrid"]


def test_hardware_assist_flips_for_privileged_instruction_heavy_work():
    """Software VMM wins on exit-heavy work, VT-x on syscall-heavy work (cf. Adams & Agesen)."""
    s = ordering_sweep(
        Event.PRIVILEGED_INSTRUCTION, base={Event.SYSCALL: 1}, configs=assist_configs(bare_metal())
    )
    assert len(s.crossovers) == 1
    c = s.crossovers[0]
    assert 0 < c.fraction < 1
    assert s.ranking(0.0).startswith("bare-metal, VT-x")
    assert s.ranking(1.0).startswith("bare-metal, software")
    assert s.changes
    # exact: the two straight lines meet at the crossover
    mix = {Event.PRIVILEGED_INSTRUCTION: c.fraction, Event.SYSCALL: 1 - c.fraction}
    soft = workload_cost(bare_metal(), mix, hardware_assist=False)
    hard = workload_cost(bare_metal(), mix, hardware_assist=True)
    assert math.isclose(soft, hard)


def test_io_sweep_ties_at_zero_and_separates_with_any_io():
    s = ordering_sweep(Event.IO, steps=5)
    assert " < " not in s.ranking(0.0)
    assert s.ranking(0.25) == "os-level < bare-metal < hosted"
    assert s.changes[0].fraction_before == 0.0
    rows = s.rows()
    assert len(rows) == 5 and set(rows[0]) == {"fraction", "hosted", "bare-metal", "os-level"}


def test_cost_model_override_changes_results():
    io = {Event.IO: 1}
    base_h = workload_cost(hosted(), io, hardware_assist=True)
    base_k = workload_cost(hybrid(), io, hardware_assist=True)
    cheap = dataclasses.replace(DEFAULT_MODEL, world_switch=0)
    h = workload_cost(hosted(), io, cheap, hardware_assist=True)
    assert base_h - h == 2 * DEFAULT_MODEL.world_switch
    assert base_h > base_k and h < workload_cost(hybrid(), io, cheap, hardware_assist=True)
    dear = dataclasses.replace(DEFAULT_MODEL, device=10 * DEFAULT_MODEL.device)
    assert workload_cost(os_level(), io, dear) > workload_cost(os_level(), io)


def test_cost_model_validation():
    with pytest.raises(ConfigurationError):
        CostModel(syscall=-1)
    with pytest.raises(ConfigurationError):
        CostModel(trap=float("nan"))
    with pytest.raises(ConfigurationError):
        CostModel(nesting_factor=0.5)
    assert set(CostModel.assumptions()) == {f.name for f in dataclasses.fields(CostModel)}


def test_bad_mixes_are_rejected():
    for bad in ({}, {Event.IO: -1}, {Event.IO: 0}, {"warp": 1}, {Event.IO: float("inf")}):
        with pytest.raises(ArchitectureError):
            workload_cost(bare_metal(), bad)


def test_breakdown_sums_to_cost():
    for stack, assist in _configs():
        for ev in ALL_EVENTS:
            p = event_path(stack, ev, hardware_assist=assist)
            assert math.isclose(sum(cost_breakdown(p).values()), path_cost(p))


cost_values = st.floats(min_value=0.5, max_value=1e5, allow_nan=False, allow_infinity=False)
models = st.builds(
    CostModel,
    instruction=cost_values,
    syscall=cost_values,
    trap=cost_values,
    vm_exit=cost_values,
    world_switch=cost_values,
    context_switch=cost_values,
    emulate=cost_values,
    device=cost_values,
    interrupt=cost_values,
    memory_reference=cost_values,
    ring_slot=cost_values,
    validate=cost_values,
    pte_update=cost_values,
    tlb_flush=cost_values,
)
weights = st.floats(min_value=0, max_value=1e3, allow_nan=False, allow_infinity=False)
mixes = st.dictionaries(st.sampled_from(ALL_EVENTS), weights, min_size=1).filter(
    lambda m: sum(m.values()) > 0
)


@settings(max_examples=60, deadline=None)
@given(model=models, idx=st.integers(0, len(_configs()) - 1), ev=st.sampled_from(ALL_EVENTS))
def test_path_cost_is_additive_and_positive(model, idx, ev):
    stack, assist = _configs()[idx]
    p = event_path(stack, ev, hardware_assist=assist)
    total = path_cost(p, model)
    assert total > 0
    assert math.isclose(total, sum(model.cost(s.kind) * s.count for s in p.steps))
    # splitting the path anywhere splits the cost
    k = len(p.steps) // 2
    head = sum(model.step_cost(s) for s in p.steps[:k])
    tail = sum(model.step_cost(s) for s in p.steps[k:])
    assert math.isclose(total, head + tail)


@settings(max_examples=60, deadline=None)
@given(a=mixes, b=mixes, idx=st.integers(0, len(_configs()) - 1))
def test_workload_cost_is_additive_over_mixes(a, b, idx):
    stack, assist = _configs()[idx]
    both = dict(a)
    for e, w in b.items():
        both[e] = both.get(e, 0) + w
    total = workload_cost(stack, both, hardware_assist=assist)
    parts = workload_cost(stack, a, hardware_assist=assist) + workload_cost(
        stack, b, hardware_assist=assist
    )
    assert math.isclose(total, parts, rel_tol=1e-9)


@settings(max_examples=100, deadline=None)
@given(mix=mixes, extra_io=st.floats(min_value=0, max_value=1e3), assist=st.booleans())
def test_adding_io_never_makes_hosted_cheaper_than_bare_metal(mix, extra_io, assist):
    with_io = dict(mix)
    with_io[Event.IO] = with_io.get(Event.IO, 0) + extra_io
    for m in (mix, with_io):
        h = workload_cost(hosted(), m, hardware_assist=assist)
        b = workload_cost(bare_metal(), m, hardware_assist=assist)
        assert h >= b
    gap = workload_cost(hosted(), with_io, hardware_assist=assist) - workload_cost(
        bare_metal(), with_io, hardware_assist=assist
    )
    gap0 = workload_cost(hosted(), mix, hardware_assist=assist) - workload_cost(
        bare_metal(), mix, hardware_assist=assist
    )
    assert gap >= gap0 - 1e-6 * max(1.0, abs(gap0))


# -- isolation -----------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["kernel_crash", "kernel_exploit"])
def test_container_kernel_fault_reaches_every_container(fault):
    s = os_level(containers=4)
    out = simulate_fault(s, fault, in_="ct3")
    assert out.affected == s.guests and out.survivors == ()
    assert out.host_affected
    assert out.effect == ("compromised" if fault == "kernel_exploit" else "crashed")


@pytest.mark.parametrize("builder", [hosted, bare_metal, hybrid])
@pytest.mark.parametrize("fault", ["kernel_crash", "kernel_exploit", "app_crash"])
def test_vm_kernel_fault_stays_inside_its_vm(builder, fault):
    s = builder(3)
    out = simulate_fault(s, fault, in_="vm2")
    assert out.affected == ("vm2",)
    assert out.survivors == ("vm1", "vm3")
    assert not out.host_affected


@pytest.mark.parametrize("builder", [hosted, bare_metal, hybrid, os_level])
@pytest.mark.parametrize("fault", ["hypervisor_crash", "hypervisor_exploit"])
def test_shared_layer_fault_takes_down_every_guest(builder, fault):
    s = builder(3)
    out = simulate_fault(s, fault)
    assert out.affected == s.guests and out.host_affected


def test_vmm_process_crash_affects_one_vm_and_bare_metal_has_none():
    for s in (hosted(3), hybrid(3)):
        out = simulate_fault(s, Fault.VMM_CRASH, in_="vm1")
        assert out.affected == ("vm1",)
    with pytest.raises(ArchitectureError):
        simulate_fault(bare_metal(3), "vmm_crash", in_="vm1")
    with pytest.raises(ArchitectureError):
        simulate_fault(bare_metal(3), "kernel_crash")  # needs in_
    with pytest.raises(ArchitectureError):
        simulate_fault(bare_metal(3), "kernel_crash", in_="vm9")


def test_kvm_module_crash_is_a_kernel_crash():
    s = hybrid(2)
    # the module is part of the kernel: failing either fails both
    out = simulate_fault(s, "hypervisor_crash")
    assert {"kvm module", "host kernel"} <= set(out.failed_layers)


def test_can_run_same_kernel_only_for_containers():
    linux = os_level(host_os="linux")
    assert can_run(linux, "ubuntu") and can_run(linux, "alpine")
    no = can_run(linux, "windows")
    assert not no and "kernel" in no.reason
    assert not can_run(os_level(host_os="windows"), "debian")
    assert can_run(hosted(host_os="windows"), "linux")
    assert can_run(hosted(host_os="linux"), "windows")
    assert can_run(bare_metal(), "windows") and can_run(hybrid(), "windows")
    with pytest.raises(ArchitectureError):
        can_run(linux, "plan9")


def test_host_checks_its_guests():
    h = Host("os-level", {"web": "ubuntu", "db": "centos"})
    assert h.stack.guests == ("web", "db") and h.host_os == "linux"
    assert simulate_fault(h, "kernel_crash", in_="db").affected == ("web", "db")
    with pytest.raises(IncompatibleGuestError, match="iis"):
        Host("os-level", {"web": "ubuntu", "iis": "windows"})
    vm_host = Host("hosted", {"a": "linux", "b": "windows"})
    assert vm_host.host_os == "windows"
    assert simulate_fault(vm_host, "kernel_crash", in_="b").survivors == ("a",)
    assert Host("bare-metal", ["x"]).host_os is None


# -- products ------------------------------------------------------------------------


def test_product_rows_are_consistent():
    names = [p.name for p in PRODUCTS]
    assert len(set(names)) == len(names)
    ids = {c.id for c in notes_corrections()}
    for p in PRODUCTS:
        t = p.hypervisor_type
        if t is HypervisorType.TYPE_1:
            assert p.architecture is Architecture.BARE_METAL and not p.needs_host_os, p.name
        if t is HypervisorType.TYPE_2:
            assert p.architecture is Architecture.HOSTED and p.needs_host_os, p.name
        if p.architecture is Architecture.OS_LEVEL:
            assert t is HypervisorType.NONE and p.needs_host_os
            assert p.nesting is Nesting.NOT_APPLICABLE
        if p.architecture is Architecture.HYBRID:
            assert t is HypervisorType.DEBATED
            assert {v.type for v in p.type_views} == {HypervisorType.TYPE_1, HypervisorType.TYPE_2}
        if p.embedded_in_firmware:
            assert t is HypervisorType.TYPE_1 and not p.needs_host_os
        assert bool(p.correction) == bool(p.correction_ids), p.name
        assert set(p.correction_ids) <= ids, p.name
        assert p.notes_says and p.notes_claim
        # the table agrees with the stack model of the same architecture
        assert classify(stack_for(p.architecture)).type is t, p.name
        for alias in p.aliases:
            assert product(alias) is p


def test_correction_n1_esxi_and_virtage_are_not_hosted():
    for name in ("VMware ESXi", "Hitachi Virtage"):
        p = product(name)
        assert "N1" in p.correction_ids
        assert p.architecture is not Architecture.HOSTED and not p.needs_host_os
        assert "主机型" in p.notes_says  # the notes put them there
    assert product("Hitachi Virtage").embedded_in_firmware
    assert "Hitachi Virtage" in products(embedded_in_firmware=True).names()


def test_correction_n2_type1_is_not_linux():
    n2 = products(correction="N2").names()
    assert {"Xen", "VMware ESXi"} <= set(n2)
    assert "VMkernel" in product("esxi").correction
    assert "Domain 0" in product("xen").correction


def test_correction_n3_kvm_both_views():
    kvm = product("kvm")
    assert kvm.hypervisor_type is HypervisorType.DEBATED and "N3" in kvm.correction_ids
    views = {v.type: v for v in kvm.type_views}
    assert "placement" in views[HypervisorType.TYPE_2].argument
    assert "function" in views[HypervisorType.TYPE_1].argument


def test_correction_n7_type1_hypervisors_nest_too():
    nesting_type1 = [p.name for p in products(hypervisor_type="type 1") if p.nesting.possible]
    assert {"Microsoft Hyper-V", "Xen", "VMware ESXi"} <= set(nesting_type1)
    assert product("kvm").nesting.possible
    assert "N7" in product("hyper-v").correction_ids


def test_correction_n8_spelling():
    assert product("Ctrix XenServer").name == "Citrix XenServer"
    assert product("Readhat KVM").name == "Red Hat KVM"
    assert "Ctrix" in product("Citrix XenServer").notes_says
    assert "Readhat" in product("Red Hat KVM").notes_says
    assert not any("Ctrix" in p.name or "Readhat" in p.name for p in PRODUCTS)


def test_notes_corrections_cover_the_chapter():
    by_id = {c.id: c for c in notes_corrections()}
    assert {"N1", "N2", "N3", "N7", "N8"} <= set(by_id)
    for c in by_id.values():
        assert c.products, c.id
        assert c.notes_say and c.correction


def test_products_filters_and_notes_lists():
    type2 = products(hypervisor_type="type 2").names()
    for name in ("VMware Workstation", "Microsoft Virtual PC", "Oracle VM VirtualBox"):
        assert name in type2
    assert products(architecture="os-level").names() == ["Virtuozzo"]
    assert product("qemu").emulator and "N6" in product("qemu").correction_ids
    assert product("Huawei FusionSphere").architecture is Architecture.BARE_METAL
    assert products(hypervisor_type="type 1", needs_host_os=True).names() == []
    assert "VMware Workstation" in repr(products())


# -- the two duties (S1.3) ------------------------------------------------------------


def _reference(program):
    """What one VM should see if it ran alone: the result value of each trapped instruction."""
    cr3, disk, out = 0, {}, []
    for text in program:
        ins = arch.parse_instr(text)
        if ins.kind is arch.OpKind.COMPUTE:
            continue
        if ins.op == "mov_cr3":
            cr3 = ins.a
            out.append(None)
        elif ins.op == "read_cr3":
            out.append(cr3)
        elif ins.op == "hlt":
            out.append(None)
        elif not 0 <= ins.a < 4:
            out.append("error")
        elif ins.op == "disk_read":
            out.append(disk.get(ins.a, 0))
        else:
            disk[ins.a] = ins.b
            out.append(None)
    return out


def _check_duties(programs, trace):
    parsed = {vm: [arch.parse_instr(i) for i in p] for vm, p in programs.items()}
    expected_traps = {
        (vm, pc)
        for vm, p in parsed.items()
        for pc, i in enumerate(p)
        if i.kind is not arch.OpKind.COMPUTE
    }
    got_traps = [(t.vm, t.pc) for t in trace.traps]
    # duty (a): every privileged / I/O instruction captured exactly once; nothing else
    assert sorted(got_traps) == sorted(expected_traps)
    n_compute = sum(1 for p in parsed.values() for i in p if i.kind is arch.OpKind.COMPUTE)
    assert trace.direct_count == n_compute
    # duty (b): every trap served once, its result delivered to the VM that issued it
    by_seq = {t.seq: t for t in trace.traps}
    assert sorted(r.seq for r in trace.results) == sorted(by_seq)
    for r in trace.results:
        assert r.vm == by_seq[r.seq].vm and r.pc == by_seq[r.seq].pc
    for vm, p in programs.items():
        got = [("error" if r.error else r.value) for r in trace.inbox(vm)]
        assert got == _reference(p), vm


def test_duties_route_results_to_the_right_vm():
    programs = {
        "vm1": ["add", "mov_cr3 0x1000", "disk_write 0 11", "load", "disk_read 0", "read_cr3"],
        "vm2": ["disk_write 0 22", "mov_cr3 0x2000", "disk_read 0", "read_cr3", "hlt"],
        "vm3": ["disk_read 0", "disk_write 3 33", "disk_read 3", "disk_read 4"],
    }
    for seed in range(5):
        for policy in ("fifo", "round_robin"):
            t = run_duties(programs, seed=seed, policy=policy)
            _check_duties(programs, t)
    t = run_duties(programs, seed=0)
    assert t.inbox("vm3")[-1].error  # block 4 is outside a 4-block disk: a value, not an exception
    assert dict(t.final_cr3) == {"vm1": 0x1000, "vm2": 0x2000, "vm3": 0}


def test_duties_queue_really_holds_several_vms():
    programs = {f"vm{i}": ["disk_read 0"] * 3 for i in range(4)}
    t = run_duties(programs, seed=1)
    assert any(e.action == "trap" and e.detail.count("#") >= 3 for e in t.events)
    _check_duties(programs, t)


def test_duties_reject_bad_programs():
    with pytest.raises(ArchitectureError):
        run_duties({"vm1": ["jump 3"]})
    with pytest.raises(ArchitectureError):
        run_duties({"vm1": ["disk_write 1"]})
    with pytest.raises(ArchitectureError):
        run_duties({"vm1": ["add"]}, policy="lottery")


instr_texts = st.one_of(
    st.sampled_from(["add", "load", "read_cr3", "hlt"]),
    st.integers(0, 0xFFFF).map(lambda v: f"mov_cr3 {v}"),
    st.integers(0, 5).map(lambda b: f"disk_read {b}"),
    st.tuples(st.integers(0, 5), st.integers(0, 999)).map(lambda t: f"disk_write {t[0]} {t[1]}"),
)


@settings(max_examples=60, deadline=None)
@given(
    programs=st.dictionaries(
        st.sampled_from(["a", "b", "c", "d"]), st.lists(instr_texts, max_size=8), min_size=1
    ),
    seed=st.integers(0, 2**32),
    policy=st.sampled_from(["fifo", "round_robin"]),
)
def test_duties_property(programs, seed, policy):
    _check_duties(programs, run_duties(programs, seed=seed, policy=policy))


def test_duties_are_deterministic_per_seed():
    programs = {"x": ["disk_write 0 1", "disk_read 0"], "y": ["mov_cr3 5", "read_cr3"]}
    assert run_duties(programs, seed=9).events == run_duties(programs, seed=9).events


# -- nesting (S1.10) -----------------------------------------------------------------


def test_nesting_multiplies_only_virtualization_overhead():
    assert nested_cost(Event.COMPUTE, 3) == nested_cost(Event.COMPUTE, 0)
    f = DEFAULT_MODEL.nesting_factor
    p1 = nested_cost(Event.PRIVILEGED_INSTRUCTION, 1)
    assert nested_cost(Event.PRIVILEGED_INSTRUCTION, 2) == pytest.approx(f * p1)
    assert nested_cost(Event.PRIVILEGED_INSTRUCTION, 3) == pytest.approx(f * f * p1)
    io = [nested_cost(Event.IO, n) for n in range(4)]
    assert io == sorted(io) and len(set(io)) == 4
    # level 1 is exactly an ordinary KVM guest
    assert nested_cost(Event.IO, 1) == workload_cost(hybrid(), {Event.IO: 1}, hardware_assist=True)
    # even with no multiplication, each level's own I/O path runs through the level below
    flat = dataclasses.replace(DEFAULT_MODEL, nesting_factor=1)
    flat_io = [nested_cost(Event.IO, n, flat) for n in (1, 2, 3)]
    assert flat_io == sorted(flat_io) and len(set(flat_io)) == 3
    assert nested_cost(Event.PRIVILEGED_INSTRUCTION, 3, flat) == nested_cost(
        Event.PRIVILEGED_INSTRUCTION, 1, flat)


def test_nested_stack_is_kvm_in_kvm():
    s = kvm_nested(3)
    assert s.guests == ("L1", "L2", "L3")
    assert classify(s).type is HypervisorType.DEBATED
    assert s.role("monitor", "L3").name == "L2 kvm"
    out = simulate_fault(s, "kernel_crash", in_="L1")
    assert out.affected == ("L1", "L2", "L3")
    assert simulate_fault(s, "kernel_crash", in_="L3").affected == ("L3",)
    assert simulate_fault(s, "vmm_crash", in_="L2").affected == ("L2", "L3")
    with pytest.raises(ArchitectureError):
        kvm_nested(0)


def test_nested_guest_io_goes_through_every_level_down_to_L0():
    from virtcore.arch import CrossingKind, event_path, kvm_nested

    path = event_path(kvm_nested(2), "io", hardware_assist=True, guest="L2")
    layers = path.layers
    # L2's I/O exits to L1's KVM, L1's QEMU asks L1's kernel, whose own I/O exits to L0
    assert layers.index("L1 QEMU") < layers.index("L1 kernel") < layers.index("L0 kvm")
    assert "L0 QEMU" in layers and "L0 kernel" in layers
    device = [s for s in path.steps if s.kind is CrossingKind.DEVICE]
    assert [(s.src, s.dst) for s in device] == [("L0 kernel", "hardware")]
    one = event_path(kvm_nested(1), "io", hardware_assist=True, guest="L1")
    assert path.count(CrossingKind.VM_EXIT) > one.count(CrossingKind.VM_EXIT)


# -- bare metal, Xen-style (Domain 0 backends) -------------------------------------


def test_xen_style_io_goes_through_dom0_backend_and_event_channels():
    from virtcore.arch import bare_metal_xen

    s = bare_metal_xen(guests=2)
    p = event_path(s, Event.IO)
    assert "dom0 kernel" in p.layers
    # the device is driven by Domain 0, never by the hypervisor itself
    device_steps = [st for st in p if st.kind is CrossingKind.DEVICE]
    assert [(st.src, st.dst) for st in device_steps] == [("dom0 kernel", "hardware")]
    assert p.count("context_switch") == 2          # to Domain 0 and back
    assert p.count("ring_slot") == 4               # request and response, both sides
    assert p.count("pte_update") == 2 and p.count("tlb_flush") == 1   # grant map + unmap
    with_assist = event_path(s, Event.IO, hardware_assist=True)
    assert with_assist.count("trap") == 0 and with_assist.count("vm_exit") == 6  # 4 hypercalls


def test_xen_style_is_type_1_and_never_cheaper_than_native():
    from virtcore.arch import bare_metal_xen, native

    s = bare_metal_xen()
    assert classify(s).type.value == "type 1"
    for assist in (False, True):
        for ev in ALL_EVENTS:
            assert path_cost(event_path(s, ev, hardware_assist=assist)) >= path_cost(
                event_path(native(), ev))
    esx = path_cost(event_path(bare_metal(), Event.IO))
    xen = path_cost(event_path(s, Event.IO))
    assert esx < xen < path_cost(event_path(hosted(), Event.IO))


def test_a_dom0_crash_reaches_every_guest_a_guest_crash_only_itself():
    from virtcore.arch import bare_metal_xen

    s = bare_metal_xen(guests=3)
    assert simulate_fault(s, "backend_crash", in_="vm2").affected == ("vm1", "vm2", "vm3")
    assert simulate_fault(s, "kernel_crash", in_="vm2").affected == ("vm2",)
    with pytest.raises(ArchitectureError):
        simulate_fault(bare_metal(guests=2), "backend_crash", in_="vm1")


def test_arch_cost_model_is_the_course_cost_model():
    from virtcore.costs import DEFAULT_COSTS, Costs

    assert isinstance(DEFAULT_MODEL, Costs)
    for name in Costs.assumptions():
        assert getattr(DEFAULT_MODEL, name) == getattr(DEFAULT_COSTS, name)
    p = event_path(hosted(), Event.IO)
    assert path_cost(p, DEFAULT_COSTS) == path_cost(p, DEFAULT_MODEL)


def test_each_vm_reads_its_own_cr3_even_after_the_other_vm_wrote_its_own():
    programs = {"vm1": ["add", "mov_cr3 0x1000", "disk_write 0 7", "disk_read 0"],
                "vm2": ["disk_write 0 9", "load", "read_cr3", "disk_read 0"]}
    after = 0
    for seed in range(20):
        t = run_duties(programs, seed=seed)
        assert t.inbox("vm2")[1].value == 0          # vm2's own CR3, whatever the order
        if t.served_at("vm1", "mov_cr3") < t.served_at("vm2", "read_cr3"):
            after += 1                                  # ... including after vm1's write
    assert after >= 5


def test_no_virtualized_path_is_cheaper_than_native():
    """A fair baseline: every architecture pays at least what the bare machine pays."""
    from virtcore.arch import bare_metal_xen

    stacks = [*all_stacks(), bare_metal_xen(), bare_metal(embedded=True), kvm_nested(2)]
    for stack in stacks:
        for assist in (False, True):
            if stack.requires_hardware_assist and not assist:
                continue
            guest = stack.guests[-1]
            for ev in ALL_EVENTS:
                virt = path_cost(event_path(stack, ev, hardware_assist=assist, guest=guest))
                assert virt >= path_cost(event_path(native(), ev)), (stack.name, ev, assist)
