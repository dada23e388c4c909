"""The KVM walkthrough's ungraded self-checks (``kvm.*``), registered with :mod:`.selfcheck`.

Importing this module registers the questions (once; importing it again
changes nothing).  Each question is a generator — the text and data of a
problem, varied by the seed — and a solver that computes the answer **by
running virtcore**: the request numbers of :mod:`virtcore.kvm.api`, guests on
the simulated ``/dev/kvm``, the model's errno values, the host's fair shares,
TCG against KVM and the I/O path comparison.  Nothing is hard-coded.  An
answer left as ``...`` is "not answered yet", never an error.

The walkthrough (``notebooks/kvm-walkthrough.ipynb``) is not a numbered
chapter; its questions belong to the chapter of the claim they cover —
3 for S3.x, 4 for S4.x — and their ids start with ``kvm.``.

======================  ==================================================  ==========  =======
question                what it asks                                        covers      chapter
======================  ==================================================  ==========  =======
``kvm.ioctl-number``    the request number of a KVM ioctl (``_IOC``)        S3.1        3
``kvm.run-calls``       how often the VMM loop calls ``KVM_RUN``            S3.1        3
``kvm.errno``           which errno a mistaken ioctl fails with             S3.1        3
``kvm.nice-share``      a VM's CPU share on the host's CFS, with nice       S3.2        3
``kvm.needs-vtx``       which accelerator QEMU ends up with on a machine    S3.3        3
``kvm.tcg-exits``       VM exits of a guest under KVM and under TCG         S3.3, S4.4  4
``kvm.virtio-exits``    VM exits of emulated and virtio block I/O           S4.5        4
``kvm.full-or-para``    full, paravirtual or pass-through: CPU and a device N5, N4      4
======================  ==================================================  ==========  =======

The errno values follow the kernel's own checks in ``kvm_main.c`` [KVM-MAIN] and the
project's measurements on a real ``/dev/kvm`` [LOCAL]; the accelerator rules follow
the kernel's modules (``kvm-intel`` needs VMX, ``kvm-amd`` SVM) [KVM-API; SDM; APM].

>>> from virtcore.viz.selfcheck import ask, check_answer, solution
>>> check_answer("kvm.run-calls", ..., seed=3).status
'unanswered'
>>> check_answer("kvm.run-calls", solution("kvm.run-calls", seed=3), seed=3).status
'correct'
>>> solution("kvm.errno", seed=0) in ("ok", "EINVAL", "EEXIST")
True
"""

from __future__ import annotations

import errno
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

__all__ = ["CHECKS", "as_errno", "as_percent"]


def as_errno(answer: object) -> str:
    """An errno answer: a name (``"EEXIST"``), a number (17), or ``"ok"`` / 0 for success.

    >>> as_errno("einval"), as_errno(17), as_errno(0), as_errno(" OK ")
    ('EINVAL', 'EEXIST', 'ok', 'ok')
    >>> as_errno("EWHAT")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    virtcore.viz.selfcheck.AnswerFormatError: expected an errno name like 'EINVAL', or 'ok', ...
    """
    if isinstance(answer, bool):
        raise AnswerFormatError(f"expected an errno name like 'EINVAL', or 'ok', got {answer!r}")
    if isinstance(answer, int):
        if answer == 0:
            return "ok"
        if answer in errno.errorcode:
            return errno.errorcode[answer]
    if isinstance(answer, str):
        text = answer.strip()
        if text.lower() in ("ok", "0", "none", "success"):
            return "ok"
        if text.upper() in errno.errorcode.values():
            return text.upper()
    raise AnswerFormatError(f"expected an errno name like 'EINVAL', or 'ok', got {answer!r}")


