"""The KVM user-space API as C sees it: ioctl numbers, ``KVM_EXIT_*`` values, structures.

Everything here has the name and the number of ``<linux/kvm.h>`` (x86-64), see
[KVM-H].  Request numbers are *computed* with
the same ``_IO``/``_IOR``/``_IOW``/``_IOWR`` macros the header uses, and the
structures are :mod:`ctypes` structures with the real layouts, so the same objects
go to the simulated ``/dev/kvm`` (:mod:`virtcore.kvm.model`) and to the real one
(:mod:`virtcore.kvm.real`).

>>> hex(KVM_GET_API_VERSION), hex(KVM_RUN), hex(KVM_SET_USER_MEMORY_REGION)
('0xae00', '0xae80', '0x4020ae46')
>>> ctypes.sizeof(kvm_userspace_memory_region), kvm_run.exit_reason.offset, kvm_run.io.offset
(32, 8, 32)
>>> exit_name(KVM_EXIT_HLT)
'KVM_EXIT_HLT'

The file-descriptor objects
---------------------------
:class:`KvmFd` is the common shape of the three kinds of descriptor [KVM-API §4; KVM-MAIN]:
:class:`SystemFd` (``open("/dev/kvm")``), :class:`VmFd` (``KVM_CREATE_VM``) and
:class:`VcpuFd` (``KVM_CREATE_VCPU``).  Each has ``ioctl(request, arg=0)`` — the only
operation the kernel offers — and the vCPU also ``mmap(length)``, which returns the
shared :class:`kvm_run` page.  Errors are :class:`OSError` with the kernel's errno
[KVM-MAIN; LOCAL], never a library exception, so a mistake looks the same on the model and on a
real machine.  Named helpers (``create_vm()``, ``get_regs()``…) are thin wrappers
over ``ioctl``, identical for both backends.

Guest memory
------------
A memory slot points at *user* memory by address (``userspace_addr``).
:class:`GuestMemory` is an anonymous ``mmap`` (page-aligned, as KVM requires) that
knows its address; :func:`address_of` gives the address of any other writable
buffer.  The model only accepts addresses of buffers registered this way (it must
not touch arbitrary process memory); the real kernel accepts any mapped address.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from virtcore.errors import VirtcoreError

# ---------------------------------------------------------------------------
# ioctl request encoding (include/uapi/asm-generic/ioctl.h, x86-64)
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS, _IOC_DIRBITS = 8, 8, 14, 2
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    """Encode an ioctl request like the C macro ``_IOC(dir, type, nr, size)``.

    >>> hex(_IOC(_IOC_WRITE, 0xAE, 0x46, 32))
    '0x4020ae46'
    """
    if not 0 <= size < 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    return ((direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT)
            | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT))


def _IO(type_: int, nr: int) -> int:
    """``_IO(type, nr)``: no argument (or an integer argument).

    >>> hex(_IO(0xAE, 0x01))
    '0xae01'
    """
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, struct: type[ctypes.Structure] | int) -> int:
    """``_IOR``: the kernel writes a structure back to user space (``dir`` = read).

    >>> hex(_IOR(0xAE, 0x81, 144))
    '0x8090ae81'
    """
    return _IOC(_IOC_READ, type_, nr, _size(struct))


def _IOW(type_: int, nr: int, struct: type[ctypes.Structure] | int) -> int:
    """``_IOW``: user space passes a structure in (``dir`` = write).

    >>> hex(_IOW(0xAE, 0x82, 144))
    '0x4090ae82'
    """
    return _IOC(_IOC_WRITE, type_, nr, _size(struct))


def _IOWR(type_: int, nr: int, struct: type[ctypes.Structure] | int) -> int:
    """``_IOWR``: both directions.

    >>> hex(_IOWR(0xAE, 0x02, 4))
    '0xc004ae02'
    """
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, _size(struct))


def _size(struct: type[ctypes.Structure] | int) -> int:
    return struct if isinstance(struct, int) else ctypes.sizeof(struct)


def ioc_dir(request: int) -> int:
    """The direction bits of a request (0 none, 1 write, 2 read, 3 both).

    >>> ioc_dir(0x8090AE81), ioc_dir(0xAE80)
    (2, 0)
    """
    return (request >> _IOC_DIRSHIFT) & ((1 << _IOC_DIRBITS) - 1)


def ioc_type(request: int) -> int:
    """The type byte of a request (``KVMIO`` = 0xAE for KVM).

    >>> hex(ioc_type(0x4020AE46))
    '0xae'
    """
    return (request >> _IOC_TYPESHIFT) & ((1 << _IOC_TYPEBITS) - 1)


def ioc_size(request: int) -> int:
    """The argument size encoded in a request.

    >>> ioc_size(0x8138AE83)
    312
    """
    return (request >> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1)


# ---------------------------------------------------------------------------
# constants [KVM-H; KVM-API §4.35; KVM-MAIN]
KVMIO = 0xAE
KVM_API_VERSION = 12
PAGE_SIZE = 4096
KVM_PIO_PAGE_OFFSET = 1  # x86: page 1 of the vCPU mapping holds port-I/O data
KVM_COALESCED_MMIO_PAGE_OFFSET = 2
KVM_VCPU_MMAP_SIZE = 3 * PAGE_SIZE  # kvm_run + PIO page + coalesced-MMIO ring [KVM-H]

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

# include/uapi/linux/kvm_para.h: what an unknown hypercall returns in rax
KVM_ENOSYS = 1000

# capabilities (KVM_CHECK_EXTENSION arguments)
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_READONLY_MEM = 81
KVM_CAP_MAX_VCPU_ID = 128
KVM_CAP_IMMEDIATE_EXIT = 136

# multiprocessing states of a vCPU (KVM_GET_MP_STATE) [KVM-H]
KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4

_EXIT_NAMES = (
    "UNKNOWN", "EXCEPTION", "IO", "HYPERCALL", "DEBUG", "HLT", "MMIO", "IRQ_WINDOW_OPEN",
    "SHUTDOWN", "FAIL_ENTRY", "INTR", "SET_TPR", "TPR_ACCESS", "S390_SIEIC", "S390_RESET",
    "DCR", "NMI", "INTERNAL_ERROR", "OSI", "PAPR_HCALL", "S390_UCONTROL", "WATCHDOG",
    "S390_TSCH", "EPR", "SYSTEM_EVENT", "S390_STSI", "IOAPIC_EOI", "HYPERV", "ARM_NISV",
    "X86_RDMSR", "X86_WRMSR", "DIRTY_RING_FULL", "AP_RESET_HOLD", "X86_BUS_LOCK", "XEN",
    "RISCV_SBI", "RISCV_CSR", "NOTIFY",
)
#: ``KVM_EXIT_*`` value → name [KVM-H]
EXIT_NAMES: dict[int, str] = {i: "KVM_EXIT_" + n for i, n in enumerate(_EXIT_NAMES)}
globals().update({name: value for value, name in EXIT_NAMES.items()})
KVM_EXIT_UNKNOWN: int = 0
KVM_EXIT_EXCEPTION: int = 1
KVM_EXIT_IO: int = 2
KVM_EXIT_HYPERCALL: int = 3
KVM_EXIT_DEBUG: int = 4
KVM_EXIT_HLT: int = 5
KVM_EXIT_MMIO: int = 6
KVM_EXIT_IRQ_WINDOW_OPEN: int = 7
KVM_EXIT_SHUTDOWN: int = 8
KVM_EXIT_FAIL_ENTRY: int = 9
KVM_EXIT_INTR: int = 10
KVM_EXIT_NMI: int = 16
KVM_EXIT_INTERNAL_ERROR: int = 17
KVM_EXIT_SYSTEM_EVENT: int = 24
assert all(EXIT_NAMES[globals()[n]] == n for n in EXIT_NAMES.values())


def exit_name(reason: int) -> str:
    """The ``KVM_EXIT_*`` name of an exit reason (or ``KVM_EXIT_<n>`` if unknown).

    >>> exit_name(2), exit_name(17), exit_name(99)
    ('KVM_EXIT_IO', 'KVM_EXIT_INTERNAL_ERROR', 'KVM_EXIT_99')
    """
    return EXIT_NAMES.get(reason, f"KVM_EXIT_{reason}")


# ---------------------------------------------------------------------------
# structures [KVM-H; KVM-API §4.11–4.14, §4.35, §5] — x86-64 layouts
u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class _Struct(ctypes.Structure):
    """A structure that prints its fields (for notebooks and test failures)."""

    def _items(self) -> Iterator[tuple[str, Any]]:
        for name, *_ in self._fields_:
            if not name.startswith(("padding", "pad", "_")):
                yield name, getattr(self, name)

    def __repr__(self) -> str:
        def show(v: Any) -> str:
            if isinstance(v, int):
                return hex(v) if v > 9 else str(v)
            if isinstance(v, ctypes.Array):
                return "[" + ", ".join(show(x) for x in v) + "]"
            return repr(v)

        body = ", ".join(f"{k}={show(v)}" for k, v in self._items())
        return f"{type(self).__name__}({body})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and bytes(self) == bytes(other)  # type: ignore[arg-type]

    __hash__ = None  # type: ignore[assignment]


class kvm_userspace_memory_region(_Struct):  # noqa: N801 - the C name
    """``struct kvm_userspace_memory_region`` (32 bytes) [KVM-API §4.35; KVM-MAIN].

    ``slot``: bits 0–15 slot id, bits 16–31 address-space id; ``flags``:
    :data:`KVM_MEM_LOG_DIRTY_PAGES`, :data:`KVM_MEM_READONLY`; ``memory_size`` 0
    deletes the slot.

    >>> r = kvm_userspace_memory_region(slot=0, guest_phys_addr=0x1000, memory_size=0x1000)
    >>> ctypes.sizeof(r), r.memory_size
    (32, 4096)
    """

    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64),
                ("memory_size", u64), ("userspace_addr", u64)]


class kvm_regs(_Struct):  # noqa: N801 - the C name
    """``struct kvm_regs`` (144 bytes = 18 × u64) [KVM-API §4.11–4.14].

    >>> r = kvm_regs(rip=0x1000, rax=2, rbx=2, rflags=0x2)
    >>> ctypes.sizeof(r), kvm_regs.rip.offset, r.rbx
    (144, 128, 2)
    """

    _fields_ = [(n, u64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(_Struct):  # noqa: N801 - the C name
    """``struct kvm_segment`` (24 bytes): a segment register's hidden part.

    >>> ctypes.sizeof(kvm_segment), kvm_segment.selector.offset
    (24, 12)
    """

    _fields_ = [("base", u64), ("limit", u32), ("selector", u16), ("type", u8),
                ("present", u8), ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8),
                ("avl", u8), ("unusable", u8), ("padding", u8)]


class kvm_dtable(_Struct):  # noqa: N801 - the C name
    """``struct kvm_dtable`` (16 bytes): GDTR / IDTR.

    >>> ctypes.sizeof(kvm_dtable)
    16
    """

    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(_Struct):  # noqa: N801 - the C name
    """``struct kvm_sregs`` (312 bytes): segments, descriptor tables, control registers.

    [KVM-API §4.11–4.14]

    >>> s = kvm_sregs(); s.cs.selector = 0xf000
    >>> ctypes.sizeof(s), kvm_sregs.cr0.offset, hex(s.cs.selector)
    (312, 224, '0xf000')
    """

    _fields_ = [("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment),
                ("fs", kvm_segment), ("gs", kvm_segment), ("ss", kvm_segment),
                ("tr", kvm_segment), ("ldt", kvm_segment), ("gdt", kvm_dtable),
                ("idt", kvm_dtable), ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64),
                ("cr8", u64), ("efer", u64), ("apic_base", u64),
                ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64))]

    _SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")


class kvm_run_io(_Struct):  # noqa: N801 - the C name
    """The ``io`` member of the ``kvm_run`` exit union (``KVM_EXIT_IO``).

    >>> kvm_run_io.port.offset, ctypes.sizeof(kvm_run_io)
    (2, 16)
    """

    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32),
                ("data_offset", u64)]


class kvm_run_mmio(_Struct):  # noqa: N801 - the C name
    """The ``mmio`` member (``KVM_EXIT_MMIO``).

    >>> kvm_run_mmio.len.offset, kvm_run_mmio.is_write.offset
    (16, 20)
    """

    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class kvm_run_fail_entry(_Struct):  # noqa: N801 - the C name
    """The ``fail_entry`` member (``KVM_EXIT_FAIL_ENTRY``).

    >>> kvm_run_fail_entry.cpu.offset
    8
    """

    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class kvm_run_hw(_Struct):  # noqa: N801 - the C name
    """The ``hw`` member (``KVM_EXIT_UNKNOWN``).

    >>> ctypes.sizeof(kvm_run_hw)
    8
    """

    _fields_ = [("hardware_exit_reason", u64)]


class kvm_run_ex(_Struct):  # noqa: N801 - the C name
    """The ``ex`` member (``KVM_EXIT_EXCEPTION``, unused on x86).

    >>> kvm_run_ex.error_code.offset
    4
    """

    _fields_ = [("exception", u32), ("error_code", u32)]


class kvm_run_hypercall(_Struct):  # noqa: N801 - the C name
    """The ``hypercall`` member (``KVM_EXIT_HYPERCALL``, "unused", [KVM-H; KVM-API §5]).

    >>> kvm_run_hypercall.ret.offset
    56
    """

    _fields_ = [("nr", u64), ("args", u64 * 6), ("ret", u64), ("longmode", u32), ("pad", u32)]


class kvm_run_internal(_Struct):  # noqa: N801 - the C name
    """The ``internal`` member (``KVM_EXIT_INTERNAL_ERROR``).

    >>> kvm_run_internal.data.offset
    8
    """

    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_system_event(_Struct):  # noqa: N801 - the C name
    """The ``system_event`` member (``KVM_EXIT_SYSTEM_EVENT``).

    >>> kvm_run_system_event.data.offset
    8
    """

    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_exit(ctypes.Union):  # noqa: N801 - the C name
    """The 256-byte exit union of ``kvm_run`` (offset 32).

    >>> ctypes.sizeof(kvm_run_exit)
    256
    """

    _fields_ = [("hw", kvm_run_hw), ("fail_entry", kvm_run_fail_entry), ("ex", kvm_run_ex),
                ("io", kvm_run_io), ("mmio", kvm_run_mmio), ("hypercall", kvm_run_hypercall),
                ("internal", kvm_run_internal), ("system_event", kvm_run_system_event),
                ("padding", ctypes.c_char * 256)]


SYNC_REGS_SIZE_BYTES = 2048


class kvm_run(_Struct):  # noqa: N801 - the C name
    """``struct kvm_run``: the page KVM and user space share, x86-64 offsets [KVM-H; KVM-API §5].

    The exit union is anonymous in C; here its members are reachable both as
    ``run.io`` (like C) and as ``run.u.io``.  Only the fields up to the union are
    fixed ABI; the tail (``kvm_valid_regs``, ``kvm_dirty_regs``, sync regs) follows
    the 6.1 headers — 2352 bytes — and depends on the header version [KVM-H; KVM-API §5].

    Besides the fields, a ``kvm_run`` obtained from ``VcpuFd.mmap`` can read and
    write the rest of the mapping (the port-I/O data page): :meth:`data`,
    :meth:`set_data`, :meth:`io_data`, :meth:`set_io_data`, :meth:`mmio_data`,
    :meth:`set_mmio_data`.

    >>> kvm_run.exit_reason.offset, kvm_run.u.offset, ctypes.sizeof(kvm_run)
    (8, 32, 2352)
    >>> kvm_run.io.offset, kvm_run_io.port.offset + 32, kvm_run_mmio.is_write.offset + 32
    (32, 34, 52)
    """

    _anonymous_ = ("u",)
    _fields_ = [("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
                ("exit_reason", u32), ("ready_for_interrupt_injection", u8), ("if_flag", u8),
                ("flags", u16), ("cr8", u64), ("apic_base", u64), ("u", kvm_run_exit),
                ("kvm_valid_regs", u64), ("kvm_dirty_regs", u64),
                ("s", ctypes.c_char * SYNC_REGS_SIZE_BYTES)]

    def _items(self) -> Iterator[tuple[str, Any]]:
        yield "exit_reason", f"{self.exit_reason} ({exit_name(self.exit_reason)})"
        reason = self.exit_reason
        if reason == KVM_EXIT_IO:
            yield "io", self.io
        elif reason == KVM_EXIT_MMIO:
            yield "mmio", self.mmio
        elif reason == KVM_EXIT_FAIL_ENTRY:
            yield "fail_entry", self.fail_entry
        elif reason == KVM_EXIT_INTERNAL_ERROR:
            yield "internal", self.internal

    def __repr__(self) -> str:
        return "kvm_run(" + ", ".join(f"{k}={v}" if isinstance(v, str) else f"{k}={v!r}"
                                      for k, v in self._items()) + ")"

    # -- the rest of the mapping -------------------------------------------------------
    @property
    def mapping_size(self) -> int:
        """Bytes mapped behind this structure (the ``mmap`` length; ``sizeof`` if unknown)."""
        return getattr(self, "_mapping_size", ctypes.sizeof(self))

    def _check(self, offset: int, n: int) -> int:
        if offset < 0 or n < 0 or offset + n > self.mapping_size:
            raise KvmUsageError(f"bytes {offset:#x}..{offset + n:#x} are outside the "
                                f"{self.mapping_size}-byte vCPU mapping")
        return ctypes.addressof(self) + offset

    def data(self, offset: int, n: int) -> bytes:
        """``n`` bytes of the mapping at ``offset`` (relative to the start of ``kvm_run``)."""
        return ctypes.string_at(self._check(offset, n), n)

    def set_data(self, offset: int, data: bytes) -> None:
        """Write ``data`` into the mapping at ``offset``."""
        data = bytes(data)
        ctypes.memmove(self._check(offset, len(data)), data, len(data))

    def io_data(self) -> bytes:
        """The ``size * count`` bytes at ``io.data_offset`` (an OUT's data) [KVM-API §5]."""
        io = self.io
        return self.data(io.data_offset, io.size * io.count)

    def set_io_data(self, data: bytes) -> None:
        """Place an IN's data at ``io.data_offset``, for the next ``KVM_RUN`` [KVM-API §5]."""
        io = self.io
        if len(data) != io.size * io.count:
            raise KvmUsageError(f"an IN of {io.count} x {io.size} bytes needs "
                                f"{io.size * io.count} bytes, got {len(data)}")
        self.set_data(io.data_offset, data)

    def mmio_data(self) -> bytes:
        """The ``len`` bytes of ``mmio.data`` (a write's data)."""
        return bytes(self.mmio.data)[: self.mmio.len]

    def set_mmio_data(self, data: bytes) -> None:
        """Fill ``mmio.data`` for an MMIO read; consumed by the next ``KVM_RUN``."""
        m = self.mmio
        if len(data) != m.len:
            raise KvmUsageError(f"an MMIO read of {m.len} bytes needs {m.len} bytes, "
                                f"got {len(data)}")
        ctypes.memmove(ctypes.addressof(m.data), bytes(data), len(data))


class kvm_mp_state(_Struct):  # noqa: N801 - the C name
    """``struct kvm_mp_state { __u32 mp_state; }`` of ``KVM_GET/SET_MP_STATE``.

    [KVM-H; KVM-API §4.38]

    >>> ctypes.sizeof(kvm_mp_state), kvm_mp_state(mp_state=KVM_MP_STATE_HALTED).mp_state
    (4, 3)
    """

    _fields_ = [("mp_state", ctypes.c_uint32)]


# ---------------------------------------------------------------------------
# request numbers [KVM-H]
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, 4)  # struct kvm_msr_list (u32 + flexible array)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, 16)  # struct kvm_dirty_log
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)
KVM_INTERRUPT = _IOW(KVMIO, 0x86, 4)  # struct kvm_interrupt { __u32 irq; }
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, kvm_mp_state)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, kvm_mp_state)

