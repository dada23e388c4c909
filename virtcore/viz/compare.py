"""KVM beside Xen (chapters 3 and 4): the same workload on both models, measured and drawn.

KVM and Xen are separate packages that never import each other (``hw ← vmm ← {kvm, xen}``);
everything that runs *both* lives here, above them, in the views layer.  Nothing is typed by
hand: the graphs, traces, tables and costs are read off running models —
:class:`virtcore.kvm.host.Host` (vCPU threads on the host's CFS-like scheduler),
:class:`virtcore.kvm.qemu.QemuVMM` (KVM exits handled by a QEMU-like VMM, emulated and virtio
devices), :func:`virtcore.kvm.qemu.compare_block_io` (six I/O paths, each beside a fair native
baseline), and :class:`virtcore.xen.Xen` (hypercalls, event channels, grant tables, the
blkfront/blkback split driver, the credit scheduler) [KVM-ORIG; QEMU-ACCEL; XEN-GNTTAB;
XEN-RING; XEN-BLKIF; XEN-CREDIT].

Concepts and how each is represented:

- **the two stacks** — :func:`kvm_stack` (a networkx graph of a Linux host with ``kvm.ko``,
  QEMU processes and their vCPU threads, built from a :class:`Host` and a run of the VMM) and
  :func:`xen_stack` (the library's :func:`virtcore.xen.graphs.stack_graph` of a running Xen);
  both drawn as SVG by :func:`graph_svg`, a path highlighted;
- **the same I/O workload on both** — :func:`block_paths`: the block workload of
  :func:`~virtcore.kvm.qemu.compare_block_io` (same requests, sizes, sectors, batching) through
  native, emulated, virtio, vhost *and* Xen's split driver, per request: entries into the
  hypervisor (VM exits or hypercalls), crossings, hypervisor checks, copies, simulated time;
- **the traces** — :func:`kvm_trace` (the VMM's ``KVM_RUN`` / exit log) beside
  :func:`xen_trace` (Xen's hypercall / event / grant trace) for one batch;
- **who schedules the vCPUs** — :func:`schedulers`: the same VMs as threads on the host's CFS
  and as domains on Xen's credit scheduler;
- **where each virtualizes CPU, memory and I/O** — :func:`where_table`, read from the models;
- **sharing memory with the back end** — :func:`sharing_costs` (Xen: grant map/unmap per page;
  KVM: QEMU reads guest RAM it already maps), :func:`forged_map` (a mapping Xen refuses, with
  its real ``GNTST_*`` code) and :func:`qemu_reads_guest` (QEMU reads a page the guest never
  offered).

Simplified (say so in the chapters): the Xen run is synchronous, like the rest of
:mod:`virtcore.xen.splitdrv`; the library has no persistent grants; the device's DMA is priced
inside ``device`` on every path (the Xen model prices its DMA step apart, at ``page_copy``;
:func:`block_paths` leaves that step out so that equal work costs the same on both sides); the
guest driver's own instructions are those of :mod:`virtcore.kvm.qemu`'s virtio driver on every
queue-based path, Xen's included.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from virtcore.costs import DEFAULT_COSTS, Costs
from virtcore.viz import ViewError
from virtcore.viz._lazy import TextView, esc, require

if TYPE_CHECKING:
    from virtcore.kvm.host import Host
    from virtcore.kvm.qemu import QemuVMM
    from virtcore.sched import SchedResult
    from virtcore.xen import Xen

__all__ = [
    "PATH_NAMES",
    "BlockPaths",
    "PathRow",
    "block_paths",
    "forged_map",
    "graph_svg",
    "io_explorer",
    "io_view",
    "kvm_path_edges",
    "kvm_stack",
    "kvm_trace",
    "path_bars_svg",
    "path_graph",
    "plot_schedulers",
    "qemu_reads_guest",
    "schedulers",
    "sharing_costs",
    "trace_html",
    "where_html",
    "where_table",
    "xen_block_run",
    "xen_path_edges",
    "xen_stack",
    "xen_trace",
]

#: The paths :func:`block_paths` measures, in order, with the hypervisor each runs on.
PATH_NAMES = {
    "native-legacy": "native", "emulated": "KVM", "native": "native", "virtio": "KVM",
    "virtio+ioeventfd": "KVM", "vhost": "KVM", "split driver": "Xen",
}
SECTOR = 512
_RAMP = bytes(range(256)) * (4096 // 256 + 1)


# ---------------------------------------------------------------------------
# the same block workload on both


@dataclass(frozen=True)
class PathRow:
    """One I/O path's totals for the workload of :func:`block_paths`.

    ``entries``: entries into the hypervisor (VM exits under KVM, hypercalls under Xen);
    ``crossings``: every change of protection domain, each direction counted (a VM exit and its
    entry = 2, a kernel↔user transition = 1, a hypercall = 2, an upcall = 1, a switch to another
    domain = 1); ``checks``: permission checks the *hypervisor* makes on the request's memory
    (Xen: one per grant mapping); ``copies``: pages copied by software; ``time_ns``: simulated
    time of the whole workload (:data:`virtcore.costs.DEFAULT_COSTS`).

    >>> r = PathRow("x", "KVM", 4, 2, 8, 0, 0, 40_000.0, 9_000.0, True)
    >>> r.per("crossings"), r.time_per_request
    (2.0, 10000.0)
    """

    name: str
    hypervisor: str
    requests: int
    entries: int
    crossings: int
    checks: int
    copies: int
    time_ns: float
    latency_ns: float
    data_ok: bool

    def per(self, what: str) -> float:
        """``what`` (a count attribute) per request."""
        return float(getattr(self, what)) / self.requests

    @property
    def time_per_request(self) -> float:
        """Simulated ns per request."""
        return self.time_ns / self.requests


@dataclass(frozen=True)
class BlockPaths:
    """:func:`block_paths`'s rows and the workload they share."""

    workload: str
    rows: tuple[PathRow, ...]

    def __getitem__(self, name: str) -> PathRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def table(self) -> TextView:
        """Per-request figures as a text table."""
        head = ("path", "on", "entries/req", "crossings/req", "checks/req", "copies/req",
                "ns/req", "latency µs", "data")
        rows = [head] + [(r.name, r.hypervisor, f"{r.per('entries'):.3g}",
                          f"{r.per('crossings'):.3g}", f"{r.per('checks'):.3g}",
                          f"{r.per('copies'):.3g}", f"{r.time_per_request:,.0f}",
                          f"{r.latency_ns / 1000:.1f}", "ok" if r.data_ok else "BAD")
                         for r in self.rows]
        w = [max(len(x[i]) for x in rows) for i in range(len(head))]
        lines = [f"same workload: {self.workload}"]
        for i, row in enumerate(rows):
            lines.append("  ".join(c.ljust(w[j]) if j < 2 else c.rjust(w[j])
                                   for j, c in enumerate(row)))
            if i == 0:
                lines.append("  ".join("-" * x for x in w))
        return TextView("\n".join(lines))

    def __repr__(self) -> str:
        return str(self.table())