def as_percent(answer: object) -> int:
    """A percentage, to the nearest whole percent: ``37``, ``37.4``, ``"37%"`` → 37.

    >>> as_percent(39.6), as_percent("40 %"), as_percent(40)
    (40, 40, 40)
    >>> as_percent("a lot")
    Traceback (most recent call last):
    ...
    virtcore.viz.selfcheck.AnswerFormatError: expected a percentage like 40 or 39.6, got 'a lot'
    """
    value: float | None = None
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        value = float(answer)
    elif isinstance(answer, str):
        try:
            value = float(answer.strip().rstrip("%").strip())
        except ValueError:
            value = None
    if value is None or value != value:  # NaN
        raise AnswerFormatError(f"expected a percentage like 40 or 39.6, got {answer!r}")
    return round(value)


def _indent(source: str) -> str:
    return "\n".join("    " + line for line in source.strip("\n").splitlines())


# -- kvm.ioctl-number (S3.1) ---------------------------------------------------------------

_ASKED_IOCTLS = ("KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_CHECK_EXTENSION",
                 "KVM_GET_VCPU_MMAP_SIZE", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION",
                 "KVM_RUN", "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS", "KVM_SET_SREGS")
_STRUCTS = {"KVM_SET_USER_MEMORY_REGION": "kvm_userspace_memory_region",
            "KVM_GET_REGS": "kvm_regs", "KVM_SET_REGS": "kvm_regs",
            "KVM_GET_SREGS": "kvm_sregs", "KVM_SET_SREGS": "kvm_sregs"}


def _gen_ioctl_number(rng: random.Random) -> tuple[str, dict[str, Any]]:
    import ctypes

    from virtcore.kvm import api

    name = rng.choice(_ASKED_IOCTLS)
    nr = getattr(api, name) & 0xFF
    if name in _STRUCTS:
        struct = _STRUCTS[name]
        size = ctypes.sizeof(getattr(api, struct))
        macro = "_IOR" if name.startswith("KVM_GET") else "_IOW"
        what = f"{macro}(KVMIO, {nr:#04x}, struct {struct}) — the structure has {size} bytes"
    else:
        what = f"_IO(KVMIO, {nr:#04x}) — no structure argument"
    return ("A KVM request number packs four fields like Linux's _IOC macro:\n"
            "    direction << 30 | size << 16 | type << 8 | nr\n"
            "with direction 0 for _IO, 1 for _IOW (user space writes to the kernel), 2 for "
            "_IOR,\nand type KVMIO = 0xAE. In <linux/kvm.h>,\n"
            f"    {name} = {what}.\n"
            "What is its request number? Answer with an integer, e.g. 0xae05."), {"name": name}


def _solve_ioctl_number(data: Mapping[str, Any]) -> int:
    from virtcore.kvm import api

    return int(getattr(api, data["name"]))


# -- kvm.run-calls (S3.1) -----------------------------------------------------------------


def _gen_run_calls(rng: random.Random) -> tuple[str, dict[str, Any]]:
    n = rng.randint(2, 5)
    body = [f"movi r1, '{rng.choice('abcxyz')}'"]
    for _ in range(rng.randint(1, 2)):
        body.append("out  0x3f8, r1")
    extra = rng.choice(["", "in   r3, 0x3f8", "st   r1, [r4+0]"])
    if extra:
        body.insert(rng.randrange(1, len(body) + 1), extra)
    lines = ["        li   r4, 0x8000      ; no memory slot there",
             f"        movi r2, {n}",
             *[("loop:   " if i == 0 else "        ") + b for i, b in enumerate(body)],
             "        addi r2, -1",
             "        cmpi r2, 0",
             "        jnz  loop",
             "        hlt"]
    source = "\n".join(lines)
    return ("A teaching-ISA guest runs on the simulated /dev/kvm, in one memory slot at 0x1000 "
            "(nothing\nat 0x8000). The VMM loops like the LWN program: KVM_RUN, handle an IO "
            "or MMIO exit,\nKVM_RUN again — until an exit that is neither. How many times does "
            "it call KVM_RUN?\n\n" + source + "\n\nAnswer with an integer."), {"source": source}


