"""Popek–Goldberg: the classifier; equivalence, resource control, efficiency on generated guests."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtcore.hw import TABLE, Sensitivity
from virtcore.vmm import (
    Action,
    HandlerTable,
    Hypervisor,
    Technique,
    check_equivalence,
    check_resource_control,
    classify,
    generate_guest,
    measure_efficiency,
    run_bare,
)

SEEDS = st.integers(min_value=0, max_value=10_000)
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- the classifier ------------------------------------------------------------------------


def test_classifier_finds_popf_and_pushf_and_states_theorem_1_as_sufficient():
    c = classify(TABLE)
    assert set(c.privileged) == {"cli", "sti", "hlt", "in", "out", "rdcr", "wrcr", "iret",
                                 "invlpg"}
    assert set(c.sensitive) - set(c.privileged) == {"popf", "pushf"}
    assert c.sensitive_subset_of_privileged is False
    flagged = {v.mnemonic: v for v in c.violations}
    assert flagged["popf"].sensitivity is Sensitivity.CONTROL
    assert flagged["pushf"].sensitivity is Sensitivity.BEHAVIOUR
    assert "silently" in flagged["popf"].reason and "IF" in flagged["pushf"].reason
    assert "SUFFICIENT" in c.theorem and "subset" in c.theorem
    assert "if and only if" not in c.theorem
    assert c.table_agrees_with_cpu  # the CPU really traps exactly on the privileged column
    assert "popf" in str(c) and "⊄" in c.verdict


def test_classifier_on_a_repaired_table_says_theorem_1_applies():
    fixed = [dataclasses.replace(row, privileged=True) if row.mnemonic in ("popf", "pushf")
             else row for row in TABLE]
    c = classify(fixed)
    assert c.sensitive_subset_of_privileged and not c.violations
    assert "Theorem 1 applies" in c.verdict
    assert not c.table_agrees_with_cpu  # …but the CPU still lets popf run in user mode


# -- equivalence ---------------------------------------------------------------------------


@FAST
@given(SEEDS)
def test_trap_and_emulate_guests_without_popf_behave_exactly_as_on_bare_hardware(seed):
    guest = generate_guest(seed)
    result = check_equivalence(guest)
    assert result.equivalent, result.message
    assert result.stats.emulated > 0 and result.bare.stop == "halted"


@FAST
@given(SEEDS, st.sampled_from(["bt", "hw"]))
def test_binary_translation_and_hardware_assist_are_equivalent_even_with_popf(seed, tech):
    guest = generate_guest(seed, popf=True)
    result = check_equivalence(guest, technique=tech)
    assert result.equivalent, result.message


def test_plain_trap_and_emulate_breaks_some_popf_guests_and_says_why():
    broken = []
    for seed in range(30):
        guest = generate_guest(seed, popf=True, length=30)
        r = check_equivalence(guest)
        if not r.equivalent:
            broken.append(guest)
            assert "popf/pushf" in r.message and r.differences
    assert broken, "popf/pushf never made a difference: the check cannot see the problem"
    for guest in broken:  # the same guests are fine once popf/pushf are translated
        assert check_equivalence(guest, technique="bt").equivalent


def test_wild_guests_are_equivalent_too_because_violations_are_reflected_as_machine_checks():
    for seed in range(5):
        r = check_equivalence(generate_guest(seed, wild=True, length=50))
        assert r.equivalent, r.message


def test_a_handler_that_forgets_to_advance_pc_is_caught_with_a_clear_message():
    def sticky_out(vcpu, insn):  # emulates the out, but does not step over it
        vcpu.vm.port_out(insn.imm, vcpu.regs[insn.rs])
        return Action.CONTINUE

    guest = generate_guest(4)
    assert "out 0x" in guest.source
    buggy = HandlerTable.reference().replace(out=sticky_out)
    r = check_equivalence(guest, handlers=buggy, max_steps=3000)
    assert not r.equivalent and r.vmm.stop == "budget"
    assert "did the out handler forget to advance the pc" in r.message
    assert check_equivalence(guest).equivalent  # the reference table is fine on the same guest


def test_a_handler_with_wrong_semantics_is_caught_by_the_comparison():
    def sti_as_nop(vcpu, insn):
        vcpu.pc += 4

    guest = generate_guest(1)
    r = check_equivalence(guest, handlers=HandlerTable.reference().replace(sti=sti_as_nop))
    assert not r.equivalent and r.differences


# -- resource control -------------------------------------------------------------------------


@pytest.mark.parametrize("technique", ["trap", "hw"])
def test_guests_cannot_touch_host_memory_or_real_devices(technique):
    for seed in range(3):
        r = check_resource_control(seed=seed, technique=technique)
        assert r.in_control, r
        assert r.violations_caught >= 1 and r.io_emulated >= 1
        assert r.host_words_changed == () and r.device_events == ()


def test_resource_control_check_notices_a_vmm_that_maps_too_much(monkeypatch):
    real_build = Hypervisor.build_memory

    def leaky_build(self, vm):  # a buggy VMM: one extra page, backed by a host frame
        mem = real_build(self, vm)
        bits = mem.page_bits
        mem.table.map(vm.memory_pages << bits, 40 << bits, allocator=self.allocator)
        return mem

    monkeypatch.setattr(Hypervisor, "build_memory", leaky_build)
    guest = "li r2, 0x4000\n li r3, 0x5a5a\n st r3, [r2+8]\n cli\n hlt"  # one page too far
    r = check_resource_control(guest)
    assert not r.in_control and r.host_words_changed == ((40 << 12) + 8,)


# -- efficiency ---------------------------------------------------------------------------------


def test_efficiency_most_instructions_run_directly_and_hw_needs_fewer_vmm_entries():
    guest = generate_guest(11, length=60)
    trap = measure_efficiency(guest)
    hw = measure_efficiency(guest, technique="hw")
    bare_clock = run_bare(guest).clock
    assert trap.dominant and hw.dominant
    assert 0.5 < trap.fraction < 1 and hw.fraction > trap.fraction
    assert hw.via_vmm < trap.via_vmm
    assert trap.technique is Technique.TRAP_AND_EMULATE
    assert trap.direct + trap.via_vmm <= bare_clock  # instructions, without idle time


def test_generated_guests_halt_on_bare_hardware_seed_6464_included():
    """A timer interrupt between `wrcr epc` and `iret` once made seed 6464 loop on its iret."""
    for seed in (6464, *range(200)):
        assert run_bare(generate_guest(seed)).stop == "halted", seed