def _plan(requests: int, batch: int, request_bytes: int, write_fraction: float,
          seed: int) -> tuple[list[tuple[bool, int]], int]:
    """The same (is_write, sector) plan as :func:`virtcore.kvm.qemu.compare_block_io`."""
    from virtcore.rng import make_rng

    nsec = request_bytes // SECTOR
    disk_sectors = max(64, 4 * nsec * batch)
    rng = make_rng(seed)
    return ([(rng.random() < write_fraction, rng.randrange(0, disk_sectors - nsec + 1))
             for _ in range(requests)], disk_sectors)


def _check(requests: int, batch: int, request_bytes: int) -> None:
    for n, v in (("requests", requests), ("batch", batch), ("request_bytes", request_bytes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ViewError(f"{n} must be a positive int, got {v!r}")
    if request_bytes % SECTOR or request_bytes > 11 * 4096:
        raise ViewError(f"request_bytes must be a multiple of 512 up to 45056 (11 pages of a"
                        f" blkif request), got {request_bytes}")
    if batch > 31:
        raise ViewError(f"batch must be at most 31 (a blkif ring has 32 slots), got {batch}")


def _xen_host(disk_sectors: int, pcpus: int = 2) -> Xen:
    from virtcore.xen import Xen

    xen = Xen(frames=512, pcpus=pcpus, disk_sectors=max(256, disk_sectors))
    xen.create_guest("guest", memory_pages=96, disk=True)
    return xen


def xen_block_run(requests: int = 16, batch: int = 4, request_bytes: int = 4096, *,
                  write_fraction: float = 0.5, seed: int = 0, xen: Xen | None = None,
                  costs: Costs = DEFAULT_COSTS) -> tuple[PathRow, list[Any]]:
    """The workload of :func:`block_paths` through blkfront → blkback on a Xen host.

    The guest's blkfront grants each request's pages to Dom0 (read-only for a write), puts
    ``batch`` requests on the ring, pushes them with one notification
    (``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY``); blkback maps each segment through the grant
    table (the hypervisor checks each), does the I/O, unmaps, answers.  Returns the row and
    the trace events of the run.

    >>> row, events = xen_block_run(8, 4)
    >>> row.data_ok, row.entries > 0, row.checks == 8
    (True, True, True)
    """
    from virtcore.kvm.qemu import VIRTIO_DRIVER_INSTRUCTIONS

    _check(requests, batch, request_bytes)
    plan, disk_sectors = _plan(requests, batch, request_bytes, write_fraction, seed)
    if xen is None:
        xen = _xen_host(disk_sectors)
    front = xen.domain("guest")
    blk = xen.xl.frontends[(front.domid, "vbd")]
    disk = xen.platform.devices["disk"].hw
    ref_disk = bytearray(disk.data)  # type: ignore[attr-defined]
    nsec = request_bytes // SECTOR
    driver = (VIRTIO_DRIVER_INSTRUCTIONS + VIRTIO_DRIVER_INSTRUCTIONS // 2) * costs.instruction
    events: list[Any] = []  # this run's trace events (a listener: no scan of the whole trace)
    xen.trace.listeners.append(events.append)
    try:
        ok, t, latencies = _xen_batches(xen, blk, plan, requests, batch, nsec, events,
                                        ref_disk, driver)
    finally:
        xen.trace.listeners.remove(events.append)
    ok &= bytes(disk.data[:len(ref_disk)]) == bytes(ref_disk)  # type: ignore[attr-defined]
    hcalls = sum(1 for e in events if e.kind == "hypercall")
    upcalls = sum(1 for e in events if e.kind == "upcall")
    switches = sum(1 for e in events if e.kind == "sched")
    checks = sum(1 for e in events if e.kind == "grant" and e.text.startswith("map"))
    copies = sum(1 for e in events if e.kind == "grant" and "copy" in e.text)
    row = PathRow("split driver", "Xen", requests, hcalls, 2 * hcalls + upcalls + switches,
                  checks, copies, t, sum(latencies) / len(latencies), ok)
    return row, events


def _xen_batches(xen: Xen, blk: Any, plan: list[tuple[bool, int]], requests: int, batch: int,
                 nsec: int, events: list[Any], ref_disk: bytearray,
                 driver: float) -> tuple[bool, float, list[float]]:
    """Run the plan batch by batch; returns (data ok, total ns, per-request latencies)."""
    from virtcore.xen.constants import BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_OKAY

    front = xen.domain("guest")
    gt = front.grant_table
    assert gt is not None
    per_page = 4096 // SECTOR
    ok = True
    latencies: list[float] = []
    t = 0.0
    for b0 in range(0, requests, batch):
        first_event = len(events)
        held = []
        for i in range(b0, min(b0 + batch, requests)):
            is_write, s = plan[i]
            segs = []
            pages = []
            for k in range(0, nsec, per_page):
                pfn = front.alloc_page()
                if pfn is None:
                    raise ViewError("the guest ran out of pages: use a smaller batch or size")
                ref = gt.grant_access(0, front.frame_of(pfn), readonly=is_write)
                n = min(per_page, nsec - k)
                mfn = xen.pfn_to_mfn(front.domid, pfn)
                lo, hi = (s + k) * SECTOR, (s + k + n) * SECTOR
                expect = b""  # the back end serves a batch in order: reads see earlier writes
                if is_write:
                    first = (i * 131 + k * SECTOR) & 0xFF  # a different ramp per request
                    data = _RAMP[first:first + n * SECTOR]
                    xen.guest_write(front.domid, mfn, 0, data)
                    ref_disk[lo:hi] = data
                else:
                    expect = bytes(ref_disk[lo:hi])
                pages.append((pfn, ref, mfn, n, expect))
                segs.append((ref, 0, n - 1))
            rid = blk.request(BLKIF_OP_WRITE if is_write else BLKIF_OP_READ, s, segs)
            held.append((rid, is_write, s, pages))
        blk.push()
        batch_ns = sum(e.cost for e in events[first_event:] if e.kind != "dma")
        batch_ns += driver * len(held)
        t += batch_ns
        for rid, is_write, _s, pages in held:
            ok &= blk.responses.pop(rid, None) == BLKIF_RSP_OKAY
            for pfn, ref, mfn, n, expect in pages:
                if not is_write:
                    ok &= xen.guest_read(front.domid, mfn, 0, n * SECTOR) == expect
                gt.end_foreign_access(ref)
                front.free_page(pfn)
            latencies.append(batch_ns)
    return ok, t, latencies


@functools.lru_cache(maxsize=64)
def block_paths(requests: int = 16, batch: int = 4, request_bytes: int = 4096, *,
                write_fraction: float = 0.5, seed: int = 0) -> BlockPaths:
    """One block workload through every path: native, KVM's four, Xen's split driver.

    The KVM and native rows are :func:`virtcore.kvm.qemu.compare_block_io`'s (each virtual
    path beside a native baseline with the same driver, batching and interrupt policy); the
    Xen row is :func:`xen_block_run` on the same plan (same sectors, sizes, writes, batches).

    >>> p = block_paths(8, 4)
    >>> [r.name for r in p.rows][-1], all(r.data_ok for r in p.rows)
    ('split driver', True)
    >>> min(p["virtio"].time_ns, p["split driver"].time_ns) > p["native"].time_ns
    True
    """
    from virtcore.kvm.qemu import compare_block_io

    _check(requests, batch, request_bytes)
    cmp = compare_block_io(requests, batch, request_bytes, write_fraction=write_fraction,
                           seed=seed)
    rows = [PathRow(r.name, PATH_NAMES[r.name], r.requests, r.exits,
                    2 * r.exits + r.transitions + r.iothread_transitions, 0, 0, r.time_ns,
                    r.mean_latency_ns, r.data_ok) for r in cmp.rows]
    rows.append(xen_block_run(requests, batch, request_bytes, write_fraction=write_fraction,
                              seed=seed, xen=_shared_xen())[0])
    return BlockPaths(cmp.workload, tuple(rows))


@functools.lru_cache(maxsize=1)
def _shared_xen() -> Xen:
    """One Xen host reused by :func:`block_paths` (booting one costs most of a run)."""
    return _xen_host(11 * 8 * 4 * 31)


# ---------------------------------------------------------------------------
# traces


def _kvm_vmm(path: str, requests: int, batch: int, request_bytes: int,
             seed: int = 0) -> QemuVMM:
    """A VMM that ran the workload's first ``requests`` on ``path`` (for traces and graphs)."""
    from virtcore.kvm.qemu import (
        BLK_COMMAND,
        BLK_COUNT,
        BLK_DMA_ADDR,
        BLK_SECTOR,
        BLK_STATUS,
        VIRTIO_NOTIFY_PORT,
        GuestIO,
        QemuVMM,
    )
    from virtcore.kvm.virtio import (
        VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT,
        GuestRAM,
        VirtioBlk,
        VirtioBlkDriver,
    )

    plan, disk_sectors = _plan(requests, batch, request_bytes, 0.5, seed)
    nsec = request_bytes // SECTOR
    mem = GuestRAM(0x20000 + batch * request_bytes + 0x1000)
    if path == "emulated":
        vmm = QemuVMM(mem, disk_sectors=disk_sectors)
        gio = GuestIO(vmm)
        base: int = vmm.bus["disk"].base  # type: ignore[attr-defined]
        for is_write, s in plan:
            gio.outl(base + BLK_SECTOR, s)
            gio.outl(base + BLK_DMA_ADDR, 0x20000)
            gio.outl(base + BLK_COUNT, nsec)
            gio.outl(base + BLK_COMMAND, 2 if is_write else 1)
            gio.inl(base + BLK_STATUS)
        return vmm
    if path not in ("virtio", "virtio+ioeventfd", "vhost"):
        raise ViewError(f"no KVM path {path!r}")
    vmm = QemuVMM(mem, disk_sectors=8)
    dev = VirtioBlk(mem, capacity_sectors=disk_sectors)
    dev.driver_init()
    vmm.add_virtio(dev, name="vblk", ioeventfd=path != "virtio", vhost=path == "vhost")
    gio = GuestIO(vmm)
    drv = VirtioBlkDriver(mem, dev, queue_size=max(32, 4 * batch), base=0x1000,
                          notify=lambda: gio.outl(VIRTIO_NOTIFY_PORT, 0))
    for b0 in range(0, requests, batch):
        for k, (is_write, s) in enumerate(plan[b0:b0 + batch]):
            drv.submit(VIRTIO_BLK_T_OUT if is_write else VIRTIO_BLK_T_IN, s,
                       0x20000 + k * request_bytes, request_bytes, token=k)
        drv.kick()
        drv.collect()
    return vmm


def kvm_trace(requests: int = 2, batch: int = 2, request_bytes: int = 4096, *,
              path: str = "virtio") -> list[tuple[str, str, str, float]]:
    """The KVM side of one batch: ``(who, what, detail, ns)`` rows from the VMM's exit log.

    Each exit the guest takes is a ``KVM_RUN`` ioctl returning to QEMU (``path="user"``) or
    an exit KVM handles itself (ioeventfd / vhost: ``"kernel"``).

    >>> rows = kvm_trace()
    >>> [r[1] for r in rows]
    ['VM exit', 'ioctl(KVM_RUN) returns', 'QEMU emulates', 'ioctl(KVM_RUN)']
    """
    vmm = _kvm_vmm(path, requests, batch, request_bytes)
    c = vmm.costs
    out: list[tuple[str, str, str, float]] = []
    for e in vmm.trace:
        out.append(("vCPU 0", "VM exit", f"{e.reason}: {e.detail}", c.vm_exit))
        if e.path == "user":
            out.append(("KVM", "ioctl(KVM_RUN) returns", "exit_reason = " + e.reason,
                        c.kernel_user))
            out.append(("QEMU", "QEMU emulates", f"{e.device}: device work",
                        e.cost_ns - 2 * c.vm_exit - 2 * c.kernel_user))
            out.append(("QEMU", "ioctl(KVM_RUN)", "VM entry", c.kernel_user + c.vm_exit))
        else:
            out.append(("KVM", "handled in KVM", f"{e.device}: ioeventfd"
                        + (" → vhost worker" if path == "vhost" else " → QEMU I/O thread"),
                        e.cost_ns - c.vm_exit))
    return out


def xen_trace(requests: int = 2, batch: int = 2,
              request_bytes: int = 4096) -> list[tuple[str, str, str, float]]:
    """The Xen side of one batch: ``(who, kind, text, ns)`` from the hypervisor's trace.

    >>> kinds = {r[1] for r in xen_trace()}
    >>> {"hypercall", "event", "upcall", "grant"} <= kinds
    True
    """
    _row, events = xen_block_run(requests, batch, request_bytes)
    return [("Xen" if e.domid is None else ("Dom0" if e.domid == 0 else f"DomU d{e.domid}"),
             e.kind, e.text, float(e.cost)) for e in events]


def trace_html(rows: Sequence[tuple[str, str, str, float]], title: str) -> str:
    """A trace as a small HTML table."""
    body = "".join(f"<tr><td>{esc(a)}</td><td>{esc(b)}</td><td style='font-family:monospace'>"
                   f"{esc(c[:70])}</td><td style='text-align:right'>{d:,.0f}</td></tr>"
                   for a, b, c, d in rows)
    total = sum(r[3] for r in rows)
    return (f"<div style='display:inline-block;vertical-align:top;margin-right:1em'>"
            f"<b>{esc(title)}</b> ({len(rows)} steps, {total:,.0f} ns)<table>"
            f"<tr><th>who</th><th>step</th><th>detail</th><th>ns</th></tr>{body}</table></div>")


# ---------------------------------------------------------------------------
# the two stacks as graphs


def kvm_stack(host: Host | None = None, vmm: QemuVMM | None = None) -> Any:
    """A Linux host with KVM as a networkx DiGraph, read off a :class:`Host` and a VMM run.

    Layers (node attribute ``layer``): ``guest`` (each VM's vCPUs), ``user`` (each VM is a
    QEMU process; its vCPU threads ``CPU n/KVM``; its devices), ``kernel`` (Linux: the
    scheduler the host runs, memory management, ``kvm.ko`` and ``/dev/kvm``), ``hardware``.
    Edge ``count``: how often the VMM's run took it.

    >>> g = kvm_stack()
    >>> g.nodes["Linux scheduler"]["text"], g.nodes["kvm.ko"]["layer"]
    ('CFSLike', 'kernel')
    >>> sorted(n for n, a in g.nodes(data=True) if a.get("kind") == "process")
    ['QEMU: db', 'QEMU: web']
    """
    from virtcore.kvm.host import Host
    from virtcore.viz.kvm import qemu_kvm_graph

    nx = require("networkx")
    if host is None:
        host = Host(pcpus=2)
        host.add_vm("web", vcpus=2)
        host.add_vm("db", vcpus=1)
    if vmm is None:
        vmm = _kvm_vmm("virtio", 2, 2, 4096)
    q = qemu_kvm_graph(vmm)
    g = nx.DiGraph(name="KVM host")
    g.add_node("Linux scheduler", layer="kernel", kind="scheduler",
               text=type(host.make_scheduler()).__name__)
    g.add_node("Linux mm", layer="kernel", kind="memory manager")
    g.add_edge("Linux mm", "RAM", label="pages", count=0)
    vms = [p for p in host.processes.values() if p.kind == "vm"]
    ran = vms[0].name if vms else None
    # the VM whose VMM ran: qemu_kvm_graph's nodes and counted edges, named per process
    shared = {"KVM": "kvm.ko", "/dev/kvm": "/dev/kvm", "RAM": "RAM",
              "CPU (VT-x / AMD-V)": "CPU (VT-x / AMD-V)", "in-kernel irqchip": "in-kernel irqchip"}

    def name(n: str) -> str:
        if n in shared:
            return shared[n]
        if n.startswith("ioeventfd"):
            return n
        if q.nodes[n]["layer"] == "kernel":  # a vhost worker: a kernel thread
            return f"vhost worker ({ran}: {n})"
        return f"{ran}: {n}"

    for n, a in q.nodes(data=True):
        if ran is None and n not in shared:
            continue
        g.add_node(name(n), **a)
    for u, v, a in q.edges(data=True):
        if name(u) in g and name(v) in g:
            g.add_edge(name(u), name(v), **a)
    g.nodes["kvm.ko"]["kind"] = "module"
    g.add_edge("Linux scheduler", "CPU (VT-x / AMD-V)", label="runs threads", count=0)
    for p in host.processes.values():
        proc = f"QEMU: {p.name}" if p.kind == "vm" else p.name
        g.add_node(proc, layer="user", kind="process" if p.kind == "vm" else "host process",
                   pid=p.pid)
        g.add_edge(proc, "Linux mm", label="guest RAM = its memory", count=0)
        for k, t in enumerate(p.threads):
            th = f"{p.name}: {t}"
            if th not in g:
                g.add_node(th, layer="user", kind="thread")
            g.add_edge(proc, th, label="thread", count=0)
            g.add_edge("Linux scheduler", th, label="schedules", count=0)
            if p.kind == "vm" and k < p.vcpus and p.name != ran:
                v = f"{p.name}: vCPU {k}"
                g.add_node(v, layer="guest", kind="vcpu")
                g.add_edge(v, "kvm.ko", label="VM exit", count=0)
                g.add_edge(th, "/dev/kvm", label="ioctl(KVM_RUN)", count=0)
        if p.name == ran:
            for k in range(1, p.vcpus):  # the model's VMM runs vCPU 0; the others wait
                v, th = f"{p.name}: vCPU {k}", f"{p.name}: CPU {k}/KVM"
                g.add_node(v, layer="guest", kind="vcpu")
                g.add_edge(v, "kvm.ko", label="VM exit", count=0)
                g.add_edge(th, "/dev/kvm", label="ioctl(KVM_RUN)", count=0)
            if f"{ran}: QEMU I/O thread" in g:
                g.add_edge(proc, f"{ran}: QEMU I/O thread", label="thread", count=0)
    return g


def xen_stack(xen: Xen | None = None) -> Any:
    """The Xen host as a networkx DiGraph (the library's stack graph) with drawing layers.

    >>> g = xen_stack()
    >>> g.nodes["xen"]["layer"], g.nodes["d0"]["layer"], g.has_edge("d1", "d0")
    ('hypervisor', 'domain', True)
    """
    from virtcore.viz.xen import xen_graph

    if xen is None:
        xen = _shared_xen()
    g = xen_graph(xen, "stack")
    for _n, a in g.nodes(data=True):
        a["layer"] = {"hardware": "hardware", "device": "hardware",
                      "hypervisor": "hypervisor"}.get(a.get("kind", ""), "domain")
    return g


_LAYERS = {"kvm": ("guest", "user", "kernel", "hardware"),
           "xen": ("domain", "hypervisor", "hardware")}


def graph_svg(g: Any, *, highlight: Sequence[tuple[str, str]] = (), width: int = 560,
              title: str = "") -> str:
    """An SVG drawing of a layered graph (``layer`` on each node); ``highlight`` edges in red.

    Fast enough for a widget callback (no matplotlib).

    >>> svg = graph_svg(xen_stack(), highlight=[("d1", "d0")])
    >>> svg.startswith("<svg") and "stroke='#d62728'" in svg
    True
    """
    layers = _LAYERS["kvm"] if any(a.get("layer") == "kernel" for _n, a in g.nodes(data=True)) \
        else _LAYERS["xen"]
    rows = {lay: [n for n, a in g.nodes(data=True) if a.get("layer") == lay] for lay in layers}
    row_h = 70
    height = row_h * len(layers) + 30
    pos: dict[str, tuple[float, float]] = {}
    for i, lay in enumerate(layers):
        ns = rows[lay]
        for j, n in enumerate(ns):
            pos[n] = ((j + 0.5) * width / max(1, len(ns)), 40 + i * row_h)
    hl = {tuple(e) for e in highlight}
    hot_nodes = {n for e in hl for n in e}
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"font-family='sans-serif' font-size='10'>"]
    if title:
        parts.append(f"<text x='4' y='12' font-weight='bold'>{esc(title)}</text>")
    for i, lay in enumerate(layers):
        parts.append(f"<text x='2' y='{40 + i * row_h - 18}' fill='#888'>{esc(lay)}</text>")
    for u, v, a in g.edges(data=True):
        if u not in pos or v not in pos:
            continue
        (x1, y1), (x2, y2) = pos[u], pos[v]
        hot = (u, v) in hl
        parts.append(f"<line x1='{x1:.0f}' y1='{y1:.0f}' x2='{x2:.0f}' y2='{y2:.0f}' "
                     f"stroke='{'#d62728' if hot else '#bbb'}' "
                     f"stroke-width='{3 if hot else 1}'><title>{esc(a.get('label', ''))}"
                     f"</title></line>")
    for n, (x, y) in pos.items():
        label = str(g.nodes[n].get("label", n)).split("\n")[0]
        hot = n in hot_nodes
        w = max(40, 6 * len(label))
        parts.append(f"<rect x='{x - w / 2:.0f}' y='{y - 10:.0f}' width='{w}' height='20' rx='4' "
                     f"fill='{'#ffd8d8' if hot else '#eef'}' "
                     f"stroke='{'#d62728' if hot else '#99a'}'/>"
                     f"<text x='{x:.0f}' y='{y + 4:.0f}' text-anchor='middle'>{esc(label)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def kvm_path_edges(g: Any) -> list[tuple[str, str]]:
    """The edges of a :func:`kvm_stack` graph that the VMM's run used (``count > 0``)."""
    return [(u, v) for u, v, a in g.edges(data=True) if a.get("count", 0) > 0]


def xen_path_edges(g: Any, events: Sequence[Any]) -> list[tuple[str, str]]:
    """The edges of a :func:`xen_stack` graph a split-driver run used, from its trace."""
    used = set()
    for e in events:
        if e.kind == "hypercall" and e.domid is not None:
            used.add((f"d{e.domid}", "xen"))
        if e.kind in ("dma", "device") and e.domid is not None:
            used.add((f"d{e.domid}", "dev:disk"))
        if e.kind == "ring" and e.domid is not None and e.domid != 0:
            used.add((f"d{e.domid}", "d0"))
    return [(u, v) for u, v in g.edges() if (u, v) in used]


# ---------------------------------------------------------------------------
# schedulers


def schedulers(duration_us: int = 300_000, seed: int = 0) -> tuple[SchedResult, SchedResult]:
    """The same three busy VMs (web: 2 vCPUs, db and batch: 1) on one pCPU, under each.

    db is given twice the default share with each system's own knob: ``nice -3`` on its QEMU
    process (CFS weight 1991 against 1024) and ``xl sched-credit -w 512`` (against 256).
    Under KVM they are QEMU processes whose vCPU threads the host's CFS-like scheduler runs
    beside every other thread; under Xen they are domains the credit scheduler runs (Dom0
    left out: idle here).  Returns ``(kvm_result, xen_result)``.

    >>> k, x = schedulers(90_000)
    >>> k.scheduler, x.scheduler
    ('CFS', 'Credit')
    """
    from virtcore.kvm.host import Host

    host = Host(pcpus=1)
    for name, n in (("web", 2), ("db", 1), ("batch", 1)):
        host.add_vm(name, vcpus=n)
    host.renice("db", -3)  # weight 1991 ≈ 2 × 1024: db's threads count double
    kvm = host.run(duration_us=duration_us).result
    xen = _xen_host(256, pcpus=1)
    for name, n in (("web", 2), ("db", 1), ("batch", 1)):
        xen.create_guest(name, memory_pages=8, vcpus=n)
    xen.xl.destroy("guest")
    xen.xl.sched_credit("db", weight=512)  # twice the default 256
    from virtcore.xen.sched import schedule

    return kvm, schedule(xen, duration_us, include_dom0=False, seed=seed)


def plot_schedulers(kvm: SchedResult, xen: SchedResult, ax: Any = None) -> Any:
    """Each VM's CPU share under the host's CFS and under Xen's credit, on one plot."""
    plt = require("matplotlib.pyplot")
    if ax is None:
        _fig, ax = plt.subplots(figsize=(6, 2.8))
    names = list(kvm.domain_share)
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [kvm.domain_share[n] for n in names], 0.4,
           label=f"KVM: Linux {kvm.scheduler} (vCPU = thread)")
    ax.bar([x + 0.2 for x in xs], [xen.domain_share.get(n, 0.0) for n in names], 0.4,
           label=f"Xen: {xen.scheduler} (vCPU of a domain)")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("CPU share (pCPUs)")
    ax.set_title("who schedules the vCPUs: the same VMs, 1 pCPU")
    ax.legend(fontsize=8)
    return ax


# ---------------------------------------------------------------------------
# where each does CPU, memory, I/O


def where_table(host: Host | None = None, xen: Xen | None = None) -> list[tuple[str, str, str]]:
    """Who does each job, read from the two models: ``(job, KVM, Xen)`` rows.

    KVM: the scheduler the :class:`Host` runs threads with, ``kvm.ko`` (the graph's module
    node) for exits and memory slots, the QEMU process's device models; Xen: the hypervisor's
    own components (``xen.components``), the domain that owns each device and runs the back
    ends, the privileged domain that runs the toolstack.

    >>> rows = where_table()
    >>> [r[0].split(":")[0] for r in rows]
    ['CPU', 'CPU', 'memory', 'I/O', 'I/O', 'VM management']
    >>> rows[0][2]
    'Xen hypervisor (credit scheduler)'
    """
    g = kvm_stack(host)
    if xen is None:
        xen = _shared_xen()
    sched_k = g.nodes["Linux scheduler"]["text"]
    enters = next(u for u, v, a in g.edges(data=True)
                  if g.nodes[v]["kind"] == "cpu" and a.get("label") == "VM entry")
    mm = next(u for u, v, a in g.edges(data=True)
              if g.nodes[v]["kind"] == "memory" and a.get("label") == "pages")
    comps = xen.components
    sched_x = next(c for c in comps if "scheduler" in c)
    mem_x = next(c for c in comps if "memory" in c)
    owners = sorted({xen.domain(d.owner).name for d in xen.platform.devices.values()})
    backs = sorted({xen.domain(b.be).name for b in xen.xl.backends.values()})
    control = sorted(d.name for d in xen.domains.values() if d.is_privileged)
    procs = sorted(n for n, a in g.nodes(data=True) if a.get("kind") == "process")
    devs = sorted({a["kind"] for _n, a in g.nodes(data=True)
                   if a.get("kind") in ("emulated device", "virtio device", "vhost worker")})
    return [
        ("CPU: schedules the vCPUs", f"Linux ({sched_k}): vCPUs are threads",
         f"Xen hypervisor ({sched_x})"),
        ("CPU: runs guest code / traps privileged ops",
         f"{enters} (VM entry into guest mode: VT-x/AMD-V)",
         "Xen hypervisor (PV: traps and hypercalls; HVM: VT-x/AMD-V)"),
        ("memory: guest physical → machine", f"{enters} (memory slots → EPT) on {mm}",
         f"Xen hypervisor ({mem_x})"),
        ("I/O: device models / back ends", f"QEMU process ({', '.join(devs)})",
         f"{', '.join(backs)} (split-driver back ends)"),
        ("I/O: native device drivers", "Linux (the host kernel)",
         f"{', '.join(owners)} (owns the devices)"),
        ("VM management", f"user space: one QEMU process per VM ({', '.join(procs)})",
         f"{', '.join(control)} (privileged: xl toolstack)"),
    ]


def where_html(rows: Sequence[tuple[str, str, str]]) -> str:
    """:func:`where_table` as HTML."""
    body = "".join(f"<tr><td>{esc(a)}</td><td>{esc(b)}</td><td>{esc(c)}</td></tr>"
                   for a, b, c in rows)
    return f"<table><tr><th>job</th><th>KVM</th><th>Xen</th></tr>{body}</table>"


# ---------------------------------------------------------------------------
# sharing memory: grants vs direct access (chapter 4)


@dataclass(frozen=True)
class SharingCost:
    """Costs of letting a back end touch ``pages`` guest pages, per page."""

    hypervisor: str
    pages: int
    entries: int
    checks: int
    time_ns: float

    def per_page(self) -> tuple[float, float, float]:
        """(entries, checks, ns) per page."""
        return (self.entries / self.pages, self.checks / self.pages, self.time_ns / self.pages)


def sharing_costs(pages: int = 4) -> tuple[SharingCost, SharingCost]:
    """A back end reads ``pages`` guest pages once: Xen (grant, map, unmap) vs KVM (QEMU).

    Xen: the guest writes ``pages`` grant entries (no hypercall), Dom0 maps them with one
    batched ``GNTTABOP_map_grant_ref`` (the hypervisor checks each entry), reads, and unmaps
    (``GNTTABOP_unmap_grant_ref``, which costs a TLB flush).  KVM: QEMU mapped all of guest
    RAM when it set up the memory slots; reading a page is an ordinary load — no entry into
    anything, no check.  The read itself is the same on both sides and not counted.

    >>> x, k = sharing_costs(4)
    >>> x.checks, k.entries, k.checks, k.time_ns
    (4, 0, 0, 0.0)
    """
    from virtcore.xen.constants import (
        GNTMAP_host_map,
        GNTMAP_readonly,
        GNTST_okay,
        GNTTABOP_map_grant_ref,
        GNTTABOP_unmap_grant_ref,
        HYPERVISOR_grant_table_op,
    )
    from virtcore.xen.grant import GnttabMapGrantRef, GnttabUnmapGrantRef

    if isinstance(pages, bool) or not isinstance(pages, int) or not 1 <= pages <= 32:
        raise ViewError(f"pages must be 1..32, got {pages!r}")
    xen = _xen_host(256)
    dom = xen.domain("guest")
    gt = dom.grant_table
    assert gt is not None
    pfns = [dom.alloc_page() for _ in range(pages)]
    refs = [gt.grant_access(0, dom.frame_of(p), readonly=True) for p in pfns if p is not None]
    seq = xen.trace.seq
    ops = [GnttabMapGrantRef(host_addr=(0x5000_0000 + i) << 12,
                             flags=GNTMAP_host_map | GNTMAP_readonly, ref=r, dom=dom.domid)
           for i, r in enumerate(refs)]
    xen.hypercall(0, HYPERVISOR_grant_table_op, GNTTABOP_map_grant_ref, ops, len(ops))
    if not all(o.status == GNTST_okay for o in ops):
        raise ViewError("a grant mapping failed")
    un = [GnttabUnmapGrantRef(handle=o.handle) for o in ops]
    xen.hypercall(0, HYPERVISOR_grant_table_op, GNTTABOP_unmap_grant_ref, un, len(un))
    ev = xen.trace.since(seq)
    x = SharingCost("Xen", pages, sum(1 for e in ev if e.kind == "hypercall"),
                    sum(1 for e in ev if e.kind == "grant" and e.text.startswith("map")),
                    float(sum(e.cost for e in ev)))
    return x, SharingCost("KVM", pages, 0, 0, 0.0)


def forged_map(xen: Xen | None = None) -> list[tuple[str, str]]:
    """Mappings Xen refuses: ``(attempt, GNTST name)`` from real ``GNTTABOP_map_grant_ref`` calls.

    The victim ``guest`` grants one page to Dom0 read-only; another DomU tries to map it,
    Dom0 tries to map it writable, a reference the guest never filled in, and one beyond the
    guest's table.  As in ``grant_table.c``, a map the entry does not allow is
    ``GNTST_general_error``; a reference outside the table is ``GNTST_bad_gntref`` [XEN-GNTTAB].

    >>> [s.removeprefix("GNTST_") for _a, s in forged_map()]
    ['okay', 'general_error', 'general_error', 'general_error', 'bad_gntref']
    """
    from virtcore.xen.constants import (
        GNTST_NAMES,
        GNTMAP_host_map,
        GNTMAP_readonly,
        GNTTABOP_map_grant_ref,
        GNTTABOP_unmap_grant_ref,
        HYPERVISOR_grant_table_op,
    )
    from virtcore.xen.grant import GnttabMapGrantRef, GnttabUnmapGrantRef

    xen = xen if xen is not None else _xen_host(256)
    victim = xen.domain("guest")
    spy = xen.create_guest("spy", memory_pages=8) if "spy" not in [
        d.name for d in xen.domains.values()] else xen.domain("spy")
    gt = victim.grant_table
    assert gt is not None
    pfn = victim.alloc_page()
    assert pfn is not None
    ref = gt.grant_access(0, victim.frame_of(pfn), readonly=True)
    unused = ref + 1  # inside the table, but the guest never filled it in
    out = []
    for who, caller, flags, r in (
            (f"Dom0 maps ref {ref} read-only (granted to it)", 0,
             GNTMAP_host_map | GNTMAP_readonly, ref),
            (f"{spy.name} (d{spy.domid}) maps ref {ref} (granted to Dom0, not to it)",
             spy.domid, GNTMAP_host_map | GNTMAP_readonly, ref),
            (f"Dom0 maps ref {ref} writable (the grant is read-only)", 0, GNTMAP_host_map, ref),
            (f"Dom0 maps ref {unused} (an entry the guest never filled in)", 0,
             GNTMAP_host_map | GNTMAP_readonly, unused),
            ("Dom0 maps ref 1000000 (beyond the guest's table)", 0,
             GNTMAP_host_map | GNTMAP_readonly, 1_000_000)):
        op = GnttabMapGrantRef(host_addr=0x6000_0000 << 12, flags=flags, ref=r,
                               dom=victim.domid)
        xen.hypercall(caller, HYPERVISOR_grant_table_op, GNTTABOP_map_grant_ref, op, 1)
        out.append((who, GNTST_NAMES.get(op.status, str(op.status))))
        if op.status == 0:
            xen.hypercall(caller, HYPERVISOR_grant_table_op, GNTTABOP_unmap_grant_ref,
                          GnttabUnmapGrantRef(handle=op.handle), 1)
    return out


def qemu_reads_guest(secret: bytes = b"guest's private key") -> tuple[bytes, int]:
    """QEMU reads a guest page the guest never put in any virtqueue: ``(bytes, exits)``.

    The guest keeps ``secret`` at 0x9000 and never offers it; QEMU, which maps all of guest
    RAM (its memory slots), reads it with an ordinary load: no exit, no check.  What keeps
    *other* processes out is Linux's process isolation, not KVM.

    >>> qemu_reads_guest(b"k3y")
    (b'k3y', 0)
    """
    from virtcore.kvm.qemu import QemuVMM
    from virtcore.kvm.virtio import GuestRAM

    ram = GuestRAM(64 * 1024)
    ram.write_bytes(0x9000, secret)  # the guest's own data
    vmm = QemuVMM(ram)
    return vmm.memory.read_bytes(0x9000, len(secret)), vmm.stats.exits


# ---------------------------------------------------------------------------
# the I/O explorer widget

DEVICE_MODELS = {"KVM": ("emulated", "virtio", "virtio+ioeventfd", "vhost"),
                 "Xen": ("split driver",), "native": ("native-legacy", "native")}


def path_bars_svg(paths: BlockPaths, selected: str, width: int = 560) -> str:
    """Simulated ns per request of every path as an SVG bar chart, ``selected`` in red."""
    rows = paths.rows
    top = max(r.time_per_request for r in rows) or 1.0
    bh = 18
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' "
             f"height='{bh * len(rows) + 24}' font-family='sans-serif' font-size='11'>"]
    for i, r in enumerate(rows):
        w = (width - 260) * r.time_per_request / top
        y = 4 + i * bh
        colour = "#d62728" if r.name == selected else "#7f9fcf"
        parts.append(f"<text x='0' y='{y + 12}'>{esc(r.name)} ({esc(r.hypervisor)})</text>"
                     f"<rect x='150' y='{y}' width='{w:.1f}' height='{bh - 4}' fill='{colour}'/>"
                     f"<text x='{155 + w:.0f}' y='{y + 12}'>{r.time_per_request:,.0f} ns,"
                     f" {r.per('crossings'):.3g} crossings</text>")
    parts.append(f"<text x='150' y='{bh * len(rows) + 18}' fill='#666'>simulated ns per"
                 f" request (virtcore.costs.DEFAULT_COSTS)</text></svg>")
    return "".join(parts)


def path_graph(path: str) -> tuple[Any, list[tuple[str, str]]]:
    """The stack one path runs on and the edges two of its requests used (cached).

    KVM paths: :func:`kvm_stack` of a VMM that ran them; Xen's split driver:
    :func:`xen_stack` after :func:`xen_block_run`; native: driver → disk.

    >>> g, used = path_graph("emulated")
    >>> ("web: CPU 0/KVM", "web: disk") in used
    True
    >>> sorted(path_graph("vhost")[1])[0]
    ('ioeventfd 0xc050', 'vhost worker (web: vblk)')
    """
    if path not in PATH_NAMES:
        raise ViewError(f"path must be one of {list(PATH_NAMES)}, got {path!r}")
    return _graphs(path)


@functools.lru_cache(maxsize=8)
def _graphs(path: str) -> tuple[Any, list[tuple[str, str]]]:
    if PATH_NAMES[path] == "KVM":
        g = kvm_stack(vmm=_kvm_vmm(path, 2, 2, 4096))
        return g, kvm_path_edges(g)
    if PATH_NAMES[path] == "Xen":
        xen = _shared_xen()
        _row, ev = xen_block_run(2, 2, 4096, xen=xen)
        g = xen_stack(xen)
        return g, xen_path_edges(g, ev)
    nx = require("networkx")
    g = nx.DiGraph()
    g.add_node("guest = the OS", layer="user")
    g.add_node("Linux driver", layer="kernel")
    g.add_node("disk", layer="hardware")
    g.add_edge("guest = the OS", "Linux driver")
    g.add_edge("Linux driver", "disk")
    return g, list(g.edges())


def io_view(request_bytes: int = 4096, batch: int = 4, device: str = "virtio",
            hypervisor: str = "KVM", requests: int = 16, seed: int = 0) -> str:
    """The explorer's HTML: the path highlighted on its stack, the bars, the row's figures.

    >>> html = io_view(4096, 4, "split driver", "Xen")
    >>> "split driver" in html and "<svg" in html
    True
    """
    if hypervisor not in DEVICE_MODELS:
        raise ViewError(f"hypervisor must be one of {list(DEVICE_MODELS)}, got {hypervisor!r}")
    if device not in DEVICE_MODELS[hypervisor]:
        return (f"<p><b>{esc(device)}</b> is not a path of {esc(hypervisor)} in these models;"
                f" pick one of {esc(', '.join(DEVICE_MODELS[hypervisor]))}.</p>")
    paths = block_paths(requests, batch, request_bytes, seed=seed)
    r = paths[device]
    g, edges = _graphs(device)
    info = (f"<p><b>{esc(device)}</b> on {esc(hypervisor)}: per request "
            f"{r.per('entries'):.3g} entries into the hypervisor, {r.per('crossings'):.3g}"
            f" crossings, {r.per('checks'):.3g} hypervisor checks, {r.per('copies'):.3g} copies,"
            f" {r.time_per_request:,.0f} ns; mean latency {r.latency_ns / 1000:.1f} µs"
            f" (batch {batch}, {request_bytes} B)</p>")
    return (info + graph_svg(g, highlight=edges, title=f"{hypervisor}: the path of one request")
            + "<br/>" + path_bars_svg(paths, device))


def io_explorer(*, seed: int = 0) -> Any:
    """Widgets: I/O size, batch (requests outstanding), hypervisor, device model → :func:`io_view`.

    The "rate" of the workload is how many requests the guest keeps outstanding (the batch
    behind one notification), not an arrival rate: the models have no clock.

    Returns the box; ``box.controls`` (dict of widgets) and ``box.view`` (the HTML widget).
    """
    widgets = require("ipywidgets")
    size = widgets.Dropdown(options=[512, 4096, 16384], value=4096, description="I/O bytes")
    batch = widgets.Dropdown(options=[1, 4, 16], value=4, description="outstanding")
    hyper = widgets.ToggleButtons(options=list(DEVICE_MODELS), value="KVM",
                                  description="hypervisor")
    dev = widgets.Dropdown(options=list(DEVICE_MODELS["KVM"]), value="virtio",
                           description="device")
    view = widgets.HTML(io_view(4096, 4, "virtio", "KVM", seed=seed))

    def on_hyper(_change: Any = None) -> None:
        opts = DEVICE_MODELS[hyper.value]
        dev.unobserve(show, names="value")
        dev.options = list(opts)
        dev.value = opts[-1] if hyper.value == "native" else opts[min(1, len(opts) - 1)]
        dev.observe(show, names="value")
        show()

    def show(_change: Any = None) -> None:
        view.value = io_view(size.value, batch.value, dev.value, hyper.value, seed=seed)

    for w in (size, batch, dev):
        w.observe(show, names="value")
    hyper.observe(on_hyper, names="value")
    box = widgets.VBox([widgets.HBox([size, batch]), hyper, dev, view])
    box.controls = {"size": size, "batch": batch, "hypervisor": hyper, "device": dev}
    box.view = view
    return box
