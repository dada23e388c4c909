"""The KVM walkthrough's views and self-checks, and its notebook without unicorn or /dev/kvm.

Views are functions of reports: every test runs a guest (or a comparison) with the library, then
checks the view shows exactly that — one row per exit or ioctl, one bar per path, the request
numbers of ``virtcore.kvm.api``.  The self-check answers are checked against independent
formulas (and, for errno values, against the real kernel where ``/dev/kvm`` works).  Importing
the view modules loads no display package.  The walkthrough itself must run where unicorn or a
usable ``/dev/kvm`` is missing: its code cells are executed in-process with each one taken away.
"""

from __future__ import annotations

import ctypes
import errno
import math
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import nbformat
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import virtcore.kvm.x86 as x86_backend
from virtcore.hw.asm import assemble
from virtcore.kvm import api as kvm_api
from virtcore.kvm import kvm_available, open_kvm, unicorn_available
from virtcore.kvm.api import (
    KVM_EXIT_HLT,
    KVM_EXIT_IO,
    ExitRecord,
    GuestMemory,
    kvm_regs,
    kvm_sregs,
    kvm_userspace_memory_region,
)
from virtcore.kvm.cli import run_guest
from virtcore.kvm.guests import (
    Guest,
    lwn,
    teaching_echo,
    teaching_hello,
    teaching_lwn,
    teaching_mmio,
    teaching_out_loop,
)
from virtcore.kvm.host import Host
from virtcore.kvm.qemu import (
    VIRTIO_NOTIFY_PORT,
    GuestIO,
    QemuRun,
    QemuVMM,
    TeachingVcpu,
    compare_block_io,
    compare_net_tx,
)
from virtcore.kvm.tcg import compare_tcg_kvm, io_sweep
from virtcore.kvm.virtio import GuestRAM, VirtioBlk
from virtcore.viz import ViewError, selfcheck
from virtcore.viz import kvm as vk
from virtcore.viz import selfcheck_kvm as sck

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "kvm-walkthrough.ipynb"
X86_OK = unicorn_available()[0]
REAL_OK = kvm_available()[0]

TEACHING_GUESTS = [teaching_lwn, teaching_hello, teaching_echo, teaching_mmio,
                   lambda: teaching_out_loop(7)]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


# ---------------------------------------------------------------------------
# ioctl and exit tables


@pytest.mark.parametrize("factory", TEACHING_GUESTS)
def test_exit_table_has_one_row_per_exit_with_its_reason_and_member(factory) -> None:
    report = run_guest(factory(), regs_per_exit=True)
    table = vk.exit_table(report)
    assert len(table.rows) == len(report.exits) > 0
    for row, rec in zip(table.rows, report.exits):
        assert (int(row[1]), row[2]) == (rec.reason, rec.name)
        if rec.reason == KVM_EXIT_IO:
            assert row[4] == f"port {rec.port:#x}"
            assert row[3] == ("out" if rec.direction == 1 else "in")
            assert row[7].split()[0] == rec.data.hex()
        elif rec.phys_addr is not None:
            assert row[4] == f"addr {rec.phys_addr:#x}"
    assert [r[-1] for r in table.rows] == [f"{r.rip:#x}" for r in report.regs_at_exit]
    assert table.head[-1] == "rip after"


def test_exit_table_without_registers_has_no_rip_column() -> None:
    report = run_guest(teaching_lwn())
    table = vk.exit_table(report)
    assert "rip after" not in table.head
    assert vk.exit_table(report.exits) == table
    assert table._repr_html_().count("<tr>") == 1 + len(report.exits)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 25))
def test_tables_follow_a_guest_with_n_exits(n) -> None:
    report = run_guest(teaching_out_loop(n))
    exits = vk.exit_table(report)
    calls = vk.ioctl_table(report)
    assert len(exits.rows) == n + 1 == len(report.exits)
    assert len(calls.rows) == len(report.ioctls)
    returned = [r[5] for r in calls.rows if r[2] == "KVM_RUN"]
    assert returned == [e.name for e in report.exits] == ["KVM_EXIT_IO"] * n + ["KVM_EXIT_HLT"]
    assert all(r[5] == "" for r in calls.rows if r[2] != "KVM_RUN")


