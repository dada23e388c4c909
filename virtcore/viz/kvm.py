"""Views of KVM (:mod:`virtcore.kvm`): ioctl and exit traces, structures, device paths, TCG.

Pure data first, display later.  :mod:`virtcore.kvm` runs guests on the
simulated (or the real) ``/dev/kvm``, drives QEMU's loop and compares I/O
paths and accelerators; this module only shows what it returns:

- **the call sequence** (S3.1) [KVM-H; LWN15] — :func:`ioctl_table`: one row per
  ``ioctl`` a VMM made (a
  :class:`~virtcore.kvm.cli.RunReport`, or a list of names), with the
  descriptor it goes to, the request number, its ``_IO``/``_IOR``/``_IOW``
  encoding and, for ``KVM_RUN``, the exit it returned with;
- **structures** [KVM-H; KVM-API §4.35, §5] — :func:`struct_table`: the fields of a ctypes
  structure (``kvm_userspace_memory_region``, ``kvm_regs`` …) with offset,
  size, C type and value;
- **exits** [KVM-H; KVM-API §5] — :func:`exit_table`: one row per ``KVM_RUN`` exit
  read out of ``kvm_run``; :func:`compare_exits`: two traces side by side
  (the model against the real kernel);
- **QEMU's side** (S4.3) — :func:`vmm_exit_table`: one row per exit QEMU's
  loop handled, with the device, where it was handled and the kernel↔user
  transitions it cost;
- **device paths** (S4.5, N4, N5) — :func:`plot_device_paths`: VM exits per
  request and mean latency of native, emulated and virtio I/O;
- **TCG against KVM** (S3.3, S4.4, N6) — :func:`plot_tcg_kvm`: simulated
  time of the same guest under QEMU's TCG and under KVM.

Tables are :class:`~virtcore.viz._lazy.TextView` strings (their repr is the
table) with an HTML rendering for Jupyter.  matplotlib is imported inside the
plotting functions only.

>>> from virtcore.kvm.cli import run_guest
>>> from virtcore.kvm.guests import teaching_lwn
>>> report = run_guest(teaching_lwn())
>>> print(exit_table(report).splitlines()[2])
1  2  KVM_EXIT_IO  out  port 0x3f8  4     1      34000000 '4'
>>> len(ioctl_table(report).rows) == len(report.ioctls)
True
"""

from __future__ import annotations

import ctypes
import textwrap
from collections.abc import Sequence
from typing import Any

from virtcore.kvm.api import (
    IOCTL_NAMES,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_IO,
    KVM_EXIT_IO_OUT,
    KVM_EXIT_MMIO,
    ExitRecord,
    ioc_dir,
    ioc_size,
    ioc_type,
)
from virtcore.kvm.cli import RunReport
from virtcore.kvm.qemu import IOComparison, QemuRun
from virtcore.kvm.tcg import TcgComparison
from virtcore.viz import ViewError
from virtcore.viz._lazy import TextView, esc, require, wire_stepper

__all__ = [
    "IOCTL_FD",
    "PATH_COLOURS",
    "TableView",
    "compare_exits",
    "exit_stepper",
    "exit_table",
    "ioctl_table",
    "plot_device_paths",
    "plot_qemu_kvm_graph",
    "plot_tcg_kvm",
    "qemu_kvm_graph",
    "render_exit_step",
    "request_encoding",
    "struct_table",
    "vmm_exit_table",
]

#: The descriptor each request goes to [KVM-API §4; KVM-MAIN; KVM-H]: ``open("/dev/kvm")``
#: gives the system fd, ``KVM_CREATE_VM`` a VM fd, ``KVM_CREATE_VCPU`` a vCPU fd.
IOCTL_FD: dict[str, str] = {
    "KVM_GET_API_VERSION": "system",
    "KVM_CREATE_VM": "system",
    "KVM_GET_MSR_INDEX_LIST": "system",
    "KVM_CHECK_EXTENSION": "system/vm",
    "KVM_GET_VCPU_MMAP_SIZE": "system",
    "KVM_CREATE_VCPU": "vm",
    "KVM_GET_DIRTY_LOG": "vm",
    "KVM_SET_USER_MEMORY_REGION": "vm",
    "KVM_SET_TSS_ADDR": "vm",
    "KVM_CREATE_IRQCHIP": "vm",
    "KVM_RUN": "vcpu",
    "KVM_GET_REGS": "vcpu",
    "KVM_SET_REGS": "vcpu",
    "KVM_GET_SREGS": "vcpu",
    "KVM_SET_SREGS": "vcpu",
    "KVM_INTERRUPT": "vcpu",
}

#: Bar colours of the I/O paths (:data:`virtcore.kvm.qemu.PATHS`).
PATH_COLOURS: dict[str, str] = {
    "native-legacy": "#c7c7c7",
    "emulated": "#d62728",
    "native": "#7f7f7f",
    "virtio": "#2ca02c",
    "virtio+ioeventfd": "#1f77b4",
    "vhost": "#17becf",
}

_REQUESTS: dict[str, int] = {name: number for number, name in IOCTL_NAMES.items()}
_MACROS = {0: "_IO", 1: "_IOW", 2: "_IOR", 3: "_IOWR"}
_CTYPE_NAMES = {ctypes.c_uint8: "__u8", ctypes.c_uint16: "__u16", ctypes.c_uint32: "__u32",
                ctypes.c_uint64: "__u64", ctypes.c_int32: "__s32", ctypes.c_int64: "__s64"}
