"""Binary translation, reduced to its core: find the sensitive-but-unprivileged
instructions in the guest kernel and make them trap (facts §4.3).

``popf`` and ``pushf`` do not trap when a deprivileged guest kernel runs them,
so the VMM never sees them (Popek–Goldberg's condition fails, §4.2).  A binary
translator rewrites them *before* they run.  Here the VMM scans the guest's
kernel image once, at boot, replaces each ``popf``/``pushf`` by a word that
does not decode — so it traps with #UD — and remembers the original in a
*patch table*.  When the #UD arrives, the VMM looks the address up, finds
``popf``, and runs the ``popf`` handler, which emulates it on the *virtual*
flags.

Simplifications (say so in class):

- VMware's translator worked on basic blocks as they were first executed and
  wrote translated code into a separate translation cache, running user code
  directly; this one patches the kernel image in place, once.
- A linear scan cannot tell code from data: a data word that happens to
  encode ``popf`` would be patched too.  Real translators follow control flow.
- The guest can see the patches if it reads its own code (the VMM's
  :meth:`~virtcore.vmm.VM.memory_words` shows the originals).

>>> from virtcore.hw import assemble
>>> t = binary_translate(assemble("pushf\\ncli\\npopf\\nhlt").words)
>>> t.rewrites, sorted(t.patches), hex(t.words[0])
(2, [0, 8], '0xff000000')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from virtcore.hw.isa import ISA, TABLE, decode

__all__ = ["BT_TRAP_OPCODE", "SENSITIVE_UNPRIVILEGED", "Translation", "binary_translate"]

#: Opcode of the rewritten word: not in the ISA table, so the CPU raises #UD.
BT_TRAP_OPCODE = 0xFF
#: What the translator looks for: sensitive instructions that do not trap.
SENSITIVE_UNPRIVILEGED = frozenset(i.mnemonic for i in TABLE if i.sensitive and not i.privileged)

if BT_TRAP_OPCODE in {row.opcode for row in ISA.values()}:  # pragma: no cover - table change
    raise AssertionError("the binary translator's trap opcode is a real instruction")


@dataclass(frozen=True)
class Translation:
    """The result of :func:`binary_translate`.

    Attributes
    ----------
    words : tuple of int
        The rewritten image.
    patches : dict
        Address → ``(original word, rewritten word)``.
    scanned : int
        Words scanned.

    >>> binary_translate([0x5300_0000, 0x4200_0000], origin=0x100)
    Translation(2 words scanned, 1 rewritten: 0x100)
    """

    words: tuple[int, ...]
    patches: dict[int, tuple[int, int]]
    scanned: int

    @property
    def rewrites(self) -> int:
        """How many instructions were rewritten."""
        return len(self.patches)

    def __repr__(self) -> str:
        where = ", ".join(f"{a:#x}" for a in sorted(self.patches)[:6])
        more = "…" if len(self.patches) > 6 else ""
        return (f"Translation({self.scanned} words scanned, {self.rewrites} rewritten"
                f"{': ' + where + more if where else ''})")


def binary_translate(words: Sequence[int], origin: int = 0) -> Translation:
    """Rewrite every sensitive-but-unprivileged instruction of ``words`` into a trapping word.

    The rewritten word is ``0xFF000000 | n`` (``n`` = the patch's number),
    which the CPU cannot decode (#UD).

    Parameters
    ----------
    words : sequence of int
        The kernel image.
    origin : int
        Its load address (the patch table is keyed by address).

    Returns
    -------
    Translation

    Examples
    --------
    >>> from virtcore.hw import assemble
    >>> binary_translate(assemble("movi r1, 2\\nadd r1, r1\\nhlt").words).rewrites
    0
    """
    out = list(words)
    patches: dict[int, tuple[int, int]] = {}
    for i, word in enumerate(out):
        row = decode(word)
        if row is not None and row.mnemonic in SENSITIVE_UNPRIVILEGED:
            patched = (BT_TRAP_OPCODE << 24) | (len(patches) & 0xFFFF)
            patches[origin + 4 * i] = (word, patched)
            out[i] = patched
    return Translation(tuple(out), patches, len(out))
