"""Views of the hw layer are functions of state; the stepper drives a machine; viz stays lazy."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtcore.errors import VirtcoreError
from virtcore.hw import ISA, TABLE, Machine, Privilege, TrapCause, VMExit, assemble
from virtcore.hw.events import ExitReason
from virtcore.hw.isa import FLAG_IF, FLAG_ZF, REG_NAMES
from virtcore.viz import ViewError, course, selfcheck
from virtcore.viz.hw import (
    Stepper,
    describe_event,
    describe_stop,
    isa_reference_table,
    labels_of,
    memory_html,
    memory_table,
    plot_trace,
    registers_html,
    registers_table,
    stepper,
)

REPO = Path(__file__).resolve().parents[2]

LOOP = """
        movi r1, 3
loop:   addi r1, -1
        cmpi r1, 0
        jnz  loop
        hlt
"""

HELLO = """
        .equ COM1, 0x3f8
        movi r1, 'h'
        out  COM1, r1
        movi r1, 'i'
        out  COM1, r1
        st   r1, [r0+slot]
        hlt
slot:   .word 0
"""


def _register_lines(text: str) -> dict[str, tuple[int, int]]:
    """Parse ``name  0xHEX  DEC`` lines of a registers table back into values."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"(r\d|sp)\s+0x([0-9a-f]{8})\s+(\d+)", line)
        if m:
            out[m.group(1)] = (int(m.group(2), 16), int(m.group(3)))
    return out


# ---------------------------------------------------------------------------
# registers


def test_registers_table_reflects_a_register_change() -> None:
    m = Machine.with_program("hlt")
    before = registers_table(m.cpu)
    m.cpu.regs[3] = 0x1234
    after = registers_table(m.cpu)
    assert _register_lines(before)["r3"] == (0, 0)
    assert _register_lines(after)["r3"] == (0x1234, 4660), after
    assert "0x00001234" in after.html and ">4660<" in after.html
    assert "0x00001234" in registers_html(m.cpu)


def test_registers_table_decodes_flags_and_mode() -> None:
    m = Machine.with_program("cli", mode="user")
    m.cpu.flags = FLAG_IF | FLAG_ZF
    text = registers_table(m.cpu)
    assert "ZF=1" in text and "IF=1" in text and "CF=0" in text, text
    assert "user (ring 3" in text
    m.cpu.mode = Privilege.KERNEL
    m.cpu.flags = 0
    text = registers_table(m.cpu)
    assert "IF=0" in text and "ZF=0" in text and "kernel (ring 0" in text


def test_registers_table_of_a_snapshot_equals_the_live_cpu() -> None:
    m = Machine.with_program(LOOP)
    m.run(4)
    assert registers_table(m.cpu.save_state()) == registers_table(m.cpu)


def test_registers_table_marks_what_changed() -> None:
    m = Machine.with_program("movi r2, 5\nhlt")
    before = m.cpu.save_state()
    m.run(1)
    marked = [ln.split()[0] for ln in registers_table(m.cpu, previous=before).splitlines()
              if ln.endswith("*")]
    assert marked == ["pc", "r2"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 0xFFFF_FFFF), min_size=8, max_size=8))
def test_registers_table_round_trips_every_value(values: list[int]) -> None:
    m = Machine.with_program("hlt")
    m.cpu.regs[:] = values
    parsed = _register_lines(registers_table(m.cpu))
    assert [parsed[name] for name in REG_NAMES] == [(v, v) for v in values]


# ---------------------------------------------------------------------------
# memory


def test_memory_table_reflects_memory_and_pc() -> None:
    p = assemble(HELLO)
    m = Machine.with_program(p)
    slot = p.symbols["slot"]
    row = next(ln for ln in memory_table(m.memory, slot, 1).splitlines() if "0x" in ln)
    assert "00000000" in row and "slot" not in row  # no labels asked for
    m.run()
    table = memory_table(m.memory, p.origin, len(p), pc=m.cpu.pc, labels=p)
    row = next(ln for ln in table.splitlines() if f"{slot:#06x}" in ln)
    assert "00000069" in row and "slot:" in row and "i..." in row, row
    marked = [ln for ln in table.splitlines() if "→" in ln]
    assert len(marked) == 1 and f"{m.cpu.pc:#06x}" in marked[0]
    assert "out 0x3f8, r1" in table