_TABLE_STYLE = ("border-collapse:collapse;font-family:var(--jp-code-font-family,monospace);"
                "font-size:12px")
_CELL = "text-align:{align};padding:1px 8px;white-space:nowrap"


class TableView(TextView):
    """A text table (a :class:`~virtcore.viz._lazy.TextView`) that keeps its rows.

    ``head`` is the header row and ``rows`` the body, each a tuple of cell
    texts, so tests and readers can count and read rows without parsing.

    >>> t = TableView.build(("a", "b"), [("1", "x"), ("22", "y")], footer="2 rows")
    >>> print(t)
    a   b
    --  -
    1   x
    22  y
    2 rows
    >>> len(t.rows), t.head
    (2, ('a', 'b'))
    """

    head: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    @classmethod
    def build(cls, head: Sequence[str], rows: Sequence[Sequence[str]], *,
              footer: str = "", right: Sequence[int] = ()) -> TableView:
        """Lay out ``rows`` under ``head``; columns listed in ``right`` are right-aligned."""
        head_t = tuple(str(h) for h in head)
        body = tuple(tuple(str(c) for c in r) for r in rows)
        if any(len(r) != len(head_t) for r in body):
            raise ViewError("every row needs one cell per column")
        widths = [max(len(r[i]) for r in (head_t, *body)) for i in range(len(head_t))]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        lines = [line(head_t), line(["-" * w for w in widths]), *map(line, body)]
        if footer:
            lines.append(footer)

        def td(tag: str, i: int, c: str) -> str:
            align = "right" if i in right else "left"
            return f'<{tag} style="{_CELL.format(align=align)}">{esc(c)}</{tag}>'

        html = [f'<table style="{_TABLE_STYLE}">',
                "<tr>" + "".join(td("th", i, c) for i, c in enumerate(head_t)) + "</tr>"]
        html += ["<tr>" + "".join(td("td", i, c) for i, c in enumerate(r)) + "</tr>"
                 for r in body]
        html.append("</table>")
        if footer:
            html.append(f'<div style="font-size:12px">{esc(footer)}</div>')
        view = cls("\n".join(lines), html="".join(html))
        view.head = head_t
        view.rows = body
        return view


# ---------------------------------------------------------------------------
# ioctls and structures


def request_encoding(request: int) -> str:
    """How a request number is built: ``_IO(type, nr)`` or ``_IOR/_IOW/_IOWR(type, nr, size)``.

    The number packs direction (bits 30–31), argument size (16–29), type
    (8–15, ``KVMIO`` = 0xAE) and number (0–7), as ``<asm-generic/ioctl.h>``.

    >>> from virtcore.kvm.api import KVM_RUN, KVM_SET_USER_MEMORY_REGION, KVM_GET_SREGS
    >>> request_encoding(KVM_RUN), request_encoding(KVM_SET_USER_MEMORY_REGION)
    ('_IO(0xAE, 0x80)', '_IOW(0xAE, 0x46, 32 B)')
    >>> request_encoding(KVM_GET_SREGS)
    '_IOR(0xAE, 0x83, 312 B)'
    """
    d = ioc_dir(request)
    size = f", {ioc_size(request)} B" if d else ""
    return f"{_MACROS[d]}(0x{ioc_type(request):02X}, 0x{request & 0xFF:02x}{size})"


def ioctl_table(calls: RunReport | Sequence[str]) -> TableView:
    """The ioctls of a VMM, one row per call: descriptor, request number, encoding, result.

    Parameters
    ----------
    calls : RunReport or sequence of str
        A run of :func:`virtcore.kvm.cli.run_guest` (its ``ioctls``; each
        ``KVM_RUN`` is matched with the exit it returned, in order), or
        request names such as ``"KVM_CREATE_VM"``.

    Returns
    -------
    TableView
        Columns ``#``, ``fd``, ``ioctl``, ``request``, ``encoding``, ``returned``.

    Raises
    ------
    ViewError
        For a name that is not a KVM request.

    Examples
    --------
    >>> print(ioctl_table(["KVM_GET_API_VERSION", "KVM_SET_USER_MEMORY_REGION"]))
    #  fd      ioctl                       request     encoding                returned
    -  ------  --------------------------  ----------  ----------------------  --------
    1  system  KVM_GET_API_VERSION         0xae00      _IO(0xAE, 0x00)
    2  vm      KVM_SET_USER_MEMORY_REGION  0x4020ae46  _IOW(0xAE, 0x46, 32 B)
    """
    if isinstance(calls, RunReport):
        names, exits = list(calls.ioctls), [e.name for e in calls.exits]
    else:
        names, exits = list(calls), []
    rows = []
    runs = 0
    for i, name in enumerate(names, start=1):
        if name not in _REQUESTS:
            raise ViewError(f"{name!r} is not a KVM request "
                            f"(known: {', '.join(sorted(_REQUESTS))})")
        number = _REQUESTS[name]
        returned = ""
        if name == "KVM_RUN" and runs < len(exits):
            returned = exits[runs]
            runs += 1
        rows.append((str(i), IOCTL_FD.get(name, "?"), name, f"{number:#x}",
                     request_encoding(number), returned))
    return TableView.build(("#", "fd", "ioctl", "request", "encoding", "returned"), rows,
                           right=(0,))


