"""Views of vCPU scheduling (:mod:`virtcore.sched`, S2.3): a Gantt chart, shares, a playground.

Pure data first, display later.  :func:`~virtcore.sched.simulate` returns a
:class:`~virtcore.sched.SchedResult` (a trace of segments and the metrics
computed from it); every function here is a function of that result:

- :func:`gantt_bars` — the Gantt chart's data: per (pCPU, domain) the bars
  ``(start_ms, width_ms)``, one per trace segment (pure, no matplotlib);
- :func:`gantt` — the chart: one row per pCPU, bars coloured by VM;
- :func:`plot_shares` — each VM's CPU share, in % of one pCPU;
- :func:`share_table` — the same numbers with weights, caps and wake-up
  latencies, as text;
- :func:`scheduler_playground` — an ipywidgets UI: pick a scheduler (FIFO,
  round-robin, Xen credit), pCPUs, 2–4 VMs with weight, cap and workload,
  the timeslice and the simulated time; each change calls the pure
  :func:`playground_view` (simulate, then draw) and shows its figure and
  text.  ``benchmarks/bench_ch2_widgets.py`` times it.

matplotlib and ipywidgets are imported inside the functions that need them
(:func:`virtcore.viz._lazy.require`).

>>> from virtcore.sched import Credit, Domain, simulate
>>> r = simulate([Domain("a", weight=512), Domain("b")], Credit(), duration_us=90_000)
>>> bars = gantt_bars(r)
>>> sum(len(v) for v in bars.values()) == len(r.segments), sorted({d for _, d in bars})
(True, ['a', 'b'])
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from virtcore.errors import ConfigurationError
from virtcore.sched import (
    FIFO,
    CPUBound,
    Credit,
    Domain,
    Interactive,
    IOBound,
    Mixed,
    RoundRobin,
    SchedResult,
    Scheduler,
    simulate,
)
from virtcore.viz import ViewError
from virtcore.viz._lazy import TextView, esc, require

__all__ = [
    "DOMAIN_COLOURS",
    "SCHEDULERS",
    "WORKLOADS",
    "VMSpec",
    "domain_colours",
    "gantt",
    "gantt_bars",
    "make_scheduler",
    "playground_view",
    "plot_shares",
    "run_playground",
    "scheduler_playground",
    "share_table",
]

#: Colours given to the domains (VMs) in order of first appearance (matplotlib's tab10).
DOMAIN_COLOURS: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)

#: The playground's workload kinds: name → (workload spec, words).
WORKLOADS: dict[str, tuple[Any, str]] = {
    "cpu": (CPUBound(), "CPU-bound (计算密集型): always runnable"),
    "io": (IOBound(), "I/O-bound (I/O 密集型): runs ~1 ms, blocks ~4 ms"),
    "interactive": (Interactive(), "interactive: bursts of ~0.3 ms after ~30 ms of thinking"),
    "mixed": (Mixed(), "mixed: a ~20 ms CPU burst, then 5 I/O cycles"),
}

#: The playground's schedulers.
SCHEDULERS: tuple[str, ...] = ("FIFO", "RR", "Credit")


def domain_colours(result: SchedResult) -> dict[str, str]:
    """Domain name → colour, in the order of the result's domains.

    >>> from virtcore.sched import FIFO, Domain, simulate
    >>> domain_colours(simulate([Domain("x"), Domain("y")], FIFO(), duration_us=10))
    {'x': '#1f77b4', 'y': '#ff7f0e'}
    """
    return {d: DOMAIN_COLOURS[i % len(DOMAIN_COLOURS)]
            for i, d in enumerate(result.domain_params)}


def gantt_bars(result: SchedResult) -> dict[tuple[int, str], list[tuple[float, float]]]:
    """The Gantt chart's data: ``(pcpu, domain) → [(start_ms, width_ms), …]``, one per segment.

    Parameters
    ----------
    result : SchedResult

    Returns
    -------
    dict
        Keys in order of first appearance; every segment of the trace is in
        exactly one list.

    Examples
    --------
    >>> from virtcore.sched import RoundRobin, Domain, simulate
    >>> r = simulate([Domain("a"), Domain("b")], RoundRobin(10_000), duration_us=30_000)
    >>> gantt_bars(r)
    {(0, 'a'): [(0.0, 10.0), (20.0, 10.0)], (0, 'b'): [(10.0, 10.0)]}
    """
    bars: dict[tuple[int, str], list[tuple[float, float]]] = {}
    owner = result.vcpu_domain
    for s in result.segments:
        bars.setdefault((s.pcpu, owner[s.vcpu]), []).append(
            (s.start / 1000, (s.end - s.start) / 1000))
    return bars


def _new_axes(ax: Any, size: tuple[float, float]) -> Any:
    if ax is not None:
        return ax
    plt = require("matplotlib.pyplot")
    _, ax = plt.subplots(figsize=size)
    return ax


def gantt(result: SchedResult, ax: Any = None, *, title: str | None = None,
          legend: bool = True) -> Any:
    """Draw the trace as a Gantt chart: one row per pCPU, one bar per segment, coloured by VM.

    Parameters
    ----------
    result : SchedResult
    ax : matplotlib Axes, optional
        Where to draw; a new figure is made if omitted.
    title : str, optional
    legend : bool
        Show which colour is which VM.

    Returns
    -------
    matplotlib.axes.Axes
        Its collections are the bars, one collection per (pCPU, VM).

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> from virtcore.sched import RoundRobin, Domain, simulate
    >>> r = simulate([Domain("a"), Domain("b")], RoundRobin(10_000), pcpus=1,
    ...              duration_us=50_000)
    >>> ax = gantt(r)
    >>> sum(len(c.get_paths()) for c in ax.collections) == len(r.segments) == 5
    True
    >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    ax = _new_axes(ax, (8, 0.6 + 0.5 * result.pcpus))
    colours = domain_colours(result)
    seen: set[str] = set()
    for (pcpu, dom), xs in gantt_bars(result).items():
        label = dom if dom not in seen else None
        seen.add(dom)
        ax.broken_barh(xs, (pcpu - 0.4, 0.8), facecolors=colours[dom], label=label,
                       edgecolor="white", linewidth=0.3)
    ax.set_yticks(range(result.pcpus), [f"pCPU{i}" for i in range(result.pcpus)])
    ax.set_ylim(result.pcpus - 0.5, -0.5)
    ax.set_xlim(0, result.duration_us / 1000)
    ax.set_xlabel("time (ms)")
    ax.set_title(title if title is not None else
                 f"{result.scheduler} on {result.pcpus} pCPU(s): who ran where",
                 y=1.0)  # a fixed position spares a layout pass on every redraw
    if legend and seen:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return ax


