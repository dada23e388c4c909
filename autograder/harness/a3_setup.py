"""The reference ``setup_vm`` of assignment 3 (the canonical sequence [LWN15; KVM-API]).

Staged into the sandbox only for the parts that build on it (``vmm_run_loop``,
``vmm_errors``), never for ``vmm_setup``, whose answer it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autograder.harness.a3 import _Machine, _RefusedError
from virtcore.kvm.api import (
    KVM_API_VERSION,
    KVM_CREATE_VCPU,
    KVM_CREATE_VM,
    KVM_GET_API_VERSION,
    KVM_GET_SREGS,
    KVM_GET_VCPU_MMAP_SIZE,
    KVM_SET_REGS,
    KVM_SET_SREGS,
    KVM_SET_USER_MEMORY_REGION,
    GuestMemory,
    kvm_regs,
    kvm_sregs,
    kvm_userspace_memory_region,
)

__all__ = ["ref_setup"]


def ref_setup(kvm: Any, guest: Any, refuse: type[Exception] = _RefusedError,
               machine: Callable[..., Any] = _Machine) -> Any:
    """The canonical sequence [LWN15] — the reference ``setup_vm``."""
    version = kvm.ioctl(KVM_GET_API_VERSION, 0)
    if version != KVM_API_VERSION:
        raise refuse(f"KVM_GET_API_VERSION returned {version}; this VMM needs"
                     f" {KVM_API_VERSION}")
    vm = kvm.ioctl(KVM_CREATE_VM, 0)
    memory = GuestMemory(guest.memory_size)
    memory.write(0, guest.code)
    vm.ioctl(KVM_SET_USER_MEMORY_REGION, kvm_userspace_memory_region(
        slot=0, flags=0, guest_phys_addr=guest.gpa, memory_size=guest.memory_size,
        userspace_addr=memory.address))
    vcpu = vm.ioctl(KVM_CREATE_VCPU, 0)
    run = vcpu.mmap(kvm.ioctl(KVM_GET_VCPU_MMAP_SIZE, 0))
    sregs = kvm_sregs()
    vcpu.ioctl(KVM_GET_SREGS, sregs)
    sregs.cs.base = 0
    sregs.cs.selector = 0
    vcpu.ioctl(KVM_SET_SREGS, sregs)
    regs = kvm_regs(rip=guest.gpa if guest.entry is None else guest.entry, rflags=0x2,
                    **guest.regs)
    vcpu.ioctl(KVM_SET_REGS, regs)
    return machine(kvm=kvm, vm=vm, vcpu=vcpu, run=run, memory=memory)
