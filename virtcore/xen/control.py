"""The control interface (控制接口): ``domctl`` and ``sysctl``, for the control domain only (S6.1).

The real rules, with the names of ``xen/common/domctl.c``, ``domain.c`` and ``sysctl.c``
[XEN-DOMCTL; XEN-DOMCTL-C; XEN-SYSCTL]:

- ``struct xen_domctl { cmd; interface_version; domain; u }``: a wrong interface version is
  ``-EACCES``; the caller must be the control domain (XSM's ``xsm_domctl``), else ``-EPERM``;
  an unknown target domain is ``-ESRCH`` for the control domain and ``-EPERM`` for others.
- ``XEN_DOMCTL_createdomain`` (1): a new domain, **paused** (``controller_pause_count`` starts
  at 1; "the toolstack is responsible for making one unpause hypercall when it wishes the
  guest to start running"); ``domain`` 0 or reserved means "pick an id" (``-EEXIST`` for a
  requested id in use); flags ``XEN_DOMCTL_CDF_hvm``/``_hap``; an HVM domain emulating only
  the LAPIC (``XEN_X86_EMU_LAPIC``) is PVH.
- ``XEN_DOMCTL_destroydomain`` (2) [``domain_kill``]: "a domain cannot destroy itself"
  (``-EINVAL``); the domain's resources are released.
- ``XEN_DOMCTL_pausedomain`` (3) / ``unpausedomain`` (4): a counted pause
  [``domain_pause_by_systemcontroller``]; pausing oneself is ``-EINVAL``; unpausing at count 0
  is ``-EINVAL``.
- ``XEN_DOMCTL_getdomaininfo`` (5): flags ``XEN_DOMINF_*`` (dying, shutdown + reason, paused,
  blocked, running), pages, vCPUs, CPU time.
- ``XEN_DOMCTL_max_mem`` (11): ``max_memkb`` → ``max_pages`` (may ratchet below ``tot_pages``).
- ``XEN_DOMCTL_max_vcpus`` (15), ``XEN_DOMCTL_scheduler_op`` (16) with
  ``XEN_DOMCTL_SCHEDOP_putinfo``/``getinfo`` for credit's ``weight`` (1..65535) and ``cap``.
- device access: ``XEN_DOMCTL_ioport_permission`` (21), ``irq_permission`` (19),
  ``iomem_permission`` (20), ``assign_device`` (37) / ``deassign_device`` (47) — see
  :mod:`virtcore.xen.hwiface`.
- ``sysctl``: ``XEN_SYSCTL_physinfo`` (3), ``sched_id`` (4), ``getdomaininfolist`` (6) — also
  control domain only.

Save, restore and live migration are *toolstack* operations built from these (pause,
getdomaininfo, foreign reads of the guest's memory, destroy / create) — see
:mod:`virtcore.xen.toolstack`.

Simplified: no XSM policy beyond "the control domain", no ``domctl_lock`` continuations, one
cpupool, no ``max_grant_frames``/``max_evtchn_port`` negotiation beyond two fields.

>>> from virtcore.xen import Xen
>>> xen = Xen(frames=128)
>>> op = XenDomctl(XEN_DOMCTL_createdomain, 0, {"max_vcpus": 1})
>>> xen.hypercall(0, HYPERVISOR_domctl, op), op.domain, xen.domains[op.domain].state_letters()
(0, 1, '--p---')
>>> xen.hypercall(op.domain, HYPERVISOR_domctl, XenDomctl(XEN_DOMCTL_pausedomain, 0))
Traceback (most recent call last):
...
virtcore.xen.hypervisor.XenError: d1 is paused: it runs no code and makes no hypercalls
>>> _ = xen.hypercall(0, HYPERVISOR_domctl, XenDomctl(XEN_DOMCTL_unpausedomain, 1))
>>> xen.hypercall(1, HYPERVISOR_domctl, XenDomctl(XEN_DOMCTL_pausedomain, 0))   # a DomU: -EPERM
-1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from virtcore.xen.constants import (
    DOMID_FIRST_RESERVED,
    EACCES,
    EEXIST,
    EFAULT,
    EINVAL,
    ENOSYS,
    EPERM,
    ESRCH,
    XEN_DOMCTL_INTERFACE_VERSION,
    XEN_SCHEDULER_CREDIT,
    XEN_SYSCTL_INTERFACE_VERSION,
    XEN_X86_EMU_LAPIC,
    HYPERVISOR_domctl,
    HYPERVISOR_sysctl,
    XEN_DOMCTL_assign_device,
    XEN_DOMCTL_CDF_hap,
    XEN_DOMCTL_CDF_hvm,
    XEN_DOMCTL_createdomain,
    XEN_DOMCTL_deassign_device,
    XEN_DOMCTL_destroydomain,
    XEN_DOMCTL_getdomaininfo,
    XEN_DOMCTL_iomem_permission,
    XEN_DOMCTL_ioport_permission,
    XEN_DOMCTL_irq_permission,
    XEN_DOMCTL_max_mem,
    XEN_DOMCTL_max_vcpus,
    XEN_DOMCTL_pausedomain,
    XEN_DOMCTL_SCHEDOP_getinfo,
    XEN_DOMCTL_SCHEDOP_putinfo,
    XEN_DOMCTL_scheduler_op,
    XEN_DOMCTL_unpausedomain,
    XEN_DOMINF_blocked,
    XEN_DOMINF_dying,
    XEN_DOMINF_paused,
    XEN_DOMINF_running,
    XEN_DOMINF_shutdown,
    XEN_SYSCTL_getdomaininfolist,
    XEN_SYSCTL_physinfo,
    XEN_SYSCTL_sched_id,
)

if TYPE_CHECKING:
    from virtcore.xen.domain import Domain
    from virtcore.xen.hypervisor import Xen

__all__ = ["HYPERVISOR_domctl", "HYPERVISOR_sysctl", "XenDomctl", "XenSysctl", "do_domctl",
           "do_sysctl", "domain_info"]

#: Pause count limit (``_domain_pause_by_systemcontroller`` refuses more: ``-EUSERS``).
_MAX_PAUSE = 255
_EUSERS = 87


@dataclass
class XenDomctl:
    """``struct xen_domctl``: ``cmd``, target ``domain``, the union ``u`` (a dict here)."""

    cmd: int
    domain: int = 0
    u: dict[str, Any] = field(default_factory=dict)
    interface_version: int = XEN_DOMCTL_INTERFACE_VERSION


@dataclass
class XenSysctl:
    """``struct xen_sysctl``: ``cmd`` and the union ``u`` (a dict; outputs are written into it)."""

    cmd: int
    u: dict[str, Any] = field(default_factory=dict)
    interface_version: int = XEN_SYSCTL_INTERFACE_VERSION


def _int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def domain_info(xen: Xen, d: Domain) -> dict[str, Any]:
    """``struct xen_domctl_getdomaininfo`` of ``d`` (``getdomaininfo``'s output)."""
    flags = 0
    if d.is_dying:
        flags |= XEN_DOMINF_dying
    if d.is_shut_down:
        flags |= XEN_DOMINF_shutdown | (max(d.shutdown_code, 0) & 255) << 16
    if d.paused:
        flags |= XEN_DOMINF_paused
    if d.blocked:
        flags |= XEN_DOMINF_blocked
    if d.runnable:
        flags |= XEN_DOMINF_running
    return {"domain": d.domid, "flags": flags, "tot_pages": d.memory.nr_pages,
            "max_pages": d.memory.max_pages, "nr_online_vcpus": len(d.vcpus),
            "max_vcpu_id": len(d.vcpus) - 1, "cpu_time": int(d.cpu_time_ns),
            "shutdown_reason": d.shutdown_code if d.is_shut_down else 0}


def _create(xen: Xen, cur: Domain, op: XenDomctl) -> int:
    u = op.u
    flags = u.get("flags", 0)
    vcpus = u.get("max_vcpus", 1)
    emu = u.get("emulation_flags", 0)
    if not (_int(flags) and _int(vcpus) and _int(emu)) or not 1 <= vcpus <= 64:
        return -EINVAL
    if flags & ~(XEN_DOMCTL_CDF_hvm | XEN_DOMCTL_CDF_hap):
        return -EINVAL
    if flags & XEN_DOMCTL_CDF_hap and not flags & XEN_DOMCTL_CDF_hvm:
        return -EINVAL
    want = op.domain
    if 0 < want < DOMID_FIRST_RESERVED and (want in xen.domains or want in xen.memory.domains):
        return -EEXIST
    typ = "pv"
    if flags & XEN_DOMCTL_CDF_hvm:
        typ = "pvh" if emu == XEN_X86_EMU_LAPIC else "hvm"
    if 0 < want < DOMID_FIRST_RESERVED:
        saved = xen._next_domid
        xen._next_domid = want
        d = xen.create_domain(f"(null)-{want}", typ, 0, vcpus=vcpus)
        xen._next_domid = saved
    else:
        d = xen.create_domain("(null)", typ, 0, vcpus=vcpus)
        d.name = f"(null)-{d.domid}"
    op.domain = d.domid
    xen.trace.add("domctl", cur.domid, f"createdomain → d{d.domid} ({typ}, {vcpus} vCPUs, paused)")
    return 0


def _sched(xen: Xen, d: Domain, op: XenDomctl) -> int:
    u = op.u
    if u.get("sched_id", XEN_SCHEDULER_CREDIT) != XEN_SCHEDULER_CREDIT:
        return -EINVAL
    cmd = u.get("cmd")
    if cmd == XEN_DOMCTL_SCHEDOP_getinfo:
        u["weight"], u["cap"] = d.weight, d.cap
        return 0
    if cmd != XEN_DOMCTL_SCHEDOP_putinfo:
        return -EINVAL
    weight = u.get("weight", 0)
    cap = u.get("cap", d.cap)
    if not (_int(weight) and _int(cap)):
        return -EINVAL
    # csched_dom_cntl: weight 0 means "leave unchanged"; cap in 0..(100 * vCPUs)
    if weight < 0 or weight > 65535 or cap < 0 or cap > 100 * len(d.vcpus):
        return -EINVAL
    if weight:
        d.weight = weight
    d.cap = cap
    return 0


def do_domctl(xen: Xen, cur: Domain, vcpu: int, args: tuple[Any, ...]) -> int:
    """``do_domctl(u_domctl)``: hypercall 36."""
    if len(args) != 1 or not isinstance(args[0], XenDomctl):
        return -EFAULT
    op = args[0]
    if op.interface_version != XEN_DOMCTL_INTERFACE_VERSION:
        return -EACCES
    if not (_int(op.cmd) and _int(op.domain)) or not isinstance(op.u, dict):
        return -EINVAL
    if op.cmd == XEN_DOMCTL_createdomain:
        return _create(xen, cur, op) if cur.is_privileged else -EPERM
    d = xen.domains.get(op.domain)
    if d is None or d.is_dying:
        return -ESRCH if cur.is_privileged else -EPERM
    if not cur.is_privileged:
        return -EPERM  # xsm_domctl: only the control domain
    from virtcore.xen import hwiface

    cmd, u = op.cmd, op.u
    if cmd == XEN_DOMCTL_destroydomain:
        if d is cur:
            return -EINVAL  # "a domain cannot destroy itself"
        xen.trace.add("domctl", cur.domid, f"destroydomain d{d.domid}")
        xen.destroy_domain(d)
        return 0
    if cmd == XEN_DOMCTL_pausedomain:
        if d is cur:
            return -EINVAL
        if d.pause_count >= _MAX_PAUSE:
            return -_EUSERS
        d.pause_count += 1
        return 0
    if cmd == XEN_DOMCTL_unpausedomain:
        if d.pause_count == 0:
            return -EINVAL
        d.pause_count -= 1
        if d.pause_count == 0:
            xen.deliver_later(d)
        return 0
    if cmd == XEN_DOMCTL_getdomaininfo:
        u.update(domain_info(xen, d))
        return 0
    if cmd == XEN_DOMCTL_max_mem:
        kb = u.get("max_memkb")
        if not _int(kb) or kb < 0:
            return -EINVAL
        d.memory.max_pages = kb * 1024 // xen.memory.frame_size
        return 0
    if cmd == XEN_DOMCTL_max_vcpus:
        n = u.get("max")
        if not _int(n) or not len(d.vcpus) <= n <= 64:
            return -EINVAL
        from virtcore.xen.domain import VCPUInfo

        d.vcpus.extend(VCPUInfo(i) for i in range(len(d.vcpus), n))
        return 0
    if cmd == XEN_DOMCTL_scheduler_op:
        return _sched(xen, d, op)
    if cmd in (XEN_DOMCTL_ioport_permission, XEN_DOMCTL_irq_permission,
               XEN_DOMCTL_iomem_permission, XEN_DOMCTL_assign_device,
               XEN_DOMCTL_deassign_device):
        return hwiface.domctl_device(xen, cur, d, cmd, u)
    return -ENOSYS


def do_sysctl(xen: Xen, cur: Domain, vcpu: int, args: tuple[Any, ...]) -> int:
    """``do_sysctl(u_sysctl)``: hypercall 35."""
    if len(args) != 1 or not isinstance(args[0], XenSysctl):
        return -EFAULT
    op = args[0]
    if op.interface_version != XEN_SYSCTL_INTERFACE_VERSION:
        return -EACCES
    if not cur.is_privileged:
        return -EPERM
    u = op.u
    if op.cmd == XEN_SYSCTL_physinfo:
        u.update(nr_cpus=xen.pcpus, total_pages=xen.memory.nframes,
                 free_pages=xen.memory.allocator.free_count, cpu_khz=2_000_000)
        return 0
    if op.cmd == XEN_SYSCTL_sched_id:
        u["sched_id"] = XEN_SCHEDULER_CREDIT
        return 0
    if op.cmd == XEN_SYSCTL_getdomaininfolist:
        first = u.get("first_domain", 0)
        if not _int(first):
            return -EINVAL
        u["buffer"] = [domain_info(xen, d) for i, d in sorted(xen.domains.items()) if i >= first]
        u["num_domains"] = len(u["buffer"])
        return 0
    return -ENOSYS
