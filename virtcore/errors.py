"""One exception hierarchy for the whole library.

Errors are for *misuse of the library* (a malformed program, an illegal
state transition, a bad argument).  Things that happen *inside* the
simulated machine — a trap, a page fault, a VM exit — are never exceptions:
they are values (see :mod:`virtcore.hw.events`).

>>> issubclass(AssemblyError, VirtcoreError)
True
>>> str(AssemblyError("unknown mnemonic 'mvo'", line=3, column=5))
"line 3, column 5: unknown mnemonic 'mvo'"
"""

from __future__ import annotations


class VirtcoreError(Exception):
    """Base class of every error virtcore raises on purpose."""


class ConfigurationError(VirtcoreError, ValueError):
    """A component was given parameters that cannot describe real or teaching hardware."""


class AssemblyError(VirtcoreError, ValueError):
    """Malformed assembly source; names the line and column (both 1-based).

    Parameters
    ----------
    message : str
        What is wrong.
    line, column : int
        Where, counting from 1.
    source_line : str, optional
        The offending line, shown under the message with a caret.
    """

    def __init__(self, message: str, *, line: int, column: int, source_line: str = "") -> None:
        self.message = message
        self.line = line
        self.column = column
        self.source_line = source_line
        text = f"line {line}, column {column}: {message}"
        if source_line:
            text += f"\n    {source_line}\n    {' ' * (column - 1)}^"
        super().__init__(text)


class DecodeError(VirtcoreError, ValueError):
    """A word is not a valid instruction encoding (raised by the disassembler only;
    the CPU turns an undecodable word into an invalid-opcode trap value)."""


class AddressError(VirtcoreError, IndexError):
    """A host-side (Python) access to physical memory outside the installed frames.

    Guest accesses never raise this: they become fault values.
    """
