"""Views and widgets of chapters 5 (Xen) and 6a (Xen's components), on a running :class:`Xen`.

Every view here reads a live :class:`virtcore.xen.Xen` host — its domains, event channels,
grant tables and trace — and returns data (a graph, a table, a list of steps) or draws it; a
widget wraps a small *console* class whose methods are plain functions of the host, so the
same code runs in a notebook, in a test and in a benchmark.

- graphs built from the running model (networkx, imported lazily):
  :func:`domain_stack_graph` and :func:`grant_graph` lay out the library's graph data
  (:mod:`virtcore.xen.graphs`, :mod:`virtcore.viz.xen`) for the chapters;
  :func:`event_channel_graph` is chapter 6a's own, one node per *port* with its PENDING and MASK
  bits (the library's event graph has one node per domain); ``draw_*`` for each, ``ax=None``;
- tables: :func:`xl_list` (the ``xl list`` text), :func:`port_bits_table`, :func:`trace_table`;
- widgets: :func:`toolstack_panel` (create / pause / unpause / destroy with ``xl list`` live),
  :func:`event_bits_panel` (mask, send, unmask; PENDING / MASK and the vCPU's bits),
  :func:`split_driver_stepper` (one block request front → ring → back → device and back).

matplotlib, ipywidgets and networkx are imported inside the functions that need them.

>>> from virtcore.xen import Xen
>>> xen = Xen(frames=256)
>>> g = domain_stack_graph(xen)
>>> g.nodes["xen"]["layer"], sorted(g.predecessors("xen"))
(1, ['d0'])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from virtcore.viz import ViewError
from virtcore.viz._lazy import TextView, esc, require
from virtcore.viz.kvm import TableView

if TYPE_CHECKING:
    from virtcore.xen.domain import Domain
    from virtcore.xen.hypervisor import Xen

__all__ = [
    "BatchRun",
    "ControlMatrix",
    "EventBitsConsole",
    "KernelPath",
    "PathComparison",
    "PortBits",
    "RingStep",
    "SplitRequest",
    "ToolstackConsole",
    "batch_requests",
    "block_pair",
    "control_matrix",
    "domain_stack_graph",
    "draw_domain_stack",
    "draw_event_channels",
    "draw_grants",
    "event_bits_panel",
    "event_channel_graph",
    "grant_graph",
    "hardware_access",
    "hardware_matrix",
    "platform_table",
    "port_bits",
    "port_bits_table",
    "pv_hvm_paths",
    "render_ring_step",
    "split_driver_stepper",
    "split_request",
    "stack_html",
    "toolstack_panel",
    "trace_table",
    "vcpu_paths",
    "vcpu_sweep",
    "vcpu_table",
    "xl_list",
]

_OK = "#1b5e20"
_ERROR = "#b00020"
_PRE = '<pre style="font-size:12px;line-height:1.25;white-space:pre-wrap;margin:2px 0">'
#: colours of domain roles in the drawings
ROLE_COLOURS = {"hardware": "#9e9e9e", "xen": "#c62828", "dom0": "#1565c0",
                "driver": "#6a1b9a", "domu": "#2e7d32", "device": "#ef6c00"}


def _pre(text: str, colour: str | None = None) -> str:
    style = f' style="color:{colour}"' if colour else ""
    return f"{_PRE}<span{style}>{esc(text)}</span></pre>"


def _new_axes(ax: Any, size: tuple[float, float]) -> Any:
    if ax is not None:
        return ax
    plt = require("matplotlib.pyplot")
    _, ax = plt.subplots(figsize=size)
    return ax


# ---------------------------------------------------------------------------
# domains


def role(d: Domain) -> str:
    """``"dom0"``, ``"driver"`` (an unprivileged domain that owns a device) or ``"domu"``.

    >>> from virtcore.xen import Xen
    >>> xen = Xen(frames=256); role(xen.dom0)
    'dom0'
    """
    if d.domid == 0 or d.is_privileged:
        return "dom0"
    return "driver" if d.devices else "domu"


def domain_label(d: Domain) -> str:
    """``d0 Domain-0`` — the id Xen uses and the name ``xl`` shows."""
    return f"d{d.domid} {d.name}"


def xl_list(xen: Xen) -> TextView:
    """The ``xl list`` table of the host: ``Name ID Mem VCPUs State Time(s)`` [XL-1].

    The real ``xl`` prints Mem in MiB; the model's domains are a few pages, so Mem is in KiB
    here. Time is the domain's simulated CPU time in seconds.

    >>> from virtcore.xen import Xen
    >>> print(xl_list(Xen(frames=256)).splitlines()[0])
    Name                                     ID  Mem(KiB) VCPUs      State   Time(s)
    """
    rows = [f"{'Name':<36}{'ID':>6}{'Mem(KiB)':>10}{'VCPUs':>6}{'State':>11}{'Time(s)':>10}"]
    for d in sorted(xen.domains.values(), key=lambda d: d.domid):
        mem = d.memory_kib
        rows.append(f"{d.name:<36}{d.domid:>6}{mem:>10}{len(d.vcpus):>6}"
                    f"{d.state_letters():>11}{d.cpu_time_ns / 1e9:>10.1f}")
    return TextView("\n".join(rows))


def domain_stack_graph(xen: Xen) -> Any:
    """The library's stack graph (:func:`virtcore.viz.xen.xen_graph`), laid out for the chapter.

    :mod:`virtcore.xen.graphs` builds it from the running host: ``xen → hardware`` ("runs
    on"), each domain ``→ xen`` ("hypercalls"), each device ``dev:<name> → hardware``, the
    owner of each device ``→ dev:<name>`` ("native driver") and each frontend's domain ``→``
    its backend's domain ("split driver", labelled ``vbd``/``vif``). This view adds what the
    drawings need: ``layer`` (0 hardware and devices, 1 Xen, 2 domains), ``role`` (``dom0``,
    ``driver``, ``domu``, …), a two-line ``label`` and, on domains, ``domid``.

    >>> from virtcore.xen import Xen
    >>> xen = Xen(frames=256); g = domain_stack_graph(xen)
    >>> sorted(n for n, a in g.nodes(data=True) if a["role"] == "device")
    ['dev:disk', 'dev:nic', 'dev:serial']
    >>> g.edges["d0", "dev:disk"]["kind"], g.nodes["d0"]["layer"]
    ('native driver', 2)
    """
    from virtcore.viz.xen import xen_graph

    g = xen_graph(xen, "stack")
    for n, a in g.nodes(data=True):
        kind = a.get("kind")
        if kind == "domain":
            d = xen.domains[int(n[1:])]
            a.update(layer=2, role=role(d), domid=d.domid,
                     label=f"{domain_label(d)}\n{d.type}, {len(d.vcpus)} vCPU")
        elif kind == "hypervisor":
            a.update(layer=1, role="xen", label="Xen hypervisor")
        elif kind == "device":
            a.update(layer=0, role="device", label=n.removeprefix("dev:"))
        else:
            a.update(layer=0, role="hardware", label="hardware (CPUs, memory)")
    return g


def draw_domain_stack(xen: Xen, ax: Any = None, *, title: str | None = None) -> Any:
    """Draw :func:`domain_stack_graph` in layers: devices and hardware below, Xen, domains above.

    Returns the matplotlib Axes.
    """
    nx = require("networkx")
    g = domain_stack_graph(xen)
    doms = [n for n, a in g.nodes(data=True) if a["layer"] == 2]
    devs = [n for n, a in g.nodes(data=True) if a["role"] == "device"]
    width = max(len(doms), len(devs) + 1, 2)
    pos: dict[str, tuple[float, float]] = {"xen": ((width - 1) / 2, 1.0)}
    for i, n in enumerate(doms):
        pos[n] = (i * (width - 1) / max(len(doms) - 1, 1), 2.0)
    pos["hardware"] = ((width - 1) / 2, 0.0)
    for i, n in enumerate(devs):
        pos[n] = (i * (width - 1) / max(len(devs) - 1, 1), -0.9)
    ax = _new_axes(ax, (max(6.0, 1.9 * width), 4.2))
    colours = [ROLE_COLOURS[g.nodes[n]["role"]] for n in g.nodes]
    stack_edges = [(a, b) for a, b, k in g.edges(data="kind")
                   if k in ("runs on", "hypercalls", "in")]
    own_edges = [(a, b) for a, b, k in g.edges(data="kind") if k == "native driver"]
    split_edges = [(a, b) for a, b, k in g.edges(data="kind") if k == "split driver"]
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colours, node_size=900, alpha=0.85)
    nx.draw_networkx_edges(g, pos, edgelist=stack_edges, ax=ax, arrows=False, width=1.5,
                           edge_color="#777777")
    nx.draw_networkx_edges(g, pos, edgelist=own_edges, ax=ax, style="dashed",
                           edge_color=ROLE_COLOURS["device"], arrows=True,
                           connectionstyle="arc3,rad=0.15")
    if split_edges:
        nx.draw_networkx_edges(g, pos, edgelist=split_edges, ax=ax, style="dotted",
                               edge_color=ROLE_COLOURS["domu"], arrows=True, width=1.5,
                               connectionstyle="arc3,rad=0.35", node_size=900)
    labels = {n: g.nodes[n]["label"] for n in g.nodes}
    for n, (x, y) in pos.items():
        ax.annotate(labels[n], (x, y), xytext=(0, -24 if y <= 0 else 22),
                    textcoords="offset points", ha="center", va="center", fontsize=8)
    ax.set_ylim(-1.5, 2.6)
    ax.set_xlim(-0.8, width - 0.2)
    ax.set_axis_off()
    ax.set_title(title or "the host: Xen on the hardware, the domains on Xen (dashed: owns the "
                 "device, runs its native driver;\ndotted: frontend → backend)", fontsize=9)
    return ax


def stack_html(xen: Xen) -> str:
    """:func:`domain_stack_graph` as an HTML diagram: domains on Xen on the hardware.

    What the toolstack widget shows after each click (HTML renders in a millisecond; the
    matplotlib drawing of :func:`draw_domain_stack` takes far longer). Each domain box lists the
    devices whose native driver it runs.

    >>> from virtcore.xen import Xen
    >>> "Domain-0" in stack_html(Xen(frames=256))
    True
    """
    g = domain_stack_graph(xen)
    doms = [n for n, a in g.nodes(data=True) if a["layer"] == 2]
    cell = ("<td style='background:{bg};color:white;padding:4px 8px;text-align:center;"
            "border:2px solid white;font-size:12px' colspan='{span}'>{text}</td>")
    row_doms = []
    for n in doms:
        a = g.nodes[n]
        d = xen.domains[a["domid"]]
        devs = sorted(g.nodes[b]["label"] for b in g.successors(n)
                      if g.edges[n, b].get("kind") == "native driver")
        fronts = sorted(f"{g.edges[n, b]['label']} → {b}" for b in g.successors(n)
                        if g.edges[n, b].get("kind") == "split driver")
        extra = f"<br><i>native driver: {esc(', '.join(devs))}</i>" if devs else ""
        extra += f"<br><i>frontends: {esc(', '.join(fronts))}</i>" if fronts else ""
        row_doms.append(cell.format(bg=ROLE_COLOURS[a["role"]], span=1,
                                    text=f"<b>{esc(domain_label(d))}</b><br>{esc(d.type)}, "
                                         f"{len(d.vcpus)} vCPU, {esc(d.state_letters())}"
                                         f"{extra}"))
    span = max(len(doms), 1)
    devices = ", ".join(a["label"] for _n, a in g.nodes(data=True) if a["role"] == "device")
    return ("<table style='border-collapse:collapse'>"
            f"<tr>{''.join(row_doms)}</tr>"
            f"<tr>{cell.format(bg=ROLE_COLOURS['xen'], span=span, text='<b>Xen hypervisor</b>')}"
            "</tr><tr>" + cell.format(bg=ROLE_COLOURS["hardware"], span=span,
                                      text=f"hardware: CPUs, memory, {esc(devices)}")
            + "</tr></table>")


# ---------------------------------------------------------------------------
# event channels


def event_channel_graph(xen: Xen) -> Any:
    """Every bound port of the host, with the channels between them (S6.3).

    Nodes are ``(domid, port)`` with ``state`` (the ``EVTCHNSTAT_*`` name without prefix),
    ``pending`` and ``masked`` (the port's bits in that domain's shared-info page), plus one
    node ``"xen"`` as the source of virqs and pirqs. Edges: ``(d1, p1) — (d2, p2)`` for an
    inter-domain pair (both directions, ``kind="interdomain"``), ``xen → (d, p)`` for a virq or
    pirq (``kind`` ``"virq"``/``"pirq"``, ``what`` its number), and ``(d, p) → (remote, None)``
    never: an unbound port simply has no edge yet.

    >>> from virtcore.xen import Xen
    >>> g = event_channel_graph(Xen(frames=256)); list(g.nodes)
    ['xen']
    """
    from virtcore.xen.constants import (
        EVTCHNSTAT_NAMES,
        EVTCHNSTAT_interdomain,
        EVTCHNSTAT_pirq,
        EVTCHNSTAT_virq,
    )

    nx = require("networkx")
    g = nx.DiGraph()
    g.add_node("xen", state="xen")
    for d in sorted(xen.domains.values(), key=lambda d: d.domid):
        si = d.shared_info
        for port, chn in sorted(d.evtchn.items()):
            node = (d.domid, port)
            g.add_node(node, state=EVTCHNSTAT_NAMES[chn.state].removeprefix("EVTCHNSTAT_"),
                       pending=si.test(si.evtchn_pending, port),
                       masked=si.test(si.evtchn_mask, port), vcpu=chn.notify_vcpu)
            if chn.state == EVTCHNSTAT_interdomain:
                g.add_edge(node, (chn.remote_dom, chn.remote_port), kind="interdomain")
            elif chn.state == EVTCHNSTAT_virq:
                g.add_edge("xen", node, kind="virq", what=chn.virq)
            elif chn.state == EVTCHNSTAT_pirq:
                g.add_edge("xen", node, kind="pirq", what=chn.pirq)
    return g


def draw_event_channels(xen: Xen, ax: Any = None, *, title: str | None = None) -> Any:
    """Draw :func:`event_channel_graph`: one column of ports per domain, Xen on the left.

    A port's ring is red when PENDING, its fill grey when MASKED. Returns the Axes.
    """
    nx = require("networkx")
    g = event_channel_graph(xen)
    domids = sorted({n[0] for n in g.nodes if n != "xen"})
    pos: dict[Any, tuple[float, float]] = {"xen": (0.0, 0.0)}
    for col, domid in enumerate(domids, start=1):
        ports = sorted(n for n in g.nodes if n != "xen" and n[0] == domid)
        for row, n in enumerate(ports):
            pos[n] = (float(col), (len(ports) - 1) / 2 - row)
    ax = _new_axes(ax, (max(5.0, 1.8 * (len(domids) + 1)), 3.2))
    nodes = [n for n in g.nodes if n != "xen"]
    fill = ["#bdbdbd" if g.nodes[n]["masked"] else "#90caf9" for n in nodes]
    ring = [_ERROR if g.nodes[n]["pending"] else "#37474f" for n in nodes]
    nx.draw_networkx_nodes(g, pos, nodelist=["xen"], node_color=ROLE_COLOURS["xen"],
                           node_size=900, ax=ax)
    if nodes:
        nx.draw_networkx_nodes(g, pos, nodelist=nodes, node_color=fill, edgecolors=ring,
                               linewidths=2.0, node_size=700, ax=ax)
    inter = [(a, b) for a, b, k in g.edges(data="kind") if k == "interdomain" and a < b]
    irq = [(a, b) for a, b, k in g.edges(data="kind") if k in ("virq", "pirq")]
    nx.draw_networkx_edges(g, pos, edgelist=inter, ax=ax, arrows=False, width=2,
                           edge_color="#1565c0")
    nx.draw_networkx_edges(g, pos, edgelist=irq, ax=ax, style="dashed", edge_color="#c62828",
                           arrows=True, connectionstyle="arc3,rad=0.1")
    labels = {"xen": "Xen"}
    labels.update({n: f"d{n[0]}:{n[1]}\n{g.nodes[n]['state']}" for n in nodes})
    nx.draw_networkx_labels(g, pos, labels=labels, font_size=7, ax=ax)
    edge_labels = {(a, b): f"{k} {w}" for a, b, k in g.edges(data="kind")
                   if k in ("virq", "pirq") for w in [g.edges[a, b]["what"]]}
    nx.draw_networkx_edge_labels(g, pos, edge_labels=edge_labels, font_size=7, ax=ax)
    ax.set_axis_off()
    ax.set_title(title or "event channels (blue: inter-domain pair, red dashed: virq/pirq from "
                 "Xen; red ring = PENDING, grey = MASKED)", fontsize=9)
    return ax


@dataclass(frozen=True)
class PortBits:
    """The bits that decide whether an event on one port reaches the guest (S6.3).

    ``pending``/``masked`` are the port's bits in the shared-info page; ``upcall_pending``,
    ``upcall_mask`` and ``pending_sel`` belong to the vCPU the port notifies; ``upcalls`` is
    how many upcalls that vCPU has taken so far.
    """

    domid: int
    port: int
    vcpu: int
    pending: int
    masked: int
    upcall_pending: int
    upcall_mask: int
    pending_sel: int
    upcalls: int

    def __repr__(self) -> str:
        return (f"d{self.domid} port {self.port}: PENDING={self.pending} MASK={self.masked} | "
                f"vcpu{self.vcpu}: upcall_pending={self.upcall_pending} "
                f"upcall_mask={self.upcall_mask} pending_sel={self.pending_sel:#x} "
                f"upcalls={self.upcalls}")


def port_bits(xen: Xen, domid: int, port: int) -> PortBits:
    """The PENDING and MASK bits of a port and the notified vCPU's event fields.

    >>> from virtcore.xen import Xen
    >>> xen = Xen(frames=256); port_bits(xen, 0, 1).pending
    0
    """
    d = xen.domain(domid)
    si = d.shared_info
    chn = d.evtchn.get(port)
    v = d.vcpus[chn.notify_vcpu if chn is not None else 0]
    return PortBits(d.domid, port, v.vcpu_id, int(si.test(si.evtchn_pending, port)),
                    int(si.test(si.evtchn_mask, port)), v.evtchn_upcall_pending,
                    v.evtchn_upcall_mask, v.evtchn_pending_sel, v.upcalls)


def port_bits_table(rows: Sequence[tuple[str, PortBits]]) -> TableView:
    """A table of ``(operation, bits after it)`` rows, as the event widget shows them."""
    return TableView.build(
        ("after", "PENDING", "MASK", "upcall_pending", "pending_sel", "upcalls"),
        [(op, str(b.pending), str(b.masked), str(b.upcall_pending), f"{b.pending_sel:#x}",
          str(b.upcalls)) for op, b in rows], right=(1, 2, 3, 5))


class EventBitsConsole:
    """An inter-domain channel from a "front" DomU to a "back" domain, driven op by op (S6.3).

    The receiving end is ``back``'s port; the buttons of :func:`event_bits_panel` call
    :meth:`do` with ``"mask"`` (the guest sets the port's MASK bit in its shared-info page),
    ``"send"`` (the sender's ``EVTCHNOP_send``), ``"unmask"`` (the receiver's
    ``EVTCHNOP_unmask``) and ``"block upcalls"`` / ``"allow upcalls"`` (the receiving vCPU's
    ``evtchn_upcall_mask``). Each returns the bits after it; :attr:`history` keeps them all.

    >>> c = EventBitsConsole()
    >>> c.do("mask").masked, c.do("send").pending, c.bits().upcalls
    (1, 1, 0)
    >>> c.do("send").upcalls     # already pending: no new edge
    0
    >>> b = c.do("unmask"); b.upcalls, b.pending   # delivered now; the handler cleared it
    (1, 0)
    """

    OPS = ("mask", "send", "unmask", "block upcalls", "allow upcalls")

    def __init__(self, xen: Xen | None = None) -> None:
        from virtcore.xen import Xen
        from virtcore.xen.constants import (
            DOMID_SELF,
            EVTCHNOP_alloc_unbound,
            EVTCHNOP_bind_interdomain,
            HYPERVISOR_event_channel_op,
        )
        from virtcore.xen.evtchn import EvtchnAllocUnbound, EvtchnBindInterdomain

        self.xen = xen if xen is not None else Xen(frames=256)
        self.front = self.xen.create_guest("front", memory_pages=4)
        self.back = self.xen.dom0
        a = EvtchnAllocUnbound(dom=DOMID_SELF, remote_dom=self.front.domid)
        self._check(self.xen.hypercall(self.back, HYPERVISOR_event_channel_op,
                                       EVTCHNOP_alloc_unbound, a))
        b = EvtchnBindInterdomain(remote_dom=self.back.domid, remote_port=a.port)
        self._check(self.xen.hypercall(self.front, HYPERVISOR_event_channel_op,
                                       EVTCHNOP_bind_interdomain, b))
        self.back_port, self.front_port = a.port, b.local_port
        self.history: list[tuple[str, PortBits]] = [("bind", self.bits())]
        self.message = (f"d{self.front.domid}:{self.front_port} ↔ d0:{self.back_port} bound; "
                        "events go to d0's port")

    @staticmethod
    def _check(rc: int) -> None:
        if rc != 0:
            raise ViewError(f"setting up the channel failed: {rc}")

    def bits(self) -> PortBits:
        """The receiving port's bits now."""
        return port_bits(self.xen, self.back.domid, self.back_port)

    def do(self, op: str) -> PortBits:
        """Perform ``op`` (one of :attr:`OPS`); returns the bits after it."""
        from virtcore.xen.constants import (
            EVTCHNOP_send,
            EVTCHNOP_unmask,
            HYPERVISOR_event_channel_op,
        )
        from virtcore.xen.evtchn import EvtchnSend, EvtchnUnmask

        xen, si, port = self.xen, self.back.shared_info, self.back_port
        before = self.bits()
        if op == "mask":
            si.test_and_set(si.evtchn_mask, port)
            self.message = f"d0 sets MASK of port {port} (a write to its shared-info page)"
        elif op == "send":
            rc = xen.hypercall(self.front, HYPERVISOR_event_channel_op, EVTCHNOP_send,
                               EvtchnSend(port=self.front_port))
            after = self.bits()
            if after.upcalls > before.upcalls:
                what = "0 → 1 edge, unmasked: upcall delivered (the handler cleared PENDING)"
            elif before.pending:
                what = "PENDING was already 1: nothing new (events are bits, not counts)"
            elif after.masked:
                what = "PENDING 0 → 1 while MASKED: the edge is lost, no upcall"
            else:
                what = "upcall held back by the vCPU's upcall mask"
            self.message = f"d{self.front.domid} EVTCHNOP_send = {rc}: {what}"
        elif op == "unmask":
            rc = xen.hypercall(self.back, HYPERVISOR_event_channel_op, EVTCHNOP_unmask,
                               EvtchnUnmask(port=port))
            after = self.bits()
            what = ("PENDING was set: Xen re-delivers it now" if after.upcalls > before.upcalls
                    else "nothing pending")
            self.message = f"d0 EVTCHNOP_unmask = {rc}: {what}"
        elif op in ("block upcalls", "allow upcalls"):
            masked = op == "block upcalls"
            xen.set_upcall_mask(self.back.domid, self.bits().vcpu, masked)
            self.message = f"d0 vcpu sets evtchn_upcall_mask = {int(masked)}"
        else:
            raise ViewError(f"unknown operation {op!r}; one of {', '.join(self.OPS)}")
        bits = self.bits()
        self.history.append((op, bits))
        return bits

    def table(self) -> TableView:
        """The history as a table."""
        return port_bits_table(self.history)


def event_bits_panel(*, xen: Xen | None = None) -> Any:
    """Buttons for :class:`EventBitsConsole`, the message, the bits table and the graph.

    Returns an ``ipywidgets.VBox`` with ``console``, ``buttons`` (op → Button), ``message``,
    ``table`` (HTML) and ``refresh()``.

    >>> p = event_bits_panel()
    >>> p.buttons["mask"].click(); p.buttons["send"].click()
    >>> p.console.bits().pending, "edge is lost" in p.message.value
    (1, True)
    """
    widgets = require("ipywidgets")
    console = EventBitsConsole(xen)
    buttons = {op: widgets.Button(description=op, layout=widgets.Layout(width="auto"))
               for op in console.OPS}
    message = widgets.HTML()
    table = widgets.HTML()

    def refresh() -> None:
        message.value = _pre(console.message, _OK)
        table.value = _pre(console.table())

    def click(op: str) -> Callable[[Any], None]:
        def on_click(_b: Any) -> None:
            console.do(op)
            refresh()
        return on_click

    for op, b in buttons.items():
        b.on_click(click(op))
    refresh()
    box = widgets.VBox([widgets.HBox(list(buttons.values())), message, table])
    box.console, box.buttons, box.message, box.table = console, buttons, message, table
    box.refresh = refresh
    return box


# ---------------------------------------------------------------------------
# grant tables


def grant_graph(xen: Xen) -> Any:
    """Who granted which frame to whom, and whether it is mapped (S4.1): a ``MultiDiGraph``.

    The edges are the library's (:func:`virtcore.xen.graphs.grant_graph`, built from every
    domain's grant table): one *granter → grantee* per grant entry in use, keyed by its ``ref``,
    with ``frame``, ``readonly`` and ``mapped`` (``GTF_reading`` is set: Xen installed a
    mapping, after checking the entry). Kept as a multigraph, so two grants between the same
    domains stay two edges; nodes carry the chapter's ``role`` and ``label``.

    >>> from virtcore.xen import Xen
    >>> xen = Xen(frames=256); a = xen.create_guest("a", memory_pages=4)
    >>> ref = a.grant_table.grant_access(0, xen.pfn_to_mfn(a.domid, 0))
    >>> [(u, v, k["mapped"]) for u, v, k in grant_graph(xen).edges(data=True)]
    [('d1', 'd0', False)]
    """
    from virtcore.xen.graphs import grant_graph as grant_data

    nx = require("networkx")
    g = nx.MultiDiGraph()
    for d in sorted(xen.domains.values(), key=lambda d: d.domid):
        g.add_node(f"d{d.domid}", role=role(d), label=domain_label(d))
    for u, v, attrs in grant_data(xen).edges:
        g.add_edge(u, v, key=attrs["ref"], **attrs)
    return g


def draw_grants(xen: Xen, ax: Any = None, *, title: str | None = None) -> Any:
    """Draw :func:`grant_graph` on a circle: solid edges mapped, dotted granted only."""
    nx = require("networkx")
    g = grant_graph(xen)
    ax = _new_axes(ax, (5.5, 3.6))
    pos = nx.circular_layout(sorted(g.nodes)) if len(g) > 1 else dict.fromkeys(g, (0, 0))
    colours = [ROLE_COLOURS[g.nodes[n]["role"]] for n in g.nodes]
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colours, node_size=900, alpha=0.85)
    nx.draw_networkx_labels(g, pos, labels={n: g.nodes[n]["label"].replace(" ", "\n", 1)
                                            for n in g.nodes}, font_size=7, ax=ax)
    edges = list(g.edges(keys=True, data=True))
    for style, want in (("solid", True), ("dotted", False)):
        sel = [(u, v, k) for u, v, k, a in edges if a["mapped"] is want]
        if sel:
            nx.draw_networkx_edges(g, pos, edgelist=sel, ax=ax, style=style, arrows=True,
                                   edge_color="#1565c0", connectionstyle="arc3,rad=0.15",
                                   node_size=900)
    counts: dict[tuple[str, str], list[str]] = {}
    for u, v, k, a in edges:
        counts.setdefault((u, v), []).append(f"ref {k}" + (" ro" if a["readonly"] else ""))
    nx.draw_networkx_edge_labels(g, pos, edge_labels={e: ", ".join(r[:3]) + (
        " …" if len(r) > 3 else "") for e, r in counts.items()}, font_size=7, ax=ax)
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.4, 1.4)
    ax.set_axis_off()
    ax.set_title(title or "grants: granter → grantee (solid: mapped through Xen, dotted: "
                 "granted, not mapped)", fontsize=9)
    return ax