def _ctype_name(t: Any) -> str:
    if t in _CTYPE_NAMES:
        return _CTYPE_NAMES[t]
    if isinstance(t, type) and issubclass(t, ctypes.Array):
        return f"{_ctype_name(t._type_)}[{t._length_}]"
    if isinstance(t, type) and issubclass(t, (ctypes.Structure, ctypes.Union)):
        return ("union " if issubclass(t, ctypes.Union) else "struct ") + t.__name__
    return getattr(t, "__name__", str(t))


def _value_text(v: Any, limit: int = 44) -> str:
    if isinstance(v, int):
        text = hex(v) if v > 9 else str(v)
    elif isinstance(v, ctypes.Array):
        items = [hex(x) if isinstance(x, int) and x > 9 else str(x) for x in v]
        text = "[" + ", ".join(items) + "]"
    else:
        text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def struct_table(struct: ctypes.Structure | type[ctypes.Structure]) -> TableView:
    """The fields of a ctypes structure: offset, size, C type and (for an instance) value.

    Parameters
    ----------
    struct : ctypes.Structure or its type
        E.g. ``kvm_userspace_memory_region(...)`` or ``kvm_regs``.

    Returns
    -------
    TableView
        One row per field of ``_fields_`` (padding included, so the sizes add
        up); the footer gives ``sizeof``.

    Examples
    --------
    >>> from virtcore.kvm.api import kvm_userspace_memory_region
    >>> print(struct_table(kvm_userspace_memory_region(slot=0, memory_size=0x1000)))
    field            offset  size  C type  value
    ---------------  ------  ----  ------  ------
    slot                  0     4  __u32   0
    flags                 4     4  __u32   0
    guest_phys_addr       8     8  __u64   0
    memory_size          16     8  __u64   0x1000
    userspace_addr       24     8  __u64   0
    struct kvm_userspace_memory_region: 32 bytes
    """
    cls = struct if isinstance(struct, type) else type(struct)
    if not (isinstance(cls, type) and issubclass(cls, (ctypes.Structure, ctypes.Union))):
        raise ViewError(f"struct_table needs a ctypes structure, not {struct!r}")
    instance = None if isinstance(struct, type) else struct
    rows: list[tuple[str, ...]] = []
    for name, ftype, *_ in cls._fields_:
        desc = getattr(cls, name)
        value = "" if instance is None else _value_text(getattr(instance, name))
        rows.append((name, str(desc.offset), str(desc.size), _ctype_name(ftype), value))
    head: tuple[str, ...] = ("field", "offset", "size", "C type", "value")
    if instance is None:
        head, rows = head[:4], [r[:4] for r in rows]
    return TableView.build(head, rows, right=(1, 2),
                           footer=f"struct {cls.__name__}: {ctypes.sizeof(cls)} bytes")


# ---------------------------------------------------------------------------
# exits


def _exits(trace: RunReport | Sequence[ExitRecord]) -> list[ExitRecord]:
    if isinstance(trace, RunReport):
        return list(trace.exits)
    recs = list(trace)
    if not all(isinstance(r, ExitRecord) for r in recs):
        raise ViewError("expected a RunReport or a sequence of ExitRecord")
    return recs


def _data_text(data: bytes) -> str:
    if not data:
        return ""
    text = data.hex()
    low = data[0]
    if 32 <= low < 127 or low in (9, 10, 13):
        text += " " + repr(chr(low))
    return text


def _exit_cells(rec: ExitRecord) -> tuple[str, str, str, str, str, str]:
    """direction, where, size, count, data, extra — of one exit."""
    if rec.reason == KVM_EXIT_IO:
        d = "out" if rec.direction == KVM_EXIT_IO_OUT else "in"
        return (d, f"port {rec.port:#x}", str(rec.size), str(rec.count),
                _data_text(rec.data), "")
    if rec.reason == KVM_EXIT_MMIO:
        d = "write" if rec.is_write else "read"
        return (d, f"addr {rec.phys_addr:#x}", str(rec.size), "", _data_text(rec.data),
                "")
    if rec.reason == KVM_EXIT_INTERNAL_ERROR:
        return ("", "", "", "", "", f"suberror {rec.suberror}")
    return ("", "", "", "", "", "")


