"""Views of chapter 1 (:mod:`virtcore.arch`): stack drawings, cost plots, three explorers.

Pure data first, display later.  The architectures, event paths, costs and
faults are computed by :mod:`virtcore.arch`; this module only shows them:

- :func:`stack_graph` — a stack as a ``networkx.DiGraph`` (lower → upper);
- :func:`stack_layout` — where each layer's box goes (pure, no matplotlib);
- :func:`draw_stack` — the stack as boxes by level, an event's path as
  numbered arrows coloured by crossing kind, failed layers in red;
- :func:`plot_costs` — a bar chart of architectures for a mix, or the lines
  of an ordering sweep with its crossovers marked;
- :func:`cost_rows` — a mix's cost per architecture split by crossing kind;
- :func:`architecture_explorer`, :func:`overhead_explorer`,
  :func:`isolation_explorer` — ipywidgets UIs.  Each control change calls a
  pure view function (:func:`_explorer_view`, :func:`_overhead_view`,
  :func:`_isolation_view`) that returns ``(Figure, text)``; the widget only
  renders the figure to PNG and shows the text.  The benchmark
  ``benchmarks/bench_ch1_widgets.py`` times these functions.

The chapter's ungraded self-checks (``ch1.*``) are registered with
:mod:`virtcore.viz.selfcheck` when this module is imported.

matplotlib, networkx and ipywidgets are imported inside the functions that
need them.  Chinese labels are drawn when matplotlib has a font with Chinese
glyphs (:func:`cjk_font`); otherwise the boxes show the English names only
(the Chinese terms are still in every text output), so no missing-glyph
warnings appear.

>>> layout = stack_layout(stack_for("bare-metal", guests=2))
>>> layout["hardware"].x0, layout["hardware"].x1, layout["vm2 app"].level
(0.0, 2.0, 3)
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import random
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from virtcore.arch import (
    DEFAULT_MODEL,
    KERNEL_ON_HARDWARE,
    PRODUCTS,
    Architecture,
    ArchitectureError,
    CostModel,
    CrossingKind,
    EdgeKind,
    Event,
    Fault,
    HypervisorType,
    LayerKind,
    Nesting,
    Path,
    Stack,
    Sweep,
    all_stacks,
    classify,
    cost_breakdown,
    event_path,
    nesting_costs,
    normalize_mix,
    path_cost,
    product,
    run_duties,
    simulate_fault,
    stack_for,
    stack_graph_data,
    workload_cost,
)
from virtcore.arch.stacks import native
from virtcore.viz import ViewError
from virtcore.viz._lazy import esc, require
from virtcore.viz.selfcheck import REGISTRY, AnswerFormatError, SelfCheck, as_int, register

__all__ = [
    "CROSSING_COLOURS",
    "LAYER_COLOURS",
    "Box",
    "architecture_explorer",
    "as_fraction",
    "as_name",
    "cjk_font",
    "cost_rows",
    "draw_stack",
    "isolation_explorer",
    "overhead_explorer",
    "plot_costs",
    "stack_graph",
    "stack_layout",
]

#: One colour per crossing kind (arrows of a path, segments of stacked bars).
CROSSING_COLOURS: dict[CrossingKind, str] = {
    CrossingKind.DIRECT: "#7f7f7f",
    CrossingKind.SYSCALL: "#1f77b4",
    CrossingKind.TRAP: "#ff7f0e",
    CrossingKind.VM_EXIT: "#d62728",
    CrossingKind.WORLD_SWITCH: "#9467bd",
    CrossingKind.CONTEXT_SWITCH: "#8c564b",
    CrossingKind.EMULATE: "#e377c2",
    CrossingKind.DEVICE: "#2ca02c",
    CrossingKind.INTERRUPT: "#17becf",
    CrossingKind.MEMORY_REFERENCE: "#bcbd22",
    CrossingKind.RING_SLOT: "#aec7e8",
    CrossingKind.VALIDATE: "#ffbb78",
    CrossingKind.PTE_UPDATE: "#c49c94",
    CrossingKind.TLB_FLUSH: "#f7b6d2",
}

#: Fill colour of a layer's box, by kind.
LAYER_COLOURS: dict[LayerKind, str] = {
    LayerKind.HARDWARE: "#d9d9d9",
    LayerKind.HYPERVISOR: "#fdd49e",
    LayerKind.HOST_KERNEL: "#c6dbef",
    LayerKind.KERNEL_MODULE: "#9ecae1",
    LayerKind.GUEST_KERNEL: "#c7e9c0",
    LayerKind.APP: "#ffffff",
    LayerKind.VMM_PROCESS: "#dadaeb",
    LayerKind.CONTAINER_RUNTIME: "#fcc5c0",
    LayerKind.CONTROL_DOMAIN: "#a1d99b",
}

_FAILED_FILL = "#f4a6a6"
_FAILED_EDGE = "#b00020"

#: Fonts known to have Chinese glyphs, most wanted first.
_CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Microsoft YaHei",
    "SimHei",
    "PingFang SC",
    "Heiti SC",
    "Hiragino Sans GB",
    "Droid Sans Fallback",
    "AR PL UMing CN",
    "Arial Unicode MS",
)

_HAN = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")


@functools.lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The name of an installed font with Chinese glyphs, or ``None`` if matplotlib has none.

    >>> f = cjk_font()
    >>> f is None or isinstance(f, str)
    True
    """
    fm = require("matplotlib.font_manager")
    names = {f.name for f in fm.fontManager.ttflist}
    for family in _CJK_FAMILIES:
        if family in names:
            return family
    return None


def _use_chinese(chinese: bool | None) -> bool:
    return cjk_font() is not None if chinese is None else bool(chinese)


def _text_kwargs(text: str) -> dict[str, Any]:
    """Font for a label: the CJK font (at a weight it has) when the text has Chinese.

    CJK fonts carry Latin glyphs too, so one font draws the whole label; asking
    for a weight the font lacks would make matplotlib log a warning.
    """
    font = cjk_font()
    if font is not None and _HAN.search(text):
        return {"fontfamily": font, "fontweight": _cjk_weight(font)}
    return {}


@functools.lru_cache(maxsize=4)
def _cjk_weight(font: str) -> int | str:
    """The weight of ``font`` nearest to normal (400)."""
    fm = require("matplotlib.font_manager")
    weights = [f.weight for f in fm.fontManager.ttflist if f.name == font]

    def distance(w: int | str) -> int:
        numeric = fm.weight_dict.get(w, 400) if isinstance(w, str) else int(w)
        return abs(numeric - 400)

    return min(weights, key=distance) if weights else "normal"


_GLYPH_WARNINGS = (r"Glyph \d+ .*missing from", r"Matplotlib currently does not support")


@contextlib.contextmanager
def _quiet_glyphs() -> Iterator[None]:
    """Silence matplotlib's missing-glyph warnings (Chinese text without a CJK font)."""
    with warnings.catch_warnings():
        for pattern in _GLYPH_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


# ---------------------------------------------------------------------------
# graph and layout (pure)


def stack_graph(stack: Stack, path: Path | None = None) -> Any:
    """A stack as a ``networkx.DiGraph``: one node per layer, an edge lower → upper.

    Node attributes are those of :func:`virtcore.arch.stack_graph_data`
    (``label``, ``chinese``, ``kind``, ``privilege``, ``level``, ``guest``);
    edges carry ``kind`` (``runs_on``, ``hosts``, ``part_of``, ``manages``).

    With a ``path``, its steps are added: the edge ``src → dst`` of each step
    gets the step's number in ``steps`` and its crossing kind in ``crossings``
    (a step between layers with no structural edge, such as a trap that
    jumps from an app to its VMM, adds an edge of kind ``"path"``); work
    inside one layer (``emulate``) is listed in that node's ``work``.

    >>> from virtcore.arch import hosted, event_path
    >>> g = stack_graph(hosted(guests=1))
    >>> sorted(g.successors("host kernel")), g.nodes["vm1 VMM"]["level"]
    (['vm1 VMM'], 2)
    >>> g.edges["vm1 VMM", "vm1 kernel"]["kind"]
    'hosts'
    >>> g = stack_graph(hosted(guests=1), event_path(hosted(guests=1), "syscall"))
    >>> g.edges["vm1 app", "vm1 VMM"]["kind"], g.edges["vm1 app", "vm1 VMM"]["steps"]
    ('path', [1])
    """
    nx = require("networkx")
    nodes, edges = stack_graph_data(stack)
    graph = nx.DiGraph(name=stack.name, architecture=str(stack.architecture or "native"))
    graph.add_nodes_from(nodes)
    graph.add_edges_from(edges)
    if path is None:
        return graph
    if path.stack != stack.name:
        raise ViewError(f"the path of {path.stack!r} does not belong to stack {stack.name!r}")
    for i, step in enumerate(path.steps, 1):
        for end in (step.src, step.dst):
            if end not in graph:
                raise ViewError(f"the path visits {end!r}, which is not in {stack.name!r}")
        if step.src == step.dst:
            graph.nodes[step.src].setdefault("work", []).append((i, step.kind.value))
            continue
        if not graph.has_edge(step.src, step.dst):
            graph.add_edge(step.src, step.dst, kind="path")
        data = graph.edges[step.src, step.dst]
        data.setdefault("steps", []).append(i)
        data.setdefault("crossings", []).append(step.kind.value)
    return graph


@dataclass(frozen=True)
class Box:
    """Where a layer is drawn: ``x0``–``x1`` across, at height ``level``.

    ``inset_of`` names the layer whose box this one is drawn inside (a
    kernel module inside its kernel).

    >>> b = Box("hypervisor", 0.0, 2.0, 1)
    >>> b.centre, b.width, b.inset_of
    (1.0, 2.0, None)
    """

    name: str
    x0: float
    x1: float
    level: int
    inset_of: str | None = None

    @property
    def centre(self) -> float:
        """The middle of the box, across."""
        return (self.x0 + self.x1) / 2

    @property
    def width(self) -> float:
        """Width in columns."""
        return self.x1 - self.x0