#: request number → name, for traces
IOCTL_NAMES: dict[int, str] = {v: k for k, v in dict(globals()).items()
                               if k.startswith("KVM_") and isinstance(v, int)
                               and k not in ("KVM_API_VERSION",) and ioc_type(v) == KVMIO
                               and v > 0xFF}


def ioctl_name(request: int) -> str:
    """The name of a KVM request number (hex if unknown).

    >>> ioctl_name(0xAE80), ioctl_name(0x4020AE46), ioctl_name(0xAEFF)
    ('KVM_RUN', 'KVM_SET_USER_MEMORY_REGION', '0xaeff')
    """
    return IOCTL_NAMES.get(request, hex(request))


# ---------------------------------------------------------------------------
# errors
class KvmUsageError(VirtcoreError):
    """Misuse of the Python API itself (not of KVM): e.g. reading past the vCPU mapping,
    a closed descriptor object, an unavailable backend.  KVM's own errors are OSError.

    >>> issubclass(KvmUsageError, VirtcoreError)
    True
    """


def kvm_error(err: int, detail: str = "") -> OSError:
    """The :class:`OSError` a KVM call fails with: the kernel's errno, its usual text,
    and (model only) what went wrong.

    >>> e = kvm_error(errno.EEXIST, "vCPU id 0 is already in use")
    >>> e.errno == errno.EEXIST, str(e)
    (True, '[Errno 17] File exists (vCPU id 0 is already in use)')
    """
    text = os.strerror(err) + (f" ({detail})" if detail else "")
    return OSError(err, text)


