"""The hypervisor's two basic duties (S1.3), as a tiny simulation.

The notes: a hypervisor (1) recognises, captures and responds to the
privileged or protected CPU instructions that VMs issue
(识别、捕获、响应虚拟机发出的CPU特权指令或保护指令), and (2) handles the queue and
scheduling of VMs and returns the hardware's results to the right VM
(处理虚拟机队列和调度并将物理硬件的处理结果返回给相应的虚拟机).

Here several toy VMs run small programs.  Ordinary instructions run
directly (never seen by the hypervisor); privileged and I/O instructions are
captured by :meth:`ToyHypervisor.capture` — duty (a) — and put in a queue.
The hypervisor picks queued requests (FIFO or round-robin over VMs), performs
them on the one real machine — each VM's virtual disk is a slice of the one
physical disk, each VM's CR3 is its own virtual register — and delivers the
result to the VM that asked — duty (b).  A VM waits for its result before
its next instruction, as a vCPU does.

This is a conceptual demo with unrealistically small parameters (4 disk
blocks per VM, instructions as names); the real trap-and-emulate machinery
on the simulated CPU lives in :mod:`virtcore.vmm`.

>>> t = run_duties({"vm1": ["add", "disk_write 0 7", "disk_read 0"],
...                 "vm2": ["disk_write 0 9", "disk_read 0"]}, seed=1)
>>> t.inbox("vm1")[-1].value, t.inbox("vm2")[-1].value
(7, 9)
>>> t.direct_count, len(t.traps)
(1, 4)
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from virtcore.arch.stacks import ArchitectureError
from virtcore.rng import make_rng

__all__ = [
    "OPS",
    "DutyEvent",
    "DutyTrace",
    "Instr",
    "OpKind",
    "Result",
    "ToyHypervisor",
    "Trap",
    "parse_instr",
    "run_duties",
]


class OpKind(str, enum.Enum):
    """What the hypervisor does with an instruction.

    >>> OPS["mov_cr3"][0]
    <OpKind.PRIVILEGED: 'privileged'>
    """

    COMPUTE = "compute"  # innocuous: runs directly on the CPU
    PRIVILEGED = "privileged"  # traps; emulated on the VM's virtual CPU
    IO = "io"  # traps; performed on the real device for the VM

    def __str__(self) -> str:
        return self.value


#: The toy instruction set: name → (kind, the x86 instruction it stands for, operands).
OPS: dict[str, tuple[OpKind, str, int]] = {
    "add": (OpKind.COMPUTE, "ADD", 0),
    "load": (OpKind.COMPUTE, "MOV from memory", 0),
    "mov_cr3": (OpKind.PRIVILEGED, "MOV CR3 (load page-table base)", 1),
    "read_cr3": (OpKind.PRIVILEGED, "MOV from CR3", 0),
    "hlt": (OpKind.PRIVILEGED, "HLT", 0),
    "disk_read": (OpKind.IO, "IN/OUT to the disk controller (read block)", 1),
    "disk_write": (OpKind.IO, "IN/OUT to the disk controller (write block)", 2),
}


@dataclass(frozen=True)
class Instr:
    """One toy instruction.

    >>> Instr("disk_write", 1, 42)
    Instr('disk_write 1 42')
    """

    op: str
    a: int = 0
    b: int = 0

    @property
    def kind(self) -> OpKind:
        """Compute, privileged or I/O."""
        return OPS[self.op][0]

    def __repr__(self) -> str:
        return f"Instr({str(self)!r})"

    def __str__(self) -> str:
        n = OPS[self.op][2]
        return " ".join([self.op] + [str(x) for x in (self.a, self.b)[:n]])


def parse_instr(text: str | Instr) -> Instr:
    """``"disk_write 1 42"`` → ``Instr('disk_write', 1, 42)``.

    >>> parse_instr("mov_cr3 5").a
    5
    """
    if isinstance(text, Instr):
        return text
    parts = str(text).split()
    if not parts or parts[0] not in OPS:
        raise ArchitectureError(f"unknown toy instruction {text!r}; known: {', '.join(OPS)}")
    op = parts[0]
    need = OPS[op][2]
    if len(parts) - 1 != need:
        raise ArchitectureError(f"{op} takes {need} operand(s), got {text!r}")
    try:
        args = [int(x, 0) for x in parts[1:]]
    except ValueError:
        raise ArchitectureError(f"operands must be integers: {text!r}") from None
    return Instr(op, *args)


@dataclass(frozen=True)
class Trap:
    """A captured instruction, waiting in the hypervisor's queue.

    ``seq`` numbers traps in capture order; ``pc`` is the instruction's index
    in its VM's program.

    >>> Trap(0, "vm1", 2, Instr("hlt"), "HLT").vm
    'vm1'
    """

    seq: int
    vm: str
    pc: int
    instr: Instr
    cause: str


@dataclass(frozen=True)
class Result:
    """The answer to one trap, addressed to the VM that issued it.

    ``value`` is ``None`` for instructions without a result; ``error`` is set
    (and the VM sees it, as a fault value) for a block outside its disk.

    >>> Result(0, "vm1", 3, 7).value
    7
    """

    seq: int
    vm: str
    pc: int
    value: int | None
    error: str = ""


@dataclass(frozen=True)
class DutyEvent:
    """One line of the trace.

    >>> DutyEvent(0, "vm1", "direct", "add").actor
    'vm1'
    """

    step: int
    actor: str
    action: str  # "direct", "trap", "serve", "deliver"
    detail: str


class ToyHypervisor:
    """The two duties over a few VMs and one physical disk.

    Parameters
    ----------
    vms : sequence of str
        VM names; the order is the round-robin order.
    blocks_per_vm : int
        Size of each VM's virtual disk (unrealistically small, for reading traces).
    policy : {"fifo", "round_robin"}
        Which queued trap to serve next.

    >>> hv = ToyHypervisor(["vm1", "vm2"])
    >>> hv.capture("vm1", 0, Instr("add")) is None          # runs directly
    True
    >>> t = hv.capture("vm2", 0, Instr("disk_write", 1, 5)) # duty (a)
    >>> hv.serve_next()                                     # duty (b)
    Result(seq=0, vm='vm2', pc=0, value=None, error='')
    >>> hv.physical_disk[hv.disk_base["vm2"] + 1]
    5
    """

    def __init__(
        self, vms: Sequence[str], *, blocks_per_vm: int = 4, policy: str = "round_robin"
    ) -> None:
        names = tuple(vms)
        if not names or len(set(names)) != len(names):
            raise ArchitectureError(f"need distinct VM names, got {names}")
        if policy not in ("fifo", "round_robin"):
            raise ArchitectureError(f"policy must be 'fifo' or 'round_robin', got {policy!r}")
        if blocks_per_vm < 1:
            raise ArchitectureError("blocks_per_vm must be >= 1")
        self.vms = names
        self.policy = policy
        self.blocks_per_vm = blocks_per_vm
        #: the one real disk; VM i owns blocks [i*blocks_per_vm, (i+1)*blocks_per_vm)
        self.physical_disk: list[int] = [0] * (blocks_per_vm * len(names))
        self.disk_base = {vm: i * blocks_per_vm for i, vm in enumerate(names)}
        #: each VM's virtual CR3 (the real CR3 belongs to the hypervisor)
        self.virtual_cr3 = dict.fromkeys(names, 0)
        self.halted = dict.fromkeys(names, False)
        self.queue: deque[Trap] = deque()
        self._seq = 0
        self._last_served = -1

    # duty (a): recognise and capture
    def capture(self, vm: str, pc: int, instr: Instr) -> Trap | None:
        """Recognise a privileged or I/O instruction and capture it (queue it); else ``None``."""
        if vm not in self.disk_base:
            raise ArchitectureError(f"unknown VM {vm!r}")
        kind, real, _ = OPS[instr.op]
        if kind is OpKind.COMPUTE:
            return None
        trap = Trap(self._seq, vm, pc, instr, real)
        self._seq += 1
        self.queue.append(trap)
        return trap

    # duty (b): schedule the queue, respond, route the result
    def next_trap(self) -> Trap | None:
        """Take the next trap from the queue by the policy (``None`` if empty)."""
        if not self.queue:
            return None
        if self.policy == "fifo":
            return self.queue.popleft()
        n = len(self.vms)
        order = {vm: i for i, vm in enumerate(self.vms)}
        best = min(self.queue, key=lambda t: ((order[t.vm] - self._last_served - 1) % n, t.seq))
        self.queue.remove(best)
        self._last_served = order[best.vm]
        return best

    def respond(self, trap: Trap) -> Result:
        """Carry out a trapped instruction for its VM and address the result to it."""
        vm, ins = trap.vm, trap.instr
        value: int | None = None
        error = ""
        if ins.op == "mov_cr3":
            self.virtual_cr3[vm] = ins.a
        elif ins.op == "read_cr3":
            value = self.virtual_cr3[vm]
        elif ins.op == "hlt":
            self.halted[vm] = True
        elif ins.op in ("disk_read", "disk_write"):
            if not 0 <= ins.a < self.blocks_per_vm:
                error = f"block {ins.a} outside this VM's {self.blocks_per_vm}-block disk"
            elif ins.op == "disk_read":
                value = self.physical_disk[self.disk_base[vm] + ins.a]
            else:
                self.physical_disk[self.disk_base[vm] + ins.a] = ins.b
        return Result(trap.seq, vm, trap.pc, value, error)

    def serve_next(self) -> Result | None:
        """Schedule one trap and respond to it (``None`` if the queue is empty)."""
        trap = self.next_trap()
        return None if trap is None else self.respond(trap)


@dataclass(frozen=True)
class DutyTrace:
    """What happened in :func:`run_duties`.

    >>> t = run_duties({"a": ["read_cr3"], "b": ["add"]}, seed=0)
    >>> [e.action for e in t.events]
    ['direct', 'trap', 'serve', 'deliver']
    """

    programs: tuple[tuple[str, tuple[Instr, ...]], ...]
    seed: int | None
    policy: str
    events: tuple[DutyEvent, ...]
    traps: tuple[Trap, ...]
    results: tuple[Result, ...]
    direct_count: int
    final_cr3: tuple[tuple[str, int], ...]
    _inboxes: dict[str, tuple[Result, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        boxes: dict[str, list[Result]] = {vm: [] for vm, _ in self.programs}
        for r in self.results:
            boxes[r.vm].append(r)
        object.__setattr__(self, "_inboxes", {vm: tuple(rs) for vm, rs in boxes.items()})

    def served_at(self, vm: str, op: str) -> int:
        """The position, among all served traps, of ``vm``'s first ``op`` (−1 if never served).

        Tells which of two VMs' requests the hypervisor carried out first:

        >>> t = run_duties({"a": ["mov_cr3 5"], "b": ["read_cr3"]}, seed=2)
        >>> sorted([t.served_at("a", "mov_cr3"), t.served_at("b", "read_cr3")])
        [0, 1]
        """
        trap_of = {t.seq: t for t in self.traps}
        for i, r in enumerate(self.results):  # results are kept in the order they were served
            t = trap_of[r.seq]
            if t.vm == vm and t.instr.op == op:
                return i
        return -1

    def inbox(self, vm: str) -> tuple[Result, ...]:
        """The results delivered to ``vm``, in delivery order."""
        try:
            return self._inboxes[vm]
        except KeyError:
            raise ArchitectureError(f"no VM {vm!r} in this trace") from None

    def __repr__(self) -> str:
        head = f"DutyTrace(seed={self.seed}, policy={self.policy!r}): " + ", ".join(
            f"{vm}: {len(p)} instructions" for vm, p in self.programs
        )
        lines = [head]
        for e in self.events:
            lines.append(f"  {e.step:>3}  {e.actor:<10} {e.action:<8} {e.detail}")
        lines.append(f"  {len(self.traps)} trapped, {self.direct_count} ran directly")
        return "\n".join(lines)


def run_duties(
    programs: Mapping[str, Sequence[str | Instr]],
    *,
    seed: int | random.Random | None = 0,
    policy: str = "round_robin",
    blocks_per_vm: int = 4,
) -> DutyTrace:
    """Run the VMs' programs under a :class:`ToyHypervisor`, interleaved by ``seed``.

    At each step a seeded choice picks one actor: a VM that is not waiting
    for a result runs its next instruction (directly, or trapped and queued),
    or — if the queue is not empty — the hypervisor serves one trap and
    delivers the result, which lets that VM go on.

    >>> progs = {"vm1": ["mov_cr3 0x1000", "read_cr3"], "vm2": ["mov_cr3 0x2000", "read_cr3"]}
    >>> t = run_duties(progs, seed=3)
    >>> [r.value for r in t.inbox("vm1")], [r.value for r in t.inbox("vm2")]
    ([None, 4096], [None, 8192])
    """
    if not isinstance(programs, Mapping) or not programs:
        raise ArchitectureError("programs is a non-empty mapping of VM name to instructions")
    progs = tuple((str(vm), tuple(parse_instr(i) for i in p)) for vm, p in programs.items())
    rng = make_rng(seed)
    hv = ToyHypervisor([vm for vm, _ in progs], blocks_per_vm=blocks_per_vm, policy=policy)
    pcs = {vm: 0 for vm, _ in progs}
    waiting = {vm: False for vm, _ in progs}
    code = dict(progs)
    events: list[DutyEvent] = []
    traps: list[Trap] = []
    results: list[Result] = []
    direct = 0
    step = 0
    while True:
        ready = [vm for vm, _ in progs if not waiting[vm] and pcs[vm] < len(code[vm])]
        actors = ready + (["hypervisor"] if hv.queue else [])
        if not actors:
            break
        actor = actors[rng.randrange(len(actors))]
        if actor == "hypervisor":
            trap = hv.next_trap()
            assert trap is not None
            result = hv.respond(trap)
            shown = result.error or ("done" if result.value is None else f"value {result.value}")
            events.append(
                DutyEvent(
                    step, "hypervisor", "serve", f"#{trap.seq} {trap.instr} for {trap.vm}: {shown}"
                )
            )
            events.append(DutyEvent(step, "hypervisor", "deliver", f"#{trap.seq} → {result.vm}"))
            results.append(result)
            waiting[result.vm] = False
        else:
            pc = pcs[actor]
            ins = code[actor][pc]
            pcs[actor] = pc + 1
            trap = hv.capture(actor, pc, ins)
            if trap is None:
                direct += 1
                events.append(DutyEvent(step, actor, "direct", str(ins)))
            else:
                traps.append(trap)
                waiting[actor] = True
                queue = ", ".join(f"#{t.seq} {t.vm}" for t in hv.queue)
                events.append(
                    DutyEvent(
                        step, actor, "trap", f"#{trap.seq} {ins} — {trap.cause}; queue: {queue}"
                    )
                )
        step += 1
    return DutyTrace(
        progs,
        seed if isinstance(seed, int) or seed is None else None,
        policy,
        tuple(events),
        tuple(traps),
        tuple(results),
        direct,
        tuple(hv.virtual_cr3.items()),
    )
