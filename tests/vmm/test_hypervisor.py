"""VMs, virtual resources, trap-and-emulate via the handler table, scheduling (S1.3, S2)."""

from __future__ import annotations

import pytest

from virtcore.errors import ConfigurationError
from virtcore.hw import CR, Machine, Privilege
from virtcore.hw.isa import FLAG_IF
from virtcore.vmm import (
    VM,
    Action,
    HandlerTable,
    Hypercall,
    Hypervisor,
    Technique,
    UnknownVMError,
    VMMError,
    VMState,
)

HELLO = """
        movi r1, 'h'
        out  0x3f8, r1
        movi r1, 'i'
        out  0x3f8, r1
        cli
        hlt
"""


def test_guest_memory_is_contiguous_for_the_guest_but_host_frames_are_its_own():
    hv = Hypervisor()
    a = hv.create("a", 3, program=HELLO)
    b = hv.create("b", 3, program=HELLO)
    assert len(a.p2m) == len(b.p2m) == 3
    assert not set(a.p2m) & set(b.p2m), "two VMs share a host frame"
    assert 0 not in a.p2m + b.p2m, "frame 0 belongs to the hypervisor"
    assert a.p2m != [0, 1, 2], "the guest's physical page i is not host frame i"
    # the guest's physical address 0x1004 is host frame p2m[1] + 4
    a.write_word(0x1004, 0xABCD)
    assert hv.memory.read_word((a.p2m[1] << 12) + 4) == 0xABCD
    assert a.read_word(0x1004) == 0xABCD and b.read_word(0x1004) == 0
    # the VMM's page tables are in frames that are neither guest's
    assert not set(a.mem.vmm_frames) & set(a.p2m + b.p2m)


def test_each_vm_has_its_own_serial_port_and_the_real_one_stays_silent():
    hv = Hypervisor(quantum=3)  # small quantum: the two guests interleave
    a = hv.create("a", 1, program=HELLO.replace("'h'", "'A'"))
    b = hv.create("b", 1, program=HELLO.replace("'h'", "'B'"))
    summary = hv.run()
    assert a.console == "Ai" and b.console == "Bi"
    assert hv.machine.serial.output == b""
    assert {s.vm for s in summary.slices} == {"a", "b"} and len(summary.slices) > 2
    assert summary.states == {"a": VMState.SHUTOFF, "b": VMState.SHUTOFF}


def test_round_robin_gives_each_running_vm_one_quantum_per_round():
    hv = Hypervisor(quantum=40)
    for name in "xyz":
        hv.create(name, 1, program="loop: jmp loop")
    summary = hv.run(360)
    assert [s.vm for s in summary.slices] == list("xyz") * 3
    assert all(s.steps == 40 for s in summary.slices)
    assert {vm.clock for vm in hv.vms.values()} == {120}


def test_privileged_instructions_trap_and_are_emulated_on_the_virtual_cpu():
    hv = Hypervisor()
    vm = hv.create("k", 1, program="""
        li   r1, 0x1234
        wrcr cr2, r1
        rdcr r2, cr2
        sti
        in   r3, 0x3fd          ; the virtual UART's line status
        cli
        hlt
    """)
    hv.run()
    v = vm.vcpus[0]
    assert v.regs[2] == 0x1234 and v.crs[CR.CR2] == 0x1234
    assert v.regs[3] == 0x60  # THRE | TEMT, from the VM's own 16550
    assert not v.interrupts_enabled and v.done == "halted"
    assert vm.stats.by_instruction == {"wrcr": 1, "rdcr": 1, "sti": 1, "in": 1, "cli": 1,
                                       "hlt": 1}
    assert vm.stats.traps == 6 and vm.stats.direct == 2  # li = lui + ori
    # the real CPU never left user mode and never had a handler of its own
    assert hv.cpu.mode is Privilege.USER and hv.cpu.crs[CR.TVEC] == 0