# ---------------------------------------------------------------------------
# the trace


def trace_table(events: Sequence[Any], *, kinds: Sequence[str] | None = None,
                width: int = 96) -> TableView:
    """Xen trace events as a table: seq, who, kind, what (cut at ``width``), cost (ns).

    >>> from virtcore.xen import Xen
    >>> t = trace_table(Xen(frames=256).boot_trace)
    >>> t.head, t.rows[0][1]
    (('#', 'who', 'kind', 'what', 'ns'), 'xen')
    """
    rows = [(str(e.seq), "xen" if e.domid is None else f"d{e.domid}", e.kind,
             e.text if len(e.text) <= width else e.text[: width - 1] + "…",
             f"{e.cost:g}" if e.cost else "")
            for e in events if kinds is None or e.kind in kinds]
    total = sum(e.cost for e in events if kinds is None or e.kind in kinds)
    return TableView.build(("#", "who", "kind", "what", "ns"), rows,
                           footer=f"{len(rows)} events, {total:g} ns", right=(4,))


# ---------------------------------------------------------------------------
# the toolstack


class ToolstackConsole:
    """Dom0's ``xl`` driven by buttons: create, pause, unpause, destroy (S3.5, S5.3, S6.1)."""

    OPS = ("create", "pause", "unpause", "destroy")

    def __init__(self, xen: Xen | None = None) -> None:
        from virtcore.xen import Xen

        self.xen = xen if xen is not None else Xen(frames=512)
        self.ok = True
        self.message = "Dom0's xl is ready"
        self.log: list[str] = []
        self._n = 0

    def create(self, name: str | None = None, *, type: str = "pv", vcpus: int = 1,
               memory_pages: int = 16) -> str:
        """``xl create`` with a config of these keys; returns the new domain's name."""
        self._n += 1
        name = name or f"guest{self._n}"
        cfg = {"name": name, "type": type, "vcpus": vcpus, "memory_pages": memory_pages}
        return self._run(f"xl create {cfg}", lambda: self.xen.xl.create(cfg), name)

    def _run(self, cmd: str, fn: Callable[[], object], result: str = "") -> str:
        from virtcore.errors import VirtcoreError

        try:
            fn()
        except VirtcoreError as err:
            self.ok, self.message = False, f"{cmd}: {type(err).__name__}: {err}"
        else:
            self.ok, self.message = True, f"{cmd}: ok"
        self.log.append(self.message)
        return result

    def do(self, op: str, target: str = "") -> str:
        """Run ``op`` on the domain named ``target`` (``create`` ignores it)."""
        if op == "create":
            return self.create()
        if op not in self.OPS:
            raise ViewError(f"unknown operation {op!r}; one of {', '.join(self.OPS)}")
        fn = getattr(self.xen.xl, op)
        return self._run(f"xl {op} {target}", lambda: fn(target), target)

    def names(self) -> list[str]:
        """The domains' names, Domain-0 first."""
        return [d.name for d in sorted(self.xen.domains.values(), key=lambda d: d.domid)]

    def table(self) -> TextView:
        """``xl list`` now."""
        return xl_list(self.xen)