def plot_shares(result: SchedResult, ax: Any = None, *, title: str | None = None) -> Any:
    """Each VM's CPU share in % of one pCPU, labelled with its weight (and cap).

    Parameters
    ----------
    result : SchedResult
    ax : matplotlib Axes, optional
    title : str, optional

    Returns
    -------
    matplotlib.axes.Axes
        One bar per domain, heights = ``100 × domain_share``.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> from virtcore.sched import Credit, Domain, simulate
    >>> r = simulate([Domain("a", weight=512), Domain("b")], Credit(), duration_us=900_000)
    >>> ax = plot_shares(r)
    >>> [round(p.get_height()) for p in ax.patches]
    [67, 33]
    >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    ax = _new_axes(ax, (4, 3))
    colours = domain_colours(result)
    names = list(result.domain_params)
    shares = result.domain_share
    heights = [100 * shares[n] for n in names]
    ax.bar(range(len(names)), heights, color=[colours[n] for n in names])
    labels = []
    for n in names:
        p = result.domain_params[n]
        extra = f"\ncap {p['cap']}" if p["cap"] else ""
        labels.append(f"{n}\nw {p['weight']}{extra}")
    ax.set_xticks(range(len(names)), labels, fontsize=8)
    for i, h in enumerate(heights):
        ax.text(i, h, f"{h:.0f}%", ha="center", va="bottom", fontsize=8)
    top = max([100.0, *heights])
    ax.set_ylim(0, top * 1.15)
    ax.set_ylabel("% of one pCPU")
    ax.set_title(title if title is not None else "CPU share", fontsize=10)
    return ax


def share_table(result: SchedResult, workloads: Mapping[str, str] | None = None) -> TextView:
    """Per VM: weight, cap, workload, CPU time, share, wake-ups and wake-up latency (唤醒延迟).

    Parameters
    ----------
    result : SchedResult
    workloads : mapping, optional
        Domain name → a word for its workload (the result does not record it).

    Returns
    -------
    TextView

    Examples
    --------
    >>> from virtcore.sched import Credit, Domain, simulate
    >>> r = simulate([Domain("a", weight=512), Domain("b")], Credit(), duration_us=900_000)
    >>> print(share_table(r))  # doctest: +NORMALIZE_WHITESPACE
    VM  weight  cap  workload  CPU ms  share  of all  wakes  latency mean µs  p95 µs
    a      512    -  -          600.0  66.7%   66.7%      1                0       0
    b      256    -  -          300.0  33.3%   33.3%      1            30000   30000
    Credit on 1 pCPU(s), 900 ms; share = % of one pCPU
    """
    total = sum(result.vcpu_cpu_us.values()) or 1
    head = ("VM", "weight", "cap", "workload", "CPU ms", "share", "of all", "wakes",
            "latency mean µs", "p95 µs")
    rows = [head]
    for name, params in result.domain_params.items():
        lat = result.domain_latency(name)
        cpu = result.domain_cpu_us[name]
        rows.append((
            name, str(params["weight"]), str(params["cap"] or "-"),
            (workloads or {}).get(name, "-"), f"{cpu / 1000:.1f}",
            f"{100 * result.domain_share[name]:.1f}%", f"{100 * cpu / total:.1f}%",
            str(lat.n), "-" if lat.mean is None else f"{lat.mean:.0f}",
            "-" if lat.p95 is None else str(lat.p95),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if j in (0, 3) else c.rjust(w)
                       for j, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    lines.append(f"{result.scheduler} on {result.pcpus} pCPU(s),"
                 f" {result.duration_us / 1000:g} ms; share = % of one pCPU")
    text = "\n".join(lines)
    return TextView(text, html=f'<pre style="font-size:12px">{esc(text)}</pre>')


# ---------------------------------------------------------------------------
# the playground: pure functions, then a thin widget


@dataclass(frozen=True)
class VMSpec:
    """One VM of the playground: name, credit weight and cap, workload kind.

    >>> VMSpec("web", weight=512, workload="io").domain()
    Domain('web', vcpus=1, weight=512)
    >>> VMSpec("x", workload="gpu").domain()
    Traceback (most recent call last):
    ...
    virtcore.errors.ConfigurationError: unknown workload 'gpu'; choose from cpu, io, ...
    """

    name: str
    weight: int = 256
    cap: int = 0
    workload: str = "cpu"

    def domain(self) -> Domain:
        """The :class:`~virtcore.sched.Domain` this spec describes (one vCPU)."""
        if self.workload not in WORKLOADS:
            raise ConfigurationError(f"unknown workload {self.workload!r}; choose from "
                                     f"{', '.join(WORKLOADS)}")
        return Domain(self.name, weight=self.weight, cap=self.cap,
                      workload=WORKLOADS[self.workload][0])


def make_scheduler(name: str, timeslice_ms: int = 30) -> Scheduler:
    """A fresh scheduler by name: ``"FIFO"``, ``"RR"`` (timeslice) or ``"Credit"`` (``tslice_ms``).

    FIFO has no timeslice: ``timeslice_ms`` is ignored.

    >>> make_scheduler("RR", 10).timeslice_us, make_scheduler("Credit", 10).tick_us
    (10000, 3333)
    """
    key = name.strip().lower()
    if key == "fifo":
        return FIFO()
    if key in ("rr", "roundrobin", "round-robin"):
        return RoundRobin(timeslice_ms * 1000)
    if key == "credit":
        return Credit(tslice_ms=timeslice_ms)
    raise ConfigurationError(f"unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}")


#: The playground's VMs before anything is changed.
DEFAULT_VMS: tuple[VMSpec, ...] = (
    VMSpec("vm1", 512, 0, "cpu"),
    VMSpec("vm2", 256, 0, "cpu"),
    VMSpec("vm3", 256, 0, "interactive"),
    VMSpec("vm4", 256, 0, "io"),
)


def run_playground(scheduler: str = "Credit", pcpus: int = 1,
                   vms: Sequence[VMSpec] = DEFAULT_VMS[:3], timeslice_ms: int = 30,
                   duration_ms: int = 600, seed: int = 0) -> SchedResult:
    """Simulate the playground's choice (pure: same arguments, same result).

    >>> r = run_playground("Credit", 1, [VMSpec("a", 512), VMSpec("b", 256)], 30, 900)
    >>> round(r.domain_share["a"] / r.domain_share["b"], 1)
    2.0
    """
    if not 1 <= len(vms) <= 10:
        raise ConfigurationError(f"the playground takes 1 to 10 VMs, not {len(vms)}")
    return simulate([v.domain() for v in vms], make_scheduler(scheduler, timeslice_ms),
                    pcpus=pcpus, duration_us=duration_ms * 1000, seed=seed)


def _figure(size: tuple[float, float]) -> Any:
    """A figure outside pyplot (nothing to close; fixed margins: no layout pass)."""
    figure_mod = require("matplotlib.figure")
    return figure_mod.Figure(figsize=size)


def _png(fig: Any, dpi: int = 72) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def playground_view(scheduler: str = "Credit", pcpus: int = 1,
                    vms: Sequence[VMSpec] = DEFAULT_VMS[:3], timeslice_ms: int = 30,
                    duration_ms: int = 600, seed: int = 0) -> tuple[Any, TextView]:
    """What :func:`scheduler_playground` shows: ``(Figure, text)`` for one choice.

    The figure: the Gantt chart; the text: the share table with wake-up
    latencies, and a line about the scheduler's rules.

    >>> fig, text = playground_view("RR", 2, [VMSpec("a"), VMSpec("b"), VMSpec("c")], 10, 300)
    >>> len(fig.axes), text.splitlines()[0].split()[:3]
    (1, ['VM', 'weight', 'cap'])
    """
    result = run_playground(scheduler, pcpus, vms, timeslice_ms, duration_ms, seed)
    # one Axes only: each extra Axes and its tick labels cost ~20 ms of rendering, and
    # the widget must redraw in well under 100 ms (the shares are in the table)
    fig = _figure((9.0, 1.1 + 0.4 * pcpus))
    fig.subplots_adjust(left=0.07, right=0.88, bottom=0.9 / (1.1 + 0.4 * pcpus), top=0.84)
    gantt(result, fig.add_subplot(), title=f"{result.scheduler}: who ran where (colour = VM)")
    key = ", ".join(f"{v.name} {WORKLOADS[v.workload][1].split(':')[0]}" for v in vms)
    table = share_table(result, {v.name: v.workload for v in vms})
    rules_by_key = {
        "fifo": "FIFO: no timeslice — a CPU-bound VM keeps its pCPU until it blocks.",
        "rr": f"round-robin: {timeslice_ms} ms slices in turn; weights and caps are ignored.",
        "credit": (f"Xen credit: weights share the CPU, caps limit it; tslice {timeslice_ms} ms"
                   " (accounting period), BOOST on wake-up."),
    }
    rules = rules_by_key.get(scheduler.strip().lower(), rules_by_key["rr"])
    text = f"{table}\n{rules}\nVMs: {key}"
    return fig, TextView(text, html=f'<pre style="font-size:12px;margin:0">{esc(text)}</pre>')


def scheduler_playground(*, seed: int = 0) -> Any:
    """Pick a scheduler, pCPUs, 2–4 VMs (weight, cap, workload), timeslice and time; see the run.

    Each change calls :func:`playground_view` (a 300 ms–1 s simulation, then
    the drawing) and shows its figure and its share/latency table.

    Parameters
    ----------
    seed : int
        The workloads' seed.

    Returns
    -------
    ipywidgets.VBox
        With ``controls`` (``"scheduler"``, ``"pcpus"``, ``"vms"``,
        ``"timeslice_ms"``, ``"duration_ms"``, and ``"weight1"``…``"weight4"``,
        ``"cap1"``…, ``"workload1"``…), ``image``, ``text``, ``update()`` and
        ``specs()`` (the VMs as chosen).

    Examples
    --------
    >>> w = scheduler_playground()
    >>> w.controls["scheduler"].value = "RR"
    >>> "round-robin" in w.text.value
    True
    >>> w.controls["vms"].value = 2
    >>> [s.name for s in w.specs()], "vm3" in w.text.value
    (['vm1', 'vm2'], False)
    """
    widgets = require("ipywidgets")
    style = {"description_width": "90px"}
    narrow = widgets.Layout(width="250px")
    controls: dict[str, Any] = {
        "scheduler": widgets.Dropdown(options=list(SCHEDULERS), value="Credit",
                                      description="scheduler", style=style, layout=narrow),
        "pcpus": widgets.IntSlider(value=1, min=1, max=4, description="pCPUs",
                                   continuous_update=False, style=style, layout=narrow),
        "vms": widgets.IntSlider(value=3, min=2, max=4, description="VMs",
                                 continuous_update=False, style=style, layout=narrow),
        "timeslice_ms": widgets.IntSlider(value=30, min=1, max=100, description="timeslice ms",
                                          continuous_update=False, style=style, layout=narrow),
        "duration_ms": widgets.IntSlider(value=600, min=300, max=1000, step=100,
                                         description="sim. ms", continuous_update=False,
                                         style=style, layout=narrow),
    }
    rows = []
    for i, spec in enumerate(DEFAULT_VMS, start=1):
        w = widgets.IntSlider(value=spec.weight, min=32, max=1024, step=32,
                              description=f"vm{i} weight", continuous_update=False,
                              style=style, layout=narrow)
        c = widgets.IntSlider(value=spec.cap, min=0, max=100, step=5, description="cap %",
                              continuous_update=False, style={"description_width": "45px"},
                              layout=widgets.Layout(width="210px"))
        k = widgets.Dropdown(options=list(WORKLOADS), value=spec.workload,
                             description="workload", style={"description_width": "60px"},
                             layout=widgets.Layout(width="190px"))
        controls[f"weight{i}"], controls[f"cap{i}"], controls[f"workload{i}"] = w, c, k
        rows.append(widgets.HBox([w, c, k]))
    image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
    text = widgets.HTML()

    def specs() -> list[VMSpec]:
        return [VMSpec(f"vm{i}", controls[f"weight{i}"].value, controls[f"cap{i}"].value,
                       controls[f"workload{i}"].value)
                for i in range(1, controls["vms"].value + 1)]

    def update(_change: Any = None) -> None:
        for i, row in enumerate(rows, start=1):
            row.layout.display = "" if i <= controls["vms"].value else "none"
        try:
            fig, words = playground_view(controls["scheduler"].value, controls["pcpus"].value,
                                         specs(), controls["timeslice_ms"].value,
                                         controls["duration_ms"].value, seed)
        except (ConfigurationError, ViewError) as exc:  # show misuse, never raise in a widget
            text.value = f'<pre style="color:#b00020">{esc(type(exc).__name__)}: {esc(exc)}</pre>'
            return
        image.value = _png(fig)
        text.value = words.html or esc(words)

    for control in controls.values():
        control.observe(update, names="value")
    update()
    left = widgets.VBox([controls[k] for k in
                         ("scheduler", "pcpus", "vms", "timeslice_ms", "duration_ms")])
    box = widgets.VBox([widgets.HBox([left, widgets.VBox(rows)]), image, text])
    box.controls = controls
    box.image = image
    box.text = text
    box.update = update
    box.specs = specs
    return box