# ---------------------------------------------------------------------------
# user memory
@dataclass
class _UserRegion:
    address: int
    size: int
    keepalive: object
    users: int = 0


#: buffers registered with address_of(): kept alive until the process ends
_USER_MEMORY: dict[int, _UserRegion] = {}
#: GuestMemory regions: alive while the GuestMemory object or a model memory slot holds them
_GUEST_MEMORY: weakref.WeakValueDictionary[int, _UserRegion] = weakref.WeakValueDictionary()


def address_of(buffer: Any) -> int:
    """The address of a writable buffer (``bytearray``, ``mmap``, ``ctypes`` array…),
    registered so that the model may use it as ``userspace_addr``.

    The buffer is kept alive (and a ``bytearray`` cannot be resized) from then on.
    KVM wants page-aligned user memory: a ``bytearray`` usually is not, which the
    kernel (and the model) answer with ``EINVAL`` — use :class:`GuestMemory`.

    >>> buf = mmap.mmap(-1, 4096)
    >>> address_of(buf) % 4096
    0
    """
    arr = (ctypes.c_char * len(buffer)).from_buffer(buffer)
    addr = ctypes.addressof(arr)
    _USER_MEMORY[addr] = _UserRegion(addr, len(buffer), arr)
    return addr


def lookup_user_memory(address: int, size: int) -> _UserRegion | None:
    """The registered buffer that holds ``[address, address + size)``, if any.

    >>> m = GuestMemory(4096)
    >>> lookup_user_memory(m.address + 16, 32).size, lookup_user_memory(m.address, 8192)
    (4096, None)
    """
    for regions in (_GUEST_MEMORY, _USER_MEMORY):
        for region in list(regions.values()):
            if region.address <= address and address + size <= region.address + region.size:
                return region
    return None