def exit_table(trace: RunReport | Sequence[ExitRecord]) -> TableView:
    """Every ``KVM_RUN`` exit, one row each: ``exit_reason``, its name and its ``kvm_run`` member.

    IO exits show ``io.direction``, ``io.port``, ``io.size``, ``io.count`` and
    the data (an OUT's bytes; for an IN, what the VMM answered); MMIO exits
    ``mmio.phys_addr``, ``mmio.len``, ``mmio.is_write`` and data.  A
    :class:`~virtcore.kvm.cli.RunReport` recorded with ``regs_per_exit=True``
    adds ``rip`` after each exit.

    Parameters
    ----------
    trace : RunReport or sequence of ExitRecord

    Returns
    -------
    TableView

    Examples
    --------
    >>> from virtcore.kvm.api import ExitRecord, KVM_EXIT_HLT
    >>> print(exit_table([ExitRecord(2, port=0x3f8, direction=1, size=1, count=1, data=b"\\n"),
    ...                   ExitRecord(KVM_EXIT_HLT)]))
    #  exit_reason  name          dir  port / address  size  count  data     note
    -  -----------  ------------  ---  --------------  ----  -----  -------  ----
    1            2  KVM_EXIT_IO   out  port 0x3f8      1     1      0a '\\n'
    2            5  KVM_EXIT_HLT
    """
    recs = _exits(trace)
    regs = trace.regs_at_exit if isinstance(trace, RunReport) else []
    with_rip = bool(regs) and len(regs) == len(recs)
    rows = []
    for i, rec in enumerate(recs, start=1):
        cells: tuple[str, ...] = (str(i), str(rec.reason), rec.name, *_exit_cells(rec))
        if with_rip:
            cells += (f"{regs[i - 1].rip:#x}",)
        rows.append(cells)
    head: tuple[str, ...] = ("#", "exit_reason", "name", "dir", "port / address", "size",
                             "count", "data", "note")
    if with_rip:
        head += ("rip after",)
    return TableView.build(head, rows, right=(0, 1))


def compare_exits(a: RunReport | Sequence[ExitRecord], b: RunReport | Sequence[ExitRecord], *,
                  labels: tuple[str, str] = ("model", "real KVM")) -> TableView:
    """Two exit traces side by side, exit by exit, and whether each pair is identical.

    Parameters
    ----------
    a, b : RunReport or sequence of ExitRecord
    labels : pair of str
        Column titles.

    Returns
    -------
    TableView
        One row per exit of the longer trace; the footer says whether the
        traces are identical or where they first differ.

    Examples
    --------
    >>> from virtcore.kvm.api import ExitRecord
    >>> t = compare_exits([ExitRecord(5)], [ExitRecord(5), ExitRecord(8)])
    >>> [r[-1] for r in t.rows], t.splitlines()[-1]
    (['same', 'DIFFERENT'], 'the traces differ first at exit #2')
    """
    xs, ys = _exits(a), _exits(b)
    rows = []
    first = None
    for i in range(max(len(xs), len(ys))):
        x = xs[i] if i < len(xs) else None
        y = ys[i] if i < len(ys) else None
        same = x is not None and x == y
        if not same and first is None:
            first = i + 1
        rows.append((str(i + 1), "-" if x is None else str(x), "-" if y is None else str(y),
                     "same" if same else "DIFFERENT"))
    footer = (f"identical: {len(xs)} exits, field by field" if first is None
              else f"the traces differ first at exit #{first}")
    return TableView.build(("#", *labels, "?"), rows, right=(0,), footer=footer)


_HANDLED = {"user": ("QEMU (user space)", 2), "kernel": ("KVM (ioeventfd)", 0),
            "stop": ("QEMU, which stops", 1)}


def vmm_exit_table(run: QemuRun) -> TableView:
    """The exits QEMU's loop handled: access, device, who handled it, transitions, cost.

    An exit handled in QEMU costs two kernel↔user transitions (``KVM_RUN``
    returns to user space, QEMU calls it again); a kick on an ioeventfd, and a
    ``hlt`` on the in-kernel irqchip, are handled inside KVM (none for the vCPU
    thread); an exit that ends the run returns to QEMU, which stops (one).
    Costs are :class:`~virtcore.kvm.qemu.ExitCosts`, the course's cost model
    (**teaching assumptions**, ≈ ns).

    Parameters
    ----------
    run : QemuRun
        From :meth:`virtcore.kvm.qemu.QemuVMM.run`.

    Returns
    -------
    TableView
        One row per entry of ``run.trace``; the footer has the totals of ``run.stats``.

    Examples
    --------
    >>> from virtcore.kvm.qemu import QemuVMM, TeachingVcpu
    >>> v = TeachingVcpu("movi r1, 'k'\\nout 0x3f8, r1\\nhlt")
    >>> t = vmm_exit_table(QemuVMM(v.memory).run(v))
    >>> for r in t.rows:
    ...     print(r[1], r[3], r[4], r[5], sep=" | ")
    KVM_EXIT_IO | serial | QEMU (user space) | 2
    hlt (in KVM) | - | KVM (in-kernel irqchip) | 0
    """
    if not isinstance(run, QemuRun):
        raise ViewError(f"vmm_exit_table needs a QemuRun, not {type(run).__name__}")
    rows = []
    for e in run.trace:
        handled, transitions = _HANDLED.get(e.path, (e.path, 0))
        if e.path == "kernel" and e.reason.startswith("hlt"):
            handled = "KVM (in-kernel irqchip)"
        rows.append((str(e.index), e.reason, e.detail, e.device, handled, str(transitions),
                     f"{e.cost_ns:,.0f}"))
    st = run.stats
    shown = "" if len(run.trace) == st.exits else f" (first {len(run.trace)} shown)"
    footer = (f"{st.exits} exits{shown}: {st.user_exits} to QEMU, {st.kernel_exits} in KVM; "
              f"{st.transitions} kernel↔user transitions; {st.time_ns / 1000:,.1f} µs simulated "
              "(teaching-assumption costs)")
    return TableView.build(("#", "exit", "access", "device", "handled by", "k↔u", "cost ns"),
                           rows, right=(0, 5, 6), footer=footer)


# ---------------------------------------------------------------------------
# plots