def test_syscall_and_interrupts_are_reflected_to_the_guest_kernel():
    hv = Hypervisor()
    vm = hv.create("k", 2, program="""
        li   r1, handler
        wrcr tvec, r1
        movi r0, 7
        syscall                  ; the guest kernel's own handler must see it
        movi r1, 30
        out  0x40, r1            ; the VM's own timer
        sti
        hlt
        cli
        hlt
handler:
        rdcr r4, cause
        rdcr r5, epc
        addi r6, 1
        cmpi r4, 0x80
        jnz  irq
        addi r5, 4
        wrcr epc, r5
        iret
irq:    movi r1, 0
        out  0x40, r1
        iret
    """)
    hv.run()
    v = vm.vcpus[0]
    assert v.regs[6] == 2  # one syscall, one timer interrupt
    assert v.regs[4] == 32  # the last cause: IRQ 0
    assert v.done == "halted"
    assert vm.stats.interrupts == 1 and vm.stats.by_instruction["syscall"] == 1
    assert vm.idle > 0  # the hlt skipped time until the virtual timer fired


def test_privileged_instruction_in_guest_user_mode_goes_to_the_guest_kernel_as_gp():
    hv = Hypervisor()
    vm = hv.create("u", 2, program="""
        li   r1, handler
        wrcr tvec, r1
        li   r1, user
        wrcr epc, r1
        li   r1, 0x10002         ; ESTATUS: user mode, IF = 0
        wrcr estatus, r1
        iret
user:   cli                      ; #GP in (guest) user mode
        movi r0, 1
        hcall                    ; hypercalls from guest user space are refused too
        hlt
        syscall                  ; into the kernel for good
handler:
        rdcr r4, cause
        push r4
        cmpi r4, 0x80
        jnz  skip
        cli
        hlt
skip:   rdcr r5, epc
        addi r5, 4
        wrcr epc, r5
        iret
    """, on_violation="kill")
    hv.run(2000)
    assert vm.stats.reflected == 3
    assert vm.stats.by_instruction["cli"] == 1 and vm.stats.hypercalls == 0  # the kernel one
    assert vm.state is VMState.SHUTOFF and vm.vcpus[0].mode is Privilege.KERNEL
    stack = vm.memory_words()[-4:]
    assert stack == [0x80, 13, 0x82, 13]  # pushed: GP (cli), HYPERCALL, GP (hlt), SYSCALL


def test_a_guest_without_trap_handler_crashes_on_a_trap_like_bare_hardware_stops():
    hv = Hypervisor()
    vm = hv.create("nohandler", 1, program="movi r1, 3\n syscall\n hlt")
    hv.run()
    assert vm.state is VMState.CRASHED and vm.reason == "trap SYSCALL"
    assert vm.vcpus[0].pc == 4
    assert [e.op for e in hv.events.for_vm("nohandler")] == ["define", "start", "guest-crash"]


def test_touching_memory_beyond_the_guest_is_reflected_or_killed_never_done():
    prog = """
        li   r1, handler
        wrcr tvec, r1
        li   r2, 0x3000          ; host memory lives there — but not the guest's
        movi r3, 99
        st   r3, [r2+0]
        cli
        hlt
handler:
        rdcr r4, cause
        rdcr r5, epc
        addi r5, 4
        wrcr epc, r5
        iret
    """
    for policy in ("reflect", "kill"):
        hv = Hypervisor()
        before = list(hv.memory.words)
        vm = hv.create("g", 2, program=prog, on_violation=policy)
        own = set(vm.p2m) | set(vm.mem.vmm_frames)
        hv.run()
        assert vm.stats.violations == 1 and vm.violations[0][1] == 0x3000
        if policy == "reflect":
            assert vm.vcpus[0].regs[4] == 18 and vm.state is VMState.SHUTOFF  # #MC
        else:
            assert vm.state is VMState.CRASHED and vm.reason.startswith("killed")
        changed = {i * 4 >> 12 for i, (a, b) in enumerate(zip(before, hv.memory.words))
                   if a != b}
        assert changed <= own


def test_guest_paging_is_refused_by_the_relocation_vmm_with_a_reason():
    hv = Hypervisor()
    vm = hv.create("pg", 1, program="lui r1, 0x8000\n wrcr cr0, r1\n hlt")
    hv.run()
    assert vm.state is VMState.CRASHED and "CR0.PG" in vm.reason