class GuestMemory:
    """Page-aligned anonymous user memory for a memory slot (``mmap(MAP_SHARED|MAP_ANONYMOUS)``).

    Step 5 of the canonical sequence [LWN15].  Index and slice it like ``bytes``;
    ``address`` is what goes into ``userspace_addr``.

    Parameters
    ----------
    size : int
        Bytes; a positive multiple of :data:`PAGE_SIZE`.

    Examples
    --------
    >>> mem = GuestMemory(0x1000)
    >>> mem[0:3] = b"\\xba\\xf8\\x03"
    >>> mem.address % PAGE_SIZE, len(mem), mem[0:3].hex()
    (0, 4096, 'baf803')
    """

    def __init__(self, size: int) -> None:
        if not isinstance(size, int) or size <= 0 or size % PAGE_SIZE:
            raise KvmUsageError(f"guest memory of {size!r} bytes: use a positive multiple "
                                f"of the page size ({PAGE_SIZE})")
        self.size = size
        self._mm = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE)
        arr = (ctypes.c_char * size).from_buffer(self._mm)
        self.address = ctypes.addressof(arr)
        self._region: _UserRegion | None = _UserRegion(self.address, size, arr)
        _GUEST_MEMORY[self.address] = self._region

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int | slice) -> int | bytes:
        return self._mm[index]

    def __setitem__(self, index: int | slice, value: Any) -> None:
        self._mm[index] = value

    def __buffer__(self, flags: int) -> memoryview:  # Python 3.12+
        return memoryview(self._mm)

    def read(self, offset: int, n: int) -> bytes:
        """``n`` bytes from ``offset``."""
        return self._mm[offset:offset + n]

    def write(self, offset: int, data: bytes) -> None:
        """Copy ``data`` to ``offset`` (e.g. load a guest's code)."""
        self._mm[offset:offset + len(data)] = bytes(data)

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._mm.closed

    def close(self) -> None:
        """Unmap the memory.  Refused while a model VM's memory slot still uses it."""
        region = self._region
        if region is not None:
            if region.users:
                raise KvmUsageError("this memory backs a memory slot of a model VM; "
                                    "delete the slot (memory_size=0) or close the VM first")
            _GUEST_MEMORY.pop(self.address, None)
            region.keepalive = None
            self._region = None
        if not self._mm.closed:
            self._mm.close()

    def __repr__(self) -> str:
        return f"GuestMemory({self.size:#x} bytes at {self.address:#x})"


