"""``memory_op`` (hypercall 12): the reservation calls a toolstack and a balloon driver make.

The real rules [XEN-MEMORY]: ``XENMEM_populate_physmap`` (6) backs guest pseudo-physical frames
with fresh machine frames, ``XENMEM_decrease_reservation`` (1) gives frames back (the balloon
driver), ``XENMEM_current_reservation`` (3) / ``XENMEM_maximum_reservation`` (4) report pages;
``struct xen_memory_reservation { extent_start, nr_extents, extent_order, mem_flags, domid }``;
the result is the number of extents done (or ``-errno``); only a privileged caller may name
another domain (``-EPERM``), an unknown one is ``-ESRCH``.

This is the default handler; the virtual-MMU model may register its own for number 12
(``xen.hypercalls.register(HYPERVISOR_memory_op, fn, replace=True)``).

Simplified: ``extent_order`` must be 0 (4 KiB extents), no ``mem_flags``; the P2M work is done by
:class:`~virtcore.xen.memory.DomainMemory`.

>>> from virtcore.xen import Xen
>>> xen = Xen(frames=64)                       # Dom0 has 16 pages, its maximum
>>> give_back = XenMemoryReservation(extent_start=[14, 15])   # domid DOMID_SELF
>>> xen.hypercall(0, HYPERVISOR_memory_op, XENMEM_decrease_reservation, give_back)
2
>>> r = XenMemoryReservation(extent_start=[100, 101, 102], domid=0)
>>> xen.hypercall(0, HYPERVISOR_memory_op, XENMEM_populate_physmap, r)   # room for 2
2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from virtcore.xen.constants import DOMID_SELF, EFAULT, EINVAL, ENOSYS, EPERM, ESRCH

if TYPE_CHECKING:
    from virtcore.xen.domain import Domain
    from virtcore.xen.hypervisor import Xen

__all__ = [
    "HYPERVISOR_memory_op",
    "XENMEM_current_reservation",
    "XENMEM_decrease_reservation",
    "XENMEM_increase_reservation",
    "XENMEM_maximum_reservation",
    "XENMEM_populate_physmap",
    "XenMemoryReservation",
    "do_memory_op",
]

HYPERVISOR_memory_op = 12
XENMEM_increase_reservation = 0
XENMEM_decrease_reservation = 1
XENMEM_current_reservation = 3
XENMEM_maximum_reservation = 4
XENMEM_populate_physmap = 6


@dataclass
class XenMemoryReservation:
    """``struct xen_memory_reservation`` (``extent_start`` is the list of pfns)."""

    extent_start: list[int] = field(default_factory=list)
    nr_extents: int | None = None
    extent_order: int = 0
    mem_flags: int = 0
    domid: int = DOMID_SELF


def do_memory_op(xen: Xen, dom: Domain, vcpu: int, args: tuple[Any, ...]) -> int:
    """``do_memory_op(cmd, arg)``."""
    if len(args) != 2:
        return -EINVAL
    cmd, arg = args
    if cmd in (XENMEM_current_reservation, XENMEM_maximum_reservation):
        target = xen.lookup_any(dom, arg)
        if target is None:
            return -ESRCH
        if target is not dom and not dom.is_privileged:
            return -EPERM
        m = target.memory
        return m.nr_pages if cmd == XENMEM_current_reservation else m.max_pages
    if cmd not in (XENMEM_populate_physmap, XENMEM_decrease_reservation):
        return -ENOSYS
    if not isinstance(arg, XenMemoryReservation) or not isinstance(arg.extent_start, list):
        return -EFAULT
    if arg.extent_order != 0 or arg.mem_flags != 0:
        return -EINVAL
    pfns = arg.extent_start if arg.nr_extents is None else arg.extent_start[:arg.nr_extents]
    if not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < 1 << 40
               for p in pfns):
        return -EINVAL
    target = xen.lookup_any(dom, arg.domid)
    if target is None:
        return -ESRCH
    if target is not dom and not dom.is_privileged:
        return -EPERM
    if cmd == XENMEM_populate_physmap:
        return int(target.memory.populate_physmap(pfns))
    return int(target.memory.decrease_reservation(pfns))