def _new_axes(ax: Any, size: tuple[float, float]) -> Any:
    if ax is not None:
        return ax
    plt = require("matplotlib.pyplot")
    _, ax = plt.subplots(figsize=size)
    return ax


def plot_device_paths(comparison: IOComparison, ax: Any = None, *,
                      title: str | None = None) -> Any:
    """Bars of VM exits per request for each I/O path, and each path's mean latency (diamonds).

    Parameters
    ----------
    comparison : IOComparison
        From :func:`~virtcore.kvm.qemu.compare_block_io` or
        :func:`~virtcore.kvm.qemu.compare_net_tx`.
    ax : matplotlib Axes, optional
    title : str, optional
        Default: the workload.

    Returns
    -------
    matplotlib.axes.Axes
        One bar per path (height = exits per request); the latency is on the
        twin axes ``ax.latency_axes`` (µs, from the teaching-assumption costs).

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> from virtcore.kvm.qemu import compare_block_io
    >>> c = compare_block_io(requests=16, batch=4)
    >>> ax = plot_device_paths(c)
    >>> [p.get_height() for p in ax.patches] == [r.exits_per_request for r in c.rows]
    True
    >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    if not isinstance(comparison, IOComparison):
        raise ViewError(f"plot_device_paths needs an IOComparison, not {comparison!r}")
    ax = _new_axes(ax, (7, 3.2))
    rows = comparison.rows
    xs = list(range(len(rows)))
    heights = [r.exits_per_request for r in rows]
    ax.bar(xs, heights, width=0.55, color=[PATH_COLOURS.get(r.name, "#9467bd") for r in rows],
           label="VM exits per request")
    top = max(heights) if heights and max(heights) > 0 else 1.0
    for x, r in zip(xs, rows):
        h = r.exits_per_request
        inside = h > top * 0.15  # tall bars carry their value inside, clear of the diamonds
        ax.text(x, h / 2 if inside else h + top * 0.02, f"{h:.3g}", ha="center",
                va="center" if inside else "bottom", fontsize=8,
                color="white" if inside else "black", fontweight="bold" if inside else None)
    ax.set_xticks(xs, [r.name for r in rows], fontsize=8)
    ax.set_ylabel("VM exits per request")
    ax.set_ylim(0, top * 1.25)
    lat = ax.twinx()
    lat.plot(xs, [r.mean_latency_ns / 1000 for r in rows], "D", color="black",
             label="mean latency (µs)")
    lat.set_ylabel("mean latency µs (teaching costs)")
    lat.set_ylim(0, max(r.mean_latency_ns for r in rows) / 1000 * 1.25 or 1)
    h1, n1 = ax.get_legend_handles_labels()
    h2, n2 = lat.get_legend_handles_labels()
    ax.legend(h1 + h2, n1 + n2, fontsize=8, loc="upper right", frameon=False)
    ax.set_title(title if title is not None else textwrap.fill(comparison.workload, 70),
                 fontsize=9)
    ax.latency_axes = lat
    return ax


def plot_tcg_kvm(comparisons: TcgComparison | Sequence[TcgComparison], ax: Any = None, *,
                 title: str | None = None, log: bool = True) -> Any:
    """Simulated time of each workload under QEMU + TCG and under QEMU + KVM, side by side.

    Parameters
    ----------
    comparisons : TcgComparison or sequence of them
        From :func:`~virtcore.kvm.tcg.compare_tcg_kvm` or
        :func:`~virtcore.kvm.tcg.io_sweep`.
    ax : matplotlib Axes, optional
    title : str, optional
    log : bool
        A logarithmic time axis (default), so that short and long runs both show.

    Returns
    -------
    matplotlib.axes.Axes
        Two bars per workload (TCG first, then KVM), each pair labelled with
        the speed-up ``TCG time / KVM time``.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> from virtcore.kvm.tcg import io_sweep
    >>> sweep = io_sweep((0, 2), iterations=200)
    >>> ax = plot_tcg_kvm(sweep)
    >>> heights = [round(p.get_height(), 3) for p in ax.patches]
    >>> heights == [round(c.tcg.time_ns / 1000, 3) for c in sweep] + [
    ...     round(c.kvm.time_ns / 1000, 3) for c in sweep]
    True
    >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    cmps = [comparisons] if isinstance(comparisons, TcgComparison) else list(comparisons)
    if not cmps or not all(isinstance(c, TcgComparison) for c in cmps):
        raise ViewError("plot_tcg_kvm needs one or more TcgComparison")
    ax = _new_axes(ax, (max(5.0, 1.6 * len(cmps) + 2), 3.2))
    xs = list(range(len(cmps)))
    w = 0.38
    ax.bar([x - w / 2 for x in xs], [c.tcg.time_ns / 1000 for c in cmps], width=w,
           color="#ff7f0e", label="QEMU + TCG (every instruction translated)")
    ax.bar([x + w / 2 for x in xs], [c.kvm.time_ns / 1000 for c in cmps], width=w,
           color="#1f77b4", label="QEMU + KVM (native, exits for I/O)")
    top = max(max(c.tcg.time_ns, c.kvm.time_ns) for c in cmps) / 1000
    low = min(min(c.tcg.time_ns, c.kvm.time_ns) for c in cmps) / 1000
    for x, c in zip(xs, cmps):
        y = max(c.tcg.time_ns, c.kvm.time_ns) / 1000
        ax.text(x, y * 1.15 if log else y + top * 0.02, f"KVM {c.speedup:.1f}×", ha="center",
                va="bottom", fontsize=8)
    labels = [textwrap.fill(c.workload.split(", ", 1)[-1], 18) for c in cmps]
    ax.set_xticks(xs, labels, fontsize=7)
    ax.set_ylabel("simulated time µs (teaching costs)")
    if log and low > 0:
        ax.set_yscale("log")
        ax.set_ylim(low / 2, top * 8)
    else:
        ax.set_ylim(0, top * 1.35)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    ax.set_title(title if title is not None else
                 "the same guest without and with KVM (speed-up = TCG time / KVM time)",
                 fontsize=9)
    return ax


