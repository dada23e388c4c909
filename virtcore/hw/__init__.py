"""virtcore.hw — the simulated machine (模拟硬件).

Everything the chapters run on: a small teaching ISA given as a table
(:mod:`.isa`), an assembler and disassembler (:mod:`.asm`), a CPU with
privilege levels and a guest mode (:mod:`.cpu`, with a block translator in
:mod:`.translate`), physical memory (:mod:`.memory`), multi-level paging
with TLBs (:mod:`.paging`), devices on port I/O and MMIO with interrupts
(:mod:`.devices`), and :class:`Machine`, which puts them together.

This package imports nothing else of virtcore except ``virtcore.errors``
and ``virtcore.rng``.

>>> from virtcore.hw import Machine
>>> Machine.with_program("movi r0, 1\\nhlt").run().reason.name
'HALTED'
"""

from virtcore.hw.asm import Program, assemble, disassemble, format_instruction
from virtcore.hw.cpu import CPU, VMCS, CPUState, RunResult, StopReason, TraceEntry
from virtcore.hw.events import (
    Access,
    ExitReason,
    PageFault,
    Privilege,
    Trap,
    TrapCause,
    VMExit,
)
from virtcore.hw.isa import CR, ISA, TABLE, Instruction, Sensitivity
from virtcore.hw.machine import Machine

__all__ = [
    "CPU", "CR", "ISA", "TABLE", "VMCS", "Access", "CPUState", "ExitReason", "Instruction",
    "Machine", "PageFault", "Privilege", "Program", "RunResult", "Sensitivity", "StopReason",
    "TraceEntry", "Trap", "TrapCause", "VMExit", "assemble", "disassemble",
    "format_instruction",
]