_MARGIN = 0.04
_BOX_HEIGHT = 0.68
_INSET_PAD = 0.1

#: Relative width of layers that share a level (a VMM process beside its guest kernel).
_WEIGHT = {LayerKind.VMM_PROCESS: 1.0}
#: Widest a VMM process beside the kernel it hosts may be, in columns.
_NARROW = 0.4
#: Width of the side column of a layer that only manages others (a container manager).
_SIDE = 0.6


def stack_layout(stack: Stack) -> dict[str, Box]:
    """Place every layer of ``stack``: one column per guest, each layer under what it carries.

    Each guest (VM or container) has a column.  A layer spans its own
    guest's column and the columns of every layer above it that it carries,
    directly or not (along ``runs_on``, ``hosts`` and ``part_of`` edges): a
    hypervisor spans all columns, a VM's kernel its own, and in a nested
    stack an L1 kernel spans L1's column and L2's.  The layers at the bottom
    (the hardware) span the whole drawing.  Three layouts need a rule:

    - a kernel module on its kernel's level (``kvm.ko``) is drawn *inside*
      the kernel's box, at its right end (``inset_of``);
    - a shared layer that carries nothing and only manages or serves others
      (the container manager, Xen's Domain 0) gets a narrow side column on
      the right, and the layer it runs on (Xen) extends under it;
    - layers of one level whose spans overlap (a QEMU process beside the
      guest kernel it hosts) share the width, a VMM process taking half the
      share of the others and at most 0.4 of a column.

    >>> L = stack_layout(stack_for("hybrid", guests=2))
    >>> L["host kernel"].x0, L["host kernel"].x1, L["kvm module"].inset_of
    (0.0, 2.0, 'host kernel')
    >>> round(L["vm1 QEMU"].x1, 3), L["vm1 kernel"].x1
    (0.333, 1.0)
    >>> O = stack_layout(stack_for("os-level", guests=2))
    >>> (O["container manager"].x0, O["container manager"].x1), O["hardware"].x1
    ((2.0, 2.6), 2.6)
    >>> from virtcore.arch import kvm_nested
    >>> N = stack_layout(kvm_nested(2))
    >>> (N["L2 app"].x0, N["L2 app"].x1), (N["L1 app"].x0, N["L1 app"].x1)
    ((1.0, 2.0), (0.0, 1.0))
    """
    columns = {g: i for i, g in enumerate(stack.guests)}
    n_cols = max(len(columns), 1)
    every = frozenset(range(n_cols))
    level_of = {layer.name: layer.level for layer in stack.layers}
    carries: dict[str, list[str]] = {}
    carried = set()
    sideways = (EdgeKind.MANAGES, EdgeKind.SERVES)
    for e in stack.edges:
        if e.kind not in sideways:
            carries.setdefault(e.lower, []).append(e.upper)
            carried.add(e.upper)
    insets = {
        e.upper: e.lower
        for e in stack.edges
        if e.kind is EdgeKind.PART_OF and level_of[e.upper] == level_of[e.lower]
    }
    side = [
        layer.name
        for layer in stack.layers
        if layer.guest is None
        and not carries.get(layer.name)
        and any(e.lower == layer.name and e.kind in sideways for e in stack.edges)
    ]
    under_side = {e.lower for e in stack.edges if e.upper in side and e.kind not in sideways
                  and level_of[e.upper] > level_of[e.lower]}
    spans: dict[str, frozenset[int]] = {}

    def span(name: str, seen: frozenset[str] = frozenset()) -> frozenset[int]:
        if name not in spans:
            guest = stack.layer(name).guest
            cols = {columns[guest]} if guest in columns else set()
            for upper in carries.get(name, ()):
                if upper not in seen and upper not in side:
                    cols |= span(upper, seen | {name})
            spans[name] = frozenset(cols) or every
        return spans[name]

    width = n_cols + (_SIDE if side else 0.0)
    by_level: dict[int, list[Any]] = {}
    for layer in stack.layers:
        if layer.name not in insets and layer.name not in side:
            by_level.setdefault(layer.level, []).append(layer)
    boxes: dict[str, Box] = {}
    for level, layers in by_level.items():
        # clusters of layers whose column ranges overlap, in the stack's order
        clusters: list[tuple[float, float, list[Any]]] = []
        for layer in layers:
            if layer.name not in carried:  # the bottom of the stack
                x0, x1 = 0.0, width
            else:
                cols = span(layer.name) | frozenset(
                    c for ins, host in insets.items() if host == layer.name for c in span(ins)
                )
                x0, x1 = float(min(cols)), float(max(cols) + 1)
                if layer.name in under_side:  # it also carries a side column (Domain 0)
                    x1 = width
            for i, (c0, c1, members) in enumerate(clusters):
                if x0 < c1 and c0 < x1:
                    clusters[i] = (min(c0, x0), max(c1, x1), [*members, layer])
                    break
            else:
                clusters.append((x0, x1, [layer]))
        for c0, c1, members in clusters:
            weights = [_WEIGHT.get(layer.kind, 2.0) for layer in members]
            widths = [(c1 - c0) * w / sum(weights) for w in weights]
            # a VMM process is at most _NARROW wide; the others share what it leaves
            capped = [layer.kind is LayerKind.VMM_PROCESS and w > _NARROW
                      for layer, w in zip(members, widths)]
            if any(capped) and not all(capped):
                spare = sum(w - _NARROW for w, c in zip(widths, capped) if c)
                rest = sum(w for w, c in zip(widths, capped) if not c)
                widths = [_NARROW if c else w + spare * w / rest for w, c in zip(widths, capped)]
            x = c0
            for layer, step in zip(members, widths):
                boxes[layer.name] = Box(layer.name, x, x + step, level)
                x += step
    for i, name in enumerate(side):
        step = _SIDE / len(side)
        boxes[name] = Box(name, n_cols + i * step, n_cols + (i + 1) * step, level_of[name])
    for name, host in insets.items():
        h = boxes[host]
        w = min(0.6, 0.45 * h.width)
        boxes[name] = Box(name, h.x1 - w - _MARGIN, h.x1 - _MARGIN, h.level, inset_of=host)
    return {layer.name: boxes[layer.name] for layer in stack.layers}


# ---------------------------------------------------------------------------
# drawing




def _bottom(box: Box) -> float:
    return box.level + (_INSET_PAD if box.inset_of else 0.0)


def _top(box: Box) -> float:
    return box.level + _BOX_HEIGHT - (_INSET_PAD if box.inset_of else 0.0)


def _label_size(lines: Sequence[str], width_pt: float, base: float) -> float:
    """A font size at which the longest line fits ``width_pt`` points (never below 5 pt).

    The lines are measured in the font they are drawn in (:func:`_text_kwargs`); a guess per
    character let a label such as ``vm1 QEMU ✗`` run out of its box.
    """
    family = _text_kwargs("\n".join(lines)).get("fontfamily")
    ems = max((_width_in_ems(line, family) for line in lines), default=1.0)
    return max(5.0, min(base, width_pt / max(ems, 1.0)))


@functools.lru_cache(maxsize=1024)
def _width_in_ems(line: str, family: str | None) -> float:
    """The width of ``line`` at a font size of 1, in ``family`` (None: matplotlib's default).

    >>> _width_in_ems("MM", None) > _width_in_ems("ii", None) > 0
    True
    """
    fm = require("matplotlib.font_manager")
    textpath = require("matplotlib.textpath")
    prop = fm.FontProperties(family=family, size=100) if family else fm.FontProperties(size=100)
    with _quiet_glyphs():
        width, _, _ = textpath.TextToPath().get_text_width_height_descent(line, prop, ismath=False)
    return float(width) / 100


def _chinese_lines(text: str) -> list[str]:
    """Split a long Chinese label at its opening bracket and at commas.

    >>> _chinese_lines("QEMU（用户空间，模拟I/O设备）")
    ['QEMU', '（用户空间，', '模拟I/O设备）']
    """
    if len(text) <= 8:
        return [text]
    lines = [text]
    if "（" in text and not text.startswith("（"):
        head, tail = text.split("（", 1)
        lines = [head, "（" + tail]
    out: list[str] = []
    for line in lines:
        parts = line.split("，")
        out += [p + "，" for p in parts[:-1]] + [parts[-1]]
    return [line for line in out if line]


def _new_axes(ax: Any, size: tuple[float, float]) -> Any:
    if ax is not None:
        return ax
    plt = require("matplotlib.pyplot")
    _, ax = plt.subplots(figsize=size)
    return ax


def _figure(size: tuple[float, float], right: float = 0.84, left: float = 0.01) -> Any:
    """A figure outside pyplot (widgets: nothing to close, never shown twice).

    Margins are fixed (no layout engine): a layout engine makes ``savefig``
    draw the figure twice, and the widgets must redraw in well under 100 ms.
    """
    figure_mod = require("matplotlib.figure")
    fig = figure_mod.Figure(figsize=size)
    fig.subplots_adjust(left=left, right=right, bottom=0.02, top=0.9)
    return fig


def _stack_size(stack: Stack, layout: Mapping[str, Box]) -> tuple[float, float]:
    cols = max((b.x1 for b in layout.values()), default=1.0)
    levels = max((b.level for b in layout.values()), default=0) + 1
    return (max(5.5, 2.6 * cols + 2.4), max(2.6, 0.85 * levels + 0.9))