# ---------------------------------------------------------------------------
# the KVM_RUN exit stepper

#: where x86 KVM leaves port-I/O data: page ``KVM_PIO_PAGE_OFFSET`` (1) of the vCPU mapping
_PIO_DATA_OFFSET = 4096


def render_exit_step(report: RunReport, i: int) -> TableView:
    """The ``kvm_run`` fields after the ``i``-th ``KVM_RUN`` of ``report``, and what the VMM does.

    One row per field of ``struct kvm_run`` the exit fills in [KVM-H; KVM-API §5]:
    ``exit_reason``, then the member of the union it selects (``io``: direction,
    size, port, count, data_offset and the data there; ``mmio``: phys_addr, len,
    is_write, data; ``internal``: suberror), then ``rip`` after the exit (with
    ``regs_per_exit=True``) and the VMM's next move.

    Parameters
    ----------
    report : RunReport
        From :func:`virtcore.kvm.cli.run_guest`.
    i : int
        0-based exit number.

    Returns
    -------
    TableView
        Columns ``field``, ``value``, ``meaning``.

    Examples
    --------
    >>> from virtcore.kvm.cli import run_guest
    >>> from virtcore.kvm.guests import teaching_lwn
    >>> r = run_guest(teaching_lwn(), regs_per_exit=True)
    >>> [row[:2] for row in render_exit_step(r, 0).rows[:3]]
    [('exit_reason', '2 (KVM_EXIT_IO)'), ('io.direction', '1 (KVM_EXIT_IO_OUT)'), ('io.size', '4')]
    >>> render_exit_step(r, 2).rows[-1][1]
    'stop: the guest is done'
    """
    if not isinstance(report, RunReport):
        raise ViewError(f"render_exit_step needs a RunReport, not {type(report).__name__}")
    if not 0 <= i < len(report.exits):
        raise ViewError(f"exit {i} does not exist: the run had {len(report.exits)} exits")
    rec = report.exits[i]
    rows: list[tuple[str, str, str]] = [
        ("exit_reason", f"{rec.reason} ({rec.name})", "why KVM_RUN returned (offset 8)")]
    if rec.reason == KVM_EXIT_IO:
        out = rec.direction == KVM_EXIT_IO_OUT
        rows += [
            ("io.direction", f"{rec.direction} ({'KVM_EXIT_IO_OUT' if out else 'KVM_EXIT_IO_IN'})",
             "the guest wrote (OUT) or reads (IN)"),
            ("io.size", str(rec.size), "bytes per value"),
            ("io.port", f"{rec.port:#x}", "the I/O port" + (" (COM1)" if rec.port == 0x3F8
                                                             else "")),
            ("io.count", str(rec.count), "values (> 1 for rep ins/outs)"),
            ("io.data_offset", str(_PIO_DATA_OFFSET),
             "where the data is, from the start of kvm_run (the PIO page)"),
            ("data", _data_text(rec.data),
             "the byte(s) written" if out else "what the VMM put there for the guest"),
        ]
        action = (f"print {rec.data[:1]!r} (the UART takes the low byte), KVM_RUN again"
                  if out and rec.port == 0x3F8 else
                  "KVM_RUN again" if out else "answer the IN at data_offset, KVM_RUN again")
    elif rec.reason == KVM_EXIT_MMIO:
        rows += [
            ("mmio.phys_addr", f"{rec.phys_addr:#x}", "guest-physical address with no memory slot"),
            ("mmio.len", str(rec.size), "bytes"),
            ("mmio.is_write", str(int(bool(rec.is_write))), "1: a store, 0: a load"),
            ("mmio.data", _data_text(rec.data),
             "the stored bytes" if rec.is_write else "what the VMM returns to the load"),
        ]
        action = "emulate the device register, KVM_RUN again"
    elif rec.reason == KVM_EXIT_INTERNAL_ERROR:
        rows.append(("internal.suberror", str(rec.suberror),
                     "1 = KVM_INTERNAL_ERROR_EMULATION: KVM's emulator could not go on"))
        action = "stop: report the error"
    elif rec.name == "KVM_EXIT_INTR":
        rows.append(("(ioctl result)", "-1, errno EINTR",
                     "a signal ended KVM_RUN; no union member is filled in"))
        if report.mp_state is not None:
            rows.append(("KVM_GET_MP_STATE", str(report.mp_state),
                         "3 = KVM_MP_STATE_HALTED: the hlt put the vCPU to sleep in KVM"))
        action = "stop: the vCPU sleeps in the kernel (no KVM_EXIT_HLT with an in-kernel irqchip)"
    else:
        action = "stop: the guest is done"
    if i < len(report.regs_at_exit):
        regs = report.regs_at_exit[i]
        rows.append(("rip (KVM_GET_REGS)", f"{regs.rip:#x}", "the guest's next instruction"))
    rows.append(("VMM", action, ""))
    return TableView.build(("field", "value", "meaning"), rows,
                           footer=f"exit {i + 1} of {len(report.exits)}")


