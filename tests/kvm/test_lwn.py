"""The LWN "Using the KVM API" guest [LWN15; LOCAL] through the ioctl sequence of
[LWN15] — on the model's x86 backend and on the real KVM."""

from __future__ import annotations

import ctypes

import pytest

from virtcore.kvm import open_kvm
from virtcore.kvm.api import (
    KVM_CREATE_VCPU,
    KVM_CREATE_VM,
    KVM_EXIT_HLT,
    KVM_EXIT_IO,
    KVM_EXIT_IO_OUT,
    KVM_GET_API_VERSION,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_GET_VCPU_MMAP_SIZE,
    KVM_RUN,
    KVM_SET_REGS,
    KVM_SET_SREGS,
    KVM_SET_USER_MEMORY_REGION,
    GuestMemory,
    kvm_regs,
    kvm_sregs,
    kvm_userspace_memory_region,
)
from virtcore.kvm.guests import LWN_CODE


def lwn_program(backend: str) -> tuple[str, list[tuple[int, ...]]]:
    """kvmtest.c, line by line: returns stdout and (reason, dir, size, port, count,
    data_offset, byte, rip) per exit."""
    kvm = open_kvm(backend, isa="x86")
    assert kvm.ioctl(KVM_GET_API_VERSION, 0) == 12
    vmfd = kvm.ioctl(KVM_CREATE_VM, 0)
    mem = GuestMemory(0x1000)
    mem[0:len(LWN_CODE)] = LWN_CODE
    region = kvm_userspace_memory_region(slot=0, guest_phys_addr=0x1000, memory_size=0x1000,
                                         userspace_addr=mem.address)
    vmfd.ioctl(KVM_SET_USER_MEMORY_REGION, region)
    vcpufd = vmfd.ioctl(KVM_CREATE_VCPU, 0)
    mmap_size = kvm.ioctl(KVM_GET_VCPU_MMAP_SIZE, 0)
    run = vcpufd.mmap(mmap_size)
    sregs = kvm_sregs()
    vcpufd.ioctl(KVM_GET_SREGS, sregs)
    sregs.cs.base = 0
    sregs.cs.selector = 0
    vcpufd.ioctl(KVM_SET_SREGS, sregs)
    regs = kvm_regs(rip=0x1000, rax=2, rbx=2, rflags=0x2)
    vcpufd.ioctl(KVM_SET_REGS, regs)
    stdout, trace = [], []
    for _ in range(10):
        vcpufd.ioctl(KVM_RUN, 0)
        now = kvm_regs()
        vcpufd.ioctl(KVM_GET_REGS, now)
        if run.exit_reason == KVM_EXIT_HLT:
            trace.append((run.exit_reason, now.rip))
            stdout.append("KVM_EXIT_HLT\n")
            break
        assert run.exit_reason == KVM_EXIT_IO
        io = run.io
        assert (io.direction, io.size, io.port, io.count) == (KVM_EXIT_IO_OUT, 1, 0x3F8, 1)
        byte = ctypes.string_at(ctypes.addressof(run) + io.data_offset, 1)
        stdout.append(byte.decode())
        trace.append((run.exit_reason, io.direction, io.size, io.port, io.count,
                      io.data_offset, byte[0], now.rip))
    for fd in (vcpufd, vmfd, kvm):
        fd.close()
    return "".join(stdout), trace


#: the measured exit trace of [LWN15; LOCAL]
EXPECTED = [
    (KVM_EXIT_IO, 1, 1, 0x3F8, 1, 4096, ord("4"), 0x1008),
    (KVM_EXIT_IO, 1, 1, 0x3F8, 1, 4096, ord("\n"), 0x100B),
    (KVM_EXIT_HLT, 0x100C),
]


def test_lwn_guest_bytes() -> None:  # item 14
    assert bytes([0xBA, 0xF8, 0x03, 0x00, 0xD8, 0x04, 0x30, 0xEE, 0xB0, 0x0A,
                              0xEE, 0xF4]) == LWN_CODE


def test_lwn_on_the_model(x86: str) -> None:  # item 15
    stdout, trace = lwn_program("model")
    assert stdout == "4\nKVM_EXIT_HLT\n"
    assert trace == EXPECTED


def test_lwn_on_real_kvm(real: str) -> None:  # item 15, and the model agrees
    stdout, trace = lwn_program("real")
    assert stdout == "4\nKVM_EXIT_HLT\n"
    assert trace == EXPECTED


@pytest.mark.parametrize("rflags", [0x2, 0x0])
def test_lwn_with_rflags(x86: str, rflags: int) -> None:
    # KVM forces rflags bit 1 (measured), so forgetting it does not fail the entry
    kvm = open_kvm("model", isa="x86")
    vm = kvm.create_vm()
    mem = GuestMemory(0x1000)
    mem.write(0, LWN_CODE)
    vm.set_user_memory_region(0, 0x1000, 0x1000, mem.address)
    vcpu = vm.create_vcpu(0)
    run = vcpu.mmap()
    s = vcpu.get_sregs()
    s.cs.base = s.cs.selector = 0
    vcpu.set_sregs(s)
    vcpu.set_regs(kvm_regs(rip=0x1000, rax=2, rbx=2, rflags=rflags))
    vcpu.run()
    assert run.exit_reason == KVM_EXIT_IO and run.io_data() == b"4"
