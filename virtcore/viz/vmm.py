"""Views of the VMM (:mod:`virtcore.vmm`, chapter 2): lifecycle, migration, traps, the three fixes.

Pure data first, display later.  The library runs VMs, migrates them and
compares techniques; this module only shows what it returns:

- **the lifecycle** (S2.4) — :func:`lifecycle_graph` is the state machine of
  :data:`virtcore.vmm.TRANSITIONS` as a ``networkx.DiGraph``;
  :func:`draw_lifecycle` draws it with the current state highlighted;
  :class:`LifecycleConsole` drives a *live* VM on a
  :class:`~virtcore.vmm.Manager` (two hosts) and catches the typed errors of
  illegal operations; :func:`lifecycle_panel` puts buttons on it.
- **pre-copy live migration** (S2.4) — :func:`plot_precopy` draws the pages
  sent per round; :func:`migration_view` is the pure callback of
  :func:`migration_explorer` (sliders → :func:`~virtcore.vmm.precopy`).
- **trap-and-emulate, one trap at a time** (S1.3) — :func:`trap_trace` runs a
  guest under the VMM once with a *recording* handler table and keeps, for
  every trap or VM exit, the instruction, the handler the table chose, its
  effect on the virtual CPU (virtual IF, virtual control registers,
  registers, pc) and the counts so far; :func:`render_trap_step` shows one
  step; :func:`trap_stepper` walks through them with buttons.
- **the three fixes** — :func:`plot_fix_comparison` draws the traps, exits,
  hypercalls and (teaching-assumption) cost of each technique from
  :func:`~virtcore.vmm.compare_fixes`.

matplotlib, networkx and ipywidgets are imported inside the functions that
need them.  ``benchmarks/bench_ch2_widgets.py`` times every widget callback.

>>> g = lifecycle_graph()
>>> {(s, op): t for s, t, d in g.edges(data=True) for op in d["ops"]} == dict(TRANSITIONS)
True
>>> t = trap_trace("trap")
>>> t.steps[0].instruction, t.steps[0].handler, t.output, t.matches_bare
('wrcr tvec, r1', 'handle_wrcr', 'A', False)
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from virtcore.errors import VirtcoreError
from virtcore.hw.asm import Program, assemble, format_instruction
from virtcore.hw.events import ExitReason, TrapCause
from virtcore.hw.isa import CR, FLAG_IF, REG_NAMES, TABLE, decode
from virtcore.viz import ViewError
from virtcore.viz._lazy import TextView, esc, require, wire_stepper
from virtcore.vmm import (
    POPF_GUEST,
    POPF_GUEST_PV,
    TRANSITIONS,
    FinalState,
    FixComparison,
    HandlerTable,
    Hypervisor,
    Insn,
    Manager,
    PrecopyResult,
    Technique,
    VMState,
    VMStats,
    allowed_ops,
    precopy,
    run_bare,
    run_guest,
)
from virtcore.vmm.bt import CALLOUT as _BT_CALLOUT
from virtcore.vmm.bt import INLINE as _BT_INLINE
from virtcore.vmm.hypervisor import UnknownVMError

__all__ = [
    "DEMO_GUEST",
    "LIFECYCLE_POSITIONS",
    "LifecycleConsole",
    "TrapStep",
    "TrapTrace",
    "draw_lifecycle",
    "lifecycle_graph",
    "lifecycle_panel",
    "migration_explorer",
    "migration_view",
    "plot_fix_comparison",
    "plot_precopy",
    "render_trap_step",
    "trap_stepper",
    "trap_trace",
]

_PRE = '<pre style="font-size:12px;line-height:1.3;margin:0;white-space:pre-wrap">'
_ERROR = "#b00020"
_OK = "#1b5e20"


def _figure(size: tuple[float, float]) -> Any:
    """A figure outside pyplot: widgets render it to PNG; nothing to close, no layout pass."""
    figure_mod = require("matplotlib.figure")
    return figure_mod.Figure(figsize=size)


def _png(fig: Any, dpi: int = 72) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _new_axes(ax: Any, size: tuple[float, float]) -> Any:
    if ax is not None:
        return ax
    plt = require("matplotlib.pyplot")
    _, ax = plt.subplots(figsize=size)
    return ax


def _pre(text: str, colour: str | None = None, *, wrap: bool = True) -> str:
    style = f' style="color:{colour}"' if colour else ""
    head = _PRE if wrap else _PRE.replace("pre-wrap", "pre;overflow-x:auto")
    return f"{head}<span{style}>{esc(text)}</span></pre>"


# ---------------------------------------------------------------------------
# the lifecycle state machine (S2.4)

#: Where each state is drawn (data coordinates of :func:`draw_lifecycle`).
LIFECYCLE_POSITIONS: dict[VMState, tuple[float, float]] = {
    VMState.DEFINED: (0.0, 0.0),
    VMState.RUNNING: (2.3, 0.0),
    VMState.PAUSED: (4.7, 0.0),
    VMState.MIGRATING: (2.3, 1.4),
    VMState.CRASHED: (4.7, -1.4),
    VMState.SHUTOFF: (2.3, -1.4),
    VMState.UNDEFINED: (0.0, -1.4),
}


def lifecycle_graph() -> Any:
    """The VM lifecycle as a ``networkx.DiGraph``: states are nodes, operations label the edges.

    Built from :data:`virtcore.vmm.TRANSITIONS` and nothing else.  Two
    operations can join the same pair of states (``shutdown`` and
    ``guest-halt`` both take RUNNING to SHUTOFF), so each edge carries the
    sorted tuple ``ops``; ``kind`` is ``"management"`` when a management tool
    may call one of them, else ``"guest"`` (the VMM's own transitions).

    Returns
    -------
    networkx.DiGraph
        Nodes: every :class:`~virtcore.vmm.VMState` (attribute ``label``).

    Examples
    --------
    >>> g = lifecycle_graph()
    >>> g.number_of_nodes()
    7
    >>> g.edges[VMState.RUNNING, VMState.SHUTOFF]["ops"]
    ('destroy', 'guest-halt', 'shutdown')
    >>> sorted(s.value for s in g.predecessors(VMState.UNDEFINED))
    ['defined', 'shutoff']
    >>> g.out_degree(VMState.UNDEFINED), g.has_edge(VMState.PAUSED, VMState.PAUSED)
    (0, True)
    """
    nx = require("networkx")
    from virtcore.vmm.lifecycle import MANAGEMENT_OPS

    g = nx.DiGraph()
    for state in VMState:
        g.add_node(state, label=state.value)
    for (old, op), new in TRANSITIONS.items():
        ops = tuple(sorted((*g.edges[old, new]["ops"], op))) if g.has_edge(old, new) else (op,)
        kind = "management" if any(o in MANAGEMENT_OPS for o in ops) else "guest"
        g.add_edge(old, new, ops=ops, kind=kind, label=" / ".join(ops))
    return g


_STATE_COLOURS = {
    VMState.DEFINED: "#e0e0e0", VMState.RUNNING: "#c8e6c9", VMState.PAUSED: "#fff9c4",
    VMState.MIGRATING: "#bbdefb", VMState.SHUTOFF: "#d7ccc8", VMState.CRASHED: "#ffcdd2",
    VMState.UNDEFINED: "#9e9e9e",
}


def draw_lifecycle(current_state: VMState | str | None = None, ax: Any = None, *,
                   title: str | None = None) -> Any:
    """Draw the lifecycle state machine, the current state highlighted.

    Management operations are black arrows; the VMM's own transitions
    (``guest-halt``, ``guest-crash``, ``migrated``) are blue; an operation
    that keeps the state (``migrate`` of a paused or inactive VM: it moves to
    another host) is written beside the state.

    Parameters
    ----------
    current_state : VMState or str, optional
        The state to highlight (thick red outline), e.g. a VM's ``state``.
    ax : matplotlib Axes, optional
    title : str, optional

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> ax = draw_lifecycle("paused")
    >>> [t.get_text() for t in ax.texts
    ...  if t.get_bbox_patch() is not None and t.get_bbox_patch().get_linewidth() > 2]
    ['paused']
    >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    current = VMState(current_state) if isinstance(current_state, str) else current_state
    g = lifecycle_graph()
    ax = _new_axes(ax, (7.5, 3.6))
    pos = LIFECYCLE_POSITIONS
    for old, new, data in g.edges(data=True):
        (x0, y0), (x1, y1) = pos[old], pos[new]
        colour = "#1565c0" if data["kind"] == "guest" else "#212121"
        if old is new:  # the VM keeps its state (and moves host)
            ax.text(x0, y0 - 0.36, "↻ " + " / ".join(data["ops"]), fontsize=7, color=colour,
                    ha="center", va="top", zorder=2)
            continue
        rad = 0.3 if g.has_edge(new, old) else 0.12
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=1,
                    arrowprops={"arrowstyle": "-|>", "color": colour, "linestyle": "-",
                                "linewidth": 1.3, "connectionstyle": f"arc3,rad={rad}",
                                "shrinkA": 17, "shrinkB": 17})
        align = {"ha": "center", "va": "center"}
        if True:
            text = "\n".join(data["ops"])
            # a point of the arc: arc3 is the quadratic Bézier with control point
            # mid + rad · (dy, −dx); single edges are labelled nearer their target
            px, py = rad * (y1 - y0), -rad * (x1 - x0)
            cx, cy = (x0 + x1) / 2 + px, (y0 + y1) / 2 + py
            t = 0.5 if g.has_edge(new, old) else 0.7
            lx = (1 - t) ** 2 * x0 + 2 * t * (1 - t) * cx + t * t * x1
            ly = (1 - t) ** 2 * y0 + 2 * t * (1 - t) * cy + t * t * y1
            if abs(px) > abs(py):  # a vertical edge: the label beside it
                align["ha"] = "left" if px > 0 else "right"
                lx += 0.05 if px > 0 else -0.05
            else:  # a horizontal edge: the label above or below it
                align["va"] = "bottom" if py > 0 else "top"
        ax.text(lx, ly, text, fontsize=7, color=colour, zorder=2, **align,
                bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none",
                      "alpha": 0.85})
    for state, (x, y) in pos.items():
        here = state is current
        ax.text(x, y, state.value, ha="center", va="center", zorder=3,
                fontsize=9, fontweight="bold" if here else "normal",
                bbox={"boxstyle": "round,pad=0.4", "facecolor": _STATE_COLOURS[state],
                      "edgecolor": _ERROR if here else "#616161",
                      "linewidth": 3 if here else 0.8})
    ax.set_xlim(-0.7, 6.5)
    ax.set_ylim(-1.8, 1.8)
    ax.set_aspect("equal")
    ax.set_axis_off()
    where = f" — now: {current.value}" if current is not None else ""
    ax.set_title(title if title is not None else f"VM lifecycle{where}", fontsize=10)
    return ax