def toolstack_panel(*, xen: Xen | None = None) -> Any:
    """Buttons for ``xl create/pause/unpause/destroy``, a domain chooser, ``xl list`` live.

    Returns an ``ipywidgets.VBox`` with ``console``, ``buttons``, ``target`` (Dropdown),
    ``message``, ``listing`` (HTML), ``graph`` (HTML: :func:`stack_html`) and ``refresh()``.
    """
    widgets = require("ipywidgets")
    console = ToolstackConsole(xen)
    buttons = {op: widgets.Button(description=f"xl {op}", layout=widgets.Layout(width="auto"))
               for op in console.OPS}
    target = widgets.Dropdown(description="domain", options=console.names(),
                              layout=widgets.Layout(width="240px"))
    message = widgets.HTML()
    listing = widgets.HTML()
    graph = widgets.HTML()

    def refresh() -> None:
        names = console.names()
        current = target.value if target.value in names else names[-1]
        target.options = names
        target.value = current
        message.value = _pre(console.message, _OK if console.ok else _ERROR)
        listing.value = "<b>xl list</b>" + _pre(console.table())
        graph.value = stack_html(console.xen)

    def click(op: str) -> Callable[[Any], None]:
        def on_click(_b: Any) -> None:
            name = console.do(op, target.value or "")
            refresh()
            if op == "create" and name in console.names():
                target.value = name
        return on_click

    for op, b in buttons.items():
        b.on_click(click(op))
    refresh()
    box = widgets.VBox([widgets.HBox([*buttons.values(), target]), message, listing, graph])
    box.console, box.buttons, box.target = console, buttons, target
    box.message, box.listing, box.graph, box.refresh = message, listing, graph, refresh
    return box