def _solve_run_calls(data: Mapping[str, Any]) -> int:
    from virtcore.hw.asm import assemble
    from virtcore.kvm.cli import run_guest
    from virtcore.kvm.guests import Guest

    guest = Guest("selfcheck", "teaching", assemble(data["source"], 0x1000).to_bytes())
    report = run_guest(guest, isa="teaching", inputs=b"", max_exits=1_000)
    return report.ioctls.count("KVM_RUN")


# -- kvm.errno (S3.1; [KVM-MAIN; LOCAL]) ----------------------------------------------------

#: the second call's cases, by the answer they lead to (a good first call comes before)
_ERRNO_CASES: dict[str, tuple[str, ...]] = {
    "EINVAL": ("misaligned-gpa", "odd-size", "delete-missing", "resize", "bad-flag",
               "vcpu-too-big"),
    "EEXIST": ("overlap", "vcpu-same-id"),
    "ok": ("fine", "delete-existing", "vcpu-other-id"),
}


def _gen_errno(rng: random.Random) -> tuple[str, dict[str, Any]]:
    case = rng.choice(_ERRNO_CASES[rng.choice(sorted(_ERRNO_CASES))])
    if case.startswith("vcpu-"):
        first = rng.randint(0, 7)
        second = {"vcpu-same-id": first, "vcpu-other-id": (first + rng.randint(1, 8)) % 16,
                  "vcpu-too-big": rng.choice((4096, 5000, 100_000))}[case]
        listing = (f"1. ioctl(vmfd, KVM_CREATE_VCPU, {first})     (succeeds)\n"
                   f"2. ioctl(vmfd, KVM_CREATE_VCPU, {second})")
        data: dict[str, Any] = {"kind": "vcpu", "ids": [first, second]}
    else:
        gpa0 = rng.choice((0x1000, 0x4000, 0x10000))
        size0 = rng.choice((0x1000, 0x2000))
        after = gpa0 + size0 + rng.choice((0, 0x1000, 0x8000))
        slot, flags, gpa, size = 1, 0, after, 0x1000
        if case == "misaligned-gpa":
            gpa = after + rng.choice((0x200, 0x800, 0x10))
        elif case == "odd-size":
            size = rng.choice((0x1800, 0x100, 0x2004))
        elif case == "overlap":
            gpa = gpa0 + (size0 - 0x1000 if rng.random() < 0.5 else 0)
        elif case == "delete-missing":
            slot, size = rng.choice((1, 2, 7)), 0
        elif case == "resize":
            slot, gpa, size = 0, gpa0, size0 + 0x1000
        elif case == "delete-existing":
            slot, gpa, size = 0, gpa0, 0
        elif case == "bad-flag":
            flags = rng.choice((4, 8, 0x100))
        regions = [(0, 0, gpa0, size0), (slot, flags, gpa, size)]
        rows = [f"{i}. {s:>4}  {f:#7x}  {g:#15x}  {z:#11x}  mem{0 if s == 0 else 1}"
                for i, (s, f, g, z) in enumerate(regions, start=1)]
        listing = ("   slot    flags  guest_phys_addr  memory_size  userspace_addr\n"
                   + rows[0] + "     (succeeds)\n" + rows[1])
        data = {"kind": "slot", "regions": regions}
    what = ("ioctl(vmfd, KVM_SET_USER_MEMORY_REGION, &region) with these regions\n"
            "(mem0 and mem1 are page-aligned anonymous mappings, large enough):"
            if data["kind"] == "slot" else "these calls:")
    return (f"A VMM makes, on a fresh VM, {what}\n\n" + _indent(listing) + "\n\n"
            "Does the second call succeed? If not, which errno does it fail with? Answer "
            "with an\nerrno name such as 'EINVAL' or 'EEXIST', or 'ok'."), data


