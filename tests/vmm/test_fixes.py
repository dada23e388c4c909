"""The three fixes on the popf guest: all correct; plain trap-and-emulate wrong."""

from __future__ import annotations

import pytest

from virtcore.hw import assemble
from virtcore.vmm import (
    POPF_GUEST,
    CostModel,
    Technique,
    VMStats,
    binary_translate,
    compare_fixes,
    run_bare,
    run_fix,
)
from virtcore.vmm.fixes import RESULT_ADDRESS


def test_bare_hardware_prints_atc_and_computes_the_sum():
    bare = run_bare(POPF_GUEST)
    assert bare.serial == b"ATC" and bare.stop == "halted"
    assert bare.memory[RESULT_ADDRESS >> 2] == sum(range(1, 51))


def test_plain_trap_and_emulate_gets_the_popf_guest_wrong():
    r = run_fix("trap")
    assert not r.correct
    assert r.output == "A"  # popf left the virtual IF at 0: the timer interrupt never came
    assert r.result_word == sum(range(1, 51))  # ordinary work is still right
    assert r.stats.by_instruction["cli"] == 1 and r.stats.interrupts == 0


@pytest.mark.parametrize("technique", ["bt", "pv", "hw"])
def test_each_fix_gives_the_bare_hardware_result(technique):
    r = run_fix(technique)
    assert r.correct, r
    assert r.output == "ATC" and r.stop == "halted"
    assert r.stats.interrupts == 1


def test_binary_translation_rewrites_exactly_the_sensitive_unprivileged_instructions():
    words = assemble(POPF_GUEST).words
    t = binary_translate(words)
    assert t.rewrites == 2 and t.scanned == len(words)
    assert {assemble(POPF_GUEST).words[a >> 2] for a in t.patches} == {0x5200_0000, 0x5300_0000}
    for addr, (original, patched) in t.patches.items():
        assert t.words[addr >> 2] == patched and words[addr >> 2] == original
    r = run_fix("bt")
    assert r.stats.rewrites == 2 and r.stats.by_instruction["popf"] == 1
    assert r.stats.by_instruction["pushf"] == 1


def test_counts_differ_in_the_expected_ways():
    rows = {r.technique: r for r in compare_fixes().rows}
    trap, bt = rows["trap-and-emulate"].stats, rows["binary translation"].stats
    pv, hw = rows["paravirtualization"].stats, rows["hardware assist"].stats
    # BT also emulates popf/pushf, and then the guest reaches its interrupt handler (iret)
    assert set(bt.by_instruction) - set(trap.by_instruction) == {"popf", "pushf", "iret"}
    assert bt.traps > trap.traps
    assert pv.hypercalls == pv.traps and pv.emulated == pv.hypercalls  # every VMM entry is a hcall
    assert hw.traps == 0 and hw.exits > 0 and hw.by_exit["HLT"] == 2
    assert hw.by_instruction["popf"] == 0  # popf ran natively in guest mode
    assert all(s.direct > 0 for s in (trap, bt, pv, hw))


def test_cost_model_is_applied_and_documented_as_assumption():
    model = CostModel(direct=1, trap=10, hypercall=5, exit=1000, scan=0, rewrite=0)
    table = compare_fixes(model)
    hw = next(r for r in table.rows if r.technique == "hardware assist")
    assert hw.cost == hw.stats.direct + 1000 * hw.stats.exits
    assert model.cost(VMStats(direct=3, traps=2, hypercalls=1)) == 3 + 10 + 5
    assert "teaching assumptions" in str(table)
    assert {rec["technique"] for rec in table.records()} == {
        "bare hardware", *(t.value for t in Technique)}