# ---------------------------------------------------------------------------
# chapter 6a: the control interface (S6.1)


@dataclass(frozen=True)
class ControlMatrix:
    """The results of the same control operations made by several callers (S6.1).

    ``results[caller]`` lists :func:`~virtcore.xen.constants.errno_name` of each operation in
    :attr:`ops` order; ``unchanged[caller]`` says whether the host's state (``xen.snapshot()``)
    was the same after that caller's calls as before.
    """

    target: str
    ops: tuple[str, ...]
    results: dict[str, tuple[str, ...]]
    unchanged: dict[str, bool]

    def table(self) -> TableView:
        """One row per operation, one column per caller."""
        callers = list(self.results)
        rows = [(op, *(self.results[c][i] for c in callers)) for i, op in enumerate(self.ops)]
        rows.append(("state unchanged?", *("yes" if self.unchanged[c] else "no"
                                           for c in callers)))
        return TableView.build(("domctl on " + self.target, *callers), rows)

    def __repr__(self) -> str:
        return str(self.table())


#: The control operations the notes list (create … device access), as domctls on a target.
CONTROL_OPS = ("createdomain", "pausedomain", "unpausedomain", "scheduler_op (weight 512)",
               "max_mem (32 MiB)", "ioport_permission (COM1)", "destroydomain")


