"""Nested virtualization (嵌套虚拟化): a KVM guest running KVM (S1.10).

The notes present nesting as a Type 2 strength
("支持虚拟嵌套，嵌套意味着可以在KVM虚拟机中再运行KVM").
Correction N7: nesting is not special to Type 2 — Xen, Hyper-V and ESXi can
nest too (see :func:`virtcore.arch.products`).

:func:`kvm_nested` builds the stack: level L0 is the host (Linux with
``kvm.ko``), L1 a KVM guest that itself loads ``kvm.ko``, L2 a guest of L1,
and so on.  :func:`nested_cost` prices an event of the innermost guest.

How nesting is priced (teaching assumption, not a measurement): on real
hardware only L0 runs in VMX root mode, so an exit of an L2 guest lands in
L0, which must run L1's hypervisor to handle it — and L1's hypervisor, being
a guest, exits to L0 again for its own privileged work.  The model lumps
this into one factor: every virtualization crossing (trap, VM exit, world or
context switch, emulation) of the innermost guest costs
``model.nesting_factor ** (levels − 1)`` times its single-level price;
computation, system calls (which do not exit with VT-x), device work and
page-walk references keep their price.  Device I/O is also *structurally*
longer: the path itself follows L1's QEMU down through L1's kernel, whose own
I/O exits to L0 and goes through L0's QEMU and kernel to the device.
A TLB miss stays a 24-reference 2-D walk because L0 merges L1's nested
tables with its own into one (shadow EPT) — whose upkeep is, again, exits.

>>> nested_cost(Event.COMPUTE, levels=3) == nested_cost(Event.COMPUTE, levels=1)
True
>>> priv = Event.PRIVILEGED_INSTRUCTION
>>> nested_cost(priv, levels=2) == 10 * nested_cost(priv, levels=1)
True
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from virtcore.arch.costs import DEFAULT_MODEL, path_cost, step_price
from virtcore.arch.paths import Event, coerce_event, event_path
from virtcore.arch.stacks import (
    Architecture,
    ArchitectureError,
    Edge,
    EdgeKind,
    Layer,
    LayerKind,
    PrivilegeLevel,
    Stack,
    native,
)
from virtcore.costs import Costs

__all__ = ["NestingRow", "NestingTable", "kvm_nested", "nested_cost", "nesting_costs"]


def kvm_nested(levels: int = 2) -> Stack:
    """KVM inside KVM, ``levels`` deep (1 = an ordinary KVM guest).

    Guests are named ``L1`` … ``L<levels>``; each level has a kernel and an
    app, each level below the innermost loads ``kvm.ko`` and runs one QEMU.

    >>> s = kvm_nested(2)
    >>> s.guests
    ('L1', 'L2')
    >>> [l.name for l in s.below("L2 kernel")]
    ['L1 kvm', 'L1 QEMU']
    >>> s.role("monitor", "L2").name, s.role("monitor", "L1").name
    ('L1 kvm', 'L0 kvm')
    """
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ArchitectureError(f"levels must be an int >= 1, got {levels!r}")
    layers = [
        Layer("hardware", "物理硬件", LayerKind.HARDWARE, PrivilegeLevel.HARDWARE, 0),
        Layer("L0 kernel", "主机内核（L0，Linux）", LayerKind.HOST_KERNEL, PrivilegeLevel.ROOT, 1),
        Layer("L0 kvm", "内核模块kvm.ko（L0）", LayerKind.KERNEL_MODULE, PrivilegeLevel.ROOT, 1),
    ]
    edges = [Edge("hardware", "L0 kernel"), Edge("L0 kernel", "L0 kvm", EdgeKind.PART_OF)]
    roles = [
        ("", "hardware", "hardware"),
        ("", "root", "L0 kernel"),
        ("", "host_kernel", "L0 kernel"),
        ("", "hypervisor", "L0 kvm"),
    ]
    for i in range(1, levels + 1):
        g = f"L{i}"
        below_k, below_kvm = f"L{i - 1} kernel", f"L{i - 1} kvm"
        qemu = Layer(
            f"L{i - 1} QEMU",
            f"QEMU（L{i - 1}用户空间）",
            LayerKind.VMM_PROCESS,
            PrivilegeLevel.USER,
            2 if i == 1 else 2 * i - 1,  # one above the kernel it runs on
            guest=g,  # the VM it hosts, as in hybrid(): if it dies, so does that VM
        )
        kernel = Layer(
            f"{g} kernel",
            f"VM内核（{g}）",
            LayerKind.GUEST_KERNEL,
            PrivilegeLevel.GUEST_KERNEL,
            2 * i,
            g,
        )
        app = Layer(
            f"{g} app", f"应用程序（{g}）", LayerKind.APP, PrivilegeLevel.USER, 2 * i + 1, g
        )
        layers += [qemu, kernel, app]
        edges += [
            Edge(below_k, qemu.name),
            Edge(below_kvm, kernel.name),
            Edge(qemu.name, kernel.name, EdgeKind.HOSTS),
            Edge(kernel.name, app.name),
        ]
        roles += [
            (g, "app", app.name),
            (g, "kernel", kernel.name),
            (g, "monitor", below_kvm),
            (g, "user_vmm", qemu.name),
        ]
        if i < levels:
            layers.append(
                Layer(
                    f"{g} kvm",
                    f"内核模块kvm.ko（{g}）",
                    LayerKind.KERNEL_MODULE,
                    PrivilegeLevel.GUEST_KERNEL,
                    2 * i,
                    g,
                )
            )
            edges.append(Edge(kernel.name, f"{g} kvm", EdgeKind.PART_OF))
    return Stack(
        f"kvm nested x{levels}",
        "嵌套虚拟化（KVM中运行KVM）",
        Architecture.HYBRID,
        tuple(layers),
        tuple(edges),
        "linux",
        tuple(f"L{i}" for i in range(1, levels + 1)),
        tuple(roles),
        requires_hardware_assist=True,
        syllabus=("S1.10",),
    )


def nested_cost(event: Event | str, levels: int = 2, model: Costs = DEFAULT_MODEL) -> float:
    """Price of one event of the innermost guest of :func:`kvm_nested` (teaching assumption).

    ``levels=0`` is the native machine (no VM), ``1`` an ordinary KVM guest.
    See the module docstring for how nesting multiplies the price.

    >>> nested_cost("io", 0), nested_cost("io", 1)
    (5300, 9600)
    >>> nested_cost("io", 2) > nested_cost("io", 1)
    True
    """
    ev = coerce_event(event)
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 0:
        raise ArchitectureError(f"levels must be an int >= 0, got {levels!r}")
    if levels == 0:
        return path_cost(event_path(native(), ev), model)
    path = event_path(kvm_nested(levels), ev, hardware_assist=True, guest=f"L{levels}")
    mult = model.nesting_factor ** (levels - 1)
    return sum(
        step_price(model, s) * (mult if s.kind.is_virtualization_overhead else 1)
        for s in path.steps
    )


@dataclass(frozen=True)
class NestingRow:
    """One level of :func:`nesting_costs`.

    >>> nesting_costs(1)[0].description
    'L0: native, no VM'
    """

    level: int
    description: str
    cost: float
    slowdown: float  # cost / native cost


@dataclass(frozen=True)
class NestingTable:
    """Rows of :func:`nesting_costs`, with a readable repr.

    >>> t = nesting_costs(2)
    >>> len(t), t[2].level
    (3, 2)
    """

    event: Event
    rows: tuple[NestingRow, ...]

    def __iter__(self) -> Iterator[NestingRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> NestingRow:
        return self.rows[i]

    def __repr__(self) -> str:
        lines = [f"nested KVM, cost of one {self.event.value} event (teaching assumption)"]
        for r in self.rows:
            lines.append(f"  {r.level}  {r.cost:>12g}  ×{r.slowdown:<8.3g} {r.description}")
        return "\n".join(lines)


def nesting_costs(
    max_level: int = 3, event: Event | str = Event.IO, model: Costs = DEFAULT_MODEL
) -> NestingTable:
    """Cost of ``event`` at each nesting level from native (0) to ``max_level``.

    >>> t = nesting_costs(3, "privileged_instruction")
    >>> [round(r.slowdown) for r in t]
    [1, 1100, 11000, 110000]
    """
    ev = coerce_event(event)
    if isinstance(max_level, bool) or not isinstance(max_level, int) or max_level < 0:
        raise ArchitectureError(f"max_level must be an int >= 0, got {max_level!r}")
    base = nested_cost(ev, 0, model)
    rows = []
    for level in range(max_level + 1):
        c = nested_cost(ev, level, model)
        if level == 0:
            text = "L0: native, no VM"
        elif level == 1:
            text = "L1: a KVM guest"
        else:
            text = f"L{level}: a KVM guest inside " + " inside ".join(["a KVM guest"] * (level - 1))
        rows.append(NestingRow(level, text, c, c / base if base else float("inf")))
    return NestingTable(ev, tuple(rows))
