"""Pre-copy live migration: the pure model, and a real migration of a running VM."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtcore.errors import ConfigurationError
from virtcore.vmm import FinalState, Hypervisor, IllegalTransition, VMState, precopy
from virtcore.vmm.migration import live_migrate
from virtcore.vmm.vm import GuestMemory

# -- the model ---------------------------------------------------------------------------------


def test_precopy_converges_when_the_link_is_faster_than_the_guest_dirties():
    r = precopy(memory_pages=20_000, dirty_rate=500, bandwidth=5_000, stop_threshold=20, seed=3)
    assert r.converged and "converged" in r.reason
    sent = [x.pages_sent for x in r.rounds]
    assert sent[0] == 20_000 and all(b < a for a, b in itertools.pairwise(sent))
    assert r.stop_and_copy_pages <= 20
    assert r.total_pages == sum(sent) + r.stop_and_copy_pages
    assert r.downtime == pytest.approx(r.stop_and_copy_pages / 5_000)
    assert r.total_time == pytest.approx(sum(x.duration for x in r.rounds) + r.downtime)
    assert r.pages_per_round == [*sent, r.stop_and_copy_pages]


def test_precopy_does_not_converge_when_the_guest_dirties_faster_and_says_so():
    r = precopy(memory_pages=5_000, dirty_rate=6_000, bandwidth=5_000, max_rounds=12)
    assert not r.converged and len(r.rounds) == 12
    assert "did not converge" in r.reason and "6000 pages/s" in r.reason
    assert r.stop_and_copy_pages == 5_000  # everything was dirty again
    assert r.downtime == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(pages=st.integers(1, 50_000), rate=st.floats(0, 1e5), bandwidth=st.floats(1, 1e5),
       threshold=st.integers(0, 100), rounds=st.integers(1, 40), seed=st.integers(0, 99))
def test_precopy_invariants(pages, rate, bandwidth, threshold, rounds, seed):
    r = precopy(pages, rate, bandwidth, stop_threshold=threshold, max_rounds=rounds, seed=seed)
    assert 1 <= len(r.rounds) <= rounds
    assert r.rounds[0].pages_sent == pages
    assert r.total_pages == sum(x.pages_sent for x in r.rounds) + r.stop_and_copy_pages
    assert all(x.pages_dirtied <= pages for x in r.rounds)
    if r.converged:
        assert r.stop_and_copy_pages <= threshold
    else:
        assert len(r.rounds) == rounds and r.stop_and_copy_pages > threshold
    if rate >= bandwidth and pages > threshold:
        assert not r.converged  # the dirty set can never shrink
    if rate <= bandwidth / 2 and threshold >= 2 and rounds >= pages.bit_length() + 2:
        assert r.converged  # it at least halves every round


def test_precopy_seed_picks_pages_not_counts():
    a = precopy(1000, 300, 1000, working_set=200, record_pages=True, seed=1)
    b = precopy(1000, 300, 1000, working_set=200, record_pages=True, seed=2)
    assert [x.pages_dirtied for x in a.rounds] == [x.pages_dirtied for x in b.rounds]
    assert a.rounds[0].pages_dirtied == 200  # 300 pages/s for 1 s, but only 200 are ever written
    assert a.rounds[1].pages_dirtied == 60  # 300 pages/s during the 0.2 s of round 1
    assert a.rounds[1].dirty_pages != b.rounds[1].dirty_pages
    assert all(p < 200 for x in a.rounds for p in x.dirty_pages)  # inside the working set
    assert all(len(x.dirty_pages) == x.pages_dirtied for x in a.rounds)


def test_precopy_rejects_nonsense():
    with pytest.raises(ConfigurationError):
        precopy(0, 1, 1)
    with pytest.raises(ConfigurationError):
        precopy(10, 1, 0)
    with pytest.raises(ConfigurationError):
        precopy(10, -1, 1)


# -- a real migration ----------------------------------------------------------------------------

WRITER = """
        li   r1, handler
        wrcr tvec, r1
        movi r1, 150
        out  0x40, r1            ; the VM's timer: every 150 ticks
        sti
        li   r5, 0x1000          ; an array of 600 words in page 1
        movi r2, 0
        movi r6, 0
outer:  movi r3, 0
inner:  mov  r4, r3
        add  r4, r4
        add  r4, r4
        add  r4, r5
        ld   r1, [r4+0]
        add  r1, r2
        addi r1, 3
        st   r1, [r4+0]          ; keeps dirtying page 1
        add  r6, r1
        addi r3, 1
        cmpi r3, 600
        jnz  inner
        movi r1, '.'
        out  0x3f8, r1
        addi r2, 1
        cmpi r2, 8
        jnz  outer
        cli
        hlt
