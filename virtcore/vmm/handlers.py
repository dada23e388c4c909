"""The VMM's handler table: one small function per trapping instruction (S1.3(a)).

Trap-and-emulate in one paragraph: the guest kernel runs *deprivileged*
(the real CPU in user mode), so every privileged instruction it executes
traps (#GP) to the VMM.  The VMM looks at where the trap came from, finds the
instruction, and **dispatches through a table** — mnemonic → handler, the
shape of xv6's ``trap.c`` — to a handler that *emulates* the instruction on
the guest's **virtual** CPU state (virtual IF, virtual control registers,
virtual devices) and then **advances the pc by 4**, so the guest goes on
with the next instruction, as it would on bare hardware.

The interface a handler implements (the assignment "write the VMM's
handlers" uses exactly this)::

    def handle_cli(vcpu: VCPU, insn: Insn) -> Action:
        vcpu.interrupts_enabled = False      # the *virtual* IF
        vcpu.pc += 4                         # step over the instruction
        return Action.CONTINUE

- ``vcpu`` (:class:`~virtcore.vmm.vm.VCPU`): ``regs`` (r0–r7), ``pc``,
  ``flags`` and ``interrupts_enabled`` (virtual), ``mode`` (the guest's
  virtual privilege level), ``crs`` (virtual control registers, keyed by
  :class:`~virtcore.hw.CR`), ``vm`` (its VM: ``vm.port_in``/``vm.port_out``
  reach the VM's virtual devices), and helpers ``reflect(cause)`` (deliver a
  trap to the guest kernel's handler at its virtual TVEC), ``push``/``pop``
  (guest stack), ``crash(reason)``.
- ``insn`` (:class:`Insn`): the decoded instruction — ``mnemonic``, ``rd``,
  ``rs``, ``imm`` (the port, the control-register number…), ``pc``.
- Return an :class:`Action` (``None`` means ``CONTINUE``).

What the dispatcher (in :class:`~virtcore.vmm.Hypervisor`) does before a
handler runs, so handlers only emulate kernel-mode behaviour: it checks the
trap came from the deprivileged guest (never from the host kernel), and if
the guest was in its own *user* mode it reflects #GP into the guest kernel,
as bare hardware would.

>>> table = HandlerTable.reference()
>>> sorted(table)[:5]
['cli', 'hcall', 'hlt', 'in', 'invlpg']
>>> table  # doctest: +ELLIPSIS
HandlerTable(13 handlers: cli, sti, hlt, in, out, rdcr, wrcr, iret, invlpg, syscall, ...)
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, NamedTuple

from virtcore.errors import ConfigurationError
from virtcore.hw.events import Privilege, TrapCause
from virtcore.hw.isa import CR, CR0_PG, ESTATUS_USER, FLAG_IF, ISA, MASK32, decode, encode, fields

if TYPE_CHECKING:
    from virtcore.vmm.vm import VCPU

__all__ = [
    "ENOSYS",
    "Action",
    "Handler",
    "HandlerTable",
    "Hypercall",
    "Insn",
    "handle_cli",
    "handle_hcall",
    "handle_hlt",
    "handle_in",
    "handle_invlpg",
    "handle_iret",
    "handle_out",
    "handle_popf",
    "handle_pushf",
    "handle_rdcr",
    "handle_sti",
    "handle_syscall",
    "handle_wrcr",
]


class Action(enum.Enum):
    """What the VMM does after a handler returns (``None`` counts as ``CONTINUE``).

    >>> [a.name for a in Action]
    ['CONTINUE', 'HALT', 'SHUTDOWN', 'CRASH']
    """

    CONTINUE = "continue"  # resume the guest at vcpu.pc
    HALT = "halt"  # the vCPU waits for a (virtual) interrupt, like hlt
    SHUTDOWN = "shutdown"  # the guest asked to power off
    CRASH = "crash"  # the guest did something the VMM cannot allow (reason in vcpu.done)


class Insn(NamedTuple):
    """A decoded guest instruction, as a handler sees it.

    >>> Insn.decode(0x4310_03F8, pc=0x20)
    Insn(in r1, 0x3f8 at 0x20)
    """

    mnemonic: str
    rd: int
    rs: int
    imm: int
    pc: int
    word: int

    @classmethod
    def make(cls, mnemonic: str, rd: int = 0, rs: int = 0, imm: int = 0, pc: int = 0) -> Insn:
        """An instruction from its fields (for tests and exercises).

        >>> Insn.make("out", rs=2, imm=0x3F8, pc=8)
        Insn(out 0x3f8, r2 at 0x8)
        """
        return cls.decode(encode(mnemonic, rd, rs, imm), pc)

    @classmethod
    def decode(cls, word: int, pc: int) -> Insn:
        """Decode ``word`` fetched at ``pc`` (ConfigurationError if it is no instruction)."""
        row = decode(word)
        if row is None:
            raise ConfigurationError(f"word {word:#010x} at {pc:#x} is not an instruction")
        _, rd, rs, imm = fields(word)
        return cls(row.mnemonic, rd, rs, imm, pc, word)

    def __repr__(self) -> str:
        from virtcore.hw.asm import format_instruction

        return f"Insn({format_instruction(self.word, self.pc)} at {self.pc:#x})"


#: A handler: ``handler(vcpu, insn) -> Action | None``.
Handler = Callable[["VCPU", Insn], "Action | None"]


# -- the reference handlers ------------------------------------------------------------


def handle_cli(vcpu: VCPU, insn: Insn) -> Action:
    """``cli``: clear the *virtual* IF (the real one stays on: the VMM needs its interrupts).

    >>> from virtcore.vmm import VM
    >>> v = VM("demo", 1).vcpus[0]; v.interrupts_enabled = True; v.pc = 0x10
    >>> handle_cli(v, Insn.make("cli", pc=0x10)), v.interrupts_enabled, hex(v.pc)
    (<Action.CONTINUE: 'continue'>, False, '0x14')
    """
    vcpu.interrupts_enabled = False
    vcpu.pc += 4
    return Action.CONTINUE


def handle_sti(vcpu: VCPU, insn: Insn) -> Action:
    """``sti``: set the virtual IF; a pending virtual interrupt is delivered right after.

    >>> from virtcore.vmm import VM
    >>> v = VM("demo", 1).vcpus[0]
    >>> _ = handle_sti(v, Insn.make("sti")); v.interrupts_enabled, v.pc
    (True, 4)
    """
    vcpu.interrupts_enabled = True
    vcpu.pc += 4
    return Action.CONTINUE


def handle_hlt(vcpu: VCPU, insn: Insn) -> Action:
    """``hlt``: step over it and wait for a virtual interrupt (the VMM may run another VM).

    >>> from virtcore.vmm import VM
    >>> v = VM("demo", 1).vcpus[0]
    >>> handle_hlt(v, Insn.make("hlt")), v.pc
    (<Action.HALT: 'halt'>, 4)
    """
    vcpu.pc += 4
    return Action.HALT


def handle_in(vcpu: VCPU, insn: Insn) -> Action:
    """``in rd, port``: read the VM's *virtual* device, never the real one.

    >>> from virtcore.vmm import VM
    >>> v = VM("demo", 1).vcpus[0]
    >>> _ = handle_in(v, Insn.make("in", rd=3, imm=0x3FD)); hex(v.regs[3])   # its UART's LSR
    '0x60'
    """
    vcpu.regs[insn.rd] = vcpu.vm.port_in(insn.imm) & MASK32
    vcpu.pc += 4
    return Action.CONTINUE


def handle_out(vcpu: VCPU, insn: Insn) -> Action:
    """``out port, rs``: write the VM's virtual device (its own serial port, its own timer).

    >>> from virtcore.vmm import VM
    >>> vm = VM("demo", 1); v = vm.vcpus[0]; v.regs[2] = ord("k")
    >>> _ = handle_out(v, Insn.make("out", rs=2, imm=0x3F8)); vm.console
    'k'
    """
    vcpu.vm.port_out(insn.imm, vcpu.regs[insn.rs])
    vcpu.pc += 4
    return Action.CONTINUE


def handle_rdcr(vcpu: VCPU, insn: Insn) -> Action:
    """``rdcr rd, cr``: read the *virtual* control register.

    >>> from virtcore.vmm import VM
    >>> v = VM("demo", 1).vcpus[0]; v.crs[CR.TVEC] = 0x40
    >>> _ = handle_rdcr(v, Insn.make("rdcr", rd=1, imm=CR.TVEC)); hex(v.regs[1])
    '0x40'
    """
    vcpu.regs[insn.rd] = vcpu.crs[CR(insn.imm)]
    vcpu.pc += 4
    return Action.CONTINUE


def handle_wrcr(vcpu: VCPU, insn: Insn) -> Action:
    """``wrcr cr, rs``: write the virtual control register.

    Simplification: this VMM confines the guest with a fixed relocation map
    (guest-physical → host frames) and does not build shadow page tables, so
    a guest that turns its own paging on (CR0.PG) is stopped with a clear
    reason.  Hardware assist runs such guests natively on EPT.

    >>> from virtcore.vmm import VM
    >>> v = VM("demo", 1).vcpus[0]; v.regs[1] = 0x1234
    >>> _ = handle_wrcr(v, Insn.make("wrcr", rs=1, imm=CR.CR2)); hex(v.crs[CR.CR2]), v.pc
    ('0x1234', 4)
    >>> v.regs[1] = 1 << 31                           # CR0.PG: refused
    >>> handle_wrcr(v, Insn.make("wrcr", rs=1, imm=CR.CR0)), v.done[:28]
    (<Action.CRASH: 'crash'>, 'crashed: guest paging (CR0.P')
    """
    cr = CR(insn.imm)
    value = vcpu.regs[insn.rs] & MASK32
    if cr is CR.CR0 and value & CR0_PG:
        return vcpu.crash("guest paging (CR0.PG) is not virtualized by this trap-and-emulate "
                          "VMM: it confines guests with a relocation map, not shadow page tables")
    vcpu.crs[cr] = value
    vcpu.pc += 4
    return Action.CONTINUE


def handle_iret(vcpu: VCPU, insn: Insn) -> Action:
    """``iret``: flags and mode from the virtual ESTATUS, pc from the virtual EPC (no +4).

    >>> from virtcore.vmm import VM
    >>> v = VM("demo", 1).vcpus[0]
    >>> v.crs[CR.EPC], v.crs[CR.ESTATUS] = 0x80, ESTATUS_USER | FLAG_IF
    >>> _ = handle_iret(v, Insn.make("iret")); hex(v.pc), v.mode.name, v.interrupts_enabled
    ('0x80', 'USER', True)
    """
    status = vcpu.crs[CR.ESTATUS]
    vcpu.flags = status
    vcpu.mode = Privilege.USER if status & ESTATUS_USER else Privilege.KERNEL
    vcpu.pc = vcpu.crs[CR.EPC]
    return Action.CONTINUE


def handle_invlpg(vcpu: VCPU, insn: Insn) -> Action:
    """``invlpg rs``: nothing to drop — the VMM's relocation map never changes under the guest.

    >>> from virtcore.vmm import VM
    >>> v = VM("demo", 1).vcpus[0]
    >>> handle_invlpg(v, Insn.make("invlpg", rs=1)), v.pc
    (<Action.CONTINUE: 'continue'>, 4)
    """
    vcpu.pc += 4
    return Action.CONTINUE


def handle_syscall(vcpu: VCPU, insn: Insn) -> Action:
    """``syscall``: reflect it into the guest kernel, at the guest's virtual TVEC.

    The guest kernel's handler sees EPC = the syscall's address and steps
    over it itself, exactly as on bare hardware (xv6: ``epc += 4``).

    >>> from virtcore.vmm import VM
    >>> v = VM("demo", 1).vcpus[0]; v.crs[CR.TVEC] = 0x100; v.pc = 0x20
    >>> _ = handle_syscall(v, Insn.make("syscall", pc=0x20))
    >>> hex(v.pc), hex(v.crs[CR.EPC]), v.crs[CR.CAUSE]
    ('0x100', '0x20', 128)
    """
    return vcpu.reflect(TrapCause.SYSCALL)


def handle_pushf(vcpu: VCPU, insn: Insn) -> Action:
    """``pushf`` (reached only through binary translation): push the *virtual* flags.

    >>> from virtcore.vmm import Hypervisor
    >>> v = Hypervisor().create("demo", 1).vcpus[0]; v.interrupts_enabled = True
    >>> _ = handle_pushf(v, Insn.make("pushf")); hex(v.vm.read_word(v.regs[7])), v.pc
    ('0x202', 4)
    """
    if vcpu.push(vcpu.flags):
        vcpu.pc += 4
    return Action.CONTINUE


def handle_popf(vcpu: VCPU, insn: Insn) -> Action:
    """``popf`` (reached only through binary translation): pop into the virtual flags.

    In the guest's kernel mode IF changes; in its user mode IF is left as it
    was — the rule bare hardware applies.

    >>> from virtcore.vmm import Hypervisor
    >>> v = Hypervisor().create("demo", 1).vcpus[0]
    >>> v.push(0x202)
    True
    >>> _ = handle_popf(v, Insn.make("popf")); v.interrupts_enabled, v.regs[7] == 4096
    (True, True)
    """
    value = vcpu.pop()
    if value is None:  # the pop faulted; the fault was reflected into the guest
        return Action.CONTINUE
    if vcpu.mode is Privilege.USER:
        value = (value & ~FLAG_IF) | (vcpu.flags & FLAG_IF)
    vcpu.flags = value
    vcpu.pc += 4
    return Action.CONTINUE


# -- hypercalls: a small ABI of our own -------------------------------------------------

#: Linux/Xen error number returned (negated) for an unknown hypercall.
ENOSYS = 38


class Hypercall(enum.IntEnum):
    """The hypercall numbers of virtcore's own small paravirtual ABI (``hcall``, number in r0).

    **Not Xen's numbers.**  Each has a Xen counterpart for comparison
    [XEN-HCALL-ABI; XEN-H]: IRQ_DISABLE/ENABLE and the
    flags calls stand for a Xen PV guest's per-vCPU event mask, which lives
    in memory shared with Xen (``vcpu_info.evtchn_upcall_mask``) so that it
    needs no hypercall at all — a simplification here; HALT ~ ``sched_op`` block;
    SHUTDOWN ~ ``sched_op`` shutdown (``sched_op = 29``); CONSOLE_WRITE ~
    ``console_io``; SET_TIMER ~ ``set_timer_op``; SET_TRAP_HANDLER ~
    ``set_trap_table``; IRET ~ ``iret``.  Arguments in r1; the result in r0
    (0, or −ENOSYS for an unknown number).

    >>> Hypercall.SAVE_FLAGS.value, Hypercall(6).name
    (3, 'CONSOLE_WRITE')
    """

    IRQ_DISABLE = 1  # virtual IF ← 0 (replaces cli)
    IRQ_ENABLE = 2  # virtual IF ← 1 (replaces sti)
    SAVE_FLAGS = 3  # r0 ← virtual flags (replaces pushf's read)
    RESTORE_FLAGS = 4  # virtual flags ← r1 (replaces popf's write)
    HALT = 5  # wait for the next virtual interrupt (replaces hlt)
    CONSOLE_WRITE = 6  # write the byte in r1 to the VM's console (replaces out COM1)
    SET_TIMER = 7  # virtual timer period ← r1 (replaces out 0x40)
    SET_TRAP_HANDLER = 8  # virtual TVEC ← r1 (replaces wrcr tvec)
    IRET = 9  # return from the guest's trap handler (replaces iret)
    SHUTDOWN = 10  # power off


def handle_hcall(vcpu: VCPU, insn: Insn) -> Action:
    """``hcall``: the guest asks the VMM for a service (:class:`Hypercall`, number in r0).

    >>> from virtcore.vmm import VM
    >>> vm = VM("demo", 1); v = vm.vcpus[0]
    >>> v.regs[0], v.regs[1] = Hypercall.CONSOLE_WRITE, ord("!")
    >>> _ = handle_hcall(v, Insn.make("hcall")); vm.console, v.regs[0], v.pc
    ('!', 0, 4)
    """
    regs = vcpu.regs
    vm = vcpu.vm
    vm.stats.hypercalls += 1
    try:
        nr = Hypercall(regs[0])
    except ValueError:
        regs[0] = -ENOSYS & MASK32
        vcpu.pc += 4
        return Action.CONTINUE
    vm.stats.by_hypercall[nr.name] += 1
    result = 0
    action = Action.CONTINUE
    if nr is Hypercall.IRQ_DISABLE:
        vcpu.interrupts_enabled = False
    elif nr is Hypercall.IRQ_ENABLE:
        vcpu.interrupts_enabled = True
    elif nr is Hypercall.SAVE_FLAGS:
        result = vcpu.flags
    elif nr is Hypercall.RESTORE_FLAGS:
        vcpu.flags = regs[1]
    elif nr is Hypercall.HALT:
        action = Action.HALT
    elif nr is Hypercall.CONSOLE_WRITE:
        vm.console_write(regs[1] & 0xFF)
    elif nr is Hypercall.SET_TIMER:
        vm.set_timer(regs[1])
    elif nr is Hypercall.SET_TRAP_HANDLER:
        vcpu.crs[CR.TVEC] = regs[1]
    elif nr is Hypercall.IRET:
        status = vcpu.crs[CR.ESTATUS]
        vcpu.flags = status
        vcpu.mode = Privilege.USER if status & ESTATUS_USER else Privilege.KERNEL
        vcpu.pc = vcpu.crs[CR.EPC]
        return Action.CONTINUE  # r0 is the interrupted code's, untouched
    elif nr is Hypercall.SHUTDOWN:
        action = Action.SHUTDOWN
    regs[0] = result & MASK32
    vcpu.pc += 4
    return action


# -- the table ---------------------------------------------------------------------------

_REFERENCE: dict[str, Handler] = {
    "cli": handle_cli,
    "sti": handle_sti,
    "hlt": handle_hlt,
    "in": handle_in,
    "out": handle_out,
    "rdcr": handle_rdcr,
    "wrcr": handle_wrcr,
    "iret": handle_iret,
    "invlpg": handle_invlpg,
    "syscall": handle_syscall,
    "hcall": handle_hcall,
    "pushf": handle_pushf,
    "popf": handle_popf,
}


class HandlerTable(Mapping[str, Handler]):
    """An immutable mapping mnemonic → handler, checked when built.

    Keys must be mnemonics of the ISA table, values callables.  Build
    variants with :meth:`replace` and :meth:`without`; the reference table is
    :meth:`reference`.  An instruction that traps but has no handler stops
    its VM with the reason "no handler for …".

    Parameters
    ----------
    handlers : mapping of str to callable, optional

    Examples
    --------
    >>> def lazy_cli(vcpu, insn):          # forgets to advance the pc
    ...     vcpu.interrupts_enabled = False
    >>> buggy = HandlerTable.reference().replace(cli=lazy_cli)
    >>> buggy["cli"] is lazy_cli, len(buggy.without("cli"))
    (True, 12)
    >>> HandlerTable({"mvo": lazy_cli})
    Traceback (most recent call last):
    ...
    virtcore.errors.ConfigurationError: 'mvo' is not an instruction of the ISA table
    """

    def __init__(self, handlers: Mapping[str, Handler] | None = None) -> None:
        table: dict[str, Handler] = {}
        for name, fn in (handlers or {}).items():
            if name not in ISA:
                raise ConfigurationError(f"{name!r} is not an instruction of the ISA table")
            if not callable(fn):
                raise ConfigurationError(f"the handler for {name!r} is not callable: {fn!r}")
            table[name] = fn
        self._table = table

    @classmethod
    def reference(cls) -> HandlerTable:
        """The reference handlers: emulation that keeps guests equivalent to bare hardware."""
        return cls(_REFERENCE)

    def replace(self, **handlers: Handler) -> HandlerTable:
        """A copy with some handlers replaced or added."""
        return HandlerTable({**self._table, **handlers})

    def without(self, *mnemonics: str) -> HandlerTable:
        """A copy without the handlers for ``mnemonics``."""
        return HandlerTable({k: v for k, v in self._table.items() if k not in mnemonics})

    def __getitem__(self, mnemonic: str) -> Handler:
        return self._table[mnemonic]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"HandlerTable({len(self)} handlers: {', '.join(self._table)})"

