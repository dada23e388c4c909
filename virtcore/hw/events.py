"""Traps, faults and VM exits — as values, never as exceptions.

A real CPU does not "raise" a page fault at its caller: it records the cause
and jumps to a handler.  virtcore keeps that shape.  Whatever stops or
diverts the simulated CPU is a small frozen value with a *cause* (an enum
whose numbers are the real ones where the real system has one) and details.

Numbers
-------
- :class:`TrapCause` uses x86 exception vectors (#UD = 6, #GP = 13,
  #PF = 14, #AC = 17, #MC = 18), Linux's ``int 0x80`` for system calls, Xen's
  32-bit PV hypercall vector ``int 0x82`` for hypercalls, and 32 + *n* for
  hardware interrupt line *n* (the usual remapped-PIC layout).
- :class:`ExitReason` uses Intel VT-x basic exit reasons (SDM Vol. 3B
  App. C; Linux ``arch/x86/include/uapi/asm/vmx.h``), see
  [SDM].

>>> TrapCause.GENERAL_PROTECTION.value
13
>>> ExitReason.HLT.value, ExitReason.IO_INSTRUCTION.value, ExitReason.VMCALL.value
(12, 30, 18)
>>> TrapCause.for_irq(0)
<TrapCause.IRQ0: 32>
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Privilege(enum.IntEnum):
    """Privilege level, numbered like x86's current privilege level (CPL).

    The teaching machine has two rings in use: 0 (kernel, 内核态) and 3 (user, 用户态).
    """

    KERNEL = 0
    USER = 3


class Access(enum.IntEnum):
    """Kind of memory access, for translation and faults."""

    READ = 0
    WRITE = 1
    EXECUTE = 2


class TrapCause(enum.IntEnum):
    """Why the CPU left the instruction stream (x86 vector numbers where they exist)."""

    INVALID_OPCODE = 6  # #UD: the word does not decode; hcall outside any hypervisor
    GENERAL_PROTECTION = 13  # #GP: a privileged instruction at CPL 3
    PAGE_FAULT = 14  # #PF: no translation, or the translation forbids the access
    ALIGNMENT_CHECK = 17  # #AC: a word access at an address not a multiple of 4
    MACHINE_CHECK = 18  # #MC: physical address outside installed memory (a bus error)
    SYSCALL = 0x80  # `syscall`: the program asks its kernel for a service
    HYPERCALL = 0x82  # `hcall` with no hardware assist: Xen 32-bit PV used int 0x82
    IRQ0 = 32  # hardware interrupt lines 0..15 are vectors 32..47
    IRQ1 = 33
    IRQ2 = 34
    IRQ3 = 35
    IRQ4 = 36
    IRQ5 = 37
    IRQ6 = 38
    IRQ7 = 39
    IRQ8 = 40
    IRQ9 = 41
    IRQ10 = 42
    IRQ11 = 43
    IRQ12 = 44
    IRQ13 = 45
    IRQ14 = 46
    IRQ15 = 47

    @classmethod
    def for_irq(cls, line: int) -> TrapCause:
        """The cause (vector) of hardware interrupt ``line`` (0–15)."""
        return cls(32 + line)

    @property
    def is_interrupt(self) -> bool:
        """True for hardware interrupts (asynchronous), False for synchronous traps."""
        return 32 <= self.value < 48


class ExitReason(enum.IntEnum):
    """VM-exit reasons, with the Intel VT-x basic exit-reason numbers."""

    EXCEPTION_NMI = 0
    EXTERNAL_INTERRUPT = 1
    TRIPLE_FAULT = 2
    HLT = 12
    INVLPG = 14
    VMCALL = 18
    CR_ACCESS = 28
    IO_INSTRUCTION = 30
    EPT_VIOLATION = 48


@dataclass(frozen=True)
class PageFault:
    """A failed translation: returned by the MMU, never raised.

    Attributes
    ----------
    vaddr : int
        The virtual address that did not translate (what x86 puts in CR2).
    access : Access
        What was attempted.
    user : bool
        Whether the access came from user mode.
    present : bool
        False if some level had no present entry; True if an entry was present
        but forbade the access (a protection fault).
    level : int
        The page-table level where the walk stopped (levels count down to 1 = leaf).
    """

    vaddr: int
    access: Access
    user: bool
    present: bool
    level: int
    nested: bool = False  # True when the fault is in the second (EPT/NPT) dimension

    def __str__(self) -> str:
        what = "protection" if self.present else "not-present"
        dim = "nested " if self.nested else ""
        return (
            f"{dim}page fault ({what}) at {self.vaddr:#x} on {self.access.name.lower()}"
            f" from {'user' if self.user else 'kernel'} mode, level {self.level}"
        )


@dataclass(frozen=True)
class Trap:
    """A synchronous trap or a hardware interrupt.

    ``pc`` is the address of the trapping instruction for synchronous traps
    (the handler decides whether to retry it or step over it, as xv6 does with
    ``epc += 4``), and the address of the next instruction for interrupts.
    """

    cause: TrapCause
    pc: int
    mode: Privilege
    detail: str = ""
    address: int | None = None  # faulting address (#PF, #AC, #MC)
    fault: PageFault | None = None

    def __str__(self) -> str:
        where = f" at {self.address:#x}" if self.address is not None else ""
        extra = f": {self.detail}" if self.detail else ""
        return f"trap {self.cause.name}({self.cause.value}){where}, pc={self.pc:#x}{extra}"


@dataclass(frozen=True)
class VMExit:
    """A VM exit: the guest (VMX non-root mode) hands control to the VMM.

    ``pc`` is the guest address of the instruction that caused the exit; the
    VMM advances it by ``instruction_length`` after emulating (as KVM does
    with the VMCS exit-instruction-length field).  ``qualification`` carries
    the details (port, size, direction, register, address…), like VT-x's
    exit qualification.
    """

    reason: ExitReason
    pc: int
    qualification: dict[str, object] = field(default_factory=dict)
    instruction_length: int = 4

    def __str__(self) -> str:
        q = ", ".join(f"{k}={v:#x}" if isinstance(v, int) else f"{k}={v}"
                      for k, v in self.qualification.items())
        return f"VM exit {self.reason.name}({self.reason.value}) at pc={self.pc:#x}" + (
            f" [{q}]" if q else "")