def _control_op(op: str, target: int) -> Any:
    from virtcore.xen import constants as k
    from virtcore.xen.control import XenDomctl

    return {
        "createdomain": XenDomctl(k.XEN_DOMCTL_createdomain, 0, {"max_vcpus": 1}),
        "pausedomain": XenDomctl(k.XEN_DOMCTL_pausedomain, target),
        "unpausedomain": XenDomctl(k.XEN_DOMCTL_unpausedomain, target),
        "scheduler_op (weight 512)": XenDomctl(k.XEN_DOMCTL_scheduler_op, target, {
            "cmd": k.XEN_DOMCTL_SCHEDOP_putinfo, "weight": 512}),
        "max_mem (32 MiB)": XenDomctl(k.XEN_DOMCTL_max_mem, target, {"max_memkb": 32768}),
        "ioport_permission (COM1)": XenDomctl(k.XEN_DOMCTL_ioport_permission, target, {
            "first_port": 0x3F8, "nr_ports": 8, "allow_access": 1}),
        "destroydomain": XenDomctl(k.XEN_DOMCTL_destroydomain, target),
    }[op]


def control_matrix(xen: Xen, caller_names: Sequence[str] = ("Domain-0", "web"), *,
                   target: str = "db", ops: Sequence[str] = CONTROL_OPS) -> ControlMatrix:
    """Each caller makes each control operation on ``target`` through ``domctl`` (S6.1).

    Unprivileged callers go first (so they act on the same live target); Dom0's
    ``destroydomain`` is last. The domain Dom0's ``createdomain`` makes is left paused.

    >>> from virtcore.xen import Xen
    >>> xen = Xen(frames=512); _ = xen.create_guest("web"); _ = xen.create_guest("db")
    >>> m = control_matrix(xen)
    >>> set(m.results["web"]), m.unchanged["web"], set(m.results["Domain-0"])
    ({'-EPERM'}, True, {'0'})
    """
    from virtcore.xen.constants import HYPERVISOR_domctl, errno_name

    order = sorted(caller_names, key=lambda n: xen.domain(n).is_privileged)
    tid = xen.domain(target).domid
    results: dict[str, tuple[str, ...]] = {}
    unchanged: dict[str, bool] = {}
    for name in order:
        before = xen.snapshot()
        caller = xen.domain(name)
        rcs = [xen.hypercall(caller, HYPERVISOR_domctl, _control_op(op, tid)) for op in ops]
        unchanged[name] = xen.snapshot() == before
        results[name] = tuple(errno_name(rc) for rc in rcs)
    return ControlMatrix(target, tuple(ops), {n: results[n] for n in caller_names},
                         {n: unchanged[n] for n in caller_names})


# ---------------------------------------------------------------------------
# chapter 6a: the safe hardware interface (S6.2)


def platform_table(xen: Xen) -> TableView:
    """The host's physical devices: BDF, I/O ports, IRQ, and the domain that owns each.

    >>> from virtcore.xen import Xen
    >>> platform_table(Xen(frames=256)).rows[0][:2]
    ('disk', '00:01.1')
    """
    rows = []
    for dev in sorted(xen.platform.devices.values(), key=lambda d: d.name):
        ports = (f"{dev.ioports.start:#x}–{dev.ioports.stop - 1:#x}" if len(dev.ioports)
                 else "— (MMIO)")
        owner = xen.domains.get(dev.owner)
        rows.append((dev.name, dev.bdf, ports, str(dev.irq),
                     domain_label(owner) if owner is not None else f"d{dev.owner}"))
    return TableView.build(("device", "BDF", "I/O ports", "IRQ", "owner (runs its driver)"),
                           rows)


#: What :func:`hardware_access` tries, in order.
HW_ACCESSES = ("in (port)", "PCI config read", "DMA into own frame", "bind pirq")


