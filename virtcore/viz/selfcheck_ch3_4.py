"""Chapters 3 and 4's ungraded self-checks (``cmp.*``), registered with :mod:`.selfcheck`.

Importing this module registers the questions (once; importing it again changes nothing).
Each question is a generator — the text and data of a problem, varied by the seed — and a
solver that computes the answer **by running** the comparison models of
:mod:`virtcore.viz.compare` (a KVM host, a QEMU-like VMM, a Xen host). Nothing is hard-coded.
The questions are conceptual: *who* does a job, *which* trace a step belongs to, *whether* a
hypervisor checks an access, *which* path is faster — the numbers come from the models.

:data:`PLACEHOLDERS` holds the example answer each chapter cell shows ("e.g. …"); a test
checks that it is never the right answer for seeds 0–99.

=====================  ====================================================  ===========  ===
question               what it asks                                          covers       ch.
=====================  ====================================================  ===========  ===
``cmp.who-does``       which component does a job under KVM or Xen            S3.2–S3.5    3
``cmp.trace-of``       whether a trace step is KVM's or Xen's                  S3.1, S3.5   3
``cmp.same-kernel``    which parts of a KVM host sit in the kernel with kvm.ko  S3.2, N3     3
``cmp.needs-check``    whether the hypervisor checks a back end's access       S4.1, S4.2   4
``cmp.fastest``        three I/O paths ranked by simulated time per request    S4.5, N4     4
=====================  ====================================================  ===========  ===

>>> from virtcore.viz.selfcheck import check_answer, solution
>>> check_answer("cmp.who-does", ..., seed=3).status
'unanswered'
>>> check_answer("cmp.who-does", solution("cmp.who-does", seed=3), seed=3).status
'correct'
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping
from typing import Any

from virtcore.viz.selfcheck import REGISTRY, AnswerFormatError, SelfCheck, register

__all__ = ["CHECKS", "PLACEHOLDERS", "as_component", "as_word_list"]


# ---------------------------------------------------------------------------
# normalizers

_COMPONENTS = {"linux": "linux", "host kernel": "linux", "kvm": "kvm.ko", "kvm.ko": "kvm.ko",
               "qemu": "qemu", "xen": "xen", "hypervisor": "xen", "dom0": "dom0",
               "domain-0": "dom0", "domain 0": "dom0", "hardware": "hardware"}


def as_component(answer: object) -> str:
    """One of ``'linux'``, ``'kvm.ko'``, ``'qemu'``, ``'xen'``, ``'dom0'`` (a few synonyms too).

    >>> as_component(" Domain-0 "), as_component("KVM")
    ('dom0', 'kvm.ko')
    """
    if isinstance(answer, str) and answer.strip().lower() in _COMPONENTS:
        return _COMPONENTS[answer.strip().lower()]
    raise AnswerFormatError(f"expected one of 'linux', 'kvm.ko', 'qemu', 'xen', 'dom0', "
                            f"got {answer!r}")


def as_word_list(answer: object) -> tuple[str, ...]:
    """A list of words, compared case-insensitively: ``['kvm', 'xen']``.

    >>> as_word_list(["KVM", " xen"])
    ('kvm', 'xen')
    """
    if isinstance(answer, (list, tuple)) and all(isinstance(x, str) for x in answer):
        return tuple(x.strip().lower() for x in answer)
    raise AnswerFormatError(f"expected a list of words like ['kvm', 'xen'], got {answer!r}")


# ---------------------------------------------------------------------------
# cmp.who-does (S3.2–S3.5)


@functools.lru_cache(maxsize=1)
def _where() -> tuple[tuple[str, str, str], ...]:
    from virtcore.viz.compare import where_table

    return tuple(where_table())


def _component(cell: str) -> str:
    for key, name in (("Xen hypervisor", "xen"), ("Domain-0", "dom0"), ("kvm.ko", "kvm.ko"),
                      ("QEMU", "qemu"), ("Linux", "linux")):
        if cell.startswith(key) or (key == "QEMU" and "QEMU" in cell):
            return name
    raise AnswerFormatError(f"no component in {cell!r}")  # pragma: no cover - model changed


def _gen_who_does(rng: random.Random) -> tuple[str, dict[str, Any]]:
    jobs = [r[0] for r in _where()]
    job = rng.choice(jobs)
    hyp = rng.choice(["KVM", "Xen"])
    choices = "'linux', 'kvm.ko' or 'qemu'" if hyp == "KVM" else "'xen' or 'dom0'"
    return (f"On a {hyp} host, who does this job: {job}?\n"
            f"Answer with one of {choices}."), {"job": job, "hyp": hyp}


def _solve_who_does(data: Mapping[str, Any]) -> str:
    row = next(r for r in _where() if r[0] == data["job"])
    return _component(row[1] if data["hyp"] == "KVM" else row[2])


# ---------------------------------------------------------------------------
# cmp.trace-of (S3.1, S3.5)

_STEPS = ("KVM_EXIT_IO", "ioctl(KVM_RUN)", "ioeventfd", "QEMU emulates", "EVTCHNOP_send",
          "GNTTABOP_map_grant_ref", "upcall", "blkback")


@functools.lru_cache(maxsize=1)
def _traces() -> tuple[str, str]:
    from virtcore.viz.compare import kvm_trace, xen_trace

    k = kvm_trace() + kvm_trace(path="virtio+ioeventfd")
    x = xen_trace()
    return (" | ".join(" ".join(map(str, r[:3])) for r in k),
            " | ".join(" ".join(map(str, r[:3])) for r in x))


def _gen_trace_of(rng: random.Random) -> tuple[str, dict[str, Any]]:
    steps = rng.sample(_STEPS, 4)
    lines = "\n".join(f"    {i}. {s}" for i, s in enumerate(steps, start=1))
    return ("The same two block requests ran on a KVM host (virtio-blk, QEMU) and on a Xen host "
            "(blkfront → blkback in Dom0). Each step below appears in one of the two traces. "
            "Whose is it?\n\n" + lines + "\n\nAnswer with a list of 'kvm' or 'xen', one per "
            "step, in order."), {"steps": steps}


def _solve_trace_of(data: Mapping[str, Any]) -> list[str]:
    k, x = _traces()
    out = []
    for s in data["steps"]:
        in_k, in_x = s in k, s in x
        if in_k == in_x:  # pragma: no cover - the models changed
            raise AnswerFormatError(f"step {s!r} is in {'both' if in_k else 'neither'} trace")
        out.append("kvm" if in_k else "xen")
    return out


# ---------------------------------------------------------------------------
# cmp.same-kernel (S3.2, N3)

_PARTS = ("Linux scheduler", "Linux mm", "/dev/kvm", "QEMU: web", "web: CPU 0/KVM",
          "web: vCPU 0", "db: vCPU 0")


@functools.lru_cache(maxsize=1)
def _kvm_layers() -> dict[str, str]:
    from virtcore.viz.compare import kvm_stack

    return {n: a["layer"] for n, a in kvm_stack().nodes(data=True)}


def _gen_same_kernel(rng: random.Random) -> tuple[str, dict[str, Any]]:
    parts = rng.sample(_PARTS, 4)
    lines = "\n".join(f"    {i}. {p}" for i, p in enumerate(parts, start=1))
    return ("A KVM host runs two VMs, web (2 vCPUs) and db (1 vCPU). Which of these parts run "
            "in the host kernel, beside kvm.ko?\n\n" + lines + "\n\nAnswer with a list of "
            "'yes' or 'no', one per part, in order."), {"parts": parts}


def _solve_same_kernel(data: Mapping[str, Any]) -> list[str]:
    layers = _kvm_layers()
    return ["yes" if layers[p] == "kernel" else "no" for p in data["parts"]]


# ---------------------------------------------------------------------------
# cmp.needs-check (S4.1, S4.2)

_OPS = {
    "xen-map": "Xen: Dom0's blkback maps a page the DomU granted it",
    "xen-spy": "Xen: a second DomU maps a page the DomU granted to Dom0 only",
    "xen-grant": "Xen: the DomU writes a grant entry into its own grant table",
    "kvm-qemu": "KVM: QEMU reads a page of its own guest's RAM",
    "kvm-vhost": "KVM: the vhost worker takes a virtio-blk request off the ring in guest RAM",
    "kvm-kick": "KVM: the guest kicks virtio-blk (a port write with no ioeventfd)",
}


@functools.lru_cache(maxsize=8)
def _hypervisor_checks(op: str) -> bool:
    """Whether the hypervisor was entered to check (or refuse) ``op``, by running it."""
    from virtcore.viz import compare

    if op == "xen-map":
        return compare.sharing_costs(1)[0].checks > 0
    if op == "xen-spy":  # refused: Xen looked at the entry and said no
        return compare.forged_map()[1][1] != "GNTST_okay"
    if op == "xen-grant":
        xen = compare._xen_host(256)
        dom = xen.domain("guest")
        seq = xen.trace.seq
        pfn = dom.alloc_page()
        assert dom.grant_table is not None
        assert pfn is not None
        dom.grant_table.grant_access(0, dom.frame_of(pfn))
        return any(e.kind in ("hypercall", "grant") for e in xen.trace.since(seq))
    if op == "kvm-qemu":
        return compare.qemu_reads_guest(b"x")[1] > 0
    if op in ("kvm-vhost", "kvm-kick"):  # exits or not, nothing checks the ring's pages
        return compare.block_paths(1, 1, 4096)["vhost" if op == "kvm-vhost" else "virtio"] \
            .checks > 0
    raise AnswerFormatError(f"unknown operation {op!r}")  # pragma: no cover


def _gen_needs_check(rng: random.Random) -> tuple[str, dict[str, Any]]:
    ops = rng.sample(sorted(_OPS), 4)
    lines = "\n".join(f"    {i}. {_OPS[o]}" for i, o in enumerate(ops, start=1))
    return ("Does the hypervisor (Xen, or KVM) check this access to guest memory?\n\n" + lines
            + "\n\nAnswer with a list of 'yes' or 'no', one per line, in order."), {"ops": ops}


def _solve_needs_check(data: Mapping[str, Any]) -> list[str]:
    return ["yes" if _hypervisor_checks(o) else "no" for o in data["ops"]]


# ---------------------------------------------------------------------------
# cmp.fastest (S4.5, N4)

_FAST_PATHS = ("emulated", "virtio", "vhost", "split driver")


def _gen_fastest(rng: random.Random) -> tuple[str, dict[str, Any]]:
    size = rng.choice([512, 4096, 16384])
    batch = rng.choice([1, 4, 16])
    paths = rng.sample(_FAST_PATHS, 3)
    return (f"16 block requests of {size} bytes, {batch} outstanding at a time, run through "
            f"{', '.join(repr(p) for p in paths)}. Rank them by simulated time per request, "
            "fastest first (block_paths runs them).\n"
            "Answer with a list of the three names."), {"size": size, "batch": batch,
                                                         "paths": paths}


def _solve_fastest(data: Mapping[str, Any]) -> list[str]:
    from virtcore.viz.compare import block_paths

    p = block_paths(16, data["batch"], data["size"])
    return sorted(data["paths"], key=lambda n: p[n].time_per_request)


# ---------------------------------------------------------------------------

PLACEHOLDERS: dict[str, object] = {
    "cmp.who-does": "hardware",
    "cmp.trace-of": ["kvm"],
    "cmp.same-kernel": ["yes"],
    "cmp.needs-check": ["no"],
    "cmp.fastest": ["native"],
}

CHECKS: tuple[SelfCheck, ...] = (
    SelfCheck("cmp.who-does", 3, _gen_who_does, _solve_who_does, as_component,
              hint="KVM reuses Linux (scheduler, mm) and leaves devices to QEMU in user space; "
                   "Xen keeps CPU and memory in the hypervisor and gives devices and management "
                   "to Dom0. where_table() reads it off the models.",
              covers=("S3.2", "S3.3", "S3.4", "S3.5")),
    SelfCheck("cmp.trace-of", 3, _gen_trace_of, _solve_trace_of, as_word_list,
              hint="KVM's side is ioctls on /dev/kvm and exits returned to QEMU; Xen's is "
                   "hypercalls (event channels, grant tables), upcalls and the back end in "
                   "Dom0. Look at kvm_trace() and xen_trace().",
              covers=("S3.1", "S3.5")),
    SelfCheck("cmp.same-kernel", 3, _gen_same_kernel, _solve_same_kernel, as_word_list,
              hint="a VM is a QEMU process and a vCPU one of its threads (user space); the "
                   "vCPU itself runs in guest mode; the scheduler, the memory manager and "
                   "/dev/kvm are the kernel's. kvm_stack() has each node's layer.",
              covers=("S3.2", "N3")),
    SelfCheck("cmp.needs-check", 4, _gen_needs_check, _solve_needs_check, as_word_list,
              hint="Xen authorises each mapping of another domain's page (GNTTABOP_map_grant_ref)"
                   " but not a guest's writes to its own grant table; under KVM QEMU and vhost "
                   "already map all of guest RAM, and a kick exit carries no memory check. "
                   "sharing_costs() and qemu_reads_guest() show both.",
              covers=("S4.1", "S4.2")),
    SelfCheck("cmp.fastest", 4, _gen_fastest, _solve_fastest, as_word_list,
              hint="emulated devices exit on every register access; virtio and the split driver "
                   "batch requests behind one notification, and vhost also skips user space; "
                   "the split driver adds grant map/unmap hypercalls per page. "
                   "block_paths(16, batch, size) has the numbers.",
              covers=("S4.5", "N4")),
)

for _c in CHECKS:
    if _c.qid not in REGISTRY:
        register(_c)
