"""Chapters 5 and 6a's ungraded self-checks (``xen.*``), registered with :mod:`.selfcheck`.

Importing this module registers the questions (once; importing it again changes nothing).
Each question is a generator — the text and data of a problem, varied by the seed — and a
solver that computes the answer **by running** :class:`virtcore.xen.Xen`: the toolstack, the
control interface, event channels, grant tables, the split block driver, the vCPU paths and
the credit scheduler. Nothing is hard-coded. An answer left as ``...`` is "not answered yet".

:data:`PLACEHOLDERS` holds the example answer each chapter cell shows ("e.g. …"); a test
checks that it is never the right answer for seeds 0–99, so copying the example never passes.

======================  ====================================================  ===========  ===
question                what it asks                                          covers       ch.
======================  ====================================================  ===========  ===
``xen.owner``           which domain runs a device's native driver            S5.1, S5.6   5
``xen.xl-state``        ``xl list``'s ID and State after some ``xl`` commands  S3.5, S5.3   5
``xen.pv-hvm``          entries into Xen of a program as PV and as HVM        S3.6, S5.5   5
``xen.ring``            notifications of a batch of split-driver requests     S5.4         5
``xen.grant-map``       which grant mappings Xen allows                       S4.1         5
``xen.credit-share``    a vCPU's credits per accounting period (csched_acct)  S3.4         5
``xen.domctl``          the results of control operations by Dom0 and a DomU  S6.1         6
``xen.hw-access``       which device accesses the safe hardware interface      S6.2         6
                        allows
``xen.evtchn``          upcalls and PENDING after mask / send / unmask        S6.3         6
``xen.vcpu``            instructions run directly vs. carried out by Xen      S6.4         6
======================  ====================================================  ===========  ===

>>> from virtcore.viz.selfcheck import check_answer, solution
>>> check_answer("xen.evtchn", ..., seed=3).status
'unanswered'
>>> check_answer("xen.evtchn", solution("xen.evtchn", seed=3), seed=3).status
'correct'
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from virtcore.viz.selfcheck import (
    REGISTRY,
    AnswerFormatError,
    SelfCheck,
    as_int,
    as_int_pair,
    register,
)

__all__ = ["CHECKS", "PLACEHOLDERS", "as_id_state", "as_int_list", "as_result_list",
           "as_status_list"]


# ---------------------------------------------------------------------------
# answer normalizers


def as_id_state(answer: object) -> tuple[int, str]:
    """An ``xl list`` (ID, State) pair: ``(3, "--p---")``.

    >>> as_id_state([3, " --p--- "])
    (3, '--p---')
    >>> as_id_state("r-----")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    virtcore.viz.selfcheck.AnswerFormatError: expected (ID, 'State') like (5, 'r-----'), ...
    """
    if isinstance(answer, (tuple, list)) and len(answer) == 2 and isinstance(answer[1], str):
        state = answer[1].strip()
        if len(state) == 6:
            return as_int(answer[0]), state
    raise AnswerFormatError(f"expected (ID, 'State') like (5, 'r-----'), got {answer!r}")


def _result_name(x: object) -> str:
    from virtcore.xen.constants import ERRNO_NAMES

    if isinstance(x, bool):
        raise AnswerFormatError(f"expected 'ok' or an error name like 'EPERM', got {x!r}")
    if isinstance(x, int):
        if x == 0:
            return "ok"
        if -x in ERRNO_NAMES:
            return ERRNO_NAMES[-x]
        if x in ERRNO_NAMES:
            return ERRNO_NAMES[x]
    if isinstance(x, str):
        t = x.strip().lstrip("-").upper()
        if t in ("OK", "0"):
            return "ok"
        if t in ERRNO_NAMES.values():
            return t
    raise AnswerFormatError(f"expected 'ok' or an error name like 'EPERM', got {x!r}")


def as_result_list(answer: object) -> tuple[str, ...]:
    """Hypercall results, in order: ``["ok", "EPERM"]``; ``-1`` and ``"-EPERM"`` also work.

    >>> as_result_list(["ok", -1, "-einval", 0])
    ('ok', 'EPERM', 'EINVAL', 'ok')
    """
    if isinstance(answer, (tuple, list)):
        return tuple(_result_name(x) for x in answer)
    raise AnswerFormatError(f"expected a list like ['ok', 'EPERM'], got {answer!r}")


def as_status_list(answer: object) -> tuple[int, ...]:
    """Grant-map statuses in order, as numbers or ``GNTST_*`` names.

    >>> as_status_list([0, "GNTST_permission_denied", "general_error"])
    (0, -8, -1)
    """
    from virtcore.xen.constants import GNTST_NAMES

    by_name = {n.lower(): v for v, n in GNTST_NAMES.items()}
    out = []
    if not isinstance(answer, (tuple, list)):
        raise AnswerFormatError(f"expected a list like [0, -8], got {answer!r}")
    for x in answer:
        if isinstance(x, int) and not isinstance(x, bool) and x in GNTST_NAMES:
            out.append(x)
            continue
        if isinstance(x, str):
            key = x.strip().lower()
            key = key if key.startswith("gntst_") else "gntst_" + key
            if key in by_name:
                out.append(by_name[key])
                continue
        raise AnswerFormatError(f"expected GNTST_* values like 0 or -8, got {x!r}")
    return tuple(out)


# ---------------------------------------------------------------------------
# xen.xl-state (S3.5, S5.3, S5.4)

_XL_OPS = ("pause", "unpause", "destroy")


def _gen_xl_state(rng: random.Random) -> tuple[str, dict[str, Any]]:
    names = rng.sample(["web", "db", "mail", "cache", "build", "win"], 3)
    cmds: list[tuple[str, str]] = [("create", n) for n in names[:2]]
    live = list(names[:2])
    for _ in range(rng.randint(3, 5)):
        op = rng.choice((*_XL_OPS, "create", "pause"))
        if op == "create" and names[2] not in live and names[2] not in [c[1] for c in cmds]:
            cmds.append(("create", names[2]))
            live.append(names[2])
        elif live:
            target = rng.choice(live)
            if op == "create":
                op = "pause"
            cmds.append((op, target))
            if op == "destroy":
                live.remove(target)
    asked = rng.choice(live) if live else "Domain-0"
    listing = "\n".join(f"    xl {op} {n}" + (".cfg" if op == "create" else "")
                        for op, n in cmds)
    return ("Xen has just booted (only Domain-0, ID 0). Dom0's administrator types:\n\n"
            + listing + "\n\n"
            "(each .cfg creates a 1-vCPU PV guest of that name; a failing command changes "
            "nothing).\n"
            f"What do the ID and State columns of `xl list` show for {asked!r}?\n"
            "Answer as a pair (ID, 'State')."), {"cmds": cmds, "asked": asked}


def _solve_xl_state(data: Mapping[str, Any]) -> tuple[int, str]:
    from virtcore.errors import VirtcoreError
    from virtcore.xen import Xen

    xen = Xen(frames=256)
    for op, name in data["cmds"]:
        try:
            if op == "create":
                xen.xl.create({"name": name, "type": "pv", "vcpus": 1, "memory_pages": 16})
            else:
                getattr(xen.xl, op)(name)
        except VirtcoreError:
            pass
    d = xen.domain(data["asked"])
    return d.domid, d.state_letters()


# ---------------------------------------------------------------------------
# xen.grant-map (S4.1)


def _gen_grant_map(rng: random.Random) -> tuple[str, dict[str, Any]]:
    readonly = rng.random() < 0.5
    tries = []
    for _ in range(rng.randint(3, 4)):
        who = rng.choice(["back", "back", "spy"])
        write = rng.random() < 0.5
        tries.append((who, write))
    if all(w == "back" and (not write or not readonly) for w, write in tries):
        tries[rng.randrange(len(tries))] = ("spy", rng.random() < 0.5)
    ro = "read-only " if readonly else ""
    lines = "\n".join(f"    {i}. {'backend d1' if w == 'back' else 'another DomU d3'} asks Xen "
                      f"to map it {'writable' if wr else 'read-only'}"
                      for i, (w, wr) in enumerate(tries, start=1))
    return ("Frontend domain d2 grants one of its pages to backend domain d1: a "
            f"{ro}grant\n(GTF_permit_access{'|GTF_readonly' if readonly else ''}, domid=1). "
            "Then, one after the other:\n\n" + lines + "\n\n"
            "What status does Xen return for each GNTTABOP_map_grant_ref? (GNTST_okay = 0,\n"
            "GNTST_general_error = -1, GNTST_bad_gntref = -3, GNTST_permission_denied = -8.)\n"
            "Answer with a list of GNTST_* values, e.g. [0, -8]"), \
        {"readonly": readonly, "tries": tries}


def _solve_grant_map(data: Mapping[str, Any]) -> list[int]:
    from virtcore.xen import Xen
    from virtcore.xen.constants import (
        GNTMAP_host_map,
        GNTMAP_readonly,
        GNTTABOP_map_grant_ref,
        HYPERVISOR_grant_table_op,
    )
    from virtcore.xen.grant import GnttabMapGrantRef

    xen = Xen(frames=256)
    back = xen.create_guest("back", memory_pages=4)
    front = xen.create_guest("front", memory_pages=4)
    spy = xen.create_guest("spy", memory_pages=4)
    assert front.grant_table is not None
    ref = front.grant_table.grant_access(back.domid, xen.pfn_to_mfn(front.domid, 0),
                                         readonly=data["readonly"])
    out = []
    for i, (who, write) in enumerate(data["tries"]):
        mapper = back if who == "back" else spy
        flags = GNTMAP_host_map | (0 if write else GNTMAP_readonly)
        op = GnttabMapGrantRef(host_addr=0x100000 + i * 0x1000, flags=flags, ref=ref,
                               dom=front.domid)
        xen.hypercall(mapper, HYPERVISOR_grant_table_op, GNTTABOP_map_grant_ref, op, 1)
        out.append(int(op.status))
    return out


# ---------------------------------------------------------------------------
# xen.domctl (S6.1)

_DOMCTL_CASES = ("pause", "unpause", "destroy", "weight", "max_mem")


def _gen_domctl(rng: random.Random) -> tuple[str, dict[str, Any]]:
    calls: list[tuple[str, str, str]] = []
    for _ in range(4):
        caller = rng.choice(["Domain-0", "Domain-0", "cli"])
        target = rng.choice(["db", "db", "web", "Domain-0"])
        op = rng.choice(_DOMCTL_CASES)
        calls.append((caller, op, target))
    if all(c[0] != "Domain-0" for c in calls):
        calls[0] = ("Domain-0", "pause", "db")
    what = {"pause": "XEN_DOMCTL_pausedomain", "unpause": "XEN_DOMCTL_unpausedomain",
            "destroy": "XEN_DOMCTL_destroydomain",
            "weight": "XEN_DOMCTL_scheduler_op (credit weight 512)",
            "max_mem": "XEN_DOMCTL_max_mem (64 MiB)"}
    lines = "\n".join(f"    {i}. {c} calls domctl {what[op]} on {t}"
                      for i, (c, op, t) in enumerate(calls, start=1))
    return ("Three running DomUs, 'web', 'db' and 'cli', beside Domain-0. These domctl "
            "hypercalls are\nmade in order (each one sees what the calls before it did):\n\n"
            + lines
            + "\n\nWhat does each return? Answer with a list of 'ok' or error names, e.g. "
              "['ok', 'EPERM']"), {"calls": calls}


def _solve_domctl(data: Mapping[str, Any]) -> list[str]:
    from virtcore.xen import Xen
    from virtcore.xen.constants import (
        ERRNO_NAMES,
        HYPERVISOR_domctl,
        XEN_DOMCTL_destroydomain,
        XEN_DOMCTL_max_mem,
        XEN_DOMCTL_pausedomain,
        XEN_DOMCTL_SCHEDOP_putinfo,
        XEN_DOMCTL_scheduler_op,
        XEN_DOMCTL_unpausedomain,
    )
    from virtcore.xen.control import XenDomctl

    xen = Xen(frames=256)
    ids = {"Domain-0": 0}
    for n in ("web", "db", "cli"):
        ids[n] = xen.create_guest(n, memory_pages=16).domid
    out = []
    for caller, op, target in data["calls"]:
        cmd, u = {"pause": (XEN_DOMCTL_pausedomain, {}),
                  "unpause": (XEN_DOMCTL_unpausedomain, {}),
                  "destroy": (XEN_DOMCTL_destroydomain, {}),
                  "weight": (XEN_DOMCTL_scheduler_op, {"cmd": XEN_DOMCTL_SCHEDOP_putinfo,
                                                       "weight": 512}),
                  "max_mem": (XEN_DOMCTL_max_mem, {"max_memkb": 65536})}[op]
        rc = xen.hypercall(ids[caller], HYPERVISOR_domctl, XenDomctl(cmd, ids[target], dict(u)))
        out.append("ok" if rc == 0 else ERRNO_NAMES.get(-rc, str(rc)))
    return out


# ---------------------------------------------------------------------------
# xen.evtchn (S6.3)


def _gen_evtchn(rng: random.Random) -> tuple[str, dict[str, Any]]:
    ops = [rng.choice(["send", "send", "mask", "unmask"]) for _ in range(rng.randint(4, 7))]
    if "mask" not in ops:
        ops[rng.randrange(len(ops))] = "mask"
    lines = "\n".join(f"    {i}. {op}" for i, op in enumerate(ops, start=1))
    return ("A frontend d1 and Domain 0 share an inter-domain event channel; Dom0's port "
            "starts with\nPENDING = 0 and MASK = 0, and Dom0's upcall handler clears PENDING "
            "of every port it\nhandles. 'send' is d1's EVTCHNOP_send, 'mask' Dom0 setting the "
            "port's MASK bit,\n'unmask' Dom0's EVTCHNOP_unmask:\n\n" + lines + "\n\n"
            "How many upcalls does Dom0's vCPU receive, and what is the port's PENDING bit at "
            "the end?\nAnswer as a pair (upcalls, pending), e.g. (9, 1)"), {"ops": ops}


def _solve_evtchn(data: Mapping[str, Any]) -> tuple[int, int]:
    from virtcore.viz.xen_chapters import EventBitsConsole

    c = EventBitsConsole()
    for op in data["ops"]:
        c.do(op)
    b = c.bits()
    return b.upcalls, b.pending


# ---------------------------------------------------------------------------
# xen.owner (S5.1, S5.3, S5.6)


def _gen_owner(rng: random.Random) -> tuple[str, dict[str, Any]]:
    moves: list[tuple[str, str]] = []
    for _ in range(rng.randint(1, 3)):
        moves.append((rng.choice(["nic", "disk", "serial"]),
                      rng.choice(["netdom", "stordom", "Domain-0"])))
    asked = rng.choice(["nic", "disk", "serial"])
    if all(dev != asked for dev, _ in moves):
        moves.append((asked, rng.choice(["netdom", "stordom"])))
    lines = "\n".join(f"    {i}. Dom0's toolstack asks Xen to assign '{dev}' to {dom}"
                      f"{' (back to itself)' if dom == 'Domain-0' else ''}"
                      for i, (dev, dom) in enumerate(moves, start=1))
    return ("A Xen host boots with three PCI devices: disk, nic and serial. Dom0 creates "
            "two DomUs,\n'netdom' (ID 1) and 'stordom' (ID 2). Then, in order (a domain can "
            "give only a device it\nowns: Dom0 must take a device back before it can give it "
            "to another domain; assigning a\ndevice to the domain that has it already "
            "fails):\n\n" + lines + "\n\n"
            f"Which domain runs the native driver of '{asked}' at the end? Answer with its "
            "ID."), {"moves": moves, "asked": asked}


def _solve_owner(data: Mapping[str, Any]) -> int:
    from virtcore.xen import Xen
    from virtcore.xen.constants import (
        HYPERVISOR_domctl,
        XEN_DOMCTL_assign_device,
        XEN_DOMCTL_deassign_device,
    )
    from virtcore.xen.control import XenDomctl

    xen = Xen(frames=256)
    for n in ("netdom", "stordom"):
        xen.create_guest(n, memory_pages=8)
    for dev, dom in data["moves"]:
        owner = xen.platform[dev].owner
        if dom == "Domain-0":
            if owner != 0:
                xen.hypercall(0, HYPERVISOR_domctl,
                              XenDomctl(XEN_DOMCTL_deassign_device, owner, {"dev": dev}))
            continue
        xen.hypercall(0, HYPERVISOR_domctl,
                      XenDomctl(XEN_DOMCTL_assign_device, xen.domain(dom).domid, {"dev": dev}))
    return int(xen.platform[data["asked"]].owner)


# ---------------------------------------------------------------------------
# xen.pv-hvm (S3.6, S5.5) and xen.vcpu (S6.4)

_BODY = ("addi r2, 1", "addi r3, -1", "add r2, r3", "movi r4, 9", "cli", "sti",
         "out 0x3f8, r1")


def _gen_program(rng: random.Random) -> str:
    body = [rng.choice(_BODY) for _ in range(rng.randint(3, 6))]
    if not any(b in ("cli", "sti") for b in body):
        body[rng.randrange(len(body))] = rng.choice(("cli", "sti"))
    n = rng.randint(2, 4)
    return "\n".join([f"        movi r1, {n}", "loop:   " + body[0],
                      *("        " + b for b in body[1:]),
                      "        addi r1, -1", "        cmpi r1, 0", "        jnz  loop",
                      "        hlt"])


def _gen_pv_hvm(rng: random.Random) -> tuple[str, dict[str, Any]]:
    source = _gen_program(rng)
    return ("This guest kernel runs once as a PV DomU and once as an HVM DomU, each given the "
            "serial\nport's I/O ports (0x3f8–0x3ff) by Dom0. How many times does it enter Xen "
            "in each run\n(PV: faults of privileged instructions; HVM: VM exits; the final hlt "
            "not counted)?\n\n" + source + "\n\nAnswer as a pair (PV entries, HVM entries)."), \
        {"source": source}


def _solve_pv_hvm(data: Mapping[str, Any]) -> tuple[int, int]:
    from virtcore.viz.xen_chapters import pv_hvm_paths

    c = pv_hvm_paths(data["source"])
    return c.entries("pv"), c.entries("hvm")


def _gen_vcpu(rng: random.Random) -> tuple[str, dict[str, Any]]:
    source = _gen_program(rng)
    return ("This kernel runs on the vCPU of a PV DomU that Dom0 gave the serial port's I/O "
            "ports.\nHow many of its instructions run directly on the physical CPU, and how "
            "many are\nchecked and carried out by Xen (the final hlt not counted)?\n\n"
            + source + "\n\nAnswer as a pair (direct, by Xen)."), {"source": source}


def _solve_vcpu(data: Mapping[str, Any]) -> tuple[int, int]:
    from virtcore.viz.xen_chapters import vcpu_paths

    p = vcpu_paths(data["source"], "pv", ioports=range(0x3F8, 0x400))
    return p.direct, p.via_xen


# ---------------------------------------------------------------------------
# xen.ring (S5.4)


def _gen_ring(rng: random.Random) -> tuple[str, dict[str, Any]]:
    requests = rng.choice((6, 8, 10, 12, 16))
    batch = rng.choice((1, 2, 3, 4, 8))
    return (f"A DomU's blkfront reads {requests} sectors, one request each. It puts them on "
            f"the shared ring\n{batch} at a time; after each batch it publishes them "
            "(RING_PUSH_REQUESTS_AND_CHECK_NOTIFY)\nand notifies blkback in Dom0 if the macro "
            "says so. blkback answers each batch and notifies\nback the same way. How many "
            "EVTCHNOP_send hypercalls are made in all (both directions)?"), \
        {"requests": requests, "batch": batch}


def _solve_ring(data: Mapping[str, Any]) -> int:
    from virtcore.viz.xen_chapters import batch_requests

    return batch_requests(data["requests"], data["batch"]).notifications


# ---------------------------------------------------------------------------
# xen.credit-share (S3.4)


def _gen_credit_share(rng: random.Random) -> tuple[str, dict[str, Any]]:
    doms = [("a", rng.choice((128, 256, 512)), 1), ("b", rng.choice((256, 512, 768)),
                                                      rng.choice((1, 2))),
            ("c", rng.choice((256, 1024)), rng.choice((1, 2, 3)))]
    asked = rng.choice([d[0] for d in doms])
    lines = "\n".join(f"    {n}: weight {w}, {v} vCPU(s), no cap" for n, w, v in doms)
    return ("One pCPU; Xen's credit scheduler; three DomUs whose vCPUs are all active (always\n"
            "runnable; Dom0 idle, not counted):\n\n" + lines + "\n\n"
            "Every 30 ms csched_acct hands out 300 credits per pCPU. How many credits does "
            f"each vCPU\nof {asked!r} get per accounting period?"), \
        {"doms": [(w, v, 0) for _n, w, v in doms], "ncpus": 1,
         "index": [d[0] for d in doms].index(asked)}


def _solve_credit_share(data: Mapping[str, Any]) -> int:
    from virtcore.sched.credit import credit_shares

    doms = [tuple(d) for d in data["doms"]]
    return credit_shares(doms, data["ncpus"])[data["index"]]


# ---------------------------------------------------------------------------
# xen.hw-access (S6.2)


def _gen_hw_access(rng: random.Random) -> tuple[str, dict[str, Any]]:
    from virtcore.viz.xen_chapters import HW_ACCESSES

    give_nic = rng.random() < 0.7
    tries = [("Domain-0", "disk", rng.choice(HW_ACCESSES[1:]))]
    for _ in range(rng.randint(3, 4)):
        dom = rng.choice(["Domain-0", "netdom", "app"])
        dev = rng.choice(["disk", "nic"])
        acc = rng.choice(HW_ACCESSES[1:] if dev == "nic" else HW_ACCESSES)
        if (dom, dev, acc) not in tries:
            tries.append((dom, dev, acc))
    rng.shuffle(tries)
    lines = "\n".join(f"    {i}. {dom}: {acc} of '{dev}'"
                      for i, (dom, dev, acc) in enumerate(tries, start=1))
    nic = ("Dom0 has assigned the nic to 'netdom' (a driver domain)." if give_nic
           else "Dom0 has kept every device.")
    return ("A Xen host with a disk (ports 0x1f0–0x1f7, IRQ 14) and a nic (MMIO, IRQ 11); "
            "two DomUs,\n'netdom' and 'app'. " + nic + " Each domain tries:\n\n" + lines
            + "\n\n('DMA into own frame': the device writes into one of the domain's own "
            "frames, as its\ndriver would program it.) Which are allowed? Answer with the list "
            "of their numbers,\ne.g. [2, 6]"), {"give_nic": give_nic, "tries": tries}


def _solve_hw_access(data: Mapping[str, Any]) -> list[int]:
    from virtcore.viz.xen_chapters import hardware_access
    from virtcore.xen import Xen
    from virtcore.xen.constants import HYPERVISOR_domctl, XEN_DOMCTL_assign_device
    from virtcore.xen.control import XenDomctl

    xen = Xen(frames=256)
    netdom = xen.create_guest("netdom", memory_pages=8)
    xen.create_guest("app", memory_pages=8)
    if data["give_nic"]:
        xen.hypercall(0, HYPERVISOR_domctl,
                      XenDomctl(XEN_DOMCTL_assign_device, netdom.domid, {"dev": "nic"}))
    return sorted(i for i, (dom, dev, acc) in enumerate(data["tries"], start=1)
                  if hardware_access(xen, dom, dev, acc) == "ok")


def as_int_list(answer: object) -> tuple[int, ...]:
    """A list of numbers, order ignored: ``[5, 2]`` → ``(2, 5)``.

    >>> as_int_list([5, "2"])
    (2, 5)
    """
    if isinstance(answer, (tuple, list, set, frozenset)):
        return tuple(sorted(as_int(x) for x in answer))
    raise AnswerFormatError(f"expected a list of numbers like [2, 5], got {answer!r}")


# ---------------------------------------------------------------------------

#: The example answer shown in each chapter's answer cell (never right for seeds 0–99).
PLACEHOLDERS: dict[str, object] = {
    "xen.xl-state": (7, "-b----"),
    "xen.grant-map": [0, -8],
    "xen.domctl": ["ok", "EPERM"],
    "xen.evtchn": (9, 1),
    "xen.owner": 7,
    "xen.pv-hvm": (0, 0),
    "xen.ring": 0,
    "xen.vcpu": (1, 1),
    "xen.credit-share": 0,
    "xen.hw-access": [2, 6],
}

#: The questions, in the order of the chapters' sections.
CHECKS: tuple[SelfCheck, ...] = (
    SelfCheck("xen.owner", 5, _gen_owner, _solve_owner, as_int,
              hint="at boot Dom0 (ID 0) owns every device; an assignment moves the device "
                   "only if Dom0 has it; platform_table(xen) shows the owners.",
              covers=("S5.1", "S5.3", "S5.6")),
    SelfCheck("xen.xl-state", 5, _gen_xl_state, _solve_xl_state, as_id_state,
              hint="IDs count up from 1 and are not reused here; a created guest runs "
                   "('r-----'); pause is counted — two pauses need two unpauses; a destroyed "
                   "domain is gone. xl_list(xen) shows the table.",
              covers=("S3.5", "S5.3")),
    SelfCheck("xen.grant-map", 5, _gen_grant_map, _solve_grant_map, as_status_list,
              hint="Xen checks that the entry names the mapping domain and that a writable "
                   "map is not of a read-only grant; _set_status_v1 fails both with "
                   "GNTST_general_error. A read-only grant may be mapped read-only many times.",
              covers=("S4.1",)),
    SelfCheck("xen.pv-hvm", 5, _gen_pv_hvm, _solve_pv_hvm, as_int_pair,
              hint="PV: every cli, sti and out faults into Xen; HVM: the CPU virtualizes the "
                   "interrupt flag, so only out exits. Count per loop pass, times the passes; "
                   "pv_hvm_paths(source) runs both.",
              covers=("S3.6", "S5.5")),
    SelfCheck("xen.ring", 5, _gen_ring, _solve_ring, as_int,
              hint="data travels in the ring, notifications by event channel: one send per "
                   "published batch each way, because each side re-arms its *_event index "
                   "when it runs out of work; batch_requests(requests, batch) counts them.",
              covers=("S5.4",)),
    SelfCheck("xen.credit-share", 5, _gen_credit_share, _solve_credit_share, as_int,
              hint="a domain's fair share is 300 × weight × vCPUs / Σ(weight × vCPUs), "
                   "rounded up, then split evenly over its vCPUs (rounded up again); "
                   "credit_shares(domains, ncpus) computes it.",
              covers=("S3.4",)),
    SelfCheck("xen.domctl", 6, _gen_domctl, _solve_domctl, as_result_list,
              hint="a DomU gets EPERM for every domctl; Dom0 cannot pause or destroy itself "
                   "(EINVAL); unpausing a domain that is not paused is EINVAL; a destroyed "
                   "domain is gone (ESRCH).",
              covers=("S6.1",)),
    SelfCheck("xen.hw-access", 6, _gen_hw_access, _solve_hw_access, as_int_list,
              hint="only the device's owner passes: its ports, its config space, DMA into "
                   "its frames, its IRQ as a pirq; hardware_matrix(xen, domains, device) "
                   "tries them all.",
              covers=("S6.2",)),
    SelfCheck("xen.evtchn", 6, _gen_evtchn, _solve_evtchn, as_int_pair,
              hint="an upcall needs a 0 → 1 edge of PENDING while MASK is clear; a send to a "
                   "port already pending does nothing; unmask delivers a pending port; the "
                   "handler clears PENDING. EventBitsConsole().do(op) replays a sequence.",
              covers=("S6.3",)),
    SelfCheck("xen.vcpu", 6, _gen_vcpu, _solve_vcpu, as_int_pair,
              hint="cli, sti and out are privileged: Xen checks and carries each out; the "
                   "rest runs directly. Count per loop pass, times the passes, plus the first "
                   "movi; vcpu_paths(source, 'pv', ioports=range(0x3f8, 0x400)) runs it.",
              covers=("S6.4",)),
)

for _check in CHECKS:
    if _check.qid not in REGISTRY:
        register(_check)
del _check
