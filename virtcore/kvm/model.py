"""A simulated ``/dev/kvm``: the three kinds of descriptor, their ioctls and errors.

:func:`open_model_kvm` returns a :class:`ModelSystemFd` that answers the requests of
:mod:`virtcore.kvm.api` with the numbers and errno values of the real module
([KVM-H; KVM-MAIN; LOCAL], checked against a real
``/dev/kvm`` by ``tests/kvm``).  Behind ``KVM_RUN`` sits a guest CPU backend:

``isa="teaching"`` (default, pure Python)
    the teaching ISA of :mod:`virtcore.hw`, run in *guest mode* (VMX non-root) on
    a :class:`virtcore.hw.cpu.CPU` with an EPT built from the memory slots;
``isa="x86"``
    real x86 machine code through unicorn (:mod:`virtcore.kvm.x86`).

>>> from virtcore.hw import assemble
>>> from virtcore.kvm.api import GuestMemory, exit_name
>>> kvm = open_model_kvm()
>>> kvm.ioctl(KVM_GET_API_VERSION, 0), kvm.ioctl(KVM_GET_VCPU_MMAP_SIZE, 0)
(12, 12288)
>>> vm = kvm.ioctl(KVM_CREATE_VM, 0)
>>> mem = GuestMemory(0x1000)
>>> mem.write(0, assemble("out 0x3f8, r0\\nhlt").to_bytes())
>>> vm.ioctl(KVM_SET_USER_MEMORY_REGION, kvm_userspace_memory_region(
...     slot=0, guest_phys_addr=0x1000, memory_size=0x1000, userspace_addr=mem.address))
0
>>> vcpu = vm.ioctl(KVM_CREATE_VCPU, 0)
>>> run = vcpu.mmap(12288)
>>> sregs = vcpu.get_sregs(); sregs.cs.base = sregs.cs.selector = 0; vcpu.set_sregs(sregs)
>>> vcpu.set_regs(kvm_regs(rip=0x1000, rax=ord("A"), rflags=2))
>>> vcpu.ioctl(KVM_RUN, 0), exit_name(run.exit_reason), hex(run.io.port), run.io_data()
(0, 'KVM_EXIT_IO', '0x3f8', b'A\\x00\\x00\\x00')
>>> vcpu.ioctl(KVM_RUN, 0), exit_name(run.exit_reason)
(0, 'KVM_EXIT_HLT')
>>> vm.ioctl(KVM_CREATE_VCPU, 0)
Traceback (most recent call last):
...
FileExistsError: [Errno 17] File exists (vCPU id 0 is already in use in this VM)

Errors (measured on a real ``/dev/kvm``, Linux 6.18, x86-64)
-----------------------------------------------------------
- unknown request: ``EINVAL`` on the system and vCPU descriptors, ``ENOTTY`` on a VM
  descriptor (``kvm_arch_dev_ioctl``/``kvm_arch_vcpu_ioctl`` default to ``-EINVAL``,
  ``kvm_arch_vm_ioctl`` to ``-ENOTTY``) — the facts sheet's "ENOTTY" holds for VM
  requests only;
- ``KVM_GET_API_VERSION``, ``KVM_GET_VCPU_MMAP_SIZE``, ``KVM_RUN`` with a non-zero
  argument, ``KVM_CREATE_VM`` with a machine type other than 0: ``EINVAL``;
- ``KVM_CREATE_VCPU``: id ≥ 4096 or more than 1024 vCPUs ``EINVAL``, id in use ``EEXIST``;
- ``KVM_SET_USER_MEMORY_REGION`` [KVM-API §4.35; KVM-MAIN]: ``EINVAL``; overlap ``EEXIST``;
  size 0 deletes; identical re-registration is a no-op;
- VM and vCPU requests from another process than the VM's creator: ``EIO``.

Simplifications
---------------
- Descriptor numbers are made up (nothing is opened); ``mmap`` of a vCPU gives the
  same 3-page area every time (offset 0 only).
- ``userspace_addr`` must lie in memory registered with :func:`address_of` or a
  :class:`GuestMemory` (else ``EINVAL``); the real kernel accepts any address and
  fails at ``KVM_RUN`` (``EFAULT``) if it is not mapped.
- The in-kernel interrupt controller (``KVM_CREATE_IRQCHIP``) is modelled for what it
  changes for a VMM [KVM-API §4.24, §4.38; KVM-X86 ``kvm_emulate_halt``]: it must come
  before the first vCPU (else ``EINVAL``; twice ``EEXIST``); vCPUs other than 0 then
  start ``KVM_MP_STATE_UNINITIALIZED`` (waiting for INIT/SIPI) and vCPU 0 runnable;
  and a guest's ``hlt`` no longer returns ``KVM_EXIT_HLT``: KVM marks the vCPU
  ``KVM_MP_STATE_HALTED`` and sleeps in the kernel until an interrupt wakes it.  The
  model has no clock and no interrupt sources (no ``KVM_IRQ_LINE``, PIT or APIC
  timer), so nothing can wake it: where the real ``KVM_RUN`` sleeps until the VMM's
  thread gets a signal and then fails with ``EINTR`` (exit reason ``KVM_EXIT_INTR``),
  the model fails that way at once.  The tests check this against the real module,
  ending its sleep with a timer signal.
- No ``KVM_INTERRUPT``, dirty log, MSRs or CPUID: those requests are unknown here.
  ``KVM_SET_TSS_ADDR`` is accepted and ignored.
- A run has a limit — teaching ISA: ``budget`` instructions; x86: ``time_limit``
  seconds.  Reaching it ends ``KVM_RUN`` with ``EINTR`` and exit reason
  ``KVM_EXIT_INTR``, as a timer signal would; ``KVM_RUN`` again continues.
- ``KVM_SET_SREGS`` does not validate the control registers.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import mmap
import os
import threading
from typing import Any

from virtcore.hw.cpu import CPU, VMCS, StopReason
from virtcore.hw.devices import Bus, InterruptController
from virtcore.hw.events import ExitReason, Privilege, Trap, VMExit
from virtcore.hw.isa import CR, CR0_PG, MASK32, decode
from virtcore.hw.memory import FrameAllocator, PhysicalMemory
from virtcore.hw.paging import MMU, PTE_D, PagingConfig
from virtcore.kvm.api import (
    KVM_API_VERSION,
    KVM_CAP_HLT,
    KVM_CAP_IMMEDIATE_EXIT,
    KVM_CAP_IRQCHIP,
    KVM_CAP_MAX_VCPU_ID,
    KVM_CAP_MAX_VCPUS,
    KVM_CAP_NR_MEMSLOTS,
    KVM_CAP_NR_VCPUS,
    KVM_CAP_READONLY_MEM,
    KVM_CAP_SET_TSS_ADDR,
    KVM_CAP_USER_MEMORY,
    KVM_CHECK_EXTENSION,
    KVM_CREATE_IRQCHIP,
    KVM_CREATE_VCPU,
    KVM_CREATE_VM,
    KVM_ENOSYS,
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
    KVM_GET_MP_STATE,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_GET_VCPU_MMAP_SIZE,
    KVM_INTERNAL_ERROR_EMULATION,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    KVM_MP_STATE_HALTED,
    KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_SIPI_RECEIVED,
    KVM_MP_STATE_UNINITIALIZED,
    KVM_PIO_PAGE_OFFSET,
    KVM_RUN,
    KVM_SET_MP_STATE,
    KVM_SET_REGS,
    KVM_SET_SREGS,
    KVM_SET_TSS_ADDR,
    KVM_SET_USER_MEMORY_REGION,
    KVM_VCPU_MMAP_SIZE,
    KVMIO,
    PAGE_SIZE,
    KvmUsageError,
    SystemFd,
    VcpuFd,
    VmFd,
    ioc_type,
    kvm_error,
    kvm_mp_state,
    kvm_regs,
    kvm_run,
    kvm_sregs,
    kvm_userspace_memory_region,
    lookup_user_memory,
    struct_arg,
)
from virtcore.kvm.x86 import Slot, X86Engine

__all__ = ["ModelSystemFd", "ModelVcpuFd", "ModelVmFd", "TeachingEngine", "open_model_kvm",
           "reset_regs", "reset_sregs"]

# limits of the model (those of the measured host where they are constants, [KVM-H])
KVM_MAX_VCPUS = 1024
KVM_MAX_VCPU_IDS = 4096
KVM_USER_MEM_SLOTS = 32764
MODEL_NR_VCPUS = 4  # "recommended" vCPUs; on a real host the number of online CPUs
TEACHING_MEMORY_LIMIT = 64 << 20  # the teaching backend copies guest RAM into a hw machine
#: VM-entry failure "invalid guest state": VMX exit reason 33 with bit 31 set
ENTRY_FAILURE_INVALID_GUEST_STATE = 0x8000_0021
PIO_DATA_OFFSET = KVM_PIO_PAGE_OFFSET * PAGE_SIZE

_fd_numbers = itertools.count(1000)


def reset_regs() -> kvm_regs:
    """The registers of a new vCPU (x86 reset state, as a real KVM reports it).

    ``rdx`` holds the processor signature (0x600 without a CPUID table).

    >>> r = reset_regs(); hex(r.rip), hex(r.rflags), hex(r.rdx)
    ('0xfff0', '0x2', '0x600')
    """
    return kvm_regs(rip=0xFFF0, rflags=0x2, rdx=0x600)


def reset_sregs() -> kvm_sregs:
    """The special registers of a new vCPU, byte for byte as a real KVM reports them.

    >>> s = reset_sregs(); hex(s.cs.selector), hex(s.cs.base), hex(s.cr0)
    ('0xf000', '0xffff0000', '0x60000010')
    """
    s = kvm_sregs()
    for name in ("cs", "ds", "es", "fs", "gs", "ss"):
        seg = getattr(s, name)
        seg.limit, seg.present, seg.s, seg.type = 0xFFFF, 1, 1, 3
    s.cs.selector, s.cs.base, s.cs.type = 0xF000, 0xFFFF_0000, 0xB
    s.tr.limit, s.tr.present, s.tr.type = 0xFFFF, 1, 0xB
    s.ldt.limit, s.ldt.present, s.ldt.type = 0xFFFF, 1, 2
    s.gdt.limit = s.idt.limit = 0xFFFF
    s.cr0 = 0x6000_0010
    s.apic_base = 0xFEE0_0900
    return s


# ---------------------------------------------------------------------------
class _ModelFd:
    """What the three model descriptors share: a number, a creator process, close().

    It sets no ``kind``: each descriptor takes it from its API class
    (``SystemFd.kind == "system"``, as the real backend reports).
    """

    kind: str  # set by the API class each descriptor also derives from

    def __init__(self) -> None:
        self._fd = next(_fd_numbers)
        self._pid = os.getpid()

    def fileno(self) -> int:
        """The (made-up) descriptor number."""
        if self._fd < 0:
            raise KvmUsageError(f"this {self.kind} descriptor is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._fd < 0

    def close(self) -> None:
        """Close the descriptor."""
        self._fd = -1

    def _check_process(self) -> None:
        # VM, vCPU and device ioctls from another process: EIO [KVM-MAIN; LOCAL]
        if os.getpid() != self._pid:
            raise kvm_error(errno.EIO, "this VM belongs to another process (kvm->mm != "
                                       "current->mm)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fd={self._fd})"


class ModelSystemFd(_ModelFd, SystemFd):
    """The system descriptor of the simulated ``/dev/kvm``.

    Parameters
    ----------
    isa : {"teaching", "x86"}
        The guest CPU behind ``KVM_RUN`` of the VMs created here.
    budget : int
        Teaching ISA: instructions one ``KVM_RUN`` may execute before ``EINTR``.
    time_limit : float or None
        x86: seconds one ``KVM_RUN`` may last before ``EINTR`` (None: no limit).

    >>> kvm = ModelSystemFd(isa="teaching")
    >>> kvm.ioctl(KVM_GET_API_VERSION, 0), kvm.isa
    (12, 'teaching')
    """

    backend = "model"

    def __init__(self, isa: str = "teaching", *, budget: int = 5_000_000,
                 time_limit: float | None = 5.0) -> None:
        if isa not in ("teaching", "x86"):
            raise KvmUsageError(f"isa must be 'teaching' or 'x86', not {isa!r}")
        super().__init__()
        self.isa = isa
        self.budget = budget
        self.time_limit = time_limit

    def ioctl(self, request: int, arg: Any = 0) -> Any:
        """System requests: ``KVM_GET_API_VERSION``, ``KVM_CREATE_VM``,
        ``KVM_CHECK_EXTENSION``, ``KVM_GET_VCPU_MMAP_SIZE``."""
        self.fileno()
        if request == KVM_GET_API_VERSION:
            if arg != 0:
                raise kvm_error(errno.EINVAL, "KVM_GET_API_VERSION takes no argument (0)")
            return KVM_API_VERSION
        if request == KVM_CREATE_VM:
            if arg != 0:
                raise kvm_error(errno.EINVAL, f"machine type {arg!r}: use 0 on x86")
            return ModelVmFd(self)
        if request == KVM_CHECK_EXTENSION:
            return _check_extension(arg)
        if request == KVM_GET_VCPU_MMAP_SIZE:
            if arg != 0:
                raise kvm_error(errno.EINVAL, "KVM_GET_VCPU_MMAP_SIZE takes no argument (0)")
            return KVM_VCPU_MMAP_SIZE
        raise kvm_error(errno.EINVAL, f"request {request:#x} is not a system ioctl "
                                      "(kvm_arch_dev_ioctl answers EINVAL)")


_CAPS = {KVM_CAP_IRQCHIP: 1, KVM_CAP_USER_MEMORY: 1, KVM_CAP_HLT: 1, KVM_CAP_SET_TSS_ADDR: 1,
         KVM_CAP_NR_VCPUS: MODEL_NR_VCPUS, KVM_CAP_MAX_VCPUS: KVM_MAX_VCPUS,
         KVM_CAP_NR_MEMSLOTS: KVM_USER_MEM_SLOTS, KVM_CAP_READONLY_MEM: 1,
         KVM_CAP_MAX_VCPU_ID: KVM_MAX_VCPU_IDS, KVM_CAP_IMMEDIATE_EXIT: 1}


def _check_extension(cap: Any) -> int:
    """``KVM_CHECK_EXTENSION``: 0 for what the model does not have (e.g. ``KVM_CAP_PIT2``, 33).

    >>> [_check_extension(c) for c in (KVM_CAP_USER_MEMORY, KVM_CAP_IRQCHIP, 33)]
    [1, 1, 0]
    """
    return _CAPS.get(cap, 0) if isinstance(cap, int) else 0


# ---------------------------------------------------------------------------
class _MemSlot:
    """One memory slot of a model VM."""

    __slots__ = ("flags", "gpa", "hva", "region", "size")

    def __init__(self, gpa: int, size: int, hva: int, flags: int, region: Any) -> None:
        self.gpa, self.size, self.hva, self.flags, self.region = gpa, size, hva, flags, region

    def overlaps(self, gpa: int, size: int) -> bool:
        return gpa < self.gpa + self.size and self.gpa < gpa + size


class ModelVmFd(_ModelFd, VmFd):
    """A VM of the simulated KVM: memory slots and vCPUs ("no vCPUs and no memory" at first).

    >>> vm = open_model_kvm().create_vm()
    >>> vm.slots, vm.vcpus
    ({}, {})
    """

    kind = "vm"

    def __init__(self, system: ModelSystemFd) -> None:
        super().__init__()
        self.isa = system.isa
        self.budget = system.budget
        self.time_limit = system.time_limit
        self.slots: dict[int, _MemSlot] = {}
        self.layout_version = 0
        self.vcpus: dict[int, ModelVcpuFd] = {}
        self.tss_addr: int | None = None
        self.irqchip = False  # KVM_CREATE_IRQCHIP done
        self.lock = threading.Lock()
        self._host: _TeachingHost | None = None

    def close(self) -> None:
        """Close the VM descriptor (its memory slots stop pinning their user memory)."""
        for s in self.slots.values():
            s.region.users -= 1
        self.slots.clear()
        self.layout_version += 1
        super().close()

    def ioctl(self, request: int, arg: Any = 0) -> Any:
        """VM requests: ``KVM_SET_USER_MEMORY_REGION``, ``KVM_CREATE_VCPU``,
        ``KVM_CHECK_EXTENSION``, ``KVM_SET_TSS_ADDR``, ``KVM_CREATE_IRQCHIP``."""
        self.fileno()
        self._check_process()
        if request == KVM_SET_USER_MEMORY_REGION:
            return self._set_memory_region(
                struct_arg(arg, kvm_userspace_memory_region, writable=False))
        if request == KVM_CREATE_VCPU:
            return self._create_vcpu(arg)
        if request == KVM_CHECK_EXTENSION:
            return _check_extension(arg)
        if request == KVM_SET_TSS_ADDR:
            self.tss_addr = arg
            return 0
        if request == KVM_CREATE_IRQCHIP:  # kvm_arch_vm_ioctl, x86 [KVM-X86]
            if self.irqchip:
                raise kvm_error(errno.EEXIST, "this VM already has an in-kernel irqchip")
            if self.vcpus:
                raise kvm_error(errno.EINVAL, "KVM_CREATE_IRQCHIP must come before the first "
                                              "KVM_CREATE_VCPU")
            self.irqchip = True
            return 0
        raise kvm_error(errno.ENOTTY, f"request {request:#x} is not a VM ioctl of the model")

    # -- KVM_CREATE_VCPU -------------------------------------------------------------
    def _create_vcpu(self, vcpu_id: Any) -> ModelVcpuFd:
        if not isinstance(vcpu_id, int) or not 0 <= vcpu_id < KVM_MAX_VCPU_IDS:
            raise kvm_error(errno.EINVAL, f"vCPU id {vcpu_id!r} is not below KVM_MAX_VCPU_IDS "
                                          f"({KVM_MAX_VCPU_IDS})")
        if len(self.vcpus) >= KVM_MAX_VCPUS:
            raise kvm_error(errno.EINVAL, f"this VM already has {KVM_MAX_VCPUS} vCPUs")
        if vcpu_id in self.vcpus:
            raise kvm_error(errno.EEXIST, f"vCPU id {vcpu_id} is already in use in this VM")
        vcpu = ModelVcpuFd(self, vcpu_id)
        self.vcpus[vcpu_id] = vcpu
        return vcpu

    # -- KVM_SET_USER_MEMORY_REGION (__kvm_set_memory_region) [KVM-API §4.35; KVM-MAIN] --
    def _set_memory_region(self, mem: kvm_userspace_memory_region) -> int:
        einval = errno.EINVAL
        if mem.flags & ~(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY):
            raise kvm_error(einval, f"unknown flag bits {mem.flags:#x}")
        as_id, slot_id = mem.slot >> 16, mem.slot & 0xFFFF
        if as_id != 0 or slot_id >= KVM_USER_MEM_SLOTS:
            raise kvm_error(einval, f"slot {mem.slot:#x}: address space {as_id}, slot id "
                                    f"{slot_id} (user slots: 0..{KVM_USER_MEM_SLOTS - 1})")
        if mem.memory_size & (PAGE_SIZE - 1):
            raise kvm_error(einval, f"memory_size {mem.memory_size:#x} is not a multiple of "
                                    "the page size")
        if mem.guest_phys_addr & (PAGE_SIZE - 1):
            raise kvm_error(einval, f"guest_phys_addr {mem.guest_phys_addr:#x} is not page "
                                    "aligned")
        if mem.userspace_addr & (PAGE_SIZE - 1):
            raise kvm_error(einval, f"userspace_addr {mem.userspace_addr:#x} is not page "
                                    "aligned")
        if mem.guest_phys_addr + mem.memory_size > 1 << 64:
            raise kvm_error(einval, "guest_phys_addr + memory_size wraps around")
        old = self.slots.get(slot_id)
        if mem.memory_size == 0:
            if old is None:
                raise kvm_error(einval, f"slot {slot_id} does not exist (nothing to delete)")
            del self.slots[slot_id]
            old.region.users -= 1
            self.layout_version += 1
            return 0
        if old is not None:
            if mem.userspace_addr != old.hva or mem.memory_size != old.size:
                raise kvm_error(einval, f"slot {slot_id} exists: it may move or change "
                                        "flags but not be resized or re-pointed")
            if (mem.flags ^ old.flags) & KVM_MEM_READONLY:
                raise kvm_error(einval, "KVM_MEM_READONLY cannot be toggled on an existing slot")
            if mem.guest_phys_addr == old.gpa:
                old.flags = mem.flags
                return 0  # identical re-registration, or a flags-only change
        region = lookup_user_memory(mem.userspace_addr, mem.memory_size)
        if region is None:
            raise kvm_error(einval, f"userspace_addr {mem.userspace_addr:#x} + "
                                    f"{mem.memory_size:#x} is not memory the model can see: "
                                    "use GuestMemory or address_of()")
        for other_id, other in self.slots.items():
            if other_id != slot_id and other.overlaps(mem.guest_phys_addr, mem.memory_size):
                raise kvm_error(errno.EEXIST, f"guest-physical {mem.guest_phys_addr:#x}+"
                                              f"{mem.memory_size:#x} overlaps slot {other_id}")
        if old is not None:
            old.gpa = mem.guest_phys_addr
            old.flags = mem.flags
        else:
            region.users += 1
            self.slots[slot_id] = _MemSlot(mem.guest_phys_addr, mem.memory_size,
                                           mem.userspace_addr, mem.flags, region)
        self.layout_version += 1
        return 0

    def slot_list(self) -> tuple[int, list[Slot]]:
        """``(layout version, slots)`` for the guest CPU backends."""
        return self.layout_version, [
            Slot(s.gpa, s.size, s.hva, bool(s.flags & KVM_MEM_READONLY))
            for s in sorted(self.slots.values(), key=lambda s: s.gpa)]

    def teaching_host(self) -> _TeachingHost:
        """The hw machine memory behind this VM's teaching-ISA vCPUs (built on demand)."""
        if self._host is None:
            self._host = _TeachingHost(self)
        return self._host


