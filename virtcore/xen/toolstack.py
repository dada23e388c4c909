"""The ``xl`` toolstack (工具栈) in Dom0: domain management built on the control interface.

The real commands and what they do [XL-1; XL-CFG; XL-INFO-C; CLARK05]:

- ``xl create <cfg>``: build and start a domain — ``XEN_DOMCTL_createdomain`` (paused),
  ``max_mem``, populate its memory (``XENMEM_populate_physmap``), scheduler parameters,
  devices (XenStore nodes for ``disk=``/``vif=``, backends in Dom0 or a driver domain,
  ``pci=`` passthrough with ``assign_device``), then ``unpausedomain``.
- ``xl list``: ``Name ID Mem VCPUs State Time(s)``, printed as ``xl_info.c`` does:
  ``"%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f"``; Mem in MiB; column 5 is
  ``"-rscwS"[shutdown_reason]``.
- ``xl pause`` / ``unpause`` (keeps memory, not scheduled); ``xl shutdown`` (graceful: the
  guest is asked through XenStore ``control/shutdown`` and calls ``SCHEDOP_shutdown`` itself;
  an HVM guest without PV drivers does not react); ``xl destroy`` ("the equivalent of ripping
  the power cord out"; ``-f`` needed for Dom0, and "a domain cannot destroy itself");
  ``xl save``/``restore`` (checkpoint file; the domain is gone after save unless ``-c``);
  ``xl migrate`` (pre-copy live migration to another host [CLARK05]);
  ``xl sched-credit -d dom -w W -c C``.

Configs are a dict or ``xl.cfg``-like text (``key = value`` lines): ``name``, ``type`` (pv,
hvm, pvh), ``memory`` (MiB) or ``memory_pages``, ``vcpus``, ``cpu_weight``/``weight``,
``cap``, ``disk``/``vif`` (true, or a list of specs; ``backend=<domain>`` picks a driver
domain), ``pci`` (devices to pass through), ``on_poweroff`` (``destroy`` or ``preserve``),
``pv_drivers`` (HVM only).

Simplified: save images are Python objects (:class:`SavedImage`), not files; a restored or
migrated guest's frontends reconnect with fresh rings (as Linux's resume path does) and its
other grants and event channels are not carried over; migration copies memory at
stop-and-copy and takes its round statistics from :func:`virtcore.vmm.precopy`.

>>> from virtcore.xen import Xen
>>> xen = Xen(frames=1024)
>>> _ = xen.xl.create('name = "web"\\nmemory = 1\\nvcpus = 2')
>>> print(xen.xl.list_text())
Name                                        ID   Mem VCPUs	State	Time(s)
Domain-0                                     0     1     1     r-----       0.0
web                                          1     1     2     r-----       0.0
>>> xen.xl.pause("web"); xen.xl.list()[1].state
'--p---'
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from virtcore.errors import ConfigurationError
from virtcore.xen.constants import (
    XEN_X86_EMU_LAPIC,
    HYPERVISOR_domctl,
    HYPERVISOR_memory_op,
    SCHEDOP_shutdown,
    SHUTDOWN_poweroff,
    SHUTDOWN_reboot,
    SHUTDOWN_suspend,
    XEN_DOMCTL_assign_device,
    XEN_DOMCTL_CDF_hap,
    XEN_DOMCTL_CDF_hvm,
    XEN_DOMCTL_createdomain,
    XEN_DOMCTL_destroydomain,
    XEN_DOMCTL_max_mem,
    XEN_DOMCTL_pausedomain,
    XEN_DOMCTL_SCHEDOP_getinfo,
    XEN_DOMCTL_SCHEDOP_putinfo,
    XEN_DOMCTL_scheduler_op,
    XEN_DOMCTL_unpausedomain,
    errno_name,
)
from virtcore.xen.domain import Domain
from virtcore.xen.hypervisor import Xen, XenError

if TYPE_CHECKING:
    from virtcore.vmm.migration import PrecopyResult

__all__ = ["XL", "ListRow", "MigrationReport", "SavedImage", "parse_config"]

_SHUTDOWN_WORDS = {"poweroff": SHUTDOWN_poweroff, "reboot": SHUTDOWN_reboot,
                   "suspend": SHUTDOWN_suspend}


def parse_config(text: str) -> dict[str, Any]:
    """Parse ``xl.cfg``-like text: ``key = value`` lines, ``#`` comments, Python-like values.

    >>> parse_config('name = "db"  # a comment\\nmemory = 2\\ndisk = ["phy:/dev/sdb,xvda,w"]')
    {'name': 'db', 'memory': 2, 'disk': ['phy:/dev/sdb,xvda,w']}
    """
    cfg: dict[str, Any] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip() if '"' not in raw.split("#", 1)[0] or raw.count(
            '"') % 2 == 0 else raw.strip()
        if not line:
            continue
        if "=" not in line:
            raise ConfigurationError(f"config line {n}: expected 'key = value', got {raw!r}")
        key, value = (s.strip() for s in line.split("=", 1))
        try:
            cfg[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            cfg[key] = value.strip("'\"")
    return cfg


@dataclass(frozen=True)
class ListRow:
    """One ``xl list`` row."""

    name: str
    domid: int
    mem_mib: int
    vcpus: int
    state: str
    time_s: float

    def __str__(self) -> str:
        return (f"{self.name:<40s} {self.domid:5d} {self.mem_mib:5d} {self.vcpus:5d}     "
                f"{self.state}  {self.time_s:8.1f}")


@dataclass
class SavedImage:
    """What ``xl save`` writes: the config and every populated page's contents."""

    config: dict[str, Any]
    pages: dict[int, bytes]
    weight: int
    cap: int
    source_host: str

    def __repr__(self) -> str:
        return (f"SavedImage({self.config.get('name')!r} from {self.source_host},"
                f" {len(self.pages)} pages)")


