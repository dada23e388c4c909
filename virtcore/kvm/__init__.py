"""virtcore.kvm — KVM as user space sees it: ``/dev/kvm``, its ioctls, its exits.

One Python API, two implementations behind it:

- the **model** (:mod:`virtcore.kvm.model`): a simulated ``/dev/kvm`` with the real
  request numbers, structures and errno values [KVM-H; KVM-API; KVM-MAIN; LOCAL],
  whose guest CPU is the teaching ISA of :mod:`virtcore.hw` (pure Python,
  default) or real x86 code through unicorn (:mod:`virtcore.kvm.x86`, optional);
- the **real** kernel module (:mod:`virtcore.kvm.real`) where ``/dev/kvm`` is usable.

>>> kvm = open_kvm()                       # the model, teaching ISA
>>> kvm.ioctl(KVM_GET_API_VERSION), kvm.ioctl(KVM_GET_VCPU_MMAP_SIZE)
(12, 12288)
>>> from virtcore.kvm.guests import teaching_hello
>>> from virtcore.kvm.cli import run_guest
>>> report = run_guest(teaching_hello(), isa="teaching")
>>> report.output, [e.name for e in report.exits][-1]
('Hi\\n', 'KVM_EXIT_HLT')

Submodules: :mod:`.api` (constants, structures, descriptor base classes),
:mod:`.model`, :mod:`.real`, :mod:`.x86`, :mod:`.guests` (guest programs),
:mod:`.cli` (``python -m virtcore.kvm run guest.bin``).
"""

from __future__ import annotations

from virtcore.kvm.api import (
    KVM_API_VERSION,
    KVM_CHECK_EXTENSION,
    KVM_CREATE_VCPU,
    KVM_CREATE_VM,
    KVM_EXIT_FAIL_ENTRY,
    KVM_EXIT_HLT,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_IO_IN,
    KVM_EXIT_IO_OUT,
    KVM_EXIT_MMIO,
    KVM_EXIT_SHUTDOWN,
    KVM_GET_API_VERSION,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_GET_VCPU_MMAP_SIZE,
    KVM_RUN,
    KVM_SET_REGS,
    KVM_SET_SREGS,
    KVM_SET_USER_MEMORY_REGION,
    ExitRecord,
    GuestMemory,
    KvmFd,
    KvmUsageError,
    SystemFd,
    VcpuFd,
    VmFd,
    address_of,
    exit_name,
    kvm_regs,
    kvm_run,
    kvm_segment,
    kvm_sregs,
    kvm_userspace_memory_region,
    read_exit,
)

__all__ = [
    "KVM_API_VERSION", "KVM_CHECK_EXTENSION", "KVM_CREATE_VCPU", "KVM_CREATE_VM",
    "KVM_EXIT_FAIL_ENTRY", "KVM_EXIT_HLT", "KVM_EXIT_INTERNAL_ERROR", "KVM_EXIT_INTR",
    "KVM_EXIT_IO", "KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT", "KVM_EXIT_MMIO", "KVM_EXIT_SHUTDOWN",
    "KVM_GET_API_VERSION", "KVM_GET_REGS", "KVM_GET_SREGS", "KVM_GET_VCPU_MMAP_SIZE",
    "KVM_RUN", "KVM_SET_REGS", "KVM_SET_SREGS", "KVM_SET_USER_MEMORY_REGION", "ExitRecord",
    "GuestMemory", "KvmFd", "KvmUsageError", "SystemFd", "VcpuFd", "VmFd", "address_of",
    "exit_name", "kvm_available", "kvm_regs", "kvm_run", "kvm_segment", "kvm_sregs",
    "kvm_userspace_memory_region", "open_kvm", "read_exit", "unicorn_available",
]


def open_kvm(backend: str = "model", *, isa: str = "teaching", budget: int = 5_000_000,
             time_limit: float | None = 5.0) -> SystemFd:
    """Open ``/dev/kvm``: the model (``backend="model"``) or the real one (``"real"``).

    Parameters
    ----------
    backend : {"model", "real"}
    isa : {"teaching", "x86"}
        Model only: the guest CPU behind ``KVM_RUN`` (the real KVM runs x86).
    budget, time_limit
        Model only: how long one ``KVM_RUN`` may go on before ``EINTR``
        (teaching-ISA instructions; seconds for x86).

    Returns
    -------
    SystemFd
        The system descriptor; ``ioctl(KVM_CREATE_VM, 0)`` gives a :class:`VmFd`.

    >>> open_kvm("model").backend, open_kvm("model", isa="x86").isa
    ('model', 'x86')
    """
    if backend == "model":
        from virtcore.kvm.model import open_model_kvm

        return open_model_kvm(isa, budget=budget, time_limit=time_limit)
    if backend == "real":
        from virtcore.kvm.real import open_real_kvm

        if isa != "teaching" and isa != "x86":
            raise KvmUsageError(f"unknown isa {isa!r}")
        return open_real_kvm()
    raise KvmUsageError(f"backend must be 'model' or 'real', not {backend!r}")


def kvm_available() -> tuple[bool, str]:
    """Whether the real ``/dev/kvm`` is usable here (and why not).

    >>> isinstance(kvm_available()[1], str)
    True
    """
    from virtcore.kvm.real import kvm_available as check

    return check()


def unicorn_available() -> tuple[bool, str]:
    """Whether the x86 backend's ``unicorn`` is installed (and why not).

    >>> isinstance(unicorn_available()[0], bool)
    True
    """
    from virtcore.kvm.x86 import unicorn_available as check

    return check()