def hardware_access(xen: Xen, domain: str, device: str, access: str) -> str:
    """``domain`` tries one of :data:`HW_ACCESSES` on ``device``; returns what happened.

    ``"ok"`` or the refusal (``#GP``, ``all ones``, ``IOMMU: -EPERM``, ``-EPERM``). Leaves no
    trace in the host beyond Xen's trace (a pirq bound for the test is closed again).

    >>> from virtcore.xen import Xen
    >>> xen = Xen(frames=256); u = xen.create_guest("u")
    >>> [hardware_access(xen, "u", "disk", a) for a in HW_ACCESSES]
    ['#GP', 'all ones (no device)', 'IOMMU fault: -EPERM', '-EPERM']
    >>> [hardware_access(xen, "Domain-0", "disk", a) for a in HW_ACCESSES]
    ['ok', 'ok', 'ok', 'ok']
    """
    from virtcore.xen.constants import (
        EVTCHNOP_bind_pirq,
        EVTCHNOP_close,
        HYPERVISOR_event_channel_op,
        errno_name,
    )
    from virtcore.xen.evtchn import EvtchnBindPirq, EvtchnClose
    from virtcore.xen.hwiface import dma, pci_conf_read, port_io

    d = xen.domain(domain)
    dev = xen.platform[device]
    if access == "in (port)":
        if not len(dev.ioports):
            return "n/a (MMIO only)"
        return "ok" if port_io(xen, d.domid, dev.ioports.start).ok else "#GP"
    if access == "PCI config read":
        v = pci_conf_read(xen, d.domid, dev.bdf, 0)
        return "all ones (no device)" if v == 0xFFFFFFFF else "ok"
    if access == "DMA into own frame":
        rc = dma(xen, device, xen.pfn_to_mfn(d.domid, 0), 0, b"\0" * 8)
        return "ok" if rc == 0 else f"IOMMU fault: {errno_name(int(rc))}"  # type: ignore[arg-type]
    if access == "bind pirq":
        b = EvtchnBindPirq(pirq=dev.irq)
        rc = xen.hypercall(d, HYPERVISOR_event_channel_op, EVTCHNOP_bind_pirq, b)
        if rc == 0:
            xen.hypercall(d, HYPERVISOR_event_channel_op, EVTCHNOP_close, EvtchnClose(port=b.port))
            return "ok"
        return errno_name(rc)
    raise ViewError(f"unknown access {access!r}; one of {', '.join(HW_ACCESSES)}")


def hardware_matrix(xen: Xen, domains: Sequence[str], device: str) -> TableView:
    """:func:`hardware_access` for each domain and each access (S6.2)."""
    rows = [(a, *(hardware_access(xen, n, device, a) for n in domains)) for a in HW_ACCESSES]
    return TableView.build((f"{device} ({xen.platform[device].bdf})", *domains), rows)


# ---------------------------------------------------------------------------
# chapter 6a: vCPUs (S6.4)


def vcpu_table(xen: Xen) -> TableView:
    """Every domain's vCPU structures: id, event fields, whether blocked.

    >>> from virtcore.xen import Xen
    >>> vcpu_table(Xen(frames=256)).rows
    (('d0 Domain-0', 'pv', '0', '0', '0', '0x0', 'no', '0'),)
    """
    rows = [(domain_label(d), d.type, str(v.vcpu_id), str(v.evtchn_upcall_pending),
             str(v.evtchn_upcall_mask), f"{v.evtchn_pending_sel:#x}",
             "yes" if v.blocked else "no", str(v.upcalls))
            for d in sorted(xen.domains.values(), key=lambda d: d.domid) for v in d.vcpus]
    return TableView.build(("domain", "type", "vcpu", "upcall_pending", "upcall_mask",
                            "pending_sel", "blocked", "upcalls"), rows)


# ---------------------------------------------------------------------------
# chapters 5 and 6a: a guest kernel's instructions, PV and HVM (S3.6, S5.5, S6.4)

#: Trace kinds that are an entry into Xen caused by the guest's instructions.
_ENTRY_KINDS = ("trap", "exit", "hypercall")


@dataclass(frozen=True)
class KernelPath:
    """How one guest kernel's program ran on a vCPU: directly, or through Xen.

    ``direct`` instructions ran on the physical CPU (one ``instruction`` price each);
    ``via_xen`` were privileged instructions that entered Xen (a fault for PV, a VM exit for
    HVM), of which ``refused`` Xen did not carry out; ``events`` are Xen's trace entries of
    the run (their costs are Xen's prices).
    """

    type: str
    steps: int
    direct: int
    via_xen: int
    refused: int
    events: tuple[Any, ...]
    instruction_ns: float

    @property
    def xen_ns(self) -> float:
        """Simulated ns spent on the way into Xen and back (the trace's costs)."""
        return float(sum(e.cost for e in self.events))

    @property
    def total_ns(self) -> float:
        """Direct instructions plus Xen's entries."""
        return self.direct * self.instruction_ns + self.xen_ns

    def table(self) -> TableView:
        """Each entry into Xen of the run, then the direct instructions as one row."""
        rows = [(str(i), "Xen" if e.kind != "io" else "Xen → device", e.kind, e.text,
                 f"{e.cost:g}") for i, e in enumerate(self.events, start=1)]
        rows.append(("", "pCPU", "direct", f"{self.direct} instructions ran on the physical "
                     "CPU, Xen not involved", f"{self.direct * self.instruction_ns:g}"))
        return TableView.build(("#", "who", "kind", "what", "ns"), rows, right=(4,),
                               footer=f"{self.type.upper()}: {self.via_xen} entries into Xen"
                                      f" ({self.refused} refused), total {self.total_ns:g} ns")

    def __repr__(self) -> str:
        return (f"KernelPath({self.type}: {self.steps} instructions, {self.direct} direct, "
                f"{self.via_xen} through Xen ({self.refused} refused), {self.total_ns:g} ns)")


def _kernel_domain(xen: Xen, type: str) -> Domain:
    """A running domain of ``type`` to run a kernel in."""
    from virtcore.xen.constants import HYPERVISOR_domctl, XEN_DOMCTL_unpausedomain
    from virtcore.xen.control import XenDomctl

    name = f"{type}-guest"
    n = 1
    while any(d.name == name for d in xen.domains.values()):
        n += 1
        name = f"{type}-guest{n}"
    d = xen.create_domain(name, type, 8)
    d.memory.populate_physmap(range(8))
    xen.hypercall(0, HYPERVISOR_domctl, XenDomctl(XEN_DOMCTL_unpausedomain, d.domid))
    return d


def vcpu_paths(program: str, type: str = "pv", *, xen: Xen | None = None,
               ioports: range | None = None) -> KernelPath:
    """Run ``program`` (teaching assembly) as the kernel of a fresh ``type`` domain (S6.4).

    Uses :func:`virtcore.xen.vcpu.run_kernel`: a PV kernel runs deprivileged, so each
    privileged instruction faults into Xen, which checks it and carries it out (or refuses);
    an HVM kernel runs in guest mode and the instructions the CPU hands over are VM exits.
    ``ioports``, if given, are granted to the domain first (by Dom0, through
    ``XEN_DOMCTL_ioport_permission``), so Xen's check lets ``in``/``out`` on them through.
    The final ``hlt`` ends the run and is counted in neither column.

    >>> p = vcpu_paths("movi r1, 1\\ncli\\naddi r1, 1\\nsti\\nhlt", "pv")
    >>> p.direct, p.via_xen, [e.kind for e in p.events]
    (2, 2, ['trap', 'trap'])
    >>> vcpu_paths("movi r1, 1\\ncli\\naddi r1, 1\\nsti\\nhlt", "hvm").via_xen
    0
    """
    from virtcore.xen import Xen
    from virtcore.xen.constants import HYPERVISOR_domctl, XEN_DOMCTL_ioport_permission
    from virtcore.xen.control import XenDomctl
    from virtcore.xen.vcpu import run_kernel

    if type not in ("pv", "hvm", "pvh"):
        raise ViewError(f"type must be 'pv', 'hvm' or 'pvh', got {type!r}")
    xen = xen if xen is not None else Xen(frames=256)
    d = _kernel_domain(xen, type)
    if ioports is not None:
        rc = xen.hypercall(0, HYPERVISOR_domctl, XenDomctl(
            XEN_DOMCTL_ioport_permission, d.domid,
            {"first_port": ioports.start, "nr_ports": len(ioports), "allow_access": 1}))
        if rc != 0:
            raise ViewError(f"Dom0 could not grant ports {ioports}: {rc}")
    start = xen.trace.seq
    run = run_kernel(xen, d.domid, program)
    events = tuple(e for e in xen.trace if e.seq > start and e.domid == d.domid)
    via = sum(1 for e in events if e.kind in _ENTRY_KINDS)
    ended = 1 if run.state in ("shutoff", "halted") else 0
    return KernelPath(type, run.steps, run.steps - via - ended, via,
                      sum(run.refused.values()), events, xen.costs.instruction)


