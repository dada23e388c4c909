"""Isolation holds as properties over random operation sequences (issue 8 §2).

CI runs 2 × 200 = 400 generated sequences (hypothesis, derandomized so CI is reproducible) of up
to 60 operations each, plus 40 seeded ones; the soak command
(``.venv/bin/python -m benchmarks.soak_xen``) runs the same checker on 10 000 sequences.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtcore.xen import grant as grant_mod
from virtcore.xen.fuzz import OP_NAMES, Checker, random_ops, run_ops

small = st.integers(min_value=0, max_value=63)
op = st.tuples(st.sampled_from(OP_NAMES), small, small, small, small)
ci = settings(max_examples=200, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])


@ci
@given(st.lists(op, max_size=60))
def test_isolation_properties_hold(ops: list[tuple[object, ...]]) -> None:
    assert run_ops(ops) == []


grant_heavy = st.tuples(st.sampled_from(("grant", "map", "unmap", "revoke", "access", "copy")),
                        small, small, small, small)


@ci
@given(st.lists(grant_heavy, min_size=5, max_size=60))
def test_grant_properties_hold(ops: list[tuple[object, ...]]) -> None:
    assert run_ops(ops) == []


@pytest.mark.parametrize("seed", range(40))
def test_seeded_sequences(seed: int) -> None:
    assert run_ops(random_ops(seed, 60)) == []


def test_random_ops_is_deterministic() -> None:
    assert random_ops(5, 30) == random_ops(5, 30) != random_ops(6, 30)


def test_the_checker_catches_a_broken_readonly_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The properties are not vacuous: with Xen's read-only check removed they fail."""
    real = grant_mod._check_entry

    def lax(rd, ref, ldomid, readonly):  # type: ignore[no-untyped-def]
        return real(rd, ref, ldomid, True)

    monkeypatch.setattr(grant_mod, "_check_entry", lax)
    ops = [("grant", 1, 2, 0, 1),          # a grants b a read-only page
           ("map", 2, 1, 0, 0)]            # b maps it writable
    assert any("model says allowed=False" in v for v in run_ops(ops))


def test_the_checker_catches_a_leaky_access_check(monkeypatch: pytest.MonkeyPatch) -> None:
    ch = Checker()
    monkeypatch.setattr(ch.xen, "can_access", lambda domid, mfn, write: True)
    ch.apply(("access", 1, 0, 0, 0))       # d1 reads a frame of Dom0
    assert ch.violations and "allowed False" in ch.violations[0]


def test_the_checker_catches_an_event_on_an_unbound_port(monkeypatch: pytest.MonkeyPatch) -> None:
    from virtcore.xen import evtchn

    real_send = evtchn.send

    def leaky(xen, cur, port):  # type: ignore[no-untyped-def]
        chn = cur.evtchn.get(port)
        if chn is not None and chn.state == 1:          # unbound: deliver anyway
            evtchn.set_pending(xen, xen.domains[chn.remote_dom], 1)
            return 0
        return real_send(xen, cur, port)

    monkeypatch.setattr(evtchn, "send", leaky)
    ops = [("alloc", 1, 2, 0, 0), ("send", 1, 0, 0, 0)]
    assert any("unbound port" in v for v in run_ops(ops))
