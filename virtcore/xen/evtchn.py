"""Event channels (事件通道): Xen's asynchronous notifications, the 2-level ABI.

The real rules, with the names of ``xen/common/event_channel.c`` and ``event_2l.c``
[XEN-EVTCHN; XEN-EVTCHN-C; XEN-H]:

- a port is an ``evtchn_port_t``; port 0 is reserved; the 2-level ABI has 64 × 64 = 4096 ports
  on 64-bit (``EVTCHN_2L_NR_CHANNELS``).  Channel states ``EVTCHNSTAT_closed 0, unbound 1,
  interdomain 2, pirq 3, virq 4, ipi 5``.
- ``EVTCHNOP_alloc_unbound`` (6) [``evtchn_alloc_unbound``]: a fresh port in ``dom`` that
  accepts a binding from ``remote_dom``; only a privileged caller may name a ``dom`` other than
  itself (``-EPERM``); unknown domains ``-ESRCH``.
- ``EVTCHNOP_bind_interdomain`` (0) [``evtchn_bind_interdomain``]: connect to a remote port
  that is *unbound* and accepts the caller (else ``-EINVAL``); "conservatively always" sets the
  new local port pending.
- ``EVTCHNOP_bind_virq`` (1): ``virq >= NR_VIRQS`` → ``-EINVAL``, bad vCPU → ``-ENOENT``, a
  global virq on a vCPU other than 0 → ``-EINVAL``, already bound → ``-EEXIST``.
- ``EVTCHNOP_bind_pirq`` (2): only a domain permitted that physical IRQ (``-EPERM``).
- ``EVTCHNOP_bind_ipi`` (7), ``EVTCHNOP_bind_vcpu`` (8).
- ``EVTCHNOP_close`` (3) [``evtchn_close``]: an interdomain peer goes back to *unbound*
  (accepting this domain again); closing a free port is ``-EINVAL``.
- ``EVTCHNOP_send`` (4) [``evtchn_send``]: interdomain → the *remote* port is set pending; IPI →
  the local one; unbound → "silently drop the notification" (returns 0); anything else
  ``-EINVAL``.
- ``EVTCHNOP_status`` (5): another domain's ports only for a privileged caller (``-EPERM``).
- ``EVTCHNOP_unmask`` (9) [``evtchn_2l_unmask``]: clear MASK; if PENDING, deliver now.
- ``EVTCHNOP_reset`` (10) [``evtchn_reset``]: close all of a domain's ports (itself, or any
  domain for a privileged caller).
- delivery [``evtchn_2l_set_pending``]: test-and-set PENDING — if it was already set, nothing
  more (no new edge); if MASK is clear, set the word's bit in the vCPU's
  ``evtchn_pending_sel`` and then ``evtchn_upcall_pending`` (``vcpu_mark_events_pending``);
  an upcall is made on that 0 → 1 edge if the vCPU's ``evtchn_upcall_mask`` is clear.
  "If a channel becomes pending while the channel is masked then the 'edge' is lost" until
  unmask re-checks it.  The guest clears PENDING [XEN-H].

The guest side of an upcall is Linux's ``xen_evtchn_do_upcall``: clear
``evtchn_upcall_pending``, take ``evtchn_pending_sel``, and for each pending unmasked port
clear PENDING and run the handler the kernel bound to it (:meth:`Domain.on_event`).

Simplified: no FIFO ABI, no XSM beyond "privileged or itself", no ``consumer_is_xen`` channels;
an upcall runs the guest's handler at once (when Xen returns to the guest), on the target vCPU.

>>> from virtcore.xen import Xen
>>> xen = Xen(frames=256)
>>> d1 = xen.create_guest("a", memory_pages=8); d2 = xen.create_guest("b", memory_pages=8)
>>> a = EvtchnAllocUnbound(dom=DOMID_SELF, remote_dom=d2.domid)
>>> xen.hypercall(d1, HYPERVISOR_event_channel_op, EVTCHNOP_alloc_unbound, a), a.port
(0, 1)
>>> b = EvtchnBindInterdomain(remote_dom=d1.domid, remote_port=a.port)
>>> xen.hypercall(d2, HYPERVISOR_event_channel_op, EVTCHNOP_bind_interdomain, b), b.local_port
(0, 1)
>>> xen.hypercall(d1, HYPERVISOR_event_channel_op, EVTCHNOP_send, EvtchnSend(port=1))
0
>>> d2.stats.upcalls   # one for the bind (pending always set), one for the send
2
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from virtcore.xen.constants import (
    DOMID_SELF,
    EEXIST,
    EFAULT,
    EINVAL,
    ENOENT,
    ENOSPC,
    ENOSYS,
    EPERM,
    ESRCH,
    EVTCHNOP_NAMES,
    EVTCHNSTAT_NAMES,
    NR_VIRQS,
    VIRQS_PER_VCPU,
    EVTCHNOP_alloc_unbound,
    EVTCHNOP_bind_interdomain,
    EVTCHNOP_bind_ipi,
    EVTCHNOP_bind_pirq,
    EVTCHNOP_bind_vcpu,
    EVTCHNOP_bind_virq,
    EVTCHNOP_close,
    EVTCHNOP_reset,
    EVTCHNOP_send,
    EVTCHNOP_status,
    EVTCHNOP_unmask,
    EVTCHNSTAT_closed,
    EVTCHNSTAT_interdomain,
    EVTCHNSTAT_ipi,
    EVTCHNSTAT_pirq,
    EVTCHNSTAT_unbound,
    EVTCHNSTAT_virq,
    HYPERVISOR_event_channel_op,
)

if TYPE_CHECKING:
    from virtcore.xen.domain import Domain
    from virtcore.xen.hypervisor import Xen

__all__ = [
    "DOMID_SELF",
    "Channel",
    "EVTCHNOP_alloc_unbound",
    "EVTCHNOP_bind_interdomain",
    "EVTCHNOP_send",
    "EvtchnAllocUnbound",
    "EvtchnBindInterdomain",
    "EvtchnBindIpi",
    "EvtchnBindPirq",
    "EvtchnBindVcpu",
    "EvtchnBindVirq",
    "EvtchnClose",
    "EvtchnReset",
    "EvtchnSend",
    "EvtchnStatus",
    "EvtchnUnmask",
    "HYPERVISOR_event_channel_op",
    "do_event_channel_op",
    "guest_do_upcall",
    "set_pending",
]


# ------------------------------------------------------------------ the argument structures
@dataclass
class EvtchnAllocUnbound:
    """``struct evtchn_alloc_unbound``: IN ``dom``, ``remote_dom``; OUT ``port``."""

    dom: int = DOMID_SELF
    remote_dom: int = 0
    port: int = 0


@dataclass
class EvtchnBindInterdomain:
    """``struct evtchn_bind_interdomain``: IN ``remote_dom``, ``remote_port``; OUT
    ``local_port``."""

    remote_dom: int = 0
    remote_port: int = 0
    local_port: int = 0


@dataclass
class EvtchnBindVirq:
    """``struct evtchn_bind_virq``: IN ``virq``, ``vcpu``; OUT ``port``."""

    virq: int = 0
    vcpu: int = 0
    port: int = 0


@dataclass
class EvtchnBindPirq:
    """``struct evtchn_bind_pirq``: IN ``pirq``, ``flags``; OUT ``port``."""

    pirq: int = 0
    flags: int = 0
    port: int = 0


@dataclass
class EvtchnBindIpi:
    """``struct evtchn_bind_ipi``: IN ``vcpu``; OUT ``port``."""

    vcpu: int = 0
    port: int = 0


@dataclass
class EvtchnClose:
    """``struct evtchn_close``: IN ``port``."""

    port: int = 0


@dataclass
class EvtchnSend:
    """``struct evtchn_send``: IN ``port``."""

    port: int = 0


@dataclass
class EvtchnStatus:
    """``struct evtchn_status``: IN ``dom``, ``port``; OUT ``status``, ``vcpu`` and the union
    (here ``remote_dom``, ``remote_port``, ``pirq``, ``virq``)."""

    dom: int = DOMID_SELF
    port: int = 0
    status: int = EVTCHNSTAT_closed
    vcpu: int = 0
    remote_dom: int = 0
    remote_port: int = 0
    pirq: int = 0
    virq: int = 0

    @property
    def status_name(self) -> str:
        """``EVTCHNSTAT_*`` name of :attr:`status`."""
        return EVTCHNSTAT_NAMES.get(self.status, "?")


@dataclass
class EvtchnBindVcpu:
    """``struct evtchn_bind_vcpu``: IN ``port``, ``vcpu``."""

    port: int = 0
    vcpu: int = 0


@dataclass
class EvtchnUnmask:
    """``struct evtchn_unmask``: IN ``port``."""

    port: int = 0


@dataclass
class EvtchnReset:
    """``struct evtchn_reset``: IN ``dom`` (``DOMID_SELF``, or any domain for the privileged)."""

    dom: int = DOMID_SELF


_STRUCTS: dict[int, type[Any]] = {
    EVTCHNOP_alloc_unbound: EvtchnAllocUnbound,
    EVTCHNOP_bind_interdomain: EvtchnBindInterdomain,
    EVTCHNOP_bind_virq: EvtchnBindVirq,
    EVTCHNOP_bind_pirq: EvtchnBindPirq,
    EVTCHNOP_bind_ipi: EvtchnBindIpi,
    EVTCHNOP_close: EvtchnClose,
    EVTCHNOP_send: EvtchnSend,
    EVTCHNOP_status: EvtchnStatus,
    EVTCHNOP_bind_vcpu: EvtchnBindVcpu,
    EVTCHNOP_unmask: EvtchnUnmask,
    EVTCHNOP_reset: EvtchnReset,
}


class Channel:
    """One port's ``struct evtchn``: state and what it is bound to.

    >>> Channel(EVTCHNSTAT_unbound, remote_dom=0)
    Channel(unbound, remote d0)
    """

    __slots__ = ("notify_vcpu", "pirq", "remote_dom", "remote_port", "state", "virq")

    def __init__(self, state: int, *, remote_dom: int = 0, remote_port: int = 0,
                 virq: int = -1, pirq: int = -1, notify_vcpu: int = 0) -> None:
        self.state = state
        self.remote_dom = remote_dom
        self.remote_port = remote_port
        self.virq = virq
        self.pirq = pirq
        self.notify_vcpu = notify_vcpu

    def __repr__(self) -> str:
        name = EVTCHNSTAT_NAMES[self.state].removeprefix("EVTCHNSTAT_")
        if self.state == EVTCHNSTAT_unbound:
            return f"Channel({name}, remote d{self.remote_dom})"
        if self.state == EVTCHNSTAT_interdomain:
            return f"Channel({name}, d{self.remote_dom}:{self.remote_port})"
        if self.state == EVTCHNSTAT_virq:
            return f"Channel({name} {self.virq}, vcpu {self.notify_vcpu})"
        if self.state == EVTCHNSTAT_pirq:
            return f"Channel({name} {self.pirq})"
        return f"Channel({name}, vcpu {self.notify_vcpu})"


# ------------------------------------------------------------------ helpers
def _int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _get_port(dom: Domain) -> int:
    """``evtchn_get_port(d, 0)``: the lowest free port (port 0 is reserved), or ``-ENOSPC``."""
    port = 1
    chans = dom.evtchn
    while port in chans:
        port += 1
    return port if port <= dom.max_evtchn_port else -ENOSPC


def _valid_port(dom: Domain, port: object) -> bool:
    return _int(port) and 0 < port <= dom.max_evtchn_port and port in dom.evtchn  # type: ignore[operator]


def set_pending(xen: Xen, dom: Domain, port: int) -> None:
    """``evtchn_2l_set_pending``: PENDING ← 1; on an unmasked 0 → 1 edge mark the vCPU.

    Xen-internal (also used for virqs and pirqs); guests reach it through ``EVTCHNOP_send``.
    """
    si = dom.shared_info
    chn = dom.evtchn.get(port)
    vcpu_id = chn.notify_vcpu if chn is not None else 0
    if si.test_and_set(si.evtchn_pending, port):
        xen.trace.add("event", dom.domid, f"port {port} already pending: no new edge")
        return
    dom.stats.events_received += 1
    if si.test(si.evtchn_mask, port):
        xen.trace.add("event", dom.domid, f"port {port} pending but MASKED: edge lost until unmask")
        return
    _mark_pending_sel(xen, dom, vcpu_id, port)


def _mark_pending_sel(xen: Xen, dom: Domain, vcpu_id: int, port: int) -> None:
    v = dom.vcpus[vcpu_id]
    word = port >> 6
    if v.evtchn_pending_sel >> word & 1:
        xen.trace.add("event", dom.domid, f"port {port} pending (selector bit {word} already set)")
        return
    v.evtchn_pending_sel |= 1 << word
    # vcpu_mark_events_pending
    if v.evtchn_upcall_pending:
        xen.trace.add("event", dom.domid, f"port {port} pending (upcall already pending)")
        return
    v.evtchn_upcall_pending = 1
    v.blocked = False  # an event wakes a blocked vCPU (vcpu_kick / vcpu_unblock)
    xen.trace.add("event", dom.domid, f"port {port} pending → vcpu {vcpu_id} upcall scheduled",
                  cost=xen.costs.interrupt)
    xen.queue_upcall(dom.domid, vcpu_id)


def guest_do_upcall(xen: Xen, dom: Domain, vcpu_id: int) -> list[int]:
    """The guest's upcall handler (Linux ``xen_evtchn_do_upcall``): returns the ports handled.

    Clears ``evtchn_upcall_pending``, takes ``evtchn_pending_sel``, and for every pending and
    unmasked port clears PENDING and runs ``dom.handlers[port]`` (if any).
    """
    v = dom.vcpus[vcpu_id]
    si = dom.shared_info
    handled: list[int] = []
    while v.evtchn_upcall_pending:
        v.evtchn_upcall_pending = 0
        sel, v.evtchn_pending_sel = v.evtchn_pending_sel, 0
        for word in range(64):
            if not sel >> word & 1:
                continue
            bits = si.evtchn_pending[word] & ~si.evtchn_mask[word]
            for b in range(64):
                if bits >> b & 1:
                    port = word * 64 + b
                    si.test_and_clear(si.evtchn_pending, port)
                    handled.append(port)
    v.upcalls += 1
    dom.stats.upcalls += 1
    xen.trace.add("upcall", dom.domid, f"vcpu {vcpu_id} upcall: ports {handled}",
                  cost=xen.costs.interrupt)
    for port in handled:
        fn = dom.handlers.get(port)
        if fn is not None:
            fn(port)
    return handled


# ------------------------------------------------------------------ the operations
def _alloc_unbound(xen: Xen, cur: Domain, a: EvtchnAllocUnbound) -> int:
    if not (_int(a.dom) and _int(a.remote_dom)):
        return -EINVAL
    d = xen.lookup_any(cur, a.dom)
    if d is None:
        return -ESRCH
    if d is not cur and not cur.is_privileged:
        return -EPERM  # xsm_evtchn_unbound(XSM_TARGET)
    remote = cur.domid if a.remote_dom == DOMID_SELF else a.remote_dom
    if not 0 <= remote < DOMID_SELF:
        return -EINVAL
    port = _get_port(d)
    if port < 0:
        return port
    d.evtchn[port] = Channel(EVTCHNSTAT_unbound, remote_dom=remote)
    a.port = port
    return 0


def _bind_interdomain(xen: Xen, cur: Domain, b: EvtchnBindInterdomain) -> int:
    if not (_int(b.remote_dom) and _int(b.remote_port)):
        return -EINVAL
    rd = xen.lookup_any(cur, b.remote_dom)
    if rd is None:
        return -ESRCH
    lport = _get_port(cur)
    if lport < 0:
        return lport
    if not _valid_port(rd, b.remote_port):
        return -EINVAL
    rchn = rd.evtchn[b.remote_port]
    if rchn.state != EVTCHNSTAT_unbound or rchn.remote_dom != cur.domid:
        return -EINVAL
    if rd is cur and b.remote_port == lport:
        return -EINVAL
    cur.evtchn[lport] = Channel(EVTCHNSTAT_interdomain, remote_dom=rd.domid,
                                remote_port=b.remote_port)
    rchn.state = EVTCHNSTAT_interdomain
    rchn.remote_dom = cur.domid
    rchn.remote_port = lport
    b.local_port = lport
    set_pending(xen, cur, lport)  # "we may have lost notifications on the remote unbound port"
    return 0


def _bind_virq(xen: Xen, cur: Domain, b: EvtchnBindVirq) -> int:
    if not (_int(b.virq) and _int(b.vcpu)):
        return -EINVAL
    if not 0 <= b.virq < NR_VIRQS:
        return -EINVAL
    if b.virq not in VIRQS_PER_VCPU and b.vcpu != 0:
        return -EINVAL
    if not 0 <= b.vcpu < len(cur.vcpus):
        return -ENOENT
    if (b.virq, b.vcpu) in cur.virq_to_port:
        return -EEXIST
    port = _get_port(cur)
    if port < 0:
        return port
    cur.evtchn[port] = Channel(EVTCHNSTAT_virq, virq=b.virq, notify_vcpu=b.vcpu)
    cur.virq_to_port[(b.virq, b.vcpu)] = port
    b.port = port
    return 0


def _bind_pirq(xen: Xen, cur: Domain, b: EvtchnBindPirq) -> int:
    if not (_int(b.pirq) and _int(b.flags)):
        return -EINVAL
    if not 0 <= b.pirq < xen.nr_pirqs:
        return -EINVAL
    if b.pirq not in cur.irqs:
        return -EPERM  # irq_access_permitted() fails: not this domain's IRQ
    if b.pirq in cur.pirq_to_port:
        return -EEXIST
    port = _get_port(cur)
    if port < 0:
        return port
    cur.evtchn[port] = Channel(EVTCHNSTAT_pirq, pirq=b.pirq)
    cur.pirq_to_port[b.pirq] = port
    b.port = port
    return 0


def _bind_ipi(xen: Xen, cur: Domain, b: EvtchnBindIpi) -> int:
    if not _int(b.vcpu):
        return -EINVAL
    if not 0 <= b.vcpu < len(cur.vcpus):
        return -ENOENT
    port = _get_port(cur)
    if port < 0:
        return port
    cur.evtchn[port] = Channel(EVTCHNSTAT_ipi, notify_vcpu=b.vcpu)
    b.port = port
    return 0


def close_port(xen: Xen, d: Domain, port: int) -> None:
    """``evtchn_close`` on a valid port (Xen-internal; also used when a domain dies)."""
    chn = d.evtchn.pop(port)
    si = d.shared_info
    si.test_and_clear(si.evtchn_pending, port)
    si.test_and_clear(si.evtchn_mask, port)
    d.handlers.pop(port, None)
    if chn.state == EVTCHNSTAT_virq:
        d.virq_to_port.pop((chn.virq, chn.notify_vcpu), None)
    elif chn.state == EVTCHNSTAT_pirq:
        d.pirq_to_port.pop(chn.pirq, None)
    elif chn.state == EVTCHNSTAT_interdomain:
        rd = xen.domains.get(chn.remote_dom)
        if rd is not None and chn.remote_port in rd.evtchn:
            rchn = rd.evtchn[chn.remote_port]
            rchn.state = EVTCHNSTAT_unbound  # the peer goes back to unbound, accepting us
            rchn.remote_dom = d.domid
            rchn.remote_port = 0


def _close(xen: Xen, cur: Domain, c: EvtchnClose) -> int:
    if not _valid_port(cur, c.port):
        return -EINVAL
    close_port(xen, cur, c.port)
    return 0


def send(xen: Xen, cur: Domain, port: int) -> int:
    """``evtchn_send(ld, lport)`` — the body of ``EVTCHNOP_send``."""
    if not _valid_port(cur, port):
        return -EINVAL
    chn = cur.evtchn[port]
    cur.stats.events_sent += 1
    if chn.state == EVTCHNSTAT_interdomain:
        rd = xen.domains[chn.remote_dom]
        set_pending(xen, rd, chn.remote_port)
        return 0
    if chn.state == EVTCHNSTAT_ipi:
        set_pending(xen, cur, port)
        return 0
    if chn.state == EVTCHNSTAT_unbound:
        xen.trace.add("event", cur.domid, f"send on unbound port {port}: silently dropped")
        return 0
    cur.stats.events_sent -= 1
    return -EINVAL


def _status(xen: Xen, cur: Domain, s: EvtchnStatus) -> int:
    if not (_int(s.dom) and _int(s.port)):
        return -EINVAL
    d = xen.lookup_any(cur, s.dom)
    if d is None:
        return -ESRCH
    if d is not cur and not cur.is_privileged:
        return -EPERM
    if not _int(s.port) or not 0 < s.port <= d.max_evtchn_port:
        return -EINVAL
    chn = d.evtchn.get(s.port)
    if chn is None:
        s.status = EVTCHNSTAT_closed
        return 0
    s.status = chn.state
    s.vcpu = chn.notify_vcpu
    s.remote_dom = chn.remote_dom
    s.remote_port = chn.remote_port
    s.pirq = chn.pirq
    s.virq = chn.virq
    return 0


def _bind_vcpu(xen: Xen, cur: Domain, b: EvtchnBindVcpu) -> int:
    if not _valid_port(cur, b.port) or not _int(b.vcpu):
        return -EINVAL
    if not 0 <= b.vcpu < len(cur.vcpus):
        return -ENOENT
    chn = cur.evtchn[b.port]
    if chn.state == EVTCHNSTAT_virq and chn.virq in VIRQS_PER_VCPU:
        return -EINVAL
    if chn.state not in (EVTCHNSTAT_unbound, EVTCHNSTAT_interdomain, EVTCHNSTAT_pirq,
                         EVTCHNSTAT_virq):
        return -EINVAL
    chn.notify_vcpu = b.vcpu
    return 0


def unmask(xen: Xen, cur: Domain, port: int) -> int:
    """``evtchn_2l_unmask``: clear MASK; if the port is pending, mark the vCPU now."""
    if not _valid_port(cur, port):
        return -EINVAL
    si = cur.shared_info
    if si.test_and_clear(si.evtchn_mask, port) and si.test(si.evtchn_pending, port):
        xen.trace.add("event", cur.domid, f"unmask port {port}: pending → re-delivered")
        _mark_pending_sel(xen, cur, cur.evtchn[port].notify_vcpu, port)
    return 0


def do_event_channel_op(xen: Xen, dom: Domain, vcpu: int, args: tuple[Any, ...]) -> int:
    """``do_event_channel_op(cmd, arg)``: hypercall 32."""
    if len(args) != 2:
        return -EINVAL
    cmd: Any = args[0]
    arg: Any = args[1]
    struct = _STRUCTS.get(cmd) if _int(cmd) else None
    if struct is None:
        return -ENOSYS
    if not isinstance(arg, struct):
        return -EFAULT
    if cmd == EVTCHNOP_alloc_unbound:
        return _alloc_unbound(xen, dom, arg)
    if cmd == EVTCHNOP_bind_interdomain:
        return _bind_interdomain(xen, dom, arg)
    if cmd == EVTCHNOP_bind_virq:
        return _bind_virq(xen, dom, arg)
    if cmd == EVTCHNOP_bind_pirq:
        return _bind_pirq(xen, dom, arg)
    if cmd == EVTCHNOP_bind_ipi:
        return _bind_ipi(xen, dom, arg)
    if cmd == EVTCHNOP_close:
        return _close(xen, dom, arg)
    if cmd == EVTCHNOP_send:
        return send(xen, dom, arg.port)
    if cmd == EVTCHNOP_status:
        return _status(xen, dom, arg)
    if cmd == EVTCHNOP_bind_vcpu:
        return _bind_vcpu(xen, dom, arg)
    if cmd == EVTCHNOP_reset:
        return _reset(xen, dom, arg)
    return unmask(xen, dom, arg.port)


def _reset(xen: Xen, cur: Domain, r: EvtchnReset) -> int:
    """``evtchn_reset``: close every port of the domain (peers go back to unbound)."""
    if not _int(r.dom):
        return -EINVAL
    d = xen.lookup_any(cur, r.dom)
    if d is None:
        return -ESRCH
    if d is not cur and not cur.is_privileged:
        return -EPERM
    for port in list(d.evtchn):
        close_port(xen, d, port)
    return 0


def describe(cmd: object, arg: object) -> str:
    """``EVTCHNOP_send, port=3`` — for the trace."""
    name = EVTCHNOP_NAMES.get(cmd, str(cmd)) if _int(cmd) else repr(cmd)
    if hasattr(arg, "__dataclass_fields__"):
        fields = ", ".join(f"{k}={getattr(arg, k)}" for k in arg.__dataclass_fields__)
        return f"{name}, {fields}"
    return f"{name}, {arg!r}"
