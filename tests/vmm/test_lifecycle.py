"""The management interface (S2.4): lifecycle state machine, transitions, event log."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtcore.vmm import (
    TRANSITIONS,
    IllegalTransition,
    Manager,
    VMState,
    allowed_ops,
    next_state,
)
from virtcore.vmm.lifecycle import GUEST_OPS, MANAGEMENT_OPS

COUNTDOWN = """
        movi r1, 60
loop:   addi r1, -1
        cmpi r1, 0
        jnz  loop
        cli
        hlt
"""


def test_the_documented_transitions():
    s = VMState
    assert next_state(s.DEFINED, "start") is s.RUNNING
    assert next_state(s.RUNNING, "pause") is s.PAUSED
    assert next_state(s.PAUSED, "resume") is s.RUNNING
    assert next_state(s.RUNNING, "shutdown") is s.SHUTOFF
    assert next_state(s.RUNNING, "migrate") is s.MIGRATING
    assert next_state(s.MIGRATING, "migrated") is s.RUNNING
    # destroy is a forced power-off: the VM stays defined [VIRSH]
    assert all(next_state(state, "destroy") is s.SHUTOFF
               for state in (s.RUNNING, s.PAUSED, s.CRASHED))
    # undefine removes the definition of a VM that is not running
    assert all(next_state(state, "undefine") is s.UNDEFINED for state in (s.DEFINED, s.SHUTOFF))
    # paused and inactive VMs migrate too, and keep their state
    assert all(next_state(state, "migrate") is state
               for state in (s.PAUSED, s.SHUTOFF, s.DEFINED))
    assert allowed_ops(s.UNDEFINED) == []


@pytest.mark.parametrize(("state", "op"), [
    (VMState.DEFINED, "pause"), (VMState.PAUSED, "pause"), (VMState.RUNNING, "resume"),
    (VMState.PAUSED, "shutdown"), (VMState.UNDEFINED, "start"), (VMState.SHUTOFF, "destroy"),
    (VMState.RUNNING, "undefine"), (VMState.PAUSED, "undefine"), (VMState.CRASHED, "migrate"),
    (VMState.MIGRATING, "pause"), (VMState.RUNNING, "reboot"),
])
def test_illegal_transitions_raise_naming_state_and_operation(state, op):
    with pytest.raises(IllegalTransition) as info:
        next_state(state, op, vm="web")
    err = info.value
    assert err.state is state and err.op == op
    assert state.value in str(err) and op in str(err) and "'web'" in str(err)


def test_every_transition_in_the_table_is_reachable_by_name():
    ops = set(MANAGEMENT_OPS) | set(GUEST_OPS)
    assert {op for (_, op) in TRANSITIONS} <= ops
    assert set(TRANSITIONS.values()) | {VMState.DEFINED} == set(VMState)


OPS = st.lists(st.tuples(st.sampled_from([*MANAGEMENT_OPS, "run"]), st.sampled_from("ab")),
               max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_random_operation_sequences_never_reach_an_undefined_state(ops):
    mgr = Manager(hosts=2, quantum=25)
    names = {"a": "a", "b": "b"}
    mgr.define("a", 2, program=COUNTDOWN)
    mgr.define("b", 1, program="loop: jmp loop", host="host1", technique="hw")
    free = {h: mgr.host(h).allocator.free_count for h in mgr.hosts}
    for op, which in ops:
        name = names[which]
        if op == "run":
            mgr.run(50)
        else:
            vm = mgr.vm(name)
            before = vm.state
            legal = (before, op) in TRANSITIONS
            try:
                if op == "migrate":
                    here = mgr.host_of(name).name
                    mgr.migrate(name, "host1" if here == "host0" else "host0", bandwidth=0.5)
                else:
                    getattr(mgr, op)(name)
            except IllegalTransition as err:
                error = err
            else:
                error = None
            if error is not None:
                assert not legal, f"{op} from {before} should be legal"
                assert error.state is before and error.op == op
                assert before.value in str(error) and op in str(error)
                assert vm.state is before, "an illegal operation changed the state"
            else:
                assert legal, f"{op} from {before} should have raised"
                expected = next_state(before, op)
                if op == "migrate" and before is VMState.RUNNING:
                    expected = VMState.RUNNING if not vm.finished else VMState.SHUTOFF
                assert vm.state is expected
        for vm in (mgr.vm("a"), mgr.vm("b")):
            assert isinstance(vm.state, VMState) and vm.state is not VMState.MIGRATING
            holds_memory = vm.state in (VMState.RUNNING, VMState.PAUSED)
            assert (vm.mem is not None) == holds_memory, vm
    # nothing leaks: after forcing everything off every host has all its frames back
    for name in ("a", "b"):
        if mgr.vm(name).state.active:
            mgr.destroy(name)
    assert {h: mgr.host(h).allocator.free_count for h in mgr.hosts} == free
    # the log is in order and every state change in it is a legal transition
    for entry in mgr.events:
        if entry.old is not None:
            assert TRANSITIONS[(entry.old, entry.op)] is entry.new


def test_manager_lists_vms_with_states_and_logs_events():
    mgr = Manager(hosts=2)
    mgr.define("web", 2, program="loop: jmp loop")
    mgr.define("db", 2, program=COUNTDOWN, host="host1")
    mgr.start("web")
    mgr.start("db")
    mgr.pause("web")
    mgr.run(1000)
    rows = {r.name: r for r in mgr.list()}
    assert rows["web"].state is VMState.PAUSED and rows["web"].host == "host0"
    assert rows["db"].state is VMState.SHUTOFF and rows["db"].time > 0  # the guest halted
    table = mgr.table()
    assert "paused" in table and "shutoff" in table and table.splitlines()[0].startswith("Name")
    ops = [(e.vm, e.op) for e in mgr.events]
    assert ops == [("web", "define"), ("db", "define"), ("web", "start"), ("db", "start"),
                   ("web", "pause"), ("db", "guest-halt")]
    with pytest.raises(IllegalTransition, match="cannot resume VM 'db': it is shutoff"):
        mgr.resume("db")


def test_destroy_forces_off_but_keeps_the_definition_undefine_removes_it():
    mgr = Manager(hosts=1)
    vm = mgr.define("web", 2, program="loop: jmp loop")
    mgr.start("web")
    mgr.run(50)
    mgr.destroy("web")
    assert vm.state is VMState.SHUTOFF and vm.mem is None
    mgr.start("web")                                   # still defined: it boots again
    assert vm.state is VMState.RUNNING
    with pytest.raises(IllegalTransition, match="cannot undefine VM 'web': it is running"):
        mgr.undefine("web")
    mgr.destroy("web")
    mgr.undefine("web")
    assert vm.state is VMState.UNDEFINED and mgr.list() == []
    assert [e.op for e in mgr.events][-3:] == ["start", "destroy", "undefine"]


def test_paused_and_offline_vms_migrate_and_keep_their_state():
    mgr = Manager(hosts=2)
    vm = mgr.define("app", 2, program=COUNTDOWN)
    mgr.start("app")
    mgr.run(20)
    mgr.pause("app")
    words = vm.memory_words()
    r = mgr.migrate("app", "host1")
    assert vm.state is VMState.PAUSED and vm.host.name == "host1"
    assert r.total_pages == 2 and r.rounds == () and vm.memory_words() == words
    assert mgr.host("host0").allocator.free_count == Manager(hosts=1).host("host0"
                                                                          ).allocator.free_count
    mgr.resume("app")
    mgr.run(10_000)
    assert vm.state is VMState.SHUTOFF              # the countdown finished on host1
    r = mgr.migrate("app", "host0")                 # offline: only the definition moves
    assert (r.total_pages, vm.host.name, vm.state) == (0, "host0", VMState.SHUTOFF)
    assert "offline" in r.reason
