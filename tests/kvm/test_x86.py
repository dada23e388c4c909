"""The model's x86 backend (unicorn): precise exits, shared memory, limits, and no
per-instruction hook on the fast path."""

from __future__ import annotations

import errno

import pytest

from virtcore.kvm import open_kvm
from virtcore.kvm.api import (
    KVM_EXIT_HLT,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_MMIO,
    KVM_MEM_READONLY,
    GuestMemory,
    SystemFd,
    kvm_regs,
    kvm_run,
    read_exit,
)
from virtcore.kvm.cli import run_guest
from virtcore.kvm.guests import x86_hello, x86_loop, x86_out_loop

BACKENDS = ["model", "real"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, x86: str) -> str:
    if request.param == "real":
        request.getfixturevalue("real")
    return request.param


def boot(kvm: SystemFd, code: bytes, *, extra_slots: tuple = (), regs: dict | None = None):
    """One VM, code at 0x1000 (one page), real mode with cs = 0; returns (vm, vcpu, run, mem)."""
    vm = kvm.create_vm()
    mem = GuestMemory(0x1000)
    mem.write(0, code)
    vm.set_user_memory_region(0, 0x1000, 0x1000, mem.address)
    for slot, gpa, m, flags in extra_slots:
        vm.set_user_memory_region(slot, gpa, len(m), m.address, flags)
    vcpu = vm.create_vcpu(0)
    run = vcpu.mmap()
    s = vcpu.get_sregs()
    s.cs.base = s.cs.selector = 0
    vcpu.set_sregs(s)
    vcpu.set_regs(kvm_regs(rip=0x1000, rflags=2, **(regs or {})))
    return vm, vcpu, run, mem


# mov dx,0x3f8; mov cx,3; mov bx,0x1100; L: out dx,al; inc byte [bx]; loop L; hlt
COUNT_AFTER_OUT = bytes.fromhex("ba f8 03 b9 03 00 bb 00 11 ee fe 07 e2 fb f4")


def test_exits_are_precise_at_new_and_learned_io_sites(backend: str) -> None:
    """The `inc byte [bx]` after each OUT must not have run when the OUT's exit is seen —
    the first time (unknown site) and the next times (learned site)."""
    _vm, vcpu, run, mem = boot(open_kvm(backend, isa="x86"), COUNT_AFTER_OUT)
    seen = []
    for _ in range(4):
        vcpu.run()
        seen.append((run.exit_reason, mem[0x100], vcpu.get_regs().rip))
    assert seen == [(KVM_EXIT_IO, 0, 0x100A), (KVM_EXIT_IO, 1, 0x100A),
                    (KVM_EXIT_IO, 2, 0x100A), (KVM_EXIT_HLT, 3, 0x100F)]


def test_user_writes_between_runs_reach_the_guest(backend: str) -> None:
    # L: mov al,[0x1100]; out dx,al; jmp L
    code = bytes.fromhex("ba f8 03 a0 00 11 ee eb fa")
    _vm, vcpu, run, mem = boot(open_kvm(backend, isa="x86"), code)
    got = []
    for value in (b"a", b"b", b"c"):
        mem[0x100:0x101] = value
        vcpu.run()
        got.append(run.io_data())
    assert got == [b"a", b"b", b"c"]


def test_write_to_a_readonly_slot_is_an_mmio_exit(backend: str) -> None:
    # mov al,[0x2000]; mov [0x2001],al; hlt
    ro = GuestMemory(0x1000)
    ro[0:2] = b"\x99\x00"
    _vm, vcpu, run, _mem = boot(open_kvm(backend, isa="x86"), bytes.fromhex("a0 00 20 a2 01 20 f4"),
                              extra_slots=((1, 0x2000, ro, KVM_MEM_READONLY),))
    vcpu.run()
    rec = read_exit(run)
    assert (rec.reason, rec.phys_addr, rec.size, rec.is_write, rec.data) == (
        KVM_EXIT_MMIO, 0x2001, 1, True, b"\x99")
    vcpu.run()
    assert run.exit_reason == KVM_EXIT_HLT
    assert ro[0:2] == b"\x99\x00"  # the write went to user space, not into the slot