@dataclass(frozen=True)
class PathComparison:
    """The same program as a PV kernel and as an HVM kernel (S3.6, S5.5).

    ``serial`` is what the two runs wrote on the host's serial port, PV run first.
    """

    paths: dict[str, KernelPath]
    serial: str = ""

    def entries(self, type: str) -> int:
        """How many instructions entered Xen in the ``type`` run."""
        return self.paths[type].via_xen

    def table(self, type: str) -> TableView:
        """The ``type`` run's table (:meth:`KernelPath.table`)."""
        return self.paths[type].table()

    def cost_table(self) -> TableView:
        """Instructions, entries into Xen and simulated time of each run."""
        rows = [(t.upper(), str(p.steps), str(p.direct), str(p.via_xen),
                 f"{p.direct * p.instruction_ns:g}", f"{p.xen_ns:g}", f"{p.total_ns:g}")
                for t, p in self.paths.items()]
        return TableView.build(("guest", "instructions", "direct", "into Xen", "direct ns",
                                "Xen ns", "total ns"), rows, right=(1, 2, 3, 4, 5, 6))

    def __repr__(self) -> str:
        return "\n".join(repr(p) for p in self.paths.values())


def pv_hvm_paths(program: str, *, ioports: range | None = range(0x3F8, 0x400)
                 ) -> PathComparison:
    """:func:`vcpu_paths` of ``program`` as a PV and as an HVM kernel, on one host.

    Both guests are given ``ioports`` (default COM1's, 0x3F8–0x3FF).

    >>> c = pv_hvm_paths("cli\\nsti\\nmovi r1, 65\\nout 0x3f8, r1\\nhlt")
    >>> c.entries("pv"), c.entries("hvm")
    (3, 1)
    """
    from virtcore.xen import Xen

    xen = Xen(frames=256)
    paths = {t: vcpu_paths(program, t, xen=xen, ioports=ioports) for t in ("pv", "hvm")}
    serial: Any = xen.platform["serial"].hw
    out = serial.output
    return PathComparison(paths, bytes(out).decode("latin-1"))


def vcpu_sweep(ax: Any = None, *, loop: int = 20, max_privileged: int = 6) -> Any:
    """Share of a loop's time spent entering Xen, against privileged instructions per pass.

    Each point runs a PV kernel whose loop body has 8 ordinary instructions and ``k``
    ``cli``/``sti`` (k = 0 … ``max_privileged``); returns the matplotlib Axes.
    """
    ks = list(range(max_privileged + 1))
    shares = []
    for k in ks:
        body = ["addi r2, 1"] * 8 + [("cli" if i % 2 == 0 else "sti") for i in range(k)]
        prog = "\n".join([f"movi r1, {loop}", "loop:", *body, "addi r1, -1", "cmpi r1, 0",
                          "jnz loop", "sti", "hlt"])
        p = vcpu_paths(prog, "pv")
        shares.append(100 * p.xen_ns / p.total_ns if p.total_ns else 0.0)
    ax = _new_axes(ax, (5.5, 3.0))
    ax.plot(ks, shares, marker="o")
    ax.set_xlabel("privileged instructions per loop pass (beside 11 ordinary ones)")
    ax.set_ylabel("% of time entering Xen")
    ax.set_ylim(0, 100)
    ax.set_title("a PV vCPU: most instructions run directly; each privileged one costs a trap",
                 fontsize=9)
    return ax


# ---------------------------------------------------------------------------
# chapter 5: one split-driver request, step by step (S5.3, S5.4, S4.1)

#: The ring's indices in the order shown: the shared page's four, then each side's private two.
RING_INDICES = ("req_prod", "req_event", "rsp_prod", "rsp_event",
                "req_prod_pvt", "rsp_cons", "req_cons", "rsp_prod_pvt")
#: Where each trace kind happens, for the picture: front end, ring, Xen, back end, hardware.
_STAGE = {"front": "frontend", "hypercall": "Xen", "event": "Xen", "upcall": "Xen",
          "sched": "Xen", "grant": "Xen", "back": "backend", "device": "hardware",
          "dma": "hardware", "iommu": "hardware"}
STAGES = ("frontend", "ring", "Xen", "backend", "hardware")
#: The event-channel bits shown with each step: each side's port PENDING bit and its vCPU 0's
#: ``evtchn_upcall_pending``.
RING_BITS = ("front_pending", "back_pending", "front_upcall_pending", "back_upcall_pending")


@dataclass(frozen=True)
class RingStep:
    """One step of a split-driver request, with the state right after it.

    ``indices`` are the ring's indices (:data:`RING_INDICES`); ``bits`` the PENDING bit of
    each side's event-channel port and its vCPU's ``evtchn_upcall_pending``
    (:data:`RING_BITS`).
    """

    n: int
    who: str
    kind: str
    stage: str
    text: str
    cost: float
    indices: dict[str, int]
    bits: dict[str, int]

    def __repr__(self) -> str:
        idx = " ".join(f"{k}={v}" for k, v in self.indices.items())
        return f"step {self.n} [{self.stage}] {self.who} {self.text} ({self.cost:g} ns) | {idx}"


class SplitRequest:
    """A blkfront/blkback pair on a fresh host, and the steps of one block request.

    Built by :func:`split_request`. Attributes: ``xen``, ``front`` and ``back`` (domains),
    ``blkfront``, ``blkback``, ``ring_ref`` (the grant reference of the ring page),
    ``result`` (the :class:`~virtcore.xen.splitdrv.BlkResult`), ``steps``.
    """

    def __init__(self, xen: Xen, front: Domain, back: Domain, blkfront: Any, blkback: Any,
                 ring_ref: int, result: Any, steps: tuple[RingStep, ...]) -> None:
        self.xen, self.front, self.back = xen, front, back
        self.blkfront, self.blkback, self.ring_ref = blkfront, blkback, ring_ref
        self.result, self.steps = result, steps

    @property
    def total_ns(self) -> float:
        """Simulated time of the request (sum of the steps' prices)."""
        return float(sum(s.cost for s in self.steps))

    @property
    def notifications(self) -> int:
        """``EVTCHNOP_send`` hypercalls made during the request (front → back and back)."""
        return sum(1 for s in self.steps if s.kind == "hypercall" and "EVTCHNOP_send" in s.text)

    def table(self) -> TableView:
        """Every step: who, where, what, cost, and the ring indices after it."""
        rows = [(str(s.n), s.who, s.stage, s.text[:70], f"{s.cost:g}",
                 "/".join(str(s.indices[k]) for k in RING_INDICES[:4]),
                 f"{s.bits['back_pending']}{s.bits['front_pending']}") for s in self.steps]
        return TableView.build(("#", "who", "where", "what", "ns",
                                "req_prod/req_event/rsp_prod/rsp_event", "PENDING b/f"), rows,
                               right=(4,), footer=f"{len(rows)} steps, {self.total_ns:g} ns, "
                                                  f"{self.notifications} notifications")

    def __repr__(self) -> str:
        return (f"SplitRequest(d{self.front.domid} blkfront → d{self.back.domid} blkback: "
                f"{self.result!r}, {len(self.steps)} steps, {self.total_ns:g} ns)")


def block_pair(xen: Xen, name: str = "guest", **config: Any) -> tuple[Domain, Any, Any]:
    """``xl create`` a DomU with a virtual disk; returns it, its blkfront and Dom0's blkback.

    The toolstack does the handshake: the back end watches XenStore; the front end allocates
    the ring page, grants it, allocates an unbound port and publishes both; the back end maps
    the ring and binds the port.
    """
    cfg: dict[str, Any] = {"name": name, "memory_pages": 32, "disk": True}
    cfg.update(config)
    front = xen.xl.create(cfg)
    key = (front.domid, "vbd")
    return front, xen.xl.frontends[key], xen.xl.backends[key]