def _title(stack: Stack, chinese: bool) -> str:
    kind = classify(stack).type
    typ = {
        HypervisorType.TYPE_1: "Type 1",
        HypervisorType.TYPE_2: "Type 2",
        HypervisorType.DEBATED: "Type 1 or 2 (debated)",
        HypervisorType.NONE: "no hypervisor",
    }[kind]
    zh = f" {stack.chinese}" if chinese and stack.chinese else ""
    return f"{stack.name}{zh} — {typ}"


def draw_stack(
    stack: Stack,
    path: Path | None = None,
    ax: Any = None,
    *,
    failed: Iterable[str] = (),
    chinese: bool | None = None,
    title: str | None = None,
    legend: bool = True,
    compact: bool = False,
) -> Any:
    """Draw ``stack`` as boxes by level; optionally an event's path and the layers a fault killed.

    Parameters
    ----------
    stack : Stack
    path : Path, optional
        From :func:`virtcore.arch.event_path` on this stack.  Each step is a
        numbered arrow coloured by its :class:`~virtcore.arch.CrossingKind`
        (upward steps on the left of a box, downward on the right); work
        inside one layer (``emulate``) is a numbered badge on the box.  The
        layers on the path get a thick border.
    ax : matplotlib Axes, optional
        Where to draw; a new figure is made if omitted.
    failed : iterable of str
        Layer names to show crashed or compromised (red, hatched), e.g.
        ``simulate_fault(...).failed_layers``.
    chinese : bool, optional
        Add the notes' Chinese term under each name.  Default: only if a
        font with Chinese glyphs is installed (:func:`cjk_font`).
    title : str, optional
        Default: the stack's name and its type (:func:`virtcore.arch.classify`).
    legend : bool
        Show the crossing kinds of the path.
    compact : bool
        One Chinese line per box (the term before its bracket): the widgets
        use it to redraw faster; their text gives each layer's full term.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ViewError
        If the path or a failed layer does not belong to the stack.

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> from virtcore.arch import hosted, event_path
    >>> s = hosted(guests=1)
    >>> path = event_path(s, "io")
    >>> ax = Figure().subplots()
    >>> draw_stack(s, path, ax=ax) is ax
    True
    >>> len(ax.patches) == len(s.layers) + sum(step.src != step.dst for step in path)
    True
    """
    layout = stack_layout(stack)
    failed_set = set(failed)
    unknown = failed_set - set(layout)
    if unknown:
        raise ViewError(f"no layer {sorted(unknown)} in stack {stack.name!r}")
    if path is not None:
        missing = {s.src for s in path.steps} | {s.dst for s in path.steps}
        missing -= set(layout)
        if missing or path.stack != stack.name:
            raise ViewError(
                f"the path of {path.stack!r} does not fit stack {stack.name!r} "
                f"(layers {sorted(missing)})"
            )
    use_zh = _use_chinese(chinese)
    ax = _new_axes(ax, _stack_size(stack, layout))
    on_path = set(path.layers) if path is not None else set()
    draw = _box_drawer(ax, stack, layout, use_zh, compact)
    with _quiet_glyphs():
        for name in layout:
            draw(name, dead=name in failed_set, on_path=name in on_path)
        _draw_links(ax, stack, layout)
        if path is not None:
            _draw_path(ax, path, layout)
            if legend:
                _path_legend(ax, path)
    top = max((b.level for b in layout.values()), default=0) + _BOX_HEIGHT
    ax.set_xlim(-0.05, max((b.x1 for b in layout.values()), default=1.0) + 0.05)
    ax.set_ylim(-0.15, top + 0.2)
    ax.set_axis_off()
    _set_title(ax, title if title is not None else _title(stack, use_zh))
    return ax


def _set_title(ax: Any, head: str) -> None:
    """The axes' title at a fixed height (``y=1``): no layout pass to place it above the axes."""
    ax.set_title(head, fontsize=10, y=1.0, **_text_kwargs(head))


def _box_drawer(
    ax: Any, stack: Stack, layout: Mapping[str, Box], use_zh: bool, compact: bool
) -> Any:
    """``draw(name, dead=..., on_path=..., border_only=False)``: add a layer's box and label to ax.

    ``draw`` returns the label (a matplotlib Text), or None for a border.

    ``border_only`` adds just the thick border of a box on a path (a widget draws it over the
    plain box it keeps).  Patches are added with ``add_artist``: the axes' limits are set by
    :func:`draw_stack`, so ``add_patch``'s update of the data limits would be wasted work.
    """
    patches = require("matplotlib.patches")
    kinds = {layer.name: layer for layer in stack.layers}
    fig_w = ax.figure.get_figwidth() * ax.get_position().width
    cols = max((b.x1 for b in layout.values()), default=1.0)
    pt_per_col = fig_w * 72 / (cols + 0.1)

    def draw(name: str, *, dead: bool, on_path: bool, border_only: bool = False) -> Any:
        layer, box = kinds[name], layout[name]
        ax.add_artist(patches.FancyBboxPatch(
            (box.x0 + _MARGIN, _bottom(box)),
            box.width - 2 * _MARGIN,
            _top(box) - _bottom(box),
            boxstyle="round,pad=0,rounding_size=0.04",
            facecolor="none" if border_only else (
                _FAILED_FILL if dead else LAYER_COLOURS[layer.kind]),
            edgecolor=_FAILED_EDGE if dead else ("black" if on_path else "0.45"),
            linewidth=2.2 if (on_path or dead) else 0.9,
            hatch="//" if dead else None,
            zorder=1.5 if box.inset_of else 1,
        ))
        if border_only:
            return None
        lines = [name + (" ✗" if dead else "")]
        if use_zh and layer.chinese:
            zh = _chinese_lines(layer.chinese)
            lines += zh[:1] if compact else zh
        # the label starts 2 margins into the column, the box ends 1 margin before its end
        size = _label_size(lines, (box.width - 3 * _MARGIN) * pt_per_col * 0.95, 8.5)
        text = "\n".join(lines)
        return ax.text(
            box.x0 + 2 * _MARGIN,
            box.level + _BOX_HEIGHT / 2,
            text,
            ha="left",
            va="center",
            fontsize=size,
            zorder=2.5 if box.inset_of else 2,
            color=_FAILED_EDGE if dead else "black",
            **_text_kwargs(text),
        )

    return draw


def _draw_links(ax: Any, stack: Stack, layout: Mapping[str, Box]) -> None:
    """Dotted lines for relations the stacking does not show (manages; non-adjacent boxes)."""
    for e in stack.edges:
        lo, up = layout[e.lower], layout[e.upper]
        touching = up.level == lo.level + 1 and up.x0 < lo.x1 and lo.x0 < up.x1
        if e.kind is EdgeKind.PART_OF or (touching and e.kind is not EdgeKind.MANAGES):
            continue
        if up.level == lo.level:  # side by side
            continue
        ax.plot(
            [lo.centre, up.centre],
            [_top(lo), _bottom(up)],
            linestyle=":",
            color="0.5",
            linewidth=0.9,
            zorder=0.5,
        )


def _draw_path(ax: Any, path: Path, layout: Mapping[str, Box]) -> None:
    """Numbered arrows: upward steps in lanes left of a column's middle, downward ones right."""
    patches = require("matplotlib.patches")
    lanes: Counter[tuple[bool, object]] = Counter()
    badges: Counter[str] = Counter()
    gap = 1.0 - _BOX_HEIGHT
    for i, step in enumerate(path.steps, 1):
        colour = CROSSING_COLOURS[step.kind]
        label = f"{i}" + (f" ×{step.count}" if step.count != 1 else "")
        src, dst = layout[step.src], layout[step.dst]
        if step.src == step.dst:
            k = badges[step.src]
            badges[step.src] += 1
            ax.text(
                src.x1 - 2 * _MARGIN, _top(src) - 0.05 - 0.17 * k,
                f"{label} {step.kind.value}", ha="right", va="top", fontsize=6.5,
                color="white", zorder=6,
                bbox={"boxstyle": "round,pad=0.2", "fc": colour, "ec": colour},
            )
            continue
        up = dst.level > src.level
        if dst.level == src.level:  # side by side: a horizontal arrow
            k = lanes[(up, frozenset((step.src, step.dst)))]
            lanes[(up, frozenset((step.src, step.dst)))] += 1
            y = src.level + _BOX_HEIGHT * (0.25 + 0.12 * k)
            right = dst.x0 >= src.x1
            start = (src.x1 - _MARGIN if right else src.x0 + _MARGIN, y)
            end = (dst.x0 + _MARGIN if right else dst.x1 - _MARGIN, y)
            label_at = ((start[0] + end[0]) / 2, y)
        else:
            side = -1.0 if up else 1.0
            lo, hi = max(src.x0, dst.x0), min(src.x1, dst.x1)
            if hi - lo > 6 * _MARGIN:  # the boxes overlap across: a vertical arrow
                key: object = round(lo + 0.62 * (hi - lo), 3)
                k = lanes[(up, key)]
                lanes[(up, key)] += 1
                x = lo + 0.62 * (hi - lo) + side * (0.03 + 0.045 * k) * min(hi - lo, 1.0)
                x = min(max(x, lo + 2 * _MARGIN), hi - 2 * _MARGIN)
                sx = dx = x
            else:  # no overlap: a slanted arrow between the boxes' middles
                key = frozenset((step.src, step.dst))
                k = lanes[(up, key)]
                lanes[(up, key)] += 1
                off = side * (0.03 + 0.045 * k)
                sx = _clamp(src.centre + off * min(src.width, 1.0), src)
                dx = _clamp(dst.centre + off * min(dst.width, 1.0), dst)
            sy = _top(src) if up else _bottom(src)
            dy = _bottom(dst) if up else _top(dst)
            start, end = (sx, sy), (dx, dy)
            ly = sy + (gap / 2 if up else -gap / 2) + (0.05 if k % 2 else -0.05) * side
            label_at = (sx + (dx - sx) * (ly - sy) / (dy - sy), ly)
        ax.add_artist(  # not add_patch: the limits are set, no data-limit update
            patches.FancyArrowPatch(
                start, end, arrowstyle="-|>", mutation_scale=11, color=colour,
                linewidth=1.6, zorder=4, shrinkA=0, shrinkB=0,
            )
        )
        ax.text(
            *label_at, label, ha="center", va="center", fontsize=6.5, color=colour, zorder=5,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": colour, "lw": 0.8},
        )


