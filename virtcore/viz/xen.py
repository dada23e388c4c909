"""Views of the Xen model as networkx graphs: the domain stack, event channels, grants.

The graph *data* comes from :mod:`virtcore.xen.graphs` (built from the running host);
networkx and matplotlib are imported only inside these functions.

>>> from virtcore.xen import Xen
>>> xen = Xen(frames=512); _ = xen.create_guest("web", memory_pages=16, disk=True)
>>> g = xen_graph(xen, "stack")
>>> g.nodes["d0"]["roles"], g.edges["d1", "d0"]["label"]
(['control', 'hardware'], 'vbd')
"""

from __future__ import annotations

from typing import Any

from virtcore.viz._lazy import require

__all__ = ["draw_xen_graph", "to_networkx", "xen_graph"]

_COLOURS = {"hardware": "#bbbbbb", "hypervisor": "#f4a261", "domain": "#8ecae6",
            "device": "#d9d9d9", "irq": "#e9c46a"}


def to_networkx(data: Any) -> Any:
    """A :class:`networkx.MultiDiGraph`-free ``DiGraph`` from :class:`GraphData`
    (parallel edges are merged, their labels joined)."""
    nx = require("networkx")
    g = nx.DiGraph()
    for node, attrs in data.nodes:
        g.add_node(node, **attrs)
    for u, v, attrs in data.edges:
        if g.has_edge(u, v):
            g.edges[u, v]["label"] += "; " + attrs.get("label", "")
        else:
            g.add_edge(u, v, **attrs)
    return g


def xen_graph(xen: Any, which: str = "stack") -> Any:
    """``"stack"``, ``"events"`` or ``"grants"`` of a running :class:`~virtcore.xen.Xen` as a
    networkx DiGraph."""
    from virtcore.xen import graphs

    builders = {"stack": graphs.stack_graph, "events": graphs.event_graph,
                "grants": graphs.grant_graph}
    if which not in builders:
        from virtcore.errors import ConfigurationError

        raise ConfigurationError(f"which must be one of {sorted(builders)}, got {which!r}")
    return to_networkx(builders[which](xen))


def draw_xen_graph(xen: Any, which: str = "stack", ax: Any = None) -> Any:
    """Draw :func:`xen_graph` with matplotlib; returns the axes."""
    nx = require("networkx")
    plt = require("matplotlib.pyplot")
    g = xen_graph(xen, which)
    if ax is None:
        _fig, ax = plt.subplots(figsize=(8, 5))
    if which == "stack":
        layer = {"hardware": 0, "device": 1, "hypervisor": 1, "domain": 2}
        for n, a in g.nodes(data=True):
            g.nodes[n]["layer"] = layer.get(a.get("kind"), 2)
        pos = nx.multipartite_layout(g, subset_key="layer", align="horizontal")
    else:
        pos = nx.circular_layout(g)
    colours = [_COLOURS.get(a.get("kind"), "#cccccc") for _n, a in g.nodes(data=True)]
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colours, node_size=1600, node_shape="s")
    nx.draw_networkx_labels(g, pos, labels={n: a.get("label", n) for n, a in g.nodes(data=True)},
                            ax=ax, font_size=7)
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, node_size=1600, arrowsize=10)
    nx.draw_networkx_edge_labels(g, pos, edge_labels={(u, v): a.get("label", "")
                                                      for u, v, a in g.edges(data=True)},
                                 ax=ax, font_size=6)
    ax.set_title({"stack": "Xen: hardware, hypervisor, domains",
                  "events": "event channels", "grants": "grant tables"}[which])
    ax.axis("off")
    return ax