def test_ioctl_table_shows_the_real_numbers_and_encodings() -> None:
    names = sorted(vk.IOCTL_FD)
    table = vk.ioctl_table(names)
    assert [r[2] for r in table.rows] == names
    for row in table.rows:
        number = getattr(kvm_api, row[2])
        assert int(row[3], 16) == number
        m = re.fullmatch(r"(_IO|_IOR|_IOW|_IOWR)\(0xAE, 0x([0-9a-f]{2})(?:, (\d+) B)?\)", row[4])
        assert m, row[4]
        direction = {"_IO": 0, "_IOW": 1, "_IOR": 2, "_IOWR": 3}[m.group(1)]
        size = int(m.group(3) or 0)
        assert kvm_api._IOC(direction, 0xAE, int(m.group(2), 16), size) == number
    fds = {r[2]: r[1] for r in table.rows}
    assert (fds["KVM_CREATE_VM"], fds["KVM_CREATE_VCPU"], fds["KVM_RUN"]) == ("system", "vm",
                                                                              "vcpu")


def test_ioctl_table_refuses_a_name_that_is_not_a_request() -> None:
    with pytest.raises(ViewError, match="KVM_FLY"):
        vk.ioctl_table(["KVM_RUN", "KVM_FLY"])


@pytest.mark.parametrize("struct", [kvm_userspace_memory_region, kvm_regs, kvm_sregs,
                                    kvm_api.kvm_segment])
def test_struct_table_lays_out_every_field(struct) -> None:
    table = vk.struct_table(struct)
    assert [r[0] for r in table.rows] == [f[0] for f in struct._fields_]
    ends = [int(r[1]) + int(r[2]) for r in table.rows]
    assert ends == sorted(ends) and ends[-1] <= ctypes.sizeof(struct)
    assert f"{ctypes.sizeof(struct)} bytes" in table.splitlines()[-1]
    assert "value" not in table.head


def test_struct_table_of_an_instance_shows_its_values() -> None:
    region = kvm_userspace_memory_region(slot=3, guest_phys_addr=0x5000, memory_size=0x2000,
                                         userspace_addr=0x7F00_0000_0000)
    values = {r[0]: r[4] for r in vk.struct_table(region).rows}
    assert values == {"slot": "3", "flags": "0", "guest_phys_addr": "0x5000",
                      "memory_size": "0x2000", "userspace_addr": "0x7f0000000000"}
    regs = vk.struct_table(kvm_regs(rip=0x100C, rax=10))
    assert [(r[0], r[1], r[4]) for r in regs.rows if r[0] in ("rax", "rip")] == [
        ("rax", "0", "0xa"), ("rip", "128", "0x100c")]
    with pytest.raises(ViewError):
        vk.struct_table(42)  # type: ignore[arg-type]


def test_compare_exits_marks_the_first_difference() -> None:
    a = run_guest(teaching_lwn())
    same = vk.compare_exits(a, run_guest(teaching_lwn()))
    assert [r[-1] for r in same.rows] == ["same"] * 3
    assert same.splitlines()[-1].startswith("identical: 3 exits")
    changed = [*a.exits[:1], ExitRecord(KVM_EXIT_IO, port=0x3F8, direction=1, size=4, count=1,
                                        data=b"5\0\0\0"), a.exits[2]]
    diff = vk.compare_exits(a, changed, labels=("x", "y"))
    assert [r[-1] for r in diff.rows] == ["same", "DIFFERENT", "same"]
    assert diff.head[1:3] == ("x", "y")
    assert diff.splitlines()[-1] == "the traces differ first at exit #2"
    shorter = vk.compare_exits(a, a.exits[:2])
    assert shorter.rows[-1][2] == "-"
    with pytest.raises(ViewError):
        vk.exit_table(["KVM_EXIT_HLT"])  # type: ignore[list-item]


@pytest.mark.skipif(not (REAL_OK and X86_OK), reason="needs a usable /dev/kvm and unicorn")
def test_model_and_real_kvm_traces_compare_identical() -> None:
    table = vk.compare_exits(run_guest(lwn()), run_guest(lwn(), backend="real"))
    assert [r[-1] for r in table.rows] == ["same"] * 3


# ---------------------------------------------------------------------------
# QEMU's exits


