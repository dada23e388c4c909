"""Run a raw guest image on the simulated KVM (or the real one): the way a user tries things.

``python -m virtcore.kvm run guest.bin [--real] [--isa x86|teaching] [--trace]``
loads ``guest.bin`` at guest-physical 0x1000, follows the canonical call sequence
of LWN's *Using the KVM API* [LWN15] and loops on ``KVM_RUN`` like the LWN
program: bytes written to COM1 (port 0x3f8) are printed, an IN is answered from
``--input``, an MMIO read from a small scratch device that remembers MMIO writes (bytes never
written read as 0x41, 0x42, … — "A", "B", …),
and the run ends at the first exit that is not IO or MMIO, whose name is printed
(``KVM_EXIT_HLT`` for the LWN guest).  ``--trace`` also prints every exit.
A built-in guest name (``lwn``, ``x86_hello``, ``teaching_lwn`` …, see
:mod:`virtcore.kvm.guests`) may stand in for the file.

:func:`run_guest` is that reference VMM loop as a function (tests, benchmarks and
the assignment's reference use it):

>>> from virtcore.kvm.guests import teaching_lwn
>>> report = run_guest(teaching_lwn())
>>> report.output, [e.name for e in report.exits]
('4\\n', ['KVM_EXIT_IO', 'KVM_EXIT_IO', 'KVM_EXIT_HLT'])
>>> print(report.exits[0])
KVM_EXIT_IO out port=0x3f8 size=4 count=1 data=34000000
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from virtcore.kvm import open_kvm
from virtcore.kvm.api import (
    KVM_API_VERSION,
    KVM_CREATE_IRQCHIP,
    KVM_CREATE_VCPU,
    KVM_CREATE_VM,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_IO_OUT,
    KVM_EXIT_MMIO,
    KVM_GET_API_VERSION,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_GET_VCPU_MMAP_SIZE,
    KVM_RUN,
    KVM_SET_REGS,
    KVM_SET_SREGS,
    KVM_SET_USER_MEMORY_REGION,
    ExitRecord,
    GuestMemory,
    KvmUsageError,
    kvm_regs,
    kvm_sregs,
    kvm_userspace_memory_region,
    read_exit,
)
from virtcore.kvm.guests import BUILTIN, COM1, Guest
from virtcore.kvm.real import signal_after

__all__ = ["RunReport", "main", "run_guest"]


@dataclass
class RunReport:
    """What :func:`run_guest` saw.

    Attributes
    ----------
    output : str
        Bytes written to COM1 (low byte of each OUT), decoded as Latin-1.
    exits : list of ExitRecord
        Every exit in order; IN and MMIO-read records carry the data the VMM gave.
    regs : kvm_regs
        The registers after the last exit.
    ioctls : list of str
        The calls made, by name (the canonical sequence, then ``KVM_RUN`` per exit).
    regs_at_exit : list of kvm_regs
        With ``regs_per_exit=True``: the registers right after each exit.
    mp_state : int or None
        With ``irqchip=True``: ``KVM_GET_MP_STATE`` after the last exit
        (3 = ``KVM_MP_STATE_HALTED`` when the guest's ``hlt`` put it to sleep).

    >>> RunReport().final
    '(no exit)'
    """

    output: str = ""
    exits: list[ExitRecord] = field(default_factory=list)
    regs: kvm_regs = field(default_factory=kvm_regs)
    ioctls: list[str] = field(default_factory=list)
    regs_at_exit: list[kvm_regs] = field(default_factory=list)
    mp_state: int | None = None

    @property
    def final(self) -> str:
        """Name of the exit that ended the run (``KVM_EXIT_HLT`` for a clean end)."""
        return self.exits[-1].name if self.exits else "(no exit)"

    def trace(self) -> list[tuple]:
        """The exits as plain tuples (reason, port/address, size, direction, data) — what
        the model-vs-real tests compare."""
        return [(e.reason, e.port if e.reason == KVM_EXIT_IO else e.phys_addr, e.size,
                 e.direction if e.reason == KVM_EXIT_IO else e.is_write, e.count, e.data)
                for e in self.exits]


def run_guest(guest: Guest | bytes, *, backend: str = "model", isa: str | None = None,
              inputs: bytes | None = None, max_exits: int = 100_000,
              time_limit: float | None = 5.0, budget: int = 5_000_000,
              regs_per_exit: bool = False, set_sregs: bool = True,
              irqchip: bool = False) -> RunReport:
    """Run ``guest`` to its first non-IO/MMIO exit with the LWN program's loop.

    Parameters
    ----------
    guest : Guest or bytes
        A guest, or raw code (x86 unless ``isa`` says otherwise) loaded at 0x1000.
    backend : {"model", "real"}
    isa : {"x86", "teaching"}, optional
        Default: the guest's.  The real KVM runs x86 only.
    inputs : bytes, optional
        Bytes answered to IN instructions in order (then 0); default the guest's.
    max_exits : int
        Stop after this many exits (the last record is then the last IO/MMIO exit).
    time_limit, budget
        The model's limits for one ``KVM_RUN`` (x86 seconds, teaching instructions).
    regs_per_exit : bool
        Also record the registers after every exit (``KVM_GET_REGS``).
    set_sregs : bool
        Step 9 of the canonical sequence [LWN15] (``cs.base = cs.selector = 0``); False
        keeps the reset state.
    irqchip : bool
        Call ``KVM_CREATE_IRQCHIP`` after ``KVM_CREATE_VM``, as QEMU does on x86 (the LWN
        program does not).  The guest's ``hlt`` then never reaches user space: the vCPU
        sleeps in the kernel, and the run ends when a signal interrupts ``KVM_RUN``
        (``EINTR``, recorded as ``KVM_EXIT_INTR``) — on the real KVM this function
        sends one after ``time_limit`` seconds (default 5; see
        :func:`virtcore.kvm.real.signal_after`) [KVM-API §4.24; KVM-X86].

    Returns
    -------
    RunReport

    >>> from virtcore.kvm.guests import teaching_echo
    >>> r = run_guest(teaching_echo(), inputs=b"x")
    >>> r.output, r.exits[0].data
    ('y', b'x\\x00\\x00\\x00')
    """
    if isinstance(guest, (bytes, bytearray)):
        guest = Guest("raw", isa or "x86", bytes(guest),
                      memory_size=max(0x1000, -(-len(guest) // 0x1000) * 0x1000))
    isa = isa or guest.isa
    if backend == "real" and isa != "x86":
        raise KvmUsageError("the real KVM runs x86 code; use isa='x86'")
    pending_input = bytearray(guest.inputs if inputs is None else inputs)
    scratch: dict[int, int] = {}  # the MMIO scratch device: address -> byte
    report = RunReport()
    calls = report.ioctls
    kvm = open_kvm(backend, isa=isa, time_limit=time_limit, budget=budget)
    mem = GuestMemory(guest.memory_size)
    vm = vcpu = None
    try:
        calls.append("KVM_GET_API_VERSION")
        version = kvm.ioctl(KVM_GET_API_VERSION, 0)
        if version != KVM_API_VERSION:
            raise KvmUsageError(f"KVM_GET_API_VERSION returned {version}, expected 12")
        calls.append("KVM_CREATE_VM")
        vm = kvm.ioctl(KVM_CREATE_VM, 0)
        if irqchip:
            calls.append("KVM_CREATE_IRQCHIP")
            vm.ioctl(KVM_CREATE_IRQCHIP, 0)
        mem.write(0, guest.code)
        calls.append("KVM_SET_USER_MEMORY_REGION")
        vm.ioctl(KVM_SET_USER_MEMORY_REGION, kvm_userspace_memory_region(
            slot=0, guest_phys_addr=guest.gpa, memory_size=guest.memory_size,
            userspace_addr=mem.address))
        calls.append("KVM_CREATE_VCPU")
        vcpu = vm.ioctl(KVM_CREATE_VCPU, 0)
        calls.append("KVM_GET_VCPU_MMAP_SIZE")
        run = vcpu.mmap(kvm.ioctl(KVM_GET_VCPU_MMAP_SIZE, 0))
        if set_sregs:
            sregs = kvm_sregs()
            calls.append("KVM_GET_SREGS")
            vcpu.ioctl(KVM_GET_SREGS, sregs)
            sregs.cs.base = 0
            sregs.cs.selector = 0
            calls.append("KVM_SET_SREGS")
            vcpu.ioctl(KVM_SET_SREGS, sregs)
        regs = kvm_regs(rip=guest.gpa if guest.entry is None else guest.entry, rflags=0x2,
                        **guest.regs)
        calls.append("KVM_SET_REGS")
        vcpu.ioctl(KVM_SET_REGS, regs)
        out = bytearray()
        while len(report.exits) < max_exits:
            calls.append("KVM_RUN")
            try:
                if irqchip and backend == "real":
                    with signal_after(time_limit or 5.0):  # a halted vCPU sleeps until one
                        vcpu.ioctl(KVM_RUN, 0)
                else:
                    vcpu.ioctl(KVM_RUN, 0)
            except OSError as e:
                if e.errno != errno.EINTR:
                    raise
                report.exits.append(ExitRecord(KVM_EXIT_INTR))
                if regs_per_exit:
                    now = kvm_regs()
                    vcpu.ioctl(KVM_GET_REGS, now)
                    report.regs_at_exit.append(now)
                break
            rec = read_exit(run)
            if regs_per_exit:
                now = kvm_regs()
                vcpu.ioctl(KVM_GET_REGS, now)
                report.regs_at_exit.append(now)
            if rec.reason == KVM_EXIT_IO:
                assert rec.size is not None
                assert rec.count is not None
                if rec.direction == KVM_EXIT_IO_OUT:
                    if rec.port == COM1:
                        out += rec.data[::rec.size]  # the UART takes the low byte
                else:
                    n = rec.size * rec.count
                    data = bytes(pending_input[:n]).ljust(n, b"\0")
                    del pending_input[:n]
                    run.set_io_data(data)
                    rec = replace(rec, data=data)
            elif rec.reason == KVM_EXIT_MMIO:
                assert rec.phys_addr is not None
                assert rec.size is not None
                if rec.is_write:
                    for i, b in enumerate(rec.data):
                        scratch[rec.phys_addr + i] = b
                else:
                    data = bytes(scratch.get(rec.phys_addr + i, 0x41 + i)
                                 for i in range(rec.size))
                    run.set_mmio_data(data)
                    rec = replace(rec, data=data)
            report.exits.append(rec)
            if rec.reason not in (KVM_EXIT_IO, KVM_EXIT_MMIO):
                break
        report.output = out.decode("latin-1")
        if irqchip:
            calls.append("KVM_GET_MP_STATE")
            report.mp_state = vcpu.get_mp_state()
        calls.append("KVM_GET_REGS")
        vcpu.ioctl(KVM_GET_REGS, report.regs)
    finally:
        for fd in (vcpu, vm, kvm):
            if fd is not None:
                fd.close()
        if not mem.closed:
            mem.close()
    return report


# ---------------------------------------------------------------------------
def _load(name: str, isa: str | None) -> Guest:
    path = Path(name)
    if path.is_file():
        code = path.read_bytes()
        return Guest(path.name, isa or "x86", code,
                     memory_size=max(0x1000, -(-len(code) // 0x1000) * 0x1000))
    if name in BUILTIN:
        return BUILTIN[name]()
    raise SystemExit(f"{name}: no such file, and not a built-in guest "
                     f"({', '.join(sorted(BUILTIN))})")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``python -m virtcore.kvm run guest.bin [--real] [--isa ...] [--trace]``.

    >>> main(["run", "teaching_lwn", "--isa", "teaching"])
    4
    KVM_EXIT_HLT
    0
    """
    parser = argparse.ArgumentParser(
        prog="python -m virtcore.kvm",
        description="Run a raw guest image on the simulated /dev/kvm (or the real one).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a guest and print its serial output and last exit")
    p.add_argument("guest", help="raw image loaded at 0x1000, or a built-in guest name")
    p.add_argument("--real", action="store_true", help="use the real /dev/kvm")
    p.add_argument("--isa", choices=("x86", "teaching"), default=None,
                   help="guest CPU of the model (default: x86 for files)")
    p.add_argument("--trace", action="store_true", help="print every exit")
    p.add_argument("--input", default="", help="bytes answered to IN instructions")
    p.add_argument("--max-exits", type=int, default=100_000)
    p.add_argument("--time-limit", type=float, default=5.0,
                   help="seconds one KVM_RUN may last on the model's x86 backend")
    sub.add_parser("list", help="list the built-in guests")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name, factory in sorted(BUILTIN.items()):
            g = factory()
            print(f"{name:<18} {g.isa:<9} {len(g.code):4d} bytes  {g.note}")
        return 0
    guest = _load(args.guest, args.isa)
    try:
        report = run_guest(guest, backend="real" if args.real else "model",
                           isa=args.isa or guest.isa,
                           inputs=args.input.encode("latin-1") if args.input else None,
                           max_exits=args.max_exits, time_limit=args.time_limit)
    except (OSError, KvmUsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(report.output)
    if report.output and not report.output.endswith("\n"):
        print()
    if args.trace:
        print(f"--- {len(report.exits)} exits ({'real KVM' if args.real else 'model'}, "
              f"{args.isa or guest.isa})")
        for i, rec in enumerate(report.exits, 1):
            print(f"{i:4d} {rec}")
    print(report.final)
    return 0