def test_every_technique_runs_a_plain_guest_identically():
    outputs = set()
    for tech in Technique:
        hv = Hypervisor()
        vm = hv.create("t", 1, program=HELLO, technique=tech)
        hv.run()
        outputs.add((vm.console, vm.clock, vm.vcpus[0].pc))
        if tech is Technique.HARDWARE_ASSIST:
            assert vm.stats.traps == 0 and vm.stats.exits == 3  # out, out, hlt (cli is native)
        elif tech is Technique.BINARY_TRANSLATION:  # translated code: no trap at all
            assert (vm.stats.traps, vm.stats.exits, vm.stats.translated_ops,
                    vm.stats.callouts) == (0, 0, 1, 3)  # cli inline; out, out, hlt callouts
        else:
            assert vm.stats.exits == 0 and vm.stats.traps == 4
    assert outputs == {("hi", 6, 24)}


def test_vms_of_different_techniques_share_one_host():
    hv = Hypervisor(quantum=7)
    vms = [hv.create(t.name.lower(), 1, program=HELLO.replace("'h'", f"'{i}'"), technique=t)
           for i, t in enumerate(Technique)]
    hv.run()
    assert [vm.console for vm in vms] == ["0i", "1i", "2i", "3i"]


def test_multi_vcpu_vm_runs_each_vcpu_with_its_own_registers_and_stack():
    hv = Hypervisor(quantum=5)
    vm = hv.create("smp", 1, vcpus=3, program="""
        mov  r1, r0              ; r0 = vCPU index
        addi r1, '0'
        out  0x3f8, r1
        push r1                  ; each vCPU has its own stack
        cli
        hlt
    """)
    hv.run()
    assert sorted(vm.console) == ["0", "1", "2"]
    assert [v.regs[7] for v in vm.vcpus] == [4096 - 4, 4096 - 256 - 4, 4096 - 512 - 4]
    words = vm.memory_words()
    assert [words[(v.regs[7]) >> 2] for v in vm.vcpus] == [ord("0"), ord("1"), ord("2")]


def test_hypercalls_of_the_small_pv_abi():
    hv = Hypervisor()
    vm = hv.create("pv", 1, technique="pv", program=f"""
        movi r1, 'P'
        movi r0, {Hypercall.CONSOLE_WRITE}
        hcall
        movi r0, {Hypercall.IRQ_ENABLE}
        hcall
        movi r0, {Hypercall.SAVE_FLAGS}
        hcall
        mov  r2, r0
        movi r0, 99                 ; no such hypercall
        hcall
        mov  r3, r0
        movi r0, {Hypercall.SHUTDOWN}
        hcall
    """)
    hv.run()
    v = vm.vcpus[0]
    assert vm.console == "P" and v.done == "shutdown" and vm.state is VMState.SHUTOFF
    assert v.regs[2] & FLAG_IF
    assert v.regs[3] == (-38) & 0xFFFFFFFF  # -ENOSYS
    assert vm.stats.hypercalls == 5 and vm.stats.by_hypercall["CONSOLE_WRITE"] == 1


def test_handler_table_interface_and_checks():
    seen = []

    def loud_cli(vcpu, insn):
        seen.append((insn.mnemonic, insn.pc, vcpu.mode))
        vcpu.interrupts_enabled = False
        vcpu.pc += 4
        return Action.CONTINUE

    hv = Hypervisor(handlers=HandlerTable.reference().replace(cli=loud_cli))
    hv.create("g", 1, program="nop\n cli\n hlt")
    hv.run()
    assert seen == [("cli", 4, Privilege.KERNEL)]
    with pytest.raises(ConfigurationError, match="not callable"):
        HandlerTable({"cli": 3})
    # a missing handler stops the VM with a message naming the instruction
    hv = Hypervisor(handlers=HandlerTable.reference().without("sti"))
    vm = hv.create("g", 1, program="sti\n hlt")
    hv.run()
    assert vm.state is VMState.CRASHED and "no handler for 'sti'" in vm.reason
    # a handler must return an Action (or None)
    hv = Hypervisor(handlers=HandlerTable.reference().replace(sti=lambda v, i: "ok"))
    hv.create("g", 1, program="sti\n hlt")
    with pytest.raises(VMMError, match="returned 'ok'"):
        hv.run()


def test_host_out_of_frames_is_a_clear_error_and_keeps_nothing():
    hv = Hypervisor(Machine(memory_size=16 * 4096))
    free = hv.allocator.free_count
    hv.define("big", 20)
    with pytest.raises(VMMError, match="too few free frames"):
        hv.start("big")
    assert hv.allocator.free_count == free and hv.vm("big").state is VMState.DEFINED
    with pytest.raises(UnknownVMError):
        hv.vm("nope")