def _clamp(x: float, box: Box) -> float:
    return min(max(x, box.x0 + 2 * _MARGIN), box.x1 - 2 * _MARGIN)


def _path_legend(ax: Any, path: Path) -> None:
    lines = require("matplotlib.lines")
    seen: list[CrossingKind] = []
    for s in path.steps:
        if s.kind not in seen:
            seen.append(s.kind)
    handles = [
        lines.Line2D([], [], color=CROSSING_COLOURS[k], linewidth=2.5, label=k.value)
        for k in seen
    ]
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7,
        frameon=False, title="crossing", title_fontsize=7,
    )


# ---------------------------------------------------------------------------
# costs


Comparison = Sequence[tuple[str, float]] | Mapping[str, float]


def cost_rows(
    mix: Mapping[Any, float],
    model: CostModel = DEFAULT_MODEL,
    hardware_assist: bool = False,
    *,
    stacks: Sequence[Stack] | None = None,
) -> list[tuple[str, float, dict[CrossingKind, float]]]:
    """Cost of ``mix`` per event in each architecture, cheapest first, split by crossing kind.

    Rows ``(name, total, {kind: cost})``.  The mix is normalised to fractions,
    so a total is a cost per event; the parts of a row sum to its total, and
    the totals are those of :func:`virtcore.arch.compare_architectures` for
    the normalised mix.
    Without hardware assist the hybrid stack is left out (it needs VT-x/AMD-V).

    >>> from virtcore.arch import compare_architectures
    >>> rows = cost_rows({"io": 0.2, "compute": 0.8})
    >>> [(n, t) for n, t, _ in rows] == compare_architectures({"io": 0.2, "compute": 0.8})
    True
    >>> round(rows[-1][2][CrossingKind.WORLD_SWITCH])
    1200
    """
    weights = normalize_mix(mix)
    chosen = (
        tuple(stacks)
        if stacks is not None
        else tuple(s for s in all_stacks() if hardware_assist or not s.requires_hardware_assist)
    )
    rows = []
    for s in chosen:
        parts: dict[CrossingKind, float] = {}
        for ev, w in weights.items():
            if w:
                p = event_path(s, ev, hardware_assist=hardware_assist)
                for kind, c in cost_breakdown(p, model).items():
                    parts[kind] = parts.get(kind, 0) + w * c
        total = workload_cost(s, weights, model, hardware_assist=hardware_assist)
        rows.append((s.name, total, parts))
    return sorted(rows, key=lambda r: r[1])


def plot_costs(
    data: Comparison | Sweep,
    ax: Any = None,
    *,
    breakdown: Mapping[str, Mapping[CrossingKind, float]] | None = None,
    reference: tuple[str, float] | None = None,
    title: str | None = None,
    legend: bool = True,
) -> Any:
    """Bar chart of a comparison, or line plot of an ordering sweep with its crossovers.

    Parameters
    ----------
    data : list of (name, cost), mapping name → cost, or Sweep
        A comparison from :func:`virtcore.arch.compare_architectures`, or a
        :class:`~virtcore.arch.Sweep` from :func:`virtcore.arch.ordering_sweep`.
    ax : matplotlib Axes, optional
    breakdown : mapping name → {CrossingKind: cost}, optional
        Stack each bar by crossing kind (e.g. from :func:`cost_rows`).
    reference : (label, cost), optional
        A dashed horizontal line, e.g. ``("native", 530.0)``.
    title : str, optional
    legend : bool
        Show the crossing kinds of a breakdown, or the sweep's configurations.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> from virtcore.arch import compare_architectures, ordering_sweep, assist_configs, bare_metal
    >>> ax = plot_costs(compare_architectures({"io": 1}), ax=Figure().subplots())
    >>> [t.get_text() for t in ax.get_xticklabels()]
    ['os-level', 'bare-metal', 'hosted']
    >>> s = ordering_sweep("privileged_instruction", base={"syscall": 1},
    ...                    configs=assist_configs(bare_metal()))
    >>> ax = plot_costs(s, ax=Figure().subplots())
    >>> len(ax.get_lines()) == len(s.labels) + len(s.crossovers)
    True
    """
    if isinstance(data, Sweep):
        return _plot_sweep(data, ax, title, legend)
    rows = list(data.items()) if isinstance(data, Mapping) else [(n, c) for n, c in data]
    if not rows:
        raise ViewError("nothing to plot: the comparison is empty")
    ax = _new_axes(ax, (6.5, 3.2))
    names = [n for n, _ in rows]
    xs = list(range(len(rows)))
    # one PolyCollection of rectangles: much faster to draw than a Rectangle per segment
    polys: list[list[tuple[float, float]]] = []
    colours: list[str] = []
    used: list[CrossingKind] = []
    half = 0.3
    if breakdown:
        bottoms = [0.0] * len(rows)
        for kind in CrossingKind:
            heights = [float(breakdown.get(n, {}).get(kind, 0.0)) for n in names]
            if not any(heights):
                continue
            used.append(kind)
            for x, b, h in zip(xs, bottoms, heights):
                if h:
                    top_ = b + h
                    polys.append([(x - half, b), (x + half, b), (x + half, top_), (x - half, top_)])
                    colours.append(CROSSING_COLOURS[kind])
            bottoms = [b + h for b, h in zip(bottoms, heights)]
    else:
        for x, (_, c) in zip(xs, rows):
            polys.append([(x - half, 0), (x + half, 0), (x + half, c), (x - half, c)])
            colours.append("#6baed6")
    collections = require("matplotlib.collections")
    ax.add_collection(collections.PolyCollection(polys, facecolors=colours, edgecolors="none"))
    if used and legend:
        lines = require("matplotlib.lines")
        handles = [
            lines.Line2D([], [], color=CROSSING_COLOURS[k], linewidth=6, label=k.value)
            for k in used
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7,
                  frameon=False, title="crossing", title_fontsize=7)
    top = max(c for _, c in rows)
    for x, (_, c) in zip(xs, rows):
        ax.text(x, c + top * 0.01, f"{c:,.4g}", ha="center", va="bottom", fontsize=8)
    if reference is not None:
        ax.axhline(reference[1], color="0.3", linestyle="--", linewidth=1)
        ax.text(1.01, reference[1], f"{reference[0]}\n{reference[1]:,.4g}",
                transform=ax.get_yaxis_transform(), va="center", ha="left", fontsize=8,
                color="0.3")
    ax.set_xticks(xs, names)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.yaxis.set_major_locator(require("matplotlib.ticker").MaxNLocator(4))
    ax.set_ylabel("cost per event (teaching units)")
    ax.set_ylim(0, top * 1.15 if top > 0 else 1)
    if title != "":
        ax.set_title(title or "cost of the mix, cheapest first", fontsize=10)
    return ax


def _plot_sweep(sweep: Sweep, ax: Any, title: str | None, legend: bool) -> Any:
    ax = _new_axes(ax, (6.5, 3.4))
    for label, costs in zip(sweep.labels, sweep.costs):
        ax.plot(sweep.fractions, costs, marker="o", markersize=3, label=label)
    for c in sweep.crossovers:
        ax.axvline(c.fraction, color="0.35", linestyle="--", linewidth=1)
        ax.annotate(
            f"{c.a}\n= {c.b}\nat {c.fraction:.3g}", (c.fraction, ax.get_ylim()[1]),
            xytext=(3, -3), textcoords="offset points", va="top", fontsize=7, color="0.25",
        )
    base = ", ".join(f"{e.value}" for e, _ in sweep.base)
    ax.set_xlabel(f"share of {sweep.vary.value} in the mix (rest: {base})")
    ax.set_ylabel("cost per event (teaching units)")
    ax.set_xlim(0, 1)
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    ax.set_title(title or f"when does the ordering change? ({sweep.vary.value} sweep)",
                 fontsize=10)
    return ax


# ---------------------------------------------------------------------------
# the explorers: pure view functions, then thin widgets around them


def _png(fig: Any, dpi: int = 72) -> bytes:
    """The figure as PNG bytes; light compression: encoding at the default level costs ~15 ms."""
    buf = io.BytesIO()
    with _quiet_glyphs():
        fig.savefig(buf, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})
    return buf.getvalue()


#: The resolution of a widget's picture (what :func:`_png` renders at).
_WIDGET_DPI = 72


def _canvas_png(canvas: Any) -> bytes:
    """What an Agg canvas holds now, as PNG bytes (lightly compressed, as :func:`_png` does).

    The widgets' figures are opaque (white background), so the alpha channel is dropped.
    """
    image = require("PIL.Image")
    pixels = canvas.buffer_rgba()
    height, width = pixels.shape[:2]
    buf = io.BytesIO()
    rgba = image.frombuffer("RGBA", (width, height), pixels, "raw", "RGBA", 0, 1)
    rgba.convert("RGB").save(buf, format="png", compress_level=1)  # opaque: no alpha to encode
    return buf.getvalue()