@functools.lru_cache(maxsize=16)
def _lifecycle_png(state: VMState | None) -> bytes:
    """The lifecycle drawing for one highlighted state, rendered once per state."""
    fig = _figure((7.5, 3.6))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92)
    draw_lifecycle(state, fig.add_subplot())
    return _png(fig)


#: The live VM's guest: counts for ever and stores the count in page 1 (dirty pages to migrate).
DEMO_GUEST = """
; the panel's guest: count for ever, keep the count in memory
        li   r2, 0x1000
loop:   addi r1, 1
        st   r1, [r2+0]          ; dirties page 1 on every pass
        jmp  loop
"""


class LifecycleConsole:
    """The logic behind :func:`lifecycle_panel`: management operations on one live VM.

    Each operation calls the real management API of a
    :class:`~virtcore.vmm.Manager` (or a single
    :class:`~virtcore.vmm.Hypervisor`) and returns a message; an operation
    the VM's state does not allow raises
    :class:`~virtcore.vmm.IllegalTransition` inside the library, and the
    console **catches** it (and every other
    :class:`~virtcore.errors.VirtcoreError`) and returns its type and text —
    it never raises.  ``migrate`` moves the VM to the next host by pre-copy.

    Parameters
    ----------
    target : Manager or Hypervisor, optional
        Default: a new Manager with two hosts.
    vm : str
        The VM's name.
    memory_pages : int
        Its memory (4 KiB pages; a teaching size).
    program : str or Program
        Its guest kernel (default :data:`DEMO_GUEST`, which never stops).
    run_steps : int
        Guest instructions per host for :meth:`run`.

    Examples
    --------
    >>> c = LifecycleConsole()
    >>> c.do("start")
    "✘ UnknownVMError: no VM named 'web' on any host"
    >>> c.do("define"), c.do("start"), c.state.value
    ('✔ define: web is defined on host0', '✔ start: defined → running', 'running')
    >>> print(c.do("resume"))
    ✘ IllegalTransition: cannot resume VM 'web': it is running (allowed: destroy, migrate, ...)
    >>> c.do("migrate").startswith("✔ migrate: running → running (host0 → host1"), c.host
    (True, 'host1')
    >>> [e.op for e in c.manager.events]
    ['define', 'start', 'migrate', 'migrated']
    """

    OPS: tuple[str, ...] = ("define", "start", "pause", "resume", "shutdown", "destroy",
                            "undefine", "migrate")

    def __init__(self, target: Manager | Hypervisor | None = None, *, vm: str = "web",
                 memory_pages: int = 4, program: str | Program = DEMO_GUEST,
                 run_steps: int = 2_000) -> None:
        if target is None:
            target = Manager(hosts=2)
        if not isinstance(target, (Manager, Hypervisor)):
            raise ViewError(f"expected a Manager or a Hypervisor, not {target!r}")
        self.target = target
        self.name = vm
        self.memory_pages = memory_pages
        self.program = assemble(program) if isinstance(program, str) else program
        self.run_steps = run_steps
        self.message = "Ready. Press define, then start."
        self.ok = True

    # -- the managed world ---------------------------------------------------
    @property
    def manager(self) -> Manager | Hypervisor:
        """What the console drives (its ``events`` is the management log)."""
        return self.target

    @property
    def hosts(self) -> list[Hypervisor]:
        """The hosts, in order."""
        if isinstance(self.target, Manager):
            return list(self.target.hosts.values())
        return [self.target]

    def _find(self) -> Hypervisor | None:
        for h in self.hosts:
            vm = h.vms.get(self.name)
            if vm is not None and vm.state is not VMState.UNDEFINED:
                return h
        for h in self.hosts:
            if self.name in h.vms:
                return h
        return None

    @property
    def state(self) -> VMState | None:
        """The VM's state (None before it is defined)."""
        h = self._find()
        return h.vms[self.name].state if h is not None else None

    @property
    def host(self) -> str | None:
        """The name of the host the VM is on (None before it is defined)."""
        h = self._find()
        return h.name if h is not None else None

    def allowed(self) -> list[str]:
        """The management operations legal now (``define`` when there is no live VM)."""
        state = self.state
        if state is None or state is VMState.UNDEFINED:
            return ["define"]
        return allowed_ops(state)

    # -- operations ----------------------------------------------------------
    def _call(self, op: str) -> str:
        name = self.name
        target = self.target
        if op == "define":
            vm = target.define(name, self.memory_pages, program=self.program)
            return f"define: {name} is defined on {vm.host.name if vm.host else '?'}"
        old = self.state
        if op == "migrate":
            source = self._find()
            if source is None:
                raise UnknownVMError(f"no VM named {name!r} on any host")
            others = [h for h in self.hosts if h is not source]
            if not others:
                raise ViewError("migrate needs a second host: give the panel a Manager with "
                                "two hosts")
            result = source.migrate(name, others[0])
            how = (f"rounds {list(result.rounds)} + {result.stop_and_copy_pages} stop-and-copy,"
                   f" downtime {result.downtime_ticks} ticks" if result.rounds
                   else result.reason)
            return (f"migrate: {old.value if old else '?'} → {self.state.value}"  # type: ignore[union-attr]
                    f" ({result.source} → {result.target}, {how})")
        getattr(target, op)(name)
        return f"{op}: {old.value if old else '?'} → {self.state.value}"  # type: ignore[union-attr]

    def do(self, op: str) -> str:
        """Run one management operation; return ``"✔ …"`` or ``"✘ ErrorType: message"``.

        Never raises for a library error: the typed error is caught and shown.
        """
        if op not in self.OPS:
            self.ok, self.message = False, f"✘ unknown operation {op!r}; use one of {self.OPS}"
            return self.message
        try:
            text = self._call(op)
        except VirtcoreError as exc:
            self.ok, self.message = False, f"✘ {type(exc).__name__}: {exc}"
        else:
            self.ok, self.message = True, f"✔ {text}"
        return self.message

    def run(self, steps: int | None = None) -> str:
        """Let every host run its VMs for ``steps`` guest instructions (the VM is live)."""
        n = self.run_steps if steps is None else steps
        try:
            done = sum(h.run(n).steps for h in self.hosts)
        except VirtcoreError as exc:
            self.ok, self.message = False, f"✘ {type(exc).__name__}: {exc}"
        else:
            self.ok, self.message = True, f"✔ ran {done} guest instructions"
        return self.message

    # -- views ---------------------------------------------------------------
    def table(self) -> str:
        """The VM list of every host (``xl list``-like)."""
        from virtcore.vmm import format_list

        return format_list(row for h in self.hosts for row in h.list())

    def log(self, last: int = 8) -> str:
        """The last ``last`` entries of the management event log."""
        entries = list(self.hosts[0].events)[-last:]
        return "\n".join(str(e) for e in entries) or "(no events yet)"

    def __repr__(self) -> str:
        return (f"{self.message}\nstate: {self.state.value if self.state else 'undefined'}"
                f" on {self.host or '-'}; allowed now: {', '.join(self.allowed())}\n"
                f"{self.table()}\n{self.log()}")