def test_memory_html_highlights_exactly_the_pc_row() -> None:
    m = Machine.with_program(LOOP)
    for pc in (0, 4, 8):
        html = memory_html(m.memory, 0, 5, pc=pc)
        rows = html.split("<tr")[2:]
        highlighted = [i for i, r in enumerate(rows) if "#fff3b0" in r]
        assert highlighted == [pc // 4]


def test_memory_table_outside_memory_is_a_view_error() -> None:
    m = Machine.with_program("hlt")
    with pytest.raises(ViewError):
        memory_table(m.memory, m.memory.size - 4, 2)
    with pytest.raises(VirtcoreError):
        memory_table(m.memory, 2, 1)


def test_labels_of_keeps_only_code_labels() -> None:
    p = assemble(".equ PORT, 0x3f8\nstart: nop\nagain: nop\nhlt")
    assert labels_of(p) == {0: "start", 4: "again"}


# ---------------------------------------------------------------------------
# ISA reference card


def test_isa_reference_table_has_the_columns_of_the_table() -> None:
    card = isa_reference_table()
    lines = card.splitlines()[2:]
    assert len(lines) == len(TABLE)
    for line, row in zip(lines, TABLE):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert cells[0] == f"`{row.mnemonic}`"
        assert (cells[4] == "yes") == row.privileged, line
        assert bool(cells[5]) == row.sensitive, line
    assert card.markdown == str(card)
    red = [r for r in card.html.split("<tr")[2:] if "#ffe0e0" in r]
    assert len(red) == sum(1 for r in TABLE if r.sensitive and not r.privileged) == 2


def test_isa_reference_table_of_chosen_rows() -> None:
    card = isa_reference_table([ISA["cli"]])
    assert len(card.splitlines()) == 3 and "`cli`" in card


# ---------------------------------------------------------------------------
# events in words


def test_describe_event_names_the_gp_trap() -> None:
    event = Machine.with_program("nop\nnop\nsti", mode="user").run().event
    text = describe_event(event)
    assert "#GP" in text and "vector 13" in text and "pc=0x0008" in text and "sti" in text


def test_describe_event_names_the_interrupting_device() -> None:
    m = Machine.with_program("""
            li   r1, handler
            wrcr tvec, r1
            movi r1, 50
            out  0x40, r1
            sti
    wait:   hlt
            jmp  wait
    handler: hlt
    """)
    result = m.run(200, trace=True)
    events = [e.event for e in result.trace if e.event is not None]
    assert events and events[0].cause is TrapCause.IRQ0
    assert "IRQ0" in describe_event(events[0]) and "timer" in describe_event(events[0])


def test_describe_event_of_a_vm_exit() -> None:
    text = describe_event(VMExit(ExitReason.IO_INSTRUCTION, 0x40, {"port": 0x3F8}))
    assert "IO_INSTRUCTION" in text and "30" in text and "port=0x3f8" in text


def test_describe_stop_distinguishes_the_reasons() -> None:
    m = Machine.with_program("loop: jmp loop")
    assert "did not halt in 7 steps" in describe_stop(m.run(7), m.cpu, budget=7)
    m = Machine.with_program("hlt")
    assert describe_stop(m.run(), m.cpu).startswith("Halted")
    m = Machine.with_program("cli", mode="user")
    assert "TVEC = 0" in describe_stop(m.run(), m.cpu)


# ---------------------------------------------------------------------------
# the stepper (logic)


def test_stepper_steps_and_counts() -> None:
    s = Stepper(Machine.with_program(LOOP), program=LOOP)
    s.step()
    assert (s.steps, s.machine.cpu.pc, s.machine.cpu.regs[1]) == (1, 4, 3)
    s.step(10)
    assert s.steps == 11
    s.run_to_halt()
    assert s.machine.cpu.halted and s.message.startswith("Halted")
    assert s.steps == 1 + 3 * 3 + 1


def test_stepper_stops_on_a_trap_and_refuses_to_go_on() -> None:
    s = Stepper(Machine.with_program("movi r1, 1\ncli\nnop", mode="user"))
    s.step(5)
    assert s.stopped and s.last_event.cause is TrapCause.GENERAL_PROTECTION
    assert "#GP" in s.event_text()
    retired = s.machine.cpu.retired
    assert s.step() is None and s.run_to_halt() is None
    assert s.machine.cpu.retired == retired and "Reset" in s.message


def test_stepper_budget_message() -> None:
    s = Stepper(Machine.with_program("loop: jmp loop"), budget=100)
    result = s.run_to_halt()
    assert result.steps == 100 and not s.stopped and "budget of 100" in s.message


def test_stepper_reset_rewinds_cpu_memory_and_serial() -> None:
    p = assemble(HELLO)
    m = Machine.with_program(p)
    s = Stepper(m, program=p)
    s.run_to_halt()
    assert m.serial.text == "hi" and m.memory.read_word(p.symbols["slot"]) == ord("i")
    s.reset()
    assert (s.steps, m.cpu.pc, m.cpu.regs[1], m.cpu.halted) == (0, 0, 0, False)
    assert m.serial.text == "" and m.memory.read_word(p.symbols["slot"]) == 0
    s.run_to_halt()
    assert m.serial.text == "hi"


def test_stepper_reset_with_a_factory_builds_a_new_machine() -> None:
    s = Stepper(lambda: Machine.with_program(HELLO))
    first = s.machine
    s.run_to_halt()
    s.reset()
    assert s.machine is not first and s.machine.serial.text == "" and s.steps == 0


def test_stepper_listing_follows_pc() -> None:
    s = Stepper(Machine.with_program(LOOP), program=LOOP)
    for _ in range(4):
        marked = [ln for ln in s.listing_text().splitlines() if "→" in ln]
        assert len(marked) == 1 and f"{s.machine.cpu.pc:#06x}" in marked[0]
        s.step()


def test_stepper_listing_shows_virtual_addresses_with_paging_on() -> None:
    p = assemble("start: movi r1, 7\naddi r1, 1\nhlt", origin=0x8000)
    m = Machine()
    m.memory.load_words(0x2000, p.words)        # the code lives in frame 2 ...
    alloc = m.frame_allocator(reserved=range(3))
    root = m.mmu.alloc_table(alloc)
    m.mmu.set_root(root)
    m.mmu.map(0x8000, 0x2000, allocator=alloc)  # ... and runs at virtual 0x8000
    m.enable_paging(root)
    m.cpu.pc = 0x8000
    s = Stepper(m, program=p)
    s.step()
    listing = s.listing_text()
    assert "movi r1, 7" in listing and "(not mapped)" not in listing
    assert next(ln for ln in listing.splitlines() if "→" in ln).split()[1] == "0x8004"
    m.mmu.unmap(0x8000)
    assert "(not mapped)" in s.listing_text()


def test_stepper_rejects_bad_arguments() -> None:
    with pytest.raises(ViewError):
        Stepper("not a machine")  # type: ignore[arg-type]
    with pytest.raises(ViewError):
        Stepper(Machine(), budget=0)


# ---------------------------------------------------------------------------
# the stepper widget (no frontend: callbacks called with Button.click())


def test_stepper_widget_buttons_advance_and_redraw() -> None:
    pytest.importorskip("ipywidgets")
    w = stepper(Machine.with_program(LOOP), program=LOOP)
    core = w.stepper
    registers, listing = w.children[3].children
    assert "step 0" in w.children[1].value
    w.buttons["step"].click()
    assert core.steps == 1 and core.machine.cpu.regs[1] == 3
    assert "step 1" in w.children[1].value
    assert "0x00000003" in registers.value
    highlighted = [r for r in listing.value.split("<tr") if "#fff3b0" in r]
    assert len(highlighted) == 1 and "0x0004" in highlighted[0]
    w.buttons["run10"].click()
    assert core.steps == 11
    w.buttons["halt"].click()
    assert core.machine.cpu.halted and "Halted" in w.children[2].value
    w.buttons["reset"].click()
    assert core.steps == 0 and core.machine.cpu.pc == 0 and "step 0" in w.children[1].value


def test_stepper_widget_shows_the_trap_in_words() -> None:
    pytest.importorskip("ipywidgets")
    w = stepper(Machine.with_program("nop\nhlt", mode="user"))
    w.buttons["run10"].click()
    assert "#GP" in w.children[4].value and "TVEC = 0" in w.children[2].value


def test_stepper_widget_callbacks_are_fast() -> None:
    pytest.importorskip("ipywidgets")
    w = stepper(Machine.with_program("loop: addi r1, 1\njmp loop"))
    for name in ("step", "run10", "halt", "reset"):
        start = time.perf_counter()
        w.buttons[name].click()
        assert time.perf_counter() - start < 0.1, name


# ---------------------------------------------------------------------------
# plots


def test_plot_trace_one_dot_per_step_coloured_by_mode() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = Machine.with_program("""
            li   r1, handler
            wrcr tvec, r1
            li   r1, user
            wrcr epc, r1
            li   r1, 0x10000
            wrcr estatus, r1
            iret
    handler: hlt
    user:   nop
            syscall
    """)
    result = m.run(trace=True)
    modes = [e.mode for e in result.trace]
    try:
        ax = plot_trace(result)
        dots = {c.get_label(): len(c.get_offsets()) for c in ax.collections}
        assert dots["kernel mode"] == modes.count(Privilege.KERNEL)
        assert dots["user mode"] == modes.count(Privilege.USER) == 2
        assert dots["trap / exit"] == 1
        _, given_ax = plt.subplots()
        assert plot_trace(result.trace, ax=given_ax) is given_ax
    finally:
        plt.close("all")


def test_plot_trace_needs_a_trace() -> None:
    with pytest.raises(ViewError):
        plot_trace(Machine.with_program("hlt").run())
    with pytest.raises(ViewError):
        plot_trace([])


# ---------------------------------------------------------------------------
# self-checks and the course map


@pytest.mark.parametrize("qid", selfcheck.questions(0))
def test_every_self_check_handles_placeholder_right_and_wrong(qid: str) -> None:
    for seed in range(3):
        unanswered = selfcheck.check_answer(qid, ..., seed=seed)
        assert unanswered.status == "unanswered" and "not answered yet" in repr(unanswered)
        assert selfcheck.check_answer(qid, None, seed=seed).status == "unanswered"
        right = selfcheck.solution(qid, seed=seed)
        assert selfcheck.check_answer(qid, right, seed=seed)
        assert selfcheck.check_answer(qid, object(), seed=seed).status == "wrong"
    assert selfcheck.ask(qid, seed=5) == selfcheck.ask(qid, seed=5)


def test_self_check_answers_are_computed_from_the_machine() -> None:
    problem = selfcheck.ask("ch0.registers", seed=2)
    m = Machine.with_program(problem.data["source"])
    m.run()
    assert selfcheck.solution("ch0.registers", seed=2) == m.cpu.regs[1]
    assert not selfcheck.check_answer("ch0.registers", m.cpu.regs[1] + 1, seed=2)
    trap = selfcheck.ask("ch0.trap-pc", seed=4)
    event = Machine.with_program(trap.data["source"], mode="user").run().event
    assert selfcheck.check_answer("ch0.trap-pc", (hex(event.pc), 13), seed=4)


def test_unknown_self_check_is_an_error() -> None:
    with pytest.raises(selfcheck.UnknownQuestionError):
        selfcheck.check_answer("ch0.nope", 1)


def test_chapter_of_follows_the_section_number() -> None:
    for claim in course.SYLLABUS:
        if claim.startswith("S"):
            assert course.chapter_of(claim).number == int(claim[1:].split(".")[0])
    assert course.claims_of(0) == []


def test_chapters_table_status_follows_the_notebooks_folder(tmp_path: Path) -> None:
    assert "coming" in course.chapters_table(tmp_path).splitlines()[2]
    (tmp_path / "00-start-here.ipynb").write_text("{}")
    row0 = course.chapters_table(tmp_path).splitlines()[2]
    assert "ready" in row0 and "00-start-here.ipynb" in row0
    assert "coming" in course.chapters_table(tmp_path).splitlines()[3]


# ---------------------------------------------------------------------------
# layering


def _modules_after(code: str) -> set[str]:
    script = code + "\nimport sys\nprint(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", script],
                         capture_output=True, text=True, check=True, cwd=REPO)
    return set(out.stdout.split())


HEAVY = {"matplotlib", "ipywidgets", "IPython", "networkx"}


def test_import_viz_pulls_no_display_package() -> None:
    loaded = _modules_after("import virtcore.viz")
    assert not {m.split(".")[0] for m in loaded} & HEAVY


def test_import_viz_modules_pulls_no_display_package() -> None:
    loaded = _modules_after(
        "import virtcore.viz.hw, virtcore.viz.selfcheck, virtcore.viz.course\n"
        "import virtcore.viz.selfcheck as s; s.check_answer('ch0.steps', 3)")
    assert not {m.split(".")[0] for m in loaded} & HEAVY


def test_nothing_outside_viz_imports_viz() -> None:
    loaded = _modules_after("import virtcore, virtcore.hw")
    assert not any(m.startswith("virtcore.viz") for m in loaded)
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "virtcore").rglob("*.py")
        if "viz" not in path.relative_to(REPO / "virtcore").parts
        and re.search(r"^\s*(from|import)\s+virtcore\.viz", path.read_text(encoding="utf-8"),
                      re.MULTILINE)
    ]
    assert offenders == []