handler:
        push r1
        push r2
        li   r1, 0x3000
        ld   r2, [r1+0]
        addi r2, 1
        st   r2, [r1+0]          ; ticks counted in page 3 (with the stack)
        pop  r2
        pop  r1
        iret
"""


def _final(vm) -> FinalState:
    v = vm.vcpus[0]
    return FinalState(v.done or "budget", v.pc, tuple(v.regs), v.flags, v.mode,
                      tuple(vm.memory_words()), bytes(vm.serial.output), vm.clock)


def _reference(technique: str) -> FinalState:
    hv = Hypervisor(name="ref")
    vm = hv.create("g", 4, program=WRITER, technique=technique)
    hv.run(10**6)
    assert vm.state is VMState.SHUTOFF
    return _final(vm)


@pytest.mark.parametrize("dirty_log", ["write-protect", "d-bit"])
@pytest.mark.parametrize("technique", ["trap", "bt", "hw"])
def test_migrated_vm_ends_exactly_as_one_that_never_moved(technique, dirty_log):
    src, dst = Hypervisor(name="src", quantum=300), Hypervisor(name="dst")
    vm = src.create("g", 4, program=WRITER, technique=technique)
    src.run(3000)
    source_frames = set(vm.p2m)
    clock_before = vm.clock
    result = src.migrate("g", dst, bandwidth=0.02, stop_threshold=0, max_rounds=5,
                         dirty_log=dirty_log)
    assert result.dirty_log == dirty_log
    if dirty_log == "write-protect":  # each round's first write to each page faulted once
        assert result.write_faults >= len(result.rounds) - 1 > 0
    else:
        assert result.write_faults == 0
    assert vm.host is dst and "g" in dst.vms and "g" not in src.vms
    assert vm.clock > clock_before  # the guest kept running during the pre-copy rounds
    assert result.rounds[0] == 4 and len(result.rounds) >= 2
    assert 1 in set(result.rounds[1:]) or max(result.rounds[1:]) >= 1
    assert result.total_pages == sum(result.rounds) + result.stop_and_copy_pages
    assert result.downtime_ticks == result.stop_and_copy_pages * 50
    assert src.allocator.free_count == src.memory.nframes - 1  # all of the VM's frames freed
    assert set(vm.p2m).isdisjoint(source_frames) or dst.memory is not src.memory
    assert [e.op for e in src.events][-1] == "migrate"
    assert [e.op for e in dst.events][-1] == "migrated"
    dst.run(10**6)
    assert vm.state is VMState.SHUTOFF
    assert _final(vm) == _reference(technique)


@pytest.mark.parametrize(("dirty_log", "method"), [("d-bit", "collect_dirty"),
                                                    ("write-protect", "collect_dirty_log")])
def test_migration_needs_the_dirty_log_the_check_notices_a_broken_one(monkeypatch, dirty_log,
                                                                       method):
    monkeypatch.setattr(GuestMemory, method, lambda self: [])
    src, dst = Hypervisor(name="src", quantum=300), Hypervisor(name="dst")
    vm = src.create("g", 4, program=WRITER)
    src.run(3000)
    result = src.migrate("g", dst, bandwidth=0.02, stop_threshold=0, dirty_log=dirty_log)
    assert result.rounds == (4,) and result.converged  # "nothing dirty": stale pages moved
    dst.run(10**6)
    final = _final(vm)
    assert final != _reference("trap")
    assert any("memory" in d or d.startswith("r") for d in final.diff(_reference("trap")))


def test_only_running_vms_migrate_live_crashed_ones_not_at_all():
    src, dst = Hypervisor(name="src"), Hypervisor(name="dst")
    vm = src.define("g", 1, program="loop: jmp loop")
    with pytest.raises(IllegalTransition, match="cannot live-migrate VM 'g': it is defined"):
        live_migrate(src, vm, dst)
    src.create("bad", 1, program="movi r1, 1\nwrcr cr3, r1\nudf: .word 0xee000000")
    src.run(100)
    assert src.vm("bad").state is VMState.CRASHED
    with pytest.raises(IllegalTransition, match="cannot migrate VM 'bad': it is crashed"):
        src.migrate("bad", dst)
    with pytest.raises(ConfigurationError):
        src.migrate("g", src)