def test_immediate_exit(backend: str) -> None:
    _vm, vcpu, run, _mem = boot(open_kvm(backend, isa="x86"), bytes.fromhex("f4"))
    run.immediate_exit = 1
    with pytest.raises(InterruptedError) as info:
        vcpu.run()
    assert info.value.errno == errno.EINTR
    run.immediate_exit = 0
    vcpu.run()
    assert run.exit_reason == KVM_EXIT_HLT


def test_two_vcpus_share_guest_memory(backend: str) -> None:
    kvm = open_kvm(backend, isa="x86")
    # vCPU 0 at 0x1000: mov byte [0x1800], 'Z'; hlt.  vCPU 1 at 0x1010: mov al,[0x1800]; out; hlt
    code = bytes.fromhex("c6 06 00 18 5a f4").ljust(0x10, b"\x90") + bytes.fromhex(
        "ba f8 03 a0 00 18 ee f4")
    vm, v0, run0, _mem = boot(kvm, code)
    v1 = vm.create_vcpu(1)
    run1 = v1.mmap()
    s = v1.get_sregs()
    s.cs.base = s.cs.selector = 0
    v1.set_sregs(s)
    v1.set_regs(kvm_regs(rip=0x1010, rflags=2))
    v0.run()
    assert run0.exit_reason == KVM_EXIT_HLT
    v1.run()
    assert run1.io_data() == b"Z"


def test_a_guest_that_never_exits_is_interrupted(x86: str) -> None:
    _vm, vcpu, run, _mem = boot(open_kvm("model", isa="x86", time_limit=0.05),
                              bytes.fromhex("eb fe f4"))  # jmp $ ; hlt
    with pytest.raises(InterruptedError):
        vcpu.run()
    assert run.exit_reason == KVM_EXIT_INTR
    regs = vcpu.get_regs()
    assert regs.rip == 0x1000
    regs.rip = 0x1002  # step over the loop: the VMM can fix the guest and go on
    vcpu.set_regs(regs)
    vcpu.run()
    assert run.exit_reason == KVM_EXIT_HLT


def test_no_hook_runs_per_instruction(x86: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import unicorn

    added = []
    original = unicorn.Uc.hook_add

    def spy(self, htype, callback, user_data=None, begin=1, end=0, *args):
        added.append((htype, begin, end))
        return original(self, htype, callback, user_data, begin, end, *args)

    monkeypatch.setattr(unicorn.Uc, "hook_add", spy)
    report = run_guest(x86_out_loop(50))
    assert len(report.exits) == 51
    per_instruction = {unicorn.UC_HOOK_CODE, unicorn.UC_HOOK_BLOCK, unicorn.UC_HOOK_MEM_READ,
                       unicorn.UC_HOOK_MEM_WRITE, unicorn.UC_HOOK_MEM_FETCH}
    for htype, begin, end in added:
        if htype in per_instruction:
            assert htype == unicorn.UC_HOOK_CODE and begin == end, (htype, begin, end)
    # one learned site: the OUT; its code hook sits on the one instruction after it
    assert [(b, e) for h, b, e in added if h == unicorn.UC_HOOK_CODE] == [(0x100A, 0x100A)]


def test_a_loop_without_exits_runs_at_native_speed(x86: str) -> None:
    report = run_guest(x86_loop(3_000_000))  # 9 M instructions
    assert report.final == "KVM_EXIT_HLT" and len(report.exits) == 1
    n = 3_000_000
    assert report.regs.rax == n * (n + 1) // 2 & 0xFFFF_FFFF


def test_hello(x86: str) -> None:
    report = run_guest(x86_hello())
    assert report.output == "Hello, KVM!\n" and len(report.exits) == 13


def test_kvm_run_repr_names_the_exit(x86: str) -> None:
    _vm, vcpu, run, _mem = boot(open_kvm("model", isa="x86"), bytes.fromhex("f4"))
    vcpu.run()
    assert "KVM_EXIT_HLT" in repr(run) and isinstance(run, kvm_run)