# ---------------------------------------------------------------------------
class ModelVcpuFd(_ModelFd, VcpuFd):
    """A vCPU of the simulated KVM.

    Attributes
    ----------
    engine : TeachingEngine or X86Engine
        The guest CPU behind ``KVM_RUN``.
    exits : dict of int to int
        ``KVM_EXIT_*`` → how many times ``KVM_RUN`` returned with it.

    >>> vcpu = open_model_kvm().create_vm().create_vcpu(3)
    >>> vcpu.vcpu_id, hex(vcpu.get_regs().rip)
    (3, '0xfff0')
    """

    kind = "vcpu"

    def __init__(self, vm: ModelVmFd, vcpu_id: int) -> None:
        super().__init__()
        self.vm = vm
        self.vcpu_id = vcpu_id
        self._area = mmap.mmap(-1, KVM_VCPU_MMAP_SIZE)
        self._run = kvm_run.from_buffer(self._area)
        self._run._mapping_size = KVM_VCPU_MMAP_SIZE
        self.regs = reset_regs()
        self.sregs = reset_sregs()
        self._needs_load = True
        self._engine_newer = False
        self.exits: dict[int, int] = {}
        # with an in-kernel local APIC only the boot vCPU (id 0) starts runnable
        self.mp_state = KVM_MP_STATE_UNINITIALIZED if vm.irqchip and vcpu_id != 0 \
            else KVM_MP_STATE_RUNNABLE
        if vm.isa == "x86":
            self.engine: Any = X86Engine(vm.slot_list, time_limit=vm.time_limit)
        else:
            self.engine = TeachingEngine(vm, budget=vm.budget)

    def mmap(self, length: int = KVM_VCPU_MMAP_SIZE) -> kvm_run:
        """The vCPU's shared area as a :class:`kvm_run` (the same area on every call)."""
        self.fileno()
        if not 0 < length <= KVM_VCPU_MMAP_SIZE:
            raise kvm_error(errno.EINVAL, f"the vCPU area has {KVM_VCPU_MMAP_SIZE} bytes; "
                                          f"cannot map {length}")
        run = kvm_run.from_buffer(self._area)
        run._mapping_size = length
        return run

    def _pull(self) -> None:
        if self._engine_newer:
            self.engine.store_regs(self.regs)
            self.engine.store_sregs(self.sregs)
            self._engine_newer = False

    def ioctl(self, request: int, arg: Any = 0) -> Any:
        """vCPU requests: ``KVM_RUN``, ``KVM_GET/SET_REGS``, ``KVM_GET/SET_SREGS``,
        ``KVM_GET/SET_MP_STATE``."""
        self.fileno()
        self._check_process()
        if ioc_type(request) != KVMIO:
            raise kvm_error(errno.EINVAL, f"request {request:#x} is not a KVM request")
        if request == KVM_RUN:
            if arg != 0:
                raise kvm_error(errno.EINVAL, "KVM_RUN takes no argument (0)")
            return self._kvm_run()
        if request == KVM_GET_REGS:
            out = struct_arg(arg, kvm_regs, writable=True)
            self._pull()
            ctypes.memmove(ctypes.addressof(out), ctypes.addressof(self.regs),
                           ctypes.sizeof(kvm_regs))
            return 0
        if request == KVM_SET_REGS:
            new = struct_arg(arg, kvm_regs, writable=False)
            self._pull()
            ctypes.memmove(ctypes.addressof(self.regs), ctypes.addressof(new),
                           ctypes.sizeof(kvm_regs))
            self.regs.rflags |= 0x2  # bit 1 always reads 1 (KVM forces it)
            self._needs_load = True
            return 0
        if request == KVM_GET_SREGS:
            out = struct_arg(arg, kvm_sregs, writable=True)
            self._pull()
            ctypes.memmove(ctypes.addressof(out), ctypes.addressof(self.sregs),
                           ctypes.sizeof(kvm_sregs))
            return 0
        if request == KVM_SET_SREGS:
            new = struct_arg(arg, kvm_sregs, writable=False)
            self._pull()
            ctypes.memmove(ctypes.addressof(self.sregs), ctypes.addressof(new),
                           ctypes.sizeof(kvm_sregs))
            self._needs_load = True
            return 0
        if request == KVM_GET_MP_STATE:
            struct_arg(arg, kvm_mp_state, writable=True).mp_state = self.mp_state
            return 0
        if request == KVM_SET_MP_STATE:
            self._set_mp_state(struct_arg(arg, kvm_mp_state, writable=False).mp_state)
            return 0
        raise kvm_error(errno.EINVAL, f"request {request:#x} is not a vCPU ioctl "
                                      "(kvm_arch_vcpu_ioctl answers EINVAL)")

    def _set_mp_state(self, state: int) -> None:
        # kvm_arch_vcpu_ioctl_set_mpstate [KVM-X86]: without an in-kernel local APIC
        # only RUNNABLE is accepted; a SIPI is latched as INIT_RECEIVED + a pending SIPI
        if not self.vm.irqchip and state != KVM_MP_STATE_RUNNABLE:
            raise kvm_error(errno.EINVAL, "without an in-kernel irqchip the only mp_state "
                                          "user space may set is KVM_MP_STATE_RUNNABLE")
        if state not in (KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED,
                         KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_HALTED,
                         KVM_MP_STATE_SIPI_RECEIVED):
            raise kvm_error(errno.EINVAL, f"mp_state {state} is not an x86 state")
        self.mp_state = KVM_MP_STATE_INIT_RECEIVED if state == KVM_MP_STATE_SIPI_RECEIVED \
            else state

    def _sleep(self, run: kvm_run, why: str) -> None:
        """The vCPU sleeps in the kernel (``kvm_vcpu_block``) until a signal: ``EINTR``."""
        run.exit_reason = KVM_EXIT_INTR
        raise kvm_error(errno.EINTR, f"{why}; the vCPU sleeps in KVM until an interrupt "
                                     "wakes it, and nothing in the model can: ended as a "
                                     "signal to the VMM's thread would end it")

    def _kvm_run(self) -> int:
        run = self._run
        engine = self.engine
        if self._needs_load:
            engine.load(self.regs, self.sregs)
            self._needs_load = False
        if run.immediate_exit:
            engine.complete_pending(run)
            run.exit_reason = KVM_EXIT_INTR
            raise kvm_error(errno.EINTR, "kvm_run.immediate_exit is set")
        if self.mp_state != KVM_MP_STATE_RUNNABLE:
            self._sleep(run, "the vCPU is halted" if self.mp_state == KVM_MP_STATE_HALTED
                        else f"the vCPU waits for INIT/SIPI (mp_state {self.mp_state})")
        self._engine_newer = True
        try:
            engine.run(run)
        except InterruptedError as e:
            run.exit_reason = KVM_EXIT_INTR
            raise kvm_error(errno.EINTR, f"the model ended this run: {e} (as a timer "
                                         "signal would; KVM_RUN again to continue)") from None
        reason = run.exit_reason
        if reason == KVM_EXIT_HLT and self.vm.irqchip:
            # kvm_emulate_halt with the local APIC in the kernel: no exit to user space
            self.mp_state = KVM_MP_STATE_HALTED
            self._sleep(run, "hlt with an in-kernel irqchip")
        self.exits[reason] = self.exits.get(reason, 0) + 1
        return 0