def _widget_figure(size: tuple[float, float], **margins: float) -> tuple[Any, Any]:
    """A figure a widget keeps, with its own Agg canvas: ``(figure, canvas)``."""
    backend = require("matplotlib.backends.backend_agg")
    fig = _figure(size, **margins)
    fig.set_dpi(_WIDGET_DPI)
    return fig, backend.FigureCanvasAgg(fig)


def _message_figure(message: str, size: tuple[float, float] = (6.5, 2.0)) -> Any:
    fig = _figure(size)
    ax = fig.subplots()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=10, wrap=True)
    ax.set_axis_off()
    return fig


def _overhead(path: Path, model: CostModel) -> float:
    return sum(model.step_cost(s) for s in path.steps if s.kind.is_virtualization_overhead)


@dataclass(frozen=True)
class _Scene:
    """One choice of a stack explorer, as data: the stack, what is marked on it, the words.

    ``path`` is drawn as numbered arrows and ``failed`` layers in red; ``title`` None is
    the stack's own (:func:`draw_stack`).  :meth:`figure` draws it on a new figure;
    a widget draws it faster over its kept picture of the stack (:class:`_StackCanvas`).
    """

    stack: Stack
    text: str
    path: Path | None = None
    failed: tuple[str, ...] = ()
    title: str | None = None

    def figure(self) -> Any:
        """A new figure (outside pyplot) with the scene drawn by :func:`draw_stack`."""
        fig = _figure(_stack_size(self.stack, stack_layout(self.stack)), right=0.99)
        draw_stack(self.stack, self.path, fig.subplots(), failed=self.failed, compact=True,
                   legend=False, title=self.title)  # the widget's text has the colour key
        return fig


class _StackCanvas:
    """A stack's picture kept by a widget: the plain stack rendered once, each scene drawn over it.

    Rendering a whole figure per control change spends most of a widget's time on text. Here the
    part that never changes — every box in its ordinary state, the dotted links — is rendered
    once and saved; a scene restores that background and draws only what differs from it
    (matplotlib's blitting): a box on the path gets its thick border, the path its arrows, the
    scene its title. A failed box is copied, pixel for pixel, from a second picture of the stack
    with every box failed (made when a scene first needs it), so its label is not rendered again;
    a failed box whose inset box did not fail, or whose label would not fit the copy, is drawn
    anew instead. The picture is the one
    :meth:`_Scene.figure` gives (a test compares the pixels).

    >>> scene = _explorer_scene("hosted", "io", False)
    >>> canvas = _StackCanvas(scene.stack)
    >>> canvas.png(scene).startswith(b"\\x89PNG")
    True
    >>> len(canvas.ax.get_children()) == canvas.children  # what a scene drew is gone again
    True
    """

    #: Pixels around a box that its copy takes along: the thick border and its anti-aliasing
    #: (boxes are at least ~15 px apart, so no neighbour is copied).
    PAD = 3

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.layout = stack_layout(stack)
        self.use_zh = _use_chinese(None)
        self.fig, self.canvas = _widget_figure(_stack_size(stack, self.layout), right=0.99)
        self.ax = self.fig.subplots()
        draw_stack(stack, None, self.ax, compact=True, title="", chinese=self.use_zh)
        with _quiet_glyphs():
            self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(self.fig.bbox)
        self.children = len(self.ax.get_children())
        self.title_font = self.ax.title.get_fontproperties().copy()
        self._all_failed: Any = None
        self._label_inside: dict[str, bool] = {}

    def _draw_added(self, add: Any, prepare: Any) -> None:
        """``add()`` adds artists to the axes, ``prepare()`` the pixels; draw them, remove them."""
        ax = self.ax
        before = set(map(id, ax.get_children()))
        with _quiet_glyphs():
            add()
            new = [a for a in ax.get_children() if id(a) not in before]
            prepare()
            for artist in sorted(new, key=lambda a: a.get_zorder()):  # stable: insertion order
                ax.draw_artist(artist)
            if ax.title.get_text():
                ax.draw_artist(ax.title)
        for artist in new:
            artist.remove()
        ax.title.set_text("")
        ax.title.set_fontproperties(self.title_font)  # the next title starts from the default

    def _failed_pixels(self) -> Any:
        """The stack with every box failed, as an array of pixels (rendered on first use)."""
        if self._all_failed is None:
            np = require("numpy")
            draw = _box_drawer(self.ax, self.stack, self.layout, self.use_zh, compact=True)

            def add() -> None:
                renderer = self.canvas.get_renderer()
                height = self.canvas.get_width_height()[1]
                for name in self.layout:
                    extent = draw(name, dead=True, on_path=False).get_window_extent(renderer)
                    rows, cols = self._rows_cols(name)
                    self._label_inside[name] = (
                        cols.start <= extent.x0 and extent.x1 <= cols.stop
                        and rows.start <= height - extent.y1 and height - extent.y0 <= rows.stop)

            self._draw_added(add, lambda: self.canvas.restore_region(self.background))
            self._all_failed = np.array(self.canvas.buffer_rgba())
        return self._all_failed

    def _rows_cols(self, name: str) -> tuple[slice, slice]:
        """The pixels of a box (rows from the top), with :attr:`PAD` around it."""
        box = self.layout[name]
        (x0, y0), (x1, y1) = self.ax.transData.transform(
            [(box.x0 + _MARGIN, _bottom(box)), (box.x1 - _MARGIN, _top(box))])
        height, width = self.canvas.get_width_height()[::-1]
        pad = self.PAD
        rows = slice(max(0, int(height - y1) - pad), min(height, int(height - y0) + pad + 1))
        cols = slice(max(0, int(x0) - pad), min(width, int(x1) + pad + 1))
        return rows, cols

    def png(self, scene: _Scene) -> bytes:
        """The scene over the kept stack, as PNG bytes."""
        if scene.stack != self.stack:
            raise ViewError(f"a scene of {scene.stack.name!r} on the canvas of {self.stack.name!r}")
        ax, layout = self.ax, self.layout
        on_path = set(scene.path.layers) if scene.path is not None else set()
        failed = set(scene.failed)
        insets = {n: [m for m, b in layout.items() if b.inset_of == n] for n in failed}
        all_failed: Any = self._failed_pixels() if failed else None
        copied = {n for n in failed if layout[n].inset_of is None and self._label_inside[n]
                  and all(m in failed for m in insets[n])}
        copied_along = {m for n in copied for m in insets[n]}  # failed insets of a copied box
        redrawn = failed - copied - copied_along
        redrawn |= {m for n in redrawn for m in insets.get(n, ())}
        draw = _box_drawer(ax, self.stack, layout, self.use_zh, compact=True)

        def draw_scene() -> None:
            for name in layout:  # in draw_stack's order
                if name in redrawn:
                    draw(name, dead=name in failed, on_path=name in on_path)
                elif name in on_path and name not in copied:
                    draw(name, dead=False, on_path=True, border_only=True)
            if scene.path is not None:
                _draw_path(ax, scene.path, layout)
            _set_title(ax, scene.title if scene.title is not None
                       else _title(self.stack, self.use_zh))

        def prepare() -> None:
            self.canvas.restore_region(self.background)
            if copied:
                pixels = require("numpy").asarray(self.canvas.buffer_rgba())
                for name in copied:
                    rows, cols = self._rows_cols(name)
                    pixels[rows, cols] = all_failed[rows, cols]

        self._draw_added(draw_scene, prepare)
        return _canvas_png(self.canvas)


def _stack_renderer() -> Any:
    """``render(scene) -> PNG bytes``, keeping one :class:`_StackCanvas` per stack it meets."""
    canvases: dict[Stack, _StackCanvas] = {}

    def render(scene: _Scene) -> bytes:
        if scene.stack not in canvases:
            canvases[scene.stack] = _StackCanvas(scene.stack)
        return canvases[scene.stack].png(scene)

    return render


@functools.lru_cache(maxsize=256)
def _explorer_scene(
    arch: Architecture | str,
    event: Event | str,
    assist: bool,
    model: CostModel = DEFAULT_MODEL,
    guests: int = 2,
) -> _Scene:
    """The scene of :func:`_explorer_view` (pure, cached: a widget meets the same choices again).

    >>> scene = _explorer_scene("bare-metal", "syscall", True)
    >>> scene.path.count("trap"), "vm_exit" in scene.text
    (0, False)
    """
    stack = stack_for(arch, guests)
    ev = Event(event)
    kind = classify(stack)
    head = (
        f"{stack.name} ({stack.chinese}) · {ev.value} ({ev.chinese}) · "
        f"{'with' if assist else 'without'} hardware assist · {kind.type.value}"
    )
    try:
        path = event_path(stack, ev, hardware_assist=assist)
    except ArchitectureError as exc:
        return _Scene(stack, f"{head}\n\n{exc}")
    total = path_cost(path, model)
    over = _overhead(path, model)
    share = f"{over / total:.0%}" if total else "—"
    names = {layer.name: layer.chinese for layer in stack.layers}
    visited = " · ".join(f"{n} {names[n]}" for n in dict.fromkeys(path.layers))
    text = (
        f"{head}\n{ev.description}\nlayers on the path: {visited}\n\n{path.describe(model)}\n"
        f"  virtualization overhead: {over:g} of {total:g} ({share}) — the steps that exist "
        "only because of virtualization"
    )
    return _Scene(stack, text, path=path)


def _explorer_view(
    arch: Architecture | str,
    event: Event | str,
    assist: bool,
    model: CostModel = DEFAULT_MODEL,
    *,
    guests: int = 2,
) -> tuple[Any, str]:
    """What :func:`architecture_explorer` shows: ``(Figure, text)`` for one choice.

    The figure is the stack with the event's path; the text is the path's
    steps with their costs, the share that is virtualization overhead, and
    the stack's type.  A hybrid stack without hardware assist has no path
    (KVM needs VT-x/AMD-V): the figure shows the bare stack and the text says why.

    >>> fig, text = _explorer_view("hosted", "io", False)
    >>> "world_switch" in text and "total 13000" in text
    True
    >>> fig, text = _explorer_view("hybrid", "io", False)
    >>> "needs hardware virtualization" in text
    True
    """
    scene = _explorer_scene(arch, event, assist, model, guests)
    return scene.figure(), scene.text


