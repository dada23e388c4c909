"""QEMU without KVM (TCG) against QEMU with KVM: who executes the guest's instructions.

"QEMU translates every instruction, so it is slow" is true of **QEMU without
KVM** (syllabus N6, S4.4).  Without an accelerator QEMU emulates the whole
CPU with TCG, its *Tiny Code Generator*: a dynamic binary translator that
translates each guest basic block into host code the first time it is
reached, caches the result (a *translation block*), and runs it from the
cache afterwards; instructions it does not translate inline (I/O, ``hlt``,
system instructions) become calls to C *helpers*.  Every guest instruction
is emulated that way — but there are **no VM exits**: devices are plain
function calls in the same process.

With KVM (``-accel kvm``) the guest's instructions run **natively**: the CPU
executes them in guest mode, and QEMU sees only the exits, for I/O and
``hlt`` (:mod:`virtcore.kvm.qemu`).  Compute is as fast as on bare hardware;
each I/O costs a VM exit and a trip through user space (the ``hlt`` only a VM
exit: QEMU's in-kernel irqchip keeps it in KVM).

Both sides run the *same* teaching-ISA guest against the *same* device
models (QEMU's bus of :class:`virtcore.kvm.qemu.QemuVMM`):

- :func:`run_tcg` — :mod:`virtcore.hw`'s CPU in root mode with its block
  translator (:mod:`virtcore.hw.translate`, TCG's idea in small): counts
  instructions translated, translation blocks, instructions run from
  translated code and helper calls;
- :func:`run_kvm` — the CPU in guest mode behind
  :class:`virtcore.kvm.qemu.TeachingVcpu`, QEMU's loop handling the exits;
- :func:`compare_tcg_kvm` — both, priced by one
  :class:`virtcore.kvm.qemu.ExitCosts`, i.e. the course's cost model
  :mod:`virtcore.costs` (teaching assumptions).

Simplified (say so in class): TCG here translates to Python, not to host
machine code, so the *wall* times of both runs are of the simulator, not of
the model — the comparison is in the counts and the simulated time.  TCG's
block chaining, softmmu TLB and the cost of translating into host code are
folded into :attr:`~virtcore.kvm.qemu.ExitCosts.tcg_translate` and
:attr:`~virtcore.kvm.qemu.ExitCosts.tcg_execute`.

>>> cmp = compare_tcg_kvm(iterations=500, io_every=100)
>>> cmp.tcg.output == cmp.kvm.output == "....."
True
>>> cmp.tcg.guest_instructions == cmp.kvm.guest_instructions == cmp.tcg.emulated_instructions
True
>>> cmp.kvm.emulated_instructions, cmp.kvm.exits, cmp.tcg.exits   # 5 outs and the hlt
(6, 6, 0)
>>> cmp.speedup > 1
True
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from virtcore.costs import Costs
from virtcore.errors import ConfigurationError
from virtcore.hw.asm import Program, assemble
from virtcore.hw.cpu import CPU, StopReason
from virtcore.hw.isa import SP
from virtcore.hw.memory import PhysicalMemory
from virtcore.hw.paging import MMU, PagingConfig
from virtcore.hw.translate import Block, Translator
from virtcore.kvm.qemu import DEFAULT_COSTS, ExitCosts, QemuVMM, TeachingVcpu, as_exit_costs

__all__ = [
    "AccelRun",
    "TcgComparison",
    "compare_tcg_kvm",
    "io_sweep",
    "run_kvm",
    "run_tcg",
    "workload_guest",
]


def workload_guest(iterations: int = 2000, io_every: int = 100) -> str:
    """A teaching-ISA guest: a summing loop that prints ``'.'`` to COM1 every ``io_every`` rounds.

    ``io_every = 0`` leaves the I/O out (pure compute).  The loop body is
    five ordinary instructions (one translation block); each print adds a
    two-instruction block and an ``out``.  Ends with ``hlt``.

    >>> "out  COM1, r5" in workload_guest(10, 5), "out" in workload_guest(10, 0)
    (True, False)
    """
    for name, v, lo in (("iterations", iterations, 1), ("io_every", io_every, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or v > 0x7FFF_FFFF:
            raise ConfigurationError(f"{name} must be an int >= {lo}, got {v!r}")
    if io_every > 0x7FFF:
        raise ConfigurationError(f"io_every must fit a signed 16-bit immediate, got {io_every}")
    io = "" if not io_every else f"""
        addi r4, 1
        cmpi r4, {io_every}
        jnz  skip
        movi r4, 0
        movi r5, '.'
        out  COM1, r5           ; I/O: a helper call under TCG, a VM exit under KVM"""
    return f"""
; workload: {iterations} rounds, a '.' to COM1 every {io_every or 'never'} rounds
        .equ COM1, 0x3f8
        movi r1, 0              ; i
        li   r2, {iterations}
        movi r3, 0              ; sum
        movi r4, 0              ; rounds since the last print