# ---------------------------------------------------------------------------
# exits as values (for traces and differential tests)
@dataclass(frozen=True)
class ExitRecord:
    """What one ``KVM_RUN`` returned, read out of ``kvm_run`` (a value to compare and print).

    >>> print(ExitRecord(KVM_EXIT_IO, port=0x3f8, direction=1, size=1, count=1, data=b"4"))
    KVM_EXIT_IO out port=0x3f8 size=1 count=1 data=34
    """

    reason: int
    port: int | None = None
    direction: int | None = None
    size: int | None = None
    count: int | None = None
    phys_addr: int | None = None
    is_write: bool | None = None
    data: bytes = b""
    suberror: int | None = None

    @property
    def name(self) -> str:
        """``KVM_EXIT_*`` name."""
        return exit_name(self.reason)

    def __str__(self) -> str:
        if self.reason == KVM_EXIT_IO:
            d = "out" if self.direction == KVM_EXIT_IO_OUT else "in"
            text = (f"{self.name} {d} port={self.port:#x} size={self.size} count={self.count}")
        elif self.reason == KVM_EXIT_MMIO:
            d = "write" if self.is_write else "read"
            text = f"{self.name} {d} addr={self.phys_addr:#x} len={self.size}"
        elif self.reason == KVM_EXIT_INTERNAL_ERROR:
            text = f"{self.name} suberror={self.suberror}"
        else:
            text = self.name
        return text + (f" data={self.data.hex()}" if self.data else "")