_MIX_EVENTS = (
    Event.COMPUTE, Event.SYSCALL, Event.PRIVILEGED_INSTRUCTION, Event.IO, Event.TLB_MISS,
)
_EMPTY_MIX = "Set at least one slider above 0: the mix is empty."

#: ``(rows, native cost, text)`` of a mix: what the cost chart shows.
_CostScene = tuple[tuple[tuple[str, float, dict[CrossingKind, float]], ...], float, str]


@functools.lru_cache(maxsize=256)
def _overhead_scene(
    weights: tuple[tuple[Any, float], ...], assist: bool, model: CostModel = DEFAULT_MODEL
) -> _CostScene | None:
    """The rows, native cost and text of :func:`_overhead_view` (pure, cached); None: empty mix.

    >>> rows, native_cost, text = _overhead_scene((("compute", 0.9), ("io", 0.1)), False)
    >>> [name for name, _, _ in rows], rows[0][1] == native_cost  # containers: native speed
    (['os-level', 'bare-metal', 'hosted'], True)
    """
    if not any(float(w) > 0 for _, w in weights):
        return None
    mix = normalize_mix({k: float(v) for k, v in weights if float(v) > 0})
    rows = cost_rows(mix, model, assist)
    base = workload_cost(native(), mix, model)
    ranking = _ranking([(n, t) for n, t, _ in rows])
    lines = [
        f"cost per event of the mix, {'with' if assist else 'without'} hardware assist, "
        "by crossing kind (teaching units)",
        "mix: " + ", ".join(f"{e.value} {w:.0%}" for e, w in mix.items()),
        f"ranking: {ranking}",
    ]
    for n, t, _ in rows:
        lines.append(f"  {n:<11} {t:>10,.1f}   ×{t / base:.2f} of native" if base else f"  {n} {t}")
    lines.append(f"  {'native':<11} {base:>10,.1f}")
    if not assist:
        lines.append("hybrid (KVM) is left out: it needs VT-x / AMD-V (S1.5). Tick the box.")
    return tuple(rows), base, "\n".join(lines)


_COST_SIZE = (6.4, 3.0)
_COST_MARGINS = {"right": 0.89, "left": 0.03}


def _draw_cost_scene(fig: Any, ax: Any, rows: Sequence[tuple[str, float, Any]],
                     base: float) -> None:
    """The explorer's chart: :func:`plot_costs` without its axes, each bar named underneath.

    Drawing the axes (ticks, their labels, the label positions) was two thirds of a redraw;
    the value on each bar and the labelled native line carry the numbers instead.
    """
    fig.subplots_adjust(bottom=0.1, top=0.97)
    plot_costs(
        [(n, t) for n, t, _ in rows],
        ax,
        breakdown={n: parts for n, _, parts in rows},
        reference=("native", base),
        title="",  # the text says what the chart is: a title costs a layout pass
        legend=False,  # the text shows the colour key
    )
    ax.xaxis.set_visible(False)
    ax.yaxis.set_visible(False)
    under = ax.get_xaxis_transform()  # x in data, y in axes coordinates
    for x, (name, _, _) in enumerate(rows):
        ax.text(x, -0.03, name, transform=under, ha="center", va="top", fontsize=9)


def _overhead_view(
    weights: Mapping[Any, float], assist: bool, model: CostModel = DEFAULT_MODEL
) -> tuple[Any, str]:
    """What :func:`overhead_explorer` shows for a mix: ``(Figure, text)``.

    The figure: stacked bars of the mix's cost per event in each
    architecture, cheapest first, with the native machine as a dashed line.
    The text: the normalised mix, the ranking and the slowdown over native.
    An all-zero mix gives a message instead of an error.

    >>> fig, text = _overhead_view({"compute": 0.9, "io": 0.1}, False)
    >>> text.splitlines()[2]
    'ranking: os-level < bare-metal < hosted'
    >>> _overhead_view({"io": 0}, True)[1]
    'Set at least one slider above 0: the mix is empty.'
    """
    scene = _overhead_scene(tuple(weights.items()), assist, model)
    if scene is None:
        return _message_figure("the mix is empty"), _EMPTY_MIX
    rows, base, text = scene
    fig = _figure(_COST_SIZE, **_COST_MARGINS)
    _draw_cost_scene(fig, fig.subplots(), rows, base)
    return fig, text


@functools.lru_cache(maxsize=1)
def _empty_mix_png() -> bytes:
    return _png(_message_figure("the mix is empty"))


class _CostChart:
    """The cost chart a widget keeps: one figure and axes, its bars and labels replaced per mix.

    Making a new figure and axes per change costs about a third of a redraw; the kept
    figure also keeps its renderer, whose cache of text sizes then serves every redraw.

    >>> chart = _CostChart()
    >>> rows, base, _ = _overhead_scene((("io", 1.0),), True)
    >>> chart.png(rows, base) == chart.png(rows, base)
    True
    """

    def __init__(self) -> None:
        self.fig, self.canvas = _widget_figure(_COST_SIZE, **_COST_MARGINS)
        self.ax = self.fig.subplots()

    def png(self, rows: Sequence[tuple[str, float, Any]], base: float) -> bytes:
        """The chart of ``rows`` (with the native cost ``base``) as PNG bytes."""
        ax = self.ax
        for artist in [*ax.collections, *ax.texts, *ax.lines]:
            artist.remove()
        _draw_cost_scene(self.fig, ax, rows, base)
        with _quiet_glyphs():
            self.canvas.draw()
        return _canvas_png(self.canvas)


def _ranking(rows: Sequence[tuple[str, float]]) -> str:
    out = rows[0][0]
    for (_, a), (n, b) in itertools.pairwise(rows):
        same = abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
        out += (" = " if same else " < ") + n
    return out


@functools.lru_cache(maxsize=256)
def _isolation_scene(
    arch: Architecture | str, fault: Fault | str, start: int = 1, guests: int = 3
) -> _Scene:
    """The scene of :func:`_isolation_view` (pure, cached).

    >>> _isolation_scene("os-level", "kernel_crash").failed
    ('host kernel', 'container manager', 'ct1 app', 'ct2 app', 'ct3 app')
    """
    stack = stack_for(arch, guests)
    f = Fault(fault)
    if not 1 <= start <= len(stack.guests):
        raise ViewError(f"start must be 1..{len(stack.guests)}, got {start}")
    origin = stack.guests[start - 1]
    try:
        out = simulate_fault(stack, f, in_=origin)
    except ArchitectureError as exc:
        return _Scene(stack, f"{f.value} in {origin} on {stack.name}: not possible here — {exc}")
    shared = stack.role("root").name
    lines = [
        f"{f.value} started in {origin} on {stack.name} ({stack.chinese})",
        "failed layers: "
        + ", ".join(f"{n} {stack.layer(n).chinese}" for n in out.failed_layers),
        f"affected: {', '.join(out.affected) or 'none'} ({len(out.affected)} of "
        f"{len(stack.guests)}) — {out.effect}",
        f"unaffected: {', '.join(out.survivors) or 'none'}",
    ]
    if out.host_affected:
        lines.append(f"the most privileged layer ({shared}) failed: every guest on it goes too")
    elif len(out.affected) == 1:
        lines.append("the fault stayed inside one guest: it has a kernel (or process) of its own")
    return _Scene(stack, "\n".join(lines), failed=tuple(out.failed_layers),
                  title=f"{stack.name}: {f.value} started in {origin}")


def _isolation_view(
    arch: Architecture | str, fault: Fault | str, start: int = 1, *, guests: int = 3
) -> tuple[Any, str]:
    """What :func:`isolation_explorer` shows: ``(Figure, text)`` for a fault in guest ``start``.

    The figure: the stack with the failed layers in red.  The text: which
    guests the fault reached and which kept running, and why.  A fault the
    architecture cannot have (no VMM process on bare metal) gives a message.

    >>> _, text = _isolation_view("os-level", "kernel_crash")
    >>> "affected: ct1, ct2, ct3 (3 of 3)" in text
    True
    >>> _, text = _isolation_view("bare-metal", "kernel_crash", 2)
    >>> "affected: vm2 (1 of 3)" in text
    True
    """
    scene = _isolation_scene(arch, fault, start, guests)
    return scene.figure(), scene.text


_KIND_WORD = re.compile(r"\b(" + "|".join(k.value for k in CrossingKind) + r")\b")


def _html(text: str, key: bool = True) -> str:
    """The view's text as HTML: crossing kinds in their colours, then a colour key.

    >>> "color:#9467bd" in _html("  4  a → b  world_switch  3000")
    True
    """
    def paint(m: re.Match[str]) -> str:
        colour = CROSSING_COLOURS[CrossingKind(m.group(1))]
        return f'<b style="color:{colour}">{m.group(1)}</b>'

    body = _KIND_WORD.sub(paint, esc(text))
    legend = " ".join(
        f'<span style="color:{c}">■ {k.value}</span>' for k, c in CROSSING_COLOURS.items()
    )
    return (
        '<pre style="font-size:12px;line-height:1.3;margin:0;white-space:pre-wrap">'
        f"{body}</pre>" + (f'<div style="font-size:11px">colours: {legend}</div>' if key else "")
    )