def test_destroy_and_shutdown_give_frames_back_and_keep_the_last_image():
    hv = Hypervisor()
    free = hv.allocator.free_count
    vm = hv.create("g", 4, program="movi r1, 5\n st r1, [r0+0x100]\n loop: jmp loop")
    hv.run(100)
    assert hv.allocator.free_count < free
    hv.shutdown("g")
    assert hv.allocator.free_count == free and vm.p2m == []
    assert vm.memory_words()[0x40] == 5
    hv.start("g")  # boots again from the image
    assert vm.clock == 0 and vm.state is VMState.RUNNING
    hv.destroy("g")                         # forced off: memory back, still defined
    assert hv.allocator.free_count == free and [r.state for r in hv.list()] == [VMState.SHUTOFF]
    hv.undefine("g")
    assert hv.list() == [] and [r.state for r in hv.list(all=True)] == [VMState.UNDEFINED]


def test_vm_parameters_are_checked():
    with pytest.raises(ConfigurationError, match="unknown virtual device"):
        VM("x", 1, devices=["gpu"])
    with pytest.raises(ConfigurationError, match="vcpus"):
        VM("x", 1, vcpus=0)
    with pytest.raises(ConfigurationError, match="unknown technique"):
        VM("x", 1, technique="magic")
    hv = Hypervisor()
    hv.define("x", 1)
    with pytest.raises(ConfigurationError, match="already exists"):
        hv.define("x", 1)


def test_each_vm_has_its_own_virtual_timer_and_the_real_timer_is_never_programmed():
    def ticker(period: int, ticks: int) -> str:
        return f"""
        li   r1, handler
        wrcr tvec, r1
        movi r1, {period}
        out  0x40, r1
        sti
wait:   hlt
        cmpi r6, {ticks}
        jnz  wait
        cli
        hlt
handler:
        addi r6, 1
        movi r1, '0'
        add  r1, r6
        out  0x3f8, r1
        iret
        """

    hv = Hypervisor(quantum=4)
    fast = hv.create("fast", 1, program=ticker(20, 5))
    slow = hv.create("slow", 1, program=ticker(300, 2))
    hv.run()
    assert fast.console == "12345" and slow.console == "12"
    assert fast.stats.interrupts == 5 and slow.stats.interrupts == 2
    assert slow.clock > 600 > fast.clock  # each VM's clock follows its own timer
    assert hv.machine.bus["timer"].period == 0 and hv.machine.irq.pending == 0


def test_a_vcpu_is_a_saved_cpu_state():
    hv = Hypervisor()
    vm = hv.create("s", 1, program="movi r2, 9\n sti\n l: jmp l")
    hv.run(20)
    v = vm.vcpus[0]
    snap = v.state()
    assert snap.regs[2] == 9 and snap.flags & FLAG_IF and snap.mode is Privilege.KERNEL
    v.regs[2] = 0
    v.interrupts_enabled = False
    v.restore(snap)
    assert v.regs[2] == 9 and v.interrupts_enabled and v.state() == snap


def test_hardware_assist_runs_a_guest_with_its_own_paging_natively():
    guest = """
        li   r1, 0x2000          ; page directory
        li   r2, 0x3007          ; -> page table at 0x3000, P|W|U
        st   r2, [r1+0]
        li   r1, 0x3000
        li   r2, 0x0007
        movi r3, 4
map:    st   r2, [r1+0]          ; identity-map pages 0..3
        addi r1, 4
        li   r4, 0x1000
        add  r2, r4
        addi r3, -1
        cmpi r3, 0
        jnz  map
        li   r1, 0x2000
        wrcr cr3, r1
        lui  r1, 0x8000
        wrcr cr0, r1             ; paging on
        movi r1, 'P'
        out  0x3f8, r1           ; an I/O exit: the VMM decodes through the guest's tables
        cli
        hlt
    """
    from virtcore.vmm import check_equivalence

    hw = check_equivalence(guest, technique="hw")
    assert hw.equivalent, hw.message
    assert hw.vmm.serial == b"P"
    trap = check_equivalence(guest, technique="trap")
    assert not trap.equivalent and "CR0.PG" in trap.vmm.stop