def lifecycle_panel(target: Manager | Hypervisor | None = None, *, vm: str = "web",
                    **options: Any) -> Any:
    """Buttons for the management interface on a live VM, its state graph, list and event log.

    Buttons: define, start, pause, resume, shutdown, destroy, migrate — and
    "run" (let the hosts run the guest).  The operations legal in the VM's
    state are blue; pressing another one shows the library's typed error
    (e.g. ``IllegalTransition``) in the message line, caught, never raised.

    Parameters
    ----------
    target : Manager or Hypervisor, optional
        Default: a Manager with two hosts (so migrate works).
    vm : str
    **options
        For :class:`LifecycleConsole` (``memory_pages``, ``program``, ``run_steps``).

    Returns
    -------
    ipywidgets.VBox
        With ``console`` (the :class:`LifecycleConsole`), ``buttons`` (op →
        Button, plus ``"run"``), ``message``, ``graph``, ``vm_list``,
        ``event_log`` (HTML) and ``refresh()``.

    Examples
    --------
    >>> p = lifecycle_panel()
    >>> p.buttons["define"].click(); p.buttons["start"].click(); p.buttons["pause"].click()
    >>> p.console.state.value, "paused" in p.vm_list.value
    ('paused', True)
    >>> p.buttons["resume"].click(); p.buttons["resume"].click()
    >>> "IllegalTransition" in p.message.value, p.console.state.value
    (True, 'running')
    """
    widgets = require("ipywidgets")
    console = LifecycleConsole(target, vm=vm, **options)
    buttons: dict[str, Any] = {
        op: widgets.Button(description=op, layout=widgets.Layout(width="auto"),
                           tooltip=f"{op} the VM {vm!r}")
        for op in LifecycleConsole.OPS
    }
    buttons["run"] = widgets.Button(description=f"run {console.run_steps} steps", icon="play",
                                    layout=widgets.Layout(width="auto"),
                                    tooltip="let the hosts run their VMs")
    message = widgets.HTML()
    graph = widgets.Image(format="png", layout=widgets.Layout(max_width="560px"))
    table = widgets.HTML()
    log = widgets.HTML()

    def refresh() -> None:
        allowed = set(console.allowed())
        for op in LifecycleConsole.OPS:
            buttons[op].button_style = "info" if op in allowed else ""
        message.value = _pre(console.message, _OK if console.ok else _ERROR)
        graph.value = _lifecycle_png(console.state)
        table.value = "<b>VM list</b>" + _pre(console.table(), wrap=False)
        log.value = "<b>event log</b>" + _pre(console.log(), wrap=False)

    def action(fn: Callable[[], object]) -> Callable[[Any], None]:
        def on_click(_button: Any) -> None:
            fn()
            refresh()
        return on_click

    for op in LifecycleConsole.OPS:
        buttons[op].on_click(action(functools.partial(console.do, op)))
    buttons["run"].on_click(action(console.run))
    refresh()
    box = widgets.VBox([widgets.HBox(list(buttons.values())), message, graph, table, log])
    box.console = console
    box.buttons = buttons
    box.message = message
    box.graph = graph
    box.vm_list = table
    box.event_log = log
    box.refresh = refresh
    return box