def read_exit(run: kvm_run) -> ExitRecord:
    """An :class:`ExitRecord` of the exit now in ``run`` (data for OUT and MMIO writes).

    >>> run = kvm_run(exit_reason=KVM_EXIT_HLT)
    >>> read_exit(run).name
    'KVM_EXIT_HLT'
    """
    reason = run.exit_reason
    if reason == KVM_EXIT_IO:
        io = run.io
        out = io.direction == KVM_EXIT_IO_OUT
        return ExitRecord(reason, port=io.port, direction=io.direction, size=io.size,
                          count=io.count, data=run.io_data() if out else b"")
    if reason == KVM_EXIT_MMIO:
        m = run.mmio
        return ExitRecord(reason, phys_addr=m.phys_addr, size=m.len, is_write=bool(m.is_write),
                          data=run.mmio_data() if m.is_write else b"")
    if reason == KVM_EXIT_INTERNAL_ERROR:
        return ExitRecord(reason, suberror=run.internal.suberror)
    return ExitRecord(reason)


# ---------------------------------------------------------------------------
# the three kinds of file descriptor [KVM-API §4; KVM-MAIN]
IoctlArg = int | ctypes.Structure | bytearray


class KvmFd:
    """A KVM file descriptor: ``ioctl`` is the whole interface [KVM-API §4; KVM-MAIN].

    Subclasses per backend implement :meth:`ioctl`, :meth:`fileno` and :meth:`close`.
    ``with`` closes the descriptor.

    >>> [c.kind for c in (SystemFd, VmFd, VcpuFd)]
    ['system', 'vm', 'vcpu']
    """

    kind = "kvm"

    def ioctl(self, request: int, arg: IoctlArg = 0) -> Any:  # pragma: no cover - abstract
        """Issue ``request`` with ``arg`` (an int, or a ctypes structure filled in/out)."""
        raise NotImplementedError

    def fileno(self) -> int:  # pragma: no cover - abstract
        """The descriptor number."""
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        """Close the descriptor."""
        raise NotImplementedError

    def __enter__(self) -> KvmFd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_extension(self, cap: int) -> int:
        """``KVM_CHECK_EXTENSION``: 0 = unsupported, ≥1 supported."""
        return int(self.ioctl(KVM_CHECK_EXTENSION, cap))


