"""``python -m virtcore.xen`` — try Xen's pieces from a shell, one command or a script.

Each run boots a fresh simulated host (Xen first, then Domain 0).  Guests come from ``--guest``
(an ``xl.cfg``-like config, inline with ``;`` between settings, or a file), and commands act on
them.  Because every run starts from scratch, ``script`` runs many commands, one per line, on
the same host, and ``demo`` runs a built-in script that walks through the chapter.
``--trace`` prints every step Xen takes (hypercalls, events, upcalls, grant maps …) as it happens.

Examples::

    python -m virtcore.xen boot
    python -m virtcore.xen --guest 'name="web"; memory=1; vcpus=2' list
    python -m virtcore.xen --trace --guest 'name="a"' --guest 'name="b"' send a b
    python -m virtcore.xen --guest 'name="a"' --guest 'name="b"' grant a b --readonly
    python -m virtcore.xen --guest 'name="web"; disk=1' blk web write 3 hello
    python -m virtcore.xen script steps.txt        # or: ... script - < steps.txt
    python -m virtcore.xen demo

:func:`main` returns 0, or 1 when a command failed (its error is printed).

>>> main(["--guest", 'name="web"; memory=1', "list"])
Name                                        ID   Mem VCPUs	State	Time(s)
Domain-0                                     0     1     1     r-----       0.0
web                                          1     1     1     r-----       0.0
0
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from virtcore.errors import VirtcoreError
from virtcore.xen import constants as k
from virtcore.xen.hypervisor import Xen
from virtcore.xen.toolstack import parse_config

__all__ = ["DEMO", "main"]

DEMO = """\
# the xl toolstack in Dom0 builds two guests (a PV one with a disk, an HVM one)
create name="web"; memory=1; vcpus=2; disk=1
create name="db"; type="hvm"; memory=1
list
# an event channel from web to db: alloc_unbound, bind_interdomain, send
send web db
# web grants db a read-only page; db maps it (a writable map is refused)
grant web db --readonly
# a block request through blkfront -> ring -> event -> blkback -> grant map -> disk
blk web write 0 hello-xen
blk web read 0
# the control interface is for Dom0 only
domctl db pause web
pause web
list
unpause web
sched-credit -d web -w 512
destroy db
list
"""

_HELP = {
    "boot": "show how the host started: Xen first, then Domain 0",
    "list": "xl list: Name ID Mem VCPUs State Time(s); the six state letters are r b p s c d",
    "create": "xl create from a config: a file, or inline 'name=\"x\"; memory=1; disk=1'",
    "send": "connect an event channel FROM→TO (alloc_unbound + bind_interdomain) and send on it",
    "grant": "GRANTER grants GRANTEE one page; GRANTEE maps it through Xen and tries to write",
    "blk": "one split-driver block request (blkfront→ring→event→blkback→disk); prints the path",
    "domctl": "issue a domctl (pause/unpause/destroy/getinfo) AS a domain: only Dom0 may",
    "pause": "xl pause: keeps memory, not scheduled",
    "unpause": "xl unpause",
    "shutdown": "xl shutdown: ask the guest (through XenStore) to shut down",
    "destroy": "xl destroy: pull the plug (-f for Dom0, which Xen still refuses)",
    "sched-credit": "xl sched-credit [-d DOM] [-w WEIGHT] [-c CAP]: credit scheduler parameters",
    "trace": "print the last N steps of Xen's trace",
    "script": "run commands, one per line ('#' comments), on one host: FILE or - for stdin",
    "demo": "run the built-in walkthrough script",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m virtcore.xen",
        description="A simulated Xen host: the hypervisor boots first, Domain 0 runs the xl "
                    "toolstack and the backend drivers, DomUs make hypercalls. Every command "
                    "goes through Xen's real interfaces (domctl, event channels, grant tables).",
        epilog="Each run is a fresh host; use 'script' or 'demo' to chain steps.")
    p.add_argument("--trace", action="store_true",
                   help="print every step Xen takes (hypercalls with their -errno results, "
                        "events, upcalls, grant maps, DMA) as it happens")
    p.add_argument("--frames", type=int, default=2048,
                   help="machine frames of 4 KiB (default 2048 = 8 MiB)")
    p.add_argument("--guest", action="append", default=[], metavar="CFG",
                   help="create a guest first (repeatable): inline 'name=\"web\"; memory=1; "
                        "vcpus=2; type=\"hvm\"; disk=1; vif=1; pci=[\"disk\"]' or a file")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name, text in _HELP.items():
        sp = sub.add_parser(name, help=text, description=text)
        if name == "create":
            sp.add_argument("config")
        elif name == "send":
            sp.add_argument("sender")
            sp.add_argument("receiver")
        elif name == "grant":
            sp.add_argument("granter")
            sp.add_argument("grantee")
            sp.add_argument("--readonly", action="store_true", help="GTF_readonly grant")
        elif name == "blk":
            sp.add_argument("dom")
            sp.add_argument("op", choices=["read", "write"])
            sp.add_argument("sector", type=int)
            sp.add_argument("data", nargs="?", default="")
        elif name == "domctl":
            sp.add_argument("caller")
            sp.add_argument("op", choices=["pause", "unpause", "destroy", "getinfo"])
            sp.add_argument("target")
        elif name in ("pause", "unpause", "shutdown", "destroy"):
            sp.add_argument("dom")
            if name == "destroy":
                sp.add_argument("-f", "--force", action="store_true")
        elif name == "sched-credit":
            sp.add_argument("-d", "--domain")
            sp.add_argument("-w", "--weight", type=int)
            sp.add_argument("-c", "--cap", type=int)
        elif name == "trace":
            sp.add_argument("n", type=int, nargs="?", default=20)
        elif name == "script":
            sp.add_argument("file")
    return p


def _config(text: str) -> dict[str, object]:
    path = Path(text)
    if "=" not in text and path.exists():
        return parse_config(path.read_text())
    return parse_config(text.replace(";", "\n"))


def _dom(xen: Xen, ref: str) -> int:
    if ref.isdigit():
        return xen.domain(int(ref)).domid
    if ref.lower() in ("dom0", "domain-0"):
        return 0
    return xen.domain(ref).domid


def _run(xen: Xen, a: argparse.Namespace, out: list[str]) -> None:
    from virtcore.xen.control import XenDomctl
    from virtcore.xen.evtchn import EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnSend
    from virtcore.xen.grant import GnttabMapGrantRef, flags_name

    cmd = a.cmd
    if cmd == "boot":
        out.extend(e.text for e in xen.boot_trace)
    elif cmd == "list":
        out.append(xen.xl.list_text())
    elif cmd == "create":
        d = xen.xl.create(_config(a.config))
        out.append(f"created {d.name} as d{d.domid} ({d.type}, {len(d.vcpus)} vCPUs,"
                   f" {d.memory_kib} KiB)")
    elif cmd == "send":
        s, r = _dom(xen, a.sender), _dom(xen, a.receiver)
        al = EvtchnAllocUnbound(remote_dom=s)
        rc = xen.hypercall(r, k.HYPERVISOR_event_channel_op, k.EVTCHNOP_alloc_unbound, al)
        out.append(f"d{r} alloc_unbound(remote_dom={s}) = {k.errno_name(rc)}, port {al.port}")
        bi = EvtchnBindInterdomain(remote_dom=r, remote_port=al.port)
        rc = xen.hypercall(s, k.HYPERVISOR_event_channel_op, k.EVTCHNOP_bind_interdomain, bi)
        out.append(f"d{s} bind_interdomain(d{r}:{al.port}) = {k.errno_name(rc)},"
                   f" local port {bi.local_port}")
        before = xen.domains[r].stats.upcalls
        rc = xen.hypercall(s, k.HYPERVISOR_event_channel_op, k.EVTCHNOP_send,
                           EvtchnSend(bi.local_port))
        out.append(f"d{s} send(port {bi.local_port}) = {k.errno_name(rc)};"
                   f" d{r} got {xen.domains[r].stats.upcalls - before} upcall(s)")
    elif cmd == "grant":
        g, m = _dom(xen, a.granter), _dom(xen, a.grantee)
        gd = xen.domains[g]
        assert gd.grant_table is not None
        pfn = gd.alloc_page()
        if pfn is None:
            raise VirtcoreError(f"d{g} has no free page to grant")
        ref = gd.grant_table.grant_access(m, gd.frame_of(pfn), readonly=a.readonly)
        mfn = xen.pfn_to_mfn(g, pfn)
        out.append(f"d{g} grants d{m} pfn {pfn} (mfn {mfn:#x}) as ref {ref}:"
                   f" {flags_name(gd.grant_table.entries[ref].flags)}")
        for ro in (False, True):
            op = GnttabMapGrantRef(host_addr=0x40000000, ref=ref, dom=g,
                                   flags=k.GNTMAP_host_map | (k.GNTMAP_readonly if ro else 0))
            xen.hypercall(m, k.HYPERVISOR_grant_table_op, k.GNTTABOP_map_grant_ref, op, 1)
            handle = f", handle {op.handle}" if op.status == 0 else ""
            out.append(f"d{m} map_grant_ref({'readonly' if ro else 'writable'}) →"
                       f" {k.GNTST_NAMES[op.status]}{handle}")
            if op.status == 0:
                w = xen.guest_write(m, mfn, 0, b"hi")
                out.append(f"d{m} writes the page: {'ok' if w == 0 else k.errno_name(w)};"
                           f" entry now {flags_name(gd.grant_table.entries[ref].flags)}")
                out.append(f"d{g} end_foreign_access while mapped:"
                           f" {gd.grant_table.end_foreign_access(ref)}")
                break
    elif cmd == "blk":
        fe = _dom(xen, a.dom)
        front = xen.xl.frontends.get((fe, "vbd"))
        if front is None:
            raise VirtcoreError(f"d{fe} has no virtual disk (create it with disk=1)")
        res = front.read(a.sector) if a.op == "read" else front.write(a.sector, a.data.encode())
        out.append(repr(res))
        for who, kind, text, cost in res.table():
            out.append(f"  {who:<4} {kind:<9} {text}" + (f"   {cost:g} ns" if cost else ""))
        out.append(f"  total {res.cost_ns:g} ns (simulated)")
        if a.op == "read":
            out.append(f"  data: {res.data.rstrip(bytes(1))!r}")
    elif cmd == "domctl":
        caller, target = _dom(xen, a.caller), _dom(xen, a.target)
        cmdnr = {"pause": k.XEN_DOMCTL_pausedomain, "unpause": k.XEN_DOMCTL_unpausedomain,
                 "destroy": k.XEN_DOMCTL_destroydomain,
                 "getinfo": k.XEN_DOMCTL_getdomaininfo}[a.op]
        rc = xen.hypercall(caller, k.HYPERVISOR_domctl, XenDomctl(cmdnr, target))
        out.append(f"d{caller} domctl {k.XEN_DOMCTL_NAMES[cmdnr]}(d{target}) ="
                   f" {k.errno_name(rc)}")
    elif cmd in ("pause", "unpause"):
        getattr(xen.xl, cmd)(_dom(xen, a.dom))
        out.append(f"{cmd}d {a.dom}")
    elif cmd == "shutdown":
        ok = xen.xl.shutdown(_dom(xen, a.dom))
        out.append(f"shutdown {a.dom}: {'done' if ok else 'the guest did not react'}")
    elif cmd == "destroy":
        xen.xl.destroy(_dom(xen, a.dom), force=a.force)
        out.append(f"destroyed {a.dom}")
    elif cmd == "sched-credit":
        dom = _dom(xen, a.domain) if a.domain else None
        out.append(f"{'Name':<20} {'ID':>5} {'Weight':>6} {'Cap':>4}")
        for name, domid, weight, cap in xen.xl.sched_credit(dom, a.weight, a.cap):
            out.append(f"{name:<20} {domid:5d} {weight:6d} {cap:4d}")
    elif cmd == "trace":
        out.append(xen.trace.format(a.n))


def _execute(xen: Xen, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    a = parser.parse_args(argv)
    if a.cmd in ("script", "demo"):
        text = DEMO if a.cmd == "demo" else (
            sys.stdin.read() if a.file == "-" else Path(a.file).read_text())
        rc = 0
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                if line:
                    print(line)
                continue
            print(f"$ {line}")
            words = shlex.split(line)
            if words[0] == "create":
                words = ["create", " ".join(words[1:])]
            rc |= _execute(xen, parser, words)
        return rc
    out: list[str] = []
    try:
        _run(xen, a, out)
    except (VirtcoreError, ValueError) as e:
        for line in out:
            print(line)
        print(f"error: {e}")
        return 1
    for line in out:
        print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = list(sys.argv[1:] if argv is None else argv)
    top = parser.parse_args(args)
    xen = Xen(frames=top.frames)
    if top.trace:
        xen.trace.listeners.append(lambda ev: print(f"  [trace] {ev}"))
    try:
        for cfg in top.guest:
            xen.xl.create(_config(cfg))
    except (VirtcoreError, ValueError) as e:
        print(f"error: {e}")
        return 1
    i = next(i for i, w in enumerate(args) if w == top.cmd)
    return _execute(xen, parser, args[i:])