# ---------------------------------------------------------------------------
# the teaching ISA in guest mode on virtcore.hw
class _TeachingHost:
    """The host side of a teaching-ISA VM: hw physical memory holding the guest's RAM
    and an EPT (nested MMU) mapping the slots' guest-physical pages onto it.

    User memory stays the truth between runs, as with KVM: before a run changed user
    pages are copied in; after it, pages the guest wrote (EPT dirty bits) are copied
    back.  (Simplification: KVM maps the user pages themselves; the hw machine has
    its own word-array memory.)
    """

    def __init__(self, vm: ModelVmFd) -> None:
        self.vm = vm
        self.version = -1
        self.memory: PhysicalMemory | None = None
        self.ept: MMU | None = None
        self.pages: list[tuple[int, int, int, int]] = []  # (pte word index, hva, hpa, gpa)
        self.shadows: list[tuple[int, int, int, bytearray]] = []  # (hva, hpa, size, copy)

    def ensure(self) -> None:
        """(Re)build memory and EPT if the slot layout changed."""
        version, slots = self.vm.slot_list()
        if version == self.version:
            return
        slots = [s for s in slots if s.gpa + s.size <= 1 << 32]
        data_pages = sum(s.size for s in slots) // PAGE_SIZE
        if data_pages * PAGE_SIZE > TEACHING_MEMORY_LIMIT:
            raise kvm_error(errno.ENOMEM, f"the teaching backend holds at most "
                                          f"{TEACHING_MEMORY_LIMIT >> 20} MiB of guest RAM")
        tables = 1 + len({page >> 22 for s in slots for page in range(s.gpa, s.gpa + s.size,
                                                                        PAGE_SIZE)})
        memory = PhysicalMemory(max(1, data_pages + tables) * PAGE_SIZE, PAGE_SIZE)
        alloc = FrameAllocator(memory)
        ept = MMU(memory, PagingConfig.x86_32(), tlb_size=0)
        ept.set_root(ept.alloc_table(alloc))
        hpa_of: dict[int, int] = {}
        for s in slots:
            for off in range(0, s.size, PAGE_SIZE):
                hpa_of[s.gpa + off] = alloc.alloc() * PAGE_SIZE
        self.pages = []
        self.shadows = []
        for s in slots:
            for off in range(0, s.size, PAGE_SIZE):
                ept.map(s.gpa + off, hpa_of[s.gpa + off], writable=not s.readonly,
                        allocator=alloc)
        ept.enabled = True
        for s in slots:
            data = ctypes.string_at(s.hva, s.size)
            for off in range(0, s.size, PAGE_SIZE):
                hpa = hpa_of[s.gpa + off]
                memory.write_bytes(hpa, data[off:off + PAGE_SIZE])
                leaf = ept.walk(s.gpa + off).steps[-1].entry_paddr
                self.pages.append((leaf >> 2, s.hva + off, hpa, s.gpa + off))
                self.shadows.append((s.hva + off, hpa, PAGE_SIZE,
                                     bytearray(data[off:off + PAGE_SIZE])))
        self.memory, self.ept, self.version = memory, ept, version

    def sync_in(self) -> None:
        """Copy user pages changed since the last run into the machine's memory."""
        memory = self.memory
        string_at = ctypes.string_at
        memory = self.memory
        assert memory is not None, "ensure() builds the memory first"
        for hva, hpa, size, shadow in self.shadows:
            now = string_at(hva, size)
            if shadow != now:
                memory.write_bytes(hpa, now)  # notifies the CPU's code cache
                shadow[:] = now

    def sync_out(self, full: bool) -> None:
        """Copy pages the guest wrote back to user memory (EPT D bits, or all if ``full``)."""
        memory = self.memory
        assert memory is not None, "ensure() builds the memory first"
        words = memory.words
        for i, (index, hva, hpa, _gpa) in enumerate(self.pages):
            if words[index] & PTE_D or full:
                words[index] &= ~PTE_D
                data = memory.read_bytes(hpa, PAGE_SIZE)
                shadow = self.shadows[i][3]
                if shadow != data:
                    ctypes.memmove(hva, data, PAGE_SIZE)
                    shadow[:] = data