loop:   add  r3, r1
        addi r1, 1{io}
skip:   cmp  r1, r2
        jlt  loop
        hlt
"""


class _CountingTranslator(Translator):
    """hw's block translator, counting what TCG would count."""

    def __init__(self, cpu: CPU) -> None:
        super().__init__(cpu)
        self.executed = 0  # guest instructions run from translated blocks
        self.translated = 0  # guest instructions translated (once per block)

    def run_block(self, avail: int) -> int:
        n = super().run_block(avail)
        self.executed += n
        return n

    def translate(self, vpc: int, ppc: int, key: tuple[int, bool, int, int]) -> Block | None:
        blk = super().translate(vpc, ppc, key)
        if blk is not None:
            self.translated += blk.length
        return blk


@dataclass(frozen=True)
class AccelRun:
    """One run of a guest under one accelerator (``"tcg"`` or ``"kvm"``).

    Attributes
    ----------
    accel : str
    guest_instructions : int
        Guest instructions executed.
    native_instructions : int
        Of those, executed natively by the CPU in guest mode (KVM; 0 under TCG).
    emulated_instructions : int
        Executed by emulation: under TCG all of them; under KVM only those
        that exited (I/O, ``hlt``), which KVM and QEMU emulate.
    translated_instructions, translation_blocks : int
        TCG: guest instructions translated into host code, and the blocks they form.
    helper_calls : int
        TCG: instructions run through a helper (I/O, ``hlt``, system instructions).
    exits, transitions : int
        KVM: VM exits, and kernel↔user transitions; 0 under TCG.
    output : str
        What the guest wrote to COM1.
    time_ns : float
        Simulated time under the cost model.
    wall_s : float
        Wall time of the simulation itself (not of the model).

    >>> r = run_tcg("hlt"); (r.accel, r.guest_instructions, r.helper_calls, r.exits)
    ('tcg', 1, 1, 0)
    """

    accel: str
    guest_instructions: int
    native_instructions: int
    emulated_instructions: int
    translated_instructions: int
    translation_blocks: int
    helper_calls: int
    exits: int
    transitions: int
    output: str
    time_ns: float
    wall_s: float


def _program(program: str | Program) -> Program:
    return program if isinstance(program, Program) else assemble(program)


def run_tcg(program: str | Program, *, memory_size: int = 64 * 1024,
            costs: ExitCosts | Costs = DEFAULT_COSTS, max_steps: int = 10_000_000) -> AccelRun:
    """Run ``program`` under TCG: every instruction emulated, devices called directly.

    >>> r = run_tcg("movi r1, 'x'\\nout 0x3f8, r1\\nhlt")
    >>> r.output, r.emulated_instructions, r.helper_calls, r.exits
    ('x', 3, 2, 0)
    """
    prog = _program(program)
    costs = as_exit_costs(costs)
    mem = PhysicalMemory(memory_size, 4096)
    vmm = QemuVMM(mem, costs=costs)  # the same device models, now called in-process
    cpu = CPU(mem, MMU(mem, PagingConfig.x86_32()), vmm.bus)
    tr = _CountingTranslator(cpu)
    cpu.translator = tr
    mem.load_words(prog.origin, prog.words)
    cpu.pc = prog.origin
    cpu.regs[SP] = memory_size
    t0 = time.perf_counter()
    res = cpu.run(max_steps)
    wall = time.perf_counter() - t0
    if res.reason is not StopReason.HALTED:
        raise ConfigurationError(f"the guest did not halt under TCG: {res!r}")
    side = vmm.charge_devices()  # device work and interrupts, as under KVM
    helpers = cpu.retired - tr.executed
    t = (tr.translated * costs.tcg_translate + tr.executed * costs.tcg_execute
         + helpers * (costs.tcg_helper + costs.emulate) + side)
    return AccelRun("tcg", cpu.retired, 0, cpu.retired, tr.translated, tr.compiled, helpers,
                    0, 0, vmm.output, t, wall)


def run_kvm(program: str | Program, *, memory_size: int = 64 * 1024,
            costs: ExitCosts | Costs = DEFAULT_COSTS, max_exits: int = 1_000_000) -> AccelRun:
    """Run ``program`` under KVM: natively in guest mode, QEMU handling the I/O exits.

    The VM has the in-kernel irqchip (as QEMU's on x86), so the final ``hlt`` is a VM
    exit that KVM handles itself: it does not reach QEMU [KVM-X86].

    >>> r = run_kvm("movi r1, 'x'\\nout 0x3f8, r1\\nhlt")
    >>> r.output, r.native_instructions, r.emulated_instructions, r.exits, r.transitions
    ('x', 1, 2, 2, 2)
    """
    prog = _program(program)
    vcpu = TeachingVcpu(prog, memory_size=memory_size, origin=prog.origin)
    vmm = QemuVMM(vcpu.memory, costs=costs)
    t0 = time.perf_counter()
    run = vmm.run(vcpu, max_exits=max_exits)
    wall = time.perf_counter() - t0
    if run.stop != "KVM_MP_STATE_HALTED":
        raise ConfigurationError(f"the guest did not halt under KVM: stopped on {run.stop}")
    st = run.stats
    # each exit (I/O, hlt) is one guest instruction the VMM emulated instead of the CPU
    return AccelRun("kvm", st.native_instructions + st.exits, st.native_instructions, st.exits,
                    0, 0, 0, st.exits, st.transitions, run.output, st.time_ns, wall)