def _panel(render: Any, controls: Mapping[str, Any], *, key: bool = True) -> Any:
    """A VBox of controls, image and text; ``render()`` gives (PNG bytes, text) for the controls."""
    widgets = require("ipywidgets")
    image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
    text = widgets.HTML()

    def update(_change: Any = None) -> None:
        try:
            png, words = render()
            image.value = png
        except ArchitectureError as exc:  # misuse of the library: show it, do not crash
            words = f"cannot show this choice: {exc}"
        text.value = _html(words, key)

    for control in controls.values():
        control.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox(list(controls.values())), image, text])
    box.controls = dict(controls)
    box.image = image
    box.text = text
    box.update = update
    return box


def architecture_explorer(model: CostModel = DEFAULT_MODEL) -> Any:
    """Pick an architecture, an event and hardware assist; see the event's path and its cost.

    Each change calls :func:`_explorer_view` and shows its figure and text.

    Parameters
    ----------
    model : CostModel
        The prices used for the text (e.g. one changed with ``dataclasses.replace``).

    Returns
    -------
    ipywidgets.VBox
        With ``controls`` (``"architecture"``, ``"event"``, ``"assist"``),
        ``image``, ``text`` and ``update()``.

    Examples
    --------
    >>> w = architecture_explorer()
    >>> w.controls["architecture"].value = "bare-metal"
    >>> w.controls["event"].value = "privileged_instruction"
    >>> "trap" in w.text.value and len(w.image.value) > 0
    True
    >>> w.controls["assist"].value = True
    >>> "vm_exit" in w.text.value
    True
    """
    widgets = require("ipywidgets")
    arch = widgets.Dropdown(
        options=[(f"{a.value} {a.chinese}", a.value) for a in Architecture],
        value=Architecture.HOSTED.value, description="architecture",
    )
    event = widgets.Dropdown(
        options=[(f"{e.value} {e.chinese}", e.value) for e in _MIX_EVENTS],
        value=Event.IO.value, description="event",
    )
    assist = widgets.Checkbox(value=False, description="hardware assist (VT-x / AMD-V)")
    controls = {"architecture": arch, "event": event, "assist": assist}
    draw = _stack_renderer()

    def render() -> tuple[bytes, str]:
        scene = _explorer_scene(arch.value, event.value, assist.value, model)
        return draw(scene), scene.text

    return _panel(render, controls)


def overhead_explorer(model: CostModel = DEFAULT_MODEL) -> Any:
    """Sliders for a workload mix and a hardware-assist box; costs per architecture and ranking.

    The five sliders are weights (normalised to fractions) of computation,
    system calls, privileged instructions, I/O requests and TLB misses.
    Each change calls :func:`_overhead_view`.

    Returns
    -------
    ipywidgets.VBox
        With ``controls`` (the event names and ``"assist"``), ``image``,
        ``text`` and ``update()``.

    Examples
    --------
    >>> w = overhead_explorer()
    >>> w.controls["io"].value = 0.0
    >>> w.controls["syscall"].value = 0.0
    >>> "ranking: hosted = bare-metal = os-level" in w.text.value
    False
    >>> w.controls["assist"].value = True
    >>> "hybrid" in w.text.value
    True
    """
    widgets = require("ipywidgets")
    defaults = {
        Event.COMPUTE: 0.90, Event.SYSCALL: 0.04, Event.PRIVILEGED_INSTRUCTION: 0.02,
        Event.IO: 0.02, Event.TLB_MISS: 0.02,
    }
    sliders = {
        e.value: widgets.FloatSlider(
            value=defaults[e], min=0.0, max=1.0, step=0.01, description=e.value.replace("_", " "),
            continuous_update=False, readout_format=".2f",
            style={"description_width": "130px"}, layout=widgets.Layout(width="360px"),
        )
        for e in _MIX_EVENTS
    }
    assist = widgets.Checkbox(value=False, description="hardware assist (VT-x / AMD-V)")
    controls = {**sliders, "assist": assist}

    chart = _CostChart()

    def render() -> tuple[bytes, str]:
        weights = tuple((k, s.value) for k, s in sliders.items())
        scene = _overhead_scene(weights, assist.value, model)
        if scene is None:
            return _empty_mix_png(), _EMPTY_MIX
        rows, base, text = scene
        return chart.png(rows, base), text

    box = _panel(render, controls)
    # sliders in a column: five on one row do not fit
    box.children = (widgets.VBox([*sliders.values(), assist]), *box.children[1:])
    return box


def isolation_explorer(guests: int = 3) -> Any:
    """Choose an architecture, a fault and the guest it starts in; see who is affected.

    Each change calls :func:`_isolation_view`.

    Returns
    -------
    ipywidgets.VBox
        With ``controls`` (``"architecture"``, ``"fault"``, ``"guest"``),
        ``image``, ``text`` and ``update()``.

    Examples
    --------
    >>> w = isolation_explorer()
    >>> w.controls["architecture"].value = "os-level"
    >>> w.controls["fault"].value = "kernel_exploit"
    >>> "(3 of 3)" in w.text.value
    True
    >>> w.controls["architecture"].value = "hybrid"
    >>> "(1 of 3)" in w.text.value
    True
    """
    widgets = require("ipywidgets")
    arch = widgets.Dropdown(
        options=[(f"{a.value} {a.chinese}", a.value) for a in Architecture],
        value=Architecture.OS_LEVEL.value, description="architecture",
    )
    fault = widgets.Dropdown(
        options=[f.value for f in Fault], value=Fault.KERNEL_CRASH.value, description="fault",
    )
    start = widgets.Dropdown(
        options=[(f"guest {i}", i) for i in range(1, guests + 1)], value=1,
        description="starts in",
    )
    controls = {"architecture": arch, "fault": fault, "guest": start}
    draw = _stack_renderer()

    def render() -> tuple[bytes, str]:
        scene = _isolation_scene(arch.value, fault.value, start.value, guests)
        return draw(scene), scene.text

    return _panel(render, controls, key=False)


# ---------------------------------------------------------------------------
# chapter 1's self-checks (ungraded): generate(rng) -> (text, data); solve(data) by virtcore


def as_name(answer: object) -> str:
    """A name answer, compared without case, spaces, hyphens or underscores.

    >>> as_name(" Type 1 ") == as_name("type1"), as_name("OS-level")
    (True, 'oslevel')
    """
    if not isinstance(answer, str):
        raise AnswerFormatError(f"expected a name in quotes, like 'type 1', got {answer!r}")
    return re.sub(r"[\s_\-]+", "", answer.strip().lower())


def as_fraction(answer: object) -> float:
    """A fraction between 0 and 1, compared to two decimals.

    >>> as_fraction(0.6), as_fraction("0.571")
    (0.6, 0.57)
    """
    if isinstance(answer, bool):
        raise AnswerFormatError(f"expected a number like 0.42, got {answer!r}")
    try:
        value = float(answer)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise AnswerFormatError(f"expected a number like 0.42, got {answer!r}") from None
    return round(value, 2)


def _gen_layers(rng: random.Random) -> tuple[str, dict[str, Any]]:
    arch = rng.choice(list(Architecture))
    n = rng.randint(1, 4)
    what = "containers" if arch is Architecture.OS_LEVEL else "VMs"
    return (
        f"How many layers (boxes) has the {arch.value} stack ({arch.chinese}) with {n} {what}?\n"
        "Count every box: hardware, kernels, hypervisor or VMM processes, managers and apps.\n"
        "(`draw_stack` of `stack_for(...)` shows it, but try to predict first.)",
        {"arch": arch.value, "n": n},
    )


def _solve_layers(data: Mapping[str, Any]) -> int:
    return len(stack_for(data["arch"], data["n"]).layers)


_ASKED_KINDS = (
    CrossingKind.TRAP, CrossingKind.VM_EXIT, CrossingKind.WORLD_SWITCH,
    CrossingKind.CONTEXT_SWITCH, CrossingKind.SYSCALL,
)


def _gen_crossings(rng: random.Random) -> tuple[str, dict[str, Any]]:
    arch = rng.choice([Architecture.HOSTED, Architecture.BARE_METAL, Architecture.HYBRID])
    ev = rng.choice([Event.SYSCALL, Event.PRIVILEGED_INSTRUCTION, Event.IO])
    assist = True if arch is Architecture.HYBRID else rng.random() < 0.5
    # mostly a kind the path has (the count is the point), sometimes any (0 is an answer too)
    present = [k for k in _ASKED_KINDS
               if k in event_path(stack_for(arch), ev, hardware_assist=assist).kinds]
    kind = rng.choice(present if present and rng.random() < 0.8 else list(_ASKED_KINDS))
    return (
        f"An app in vm1 of the {arch.value} stack does one {ev.value} ({ev.chinese}), "
        f"{'with' if assist else 'without'} hardware assist.\n"
        f"How many '{kind.value}' crossings does its path have, there and back? (0 is possible.)",
        {"arch": arch.value, "event": ev.value, "assist": assist, "kind": kind.value},
    )


def _solve_crossings(data: Mapping[str, Any]) -> int:
    p = event_path(stack_for(data["arch"]), data["event"], hardware_assist=data["assist"])
    return p.count(data["kind"])


#: The stacks the driver question asks about (hybrid only with hardware assist).
_DRIVER_STACKS = ("hosted", "bare-metal", "bare-metal (Xen-style)", "os-level", "hybrid")


def _gen_driver(rng: random.Random) -> tuple[str, dict[str, Any]]:
    name = rng.choice(_DRIVER_STACKS)
    stack = stack_for(name)
    layers = ", ".join(f"'{layer.name}'" for layer in stack.layers if layer.guest in (None, "vm1",
                                                                                     "ct1"))
    return (
        f"An app in the first guest of the {name} stack reads a disk block.\n"
        "Whose device driver touches the real disk? Answer with the name of a layer of the "
        f"stack: {layers}.",
        {"stack": name},
    )