# ---------------------------------------------------------------------------
# pre-copy live migration (S2.4)


def _pages_label(value: float, _pos: object = None) -> str:
    """A page count for a log axis without mathtext: 1, 10, 100, 1k, 10k, 100k, 1M …

    >>> [_pages_label(v) for v in (1, 100, 2_000, 262_144, 3e6)]
    ['1', '100', '2k', '262k', '3M']
    """
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.0f}{suffix}"
    return f"{value:g}"


def plot_precopy(result: PrecopyResult, ax: Any = None, *, title: str | None = None) -> Any:
    """Pages sent in each pre-copy round (blue) and in the stop-and-copy (red), log scale.

    Parameters
    ----------
    result : PrecopyResult
    ax : matplotlib Axes, optional
    title : str, optional

    Returns
    -------
    matplotlib.axes.Axes
        One bar per live round, then one for the stop-and-copy.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> from virtcore.vmm import precopy
    >>> ax = plot_precopy(precopy(1000, 100, 1000, stop_threshold=5))
    >>> [float(p.get_height()) for p in ax.patches]
    [1000.0, 100.0, 10.0, 1.0]
    >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    ax = _new_axes(ax, (6, 3))
    heights = result.pages_per_round
    n = len(result.rounds)
    colours = ["#1f77b4"] * n + ["#d62728"]
    ax.bar(range(n + 1), heights, color=colours)
    ticker = require("matplotlib.ticker")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(numticks=7))
    ax.yaxis.set_minor_locator(ticker.NullLocator())  # minor log ticks cost most of a redraw
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(_pages_label))  # no mathtext: faster
    ax.set_ylim(0.5, max([*heights, 1]) * 3)
    step = max(1, -(-n // 6))  # at most ~6 labelled rounds: every tick costs a redraw
    ticks = list(range(0, n, step))
    ax.set_xticks([*ticks, n], [str(i) for i in ticks] + ["stop"])
    ax.set_xlabel("round (stop = stop-and-copy, VM paused)")
    ax.set_ylabel("pages sent")
    verdict = "converged" if result.converged else "did NOT converge"
    # a fixed title position (y=) spares matplotlib a layout pass on every redraw
    ax.set_title(title if title is not None else
                 f"pre-copy: {n} rounds, {verdict}, downtime {result.downtime:.3g} s",
                 fontsize=10, y=1.0)
    return ax


#: Bytes in a page (x86: 4 KiB).
PAGE_BYTES = 4096


def migration_view(memory_mib: int = 1024, dirty_rate: float = 5_000, bandwidth: float = 30_000,
                   stop_threshold: int = 50, max_rounds: int = 30,
                   seed: int = 0) -> tuple[Any, TextView]:
    """What :func:`migration_explorer` shows: ``(Figure, text)`` from :func:`~virtcore.vmm.precopy`.

    Parameters
    ----------
    memory_mib : int
        Guest memory in MiB (256 pages of 4 KiB per MiB).
    dirty_rate, bandwidth : float
        Pages per second the guest dirties / the link sends.
    stop_threshold, max_rounds : int
    seed : int

    Returns
    -------
    (Figure, TextView)
        The text names the rounds, downtime, total sent, and converged or
        not with the library's reason.

    Examples
    --------
    >>> fig, text = migration_view(1024, 5_000, 30_000)
    >>> text.splitlines()[0]
    'converged: 5 live rounds, then 34 pages with the VM paused'
    >>> fig, text = migration_view(1024, 40_000, 30_000)
    >>> text.splitlines()[0].startswith("NOT converged"), "did not converge" in text
    (True, True)
    """
    pages = memory_mib * (1 << 20) // PAGE_BYTES
    r = precopy(pages, dirty_rate, bandwidth, stop_threshold=stop_threshold,
                max_rounds=max_rounds, seed=seed)
    fig = _figure((6.4, 2.8))
    fig.subplots_adjust(left=0.12, right=0.98, bottom=0.2, top=0.88)
    plot_precopy(r, fig.add_subplot())
    mb = PAGE_BYTES / 1e6
    head = (f"{'converged' if r.converged else 'NOT converged'}: {len(r.rounds)} live rounds,"
            f" then {r.stop_and_copy_pages} pages with the VM paused")
    lines = [
        head,
        f"memory {memory_mib} MiB = {pages} pages; guest dirties {dirty_rate:g} pages/s"
        f" ({dirty_rate * mb:.0f} MB/s); link sends {bandwidth:g} pages/s"
        f" ({bandwidth * mb:.0f} MB/s ≈ {bandwidth * PAGE_BYTES * 8 / 1e9:.2f} Gbit/s)",
        f"per round the dirty set shrinks by dirty rate / bandwidth ="
        f" {dirty_rate / bandwidth:.2f}" + ("  (≥ 1: it cannot shrink)"
                                            if dirty_rate >= bandwidth else ""),
        f"pages per round: {r.pages_per_round[:12]}{' …' if len(r.rounds) > 11 else ''}",
        f"total sent {r.total_pages} pages ({r.total_pages / pages:.2f} × memory)"
        f" in {r.total_time:.3g} s; downtime {1000 * r.downtime:.3g} ms",
        r.reason,
    ]
    text = "\n".join(lines)
    colour = _OK if r.converged else _ERROR
    html = (f'{_PRE}<b style="color:{colour}">{esc(head)}</b>\n'
            f"{esc(chr(10).join(lines[1:]))}</pre>")
    return fig, TextView(text, html=html)


def migration_explorer(*, seed: int = 0) -> Any:
    """Sliders for memory, dirty rate, bandwidth, stop threshold and rounds → a pre-copy run.

    Each change calls :func:`migration_view` and shows the pages sent per
    round, the downtime, the total sent, and whether it converged (and why
    not).

    Returns
    -------
    ipywidgets.VBox
        With ``controls`` (``"memory_mib"``, ``"dirty_rate"``, ``"bandwidth"``,
        ``"stop_threshold"``, ``"max_rounds"``), ``image``, ``text``, ``update()``.

    Examples
    --------
    >>> w = migration_explorer()
    >>> "converged" in w.text.value and "NOT" not in w.text.value
    True
    >>> w.controls["dirty_rate"].value = 40_000
    >>> "NOT converged" in w.text.value
    True
    """
    widgets = require("ipywidgets")
    style = {"description_width": "150px"}
    wide = widgets.Layout(width="480px")
    controls = {
        "memory_mib": widgets.IntSlider(value=1024, min=64, max=8192, step=64,
                                        description="memory (MiB)", continuous_update=False,
                                        style=style, layout=wide),
        "dirty_rate": widgets.IntSlider(value=5_000, min=0, max=60_000, step=500,
                                        description="dirty rate (pages/s)",
                                        continuous_update=False, style=style, layout=wide),
        "bandwidth": widgets.IntSlider(value=30_000, min=1_000, max=100_000, step=1_000,
                                       description="bandwidth (pages/s)",
                                       continuous_update=False, style=style, layout=wide),
        "stop_threshold": widgets.IntSlider(value=50, min=0, max=2_000, step=10,
                                            description="stop threshold (pages)",
                                            continuous_update=False, style=style, layout=wide),
        "max_rounds": widgets.IntSlider(value=30, min=1, max=30, description="max rounds",
                                        continuous_update=False, style=style, layout=wide),
    }
    image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
    text = widgets.HTML()

    def update(_change: Any = None) -> None:
        try:
            fig, words = migration_view(**{k: c.value for k, c in controls.items()}, seed=seed)
        except VirtcoreError as exc:  # show misuse, never raise in a widget
            text.value = _pre(f"{type(exc).__name__}: {exc}", _ERROR)
            return
        image.value = _png(fig)
        text.value = words.html or esc(words)

    for control in controls.values():
        control.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.VBox(list(controls.values())), image, text])
    box.controls = controls
    box.image = image
    box.text = text
    box.update = update
    return box


# ---------------------------------------------------------------------------
# trap-and-emulate, one trap at a time (S1.3)

_EXIT_OF = {"hlt": ExitReason.HLT, "in": ExitReason.IO_INSTRUCTION,
            "out": ExitReason.IO_INSTRUCTION, "hcall": ExitReason.VMCALL,
            "rdcr": ExitReason.CR_ACCESS, "wrcr": ExitReason.CR_ACCESS,
            "invlpg": ExitReason.INVLPG}
_SILENT = tuple(r.mnemonic for r in TABLE if r.sensitive and not r.privileged)


@dataclass(frozen=True)
class TrapStep:
    """One trap (or VM exit) handled by the VMM: what trapped, who handled it, what changed.

    Attributes
    ----------
    index : int
        0-based position in the run.
    event : str
        ``"trap #GP (13)"``, ``"VM exit IO_INSTRUCTION (30)"``, …
    pc : int
        Address of the trapping instruction.
    instruction : str
        The instruction, disassembled.
    handler : str
        The function the handler table chose.
    handler_doc : str
        The first line of its docstring.
    action : str
        What the handler returned (``continue``, ``halt``, …).
    pc_after : int
        Where the guest goes on (``pc + 4`` after a well-behaved handler).
    if_before, if_after : bool
        The virtual IF.
    mode_before, mode_after : str
        The guest's virtual privilege level.
    changes : tuple of str
        The virtual CPU's other changes (control registers, registers, sp).
    console : str
        The VM's console so far.
    direct, traps, exits, hypercalls, emulated, interrupts : int
        The VM's counts when the handler returned (this event included).

    Examples
    --------
    >>> step = trap_trace("trap").steps[1]
    >>> print(step)
    #1   0x000c  sti              trap #GP (13)                → handle_sti      IF 0→1  pc→0x0010
    >>> step.pc_after - step.pc, step.traps
    (4, 2)
    """

    index: int
    event: str
    pc: int
    instruction: str
    handler: str
    handler_doc: str
    action: str
    pc_after: int
    if_before: bool
    if_after: bool
    mode_before: str
    mode_after: str
    changes: tuple[str, ...]
    console: str
    direct: int
    traps: int
    exits: int
    hypercalls: int
    emulated: int
    interrupts: int

    def __str__(self) -> str:
        return (f"#{self.index:<3d} {self.pc:#06x}  {self.instruction:<16s} {self.event:<28s}"
                f" → {self.handler:<15s} IF {int(self.if_before)}→{int(self.if_after)}"
                f"  pc→{self.pc_after:#06x}")


@dataclass(frozen=True)
class TrapTrace:
    """A guest's whole run under the VMM, one :class:`TrapStep` per trap or exit.

    Attributes
    ----------
    technique : str
    steps : tuple of TrapStep
    final, bare : FinalState
        The guest's end under the VMM; the reference program's on bare hardware.
    stats : VMStats
    silent : tuple of (int, str)
        Sensitive-but-unprivileged instructions in the guest's image
        (``popf``/``pushf``) that never reached the VMM.
    truncated : bool
        More events happened than were recorded (``max_records``).

    Examples
    --------
    >>> t = trap_trace("pv")
    >>> len(t.steps) == t.stats.hypercalls, t.output, t.matches_bare, t.silent
    (True, 'ATC', True, ())
    >>> print(trap_trace("hw").summary().splitlines()[1])
    output 'ATC', stopped: halted; bare hardware: 'ATC', halted → same
    """

    technique: str
    steps: tuple[TrapStep, ...]
    final: FinalState
    bare: FinalState
    stats: VMStats
    silent: tuple[tuple[int, str], ...]
    truncated: bool

    @property
    def output(self) -> str:
        """What the guest printed under the VMM."""
        return self.final.serial.decode("latin-1")

    @property
    def matches_bare(self) -> bool:
        """Same console output and same way of stopping as on bare hardware."""
        return self.final.serial == self.bare.serial and self.final.stop == self.bare.stop

    def summary(self) -> str:
        """How the run ended, compared with bare hardware, and what the VMM never saw."""
        s = self.stats
        lines = [
            f"{self.technique}: {len(self.steps)} events handled"
            f"{' (only the first recorded)' if self.truncated else ''} — {s.traps} traps,"
            f" {s.exits} VM exits, {s.hypercalls} hypercalls; {s.direct} instructions ran"
            f" directly ({100 * s.efficiency:.1f}%)",
            f"output {self.output!r}, stopped: {self.final.stop}; bare hardware: "
            f"{self.bare.serial.decode('latin-1')!r}, {self.bare.stop} → "
            + ("same" if self.matches_bare else "DIFFERENT"),
        ]
        for pc, name in self.silent:
            why = (" — deprivileged, so it ran in the real user mode and silently did the wrong"
                   " thing" if self.technique == Technique.TRAP_AND_EMULATE.value
                   else " — it ran natively in guest mode (its own ring 0): correct"
                   if self.technique == Technique.HARDWARE_ASSIST.value else "")
            lines.append(f"never reached the VMM: {name} at {pc:#06x}{why}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        shown = [str(st) for st in self.steps[:40]]
        if len(self.steps) > 40:
            shown.append(f"… {len(self.steps) - 40} more")
        return "\n".join([*shown, self.summary()])


def _snapshot(vcpu: Any) -> tuple[int, int, str, dict[CR, int], tuple[int, ...]]:
    return vcpu.pc, vcpu.flags, vcpu.mode.name.lower(), dict(vcpu.crs), tuple(vcpu.regs)


def _event_name(vm: Any, insn: Insn) -> str:
    if vm.technique is Technique.HARDWARE_ASSIST:
        reason = _EXIT_OF.get(insn.mnemonic)
        return f"VM exit {reason.name} ({reason.value})" if reason else "VM exit"
    if vm.technique is Technique.BINARY_TRANSLATION and insn.mnemonic in _BT_CALLOUT:
        return "BT callout (translated code calls the monitor; no trap)"
    if vm.technique is Technique.BINARY_TRANSLATION and insn.mnemonic in _BT_INLINE:
        return "BT translated code (acts on the virtual CPU; no trap)"
    if insn.mnemonic == "syscall":
        return f"trap SYSCALL ({TrapCause.SYSCALL.value:#x})"
    if insn.mnemonic == "hcall":
        return f"trap HYPERCALL ({TrapCause.HYPERCALL.value:#x})"
    return f"trap #GP ({TrapCause.GENERAL_PROTECTION.value})"


def _changes(before: tuple[Any, ...], after: tuple[Any, ...]) -> tuple[str, ...]:
    out = []
    for cr in CR:
        a, b = before[3][cr], after[3][cr]
        if a != b:
            out.append(f"virtual {cr.name.lower()} {a:#x} → {b:#x}")
    for name, a, b in zip(REG_NAMES, before[4], after[4]):
        if a != b:
            out.append(f"{name} {a:#x} → {b:#x}")
    return tuple(out)


def trap_trace(technique: Technique | str = "trap", *, guest: str | Program | None = None,
               reference: str | Program | None = None, handlers: HandlerTable | None = None,
               max_steps: int = 20_000, max_records: int = 200) -> TrapTrace:
    """Run a guest under the VMM once and record every trap or VM exit it handled.

    The VMM is the real one (:func:`~virtcore.vmm.run_guest`); only its
    handler table is wrapped so that each call is recorded — the
    instruction, the handler, the virtual CPU before and after.  Stepping
    through the result is stepping through that run.

    Parameters
    ----------
    technique : Technique or str
        ``"trap"``, ``"bt"``, ``"pv"`` or ``"hw"``.
    guest : str or Program, optional
        Default: the popf guest (:data:`~virtcore.vmm.POPF_GUEST`), or its
        paravirtualized version for ``"pv"``.
    reference : str or Program, optional
        What runs on bare hardware for comparison (default: the unmodified
        guest — the popf guest for ``"pv"``'s default).
    handlers : HandlerTable, optional
        The table to record (default: the reference handlers), e.g. one
        with a buggy handler.
    max_steps : int
        The guest's budget of instructions.
    max_records : int
        Events recorded at most (a handler that never advances the pc traps
        on every step).

    Returns
    -------
    TrapTrace

    Examples
    --------
    >>> t = trap_trace("bt")
    >>> [s.instruction.split()[0] for s in t.steps if "BT translated" in s.event], t.matches_bare
    (['wrcr', 'sti', 'pushf', 'cli', 'popf', 'cli'], True)
    >>> hw = trap_trace("hw")
    >>> sorted({s.event for s in hw.steps})
    ['VM exit HLT (12)', 'VM exit IO_INSTRUCTION (30)']
    """
    tech = Technique.parse(technique)
    if guest is None:
        guest = POPF_GUEST_PV if tech is Technique.PARAVIRTUALIZATION else POPF_GUEST
        reference = POPF_GUEST if reference is None else reference
    program = assemble(guest) if isinstance(guest, str) else guest
    ref = reference if reference is not None else program
    ref_program = assemble(ref) if isinstance(ref, str) else ref
    base = handlers if handlers is not None else HandlerTable.reference()
    steps: list[TrapStep] = []
    overflow = [0]

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        doc = (fn.__doc__ or "").strip().splitlines()
        first = doc[0] if doc else ""

        def recorded(vcpu: Any, insn: Insn) -> Any:
            if len(steps) >= max_records:
                overflow[0] += 1
                return fn(vcpu, insn)
            before = _snapshot(vcpu)
            action = fn(vcpu, insn)
            after = _snapshot(vcpu)
            vm = vcpu.vm
            s = vm.stats
            steps.append(TrapStep(
                len(steps), _event_name(vm, insn), insn.pc,
                format_instruction(insn.word, insn.pc), getattr(fn, "__name__", "handler"),
                first, getattr(action, "value", "continue"), after[0],
                bool(before[1] & FLAG_IF), bool(after[1] & FLAG_IF), before[2], after[2],
                _changes(before, after), vm.console, s.direct, s.traps, s.exits,
                s.hypercalls, s.emulated, s.interrupts))
            return action

        recorded.__name__ = getattr(fn, "__name__", "handler")
        return recorded

    table = HandlerTable({name: wrap(fn) for name, fn in base.items()})
    final, vm = run_guest(program, technique=tech, handlers=table, max_steps=max_steps)
    bare = run_bare(ref_program, max_steps=max_steps)
    seen = {st.pc for st in steps}
    silent = []
    for i, word in enumerate(program.words):
        row = decode(word)
        pc = program.origin + 4 * i
        if row is not None and row.mnemonic in _SILENT and pc not in seen:
            silent.append((pc, row.mnemonic))
    return TrapTrace(tech.value, tuple(steps), final, bare, vm.stats, tuple(silent),
                     overflow[0] > 0)


def render_trap_step(trace: TrapTrace, index: int) -> TextView:
    """One step of a :class:`TrapTrace` in words: the event, the handler, its effect, the counts.

    Parameters
    ----------
    trace : TrapTrace
    index : int
        0 … ``len(trace.steps) - 1``.

    Returns
    -------
    TextView
        Text, with an HTML rendering (changes in red).

    Examples
    --------
    >>> t = trap_trace("trap")
    >>> print(render_trap_step(t, 2))  # doctest: +ELLIPSIS
    event 3 of 6: trap #GP (13) at 0x0014 — cli
    handler chosen: handle_cli — ``cli``: clear the *virtual* IF ...
    effect on the virtual CPU: IF 1 → 0; mode kernel; pc 0x0014 → 0x0018
      (no other change)
    counts so far: 3 traps, 0 VM exits, 0 hypercalls, 3 emulated; 3 instructions ran directly
    console so far: ''
    """
    if not trace.steps:
        raise ViewError("this run handled no trap or exit: nothing to step through")
    if not 0 <= index < len(trace.steps):
        raise ViewError(f"index must be 0..{len(trace.steps) - 1}, not {index}")
    s = trace.steps[index]
    mode = (s.mode_before if s.mode_before == s.mode_after
            else f"{s.mode_before} → {s.mode_after}")
    advanced = ("" if s.pc_after != s.pc
                else "   ⚠ the pc did not move: the guest will trap here again")
    lines = [
        f"event {index + 1} of {len(trace.steps)}: {s.event} at {s.pc:#06x} — {s.instruction}",
        f"handler chosen: {s.handler} — {s.handler_doc}",
        f"effect on the virtual CPU: IF {int(s.if_before)} → {int(s.if_after)}; mode {mode};"
        f" pc {s.pc:#06x} → {s.pc_after:#06x}{advanced}",
        *(f"  {c}" for c in s.changes), *(["  (no other change)"] if not s.changes else []),
        f"counts so far: {s.traps} traps, {s.exits} VM exits, {s.hypercalls} hypercalls,"
        f" {s.emulated} emulated; {s.direct} instructions ran directly",
        f"console so far: {s.console!r}",
    ]
    if index == len(trace.steps) - 1:
        lines += ["", "— end of the run —", trace.summary()]
    text = "\n".join(lines)
    body = esc(text).replace("⚠", f'<b style="color:{_ERROR}">⚠</b>')
    return TextView(text, html=f"{_PRE}{body}</pre>")


def trap_stepper(technique: Technique | str = "trap", **options: Any) -> Any:
    """Step a deprivileged (or guest-mode) guest under the VMM one trap / VM exit at a time.

    Buttons: first, previous, next, last; a slider picks any step.  Each
    step shows the trapping instruction, the handler the table chose, its
    effect on the virtual CPU (virtual IF, virtual control registers) and
    the counts; the last step adds how the run ended against bare hardware
    and which sensitive instructions never reached the VMM.

    Parameters
    ----------
    technique : Technique or str
    **options
        For :func:`trap_trace` (``guest``, ``reference``, ``handlers``, …).

    Returns
    -------
    ipywidgets.VBox
        With ``trace`` (the :class:`TrapTrace`), ``buttons`` (``"first"``,
        ``"prev"``, ``"next"``, ``"last"``), ``slider``, ``view`` and ``show(i)``.

    Examples
    --------
    >>> w = trap_stepper("trap")
    >>> w.buttons["next"].click(); w.slider.value, "handle_sti" in w.view.value
    (1, True)
    >>> w.buttons["last"].click(); "DIFFERENT" in w.view.value
    True
    """
    widgets = require("ipywidgets")
    trace = trap_trace(technique, **options)
    n = len(trace.steps)
    slider = widgets.IntSlider(value=0, min=0, max=max(0, n - 1), description="event #",
                               continuous_update=True, layout=widgets.Layout(width="360px"))
    buttons = {key: widgets.Button(description=label, layout=widgets.Layout(width="auto"))
               for key, label in (("first", "⏮ first"), ("prev", "◀ previous"),
                                  ("next", "next ▶"), ("last", "last ⏭"))}
    head = widgets.HTML(f"<b>{esc(trace.technique)}</b> — {n} events handled by the VMM")
    view = widgets.HTML()

    def show(i: int) -> None:
        if n == 0:
            view.value = _pre("no trap or exit happened.\n" + trace.summary())
            return
        view.value = render_trap_step(trace, i).html or ""

    def on_slide(change: Any) -> None:
        show(int(change["new"]))

    slider.observe(on_slide, names="value")

    wire_stepper(slider, buttons, show, n)
    show(0)
    box = widgets.VBox([head, widgets.HBox([*buttons.values(), slider]), view])
    box.trace = trace
    box.buttons = buttons
    box.slider = slider
    box.view = view
    box.show = show
    return box


# ---------------------------------------------------------------------------
# the three fixes, side by side


def plot_fix_comparison(comparison: FixComparison, ax: Any = None, *,
                        title: str | None = None) -> Any:
    """Bars of traps, VM exits and hypercalls per technique, and each one's cost (diamonds).

    Wrong techniques (different output from bare hardware) get a red, hatched
    label.  Costs come from the comparison's :class:`~virtcore.vmm.CostModel`:
    **teaching assumptions**, not measurements.

    Parameters
    ----------
    comparison : FixComparison
        From :func:`~virtcore.vmm.compare_fixes`.
    ax : matplotlib Axes, optional
    title : str, optional

    Returns
    -------
    matplotlib.axes.Axes
        The counts' axes; the cost is on its twin (``ax.cost_axes``).

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> from virtcore.vmm import compare_fixes
    >>> c = compare_fixes()
    >>> ax = plot_fix_comparison(c)
    >>> len(ax.patches) == 3 * len(c.rows), [t.get_text() for t in ax.get_xticklabels()][1]
    (True, 'trap-and-emulate\\n(WRONG)')
    >>> [round(y) for y in ax.cost_axes.lines[0].get_ydata()] == [round(r.cost) for r in c.rows]
    True
    >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    ax = _new_axes(ax, (8, 3.4))
    recs = comparison.records()
    xs = range(len(recs))
    series = (("traps", "#ff7f0e"), ("exits", "#d62728"), ("hypercalls", "#2ca02c"))
    width = 0.26
    for k, (key, colour) in enumerate(series):
        ax.bar([x + (k - 1) * width for x in xs], [int(r[key]) for r in recs],  # type: ignore[call-overload]
               width=width, color=colour, label=key)
    labels = [f"{r['technique']}" + ("" if r["correct"] else "\n(WRONG)") for r in recs]
    ax.set_xticks(list(xs), labels, fontsize=8)
    for tick, r in zip(ax.get_xticklabels(), recs):
        if not r["correct"]:
            tick.set_color(_ERROR)
            tick.set_fontweight("bold")
    ax.set_ylabel("events handled by the VMM")
    cost_ax = ax.twinx()
    cost_ax.plot(list(xs), [float(r["cost"]) for r in recs], "D", color="black",  # type: ignore[arg-type]
                 label="cost (teaching units)")
    cost_ax.set_ylabel("cost (teaching assumption)")
    cost_ax.set_ylim(0, max(float(r["cost"]) for r in recs) * 1.2)  # type: ignore[arg-type]
    handles, names = ax.get_legend_handles_labels()
    h2, n2 = cost_ax.get_legend_handles_labels()
    ax.legend(handles + h2, names + n2, fontsize=8, loc="upper left", frameon=False)
    ax.set_title(title if title is not None else
                 "the popf guest: bare hardware, trap-and-emulate and the three fixes",
                 fontsize=10)
    ax.cost_axes = cost_ax
    return ax

