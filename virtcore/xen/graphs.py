"""Graph *data* of a running Xen host: the domain stack, the event channels, the grants.

Plain nodes and edges (no networkx here; :mod:`virtcore.viz.xen` turns them into networkx
graphs and draws them), built from the live model so a chapter's picture is always what the
simulation holds [XEN-GLOSSARY; XEN-EVTCHN; XEN-GNTTAB].

>>> from virtcore.xen import Xen
>>> xen = Xen(frames=512); g = xen.create_guest("web", memory_pages=16, disk=True)
>>> s = stack_graph(xen)
>>> [n for n, _ in s.nodes][:4], ("d1", "d0", {"kind": "split driver", "label": "vbd"}) in s.edges
(['hardware', 'xen', 'd0', 'd1'], True)
>>> [(u, v, a["label"]) for u, v, a in event_graph(xen).edges]
[('d0', 'd1', 'port 1 ↔ 1')]
>>> [(u, v, a["label"]) for u, v, a in grant_graph(xen).edges]
[('d1', 'd0', 'ref 8 (rw, mapped)')]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from virtcore.xen.constants import (
    EVTCHNSTAT_interdomain,
    EVTCHNSTAT_pirq,
    EVTCHNSTAT_unbound,
    EVTCHNSTAT_virq,
    GTF_reading,
    GTF_readonly,
)

if TYPE_CHECKING:
    from virtcore.xen.hypervisor import Xen

__all__ = ["GraphData", "event_graph", "grant_graph", "stack_graph"]


@dataclass
class GraphData:
    """Nodes ``(id, attrs)`` and directed edges ``(u, v, attrs)``; attrs have a ``label``."""

    nodes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    edges: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def node_ids(self) -> list[str]:
        return [n for n, _ in self.nodes]

    def __repr__(self) -> str:
        return f"GraphData({len(self.nodes)} nodes, {len(self.edges)} edges)"


def _domain_nodes(xen: Xen, g: GraphData) -> None:
    for d in sorted(xen.domains.values(), key=lambda d: d.domid):
        roles = [r for r, on in (("control", d.is_privileged), ("hardware", d.is_hardware),
                                 ("driver", bool(d.devices) and not d.is_hardware)) if on]
        g.nodes.append((f"d{d.domid}", {"kind": "domain", "label": f"{d.name}\n(d{d.domid},"
                                        f" {d.type})", "roles": roles, "type": d.type,
                        "state": d.state_letters(), "vcpus": len(d.vcpus)}))


def stack_graph(xen: Xen) -> GraphData:
    """Hardware → Xen → domains; devices owned by domains; split-driver front→back edges."""
    g = GraphData()
    g.nodes.append(("hardware", {"kind": "hardware", "label": "hardware"}))
    g.nodes.append(("xen", {"kind": "hypervisor", "label": "Xen hypervisor"}))
    _domain_nodes(xen, g)
    g.edges.append(("xen", "hardware", {"kind": "runs on", "label": "runs on"}))
    for d in sorted(xen.domains.values(), key=lambda d: d.domid):
        g.edges.append((f"d{d.domid}", "xen", {"kind": "hypercalls", "label": "hypercalls"}))
    for dev in xen.platform.devices.values():
        g.nodes.append((f"dev:{dev.name}", {"kind": "device", "label": f"{dev.name}\n{dev.bdf}"}))
        g.edges.append((f"dev:{dev.name}", "hardware", {"kind": "in", "label": ""}))
        g.edges.append((f"d{dev.owner}", f"dev:{dev.name}",
                        {"kind": "native driver", "label": "native driver"}))
    for (fe, kind), back in sorted(xen.xl.backends.items()):
        if fe in xen.domains and back.be in xen.domains:
            g.edges.append((f"d{fe}", f"d{back.be}", {"kind": "split driver", "label": kind}))
    return g


def event_graph(xen: Xen) -> GraphData:
    """Domains and their event channels: interdomain (once per pair), unbound, virq, pirq."""
    g = GraphData()
    g.nodes.append(("xen", {"kind": "hypervisor", "label": "Xen (virq)"}))
    _domain_nodes(xen, g)
    seen: set[tuple[int, int, int, int]] = set()
    for d in sorted(xen.domains.values(), key=lambda d: d.domid):
        for port, c in sorted(d.evtchn.items()):
            if c.state == EVTCHNSTAT_interdomain and c.remote_dom in xen.domains:
                key = (min((d.domid, port), (c.remote_dom, c.remote_port))
                       + max((d.domid, port), (c.remote_dom, c.remote_port)))
                if key in seen:
                    continue
                seen.add(key)  # type: ignore[arg-type]
                g.edges.append((f"d{d.domid}", f"d{c.remote_dom}", {
                    "kind": "interdomain", "label": f"port {port} ↔ {c.remote_port}"}))
            elif c.state == EVTCHNSTAT_unbound and c.remote_dom in xen.domains:
                g.edges.append((f"d{d.domid}", f"d{c.remote_dom}", {
                    "kind": "unbound", "label": f"port {port} (unbound)"}))
            elif c.state == EVTCHNSTAT_virq:
                g.edges.append(("xen", f"d{d.domid}", {"kind": "virq",
                                                       "label": f"virq {c.virq} → port {port}"}))
            elif c.state == EVTCHNSTAT_pirq:
                node = f"irq{c.pirq}"
                if node not in g.node_ids():
                    g.nodes.append((node, {"kind": "irq", "label": f"IRQ {c.pirq}"}))
                g.edges.append((node, f"d{d.domid}", {"kind": "pirq",
                                                      "label": f"pirq {c.pirq} → port {port}"}))
    return g


def grant_graph(xen: Xen) -> GraphData:
    """Granter → grantee per grant in use, labelled with the ref, ro/rw and mapped or not."""
    g = GraphData()
    _domain_nodes(xen, g)
    for d in sorted(xen.domains.values(), key=lambda d: d.domid):
        gt = d.grant_table
        if gt is None:
            continue
        for ref in gt.in_use():
            e = gt.entries[ref]
            if e.domid not in xen.domains:
                continue
            mode = "ro" if e.flags & GTF_readonly else "rw"
            state = "mapped" if e.flags & GTF_reading else "granted"
            g.edges.append((f"d{d.domid}", f"d{e.domid}", {
                "kind": "grant", "label": f"ref {ref} ({mode}, {state})", "ref": ref,
                "readonly": mode == "ro", "mapped": state == "mapped", "frame": e.frame}))
    return g