def _solve_driver(data: Mapping[str, Any]) -> str:
    stack = stack_for(data["stack"])
    path = event_path(stack, Event.IO, hardware_assist=stack.requires_hardware_assist)
    return next(s.src for s in path if s.kind is CrossingKind.DEVICE)


_ASSIST_EVENTS = (Event.COMPUTE, Event.SYSCALL, Event.PRIVILEGED_INSTRUCTION, Event.IO,
                  Event.TLB_MISS)


def _gen_assist(rng: random.Random) -> tuple[str, dict[str, Any]]:
    name = rng.choice(("hosted", "bare-metal", "bare-metal (Xen-style)"))
    ev = rng.choice(_ASSIST_EVENTS)
    return (
        f"On the {name} stack, the monitor switches from software virtualization (a "
        "deprivileged guest kernel, traps) to VT-x/AMD-V with nested paging.\n"
        f"Does one {ev.value} ({ev.chinese}) of vm1 become 'cheaper', 'dearer', or stay the "
        "'same', under the course's cost model?",
        {"stack": name, "event": ev.value},
    )


def _solve_assist(data: Mapping[str, Any]) -> str:
    stack = stack_for(data["stack"])
    soft = path_cost(event_path(stack, data["event"]))
    hard = path_cost(event_path(stack, data["event"], hardware_assist=True))
    return "cheaper" if hard < soft else "dearer" if hard > soft else "same"


def _gen_isolation(rng: random.Random) -> tuple[str, dict[str, Any]]:
    arch = rng.choice([*Architecture, "bare-metal (Xen-style)"])
    stack = stack_for(arch, 3)
    roles = {Fault.VMM_CRASH: "user_vmm", Fault.BACKEND_CRASH: "backend"}
    faults = [f for f in Fault if f not in roles or stack.has_role(roles[f], stack.guests[0])]
    fault = rng.choice(faults)
    n = rng.randint(2, 5)
    return (
        f"A {stack.name} host runs {n} guests. A {fault.value} starts in the first guest.\n"
        f"How many of the {n} guests are affected (crashed or compromised)?",
        {"arch": stack.name, "fault": fault.value, "n": n},
    )


def _solve_isolation(data: Mapping[str, Any]) -> int:
    stack = stack_for(data["arch"], data["n"])
    return len(simulate_fault(stack, data["fault"], in_=stack.guests[0]).affected)


def _gen_duties(rng: random.Random) -> tuple[str, dict[str, Any]]:
    programs: dict[str, list[str]] = {}
    written: set[int] = set()
    for vm in ("vm1", "vm2"):
        prog = []
        for _ in range(rng.randint(2, 3)):
            block = rng.randint(0, 3)
            written.add(block)
            prog.append(rng.choice(["add", "load"]))
            prog.append(f"disk_write {block} {rng.randint(1, 99)}")
        programs[vm] = prog
    for vm in programs:  # read a block that one of the VMs wrote — maybe only the other one
        programs[vm].append(f"disk_read {rng.choice(sorted(written))}")
    asked = rng.choice(["vm1", "vm2"])
    listing = "\n".join(f"    {vm}: " + "; ".join(p) for vm, p in programs.items())
    return (
        "Two VMs run under the toy hypervisor; each has its own 4-block virtual disk "
        "(blocks 0–3, all 0 at the start).\n" + listing
        + f"\nWhat value does the last instruction of {asked} (its disk_read) get back?",
        {"programs": programs, "vm": asked},
    )


def _solve_duties(data: Mapping[str, Any]) -> int:
    trace = run_duties(data["programs"], seed=0)
    value = trace.inbox(data["vm"])[-1].value
    return int(value) if value is not None else -1


def _gen_type(rng: random.Random) -> tuple[str, dict[str, Any]]:
    p = rng.choice([p for p in PRODUCTS if not p.emulator])
    spelled = rng.choice([p.name, *[a for a in p.aliases if a.startswith(("ctrix", "readhat"))]])
    return (
        f"What type is {spelled}? Answer 'type 1', 'type 2', 'debated' (KVM's case) or 'none' "
        "(no hypervisor).",
        {"product": spelled},
    )


def _solve_type(data: Mapping[str, Any]) -> str:
    return product(data["product"]).hypervisor_type.value


def _gen_kernel(rng: random.Random) -> tuple[str, dict[str, Any]]:
    name = rng.choice(sorted(KERNEL_ON_HARDWARE))
    return (
        f"The notes say a Type 1 hypervisor is 'usually a specially customised Linux' (N2).\n"
        f"Under {name}, which kernel runs directly on the hardware, in the most privileged "
        "mode? Answer 'linux', 'xen', 'vmkernel' or 'hyper-v'.",
        {"product": name},
    )


def _solve_kernel(data: Mapping[str, Any]) -> str:
    return KERNEL_ON_HARDWARE[product(data["product"]).name]


def _gen_can_nest(rng: random.Random) -> tuple[str, dict[str, Any]]:
    known = [p for p in PRODUCTS if p.nesting is not Nesting.UNKNOWN and not p.emulator]
    type1 = [p for p in known if p.hypervisor_type is HypervisorType.TYPE_1]
    others = [p for p in known if p.hypervisor_type is not HypervisorType.TYPE_1]
    picked = rng.sample(type1, min(2, len(type1))) + rng.sample(others, min(2, len(others)))
    rng.shuffle(picked)
    names = [p.name for p in picked]
    return (
        "The notes say Type 2 is the flexible kind that supports nesting (S1.10).\n"
        "Which of these can run a hypervisor inside one of its guests (even experimentally)? "
        "Answer with a list of names:\n    " + ", ".join(names),
        {"products": names},
    )


def _solve_can_nest(data: Mapping[str, Any]) -> list[str]:
    return [n for n in data["products"] if product(n).nesting.possible]


def as_names(answer: object) -> frozenset[str]:
    """A set of names (products, layers), each compared as :func:`as_name` compares.

    >>> sorted(as_names(["VMware ESXi", "xen"]))
    ['vmwareesxi', 'xen']
    """
    if isinstance(answer, str):
        answer = [answer]
    if not isinstance(answer, (list, tuple, set, frozenset)):
        raise AnswerFormatError(f"expected a list of names like ['Xen'], got {answer!r}")
    return frozenset(as_name(a) for a in answer)


def _gen_nesting(rng: random.Random) -> tuple[str, dict[str, Any]]:
    ev = rng.choice([Event.SYSCALL, Event.PRIVILEGED_INSTRUCTION, Event.IO, Event.TLB_MISS])
    level = rng.randint(1, 3)
    return (
        f"Under the default cost model, one {ev.value} of the innermost guest at nesting level "
        f"{level} (L{level}) costs how many times as much as on the native machine?\n"
        "Round to the nearest integer.",
        {"event": ev.value, "level": level},
    )


def _solve_nesting(data: Mapping[str, Any]) -> int:
    return round(nesting_costs(data["level"], data["event"])[data["level"]].slowdown)


_CHECKS = (
    SelfCheck("ch1.layers", 1, _gen_layers, _solve_layers, as_int,
              hint="a VM brings a kernel and an app (plus a VMM or QEMU process when hosted "
                   "or hybrid); a container brings only its apps.",
              covers=("S1.1", "S1.2", "S1.4", "S1.5")),
    SelfCheck("ch1.crossings", 1, _gen_crossings, _solve_crossings, as_int,
              hint="print `event_path` of `stack_for` the architecture, and count.",
              covers=("S1.1", "S1.8")),
    SelfCheck("ch1.driver", 1, _gen_driver, _solve_driver, as_name,
              hint="ESXi's VMkernel drives devices itself; Xen has no device drivers, Domain 0 "
                   "does; a hosted VMM and QEMU ask their host kernel. `event_path` shows the "
                   "'device' step.",
              covers=("S1.2", "S1.8", "S5.3")),
    SelfCheck("ch1.assist", 1, _gen_assist, _solve_assist, as_name,
              hint="with VT-x a guest's system calls go straight to its kernel, but each "
                   "privileged instruction or hypercall is a VM exit and entry, and a TLB miss "
                   "walks two page tables. Compare the two `event_path` results.",
              covers=("S1.5", "S1.10")),
    SelfCheck("ch1.isolation", 1, _gen_isolation, _solve_isolation, as_int,
              hint="what does the fault break: the guest's own kernel or process, or a layer "
                   "every guest runs on or depends on?",
              covers=("S1.4",)),
    SelfCheck("ch1.duties", 1, _gen_duties, _solve_duties, as_int,
              hint="the hypervisor routes each result to the VM that asked, and each VM's "
                   "disk is its own slice: the other VM's writes do not count.",
              covers=("S1.3",)),
    SelfCheck("ch1.type", 1, _gen_type, _solve_type, as_name,
              hint="where does its hypervisor sit: on the hardware, on a host OS, or inside a "
                   "kernel? `products` lists them.",
              covers=("S1.6", "S1.7", "S1.8", "S1.9")),
    SelfCheck("ch1.kernel", 1, _gen_kernel, _solve_kernel, as_name,
              hint="only one of them is a module of an ordinary Linux kernel (N2).",
              covers=("S1.7",)),
    SelfCheck("ch1.can-nest", 1, _gen_can_nest, _solve_can_nest, as_names,
              hint="the nesting column of `products`: Type 1 hypervisors nest too (N7).",
              covers=("S1.10",)),
    SelfCheck("ch1.nesting", 1, _gen_nesting, _solve_nesting, as_int,
              hint="`nesting_costs` has a slowdown column.",
              covers=("S1.10",)),
)

for _check in _CHECKS:
    if _check.qid not in REGISTRY:
        register(_check)
del _check