def exit_stepper(guest: Any = None, *, backend: str = "model", irqchip: bool = False,
                 report: RunReport | None = None) -> Any:
    """Step through a guest's ``KVM_RUN`` exits one at a time, showing ``kvm_run``'s fields.

    Runs ``guest`` with :func:`virtcore.kvm.cli.run_guest` (``regs_per_exit=True``)
    unless a ``report`` is given; each step is :func:`render_exit_step`.

    Parameters
    ----------
    guest : Guest, optional
        Default: the LWN guest in the teaching ISA.
    backend : {"model", "real"}
    irqchip : bool
        Create the in-kernel irqchip first (QEMU does): the final ``hlt`` never
        reaches the VMM.
    report : RunReport, optional

    Returns
    -------
    ipywidgets.VBox
        With ``report``, ``slider``, ``buttons`` (``"first"``, ``"prev"``, ``"next"``,
        ``"last"``), ``view`` and ``show(i)``.

    Examples
    --------
    >>> w = exit_stepper()
    >>> w.buttons["next"].click(); w.slider.value, "KVM_EXIT_IO" in w.view.value
    (1, True)
    >>> w.buttons["last"].click(); "KVM_EXIT_HLT" in w.view.value
    True
    """
    widgets = require("ipywidgets")
    if report is None:
        from virtcore.kvm.cli import run_guest
        from virtcore.kvm.guests import teaching_lwn

        report = run_guest(guest if guest is not None else teaching_lwn(), backend=backend,
                           regs_per_exit=True, irqchip=irqchip)
    n = len(report.exits)
    slider = widgets.IntSlider(value=0, min=0, max=max(0, n - 1), description="exit #",
                               layout=widgets.Layout(width="320px"))
    buttons = {key: widgets.Button(description=label, layout=widgets.Layout(width="auto"))
               for key, label in (("first", "⏮ first"), ("prev", "◀ previous"),
                                  ("next", "next ▶"), ("last", "last ⏭"))}
    head = widgets.HTML(f"<b>{n} exits</b>: {esc(' → '.join(e.name for e in report.exits))}"
                        f" — output {esc(repr(report.output))}")
    view = widgets.HTML()

    def show(i: int) -> None:
        view.value = (render_exit_step(report, i).html or "") if n else "no exit"

    slider.observe(lambda change: show(int(change["new"])), names="value")

    wire_stepper(slider, buttons, show, n)
    show(0)
    box = widgets.VBox([head, widgets.HBox([*buttons.values(), slider]), view])
    box.report = report
    box.slider = slider
    box.buttons = buttons
    box.view = view
    box.show = show
    return box


# ---------------------------------------------------------------------------
# the qemu-kvm stack as a graph

_LAYERS = ("guest", "user", "kernel", "hardware")