def split_request(op: str = "read", sector: int = 3, *, data: bytes = b"hello, disk",
                  xen: Xen | None = None) -> SplitRequest:
    """One block request from a DomU's blkfront to Dom0's blkback, step by step.

    The model runs the request synchronously and records, after every step of its trace, the
    ring's indices and both ports' bits (:attr:`virtcore.xen.splitdrv.BlkResult.states`);
    this view gives each step its place (front end, ring, Xen, back end, hardware). For
    ``op="read"`` the sector is first written straight to the disk device, so the read returns
    ``data``.

    >>> r = split_request()
    >>> r.result.data[:11], r.notifications
    (b'hello, disk', 2)
    >>> r.steps[-1].indices["rsp_cons"], r.steps[-1].indices["req_prod"]
    (1, 1)
    """
    from virtcore.xen import Xen

    if op not in ("read", "write"):
        raise ViewError(f"op must be 'read' or 'write', got {op!r}")
    xen = xen if xen is not None else Xen(frames=512)
    front, blkfront, blkback = block_pair(xen)
    ring_ref = int(xen.xenstore.read(0, f"{blkfront.path}/ring-ref"))
    if op == "read":  # the disk already holds the data (written straight to the device)
        disk: Any = xen.platform["disk"].hw
        disk.write_sector(sector, bytes(data).ljust(512, b"\0"))
    result = blkfront.read(sector, 1) if op == "read" else blkfront.write(sector, data)
    steps = []
    for i, (ev, state) in enumerate(zip(result.steps, result.states), start=1):
        stage = "ring" if ev.kind == "ring" else _STAGE.get(ev.kind, "Xen")
        steps.append(RingStep(i, "xen" if ev.domid is None else f"d{ev.domid}", ev.kind, stage,
                              ev.text, ev.cost, {k: state.get(k, 0) for k in RING_INDICES},
                              {k: state.get(k, 0) for k in RING_BITS}))
    return SplitRequest(xen, front, xen.dom0, blkfront, blkback, ring_ref, result, tuple(steps))


def render_ring_step(req: SplitRequest, i: int) -> str:
    """HTML for step ``i`` (0-based) of ``req``: where it is, what it did, indices and bits."""
    s = req.steps[i]
    cells = []
    for stage in STAGES:
        on = stage == s.stage
        style = ("background:#1565c0;color:white;font-weight:bold" if on else
                 "background:#eceff1;color:#37474f")
        label = {"frontend": f"frontend<br>d{req.front.domid} blkfront",
                 "ring": "shared ring<br>(granted page)", "Xen": "Xen<br>(hypercalls, events)",
                 "backend": f"backend<br>d{req.back.domid} blkback",
                 "hardware": "hardware<br>(disk, DMA)"}[stage]
        cells.append(f'<td style="{style};padding:6px 10px;text-align:center;'
                     f'border:1px solid white">{label}</td>')
    spent = sum(x.cost for x in req.steps[: i + 1])
    idx = "".join(f"<td style='padding:2px 8px'>{esc(k)}<br><b>{v}</b></td>"
                  for k, v in s.indices.items())
    bits = (f"back port PENDING <b>{s.bits['back_pending']}</b> · front port PENDING "
            f"<b>{s.bits['front_pending']}</b> · evtchn_upcall_pending back/front "
            f"<b>{s.bits['back_upcall_pending']}/{s.bits['front_upcall_pending']}</b>")
    return (f"<table style='border-collapse:collapse'><tr>{''.join(cells)}</tr></table>"
            f"<p style='margin:4px 0'><b>step {s.n}/{len(req.steps)}</b> · {esc(s.who)} · "
            f"<code>{esc(s.kind)}</code> · {esc(s.text)} · <b>{s.cost:g} ns</b> "
            f"(so far {spent:g} ns)</p>"
            f"<table style='font-size:12px'><tr>{idx}</tr></table><p style='margin:2px 0'>"
            f"{bits}</p>")


def split_driver_stepper(*, op: str = "read") -> Any:
    """Step through one block request: Prev / Next buttons and a slider over the steps.

    Returns an ``ipywidgets.VBox`` with ``request`` (the :class:`SplitRequest`), ``slider``,
    ``buttons`` ("prev", "next"), ``view`` (HTML) and ``show(i)``.

    >>> w = split_driver_stepper()
    >>> w.buttons["next"].click(); w.slider.value
    1
    >>> "step 2/" in w.view.value
    True
    """
    widgets = require("ipywidgets")
    req = split_request(op)
    slider = widgets.IntSlider(value=0, min=0, max=len(req.steps) - 1, description="step",
                               continuous_update=False)
    buttons = {"prev": widgets.Button(description="◀ prev", layout=widgets.Layout(width="auto")),
               "next": widgets.Button(description="next ▶", layout=widgets.Layout(width="auto"))}
    view = widgets.HTML()

    def show(i: int) -> None:
        view.value = render_ring_step(req, i)

    slider.observe(lambda ch: show(ch["new"]), names="value")
    buttons["prev"].on_click(lambda _b: setattr(slider, "value", max(0, slider.value - 1)))
    buttons["next"].on_click(lambda _b: setattr(slider, "value",
                                                min(slider.max, slider.value + 1)))
    show(0)
    box = widgets.VBox([widgets.HBox([buttons["prev"], buttons["next"], slider]), view])
    box.request, box.slider, box.buttons, box.view, box.show = req, slider, buttons, view, show
    return box


@dataclass(frozen=True)
class BatchRun:
    """:func:`batch_requests`'s counts: requests, pushes and the notifications each way."""

    requests: int
    batch: int
    pushes: int
    front_sends: int
    back_sends: int
    total_ns: float

    @property
    def notifications(self) -> int:
        """``EVTCHNOP_send`` calls, both directions."""
        return self.front_sends + self.back_sends


def batch_requests(requests: int, batch: int, *, xen: Xen | None = None) -> BatchRun:
    """A DomU's blkfront puts ``requests`` one-segment reads on the ring, ``batch`` at a time.

    After each batch it publishes them (``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY``) and notifies
    the back end if the macro says so; the back end answers the whole batch and notifies back.
    Counts the ``EVTCHNOP_send`` calls of each side.

    >>> batch_requests(8, 4)  # doctest: +ELLIPSIS
    BatchRun(requests=8, batch=4, pushes=2, front_sends=2, back_sends=2, total_ns=...)
    """
    from virtcore.xen import Xen
    from virtcore.xen.constants import BLKIF_OP_READ

    if not 1 <= batch <= 16 or not 1 <= requests <= 64:
        raise ViewError("requests must be 1..64 and batch 1..16")
    xen = xen if xen is not None else Xen(frames=512)
    front, blkfront, _blkback = block_pair(xen)
    gt = front.grant_table
    assert gt is not None
    start = xen.trace.seq
    pushes = 0
    done = 0
    while done < requests:
        pages = []
        for _ in range(min(batch, requests - done)):
            pfn = front.alloc_page()
            if pfn is None:
                raise ViewError("the guest ran out of pages")
            ref = gt.grant_access(0, front.frame_of(pfn))
            pages.append((pfn, ref))
            blkfront.request(BLKIF_OP_READ, done, [(ref, 0, 0)])
            done += 1
        blkfront.push()
        pushes += 1
        for pfn, ref in pages:
            gt.end_foreign_access(ref)
            front.free_page(pfn)
    events = xen.trace.since(start)
    sends = [e for e in events if e.kind == "hypercall" and "EVTCHNOP_send" in e.text]
    return BatchRun(requests, batch, pushes,
                    sum(1 for e in sends if e.domid == front.domid),
                    sum(1 for e in sends if e.domid == 0), float(sum(e.cost for e in events)))