@dataclass
class MigrationReport:
    """``xl migrate``: the new domain on the target and the pre-copy statistics."""

    name: str
    source: str
    target: str
    new_domid: int
    precopy: PrecopyResult
    pages_copied: int
    steps: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        p = self.precopy
        return (f"MigrationReport({self.name}: {self.source} -> {self.target} as"
                f" d{self.new_domid}, rounds {[r.pages_sent for r in p.rounds]},"
                f" stop-and-copy {p.stop_and_copy_pages} pages)")


class XL:
    """The toolstack in Dom0; every operation is a hypercall *from Dom0*.

    Attributes
    ----------
    frontends, backends : dict
        Split-driver halves by ``(frontend domid, "vbd" | "vif")``.
    """

    def __init__(self, xen: Xen) -> None:
        self.xen = xen
        self.frontends: dict[tuple[int, str], Any] = {}
        self.backends: dict[tuple[int, str], Any] = {}
        self.last_rc = 0

    # ------------------------------------------------------------------ helpers
    def _domctl(self, _cmd: int, _domain: int, /, **u: Any) -> tuple[int, dict[str, Any]]:
        from virtcore.xen.control import XenDomctl

        op = XenDomctl(_cmd, _domain, dict(u))
        rc = self.xen.hypercall(0, HYPERVISOR_domctl, op)
        self.last_rc = rc
        out = dict(op.u)
        out["domain"] = op.domain
        return rc, out

    def _check(self, what: str, rc: int) -> None:
        if rc < 0:
            raise XenError(f"xl: {what} failed: {errno_name(rc)}")

    def domain(self, ref: int | str | Domain) -> Domain:
        """A domain by name or id."""
        return self.xen.domain(ref)

    # ------------------------------------------------------------------ create
    def create(self, config: dict[str, Any] | str) -> Domain:
        """``xl create``: build, configure and start a domain; returns it."""
        cfg = parse_config(config) if isinstance(config, str) else dict(config)
        xen = self.xen
        name = cfg.get("name")
        if not isinstance(name, str) or not name or "." in name:
            raise ConfigurationError(f"config needs a name (no '.'), got {name!r}")
        if any(d.name == name for d in xen.domains.values()):
            raise ConfigurationError(f"a domain named {name!r} already exists")
        typ = cfg.get("type", "pv")
        if typ not in ("pv", "hvm", "pvh"):
            raise ConfigurationError(f"type must be pv, hvm or pvh, got {typ!r}")
        frame = xen.memory.frame_size
        if "memory_pages" in cfg:
            pages = cfg["memory_pages"]
        else:
            pages = int(cfg.get("memory", 1)) * 1024 * 1024 // frame
        vcpus = cfg.get("vcpus", 1)
        weight = cfg.get("cpu_weight", cfg.get("weight", 256))
        cap = cfg.get("cap", 0)
        for key, val in (("memory", pages), ("vcpus", vcpus), ("weight", weight), ("cap", cap)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 0:
                raise ConfigurationError(f"{key} must be a non-negative int, got {val!r}")
        flags = 0 if typ == "pv" else XEN_DOMCTL_CDF_hvm | XEN_DOMCTL_CDF_hap
        emu = XEN_X86_EMU_LAPIC if typ == "pvh" else 0
        rc, u = self._domctl(XEN_DOMCTL_createdomain, 0, flags=flags, max_vcpus=vcpus,
                             emulation_flags=emu)
        self._check("createdomain", rc)
        domid = u["domain"]
        d = xen.domains[domid]
        try:
            d.name = name
            d.config = cfg
            xen.xenstore.write(0, f"/local/domain/{domid}/name", name)
            self._check("max_mem", self._domctl(XEN_DOMCTL_max_mem, domid,
                                                max_memkb=pages * frame // 1024)[0])
            from virtcore.xen.memop import XENMEM_populate_physmap, XenMemoryReservation

            r = XenMemoryReservation(extent_start=list(range(pages)), domid=domid)
            done = xen.hypercall(0, HYPERVISOR_memory_op, XENMEM_populate_physmap, r)
            if done != pages:
                raise XenError(f"xl: populate_physmap gave {done} of {pages} pages"
                               " (out of machine memory)")
            self._check("scheduler_op", self._domctl(
                XEN_DOMCTL_scheduler_op, domid, cmd=XEN_DOMCTL_SCHEDOP_putinfo, weight=weight,
                cap=cap)[0])
            for dev in cfg.get("pci", []) or []:
                self._check(f"assign_device {dev}",
                            self._domctl(XEN_DOMCTL_assign_device, domid, dev=dev)[0])
            self._check("unpausedomain", self._domctl(XEN_DOMCTL_unpausedomain, domid)[0])
            self._guest_boots(d)
        except Exception:
            if domid in xen.domains:
                xen.destroy_domain(xen.domains[domid])
            raise
        return d

    def _backend_of(self, spec: Any) -> int:
        if isinstance(spec, str) and "backend=" in spec:
            name = spec.split("backend=", 1)[1].split(",", 1)[0]
            return self.xen.domain(int(name) if name.isdigit() else name).domid
        return 0

    def _guest_boots(self, d: Domain) -> None:
        """The guest kernel boots: it watches ``control/shutdown`` and connects its frontends."""
        from virtcore.xen.splitdrv import BlkBack, BlkFront, NetBack, NetFront

        xen = self.xen
        cfg = d.config
        if d.type != "hvm" or cfg.get("pv_drivers", True):
            path = f"/local/domain/{d.domid}/control/shutdown"

            def on_shutdown(p: str, dom: Domain = d) -> None:
                self._on_shutdown_request(dom, p)

            xen.xenstore.watch(d.domid, path, on_shutdown)

            def on_target(p: str, dom: Domain = d) -> None:
                self._balloon(dom, p)

            xen.xenstore.watch(d.domid, f"/local/domain/{d.domid}/memory/target", on_target)
        for kind, key in (("vbd", "disk"), ("vif", "vif")):
            specs = cfg.get(key)
            if not specs:
                continue
            spec = specs[0] if isinstance(specs, list) and specs else specs
            be = self._backend_of(spec)
            front: BlkFront | NetFront
            back: BlkBack | NetBack
            if kind == "vbd":
                devid = 51712
                front = BlkFront(xen, d.domid, be, devid)
                back = BlkBack(xen, be, d.domid, devid)
            else:
                devid = 0
                front = NetFront(xen, d.domid, be, devid)
                back = NetBack(xen, be, d.domid, devid, front=front)
            xen.xenstore.set_readers(0, f"/local/domain/{d.domid}/device/{kind}/{devid}", {be})
            xen.xenstore.set_readers(0, f"/local/domain/{be}/backend/{kind}/{d.domid}/{devid}",
                                     {d.domid})
            self.frontends[(d.domid, kind)] = front
            self.backends[(d.domid, kind)] = back
            front.connect()

    def _balloon(self, d: Domain, path: str) -> None:
        """The guest's balloon driver: reach ``memory/target`` (KiB) with memory_op calls."""
        from virtcore.xen.memop import (
            XENMEM_decrease_reservation,
            XENMEM_populate_physmap,
            XenMemoryReservation,
        )

        xen = self.xen
        value = xen.xenstore.read(d.domid, path)
        if d.domid not in xen.domains or d.paused or not isinstance(value, str):
            return
        target = int(value) * 1024 // xen.memory.frame_size
        cur = d.memory.nr_pages
        if target < cur:
            pfns = [p for p in sorted(d.memory.p2m, reverse=True)
                    if p not in d.kernel_pages][:cur - target]
            xen.hypercall(d, HYPERVISOR_memory_op, XENMEM_decrease_reservation,
                          XenMemoryReservation(extent_start=pfns))
        elif target > cur:
            holes = [p for p in range(target + len(d.memory.p2m)) if p not in d.memory.p2m]
            xen.hypercall(d, HYPERVISOR_memory_op, XENMEM_populate_physmap,
                          XenMemoryReservation(extent_start=holes[:target - cur]))

    def mem_set(self, dom: int | str, memory_pages: int) -> int:
        """``xl mem-set``: write the balloon target to XenStore; the guest's balloon driver gives
        pages back (``XENMEM_decrease_reservation``) or takes more (``populate_physmap``), up to
        ``max_pages``.  Returns the pages the domain has afterwards."""
        d = self.domain(dom)
        if isinstance(memory_pages, bool) or not isinstance(memory_pages, int) or not (
                0 < memory_pages <= d.memory.max_pages):
            raise XenError(f"xl mem-set: target must be 1..{d.memory.max_pages} pages (maxmem),"
                           f" got {memory_pages!r}")
        kib = memory_pages * self.xen.memory.frame_size // 1024
        self.xen.xenstore.write(0, f"/local/domain/{d.domid}/memory/target", str(kib))
        return d.memory.nr_pages

    def _on_shutdown_request(self, d: Domain, path: str) -> None:
        if d.domid not in self.xen.domains or d.is_shut_down:
            return
        word = self.xen.xenstore.read(d.domid, path)
        reason = _SHUTDOWN_WORDS.get(word) if isinstance(word, str) else None
        if reason is not None:
            self.xen.hypercall(d, 29, SCHEDOP_shutdown, {"reason": reason})

    # ------------------------------------------------------------------ list
    def list(self) -> list[ListRow]:
        """``xl list`` rows."""
        rows = []
        for domid, d in sorted(self.xen.domains.items()):
            mem = d.memory.nr_pages * self.xen.memory.frame_size // (1024 * 1024)
            rows.append(ListRow(d.name, domid, mem, len(d.vcpus), d.state_letters(),
                                d.cpu_time_ns / 1e9))
        return rows

    def list_text(self) -> str:
        """``xl list`` as ``xl_info.c`` prints it."""
        head = "Name                                        ID   Mem VCPUs\tState\tTime(s)"
        return "\n".join([head] + [str(r) for r in self.list()])

    # ------------------------------------------------------------------ lifecycle
    def pause(self, dom: int | str) -> None:
        """``xl pause``: ``XEN_DOMCTL_pausedomain``."""
        self._check("pause", self._domctl(XEN_DOMCTL_pausedomain, self.domain(dom).domid)[0])

    def unpause(self, dom: int | str) -> None:
        """``xl unpause``: ``XEN_DOMCTL_unpausedomain``."""
        self._check("unpause", self._domctl(XEN_DOMCTL_unpausedomain, self.domain(dom).domid)[0])

    def shutdown(self, dom: int | str, reason: str = "poweroff") -> bool:
        """``xl shutdown``: ask the guest through XenStore; True if it shut down.

        With ``on_poweroff = "destroy"`` (the default) the toolstack then destroys it.
        """
        d = self.domain(dom)
        if d.domid == 0:
            raise XenError("xl shutdown: refusing to shut down Domain-0 from the toolstack")
        self.xen.xenstore.write(0, f"/local/domain/{d.domid}/control/shutdown", reason)
        if not d.is_shut_down:
            return False
        if d.config.get("on_poweroff", "destroy") == "destroy" and reason != "suspend":
            self.destroy(d.domid)
        return True

    def destroy(self, dom: int | str, force: bool = False) -> None:
        """``xl destroy [-f]``: ``XEN_DOMCTL_destroydomain``, no questions asked."""
        d = self.domain(dom)
        if d.domid == 0 and not force:
            raise XenError("xl destroy: destroying Domain-0 needs -f (force)")
        domid = d.domid
        self._check("destroydomain", self._domctl(XEN_DOMCTL_destroydomain, domid)[0])
        for key in [k for k in self.frontends if k[0] == domid]:
            self.frontends.pop(key)
            back = self.backends.pop(key, None)
            if back is not None and back.be in self.xen.domains:
                back.disconnect()  # the backend sees the frontend vanish from XenStore
        for key, back in list(self.backends.items()):
            if back.be == domid:  # its backend domain died: the frontend loses its device
                self.backends.pop(key)

    def sched_credit(self, dom: int | str | None = None, weight: int | None = None,
                     cap: int | None = None) -> builtins.list[tuple[str, int, int, int]]:
        """``xl sched-credit [-d dom] [-w W] [-c C]``: set, then show (name, id, weight, cap)."""
        targets = [self.domain(dom)] if dom is not None else sorted(
            self.xen.domains.values(), key=lambda d: d.domid)
        rows = []
        for d in targets:
            if weight is not None or cap is not None:
                self._check("sched-credit", self._domctl(
                    XEN_DOMCTL_scheduler_op, d.domid, cmd=XEN_DOMCTL_SCHEDOP_putinfo,
                    weight=weight or 0, cap=d.cap if cap is None else cap)[0])
            rc, u = self._domctl(XEN_DOMCTL_scheduler_op, d.domid, cmd=XEN_DOMCTL_SCHEDOP_getinfo)
            self._check("sched-credit", rc)
            rows.append((d.name, d.domid, u["weight"], u["cap"]))
        return rows

    # ------------------------------------------------------------------ save / restore / migrate
    def save(self, dom: int | str, keep_running: bool = False) -> SavedImage:
        """``xl save``: suspend, read every page (Dom0 maps guest memory), destroy (unless -c)."""
        d = self.domain(dom)
        if d.domid == 0:
            raise XenError("xl save: cannot save Domain-0")
        self._check("pause", self._domctl(XEN_DOMCTL_pausedomain, d.domid)[0])
        mem = self.xen.memory
        pages = {pfn: mem.read_bytes(mfn, 0, mem.frame_size)  # type: ignore[arg-type]
                 for pfn, mfn in sorted(d.memory.p2m.items())}
        img = SavedImage(dict(d.config), pages, d.weight, d.cap, self.xen.name)
        if keep_running:
            self._check("unpause", self._domctl(XEN_DOMCTL_unpausedomain, d.domid)[0])
        else:
            self.destroy(d.domid)
        return img

    def restore(self, image: SavedImage, paused: bool = False) -> Domain:
        """``xl restore``: rebuild the domain and its memory from ``image``."""
        cfg = dict(image.config)
        cfg["memory_pages"] = len(image.pages)
        cfg["weight"], cfg["cap"] = image.weight, image.cap
        d = self.create(cfg)
        self._check("pause", self._domctl(XEN_DOMCTL_pausedomain, d.domid)[0])
        mem = self.xen.memory
        in_use = set(d.kernel_pages)
        for pfn, data in image.pages.items():
            if pfn in d.memory.p2m and pfn not in in_use:  # rings rebuilt by the new frontends
                mem.write_bytes(d.memory.p2m[pfn], 0, data)  # type: ignore[arg-type]
        if not paused:
            self._check("unpause", self._domctl(XEN_DOMCTL_unpausedomain, d.domid)[0])
        return d

    def migrate(self, dom: int | str, target: Xen, *, dirty_rate: float = 200.0,
                bandwidth: float = 10_000.0, seed: int = 0) -> MigrationReport:
        """``xl migrate``: pre-copy the domain to ``target`` (another simulated host).

        Rounds follow :func:`virtcore.vmm.precopy` for this memory size, dirty rate and link
        bandwidth (pages/s); at stop-and-copy the source pauses the guest, sends every page,
        the target builds the domain, and the source destroys its copy.
        """
        from virtcore.vmm.migration import precopy

        d = self.domain(dom)
        if d.domid == 0:
            raise XenError("xl migrate: cannot migrate Domain-0")
        if target is self.xen:
            raise XenError("xl migrate: the target must be another host")
        steps = [f"{self.xen.name}: migrate {d.name} (d{d.domid}) to {target.name}"]
        stats = precopy(max(d.memory.nr_pages, 1), dirty_rate, bandwidth, seed=seed)
        for r in stats.rounds:
            steps.append(f"round {r.index}: {r.pages_sent} pages while {d.name} runs")
        image = self.save(d.domid)
        steps.append(f"stop-and-copy: {stats.stop_and_copy_pages} dirty pages + CPU state")
        new = target.xl.restore(image)
        steps.append(f"{target.name}: {new.name} runs as d{new.domid}; source copy destroyed")
        return MigrationReport(new.name, self.xen.name, target.name, new.domid, stats,
                               len(image.pages), steps)

    def __repr__(self) -> str:
        return f"XL({self.xen.name}: {len(self.xen.domains)} domains)"