def test_vmm_exit_table_rows_are_the_trace_and_transitions_add_up() -> None:
    vcpu = TeachingVcpu("movi r1, 'o'\nout 0x3f8, r1\nin r2, 0x1f7\nout 0x1f0, r1\nhlt")
    run = QemuVMM(vcpu.memory).run(vcpu)
    table = vk.vmm_exit_table(run)
    assert len(table.rows) == len(run.trace) == run.stats.exits == 4
    assert [r[3] for r in table.rows] == [e.device for e in run.trace] == ["serial", "disk",
                                                                            "disk", "-"]
    assert sum(int(r[5]) for r in table.rows) == run.stats.transitions == 6  # hlt stays in KVM
    assert table.rows[-1][4] == "KVM (in-kernel irqchip)"
    assert f"{run.stats.transitions} kernel↔user transitions" in table.splitlines()[-1]


def test_vmm_exit_table_shows_kicks_handled_in_kvm() -> None:
    ram = GuestRAM(64 * 1024)
    vmm = QemuVMM(ram, trace_limit=2)
    vmm.add_virtio(VirtioBlk(ram, capacity_sectors=8), name="vblk", ioeventfd=True)
    gio = GuestIO(vmm)
    for _ in range(3):
        gio.outl(VIRTIO_NOTIFY_PORT, 0)
    run = QemuRun("max_exits", vmm.output, tuple(vmm.trace), vmm.stats, None)
    table = vk.vmm_exit_table(run)
    assert [(r[3], r[4], r[5]) for r in table.rows] == [("vblk", "KVM (ioeventfd)", "0")] * 2
    assert "3 exits (first 2 shown): 0 to QEMU, 3 in KVM" in table
    with pytest.raises(ViewError):
        vk.vmm_exit_table(run.stats)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# plots


@pytest.mark.parametrize("compare", [compare_block_io, compare_net_tx])
@pytest.mark.parametrize("batch", [1, 8])
def test_device_path_bars_are_the_exits_per_request(compare, batch) -> None:
    import matplotlib.axes

    cmp = compare(16, batch)
    ax = vk.plot_device_paths(cmp)
    assert isinstance(ax, matplotlib.axes.Axes)
    assert [p.get_height() for p in ax.patches] == [r.exits_per_request for r in cmp.rows]
    assert [t.get_text() for t in ax.get_xticklabels()] == [r.name for r in cmp.rows]
    ys = list(ax.latency_axes.lines[0].get_ydata())
    assert ys == pytest.approx([r.mean_latency_ns / 1000 for r in cmp.rows])
    colours = [matplotlib.colors.to_hex(p.get_facecolor()) for p in ax.patches]
    assert colours == [vk.PATH_COLOURS[r.name] for r in cmp.rows]


def test_device_path_plot_of_some_paths_on_a_given_axes() -> None:
    import matplotlib.pyplot as plt

    _, given_ax = plt.subplots()
    cmp = compare_block_io(8, 2, paths=("emulated", "virtio"))
    ax = vk.plot_device_paths(cmp, given_ax, title="two paths")
    assert ax is given_ax
    assert len(ax.patches) == 2
    assert ax.get_title() == "two paths"
    with pytest.raises(ViewError):
        vk.plot_device_paths(compare_tcg_kvm(iterations=10, io_every=0))  # type: ignore[arg-type]


@pytest.mark.parametrize("log", [True, False])
def test_tcg_kvm_plot_has_two_bars_per_workload(log) -> None:
    sweep = io_sweep((0, 50, 5), iterations=300)
    ax = vk.plot_tcg_kvm(sweep, log=log)
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 2 * len(sweep)
    assert heights == pytest.approx([c.tcg.time_ns / 1000 for c in sweep]
                                    + [c.kvm.time_ns / 1000 for c in sweep])
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == sorted(f"KVM {c.speedup:.1f}×" for c in sweep)
    assert ax.get_yscale() == ("log" if log else "linear")


def test_tcg_kvm_plot_takes_one_comparison_and_refuses_none() -> None:
    ax = vk.plot_tcg_kvm(compare_tcg_kvm(iterations=100, io_every=10))
    assert len(ax.patches) == 2
    with pytest.raises(ViewError):
        vk.plot_tcg_kvm([])


