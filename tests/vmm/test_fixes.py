"""The three fixes on the popf guest: all correct; plain trap-and-emulate wrong."""

from __future__ import annotations

import pytest

from virtcore.costs import DEFAULT_COSTS
from virtcore.hw import assemble
from virtcore.vmm import (
    POPF_GUEST,
    CostModel,
    Technique,
    VMStats,
    compare_fixes,
    run_bare,
    run_fix,
)
from virtcore.vmm.bt import CALLOUT, INLINE, TranslationCache, translate_block
from virtcore.vmm.fixes import IO_LOOP_GUEST, IO_LOOP_GUEST_PV, RESULT_ADDRESS


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


def test_binary_translation_translates_kernel_blocks_once_and_never_traps_in_the_kernel():
    r = run_fix("bt")
    st = r.stats
    # the guest kernel never traps: its sensitive instructions ran as translated code
    assert st.traps == 0 and st.exits == 0
    assert st.by_instruction["popf"] == 1 and st.by_instruction["pushf"] == 1
    assert st.translated_ops + st.callouts == st.emulated
    # each block is translated once; the sum loop's block is a cache hit 49 times
    assert st.blocks_translated > 0 and st.tc_hits >= 49
    words = assemble(POPF_GUEST).words
    assert st.translated <= len(words)  # nothing is translated twice


def test_translate_block_stops_at_control_transfers_and_classifies_instructions():
    p = assemble("sti\nout 0x3f8, r1\nadd r1, r1\npopf\njnz 0\nhlt")
    b = translate_block(lambda a: p.words[a // 4], 0)
    assert b.mnemonics == ("sti", "out", "add", "popf", "jnz")
    assert [b.action(pc) for pc in b.pcs] == ["inline", "callout", "identical", "inline",
                                             "identical"]
    assert b.identical_run(8) == 1 and b.identical_run(16) == 1
    assert "popf" in INLINE and "out" in CALLOUT and "add" not in INLINE | CALLOUT
    tc = TranslationCache()
    tc.lookup(lambda a: p.words[a // 4], 0)
    tc.lookup(lambda a: p.words[a // 4], 8)    # inside the block: found again
    assert (tc.blocks_translated, tc.hits) == (1, 1)


def test_binary_translation_beats_first_generation_hardware_assist_on_exit_heavy_work():
    """[AA06]: the software VMM often beat first-generation VT-x on exit-heavy work."""
    rows = {r.technique: r for r in compare_fixes(guest=IO_LOOP_GUEST,
                                                   pv_guest=IO_LOOP_GUEST_PV).rows}
    assert all(r.correct for r in rows.values())
    bt, hw = rows["binary translation"], rows["hardware assist"]
    assert bt.cost < hw.cost
    assert hw.stats.exits == 41 and bt.stats.callouts == 41
    # never cheaper than bare hardware
    assert min(r.cost for r in rows.values()) == rows["bare hardware"].cost


def test_translation_dearer_than_exits_flips_the_result():
    import dataclasses

    dear = CostModel(dataclasses.replace(DEFAULT_COSTS, translate=100_000))
    rows = {r.technique: r for r in compare_fixes(dear, guest=IO_LOOP_GUEST).rows}
    assert rows["binary translation"].cost > rows["hardware assist"].cost


def test_counts_differ_in_the_expected_ways():
    rows = {r.technique: r for r in compare_fixes().rows}
    trap, bt = rows["trap-and-emulate"].stats, rows["binary translation"].stats
    pv, hw = rows["paravirtualization"].stats, rows["hardware assist"].stats
    # BT also emulates popf/pushf, and then the guest reaches its interrupt handler (iret)
    assert set(bt.by_instruction) - set(trap.by_instruction) == {"popf", "pushf", "iret"}
    assert bt.traps == 0 < trap.traps
    assert pv.hypercalls == pv.traps and pv.emulated == pv.hypercalls  # every VMM entry is a hcall
    assert hw.traps == 0 and hw.exits > 0 and hw.by_exit["HLT"] == 2
    assert hw.by_instruction["popf"] == 0  # popf ran natively in guest mode
    assert all(s.direct > 0 for s in (trap, bt, pv, hw))


def test_cost_model_is_the_course_cost_model_and_documented_as_assumption():
    import dataclasses

    model = CostModel(dataclasses.replace(DEFAULT_COSTS, vm_exit=1000, emulate=0,
                                          instruction=1))
    table = compare_fixes(model)
    hw = next(r for r in table.rows if r.technique == "hardware assist")
    assert hw.cost == hw.stats.direct + 2000 * hw.stats.exits
    assert CostModel().cost(VMStats(direct=3, traps=2)) == 3 + 2 * (2 * DEFAULT_COSTS.trap
                                                                    + DEFAULT_COSTS.emulate)
    assert "teaching assumptions" in str(table)
    assert {rec["technique"] for rec in table.records()} == {
        "bare hardware", *(t.value for t in Technique)}
