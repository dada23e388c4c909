"""The teaching ISA, defined as one table.

Every fact about an instruction lives in its row of :data:`ISA`: mnemonic,
opcode, operands, whether it is *privileged* (traps when executed in user
mode) and whether it is *sensitive* (Popek & Goldberg, 1974: it reads or
changes the machine's configuration — control-sensitive — or behaves
differently depending on it — behaviour-sensitive).  The Popek–Goldberg
test "is every sensitive instruction privileged?" is then a query on this
table, and the answer for this machine is *no*, on purpose: ``popf`` and
``pushf`` are sensitive but unprivileged, exactly like x86's POPF/PUSHF
(Robin & Irvine, USENIX Security 2000 [RI00]).

Encoding (one 32-bit little-endian word per instruction)::

     31        24 23    20 19    16 15                             0
    +------------+--------+--------+--------------------------------+
    |   opcode   |   rd   |   rs   |             imm16              |
    +------------+--------+--------+--------------------------------+

Fields an instruction does not use must be zero (otherwise the word does
not decode: #UD).  Branch targets are pc-relative, in words:
``target = pc + 4 * sext(imm16)``.

Registers: ``r0``–``r7``; ``sp`` is another name for ``r7`` (the stack
grows down; ``push`` pre-decrements by 4).

Flags live at their x86 EFLAGS bit positions (CF 0, ZF 6, SF 7, IF 9, OF 11;
bit 1 always reads 1).  Simplification: only ``cmp``/``cmpi`` write the
arithmetic flags (x86's ALU instructions all do).

>>> ISA["popf"].sensitive, ISA["popf"].privileged
(True, False)
>>> sorted(i.mnemonic for i in ISA.values() if i.sensitive and not i.privileged)
['popf', 'pushf']
>>> ISA["cli"].opcode == 0x40
True
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

MASK32 = 0xFFFF_FFFF
WORD = 4
NUM_REGS = 8
SP = 7
REG_NAMES = ("r0", "r1", "r2", "r3", "r4", "r5", "r6", "sp")

# EFLAGS bit positions (x86).
FLAG_CF = 1 << 0
FLAG_RESERVED = 1 << 1  # always 1 on x86 (the LWN guest starts with rflags = 0x2)
FLAG_ZF = 1 << 6
FLAG_SF = 1 << 7
FLAG_IF = 1 << 9
FLAG_OF = 1 << 11
ARITH_FLAGS = FLAG_CF | FLAG_ZF | FLAG_SF | FLAG_OF


class CR(enum.IntEnum):
    """Control registers, read with ``rdcr`` and written with ``wrcr`` (privileged).

    ``CR0``, ``CR2`` and ``CR3`` keep their x86 numbers and meaning (CR0.PG =
    bit 31 turns paging on; CR2 receives the faulting address; CR3 holds the
    physical address of the top-level page table).  The trap registers are
    not x86: x86 finds handlers through the IDT (``LIDT``) and pushes a frame
    on the kernel stack; virtcore follows RISC-V's ``stvec``/``sepc``/
    ``sstatus``/``scause``, which are easier to read in a trace.
    """

    CR0 = 0
    CR2 = 2
    CR3 = 3
    TVEC = 16  # trap vector: address of the one kernel trap handler; 0 = no handler
    EPC = 17  # pc saved on a trap (iret returns there)
    ESTATUS = 18  # flags saved on a trap, bit 16 = the trap came from user mode
    CAUSE = 19  # TrapCause value of the last trap


CR0_PG = 1 << 31
ESTATUS_USER = 1 << 16


class Sensitivity(enum.Enum):
    """Popek–Goldberg classes of sensitivity."""

    NONE = "innocuous"
    CONTROL = "control-sensitive"
    BEHAVIOUR = "behaviour-sensitive"


class Kind(enum.Enum):
    """How an instruction affects the flow of control (used by the block translator)."""

    PLAIN = "plain"
    BRANCH = "branch"
    SYSTEM = "system"


# Operand kinds, in the order they are written in assembly.
#   rd, rs   : a register in the rd / rs field
#   imm      : signed 16-bit immediate
#   uimm     : unsigned 16-bit immediate
#   target   : pc-relative branch target (assembly gives a label or an address)
#   mem      : [rs+imm] — base register rs, signed offset imm
#   port     : unsigned 16-bit I/O port number in imm
#   cr       : control register name in imm


@dataclass(frozen=True)
class Instruction:
    """One row of the ISA table.

    >>> ISA["add"]
    Instruction(add rd, rs: rd ← rd + rs)
    """

    mnemonic: str
    opcode: int
    operands: tuple[str, ...]
    semantics: str
    kind: Kind = Kind.PLAIN
    privileged: bool = False
    sensitivity: Sensitivity = Sensitivity.NONE
    note: str = ""

    @property
    def sensitive(self) -> bool:
        """True if control- or behaviour-sensitive (Popek & Goldberg)."""
        return self.sensitivity is not Sensitivity.NONE

    @property
    def syntax(self) -> str:
        """The assembly form, e.g. ``ld rd, [rs+imm]``."""
        shown = {"mem": "[rs+imm]"}
        ops = ", ".join(shown.get(o, o) for o in self.operands)
        return f"{self.mnemonic} {ops}".strip()

    def __repr__(self) -> str:
        return f"Instruction({self.syntax}: {self.semantics})"


def _row(*args: object, **kw: object) -> Instruction:
    return Instruction(*args, **kw)  # type: ignore[arg-type]


_P, _B, _S = Kind.PLAIN, Kind.BRANCH, Kind.SYSTEM
_C, _H = Sensitivity.CONTROL, Sensitivity.BEHAVIOUR

#: The table.  Order is the order of the reference card in chapter 0.
TABLE: tuple[Instruction, ...] = (
    # --- ordinary instructions: run directly in any mode -------------------
    _row("nop", 0x00, (), "nothing"),
    _row("mov", 0x01, ("rd", "rs"), "rd ← rs"),
    _row("movi", 0x02, ("rd", "imm"), "rd ← sext(imm)"),
    _row("lui", 0x03, ("rd", "uimm"), "rd ← uimm << 16"),
    _row("ori", 0x04, ("rd", "uimm"), "rd ← rd | uimm"),
    _row("addi", 0x05, ("rd", "imm"), "rd ← rd + sext(imm)"),
    _row("add", 0x10, ("rd", "rs"), "rd ← rd + rs"),
    _row("sub", 0x11, ("rd", "rs"), "rd ← rd − rs"),
    _row("mul", 0x12, ("rd", "rs"), "rd ← rd × rs (low 32 bits)"),
    _row("and", 0x13, ("rd", "rs"), "rd ← rd & rs"),
    _row("or", 0x14, ("rd", "rs"), "rd ← rd | rs"),
    _row("xor", 0x15, ("rd", "rs"), "rd ← rd ^ rs"),
    _row("shl", 0x16, ("rd", "rs"), "rd ← rd << (rs & 31)"),
    _row("shr", 0x17, ("rd", "rs"), "rd ← rd >> (rs & 31) (logical)"),
    _row("cmp", 0x18, ("rd", "rs"), "flags ← compare(rd, rs)"),
    _row("cmpi", 0x19, ("rd", "imm"), "flags ← compare(rd, sext(imm))"),
    _row("jmp", 0x20, ("target",), "pc ← target", _B),
    _row("jz", 0x21, ("target",), "if ZF: pc ← target", _B),
    _row("jnz", 0x22, ("target",), "if not ZF: pc ← target", _B),
    _row("jlt", 0x23, ("target",), "if SF ≠ OF (signed <): pc ← target", _B),
    _row("jge", 0x24, ("target",), "if SF = OF (signed ≥): pc ← target", _B),
    _row("call", 0x25, ("target",), "push pc+4; pc ← target", _B),
    _row("ret", 0x26, (), "pc ← pop", _B),
    _row("push", 0x27, ("rs",), "sp ← sp − 4; [sp] ← rs"),
    _row("pop", 0x28, ("rd",), "rd ← [sp]; sp ← sp + 4"),
    _row("ld", 0x30, ("rd", "mem"), "rd ← [rs + sext(imm)]"),
    _row("st", 0x31, ("rd", "mem"), "[rs + sext(imm)] ← rd"),
    # --- system instructions ------------------------------------------------
    _row("cli", 0x40, (), "IF ← 0 (mask interrupts)", _S, True, _C),
    _row("sti", 0x41, (), "IF ← 1 (allow interrupts)", _S, True, _C),
    _row("hlt", 0x42, (), "stop until the next interrupt", _S, True, _C),
    _row("in", 0x43, ("rd", "port"), "rd ← port", _S, True, _C,
         "x86 allows IN/OUT at CPL 3 when IOPL permits; here always privileged"),
    _row("out", 0x44, ("port", "rs"), "port ← rs", _S, True, _C),
    _row("rdcr", 0x45, ("rd", "cr"), "rd ← control register", _S, True, _H),
    _row("wrcr", 0x46, ("cr", "rs"), "control register ← rs", _S, True, _C),
    _row("iret", 0x47, (), "pc ← EPC; flags, mode ← ESTATUS", _S, True, _C),
    _row("invlpg", 0x48, ("rs",), "drop the TLB entry of address rs", _S, True, _C),
    _row("syscall", 0x50, (), "trap to the kernel (cause SYSCALL)", _S, False, Sensitivity.NONE,
         "traps by design in every mode; the call number is in r0"),
    _row("hcall", 0x51, (), "call the hypervisor (VMCALL exit, or trap HYPERCALL)", _S, False,
         Sensitivity.NONE, "the hypercall number is in r0, arguments in r1.."),
    _row("pushf", 0x52, (), "push flags (IF included)", _S, False, _H,
         "reveals the real IF even to a deprivileged guest kernel (x86 PUSHF)"),
    _row("popf", 0x53, (), "flags ← pop; in user mode IF is silently left unchanged", _S, False,
         _C, "x86 POPF: fails silently instead of trapping — why classic x86 was not "
         "virtualizable"),
)

#: mnemonic → row
ISA: dict[str, Instruction] = {row.mnemonic: row for row in TABLE}
#: opcode → row
BY_OPCODE: dict[int, Instruction] = {row.opcode: row for row in TABLE}

if len(ISA) != len(TABLE) or len(BY_OPCODE) != len(TABLE):  # pragma: no cover - table typo
    raise AssertionError("duplicate mnemonic or opcode in the ISA table")


def privileged() -> list[str]:
    """Mnemonics of the privileged instructions.

    >>> privileged()[:3]
    ['cli', 'sti', 'hlt']
    """
    return [i.mnemonic for i in TABLE if i.privileged]


def sensitive() -> list[str]:
    """Mnemonics of the sensitive instructions (control- or behaviour-sensitive).

    >>> 'popf' in sensitive() and 'add' not in sensitive()
    True
    """
    return [i.mnemonic for i in TABLE if i.sensitive]


def sext16(value: int) -> int:
    """Sign-extend a 16-bit field.

    >>> sext16(0xFFFF), sext16(5)
    (-1, 5)
    """
    value &= 0xFFFF
    return value - 0x10000 if value & 0x8000 else value


def encode(mnemonic: str, rd: int = 0, rs: int = 0, imm: int = 0) -> int:
    """Pack fields into an instruction word (no operand checking; see :mod:`.asm`).

    >>> hex(encode("addi", rd=1, imm=-1))
    '0x510ffff'
    """
    return (ISA[mnemonic].opcode << 24) | ((rd & 0xF) << 20) | ((rs & 0xF) << 16) | (imm & 0xFFFF)


def fields(word: int) -> tuple[int, int, int, int]:
    """Split a word into ``(opcode, rd, rs, imm16)``.

    >>> fields(0x0512FFFF)
    (5, 1, 2, 65535)
    """
    return (word >> 24) & 0xFF, (word >> 20) & 0xF, (word >> 16) & 0xF, word & 0xFFFF


# Which fields each operand kind uses, to check that unused fields are zero.
_USES = {"rd": "rd", "rs": "rs", "imm": "imm", "uimm": "imm", "target": "imm",
         "mem": "rs+imm", "port": "imm", "cr": "imm"}


@functools.lru_cache(maxsize=1 << 16)
def decode(word: int) -> Instruction | None:
    """The row for ``word``, or ``None`` if the word is not a valid encoding.

    (A pure function of the word, cached: a CPU decodes the same few words again and again.)

    A word is valid when its opcode is known, its register fields name
    registers ``r0``–``r7``, fields the instruction does not use are zero, and
    a control-register operand names a real control register.

    >>> decode(0x01120000).mnemonic
    'mov'
    >>> decode(0x01FF0000) is None   # r15 does not exist
    True
    >>> decode(0x00000001) is None   # nop with a stray immediate
    True
    """
    row = BY_OPCODE.get((word >> 24) & 0xFF)
    if row is None:
        return None
    _, rd, rs, imm = fields(word)
    used = "".join(_USES[o] for o in row.operands)
    for name, value in (("rd", rd), ("rs", rs), ("imm", imm)):
        if name not in used and value:
            return None
    if rd >= NUM_REGS or rs >= NUM_REGS:
        return None
    if "cr" in row.operands and imm not in CR._value2member_map_:
        return None
    return row
