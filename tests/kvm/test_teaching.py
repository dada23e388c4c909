"""Teaching-ISA guests through the same ioctl API: guest mode on virtcore.hw with an EPT
built from the memory slots."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtcore.hw import assemble
from virtcore.hw.isa import MASK32
from virtcore.kvm import open_kvm
from virtcore.kvm.api import (
    KVM_ENOSYS,
    KVM_EXIT_FAIL_ENTRY,
    KVM_EXIT_HLT,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_IO_IN,
    KVM_EXIT_MMIO,
    KVM_EXIT_SHUTDOWN,
    KVM_MEM_READONLY,
    GuestMemory,
    kvm_regs,
    read_exit,
)
from virtcore.kvm.cli import run_guest
from virtcore.kvm.guests import teaching_echo, teaching_hello, teaching_loop, teaching_lwn
from virtcore.kvm.model import ENTRY_FAILURE_INVALID_GUEST_STATE


def boot(source: str, *, regs: dict | None = None, budget: int = 100_000, cs_selector: int = 0,
         extra: tuple = (), sregs: bool = True):
    kvm = open_kvm("model", budget=budget)
    vm = kvm.create_vm()
    mem = GuestMemory(0x1000)
    mem.write(0, assemble(source, 0x1000).to_bytes())
    vm.set_user_memory_region(0, 0x1000, 0x1000, mem.address)
    for slot, gpa, m, flags in extra:
        vm.set_user_memory_region(slot, gpa, len(m), m.address, flags)
    vcpu = vm.create_vcpu(0)
    run = vcpu.mmap()
    if sregs:
        s = vcpu.get_sregs()
        s.cs.base, s.cs.selector = 0, cs_selector
        vcpu.set_sregs(s)
    vcpu.set_regs(kvm_regs(rip=0x1000, rflags=2, **(regs or {})))
    return vm, vcpu, run, mem


def test_lwn_in_the_teaching_isa() -> None:
    _vm, vcpu, run, _mem = boot(teaching_lwn_source(), regs={"rax": 2, "rbx": 2})
    seen = []
    for _ in range(3):
        vcpu.run()
        seen.append((run.exit_reason, run.io_data()[:1] if run.exit_reason == KVM_EXIT_IO
                     else b"", vcpu.get_regs().rip))
    assert seen == [(KVM_EXIT_IO, b"4", 0x100C), (KVM_EXIT_IO, b"\n", 0x1014),
                    (KVM_EXIT_HLT, b"", 0x1018)]


def teaching_lwn_source() -> str:
    return """
        add r0, r1
        addi r0, '0'
        out 0x3f8, r0
        movi r0, 10
        out 0x3f8, r0
        hlt"""


def test_reference_loop_on_builtin_guests() -> None:
    assert run_guest(teaching_lwn()).output == "4\n"
    assert run_guest(teaching_hello()).output == "Hi\n"
    echo = run_guest(teaching_echo())
    assert echo.output == "B" and echo.exits[0].data == b"A\0\0\0"


def test_in_completes_on_the_next_run() -> None:
    _vm, vcpu, run, _mem = boot("in r3, 0x60\nout 0x3f8, r3\nhlt", regs={"rdx": 7})
    vcpu.run()
    assert (run.exit_reason, run.io.direction, run.io.port, run.io.size) == (
        KVM_EXIT_IO, KVM_EXIT_IO_IN, 0x60, 4)
    regs = vcpu.get_regs()
    assert (regs.rip, regs.rdx) == (0x1000, 7)  # still at the IN, r3 = rdx not yet written
    run.set_io_data(b"\x78\x56\x34\x12")
    vcpu.run()
    assert run.io_data() == b"\x78\x56\x34\x12" and vcpu.get_regs().rdx == 0x12345678


def test_mmio_read_reexecutes_and_write_completes() -> None:
    _vm, vcpu, run, _mem = boot("""
        lui r1, 0
        ori r1, 0x8000
        ld  r0, [r1+0]
        addi r0, 1
        st  r0, [r1+4]
        hlt""")
    vcpu.run()
    rec = read_exit(run)
    assert (rec.reason, rec.phys_addr, rec.size, rec.is_write) == (KVM_EXIT_MMIO, 0x8000, 4, False)
    assert vcpu.get_regs().rip == 0x1008  # at the ld
    run.set_mmio_data((41).to_bytes(4, "little"))
    vcpu.run()
    rec = read_exit(run)
    assert (rec.phys_addr, rec.is_write, rec.data) == (0x8004, True, (42).to_bytes(4, "little"))
    assert vcpu.get_regs().rip == 0x1014  # past the st
    vcpu.run()
    assert run.exit_reason == KVM_EXIT_HLT


def test_hypercalls_are_answered_in_kvm_without_an_exit() -> None:
    _vm, vcpu, run, _mem = boot("movi r0, 5\nhcall\nout 0x3f8, r0\nhlt")
    vcpu.run()
    assert run.exit_reason == KVM_EXIT_IO
    assert int.from_bytes(run.io_data(), "little") == -KVM_ENOSYS & MASK32


def test_a_trap_without_a_guest_handler_shuts_down() -> None:
    _vm, vcpu, run, _mem = boot(".word 0xffffffff")
    vcpu.run()
    assert run.exit_reason == KVM_EXIT_SHUTDOWN


def test_user_mode_guest_cannot_do_io() -> None:
    _vm, vcpu, run, _mem = boot("out 0x3f8, r0\nhlt", cs_selector=3)
    vcpu.run()
    assert run.exit_reason == KVM_EXIT_SHUTDOWN  # #GP, no handler


def test_invalid_guest_state_fails_the_entry() -> None:
    _vm, vcpu, run, _mem = boot("hlt", regs={"rax": 1 << 32})
    vcpu.run()
    assert run.exit_reason == KVM_EXIT_FAIL_ENTRY
    assert run.fail_entry.hardware_entry_failure_reason == ENTRY_FAILURE_INVALID_GUEST_STATE


def test_forgotten_sregs_is_an_emulation_failure() -> None:
    _vm, vcpu, run, _mem = boot("hlt", sregs=False)  # pc = 0xffff0000 + 0x1000: no memory
    vcpu.run()
    assert run.exit_reason == KVM_EXIT_INTERNAL_ERROR and run.internal.suberror == 1


def test_budget_interrupts_and_the_run_continues() -> None:
    _vm, vcpu, run, _mem = boot(
        "lui r2, 0\nori r2, 3000\nloop: addi r2, -1\ncmpi r2, 0\njnz loop\nhlt", budget=2000)
    interrupts = 0
    errnos = set()
    while True:
        try:
            vcpu.run()
            break
        except InterruptedError as e:
            errnos.add((e.errno, run.exit_reason))
            interrupts += 1
    assert errnos == {(errno.EINTR, KVM_EXIT_INTR)}
    assert run.exit_reason == KVM_EXIT_HLT and interrupts == 9002 // 2000
    assert vcpu.get_regs().rcx == 0


def test_guest_stores_reach_user_memory_and_user_writes_reach_the_guest() -> None:
    _vm, vcpu, run, mem = boot("""
    top:
        lui r1, 0
        ori r1, 0x1800
        ld  r0, [r1+0]
        addi r0, 1
        st  r0, [r1+4]
        out 0x3f8, r0
        jmp top""")
    mem[0x800:0x804] = (10).to_bytes(4, "little")
    vcpu.run()
    assert mem[0x804:0x808] == (11).to_bytes(4, "little")
    mem[0x800:0x804] = (100).to_bytes(4, "little")
    vcpu.run()
    assert int.from_bytes(run.io_data(), "little") == 101


def test_patched_code_is_not_stale() -> None:
    _vm, vcpu, run, mem = boot("top: movi r0, 'A'\nout 0x3f8, r0\njmp top")
    vcpu.run()
    assert run.io_data()[:1] == b"A"
    mem.write(0, assemble("movi r0, 'B'", 0x1000).to_bytes())
    vcpu.run()
    assert run.io_data()[:1] == b"B"


def test_readonly_slot() -> None:
    ro = GuestMemory(0x1000)
    ro[0:4] = (7).to_bytes(4, "little")
    _vm, vcpu, run, _mem = boot("lui r1, 0\nori r1, 0x2000\nld r0, [r1+0]\nst r0, [r1+4]\nhlt",
                              extra=((1, 0x2000, ro, KVM_MEM_READONLY),))
    vcpu.run()
    rec = read_exit(run)
    assert (rec.reason, rec.phys_addr, rec.is_write, rec.data) == (
        KVM_EXIT_MMIO, 0x2004, True, (7).to_bytes(4, "little"))
    assert ro[4:8] == b"\0\0\0\0"


def test_rsp_is_the_teaching_stack_pointer() -> None:
    _vm, vcpu, _run, mem = boot("push r0\nhlt", regs={"rsp": 0x1800, "rax": 0xABCD})
    vcpu.run()
    assert vcpu.get_regs().rsp == 0x17FC and mem[0x7FC:0x800] == (0xABCD).to_bytes(4, "little")


def test_two_vcpus_share_memory() -> None:
    vm, v0, run0, _mem = boot("""
        lui r1, 0
        ori r1, 0x1800
        movi r0, 'Z'
        st r0, [r1+0]
        hlt
    second:
        lui r1, 0
        ori r1, 0x1800
        ld r0, [r1+0]
        out 0x3f8, r0
        hlt""")
    v1 = vm.create_vcpu(1)
    run1 = v1.mmap()
    s = v1.get_sregs()
    s.cs.base = s.cs.selector = 0
    v1.set_sregs(s)
    v1.set_regs(kvm_regs(rip=0x1014, rflags=2))
    v0.run()
    v1.run()
    assert run0.exit_reason == KVM_EXIT_HLT and run1.io_data()[:1] == b"Z"


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_registers_round_trip_through_a_run(a: int, b: int) -> None:
    _vm, vcpu, _run, _mem = boot("add r0, r1\nhlt", regs={"rax": a, "rbx": b})
    vcpu.run()
    regs = vcpu.get_regs()
    assert (regs.rax, regs.rbx, regs.rip) == ((a + b) & MASK32, b, 0x1008)


def test_loop_guest_counts() -> None:
    report = run_guest(teaching_loop(1000))
    assert report.final == "KVM_EXIT_HLT" and report.regs.rax == 1000 * 1001 // 2


@pytest.mark.parametrize("isa", ["teaching"])
def test_kvm_run_survives_a_layout_change(isa: str) -> None:
    vm, vcpu, run, _mem = boot("top: out 0x3f8, r0\njmp top", regs={"rax": 1})
    vcpu.run()
    extra = GuestMemory(0x1000)
    vm.set_user_memory_region(1, 0x4000, 0x1000, extra.address)  # rebuilds the EPT
    vcpu.run()
    assert run.exit_reason == KVM_EXIT_IO and vcpu.get_regs().rax == 1
