"""The CPU: semantics, privilege, traps as values, guest mode, and the block
translator agreeing with the reference interpreter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtcore.hw import (
    CR,
    VMCS,
    ExitReason,
    Machine,
    Privilege,
    StopReason,
    Trap,
    TrapCause,
    VMExit,
    assemble,
)
from virtcore.hw.isa import FLAG_IF, FLAG_RESERVED, ISA, SP, encode
from virtcore.hw.paging import PagingConfig


def run(src: str, mode: str = "kernel", steps: int = 10_000, **kw):
    m = Machine.with_program(src, mode=mode, **kw)
    return m, m.run(steps)


# -- ordinary instructions ---------------------------------------------------

def test_arithmetic_wraps_at_32_bits():
    m, r = run("li r1, 0xffffffff\n movi r2, 2\n add r1, r2\n movi r3, -1\n mul r3, r3\n hlt")
    assert r.reason is StopReason.HALTED
    assert m.cpu.regs[1] == 1
    assert m.cpu.regs[3] == 1  # (-1 * -1) mod 2**32


def test_logic_and_shifts():
    m, _ = run("li r1, 0xf0f0\n li r2, 0xff00\n mov r3, r1\n and r3, r2\n mov r4, r1\n"
               " xor r4, r2\n movi r5, 4\n mov r6, r1\n shl r6, r5\n shr r1, r5\n hlt")
    assert m.cpu.regs[3] == 0xF000
    assert m.cpu.regs[4] == 0x0FF0
    assert m.cpu.regs[6] == 0xF0F00
    assert m.cpu.regs[1] == 0xF0F


@pytest.mark.parametrize(("a", "b", "taken"), [
    (1, 2, {"jlt"}), (2, 1, {"jge"}), (3, 3, {"jz", "jge"}),
    (-1, 1, {"jlt"}), (0x7FFF, -0x8000, {"jge"}),
])
def test_conditional_branches_follow_signed_compare(a, b, taken):
    for jcc in ("jz", "jnz", "jlt", "jge"):
        m, _ = run(f"movi r1, {a}\n movi r2, {b}\n movi r0, 0\n cmp r1, r2\n {jcc} yes\n hlt\n"
                   "yes: movi r0, 1\n hlt")
        expect = jcc in taken or (jcc == "jnz" and a != b)
        assert m.cpu.regs[0] == int(expect), (a, b, jcc)


def test_call_ret_push_pop_use_the_stack():
    m, r = run("""
        movi r1, 5
        call double
        push r1
        pop  r2
        hlt
    double: add r1, r1
        ret""")
    assert r.reason is StopReason.HALTED
    assert m.cpu.regs[1] == 10 and m.cpu.regs[2] == 10
    assert m.cpu.regs[SP] == m.memory.size


def test_load_store_round_trip():
    m, _ = run("li r5, 0x2000\n li r1, 0xdeadbeef\n st r1, [r5+8]\n ld r2, [r5+8]\n hlt")
    assert m.cpu.regs[2] == 0xDEADBEEF
    assert m.memory.read_word(0x2008) == 0xDEADBEEF


# -- traps are values ------------------------------------------------------------

@pytest.mark.parametrize("mnemonic", [i.mnemonic for i in ISA.values() if i.privileged])
def test_every_privileged_instruction_traps_in_user_mode(mnemonic):
    row = ISA[mnemonic]
    word = encode(mnemonic, imm=CR.CR3 if "cr" in row.operands else 0)
    m = Machine()
    m.memory.write_word(0, word)
    m.cpu.mode = Privilege.USER
    r = m.run(10)
    assert r.reason is StopReason.TRAP
    assert isinstance(r.event, Trap)
    assert r.event.cause is TrapCause.GENERAL_PROTECTION
    assert r.event.pc == 0 and m.cpu.pc == 0  # the trapping instruction is not skipped
    assert m.cpu.retired == 0


def test_popf_in_user_mode_silently_keeps_IF():
    src = "movi r1, 0\n push r1\n popf\n pushf\n pop r2\n hlt"
    m = Machine.with_program(src, mode="user")
    m.cpu.intr = True
    r = m.run(5)
    assert r.reason is StopReason.BUDGET  # no trap: the popf "worked"
    assert m.cpu.intr is True  # ...but IF did not change
    assert m.cpu.regs[2] & FLAG_IF
    k = Machine.with_program(src)
    k.cpu.intr = True
    k.run(5)
    assert k.cpu.intr is False  # in kernel mode popf does clear IF
    assert k.cpu.regs[2] == FLAG_RESERVED


def test_invalid_opcode_misaligned_and_bus_error_traps():
    m = Machine()
    m.memory.write_word(0, 0xFF000000)
    assert m.run(5).event.cause is TrapCause.INVALID_OPCODE
    _, r = run("movi r5, 2\n ld r1, [r5]\n hlt")
    assert r.event.cause is TrapCause.ALIGNMENT_CHECK and r.event.address == 2
    _, r = run("li r5, 0x7ff00000\n ld r1, [r5]\n hlt")
    assert r.event.cause is TrapCause.MACHINE_CHECK


def test_trap_delivered_to_kernel_handler_and_iret():
    src = """
        li   r1, handler
        wrcr tvec, r1
        li   r1, user
        wrcr epc, r1
        li   r1, 0x10000      ; ESTATUS_USER: return to user mode
        wrcr estatus, r1
        iret
    user:
        movi r0, 7
        syscall               ; ask the kernel
        movi r3, 1
        cli                   ; privileged: #GP
        hlt
    handler:
        rdcr r2, cause
        cmpi r2, 0x80
        jnz  gp
        rdcr r4, epc
        addi r4, 4            ; step over the syscall, as xv6 does
        wrcr epc, r4
        add  r6, r0
        iret
    gp: hlt
    """
    m, r = run(src)
    assert r.reason is StopReason.HALTED
    assert m.cpu.regs[6] == 7  # the system call was served
    assert m.cpu.regs[3] == 1  # user code resumed after syscall
    assert m.cpu.crs[CR.CAUSE] == TrapCause.GENERAL_PROTECTION
    assert m.cpu.mode is Privilege.KERNEL
    assert m.cpu.trap_counts[TrapCause.SYSCALL] == 1


def test_step_budget_is_respected_by_an_infinite_loop():
    m, r = run("loop: jmp loop", steps=12345)
    assert r.reason is StopReason.BUDGET and r.steps == 12345 and m.cpu.retired == 12345


def test_trap_storm_still_consumes_budget():
    # handler at an address that is not RAM: every delivery faults again
    m = Machine.with_program("li r1, 0x7ff00000\n wrcr tvec, r1\n syscall")
    r = m.run(1000)
    assert r.reason is StopReason.BUDGET


# -- devices and interrupts ----------------------------------------------------

def test_timer_interrupt_wakes_hlt_and_is_delivered():
    src = """
        li   r1, handler
        wrcr tvec, r1
        movi r1, 100
        out  0x40, r1          ; timer period: 100 ticks
        sti
    idle: hlt
        cmpi r6, 3
        jnz idle
        cli
        hlt
    handler:
        addi r6, 1
        iret
    """
    m, r = run(src)
    assert r.reason is StopReason.HALTED
    assert m.cpu.regs[6] == 3
    assert m.cpu.trap_counts[TrapCause.IRQ0] == 3
    assert m.cpu.clock >= 300


def test_interrupt_without_handler_returns_to_caller():
    m, r = run("movi r1, 50\n out 0x40, r1\n sti\n loop: jmp loop")
    assert r.reason is StopReason.TRAP and r.event.cause is TrapCause.IRQ0
    assert m.cpu.clock == 2 + 50  # programmed on tick 2, fires 50 ticks later


# -- guest mode ---------------------------------------------------------------------

def test_guest_mode_exits_on_io_hlt_cr3_and_vmcall():
    m = Machine.with_program("""
        movi r1, 'A'
        out  0x3f8, r1
        cli                    ; runs natively in guest kernel mode
        rdcr r2, cr3
        hcall
        hlt
    """)
    m.cpu.enter_guest(VMCS())
    reasons = []
    for _ in range(10):
        r = m.run(100)
        if r.reason is not StopReason.VMEXIT:
            break
        reasons.append(r.event.reason)
        m.cpu.pc += r.event.instruction_length  # the VMM emulates and advances
    assert reasons == [ExitReason.IO_INSTRUCTION, ExitReason.CR_ACCESS, ExitReason.VMCALL,
                       ExitReason.HLT]
    assert m.serial.text == ""  # the guest never touched the real port


def test_io_exit_qualification_names_port_and_value():
    m = Machine.with_program("movi r1, 0x41\n out 0x3f8, r1")
    m.cpu.enter_guest(VMCS())
    ev = m.run(10).event
    assert isinstance(ev, VMExit)
    assert ev.qualification == {"port": 0x3F8, "size": 4, "direction": "out", "value": 0x41}


def test_exception_bitmap_turns_guest_gp_into_an_exit():
    m = Machine.with_program("cli", mode="user")
    m.cpu.enter_guest(VMCS(exception_bitmap={TrapCause.GENERAL_PROTECTION}))
    ev = m.run(10).event
    assert ev.reason is ExitReason.EXCEPTION_NMI and ev.qualification["vector"] == 13


# -- the translator agrees with the reference interpreter ------------------------

_ORDINARY = ["mov", "movi", "addi", "add", "sub", "mul", "and", "or", "xor", "shl", "shr",
             "cmp", "cmpi", "ld", "st", "push", "pop", "jz", "jnz", "jlt", "jge", "jmp",
             "lui", "ori", "nop", "call", "ret", "popf", "pushf", "syscall"]


@st.composite
def programs(draw):
    n = draw(st.integers(3, 24))
    words = []
    for i in range(n):
        m = draw(st.sampled_from(_ORDINARY))
        row = ISA[m]
        rd = draw(st.integers(0, 6))
        rs = draw(st.sampled_from([5, 5, 5, draw(st.integers(0, 7))]))
        if row.kind.name == "BRANCH" and "target" in row.operands:
            imm = draw(st.integers(-i, n - i)) & 0xFFFF
        elif "mem" in row.operands:
            imm = draw(st.sampled_from([0, 4, 8, -4, 2, 0x100])) & 0xFFFF
        else:
            imm = draw(st.integers(-40, 40)) & 0xFFFF
        kw = {}
        if "rd" in row.operands:
            kw["rd"] = rd
        if "rs" in row.operands or "mem" in row.operands:
            kw["rs"] = rs
        if {"imm", "uimm", "target", "mem"} & set(row.operands):
            kw["imm"] = imm
        words.append(encode(m, **kw))
    return words


def _machine(words, paging):
    m = Machine(memory_size=64 * 1024)
    m.memory.load_words(0x1000, words)
    m.cpu.pc = 0x1000
    m.cpu.regs[5] = 0x4000
    m.cpu.regs[SP] = 0x8000
    if paging:
        alloc = m.frame_allocator(reserved=range(9))
        root = alloc.alloc() * m.memory.frame_size
        m.mmu.root = root
        for page in range(0, 0x9000, 0x1000):
            m.mmu.map(page, page, allocator=alloc, user=page != 0x7000)
        m.enable_paging(root)
    return m


def _state(m):
    c = m.cpu
    return (tuple(c.regs), c.pc, c.flags, c.mode, c.retired, c.clock,
            tuple(m.memory.words[0x4000 // 4 - 64: 0x4000 // 4 + 128]),
            tuple(m.memory.words[0x7000 // 4: 0x8000 // 4]))


@settings(max_examples=150, deadline=None)
@given(programs(), st.booleans(), st.sampled_from(["kernel", "user"]),
       st.integers(1, 400))
def test_translated_run_equals_reference_interpreter(words, paging, mode, budget):
    fast, slow = _machine(words, paging), _machine(words, paging)
    for mm in (fast, slow):
        mm.cpu.mode = Privilege.USER if mode == "user" else Privilege.KERNEL
    slow.cpu.translated = False
    rf, rs = fast.run(budget), slow.run(budget)
    assert (rf.reason, rf.steps, rf.event) == (rs.reason, rs.steps, rs.event)
    assert _state(fast) == _state(slow)
    if paging:
        assert fast.mmu.tlb.lookups == slow.mmu.tlb.lookups
        assert fast.mmu.tlb.misses == slow.mmu.tlb.misses
        assert fast.cpu.itlb.tlb.lookups == slow.cpu.itlb.tlb.lookups
        assert fast.cpu.itlb.tlb.misses == slow.cpu.itlb.tlb.misses


def test_self_modifying_code_is_retranslated():
    src = """
        li   r5, patch
        li   r1, 0x02200063    ; movi r2, 99
        movi r3, 2
    again:
    patch: movi r2, 1
        addi r3, -1
        st   r1, [r5]          ; overwrite the instruction at `patch`
        cmpi r3, 0
        jnz again
        hlt
    """
    m, r = run(src)
    assert r.reason is StopReason.HALTED
    assert m.cpu.regs[2] == 99
    assert m.cpu.translator.invalidations >= 1


def test_trace_lists_each_instruction():
    m = Machine.with_program("movi r1, 1\n addi r1, 1\n hlt")
    r = m.run(trace=True)
    assert [e.text for e in r.trace] == ["movi r1, 1", "addi r1, 1", "hlt"]
    assert r.trace[1].regs[1] == 2
    assert "addi r1, 1" in str(r.trace[1])


def test_paging_tiny_teaching_config_runs_programs():
    cfg = PagingConfig.tiny()
    m = Machine(memory_size=2048, paging=cfg)
    prog = assemble("movi r1, 3\n loop: addi r1, -1\n cmpi r1, 0\n jnz loop\n hlt", origin=0x40)
    m.memory.load_words(0x40, prog.words)
    alloc = m.frame_allocator(reserved=range(8))
    root = alloc.alloc() * cfg.page_size
    m.mmu.root = root
    for va in range(0x40, prog.end, cfg.page_size):
        m.mmu.map(va + 0x100, va, allocator=alloc)  # run it at a different virtual address
    m.cpu.pc = 0x140
    m.enable_paging(root)
    r = m.run(100)
    assert r.reason is StopReason.HALTED and m.cpu.regs[1] == 0
    pages = {va // cfg.page_size for va in range(0x140, 0x140 + 4 * len(prog.words), 4)}
    assert m.cpu.itlb.tlb.misses == len(pages)  # one miss per code page touched


def test_fault_in_a_later_loop_iteration_keeps_registers_written_earlier():
    # r1 and r2 change in iteration 1; the load faults (misaligned) in iteration 3
    src = """
        li   r5, 0x2000
        movi r2, 0
    loop:
        ld   r3, [r5]
        addi r1, 5
        addi r5, 2
        addi r2, 1
        jmp  loop
    """
    fast = Machine.with_program(src)
    slow = Machine.with_program(src)
    slow.cpu.translated = False
    rf, rs = fast.run(100), slow.run(100)
    assert rf.event == rs.event and rf.event.cause is TrapCause.ALIGNMENT_CHECK
    assert fast.cpu.regs == slow.cpu.regs
    assert fast.cpu.regs[1] == 5 and fast.cpu.regs[2] == 1


def test_guest_with_ept_runs_in_its_own_frames_and_exits_on_unmapped_gpa():
    from virtcore.hw.paging import MMU

    m = Machine(memory_size=64 * 1024)
    # guest-physical 0x0000 -> host 0x8000 (code), 0x1000 -> host 0x9000 (data)
    prog = assemble("movi r1, 7\n li r5, 0x1000\n st r1, [r5]\n li r5, 0x3000\n ld r2, [r5]")
    m.memory.load_words(0x8000, prog.words)
    ept = MMU(m.memory, m.mmu.config)
    alloc = m.frame_allocator(reserved=range(10))
    ept.set_root(ept.alloc_table(alloc))
    ept.map(0x0000, 0x8000, allocator=alloc)
    ept.map(0x1000, 0x9000, allocator=alloc)
    ept.enabled = True
    m.cpu.enter_guest(VMCS(ept=ept))
    r = m.run(100)
    assert r.reason is StopReason.VMEXIT
    assert r.event.reason is ExitReason.EPT_VIOLATION
    assert r.event.qualification["gpa"] == 0x3000
    assert m.memory.read_word(0x9000) == 7  # the guest's store landed in its host frame
    assert m.memory.read_word(0x1000) == 0  # not at host-physical 0x1000


@pytest.mark.parametrize("translated", [True, False])
def test_bus_error_inside_a_block_is_delivered_to_the_handler(translated):
    src = """
        li   r1, handler
        wrcr tvec, r1
        li   r5, 0x7ff00000    ; no RAM, no device
        movi r2, 1
        ld   r3, [r5]          ; inside a translated block: machine check
        movi r2, 2
        hlt
    handler:
        rdcr r4, cause
        hlt
    """
    m = Machine.with_program(src)
    m.cpu.translated = translated
    r = m.run(100)
    assert r.reason is StopReason.HALTED
    assert m.cpu.regs[4] == TrapCause.MACHINE_CHECK
    assert m.cpu.regs[2] == 1  # the instruction after the faulting load never ran
    assert m.cpu.crs[CR.EPC] == 0x18  # the load: li(2) + wrcr + li(2) + movi words before it


def test_guest_written_cr3_never_raises_in_the_simulator():
    m, r = run("li r1, 0x1234\n wrcr cr3, r1\n hlt")  # low bits are flag bits: ignored
    assert r.reason is StopReason.HALTED
    assert m.mmu.root == 0x1000
    tiny = Machine.with_program("li r1, 0xffffffe0\n wrcr cr3, r1\n hlt", memory_size=2048,
                                paging=PagingConfig.tiny())
    r = tiny.run(10)
    assert r.reason is StopReason.TRAP and r.event.cause is TrapCause.GENERAL_PROTECTION


def test_halted_cpu_waiting_on_a_masked_line_still_ends():
    m = Machine.with_program("movi r1, 10\n out 0x40, r1\n sti\n hlt")
    m.irq.mask = 1  # timer line masked: the CPU can never wake
    r = m.run(50)
    assert r.reason is StopReason.BUDGET and r.steps == 50