def test_importing_the_views_loads_no_display_package() -> None:
    script = ("import sys, virtcore.viz.kvm, virtcore.viz.selfcheck_kvm\n"
              "print(' '.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.split()
    loaded = {m.split(".")[0] for m in out}
    assert not loaded & {"matplotlib", "ipywidgets", "IPython", "networkx", "numpy"}
    assert "virtcore" in loaded


# ---------------------------------------------------------------------------
# self-checks


def test_the_walkthrough_questions_are_registered_in_order() -> None:
    ids = [c.qid for c in sck.CHECKS]
    assert ids == ["kvm.ioctl-number", "kvm.run-calls", "kvm.errno", "kvm.nice-share",
                   "kvm.needs-vtx", "kvm.tcg-exits", "kvm.virtio-exits", "kvm.full-or-para"]
    assert all(q in selfcheck.REGISTRY for q in ids)
    assert [q for q in selfcheck.questions(3) if q.startswith("kvm.")] == ids[:5]
    assert [q for q in selfcheck.questions(4) if q.startswith("kvm.")] == ids[5:]


@pytest.mark.parametrize("seed", range(0, 40, 3))
def test_conceptual_checks_follow_their_rules(seed: int) -> None:
    """kvm.needs-vtx: KVM only with the vendor's own extension switched on; kvm.full-or-para:
    the CPU is always fully virtualized under KVM, the device decides the second answer."""
    vtx = selfcheck.ask("kvm.needs-vtx", seed=seed).data
    expect = "kvm" if vtx["enabled"] and vtx["flag"] == {"Intel": "vmx", "AMD": "svm"}[
        vtx["vendor"]] else "tcg"
    assert selfcheck.solution("kvm.needs-vtx", seed=seed) == expect
    dev = selfcheck.ask("kvm.full-or-para", seed=seed).data["device"]
    cpu, io = selfcheck.solution("kvm.full-or-para", seed=seed)  # type: ignore[misc]
    assert cpu == "full"
    assert io == ("para" if "virtio" in dev else "pass-through" if "VFIO" in dev else "full")
    assert selfcheck.check_answer("kvm.full-or-para", ("full", io), seed=seed)


@pytest.mark.parametrize("qid", [c.qid for c in sck.CHECKS])
@pytest.mark.parametrize("seed", range(5))
def test_every_question_accepts_its_answer_and_rejects_others(qid, seed) -> None:
    problem = selfcheck.ask(qid, seed=seed)
    assert problem.text and selfcheck.ask(qid, seed=seed) == problem
    answer = selfcheck.solution(qid, seed=seed)
    assert selfcheck.check_answer(qid, answer, seed=seed).status == "correct"
    assert selfcheck.check_answer(qid, ..., seed=seed).status == "unanswered"
    assert selfcheck.check_answer(qid, object(), seed=seed).status == "wrong"


def _weight(nice: int) -> int:
    return {-5: 3121, 0: 1024, 5: 335, 10: 110}[nice]


@pytest.mark.parametrize("seed", range(12))
def test_answers_agree_with_independent_formulas(seed) -> None:
    data = {c.qid: selfcheck.ask(c.qid, seed=seed).data for c in sck.CHECKS}
    name = data["kvm.ioctl-number"]["name"]
    text = selfcheck.ask("kvm.ioctl-number", seed=seed).text
    m = re.search(r"_IO[RW]?\(KVMIO, 0x([0-9a-f]+)(?:, struct \w+\) — the structure has (\d+))?",
                  text)
    assert m, text
    direction = 0 if "_IO(" in m.group(0) else (2 if "_IOR" in m.group(0) else 1)
    expected = direction << 30 | int(m.group(2) or 0) << 16 | 0xAE << 8 | int(m.group(1), 16)
    assert selfcheck.solution("kvm.ioctl-number", seed=seed) == expected == getattr(kvm_api, name)

    source = data["kvm.run-calls"]["source"]
    passes = int(re.search(r"movi r2, (\d+)", source).group(1))
    body = source.split("loop:")[1].split("addi r2")[0]
    per_pass = len(re.findall(r"\b(out|in|st)\b", body))
    assert selfcheck.solution("kvm.run-calls", seed=seed) == passes * per_pass + 1

    d = data["kvm.nice-share"]
    vm = d["vcpus"] * _weight(d["nice"])
    share = 100 * vm / (vm + d["threads"] * _weight(d["pnice"]))
    assert selfcheck.solution("kvm.nice-share", seed=seed) == pytest.approx(share)

    d = data["kvm.tcg-exits"]
    prints = d["iterations"] // d["io_every"] if d["io_every"] else 0
    assert selfcheck.solution("kvm.tcg-exits", seed=seed) == (prints + 1, 0)

    d = data["kvm.virtio-exits"]
    assert selfcheck.solution("kvm.virtio-exits", seed=seed) == (
        5 * d["requests"], math.ceil(d["requests"] / d["batch"]))


def _errno_by_rules(data: dict) -> str:
    """The errno of the second call, from the rules of [KVM-API §4.35; KVM-MAIN; LOCAL]."""
    if data["kind"] == "vcpu":
        first, second = data["ids"]
        return "EINVAL" if second >= 4096 else "EEXIST" if second == first else "ok"
    (_, _, gpa0, size0), (slot, flags, gpa, size) = data["regions"]
    if flags & ~3 or size % 4096 or gpa % 4096:
        return "EINVAL"
    if size == 0:
        return "ok" if slot == 0 else "EINVAL"
    if slot == 0:
        return "EINVAL" if size != size0 else "ok"
    return "EEXIST" if gpa < gpa0 + size0 and gpa0 < gpa + size else "ok"


@pytest.mark.parametrize("seed", range(40))
def test_errno_answers_follow_the_rules_and_the_real_kernel(seed) -> None:
    data = dict(selfcheck.ask("kvm.errno", seed=seed).data)
    answer = selfcheck.solution("kvm.errno", seed=seed)
    assert answer == _errno_by_rules(data)
    if REAL_OK:
        assert answer == _errno_on_real_kvm(data)


def _errno_on_real_kvm(data: dict) -> str:
    kvm = open_kvm("real")
    vm = kvm.create_vm()
    mems = [GuestMemory(0x6000), GuestMemory(0x6000)]
    kept = []
    try:
        if data["kind"] == "vcpu":
            for vcpu_id in data["ids"]:
                kept.append(vm.create_vcpu(vcpu_id))
        else:
            for slot, flags, gpa, size in data["regions"]:
                vm.set_user_memory_region(slot, gpa, size, mems[min(slot, 1)].address, flags)
    except OSError as err:
        return errno.errorcode[err.errno]
    finally:
        for fd in (*kept, vm, kvm):
            fd.close()
    return "ok"


def test_errno_questions_cover_every_answer() -> None:
    answers = {selfcheck.solution("kvm.errno", seed=s) for s in range(30)}
    assert answers == {"ok", "EINVAL", "EEXIST"}


def test_answer_normalizers_are_forgiving_but_typed() -> None:
    assert sck.as_errno(errno.EINVAL) == sck.as_errno(" einval ") == "EINVAL"
    assert sck.as_errno(0) == sck.as_errno("OK") == "ok"
    for bad in (True, "EFOO", 10**6, 1.5):
        with pytest.raises(selfcheck.AnswerFormatError):
            sck.as_errno(bad)
    assert sck.as_percent("39.6%") == sck.as_percent(40) == 40
    for bad in (False, "lots", float("nan"), None):
        with pytest.raises(selfcheck.AnswerFormatError):
            sck.as_percent(bad)
    qid = "kvm.nice-share"
    right = selfcheck.solution(qid, seed=2)
    assert selfcheck.check_answer(qid, f"{right:.1f}%", seed=2)
    assert selfcheck.check_answer(qid, right + 3, seed=2).status == "wrong"


def test_run_calls_solver_matches_a_hand_driven_model() -> None:
    source = selfcheck.ask("kvm.run-calls", seed=7).data["source"]
    guest = Guest("x", "teaching", assemble(source, 0x1000).to_bytes())
    report = run_guest(guest, max_exits=1_000)
    assert report.final == "KVM_EXIT_HLT"
    assert report.exits[-1].reason == KVM_EXIT_HLT
    assert selfcheck.solution("kvm.run-calls", seed=7) == len(report.exits)


def test_nice_share_solver_agrees_with_the_scheduler() -> None:
    data = selfcheck.ask("kvm.nice-share", seed=1).data
    host = Host(pcpus=1)
    host.add_vm("vm", vcpus=data["vcpus"], nice=data["nice"])
    host.add_process("build", threads=data["threads"], nice=data["pnice"])
    measured = 100 * host.run(duration_us=2_000_000, seed=0).share("vm")
    assert abs(measured - selfcheck.solution("kvm.nice-share", seed=1)) < 1.5


# ---------------------------------------------------------------------------
# the walkthrough without unicorn or without /dev/kvm


def _run_cells(capsys) -> str:
    """Execute the walkthrough's code cells in one namespace; return what they printed."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    ns: dict = {"__name__": "__walkthrough__"}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            exec(compile(cell.source, f"<walkthrough cell {i}>", "exec"), ns)
    return capsys.readouterr().out


@pytest.mark.notebook
@pytest.mark.parametrize(("unicorn", "real"), [(False, False), (False, True), (True, False)])
def test_walkthrough_runs_without_unicorn_or_kvm(monkeypatch, capsys, unicorn, real) -> None:
    if real and not REAL_OK:
        pytest.skip("no usable /dev/kvm here")
    if not unicorn:
        monkeypatch.setattr(x86_backend, "_uc", None)
        monkeypatch.setattr(x86_backend, "_UC_ERROR", "unicorn taken away by the test")
        assert not unicorn_available()[0]
    elif not X86_OK:
        pytest.skip("unicorn is not installed")
    if not real:
        monkeypatch.setenv("VIRTCORE_KVM_DEVICE", "/nonexistent/kvm")
        assert not kvm_available()[0]
    out = _run_cells(capsys)
    assert "4\nKVM_EXIT_HLT" in out
    assert ("teaching-ISA version of the LWN guest" in out) is (not unicorn)
    assert ("Skipped: /nonexistent/kvm" in out) is (not real)
    if real and not unicorn:
        assert "not compared" in out


# ---------------------------------------------------------------------------
# the exit stepper and the qemu-kvm graph


def test_exit_step_rows_are_the_kvm_run_fields_of_each_exit() -> None:
    from virtcore.kvm.guests import teaching_echo

    report = run_guest(teaching_echo(), inputs=b"q", regs_per_exit=True)
    for i, rec in enumerate(report.exits):
        rows = {r[0]: r[1] for r in vk.render_exit_step(report, i).rows}
        assert rows["exit_reason"].startswith(f"{rec.reason} ({rec.name})")
        if rec.port is not None:
            assert rows["io.port"] == hex(rec.port) and rows["io.size"] == str(rec.size)
        assert rows["rip (KVM_GET_REGS)"] == hex(report.regs_at_exit[i].rip)
    with pytest.raises(ViewError):
        vk.render_exit_step(report, len(report.exits))


def test_exit_stepper_with_the_irqchip_ends_asleep_not_with_hlt() -> None:
    w = vk.exit_stepper(irqchip=True)
    assert [e.name for e in w.report.exits][-1] == "KVM_EXIT_INTR"
    w.buttons["last"].click()
    assert "KVM_MP_STATE_HALTED" in w.view.value and "EINTR" in w.view.value
    w.buttons["prev"].click()
    assert w.slider.value == len(w.report.exits) - 2


def test_qemu_kvm_graph_follows_the_running_model() -> None:
    ram = GuestRAM(64 * 1024)
    vmm = QemuVMM(ram)
    vmm.add_virtio(VirtioBlk(ram, capacity_sectors=8), name="vblk", ioeventfd=True)
    vmm.add_virtio(VirtioBlk(ram, capacity_sectors=8), name="vhost-blk", port=0xC060,
                   vhost=True)
    gio = GuestIO(vmm)
    gio.outl(VIRTIO_NOTIFY_PORT, 0)
    gio.outl(0x3F8, ord("x"), size=1)
    g = vk.qemu_kvm_graph(vmm, vcpus=2)
    assert {d["layer"] for _, d in g.nodes(data=True)} == {"guest", "user", "kernel", "hardware"}
    assert g.nodes["vhost-blk"]["layer"] == "kernel" and g.nodes["vblk"]["layer"] == "user"
    assert g.edges[f"ioeventfd {VIRTIO_NOTIFY_PORT:#x}", "QEMU I/O thread"]["count"] == 1
    assert g.edges["KVM", "ioeventfd 0xc060"]["count"] == 0  # vhost's eventfd: not kicked
    assert g.edges["ioeventfd 0xc060", "vhost-blk"]["count"] == 0
    assert g.edges["CPU 0/KVM", "serial"]["count"] == 1
    assert ("CPU 1/KVM", "/dev/kvm") in g.edges
    with pytest.raises(ViewError):
        vk.qemu_kvm_graph("not a vmm")
