"""virtcore.xen — Xen from the inside: the hypervisor, Domain 0 and DomUs, hypercalls, the
control and hardware interfaces, event channels, grant tables and split drivers.

Concepts and how each is represented (chapters 5 and 6a build on these):

- **the hypervisor** (Xen 虚拟机监控器, S3.4, S5.1–S5.2) — :class:`Xen`: boots first
  (:attr:`Xen.boot_trace`), owns the machine frames (:mod:`virtcore.xen.memory`), dispatches
  every hypercall through one table (:mod:`.hypercall`), records what it does in
  :attr:`Xen.trace` (data: :class:`TraceEvent`), prices each step from
  :data:`virtcore.costs.DEFAULT_COSTS`.
- **domains** (域: Domain 0 特权域, DomU, driver domains; S3.5, S5.3–S5.6) —
  :class:`Domain`: domid, type (``pv``/``hvm``/``pvh``), privilege, vCPUs with their
  ``vcpu_info``, memory as machine frames behind a P2M, the ``xl list`` state letters.
- **control interface** (控制接口, S6.1) — ``domctl``/``sysctl`` (:mod:`.control`), only from
  the control domain; **the toolstack** ``xl`` in Dom0 (:class:`XL`, ``xen.xl``).
- **safe hardware interface** (安全硬件接口, S6.2) — :mod:`.hwiface`: I/O ports, PCI config,
  IOMMU-checked DMA and physical IRQs reach only the device's owner.
- **event channels** (事件通道, S6.3) — :mod:`.evtchn` (2-level ABI, real ``EVTCHNOP_*``).
- **grant tables** (授权表, S4.1) — :mod:`.grant` (real ``GNTTABOP_*``, ``GTF_*``,
  ``GNTST_*``).
- **split drivers and shared rings** (分离设备驱动, 共享环) — :mod:`.ring` (``io/ring.h``),
  :mod:`.splitdrv` (blkfront/blkback, netfront/netback), :mod:`.xenstore`.
- **virtual processor** (虚拟处理器, S6.4) — :mod:`.vcpu`: a guest kernel's privileged
  instructions trap (PV) or exit (HVM) to Xen, which emulates or refuses them.
- **scheduling** — :mod:`.sched`: ``sched_op`` and the credit scheduler over the domains.
- the virtual MMU (S6.5) lives in :mod:`virtcore.xen.memory` and its sibling modules.

Registering a hypercall handler from another module (how the MMU model adds ``mmu_update``
(1), ``update_va_mapping`` (14), ``mmuext_op`` (26) and replaces ``memory_op`` (12))::

    from virtcore.xen import Xen, HYPERVISOR_mmu_update

    def do_mmu_update(xen, dom, vcpu, args):   # dom: the calling Domain; vcpu: its index
        ...                                    # validate first; change state only on success
        return 0                               # or a negative Xen errno, e.g. -EINVAL

    xen = Xen()
    xen.hypercalls.register(HYPERVISOR_mmu_update, do_mmu_update)
    xen.hypercall(domid, HYPERVISOR_mmu_update, reqs, count)   # a guest makes the call

A handler must return ``0``/a non-negative value or ``-errno`` and never raise for bad guest
input; ``xen.trace.add(kind, domid, text, cost=...)`` records extra steps.

>>> xen = Xen(frames=512)
>>> web = xen.xl.create({"name": "web", "memory_pages": 32, "disk": True})
>>> blk = xen.xl.frontends[(web.domid, "vbd")]
>>> blk.write(0, b"data").status, blk.read(0).data[:4]
(0, b'data')
>>> [r.state for r in xen.xl.list()]
['r-----', 'r-----']
"""

from virtcore.xen.constants import (
    DOMID_SELF,
    EVTCHNOP_alloc_unbound,
    EVTCHNOP_bind_interdomain,
    EVTCHNOP_send,
    HYPERVISOR_domctl,
    HYPERVISOR_event_channel_op,
    HYPERVISOR_grant_table_op,
    HYPERVISOR_memory_op,
    HYPERVISOR_mmu_update,
    HYPERVISOR_mmuext_op,
    HYPERVISOR_update_va_mapping,
    errno_name,
)
from virtcore.xen.domain import Domain
from virtcore.xen.hypercall import HypercallTable, Trace, TraceEvent, hypercall_page
from virtcore.xen.hypervisor import Xen, XenError
from virtcore.xen.toolstack import XL, parse_config

__all__ = [
    "DOMID_SELF",
    "XL",
    "Domain",
    "EVTCHNOP_alloc_unbound",
    "EVTCHNOP_bind_interdomain",
    "EVTCHNOP_send",
    "HYPERVISOR_domctl",
    "HYPERVISOR_event_channel_op",
    "HYPERVISOR_grant_table_op",
    "HYPERVISOR_memory_op",
    "HYPERVISOR_mmu_update",
    "HYPERVISOR_mmuext_op",
    "HYPERVISOR_update_va_mapping",
    "HypercallTable",
    "Trace",
    "TraceEvent",
    "Xen",
    "XenError",
    "errno_name",
    "hypercall_page",
    "parse_config",
]