def qemu_kvm_graph(vmm: Any, *, vcpus: int = 1, irqchip: bool = True) -> Any:
    """The qemu-kvm stack (S4.3) as a networkx graph built from a running :class:`QemuVMM`.

    Nodes carry ``layer`` (``"guest"``, ``"user"``, ``"kernel"``, ``"hardware"``):
    the guest's vCPUs; QEMU's process — one vCPU thread per vCPU looping on
    ``KVM_RUN`` [QEMU-ACCEL], its I/O thread, and every device on the VMM's bus
    (an emulated device or a virtio back end in user space); KVM in the kernel with
    ``/dev/kvm``, the in-kernel irqchip, one ioeventfd per registered kick address
    and the vhost workers where the VMM set them up; the CPU with VT-x/AMD-V.  Edges
    carry ``label`` and ``count``: how many exits took that path in the run so far
    (``vmm.stats``).

    Parameters
    ----------
    vmm : QemuVMM
    vcpus : int
    irqchip : bool
        Whether the VM has KVM's in-kernel interrupt controller (QEMU's x86 default).

    Returns
    -------
    networkx.DiGraph

    Examples
    --------
    >>> from virtcore.kvm.qemu import QemuVMM, TeachingVcpu
    >>> v = TeachingVcpu("movi r1, 'k'\\nout 0x3f8, r1\\nhlt")
    >>> vmm = QemuVMM(v.memory); _ = vmm.run(v)
    >>> g = qemu_kvm_graph(vmm)
    >>> g.nodes["serial"]["layer"], g.edges["KVM", "CPU 0/KVM"]["count"]
    ('user', 1)
    >>> g.edges["vCPU 0", "KVM"]["count"]   # the out and the hlt
    2
    """
    from virtcore.kvm.qemu import QemuVMM, VirtioNotifyPort

    nx = require("networkx")
    if not isinstance(vmm, QemuVMM):
        raise ViewError(f"qemu_kvm_graph needs a QemuVMM, not {type(vmm).__name__}")
    if isinstance(vcpus, bool) or not isinstance(vcpus, int) or vcpus < 1:
        raise ViewError(f"vcpus must be a positive int, got {vcpus!r}")
    st = vmm.stats
    g = nx.DiGraph(name="qemu-kvm")
    g.add_node("CPU (VT-x / AMD-V)", layer="hardware", kind="cpu")
    g.add_node("RAM", layer="hardware", kind="memory")
    g.add_node("KVM", layer="kernel", kind="module", text="kvm.ko + kvm-intel / kvm-amd")
    g.add_node("/dev/kvm", layer="kernel", kind="device file")
    g.add_node("QEMU I/O thread", layer="user", kind="thread")
    g.add_edge("/dev/kvm", "KVM", label="ioctl", count=0)
    g.add_edge("KVM", "CPU (VT-x / AMD-V)", label="VM entry", count=st.vm_entries)
    if irqchip:
        g.add_node("in-kernel irqchip", layer="kernel", kind="irqchip")
        g.add_edge("KVM", "in-kernel irqchip", label="hlt, interrupts",
                   count=st.by_reason.get("hlt (in KVM)", 0))
    for k in range(vcpus):
        guest, thread = f"vCPU {k}", f"CPU {k}/KVM"
        g.add_node(guest, layer="guest", kind="vcpu")
        g.add_node(thread, layer="user", kind="thread")
        share = st.vm_exits if k == 0 else 0  # the model runs one vCPU
        g.add_edge(guest, "KVM", label="VM exit", count=share)
        g.add_edge(thread, "/dev/kvm", label="ioctl(KVM_RUN)", count=0)
        g.add_edge("KVM", thread, label="KVM_RUN returns (IO/MMIO)",
                   count=st.kernel_to_user if k == 0 else 0)
    for dev in vmm.bus.devices:
        handled = st.by_device.get(dev.name, 0)
        if isinstance(dev, VirtioNotifyPort) and dev.ioeventfd:
            efd = f"ioeventfd {dev.ports.start:#x}"  # one eventfd per registered address
            g.add_node(efd, layer="kernel", kind="eventfd")
            g.add_edge("KVM", efd, label="kick", count=handled)
            if dev.vhost:
                g.add_node(dev.name, layer="kernel", kind="vhost worker")
                g.add_edge(efd, dev.name, label="wake", count=handled)
            else:
                g.add_node(dev.name, layer="user", kind="virtio device")
                wakes = g.edges[efd, "QEMU I/O thread"]["count"] if g.has_edge(
                    efd, "QEMU I/O thread") else 0
                g.add_edge(efd, "QEMU I/O thread", label="wake", count=wakes + handled)
                g.add_edge("QEMU I/O thread", dev.name, label="process queue", count=handled)
        else:
            kind = "virtio device" if isinstance(dev, VirtioNotifyPort) else "emulated device"
            g.add_node(dev.name, layer="user", kind=kind)
            g.add_edge("CPU 0/KVM", dev.name, label="emulate", count=handled)
        g.add_edge(dev.name, "RAM", label="DMA", count=0)
    return g


def plot_qemu_kvm_graph(graph: Any, ax: Any = None) -> Any:
    """Draw :func:`qemu_kvm_graph`: one row per layer (guest on top, hardware at the bottom).

    Edge labels show each path's label and, when non-zero, its count.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> from virtcore.kvm.qemu import QemuVMM
    >>> from virtcore.kvm.virtio import GuestRAM
    >>> ax = plot_qemu_kvm_graph(qemu_kvm_graph(QemuVMM(GuestRAM(4096))))
    >>> sorted(t.get_text() for t in ax.texts if t.get_text() in ("KVM", "RAM"))
    ['KVM', 'RAM']
    >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    nx = require("networkx")
    if not isinstance(graph, nx.DiGraph) or any("layer" not in d for _, d in
                                                 graph.nodes(data=True)):
        raise ViewError("plot_qemu_kvm_graph needs the graph of qemu_kvm_graph()")
    ax = _new_axes(ax, (10, 5.2))
    pos = {}
    for row, layer in enumerate(_LAYERS):
        names = [n for n, d in graph.nodes(data=True) if d["layer"] == layer]
        for col, name in enumerate(names):
            pos[name] = ((col + 0.5) / max(len(names), 1), -row)
        ax.text(-0.08, -row, layer, ha="right", va="center", fontsize=9, style="italic")
    colours = {"guest": "#ffdd99", "user": "#aed6f1", "kernel": "#d5f5e3", "hardware": "#e5e7e9"}
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_size=1900, node_shape="s",
                           node_color=[colours[d["layer"]] for _, d in graph.nodes(data=True)])
    nx.draw_networkx_labels(graph, pos, ax=ax, font_size=7)
    nx.draw_networkx_edges(graph, pos, ax=ax, arrows=True, arrowsize=10, node_size=1900,
                           connectionstyle="arc3,rad=0.08")
    labels = {(u, v): d["label"] + (f" ×{d['count']}" if d.get("count") else "")
              for u, v, d in graph.edges(data=True)}
    nx.draw_networkx_edge_labels(graph, pos, edge_labels=labels, ax=ax, font_size=6)
    ax.set_xlim(-0.15, 1.05)
    ax.set_axis_off()
    ax.set_title("the qemu-kvm stack, from the running model", fontsize=9)
    return ax
