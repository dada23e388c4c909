"""Scheduling domains: ``sched_op`` (hypercall 29) and the credit scheduler over the vCPUs.

The real rules [XEN-SCHED-H; XEN-CREDIT; XL-1]:

- ``SCHEDOP_yield`` (0) gives up the pCPU; ``SCHEDOP_block`` (1) blocks the vCPU until an event
  — it "atomically re-enables event delivery and checks for pending events before blocking"
  (so a pending upcall means it does not block); ``SCHEDOP_shutdown`` (2) with a reason
  ``SHUTDOWN_poweroff 0, reboot 1, suspend 2, crash 3, watchdog 4, soft_reset 5`` shuts the
  *calling* domain down (the toolstack sees it as state ``s``, with the reason letter from
  ``"-rscwS"``); ``SCHEDOP_remote_shutdown`` (4) is for the control domain.
- Xen's scheduler runs every runnable vCPU of every domain; the default here is credit1 with
  each domain's ``weight`` and ``cap`` (set by ``XEN_DOMCTL_scheduler_op``); a paused, blocked,
  shut-down or dying domain is not eligible.  :func:`schedule` runs :mod:`virtcore.sched`'s
  :class:`~virtcore.sched.Credit` on the runnable domains.

Simplified: the scheduler runs as a separate simulation of ``duration_us`` with each domain's
vCPUs CPU-bound (or a workload given per domain) — it does not interleave with hypercalls.

>>> from virtcore.xen import Xen
>>> xen = Xen(frames=256, pcpus=1)
>>> a = xen.create_guest("a", weight=512); b = xen.create_guest("b")
>>> r = schedule(xen, duration_us=900_000, include_dom0=False)
>>> r.domain_share                                  # weight 512 : 256 → 2 : 1
{'a': 0.6666666666666666, 'b': 0.3333333333333333}
>>> xen.xl.pause("a"); sorted(schedule(xen, duration_us=30_000).domain_share)
['Domain-0', 'b']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeGuard

from virtcore.xen.constants import (
    DOMID_FIRST_RESERVED,
    EFAULT,
    EINVAL,
    ENOSYS,
    EPERM,
    ESRCH,
    SCHEDOP_block,
    SCHEDOP_remote_shutdown,
    SCHEDOP_shutdown,
    SCHEDOP_yield,
    SHUTDOWN_soft_reset,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from virtcore.sched import SchedResult
    from virtcore.sched.workloads import Workload
    from virtcore.xen.domain import Domain
    from virtcore.xen.hypervisor import Xen

__all__ = ["do_sched_op", "schedule", "shutdown_domain"]


def _int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def shutdown_domain(xen: Xen, d: Domain, reason: int) -> None:
    """``domain_shutdown(d, reason)``: the domain stops running and reports ``reason``."""
    d.is_shutting_down = True
    d.is_shut_down = True
    d.shutdown_code = reason
    for v in d.vcpus:
        v.blocked = False
    xen.trace.add("sched", d.domid, f"domain shut down, reason {reason}"
                  f" ({'-rscwS'[reason]})")


def do_sched_op(xen: Xen, dom: Domain, vcpu: int, args: tuple[Any, ...]) -> int:
    """``do_sched_op(cmd, arg)``: hypercall 29."""
    if not args:
        return -EINVAL
    cmd = args[0]
    arg = args[1] if len(args) > 1 else None
    if cmd == SCHEDOP_yield:
        return 0
    if cmd == SCHEDOP_block:
        v = dom.vcpus[vcpu]
        v.evtchn_upcall_mask = 0  # local_event_delivery_enable()
        if v.evtchn_upcall_pending:
            xen.deliver_later(dom)
            return 0  # an event is pending: do not block
        v.blocked = True
        return 0
    if cmd == SCHEDOP_shutdown:
        if not isinstance(arg, dict):
            return -EFAULT
        reason = arg.get("reason")
        if not _int(reason) or not 0 <= reason <= SHUTDOWN_soft_reset:
            return -EINVAL
        shutdown_domain(xen, dom, reason)
        return 0
    if cmd == SCHEDOP_remote_shutdown:
        if not isinstance(arg, dict):
            return -EFAULT
        domid, reason = arg.get("domain_id"), arg.get("reason")
        if not (_int(domid) and _int(reason)) or not 0 <= reason <= SHUTDOWN_soft_reset:
            return -EINVAL
        d = xen.domains.get(domid) if 0 <= domid < DOMID_FIRST_RESERVED else None
        if d is None or d.is_dying:
            return -ESRCH
        if not dom.is_privileged:
            return -EPERM
        if d is dom:
            return -EINVAL
        if not d.is_shut_down:
            shutdown_domain(xen, d, reason)
        return 0
    return -ENOSYS


def schedule(xen: Xen, duration_us: int = 300_000, *, include_dom0: bool = True,
             workloads: Mapping[str, Workload] | None = None, seed: int = 0) -> SchedResult:
    """Run the credit scheduler over the runnable domains' vCPUs for ``duration_us``.

    Each domain's ``weight``/``cap`` (from ``xl sched-credit``) is used; paused, blocked,
    shut-down or dying domains are not scheduled.  Returns the :class:`~virtcore.sched.SchedResult`.
    """
    from virtcore.sched import Credit, simulate
    from virtcore.sched import Domain as SDomain

    workloads = workloads or {}
    doms = []
    for d in sorted(xen.domains.values(), key=lambda d: d.domid):
        if not d.runnable or (d.domid == 0 and not include_dom0):
            continue
        doms.append(SDomain(d.name, vcpus=len(d.vcpus), weight=d.weight, cap=d.cap,
                            workload=workloads.get(d.name)))
    if not doms:
        from virtcore.errors import ConfigurationError

        raise ConfigurationError("no runnable domain to schedule")
    result = simulate(doms, Credit(), pcpus=xen.pcpus, duration_us=duration_us, seed=seed)
    for name, cpu_us in result.domain_cpu_us.items():
        xen.domain(name).cpu_time_ns += cpu_us * 1000
    return result