@dataclass(frozen=True, repr=False)
class TcgComparison:
    """The same guest under TCG and under KVM.

    >>> c = compare_tcg_kvm(iterations=100, io_every=50)
    >>> c.tcg.output, c.kvm.output, c.speedup == c.tcg.time_ns / c.kvm.time_ns
    ('..', '..', True)
    """

    workload: str
    tcg: AccelRun
    kvm: AccelRun
    costs: ExitCosts

    @property
    def speedup(self) -> float:
        """Simulated time under TCG / under KVM (> 1: KVM faster)."""
        return self.tcg.time_ns / self.kvm.time_ns if self.kvm.time_ns else float("inf")

    def __repr__(self) -> str:
        t, k = self.tcg, self.kvm
        rows = [
            ("", "QEMU + TCG", "QEMU + KVM"),
            ("guest instructions", f"{t.guest_instructions:,}", f"{k.guest_instructions:,}"),
            ("  run natively", f"{t.native_instructions:,}", f"{k.native_instructions:,}"),
            ("  emulated", f"{t.emulated_instructions:,}", f"{k.emulated_instructions:,}"),
            ("instructions translated", f"{t.translated_instructions:,}",
             f"{k.translated_instructions:,}"),
            ("translation blocks", f"{t.translation_blocks:,}", f"{k.translation_blocks:,}"),
            ("helper calls", f"{t.helper_calls:,}", f"{k.helper_calls:,}"),
            ("VM exits", f"{t.exits:,}", f"{k.exits:,}"),
            ("kernel↔user transitions", f"{t.transitions:,}", f"{k.transitions:,}"),
            ("simulated time µs", f"{t.time_ns / 1000:,.1f}", f"{k.time_ns / 1000:,.1f}"),
            ("output", repr(_short(t.output)), repr(_short(k.output))),
        ]
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"TcgComparison: {self.workload}"]
        lines += [f"  {a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}" for a, b, c in rows]
        lines.append(f"  KVM is {self.speedup:.1f}x faster (simulated time)")
        return "\n".join(lines)


def _short(s: str) -> str:
    return s if len(s) <= 20 else s[:17] + "..."


def compare_tcg_kvm(program: str | Program | None = None, *, iterations: int = 2000,
                    io_every: int = 1000, costs: ExitCosts | Costs = DEFAULT_COSTS,
                    memory_size: int = 64 * 1024) -> TcgComparison:
    """Run one guest (default :func:`workload_guest`) under TCG and under KVM.

    Returns
    -------
    TcgComparison
        Both runs; outputs must agree (same guest, same devices).

    >>> c = compare_tcg_kvm(iterations=1000, io_every=0)   # pure compute
    >>> c.kvm.exits, c.speedup > 5
    (1, True)
    """
    if program is None:
        program = workload_guest(iterations, io_every)
        desc = (f"{iterations} rounds, a COM1 write every {io_every} rounds" if io_every
                else f"{iterations} rounds, no I/O")
    else:
        desc = "given program"
    prog = _program(program)
    costs = as_exit_costs(costs)
    tcg = run_tcg(prog, costs=costs, memory_size=memory_size)
    kvm = run_kvm(prog, costs=costs, memory_size=memory_size)
    return TcgComparison(desc, tcg, kvm, costs)


def io_sweep(io_every: Iterable[int] = (0, 1000, 100, 10, 2), *, iterations: int = 2000,
             costs: ExitCosts | Costs = DEFAULT_COSTS) -> list[TcgComparison]:
    """:func:`compare_tcg_kvm` for several I/O densities: KVM's lead shrinks as exits grow.

    With an I/O instruction every few guest instructions, TCG even wins in
    this model: its I/O is a helper call inside QEMU, while each of KVM's is
    a VM exit and a round trip through user space.  That is why KVM setups
    work to avoid exits (virtio's batched kicks, ioeventfd — see
    :func:`virtcore.kvm.qemu.compare_block_io`), not a reason to prefer TCG.

    >>> [round(c.speedup, 1) > 1 for c in io_sweep((0, 2), iterations=200)]
    [True, False]
    """
    return [compare_tcg_kvm(iterations=iterations, io_every=n, costs=costs) for n in io_every]
