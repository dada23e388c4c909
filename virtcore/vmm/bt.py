"""Binary translation (二进制翻译): the guest kernel runs from a translation cache.

What VMware's binary translator did, first shipped in VMware Workstation
1.0 (1999) [BUG12] and compared with hardware assist in [AA06]:

1. **Only guest-kernel code is translated.**  Guest *user* code runs directly
   on the CPU, deprivileged, as under trap-and-emulate: it has nothing the
   monitor must hide from it (its system calls trap and are forwarded).
2. **Block by block, on first execution.**  When the guest kernel is about
   to run code at an address that has no translation yet, the translator
   decodes one *basic block* (up to a control transfer) and writes its
   translation into the **translation cache** (TC).  Later executions of the
   block are cache hits: no translation cost.
3. **The translation does not trap.**  Most instructions are copied
   unchanged ("identical" translation); a sensitive instruction — ``cli``,
   ``sti``, ``popf``, ``pushf``, a control-register access — becomes a few
   ordinary instructions acting on the *virtual* CPU's state kept in memory
   (the virtual IF, the virtual control registers).  So ``popf`` is handled
   correctly although the hardware would silently ignore it, and ``cli`` costs
   a store instead of a trap.  I/O and ``hlt`` become *callouts* into the
   monitor — a call inside the monitor's own address space, not a hardware
   trap — which emulates the device.

That is why a software VMM could beat first-generation VT-x on exit-heavy
work: "the hardware VMM often suffers lower performance than the pure
software VMM" [AA06].  Its costs are the translation itself (paid once per
block) and callouts; hardware assist pays a VM exit and a VM entry for every
I/O instruction instead.

This module is the translator: :func:`translate_block` decodes one block and
classifies each instruction; :class:`TranslationCache` holds the blocks of
one VM and counts translations and hits.  :class:`~virtcore.vmm.Hypervisor`
uses it for VMs with ``technique="bt"``: in virtual kernel mode it looks the
pc up in the cache (translating on a miss), runs the identical part of the
block on the CPU, and performs each translated sensitive instruction on the
virtual CPU through the handler table — with no trap.

Simplifications (say so in class):

- The "translated code" of an identical instruction is the instruction
  itself run on the CPU at its own address; a real TC holds copies at other
  addresses (and must rewrite pc-relative code, which this ISA has none of).
- A block is found again by any address it covers (a real TC is entered
  only at block starts and chains blocks together).
- Self-modifying kernel code is not detected: a real translator
  write-protects translated pages and drops stale translations [BUG12].
- Translated sensitive instructions are carried out by the monitor's
  handlers (the same code trap-and-emulate uses), and priced as
  ``translated_op`` / ``callout`` in :mod:`virtcore.costs`, not as traps.

>>> from virtcore.hw import assemble
>>> p = assemble("movi r1, 1\\npushf\\ncli\\nadd r1, r1\\npopf\\njmp 0")
>>> b = translate_block(lambda a: p.words[a // 4], 0)
>>> b
Block(0x0: 6 instructions, 3 translated (pushf, cli, popf), ends with jmp)
>>> [b.action(pc) for pc in b.pcs]
['identical', 'inline', 'inline', 'identical', 'inline', 'identical']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from virtcore.errors import VirtcoreError
from virtcore.hw.isa import TABLE, Kind, decode

__all__ = [
    "CALLOUT",
    "INLINE",
    "MAX_BLOCK",
    "SENSITIVE_UNPRIVILEGED",
    "Block",
    "TranslationCache",
    "translate_block",
]

#: The sensitive instructions that do not trap when deprivileged (popf, pushf) — the
#: reason trap-and-emulate fails on this machine, as on the pre-VT x86 [RI00].
SENSITIVE_UNPRIVILEGED = frozenset(i.mnemonic for i in TABLE if i.sensitive and not i.privileged)
#: Translated into a callout to the monitor (device emulation, halting, a mode change).
CALLOUT = frozenset({"in", "out", "hlt", "iret"})
#: Translated into a few instructions on the virtual CPU's state in memory.
INLINE = frozenset(i.mnemonic for i in TABLE if i.sensitive or i.privileged) - CALLOUT
#: Instructions in one block at most.
MAX_BLOCK = 16
#: Instructions that end a block: control transfers, and those that leave the kernel.
_ENDS = frozenset(i.mnemonic for i in TABLE if i.kind is Kind.BRANCH) | {
    "iret", "hlt", "syscall", "hcall"}


@dataclass(frozen=True)
class Block:
    """One translated basic block of guest-kernel code.

    Attributes
    ----------
    start : int
        Guest address of its first instruction.
    mnemonics : tuple of str
        Its instructions, in order (4 bytes each).
    """

    start: int
    mnemonics: tuple[str, ...]

    @property
    def pcs(self) -> range:
        """The guest addresses the block covers."""
        return range(self.start, self.start + 4 * len(self.mnemonics), 4)

    @property
    def translated(self) -> tuple[str, ...]:
        """The sensitive instructions the translation replaces (inline or callout)."""
        return tuple(m for m in self.mnemonics if m in INLINE or m in CALLOUT)

    def action(self, pc: int) -> str:
        """What the translation does at ``pc``: ``identical``, ``inline`` or ``callout``."""
        m = self.mnemonics[(pc - self.start) // 4]
        return "callout" if m in CALLOUT else "inline" if m in INLINE else "identical"

    def identical_run(self, pc: int) -> int:
        """How many instructions from ``pc`` on run unchanged before a translated one."""
        n = 0
        for m in self.mnemonics[(pc - self.start) // 4:]:
            if m in INLINE or m in CALLOUT:
                break
            n += 1
        return n

    def __contains__(self, pc: object) -> bool:
        return isinstance(pc, int) and pc in self.pcs

    def __len__(self) -> int:
        return len(self.mnemonics)

    def __repr__(self) -> str:
        t = self.translated
        names = f" ({', '.join(t)})" if t else ""
        return (f"Block({self.start:#x}: {len(self)} instructions, {len(t)} translated{names},"
                f" ends with {self.mnemonics[-1]})")


def translate_block(read_word: Callable[[int], int], pc: int, *,
                    max_len: int = MAX_BLOCK) -> Block:
    """Decode the basic block of guest-kernel code that starts at ``pc``.

    The block ends after a control transfer (a branch, ``call``, ``ret``,
    ``iret``), after an instruction that leaves the kernel (``hlt``,
    ``syscall``, ``hcall``), before a word that is no instruction, or after
    ``max_len`` instructions.

    Parameters
    ----------
    read_word : callable
        ``read_word(address) -> int``: the guest's memory.
    pc : int
        Where the block starts (word-aligned).
    max_len : int

    Returns
    -------
    Block
        Empty only if the word at ``pc`` is no instruction.

    >>> from virtcore.hw import assemble
    >>> p = assemble("sti\\nl: add r1, r1\\njnz l\\nhlt")
    >>> translate_block(lambda a: p.words[a // 4], 0).mnemonics
    ('sti', 'add', 'jnz')
    """
    out: list[str] = []
    addr = pc
    while len(out) < max_len:
        try:
            row = decode(read_word(addr))
        except (VirtcoreError, IndexError):  # outside the guest's memory: the block ends here
            row = None
        if row is None:
            break
        out.append(row.mnemonic)
        if row.mnemonic in _ENDS:
            break
        addr += 4
    return Block(pc, tuple(out))


@dataclass
class TranslationCache:
    """The translation cache of one VM: blocks by the addresses they cover, with counts.

    >>> from virtcore.hw import assemble
    >>> p = assemble("l: cli\\nsti\\njmp l")
    >>> tc = TranslationCache()
    >>> tc.lookup(lambda a: p.words[a // 4], 0).start, tc.lookup(lambda a: p.words[a // 4], 0).start
    (0, 0)
    >>> tc.blocks_translated, tc.instructions_translated, tc.hits
    (1, 3, 1)
    """

    blocks: dict[int, Block] = field(default_factory=dict)
    blocks_translated: int = 0
    instructions_translated: int = 0
    hits: int = 0

    def lookup(self, read_word: Callable[[int], int], pc: int) -> Block:
        """The block covering ``pc``: a hit, or a new translation starting at ``pc``."""
        block = self.blocks.get(pc)
        if block is not None:
            self.hits += 1
            return block
        block = translate_block(read_word, pc)
        self.blocks_translated += 1
        self.instructions_translated += len(block)
        for a in block.pcs:
            self.blocks.setdefault(a, block)
        return block

    def clear(self) -> None:
        """Drop every translation (a reboot); the counts start again."""
        self.blocks.clear()
        self.blocks_translated = self.instructions_translated = self.hits = 0