def _solve_errno(data: Mapping[str, Any]) -> str:
    from virtcore.kvm import open_kvm
    from virtcore.kvm.api import GuestMemory

    kvm = open_kvm("model")
    vm = kvm.create_vm()
    memories: list[GuestMemory] = []
    result = "ok"
    try:
        if data["kind"] == "vcpu":
            for vcpu_id in data["ids"]:
                vm.create_vcpu(vcpu_id)
        else:
            for slot, flags, gpa, size in data["regions"]:
                if slot >= len(memories):
                    memories.append(GuestMemory(0x3000 + (size + 0xFFF) // 0x1000 * 0x1000))
                mem = memories[min(slot, len(memories) - 1)]
                vm.set_user_memory_region(slot, gpa, size, mem.address, flags)
    except OSError as err:
        result = errno.errorcode[err.errno or 0]
    finally:
        vm.close()
        kvm.close()
        for mem in memories:
            mem.close()
    return result


# -- kvm.nice-share (S3.2) ----------------------------------------------------------------


def _gen_nice_share(rng: random.Random) -> tuple[str, dict[str, Any]]:
    vcpus = rng.randint(1, 3)
    nice = rng.choice((-5, 0, 5, 10))
    threads = rng.randint(1, 2)
    pnice = rng.choice((0, 0, 5))
    return ("One pCPU runs a KVM guest 'vm' — a QEMU process with "
            f"{vcpus} vCPU thread(s), nice {nice} —\nand an ordinary process 'build' with "
            f"{threads} thread(s), nice {pnice}. Every thread is always runnable.\n"
            "Linux's CFS shares the CPU in proportion to each thread's load weight "
            "(sched_prio_to_weight:\nnice -5 → 3121, 0 → 1024, 5 → 335, 10 → 110). What "
            "share of the pCPU does the VM get in the\nlong run, in percent (nearest whole "
            "percent)?"), {"vcpus": vcpus, "nice": nice, "threads": threads, "pnice": pnice}


def _solve_nice_share(data: Mapping[str, Any]) -> float:
    from virtcore.kvm.host import Host, fair_shares

    host = Host(pcpus=1)
    host.add_vm("vm", vcpus=data["vcpus"], nice=data["nice"])
    host.add_process("build", threads=data["threads"], nice=data["pnice"])
    return 100 * fair_shares(list(host.processes.values()), 1)["vm"]


# -- kvm.tcg-exits (S3.3, S4.4, N6) -------------------------------------------------------


def _gen_tcg_exits(rng: random.Random) -> tuple[str, dict[str, Any]]:
    from virtcore.kvm.tcg import workload_guest

    iterations = rng.choice((120, 200, 300, 450, 600))
    io_every = rng.choice((0, 25, 40, 50, 100))
    source = workload_guest(iterations, io_every)
    return ("This guest runs once under QEMU with KVM and once under QEMU alone (TCG, no "
            "hardware\nvirtualization). How many VM exits does each run cause?\n\n"
            + _indent(source)
            + "\n\nAnswer as a pair (exits under KVM, exits under TCG), e.g. (7, 3)."), \
        {"iterations": iterations, "io_every": io_every}


def _solve_tcg_exits(data: Mapping[str, Any]) -> tuple[int, int]:
    from virtcore.kvm.tcg import compare_tcg_kvm

    c = compare_tcg_kvm(iterations=data["iterations"], io_every=data["io_every"])
    return c.kvm.exits, c.tcg.exits


# -- kvm.virtio-exits (S4.5, N4, N5) ------------------------------------------------------


def _gen_virtio_exits(rng: random.Random) -> tuple[str, dict[str, Any]]:
    requests = rng.choice((8, 12, 16, 24, 32))
    batch = rng.choice((1, 2, 4, 8))
    return (f"A KVM guest issues {requests} disk requests, {batch} at a time. With an emulated "
            "ATA-like disk\nits driver touches five device registers per request (SECTOR, "
            "DMA_ADDR, COUNT, COMMAND,\nthen STATUS), each in QEMU. With virtio-blk the driver "
            "puts each batch into the virtqueue\n(guest memory) and kicks the device once. "
            "How many VM exits does each path cause?\n"
            "Answer as a pair (emulated, virtio), e.g. (10, 2)."), \
        {"requests": requests, "batch": batch}


def _solve_virtio_exits(data: Mapping[str, Any]) -> tuple[int, int]:
    from virtcore.kvm.qemu import compare_block_io

    c = compare_block_io(requests=data["requests"], batch=data["batch"],
                         paths=("emulated", "virtio"))
    return c["emulated"].exits, c["virtio"].exits


# -- kvm.needs-vtx (S3.3) ----------------------------------------------------------------

_MACHINES = (
    ("Intel", "vmx", True), ("Intel", "vmx", False), ("Intel", "", True),
    ("AMD", "svm", True), ("AMD", "svm", False), ("AMD", "", True),
)


def as_accel(answer: object) -> str:
    """An accelerator answer: ``"kvm"`` or ``"tcg"`` (case and spaces ignored).

    >>> as_accel(" KVM "), as_accel("tcg")
    ('kvm', 'tcg')
    """
    if isinstance(answer, str) and answer.strip().lower() in ("kvm", "tcg", "xen", "hvf"):
        return answer.strip().lower()
    raise AnswerFormatError(f"expected 'kvm' or 'tcg', got {answer!r}")


def _gen_needs_vtx(rng: random.Random) -> tuple[str, dict[str, Any]]:
    vendor, flag, enabled = rng.choice(_MACHINES)
    flags = "fpu pae sse2 " + (flag + " " if flag else "") + "lm nx"
    firmware = "enabled" if enabled else "disabled"
    return (f"A Linux host has an {vendor} CPU whose /proc/cpuinfo flags include\n"
            f"    {flags}\n"
            f"and its firmware setting for the virtualization extension is {firmware}. "
            "QEMU is started\nwith -accel kvm -accel tcg (KVM if it can, else TCG). Which "
            "accelerator runs the guest?\nAnswer 'kvm' or 'tcg'."), \
        {"vendor": vendor, "flag": flag, "enabled": enabled}


def _solve_needs_vtx(data: Mapping[str, Any]) -> str:
    needed = {"Intel": "vmx", "AMD": "svm"}[data["vendor"]]  # kvm-intel / kvm-amd
    return "kvm" if data["flag"] == needed and data["enabled"] else "tcg"


# -- kvm.full-or-para (N5, N4) ------------------------------------------------------------

_DEVICES = {
    "an emulated ATA disk (QEMU's IDE model)": "full",
    "an emulated e1000 network card": "full",
    "a virtio_blk disk": "para",
    "a virtio_net network card": "para",
    "a network card's virtual function passed through with VFIO (SR-IOV)": "pass-through",
}
_KINDS = ("full", "para", "pass-through")


def as_kinds(answer: object) -> tuple[str, str]:
    """Two of ``'full'``, ``'para'``, ``'pass-through'`` (``'paravirtual'``, ``'passthrough'`` ok).

    >>> as_kinds(("Full", "paravirtual")), as_kinds(["full", "passthrough"])
    (('full', 'para'), ('full', 'pass-through'))
    """
    words = {"full": "full", "para": "para", "paravirtual": "para",
             "pass-through": "pass-through", "passthrough": "pass-through"}
    if isinstance(answer, (tuple, list)) and len(answer) == 2 and all(
            isinstance(a, str) and a.strip().lower() in words for a in answer):
        first, second = (words[a.strip().lower()] for a in answer)
        return first, second
    raise AnswerFormatError(f"expected two of {_KINDS}, like ('para', 'full'), got {answer!r}")


def _gen_full_or_para(rng: random.Random) -> tuple[str, dict[str, Any]]:
    device = rng.choice(sorted(_DEVICES))
    guest = rng.choice(("an unmodified Linux kernel", "an unmodified Windows kernel with "
                        "the matching driver installed"))
    return ("The notes say \"KVM only supports full virtualization\". A KVM guest on VT-x "
            f"runs {guest};\nits device is {device}. How is (1) the guest's CPU and (2) "
            "this device virtualized?\nAnswer a pair of 'full', 'para' or 'pass-through', "
            "e.g. ('para', 'full')."), {"device": device}


def _solve_full_or_para(data: Mapping[str, Any]) -> tuple[str, str]:
    # the CPU: guest code runs unmodified in guest mode (KVM_RUN), whatever the device
    return "full", _DEVICES[data["device"]]


#: The walkthrough's questions, in the order of its sections.
CHECKS: tuple[SelfCheck, ...] = (
    SelfCheck("kvm.ioctl-number", 3, _gen_ioctl_number, _solve_ioctl_number, as_int,
              hint="size is sizeof the structure (0 for _IO); for example KVM_GET_DIRTY_LOG = "
                   "_IOW(0xAE, 0x42, 16) = 1 << 30 | 16 << 16 | 0xAE << 8 | 0x42 = 0x4010ae42; "
                   "`ioctl_table` shows the encoding of every request.",
              covers=("S3.1",)),
    SelfCheck("kvm.run-calls", 3, _gen_run_calls, _solve_run_calls, as_int,
              hint="every out and in is a KVM_EXIT_IO, a load or store at 0x8000 a "
                   "KVM_EXIT_MMIO; each loop pass repeats them; the final hlt is one more "
                   "KVM_RUN (KVM_EXIT_HLT: this VM has no in-kernel irqchip). "
                   "`run_guest` and `exit_table` show every exit.",
              covers=("S3.1",)),
    SelfCheck("kvm.errno", 3, _gen_errno, _solve_errno, as_errno,
              hint="unaligned addresses or sizes, unknown flags, deleting a missing slot and "
                   "resizing a slot are EINVAL; overlapping another slot or reusing a vCPU id "
                   "is EEXIST; vCPU ids must be below 4096. Try it on the model: "
                   "`open_kvm` gives a /dev/kvm that answers with the kernel's errors.",
              covers=("S3.1",)),
    SelfCheck("kvm.nice-share", 3, _gen_nice_share, _solve_nice_share, as_percent,
              hint="sum the weights of all threads; the VM gets (its threads × its weight) / "
                   "that sum (`Host.ps` shows the weights).",
              covers=("S3.2",)),
    SelfCheck("kvm.needs-vtx", 3, _gen_needs_vtx, _solve_needs_vtx, as_accel,
              hint="kvm-intel loads only on a CPU with VMX (the vmx flag) and kvm-amd only with "
                   "SVM (svm), and neither if the firmware switched the extension off; without "
                   "a module there is no /dev/kvm and QEMU falls back to TCG (`kvm_available` "
                   "says why).",
              covers=("S3.3",)),
    SelfCheck("kvm.tcg-exits", 4, _gen_tcg_exits, _solve_tcg_exits, as_int_pair,
              hint="under KVM each out and the final hlt are VM exits (the outs go on to QEMU; "
                   "the hlt stays in KVM on its in-kernel irqchip); under TCG there is no "
                   "guest mode, so nothing exits — I/O is a helper call inside QEMU "
                   "(`compare_tcg_kvm`).",
              covers=("S3.3", "S4.4")),
    SelfCheck("kvm.virtio-exits", 4, _gen_virtio_exits, _solve_virtio_exits, as_int_pair,
              hint="emulated: 5 exits per request; virtio: one kick (exit) per batch, the "
                   "requests themselves are plain memory writes (`compare_block_io`).",
              covers=("S4.5",)),
    SelfCheck("kvm.full-or-para", 4, _gen_full_or_para, _solve_full_or_para, as_kinds,
              hint="KVM runs the guest's unmodified instructions in guest mode (VT-x/AMD-V): "
                   "the CPU is fully virtualized. An emulated device copies a real one's "
                   "registers, so an unmodified driver works (full); virtio needs a driver "
                   "that knows it is virtualized (paravirtual); VFIO / SR-IOV hand the guest a "
                   "real device (pass-through).",
              covers=("N5", "N4")),
)

for _check in CHECKS:
    if _check.qid not in REGISTRY:
        register(_check)
del _check