# kvm_regs field for each teaching register r0..r7 (r7 is sp = rsp)
TEACHING_REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")


class TeachingEngine:
    """One vCPU running the teaching ISA in guest mode (VMX non-root) on :mod:`virtcore.hw`.

    Mapping to the x86 structures: ``r0``–``r7`` are ``rax, rbx, rcx, rdx, rsi, rdi,
    rbp, rsp`` (``r7`` is the stack pointer); ``pc = cs.base + rip`` (the teaching
    CPU has no segments); ``rflags`` are the teaching flags (same bit positions);
    ``cs.selector & 3`` is the privilege level (0 kernel, 3 user); ``cr0`` (PG),
    ``cr2`` and ``cr3`` are the teaching control registers.

    Exits, with the VMCS of a KVM guest (I/O and HLT exiting, EPT, no CR3 exiting):

    - ``out``/``in`` → ``KVM_EXIT_IO`` (size 4, count 1).  As on a real KVM, ``rip``
      is past an OUT at its exit but still at an IN, whose data lands in its register
      (and ``rip`` moves on) on the next ``KVM_RUN``;
    - EPT violation on a data access (``ld``/``st`` at a guest-physical address with
      no slot, or ``st`` to a read-only slot) → ``KVM_EXIT_MMIO`` (len 4), decoded
      like KVM's emulator: a read re-executes on the next ``KVM_RUN`` (``pc`` stays),
      a write completes at once; any other instruction, or a guest with paging on,
      or fetching code with no slot → ``KVM_EXIT_INTERNAL_ERROR`` (emulation);
    - ``hlt`` → ``KVM_EXIT_HLT`` (no in-kernel irqchip, [KVM-H]);
    - a trap with no handler in the guest (``TVEC`` = 0) → ``KVM_EXIT_SHUTDOWN``
      (x86: a triple fault);
    - ``hcall`` (VMCALL) is handled inside "KVM", as the real one does for unknown
      hypercall numbers: ``r0 = -KVM_ENOSYS`` (``-EPERM`` from user mode) and the
      guest goes on — ``KVM_EXIT_HYPERCALL`` is unused [KVM-H; KVM-API §5];
    - register values beyond 32 bits or a privilege level other than 0/3 →
      ``KVM_EXIT_FAIL_ENTRY`` (invalid guest state);
    - ``budget`` instructions without an exit → ``EINTR`` (see the model).

    >>> TEACHING_REGS[0], TEACHING_REGS[7]
    ('rax', 'rsp')
    """

    def __init__(self, vm: ModelVmFd, *, budget: int = 5_000_000) -> None:
        self.vm = vm
        self.budget = budget
        self.cpu: CPU | None = None
        self._version = -1
        self._state: tuple[kvm_regs, kvm_sregs] | None = None
        self._pending: tuple[str, int, int] | None = None
        self._entry_error = False
        self.vmcs = VMCS(hlt_exiting=True, unconditional_io_exiting=True,
                         external_interrupt_exiting=True, cr_exiting=set())

    # -- state --------------------------------------------------------------------------
    def load(self, regs: kvm_regs, sregs: kvm_sregs) -> None:
        """Take ``regs``/``sregs`` as the state for the next run."""
        r, s = kvm_regs(), kvm_sregs()
        ctypes.memmove(ctypes.addressof(r), ctypes.addressof(regs), ctypes.sizeof(r))
        ctypes.memmove(ctypes.addressof(s), ctypes.addressof(sregs), ctypes.sizeof(s))
        self._state = (r, s)

    def _apply(self, cpu: CPU) -> bool:
        """Load the pending state into ``cpu``; False if it is not a valid guest state."""
        assert self._state is not None
        regs, sregs = self._state
        values = [getattr(regs, n) for n in TEACHING_REGS]
        pc = sregs.cs.base + regs.rip
        cpl = sregs.cs.selector & 3
        if max(values) > MASK32 or regs.rflags > MASK32 or cpl not in (0, 3) \
                or sregs.cr3 > MASK32:
            return False
        cpu.regs[:] = values
        cpu.pc = pc & MASK32
        cpu.flags = regs.rflags
        cpu.mode = Privilege.USER if cpl == 3 else Privilege.KERNEL
        cpu.halted = False
        cpu.crs[CR.CR2] = sregs.cr2 & MASK32
        cpu.write_cr(CR.CR3, (sregs.cr3 & MASK32) & ~0xFFF)
        cpu.write_cr(CR.CR0, (cpu.crs[CR.CR0] & ~CR0_PG) | (sregs.cr0 & CR0_PG))
        self._cs_base = sregs.cs.base
        self._sregs = sregs
        self._state = None
        return True

    def store_regs(self, regs: kvm_regs) -> None:
        """Registers back into ``regs`` (``KVM_GET_REGS``)."""
        cpu = self.cpu
        if cpu is None or self._state is not None:
            return
        for name, value in zip(TEACHING_REGS, cpu.regs):
            setattr(regs, name, value)
        regs.rip = (cpu.pc - self._cs_base) & (2**64 - 1)
        regs.rflags = cpu.flags

    def store_sregs(self, sregs: kvm_sregs) -> None:
        """Control registers and privilege level back into ``sregs``."""
        cpu = self.cpu
        if cpu is None or self._state is not None:
            return
        sregs.cr0 = (sregs.cr0 & ~CR0_PG) | (cpu.crs[CR.CR0] & CR0_PG)
        sregs.cr2 = cpu.crs[CR.CR2]
        sregs.cr3 = cpu.crs[CR.CR3]
        cpl = 3 if cpu.mode is Privilege.USER else 0
        sregs.cs.selector = (sregs.cs.selector & ~3) | cpl
        sregs.cs.dpl = sregs.ss.dpl = cpl

    # -- running ------------------------------------------------------------------------
    def _machine(self, host: _TeachingHost) -> CPU:
        if self.cpu is None or self._version != host.version:
            state = None
            if self.cpu is not None and self._state is None:
                state = self.cpu.save_state()
            assert host.memory is not None, "ensure() builds the memory first"
            mmu = MMU(host.memory, PagingConfig.x86_32(), nested=host.ept)
            cpu = CPU(host.memory, mmu, Bus(InterruptController(), None))
            if state is not None:
                cpu.load_state(state)
            self.cpu = cpu
            self._version = host.version
        return self.cpu

    def complete_pending(self, run: kvm_run) -> None:
        """Finish an IN or an MMIO read with the data user space left in ``run`` [KVM-API §5]."""
        pending, self._pending = self._pending, None
        if pending is None or self.cpu is None:
            return
        kind, rd, pc = pending
        cpu = self.cpu
        if cpu.pc != pc:
            return  # user space moved the pc: the instruction is abandoned, as in KVM
        if kind == "in":
            data = ctypes.string_at(ctypes.addressof(run) + PIO_DATA_OFFSET, 4)
        else:  # an MMIO read re-executed with the data
            data = bytes(run.mmio.data)[:4]
        cpu.regs[rd] = int.from_bytes(data, "little")
        cpu.pc = (pc + 4) & MASK32

    def run(self, run: kvm_run) -> None:
        """Run the guest until its next exit and describe the exit in ``run``."""
        vm = self.vm
        with vm.lock:
            host = vm.teaching_host()
            host.ensure()
            cpu = self._machine(host)
            if self._state is not None and not self._apply(cpu):
                run.exit_reason = KVM_EXIT_FAIL_ENTRY
                run.fail_entry.hardware_entry_failure_reason = ENTRY_FAILURE_INVALID_GUEST_STATE
                run.fail_entry.cpu = 0
                return
            self.complete_pending(run)
            host.sync_in()
            try:
                self._run_guest(cpu, run)
            finally:
                host.sync_out(full=cpu.mmu.enabled)

    def _run_guest(self, cpu: CPU, run: kvm_run) -> None:
        left = self.budget
        vmcs = self.vmcs
        vmcs.ept = self.vm.teaching_host().ept
        while True:
            cpu.enter_guest(vmcs)
            result = cpu.run(left)
            left -= result.steps
            ev = result.event
            if isinstance(ev, VMExit) and ev.reason is ExitReason.EPT_VIOLATION:
                self._ept_violation(cpu, ev, run)  # decodes the instruction in guest mode
                cpu.leave_guest()
                return
            cpu.leave_guest()
            if result.reason is StopReason.BUDGET:
                raise InterruptedError(f"the guest ran {self.budget} instructions without "
                                       "an exit (the budget of one KVM_RUN)")
            if isinstance(ev, Trap) or result.reason is StopReason.HALTED:
                run.exit_reason = KVM_EXIT_SHUTDOWN  # no handler in the guest: triple fault
                return
            assert isinstance(ev, VMExit)
            reason = ev.reason
            if reason is ExitReason.HLT:
                cpu.pc = (ev.pc + 4) & MASK32
                run.exit_reason = KVM_EXIT_HLT
                return
            if reason is ExitReason.IO_INSTRUCTION:
                q = ev.qualification
                run.exit_reason = KVM_EXIT_IO
                io = run.io
                io.size, io.count, io.port = 4, 1, q["port"]
                io.data_offset = PIO_DATA_OFFSET
                if q["direction"] == "out":
                    cpu.pc = (ev.pc + 4) & MASK32
                    io.direction = KVM_EXIT_IO_OUT
                    ctypes.memmove(ctypes.addressof(run) + PIO_DATA_OFFSET,
                                   int(q["value"]).to_bytes(4, "little"), 4)  # type: ignore[call-overload]
                else:
                    io.direction = KVM_EXIT_IO_IN  # pc stays at the IN until completion
                    cpu.pc = ev.pc
                    self._pending = ("in", int(q["register"]), ev.pc)  # type: ignore[call-overload]
                return
            if reason is ExitReason.VMCALL:
                # handled in "KVM": unknown hypercall (kvm_emulate_hypercall)
                err = 1 if cpu.mode is Privilege.USER else KVM_ENOSYS  # EPERM = 1
                cpu.regs[0] = -err & MASK32
                cpu.pc = (ev.pc + 4) & MASK32
                continue
            # anything else (an exit this VMCS does not ask for) is unexpected
            run.exit_reason = KVM_EXIT_INTERNAL_ERROR  # pragma: no cover - defensive
            run.internal.suberror = 4  # KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON
            return

    def _ept_violation(self, cpu: CPU, ev: VMExit, run: kvm_run) -> None:
        """MMIO: decode the faulting ``ld``/``st`` like KVM's instruction emulator."""
        gpa = int(ev.qualification["gpa"])  # type: ignore[call-overload]
        access = ev.qualification["access"]
        fetched = cpu.fetch() if access != "execute" and not cpu.mmu.enabled else None
        row = decode(fetched[1]) if isinstance(fetched, tuple) else None
        if row is None or row.mnemonic not in ("ld", "st"):
            run.exit_reason = KVM_EXIT_INTERNAL_ERROR
            run.internal.suberror = KVM_INTERNAL_ERROR_EMULATION
            run.internal.ndata = 0
            return
        word = fetched[1]  # type: ignore[index]
        rd = (word >> 20) & 0xF
        run.exit_reason = KVM_EXIT_MMIO
        m = run.mmio
        m.phys_addr = gpa
        m.len = 4
        if row.mnemonic == "st":
            m.is_write = 1
            ctypes.memmove(ctypes.addressof(m.data), cpu.regs[rd].to_bytes(4, "little"), 4)
            cpu.pc = (ev.pc + 4) & MASK32
        else:
            m.is_write = 0
            cpu.pc = ev.pc
            self._pending = ("mmio", rd, ev.pc)


# ---------------------------------------------------------------------------
def open_model_kvm(isa: str = "teaching", *, budget: int = 5_000_000,
                   time_limit: float | None = 5.0) -> ModelSystemFd:
    """``open("/dev/kvm")`` on the model: the system descriptor (see :class:`ModelSystemFd`).

    >>> open_model_kvm().ioctl(KVM_GET_API_VERSION, 0)
    12
    """
    return ModelSystemFd(isa, budget=budget, time_limit=time_limit)

