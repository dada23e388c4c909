"""The hypercall table (超级调用表) and Xen's trace: one dispatcher for every hypercall.

The real rules modelled [XEN-H; XEN-HCALL-ABI]:

- a guest kernel enters Xen with a hypercall: a 64-bit PV kernel executes ``SYSCALL`` (index in
  RAX, arguments in RDI RSI RDX R10 R8), an HVM/PVH kernel ``VMCALL`` (Intel) or ``VMMCALL``
  (AMD), which is a VM exit; both normally ``call hypercall_page + nr * 32``, a page of stubs
  Xen wrote into the guest [XEN-HCALL-ABI].  32-bit PV kernels use ``INT 0x82``.
- Xen dispatches on the number through a table (``hypercall_table[]`` / ``pv_hypercall_table``
  in ``xen/arch/x86/pv/hypercall.c``); an unimplemented number returns ``-ENOSYS``.
- results are 0 or a negative Xen errno (``-EPERM``, ``-EINVAL`` …) [XEN-ERRNO]; bad guest
  pointers give ``-EFAULT``.  A hypercall never crashes Xen: bad arguments from a guest are
  an error *value*.

How another module registers a handler (the MMU model registers ``mmu_update`` (1),
``update_va_mapping`` (14), ``mmuext_op`` (26) and ``memory_op`` (12) this way)::

    def do_mmu_update(xen, dom, vcpu, args):   # args: the guest's argument tuple
        ...validate everything first; change state only when it will succeed...
        return 0                               # or -EINVAL etc.

    xen.hypercalls.register(HYPERVISOR_mmu_update, do_mmu_update, replace=True)

``dom`` is the calling :class:`~virtcore.xen.domain.Domain`, ``vcpu`` its vCPU index.  A handler
may add to the trace with ``xen.trace.add(kind, domid, text, cost=...)``.

Simplified: arguments are Python values (ints and the small ``struct`` dataclasses of the
``*_op`` modules) instead of guest pointers; a wrong type where a structure is expected stands
for an unreadable guest pointer and returns ``-EFAULT``.

>>> t = HypercallTable()
>>> t.register(17, lambda xen, dom, vcpu, args: 0x40013)   # xen_version: 4.19
>>> t
HypercallTable(1 handlers: 17 xen_version)
>>> t.get(99) is None
True
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from virtcore.errors import ConfigurationError
from virtcore.xen.constants import HYPERCALL_NAMES, HYPERCALL_STUB_SIZE

if TYPE_CHECKING:
    from virtcore.xen.domain import Domain
    from virtcore.xen.hypervisor import Xen

__all__ = ["Handler", "HypercallTable", "Trace", "TraceEvent", "hypercall_page"]

#: A hypercall handler: ``handler(xen, calling_domain, vcpu_id, args) -> 0 or -errno``.
Handler = Callable[["Xen", "Domain", int, tuple[Any, ...]], int]

#: Number of hypercall slots (the hypercall page has 4096 / 32 = 128 stubs).
NR_HYPERCALLS = 128


class HypercallTable:
    """Hypercall number → handler, like Xen's ``hypercall_table``.

    >>> t = HypercallTable(); t.register(29, lambda *a: 0)
    >>> t.register(29, lambda *a: 1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    virtcore.errors.ConfigurationError: hypercall 29 (sched_op) already has a handler; ...
    """

    def __init__(self) -> None:
        self._handlers: dict[int, Handler] = {}

    def register(self, nr: int, handler: Handler, *, replace: bool = False) -> None:
        """Install ``handler`` for hypercall ``nr`` (0..127)."""
        if isinstance(nr, bool) or not isinstance(nr, int) or not 0 <= nr < NR_HYPERCALLS:
            raise ConfigurationError(f"hypercall number must be an int in 0..127, got {nr!r}")
        if not callable(handler):
            raise ConfigurationError(f"handler for hypercall {nr} is not callable: {handler!r}")
        if nr in self._handlers and not replace:
            raise ConfigurationError(
                f"hypercall {nr} ({HYPERCALL_NAMES.get(nr, '?')}) already has a handler;"
                " pass replace=True")
        self._handlers[nr] = handler

    def get(self, nr: object) -> Handler | None:
        """The handler for ``nr``, or None (the dispatcher then returns ``-ENOSYS``)."""
        if isinstance(nr, bool) or not isinstance(nr, int):
            return None
        return self._handlers.get(nr)

    def numbers(self) -> list[int]:
        """Registered numbers, ascending."""
        return sorted(self._handlers)

    def __contains__(self, nr: object) -> bool:
        return self.get(nr) is not None

    def __repr__(self) -> str:
        names = ", ".join(f"{n} {HYPERCALL_NAMES.get(n, '?')}" for n in self.numbers())
        return f"HypercallTable({len(self._handlers)} handlers: {names})"


@dataclass
class TraceEvent:
    """One step Xen took: a hypercall, an event, an upcall, a grant map, a boot step ….

    ``cost`` is its price in simulated ns from :data:`virtcore.costs.DEFAULT_COSTS`.

    >>> print(TraceEvent(3, "hypercall", 1, "event_channel_op(EVTCHNOP_send, port=1) = 0", 400))
    #3     d1  hypercall  event_channel_op(EVTCHNOP_send, port=1) = 0   (400 ns)
    """

    seq: int
    kind: str
    domid: int | None
    text: str
    cost: float = 0.0

    def __str__(self) -> str:
        who = "xen" if self.domid is None else f"d{self.domid}"
        cost = f"   ({self.cost:g} ns)" if self.cost else ""
        return f"#{self.seq:<5d} {who:<3} {self.kind:<10} {self.text}{cost}"


class Trace:
    """Xen's trace: the last ``maxlen`` events (data, for tables and plots), with a total cost.

    ``enabled = False`` stops recording (costs and counters still add up), for benchmarks.

    >>> t = Trace(); _ = t.add("boot", None, "Xen starts"); len(t), t[0].kind
    (1, 'boot')
    """

    def __init__(self, maxlen: int = 100_000) -> None:
        self.events: deque[TraceEvent] = deque(maxlen=maxlen)
        self.enabled = True
        self.seq = 0
        self.total_cost = 0.0
        self.listeners: list[Callable[[TraceEvent], None]] = []

    def add(self, kind: str, domid: int | None, text: str, cost: float = 0.0, *,
            notify: bool = True) -> TraceEvent | None:
        """Record one event (if enabled) and return it; ``notify=False`` leaves telling the
        listeners to the caller (a hypercall tells them once its result is known)."""
        self.seq += 1
        self.total_cost += cost
        if not self.enabled:
            return None
        ev = TraceEvent(self.seq, kind, domid, text, cost)
        self.events.append(ev)
        if notify:
            for fn in self.listeners:
                fn(ev)
        return ev

    def since(self, seq: int) -> list[TraceEvent]:
        """Events with ``seq`` greater than ``seq`` (what one operation did)."""
        return [e for e in self.events if e.seq > seq]

    def of_kind(self, *kinds: str) -> list[TraceEvent]:
        """Events of the given kinds."""
        return [e for e in self.events if e.kind in kinds]

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[TraceEvent]:
        return iter(self.events)

    def __getitem__(self, i: int) -> TraceEvent:
        return self.events[i]

    def format(self, last: int | None = None) -> str:
        """The trace (or its last ``last`` events) as text."""
        evs = list(self.events)[-last:] if last else list(self.events)
        return "\n".join(str(e) for e in evs)

    def __repr__(self) -> str:
        return f"Trace({len(self.events)} events, {self.total_cost:g} ns)"


def hypercall_page(guest_type: str, vendor: str = "intel") -> list[tuple[int, int, str]]:
    """The stubs Xen writes into a guest's hypercall page: ``(offset, nr, assembly)`` rows.

    "The stubs are arranged by hypercall index, and start on 32-byte boundaries"; a guest calls
    ``hypercall_page + nr * 32`` [XEN-HCALL-ABI].  PV (64-bit) stubs use ``syscall``, HVM and
    PVH ones ``vmcall`` (Intel) or ``vmmcall`` (AMD).

    >>> [row for row in hypercall_page("pv") if row[1] == 32]
    [(1024, 32, 'mov $32, %eax; syscall; ret')]
    >>> hypercall_page("hvm", "amd")[29][2]
    'mov $29, %eax; vmmcall; ret'
    """
    if guest_type == "pv":
        insn = "syscall"
    elif vendor == "amd":
        insn = "vmmcall"
    else:
        insn = "vmcall"
    return [(nr * HYPERCALL_STUB_SIZE, nr, f"mov ${nr}, %eax; {insn}; ret")
            for nr in range(4096 // HYPERCALL_STUB_SIZE)]