class SystemFd(KvmFd):
    """The system descriptor: ``open("/dev/kvm")``.

    >>> SystemFd.api_version.__doc__
    '``KVM_GET_API_VERSION`` (12).'
    """

    kind = "system"
    backend = "?"

    def api_version(self) -> int:
        """``KVM_GET_API_VERSION`` (12)."""
        return int(self.ioctl(KVM_GET_API_VERSION, 0))

    def vcpu_mmap_size(self) -> int:
        """``KVM_GET_VCPU_MMAP_SIZE`` (12288 on x86)."""
        return int(self.ioctl(KVM_GET_VCPU_MMAP_SIZE, 0))

    def create_vm(self, machine_type: int = 0) -> VmFd:
        """``KVM_CREATE_VM``: a new VM with no vCPUs and no memory."""
        return self.ioctl(KVM_CREATE_VM, machine_type)  # type: ignore[no-any-return]


class VmFd(KvmFd):
    """A VM descriptor.

    >>> VmFd.kind
    'vm'
    """

    kind = "vm"

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        """``KVM_SET_USER_MEMORY_REGION`` with a filled-in structure."""
        self.ioctl(KVM_SET_USER_MEMORY_REGION, kvm_userspace_memory_region(
            slot=slot, flags=flags, guest_phys_addr=guest_phys_addr,
            memory_size=memory_size, userspace_addr=userspace_addr))

    def create_vcpu(self, vcpu_id: int = 0) -> VcpuFd:
        """``KVM_CREATE_VCPU``."""
        return self.ioctl(KVM_CREATE_VCPU, vcpu_id)  # type: ignore[no-any-return]

    def create_irqchip(self) -> None:
        """``KVM_CREATE_IRQCHIP``: an interrupt controller model inside the kernel.

        On x86 it creates the PIC, the IOAPIC and a local APIC for every vCPU created
        afterwards, so it must come before the first ``KVM_CREATE_VCPU`` (else
        ``EINVAL``; a second one ``EEXIST``) [KVM-API §4.24; KVM-X86]. QEMU creates it
        on x86 by default. With it, a guest's ``hlt`` is handled inside KVM and never
        reaches user space as ``KVM_EXIT_HLT``.
        """
        self.ioctl(KVM_CREATE_IRQCHIP, 0)


