"""The same x86 guests on the model (unicorn backend) and on the real KVM: identical exit
traces (reason, port/address, size, direction, count, data), output and registers."""

from __future__ import annotations

import pytest

from virtcore.kvm.api import KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_SHUTDOWN
from virtcore.kvm.cli import RunReport, run_guest
from virtcore.kvm.guests import Guest, lwn, x86_echo, x86_hello, x86_ivt, x86_mmio, x86_ud2

GUESTS: dict[str, Guest] = {
    g.name: g for g in (lwn(), x86_hello(), x86_echo(), x86_mmio(), x86_ud2(), x86_ivt())}
RAW = {
    # out of each size: al, ax, eax, and an 8-bit immediate port
    "out_sizes": "ba f8 03 b8 42 41 ef 66 ef e6 80 f4",
    # in of each size, with the data written back on the next KVM_RUN
    "in_sizes": "ba f8 03 66 b8 ff ff ff ff ec 66 89 c3 ed 66 89 c1 66 ed f4",
    # MMIO: 2-byte write, 4-byte read, read-modify-write (add [0x8008], al)
    "mmio_sizes": "b8 34 12 a3 00 80 66 a1 04 80 00 06 08 80 f4",
    # a RAM write right after an OUT in the same block: not visible before the OUT's exit
    "out_then_store": "ba f8 03 b0 37 ee a2 00 11 fe c0 ee a2 01 11 f4",
    # jump to a guest-physical address without memory: emulation failure
    "fetch_unmapped": "e9 fd 6f",
}
for name, hexcode in RAW.items():
    GUESTS[name] = Guest(name, "x86", bytes.fromhex(hexcode), inputs=bytes(range(0x11, 0x78, 0x11)))

REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "rip", "rflags")


def observe(report: RunReport) -> tuple:
    """Exits, output, and the registers after each exit — except after a triple fault,
    whose register state is not architectural (real KVM shows RF set in rflags)."""
    regs = [tuple(getattr(r, n) for n in REGS) for r, e in zip(report.regs_at_exit,
                                                                 report.exits)
            if e.reason != KVM_EXIT_SHUTDOWN]
    return report.trace(), report.output, regs


@pytest.fixture(scope="module")
def real_reports(real: str) -> dict[str, RunReport]:
    return {name: run_guest(g, backend="real", regs_per_exit=True) for name, g in GUESTS.items()}


@pytest.mark.parametrize("name", list(GUESTS))
def test_model_matches_real_kvm(x86: str, real_reports: dict[str, RunReport], name: str) -> None:
    model = run_guest(GUESTS[name], backend="model", regs_per_exit=True)
    assert observe(model) == observe(real_reports[name])


@pytest.mark.parametrize("name", list(GUESTS))
def test_model_runs_the_guest(x86: str, name: str) -> None:
    """What the model must give even where no real KVM can confirm it."""
    g = GUESTS[name]
    report = run_guest(g, regs_per_exit=True)
    if g.expected_output:
        assert report.output == g.expected_output
    if name == "x86_ud2":
        assert report.exits[-1].reason == KVM_EXIT_SHUTDOWN
    elif name == "fetch_unmapped":
        assert report.exits[-1].reason == KVM_EXIT_INTERNAL_ERROR
        assert report.exits[-1].suberror == 1
        assert report.regs.rip == 0x8000
    else:
        assert report.final == "KVM_EXIT_HLT"


def test_forgotten_sregs_fail_the_same_way(x86: str, real: str) -> None:
    """No KVM_SET_SREGS: cs.base stays 0xffff0000, so rip 0x1000 is linear 0xffff1000,
    where there is no memory."""
    results = [run_guest(lwn(), backend=b, set_sregs=False, regs_per_exit=True)
               for b in ("model", "real")]
    for r in results:
        assert [e.reason for e in r.exits] == [KVM_EXIT_INTERNAL_ERROR]
        assert r.exits[0].suberror == 1 and r.regs.rip == 0x1000
    assert observe(results[0]) == observe(results[1])
