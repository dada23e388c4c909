"""Errors of the model against the real module [KVM-API §4.35; KVM-MAIN; LOCAL].

Each scenario runs on the model and, where ``/dev/kvm`` is usable, on the real KVM; both
must give the errno measured on a real machine (x86-64, Linux 6.18).
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Callable

import pytest

from virtcore.kvm import open_kvm
from virtcore.kvm.api import (
    _IO,
    KVM_CAP_USER_MEMORY,
    KVM_CHECK_EXTENSION,
    KVM_CREATE_VCPU,
    KVM_CREATE_VM,
    KVM_GET_API_VERSION,
    KVM_GET_REGS,
    KVM_GET_VCPU_MMAP_SIZE,
    KVM_MEM_READONLY,
    KVM_RUN,
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    GuestMemory,
    SystemFd,
    VcpuFd,
    VmFd,
)
from virtcore.kvm.model import reset_regs, reset_sregs

BACKENDS = ["model", "real"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "real":
        request.getfixturevalue("real")
    return request.param


class Env:
    """A VM with one vCPU (id 0), slot 0 at GPA 0 (0x2000 bytes), 16 KiB of user memory."""

    def __init__(self, backend: str) -> None:
        self.kvm: SystemFd = open_kvm(backend)
        self.vm: VmFd = self.kvm.create_vm()
        self.vcpu: VcpuFd = self.vm.create_vcpu(0)
        self.mem = GuestMemory(0x4000)
        self.a = self.mem.address
        self.vm.set_user_memory_region(0, 0, 0x2000, self.a)

    def slot(self, slot: int, gpa: int, size: int, addr: int, flags: int = 0) -> int:
        self.vm.set_user_memory_region(slot, gpa, size, addr, flags)
        return 0

    def close(self) -> None:
        for fd in (self.vcpu, self.vm, self.kvm):
            fd.close()


def errno_of(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except OSError as e:
        return errno.errorcode[e.errno]


UNKNOWN = _IO(KVMIO, 0xFF)

SCENARIOS: dict[str, tuple[Callable[[Env], object], object]] = {
    # [KVM-MAIN; LOCAL] / item 10
    "duplicate vCPU id": (lambda e: e.vm.create_vcpu(0), "EEXIST"),
    "vCPU id 100000": (lambda e: e.vm.create_vcpu(100000), "EINVAL"),
    # [KVM-API §4.35; KVM-MAIN] / items 11, 12
    "overlapping slot": (lambda e: e.slot(1, 0x1000, 0x1000, e.a + 0x2000), "EEXIST"),
    "misaligned guest_phys_addr": (lambda e: e.slot(1, 0x2800, 0x1000, e.a + 0x2000), "EINVAL"),
    "misaligned memory_size": (lambda e: e.slot(1, 0x3000, 0x800, e.a + 0x2000), "EINVAL"),
    "misaligned userspace_addr": (lambda e: e.slot(1, 0x3000, 0x1000, e.a + 0x2001), "EINVAL"),
    "resize a slot": (lambda e: e.slot(0, 0, 0x1000, e.a), "EINVAL"),
    "re-point a slot": (lambda e: e.slot(0, 0, 0x2000, e.a + 0x1000), "EINVAL"),
    "identical re-registration": (lambda e: e.slot(0, 0, 0x2000, e.a), 0),
    "move a slot": (lambda e: e.slot(0, 0x10000, 0x2000, e.a), 0),
    "unknown flag": (lambda e: e.slot(1, 0x3000, 0x1000, e.a + 0x2000, 4), "EINVAL"),
    "toggle KVM_MEM_READONLY": (
        lambda e: (e.slot(1, 0x3000, 0x1000, e.a + 0x2000, KVM_MEM_READONLY),
                   e.slot(1, 0x3000, 0x1000, e.a + 0x2000, 0)), "EINVAL"),
    "delete a slot that does not exist": (lambda e: e.slot(7, 0, 0, 0), "EINVAL"),
    "delete, then reuse the range": (
        lambda e: (e.slot(0, 0x5000, 0, 0), e.slot(1, 0x1000, 0x1000, e.a + 0x2000)), (0, 0)),
    "slot id too large": (lambda e: e.slot(40000, 0x3000, 0x1000, e.a + 0x2000), "EINVAL"),
    "address space 1": (lambda e: e.slot(1 << 16, 0x3000, 0x1000, e.a + 0x2000), "EINVAL"),
    "wrapping range": (lambda e: e.slot(3, 2**64 - 0x1000, 0x2000, e.a), "EINVAL"),
    "region passed as an int": (lambda e: e.vm.ioctl(KVM_SET_USER_MEMORY_REGION, 0), "EFAULT"),
    # arguments that must be 0
    "KVM_GET_API_VERSION arg 1": (lambda e: e.kvm.ioctl(KVM_GET_API_VERSION, 1), "EINVAL"),
    "KVM_GET_VCPU_MMAP_SIZE arg 1": (lambda e: e.kvm.ioctl(KVM_GET_VCPU_MMAP_SIZE, 1), "EINVAL"),
    "KVM_RUN arg 1": (lambda e: e.vcpu.ioctl(KVM_RUN, 1), "EINVAL"),
    "KVM_CREATE_VM type 5": (lambda e: e.kvm.ioctl(KVM_CREATE_VM, 5), "EINVAL"),
    # unknown requests: the answer depends on the descriptor (measured)
    "unknown request, system fd": (lambda e: e.kvm.ioctl(UNKNOWN), "EINVAL"),
    "unknown request, VM fd": (lambda e: e.vm.ioctl(UNKNOWN), "ENOTTY"),
    "unknown request, vCPU fd": (lambda e: e.vcpu.ioctl(UNKNOWN), "EINVAL"),
    "non-KVM request, vCPU fd": (lambda e: e.vcpu.ioctl(0x1234), "EINVAL"),
    "system request on a VM fd": (lambda e: e.vm.ioctl(KVM_GET_VCPU_MMAP_SIZE, 0), "ENOTTY"),
    "VM request on the system fd": (lambda e: e.kvm.ioctl(KVM_CREATE_VCPU, 1), "EINVAL"),
    "KVM_CHECK_EXTENSION on a vCPU fd": (
        lambda e: e.vcpu.ioctl(KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY), "EINVAL"),
    "KVM_CHECK_EXTENSION(USER_MEMORY) on a VM fd": (
        lambda e: e.vm.ioctl(KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY), 1),
    "KVM_CHECK_EXTENSION of nonsense": (lambda e: e.kvm.check_extension(99999), 0),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_error(backend: str, scenario: str) -> None:
    action, expected = SCENARIOS[scenario]
    env = Env(backend)
    try:
        assert errno_of(lambda: action(env)) == expected
    finally:
        env.close()


def test_errors_are_oserror_subclasses_like_the_kernel_s(backend: str) -> None:
    env = Env(backend)
    with pytest.raises(FileExistsError) as info:
        env.vm.create_vcpu(0)
    assert info.value.errno == errno.EEXIST
    env.close()


def test_a_new_vcpu_has_the_x86_reset_state(backend: str) -> None:
    env = Env(backend)
    try:
        assert bytes(env.vcpu.get_regs()) == bytes(reset_regs())
        assert bytes(env.vcpu.get_sregs()) == bytes(reset_sregs())
    finally:
        env.close()


def test_vm_requests_from_another_process_fail_with_eio(backend: str) -> None:  # item 13
    env = Env(backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        seen = []
        for call in (lambda: env.vcpu.ioctl(KVM_GET_REGS, reset_regs()),
                     lambda: env.vm.create_vcpu(1)):
            try:
                call()
                seen.append(0)
            except OSError as e:
                seen.append(e.errno)
        os._exit(0 if seen == [errno.EIO, errno.EIO] else 1)
    _, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 0, "the child did not get EIO twice"
        assert env.vcpu.get_regs().rip == 0xFFF0  # the creator still can
    finally:
        env.close()


def test_rflags_bit_1_is_forced(backend: str) -> None:
    env = Env(backend)
    try:
        regs = env.vcpu.get_regs()
        regs.rflags = 0
        env.vcpu.set_regs(regs)
        assert env.vcpu.get_regs().rflags == 0x2
    finally:
        env.close()