class VcpuFd(KvmFd):
    """A vCPU descriptor; ``mmap`` gives its ``kvm_run`` page.

    >>> VcpuFd.kind, callable(VcpuFd.mmap)
    ('vcpu', True)
    """

    kind = "vcpu"

    def mmap(self, length: int = KVM_VCPU_MMAP_SIZE) -> kvm_run:  # pragma: no cover
        """Map the vCPU's shared area (``mmap(vcpufd, offset 0)``) as a :class:`kvm_run`."""
        raise NotImplementedError

    def get_regs(self) -> kvm_regs:
        """``KVM_GET_REGS``."""
        regs = kvm_regs()
        self.ioctl(KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: kvm_regs) -> None:
        """``KVM_SET_REGS``."""
        self.ioctl(KVM_SET_REGS, regs)

    def get_sregs(self) -> kvm_sregs:
        """``KVM_GET_SREGS``."""
        sregs = kvm_sregs()
        self.ioctl(KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: kvm_sregs) -> None:
        """``KVM_SET_SREGS``."""
        self.ioctl(KVM_SET_SREGS, sregs)

    def run(self) -> int:
        """``KVM_RUN``; returns 0 (the exit is in the ``kvm_run`` page)."""
        return int(self.ioctl(KVM_RUN, 0))

    def get_mp_state(self) -> int:
        """``KVM_GET_MP_STATE``: ``KVM_MP_STATE_RUNNABLE`` (0), ``HALTED`` (3), …"""
        state = kvm_mp_state()
        self.ioctl(KVM_GET_MP_STATE, state)
        return int(state.mp_state)


def struct_arg(arg: Any, struct: type[ctypes.Structure], *, writable: bool) -> Any:
    """The ``struct`` view of an ioctl argument, or raise ``EFAULT`` like a bad pointer.

    Accepts an instance of ``struct`` or any buffer of exactly its size (a
    ``bytearray``; read-only buffers only for ``_IOW`` requests).

    >>> r = kvm_regs(rax=1); struct_arg(r, kvm_regs, writable=True) is r
    True
    >>> struct_arg(0, kvm_regs, writable=False)
    Traceback (most recent call last):
    ...
    OSError: [Errno 14] Bad address (the argument must be a struct kvm_regs, got int)
    """
    if isinstance(arg, struct):
        return arg
    try:
        view = memoryview(arg)
    except TypeError:
        raise kvm_error(errno.EFAULT, f"the argument must be a struct {struct.__name__}, "
                                      f"got {type(arg).__name__}") from None
    if view.nbytes != ctypes.sizeof(struct):
        raise kvm_error(errno.EFAULT, f"struct {struct.__name__} has {ctypes.sizeof(struct)} "
                                      f"bytes, the buffer {view.nbytes}")
    if writable:
        if view.readonly:
            raise kvm_error(errno.EFAULT, "the kernel must write the result: pass a "
                                          "writable buffer")
        return struct.from_buffer(arg)
    return struct.from_buffer_copy(arg)
