"""QEMU-TCG against KVM: instructions emulated or translated vs run natively (N6, S4.4)."""

from __future__ import annotations

import pytest

from virtcore.errors import ConfigurationError
from virtcore.hw.asm import assemble
from virtcore.kvm.qemu import ExitCosts
from virtcore.kvm.tcg import compare_tcg_kvm, io_sweep, run_kvm, run_tcg, workload_guest


@pytest.mark.parametrize(("iterations", "io_every"), [(300, 0), (300, 1), (500, 7), (1000, 100)])
def test_tcg_emulates_every_instruction_kvm_runs_them_natively(iterations: int,
                                                               io_every: int) -> None:
    """Check the counts: TCG emulates all, KVM emulates only the exiting instructions."""
    cmp = compare_tcg_kvm(iterations=iterations, io_every=io_every)
    t, k = cmp.tcg, cmp.kvm
    prints = iterations // io_every if io_every else 0
    assert t.output == k.output == "." * prints
    assert t.guest_instructions == k.guest_instructions
    assert t.emulated_instructions == t.guest_instructions and t.native_instructions == 0
    assert t.exits == 0 and t.transitions == 0
    assert k.exits == prints + 1 == k.emulated_instructions  # the outs and the hlt
    assert k.native_instructions == k.guest_instructions - k.exits
    assert t.helper_calls == prints + 1  # same instructions become helper calls under TCG


def test_translation_happens_once_per_block() -> None:
    """Check TCG translates each block once, however long the guest runs.

    Blocks may overlap (a branch into the middle of straight-line code starts a
    new block, as TCG's translation blocks do), so the count can exceed the
    program's size a little — never by a factor.
    """
    src = workload_guest(5000, 50)
    size = len(assemble(src).words)
    r = run_tcg(src)
    assert 0 < r.translated_instructions < 2 * size
    assert r.translation_blocks <= r.translated_instructions
    assert r.guest_instructions > 50 * r.translated_instructions  # executed ≫ translated
    bigger = run_tcg(workload_guest(10000, 50))
    assert bigger.translated_instructions == r.translated_instructions


def test_kvm_lead_shrinks_as_exits_grow() -> None:
    """Check KVM's speed-up over TCG falls as the guest does more I/O per instruction."""
    sweep = io_sweep((0, 500, 50, 5), iterations=1000)
    speedups = [c.speedup for c in sweep]
    assert speedups == sorted(speedups, reverse=True)
    assert speedups[0] > 5 and [c.kvm.exits for c in sweep] == [1, 3, 21, 201]


def test_costs_are_the_model() -> None:
    """Check the simulated times follow ExitCosts exactly (pure compute guest)."""
    costs = ExitCosts(native_instruction=1, tcg_execute=10, tcg_translate=0, tcg_helper=0,
                      emulate=0, vm_exit=0, vm_entry=0, kernel_user=0)
    cmp = compare_tcg_kvm(iterations=400, io_every=0, costs=costs)
    # the hlt exit (kept in KVM by the in-kernel irqchip) costs vm_exit + in_kernel only
    assert cmp.kvm.time_ns == cmp.kvm.native_instructions + costs.in_kernel
    assert cmp.tcg.time_ns == pytest.approx(10 * (cmp.tcg.guest_instructions - 1))
    assert "QEMU + TCG" in repr(cmp) and "faster" in repr(cmp)


def test_bad_guests_and_parameters() -> None:
    """Check guests that never halt and bad workload parameters are reported."""
    with pytest.raises(ConfigurationError):
        run_tcg("l: jmp l", max_steps=1000)
    with pytest.raises(ConfigurationError):
        run_kvm(".word 0xff000000")
    with pytest.raises(ConfigurationError):
        workload_guest(0)
    with pytest.raises(ConfigurationError):
        workload_guest(10, 40_000)
