"""The same x86 guests on the model (unicorn backend) and on the real KVM: identical exit
traces (reason, port/address, size, direction, count, data), output and registers."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from virtcore.kvm import open_kvm
from virtcore.kvm.api import (
    KVM_CAP_IRQCHIP,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_SHUTDOWN,
    KVM_MP_STATE_HALTED,
    KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_UNINITIALIZED,
    KVM_SET_MP_STATE,
    kvm_mp_state,
)
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


# ------------------------------------------------------------------ in-kernel irqchip


def test_hlt_with_in_kernel_irqchip_never_reaches_user_space(x86: str, real: str) -> None:
    """With KVM_CREATE_IRQCHIP (as QEMU does on x86) the guest's hlt is handled in the kernel:
    no KVM_EXIT_HLT; the vCPU sleeps as KVM_MP_STATE_HALTED until a signal ends KVM_RUN
    with EINTR (KVM_EXIT_INTR). Model and real KVM agree field by field."""
    reports = {b: run_guest(lwn(), backend=b, irqchip=True, regs_per_exit=True,
                            time_limit=0.3) for b in ("model", "real")}
    for r in reports.values():
        assert [e.reason for e in r.exits] == [KVM_EXIT_IO, KVM_EXIT_IO, KVM_EXIT_INTR]
        assert r.output == "4\n" and r.mp_state == KVM_MP_STATE_HALTED
        assert r.regs.rip == 0x100C  # past the hlt
        assert "KVM_CREATE_IRQCHIP" in r.ioctls
    assert observe(reports["model"]) == observe(reports["real"])
    assert reports["model"].mp_state == reports["real"].mp_state
    # without the irqchip (the LWN program) the same guest ends with KVM_EXIT_HLT
    assert run_guest(lwn(), backend="real").final == "KVM_EXIT_HLT"


def _irqchip_rules(backend: str) -> tuple:
    """What KVM_CREATE_IRQCHIP and KVM_GET/SET_MP_STATE answer, as comparable values."""
    kvm = open_kvm(backend, isa="x86") if backend == "model" else open_kvm("real")

    def attempt(call: Callable[[], object]) -> object:
        try:
            return call()
        except OSError as e:
            return errno.errorcode[e.errno]

    with kvm.create_vm() as vm:
        cap = vm.check_extension(KVM_CAP_IRQCHIP)
        first = attempt(vm.create_irqchip)
        twice = attempt(vm.create_irqchip)
        v0, v1 = vm.create_vcpu(0), vm.create_vcpu(1)
        states = (v0.get_mp_state(), v1.get_mp_state())
        set_halted = attempt(lambda: v0.ioctl(KVM_SET_MP_STATE, kvm_mp_state(mp_state=3)))
        halted = v0.get_mp_state()
        v0.close()
        v1.close()
    with kvm.create_vm() as vm:
        v = vm.create_vcpu(0)
        late = attempt(vm.create_irqchip)
        plain_state = v.get_mp_state()
        plain_set = attempt(lambda: v.ioctl(KVM_SET_MP_STATE, kvm_mp_state(mp_state=3)))
        v.close()
    kvm.close()
    return cap, first, twice, states, set_halted, halted, late, plain_state, plain_set


def test_irqchip_and_mp_state_rules_match_real(x86: str, real: str) -> None:
    """KVM_CREATE_IRQCHIP: once (EEXIST), before any vCPU (EINVAL); vCPUs but the boot one
    start UNINITIALIZED; without an irqchip only RUNNABLE may be set (EINVAL)."""
    model = _irqchip_rules("model")
    assert model == (1, None, "EEXIST", (KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED),
                     0, KVM_MP_STATE_HALTED, "EINVAL", KVM_MP_STATE_RUNNABLE, "EINVAL")
    assert model == _irqchip_rules("real")


def test_model_irqchip_without_real_kvm(x86: str) -> None:
    """The model's side alone (runs where no real KVM can confirm it)."""
    r = run_guest(lwn(), irqchip=True)
    assert (r.final, r.mp_state, r.output) == ("KVM_EXIT_INTR", KVM_MP_STATE_HALTED, "4\n")
    assert _irqchip_rules("model")[2:4] == ("EEXIST", (0, 1))
