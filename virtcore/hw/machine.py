"""A whole machine: memory, MMU, bus with devices, interrupt controller, CPU.

>>> m = Machine.with_program('''
...     .equ COM1, 0x3f8
...     movi r1, 'h'
...     out  COM1, r1
...     movi r1, 'i'
...     out  COM1, r1
...     hlt''')
>>> m.run().reason.name, m.serial.text
('HALTED', 'hi')
"""

from __future__ import annotations

from virtcore.hw.asm import Program, assemble
from virtcore.hw.cpu import CPU, RunResult
from virtcore.hw.devices import Bus, InterruptController, make_pc_devices
from virtcore.hw.events import Privilege
from virtcore.hw.isa import CR, CR0_PG, SP
from virtcore.hw.memory import FrameAllocator, PhysicalMemory
from virtcore.hw.paging import MMU, PagingConfig


class Machine:
    """The simulated computer every chapter runs on.

    Parameters
    ----------
    memory_size : int
        Bytes of RAM (a multiple of the page size).
    paging : PagingConfig, optional
        Page-table format; the frame size of memory equals its page size.
        Default: x86 32-bit (4 KiB pages, two levels).
    tlb_size : int
        Entries in each TLB (data and instruction).

    Attributes
    ----------
    memory, mmu, bus, irq, cpu
    """

    def __init__(self, memory_size: int = 64 * 1024, paging: PagingConfig | None = None,
                 *, tlb_size: int = 16) -> None:
        config = paging or PagingConfig.x86_32()
        self.memory = PhysicalMemory(memory_size, config.page_size)
        self.mmu = MMU(self.memory, config, tlb_size=tlb_size)
        self.irq = InterruptController()
        self.bus: Bus = make_pc_devices(self.memory, self.irq)
        self.cpu = CPU(self.memory, self.mmu, self.bus)
        self.cpu.itlb.tlb.capacity = tlb_size

    # -- convenience -----------------------------------------------------------
    @classmethod
    def with_program(cls, source: str | Program, *, origin: int = 0, mode: str = "kernel",
                     **kwargs: object) -> Machine:
        """A machine with ``source`` assembled and loaded at ``origin``, pc there,
        ``sp`` at the top of RAM, in ``mode`` (``"kernel"`` or ``"user"``)."""
        m = cls(**kwargs)  # type: ignore[arg-type]
        m.load(source, origin=origin)
        m.cpu.pc = origin
        m.cpu.regs[SP] = m.memory.size
        m.cpu.mode = Privilege.USER if mode == "user" else Privilege.KERNEL
        return m

    def load(self, source: str | Program, *, origin: int = 0) -> Program:
        """Assemble (if needed) and copy a program into physical memory."""
        program = source if isinstance(source, Program) else assemble(source, origin)
        self.memory.load_words(program.origin, program.words)
        return program

    def enable_paging(self, root: int) -> None:
        """Set CR3 to ``root`` and turn CR0.PG on, as a kernel's boot code would."""
        self.cpu.write_cr(CR.CR3, root)
        self.cpu.write_cr(CR.CR0, self.cpu.crs[CR.CR0] | CR0_PG)

    def frame_allocator(self, reserved: range | None = None) -> FrameAllocator:
        """A frame allocator over this machine's memory."""
        return FrameAllocator(self.memory, reserved or ())

    def run(self, max_steps: int = 1_000_000, *, trace: bool = False) -> RunResult:
        """Run the CPU (see :meth:`virtcore.hw.cpu.CPU.run`)."""
        return self.cpu.run(max_steps, trace=trace)

    @property
    def serial(self):
        """The COM1 serial port."""
        return self.bus["serial"]

    def __repr__(self) -> str:
        c = self.cpu
        return (f"Machine({self.memory.size // 1024} KiB, pc={c.pc:#x}, {c.mode.name.lower()} "
                f"mode, {c.retired} instructions, clock {c.clock})")
