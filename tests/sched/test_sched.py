"""Tests of virtcore.sched: the simulator, the plugin rules, and the schedulers.

Each test states a behaviour a wrong scheduler would break: weights give
proportional shares, caps are never exceeded, no pCPU idles next to a waiting
vCPU, BOOST cuts wake-up latency, bad plugin decisions are caught.
"""

from __future__ import annotations

import bisect
from collections import deque
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtcore.errors import ConfigurationError, VirtcoreError
from virtcore.sched import (
    FIFO,
    IDLE,
    PCPU,
    SCHED_PRIO_TO_WEIGHT,
    VCPU,
    YIELD,
    CFSLike,
    CPUBound,
    Credit,
    Decision,
    Domain,
    Interactive,
    InvalidDecisionError,
    IOBound,
    LatencyStats,
    Mixed,
    Phases,
    RoundRobin,
    SchedResult,
    Scheduler,
    SchedulerError,
    jain_index,
    process,
    simulate,
)
from virtcore.sched import credit as cr
from virtcore.sched.cfs import nice_to_weight

# ----------------------------------------------------------------------------- helpers


def idle_while_waiting(res: SchedResult, *, uncapped_only: bool = True) -> list[tuple[int, int]]:
    """Independent check: the stretches where a pCPU idled while an (uncapped) vCPU waited.

    Evaluated at the midpoint of every stretch between two trace boundaries,
    so zero-length transitions (a wake and its dispatch at the same µs) are allowed.
    """
    capped = {
        n for n in res.vcpu_names if res.domain_params[res.vcpu_domain[n]]["cap"] and uncapped_only
    }
    per_pcpu: dict[int, list[tuple[int, int, str]]] = {p: [] for p in range(res.pcpus)}
    for s in res.segments:
        per_pcpu[s.pcpu].append((s.start, s.end, s.vcpu))
    starts = {p: [a for a, _, _ in segs] for p, segs in per_pcpu.items()}
    ivs = {n: list(res.runnable_intervals[n]) for n in res.vcpu_names if n not in capped}
    ivstarts = {n: [a for a, _ in v] for n, v in ivs.items()}
    times = {0, res.duration_us}
    for s in res.segments:
        times.update((s.start, s.end))
    for v in ivs.values():
        for a, b in v:
            times.update((a, b))
    bad = []
    ordered = sorted(times)
    for t0, t1 in pairwise(ordered):
        mid2 = t0 + t1  # compare 2*t with 2*mid to stay in integers
        running = set()
        for p, segs in per_pcpu.items():
            i = bisect.bisect_right(starts[p], t0) - 1
            if i >= 0 and 2 * segs[i][0] <= mid2 < 2 * segs[i][1]:
                running.add(segs[i][2])
        if len(running) == res.pcpus:
            continue
        for n, v in ivs.items():
            i = bisect.bisect_right(ivstarts[n], t0) - 1
            if i >= 0 and 2 * v[i][0] <= mid2 < 2 * v[i][1] and n not in running:
                bad.append((t0, t1))
                break
    return bad


def check_trace_consistent(res: SchedResult) -> None:
    """Segments: inside the run, no overlaps on a pCPU, a vCPU never in two places at once,
    and a vCPU runs only while runnable."""
    by_pcpu: dict[int, list] = {}
    by_vcpu: dict[str, list] = {}
    for s in res.segments:
        assert 0 <= s.start < s.end <= res.duration_us, s
        by_pcpu.setdefault(s.pcpu, []).append(s)
        by_vcpu.setdefault(s.vcpu, []).append(s)
    for segs in list(by_pcpu.values()) + list(by_vcpu.values()):
        segs.sort(key=lambda s: s.start)
        for a, b in pairwise(segs):
            assert a.end <= b.start, f"overlap: {a} and {b}"
    for name, segs in by_vcpu.items():
        ivs = res.runnable_intervals[name]
        for s in segs:
            assert any(a <= s.start and s.end <= b for a, b in ivs), f"{s} outside runnable {ivs}"
        assert sum(s.duration for s in segs) == res.vcpu_cpu_us[name]
    for p in range(res.pcpus):
        assert sum(s.duration for s in by_pcpu.get(p, [])) == res.pcpu_busy_us[p]


# ----------------------------------------------------------------------------- facts


def test_credit_constants_are_xen_s():
    """[XEN-CREDIT; XL-1]: the real credit1 constants."""
    assert cr.CSCHED_DEFAULT_WEIGHT == 256 == Domain("d").weight
    assert cr.CSCHED_DEFAULT_TSLICE_MS == 30
    assert cr.CSCHED_TICKS_PER_TSLICE == 3
    assert cr.CSCHED_CREDITS_PER_MSEC == 10
    c = Credit()
    assert c.tick_us == 10_000, "tick = 30 ms / 3"
    assert c.account_us == 30_000, "accounting once per timeslice"
    assert c.credits_per_tslice == 300
    assert c.credits_per_tslice // CSCHED_TICKS == 100
    assert (
        cr.CSCHED_PRI_TS_BOOST,
        cr.CSCHED_PRI_TS_UNDER,
        cr.CSCHED_PRI_TS_OVER,
        cr.CSCHED_PRI_IDLE,
    ) == (
        0,
        -1,
        -2,
        -64,
    )
    assert cr.CSCHED_DEFAULT_LOAD_BALANCE_RATELIMIT_US == 1000


CSCHED_TICKS = 3


def test_credit_short_timeslice_uses_one_tick():
    """__csched_set_tslice: below 3 ms there is one tick per timeslice."""
    c = Credit(tslice_ms=2, ratelimit_us=0)
    assert (c.tick_us, c.account_us, c.credits_per_tslice) == (2000, 2000, 20)


def test_domain_and_credit_parameter_ranges():
    """xl's legal ranges are enforced."""
    Domain("ok", weight=65535)
    for bad in (
        {"weight": 65536},
        {"weight": 0},
        {"cap": -1},
        {"nice": 20},
        {"vcpus": 0},
        {"kind": "vmm"},
    ):
        with pytest.raises(ConfigurationError):
            Domain("x", **bad)
    with pytest.raises(ConfigurationError):
        Domain("a.b")
    with pytest.raises(ConfigurationError):
        Credit(tslice_ms=1001)
    with pytest.raises(ConfigurationError):
        Credit(ratelimit_us=50)  # below XEN_SYSCTL_SCHED_RATELIMIT_MIN
    with pytest.raises(ConfigurationError):
        Credit(tslice_ms=1, ratelimit_us=2000)  # must not exceed the timeslice


def test_credit_shares_worked_example_and_caps():
    """[XEN-CREDIT; XL-1] worked example: 1 pCPU, weights 256 and 512 → 100 and 200 credits."""
    assert cr.credit_shares([(256, 1, 0), (512, 1, 0)], ncpus=1) == [100, 200]
    # 2 pCPUs, one domain with 1 vCPU cannot use more than one pCPU (credit_peak = 300);
    # the rest is redistributed to the next domain.
    assert cr.credit_shares([(512, 1, 0), (256, 1, 0)], ncpus=2) == [300, 300]
    # cap 50 → ceil(50 × 300 / 100) = 150
    assert cr.credit_shares([(256, 1, 50)], ncpus=1) == [150]
    # per-vCPU share = ceil(credit_fair / active)
    assert cr.credit_shares([(256, 3, 0)], ncpus=1) == [100]
    assert cr.credit_shares([(256, 7, 0)], ncpus=1) == [43]


# ----------------------------------------------------------------------------- Credit: shares


def test_weights_512_256_get_2_to_1_on_one_pcpu():
    """[XEN-CREDIT; XL-1]: 512 vs 256 on a contended pCPU → 2:1, within ±5 % over 3 s."""
    r = simulate(
        [Domain("heavy", weight=512), Domain("light", weight=256)],
        Credit(),
        pcpus=1,
        duration_us=3_000_000,
    )
    ratio = r.domain_cpu_us["heavy"] / r.domain_cpu_us["light"]
    assert 2 * 0.95 <= ratio <= 2 * 1.05, ratio
    assert r.utilisation == (1.0,)
    assert r.fairness() > 0.99


def test_weights_across_pcpus_with_stealing():
    """Three 1-vCPU domains 512:256:256 on 2 pCPUs → 1 : 0.5 : 0.5 pCPU (±5 %)."""
    r = simulate(
        [Domain("a", weight=512), Domain("b"), Domain("c")],
        Credit(),
        pcpus=2,
        duration_us=3_000_000,
    )
    for name, want in (("a", 1.0), ("b", 0.5), ("c", 0.5)):
        assert abs(r.domain_share[name] - want) <= 0.05 * want, r.domain_share
    r = simulate(
        [Domain("a", vcpus=2, weight=512), Domain("b", vcpus=2)],
        Credit(),
        pcpus=2,
        duration_us=3_000_000,
    )
    assert abs(r.domain_share["a"] / r.domain_share["b"] - 2) <= 0.1, r.domain_share


def test_equal_weights_many_vcpus_are_fair():
    """16 equal CPU-bound vCPUs on 4 pCPUs: Jain's index close to 1."""
    doms = [Domain(f"d{i}", vcpus=2) for i in range(8)]
    r = simulate(doms, Credit(), pcpus=4, duration_us=3_000_000)
    assert r.fairness() > 0.98
    assert all(u == 1.0 for u in r.utilisation)


def test_cap_50_never_exceeded_and_pcpu_idles_the_rest():
    """cap 50 alone on an idle pCPU: ≤ 50 % in every window of 4 accounting periods.

    credit1 enforces a cap by parking at accounting time, so over one 30 ms
    period a capped vCPU runs 0 % or 100 %; the park/unpark cycle is 120 ms
    (run 60 ms, parked 60 ms), which is the window to measure over.
    """
    dur = 3_000_000
    r = simulate([Domain("capped", cap=50)], Credit(), pcpus=1, duration_us=dur)
    window = 4 * 30_000
    warm = 60_000
    for t in range(warm, dur - window + 1, 10_000):
        got = r.cpu_in_window("capped.0", t, t + window)
        assert got <= 0.5 * window * 1.01, (t, got)
    assert 0.49 <= r.utilisation[0] <= 0.51, "non-work-conserving: the pCPU idles the rest"
    assert r.idle_while_waiting_us(uncapped_only=False) > 0.45 * dur


def test_cap_100_is_one_pcpu():
    """[XEN-CREDIT; XL-1]: cap 100 = one pCPU, even for a 2-vCPU domain on 2 idle pCPUs."""
    r = simulate([Domain("c", vcpus=2, cap=100)], Credit(), pcpus=2, duration_us=3_000_000)
    assert 0.97 <= r.domain_share["c"] <= 1.01
    u = Domain("u", vcpus=2)
    assert simulate([u], Credit(), pcpus=2, duration_us=300_000).domain_share["u"] == 2.0


def test_capped_domain_next_to_a_hog_keeps_its_cap():
    """A cap holds on a busy host too, and the uncapped hog gets the rest."""
    r = simulate(
        [Domain("c", vcpus=2, cap=60), Domain("hog", vcpus=2)],
        Credit(),
        pcpus=2,
        duration_us=3_000_000,
    )
    assert r.domain_share["c"] <= 0.61
    assert r.domain_share["hog"] + r.domain_share["c"] >= 1.99


class _AcctProbe(Credit):
    """Credit that checks the state after each accounting ([XEN-CREDIT; XL-1] step 4)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.checked = 0

    def account(self, now):
        super().account(now)
        for v in self.sim.vcpus:
            svc = v.priv
            if svc.active:
                assert -300 <= svc.credit <= 300, (now, v, svc.credit)
                want = cr.CSCHED_PRI_TS_OVER if svc.credit < 0 else cr.CSCHED_PRI_TS_UNDER
                assert svc.pri == want, (now, v, svc.credit, svc.pri)
                self.checked += 1
            if svc.parked:
                assert v.running_on is None or self.sim._tickles, (
                    "a parked vCPU must be descheduled"
                )


def test_accounting_clamps_credit_and_sets_priorities():
    doms = [
        Domain("hog", vcpus=3),
        Domain("cap", cap=30),
        Domain("io", vcpus=2, workload=IOBound(run_us=500, block_us=3000)),
        Domain("w", weight=1024, workload=Mixed()),
    ]
    probe = _AcctProbe()
    simulate(doms, probe, pcpus=2, duration_us=1_500_000, seed=2)
    assert probe.checked > 100


class _BoostProbe(Credit):
    """Records the priority a vCPU gets on each wake, and at each tick while running."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.on_wake: list[int] = []
        self.on_tick: list[int] = []

    def wake(self, vcpu, now):
        super().wake(vcpu, now)
        if vcpu.domain.name == "io":
            self.on_wake.append(vcpu.priv.pri)

    def tick(self, pcpu, now):
        super().tick(pcpu, now)
        if pcpu.current is not None and pcpu.current.domain.name == "io":
            self.on_tick.append(pcpu.current.priv.pri)


def test_boost_on_wake_and_revert_at_tick():
    """[XEN-CREDIT; XL-1] step 5: UNDER + wake → BOOST; a tick that finds it running → UNDER.

    The very first wake is not boosted (csched_res_pick marks the unit MIGRATING).
    """
    io = Domain("io", workload=IOBound(run_us=15_000, block_us=5_000, random=False))
    probe = _BoostProbe()
    simulate([io, Domain("hog")], probe, pcpus=1, duration_us=1_000_000)
    assert probe.on_wake[0] == cr.CSCHED_PRI_TS_UNDER
    assert cr.CSCHED_PRI_TS_BOOST in probe.on_wake[1:]
    assert probe.on_tick and cr.CSCHED_PRI_TS_BOOST not in probe.on_tick
    off = _BoostProbe(boost=False)
    simulate([io, Domain("hog")], off, pcpus=1, duration_us=1_000_000)
    assert cr.CSCHED_PRI_TS_BOOST not in off.on_wake


def test_boost_lowers_wakeup_latency_of_io_next_to_hogs():
    """An I/O-bound vCPU next to 3 CPU hogs on one pCPU: BOOST cuts its mean wake-up latency."""

    def doms():
        return [Domain("io", workload=IOBound(run_us=300, block_us=5_000))] + [
            Domain(f"hog{i}") for i in range(3)
        ]

    on = simulate(doms(), Credit(), pcpus=1, duration_us=3_000_000, seed=1).latency("io.0")
    off = simulate(doms(), Credit(boost=False), pcpus=1, duration_us=3_000_000, seed=1).latency(
        "io.0"
    )
    assert on.n > 100 and off.n > 10
    assert on.mean * 10 < off.mean, (on, off)
    assert on.p95 < off.p95
    # With BOOST the waker still waits for the 1 ms context-switch rate limit at most, mostly.
    assert on.p95 <= 2 * cr.CSCHED_DEFAULT_RATELIMIT_US


def test_ratelimit_keeps_a_fresh_vcpu_running():
    """sched_ratelimit_us: a boosted waker cannot preempt a vCPU that ran < 1 ms."""
    # io wakes every ~400 µs of wall time; the hog it preempts has run less than 1 ms.
    doms = [Domain("io", workload=Phases(((50, 400),), repeat=True)), Domain("hog")]
    with_rl = simulate(doms, Credit(), pcpus=1, duration_us=300_000)
    without = simulate(doms, Credit(ratelimit_us=0), pcpus=1, duration_us=300_000)
    hog_runs = [s.duration for s in with_rl.segments_of("hog.0")[1:-1]]
    assert min(hog_runs) >= cr.CSCHED_MIN_TIMER
    assert len(without.segments) > len(with_rl.segments)


def test_yield_puts_vcpu_behind_others():
    """A vCPU that yields after 1 ms lets an equal-priority vCPU run."""
    doms = [Domain("y", workload=Phases(((1_000, YIELD),), repeat=True)), Domain("hog")]
    r = simulate(doms, Credit(), pcpus=1, duration_us=600_000)
    assert r.domain_share["y"] < 0.2
    assert r.segments[1].vcpu == "hog.0"


# ----------------------------------------------------------------------------- work conservation

WC_DOMAINS = [
    ("io", 3, IOBound(run_us=300, block_us=5_000), 256, 0),
    ("mx", 3, Mixed(cpu_us=8_000), 512, 0),
    ("int", 2, Interactive(), 256, 0),
    ("hog", 2, CPUBound(), 128, 0),
    ("late", 1, Phases(((3_000, 2_000), (1_000, 0)), repeat=True, start_us=25_000), 256, 0),
]


@pytest.mark.parametrize(
    "make",
    [FIFO, lambda: RoundRobin(7_000), Credit, lambda: Credit(boost=False), CFSLike],
    ids=["FIFO", "RR", "Credit", "Credit-noboost", "CFS"],
)
@pytest.mark.parametrize("pcpus", [1, 3, 4])
def test_no_pcpu_idles_while_an_uncapped_vcpu_waits(make, pcpus):
    """Work conservation ([XEN-CREDIT; XL-1] step 7): checked over the whole trace."""
    doms = [Domain(n, vcpus=k, workload=w, weight=wt, cap=c) for n, k, w, wt, c in WC_DOMAINS]
    doms.append(Domain("capped", cap=40))
    r = simulate(doms, make(), pcpus=pcpus, duration_us=600_000, seed=pcpus)
    check_trace_consistent(r)
    assert idle_while_waiting(r) == []
    assert r.idle_while_waiting_us() == 0


def test_work_conservation_check_catches_a_lazy_scheduler():
    """The checker itself: a scheduler that uses only pCPU 0 is flagged."""

    class OnlyCPU0(FIFO):
        def pick_next(self, pcpu, now):
            return super().pick_next(pcpu, now) if pcpu.id == 0 else IDLE

    r = simulate([Domain("a"), Domain("b")], OnlyCPU0(), pcpus=2, duration_us=10_000)
    assert idle_while_waiting(r) == [(0, 10_000)]
    assert r.idle_while_waiting_us() == 10_000


# ----------------------------------------------------------------------------- FIFO / RR


def test_fifo_runs_to_block_in_arrival_order():
    doms = [
        Domain("c", workload=Phases(((4_000, 0),), start_us=2_000)),
        Domain("a", workload=Phases(((5_000, 0),))),
        Domain("b", workload=Phases(((3_000, 0),), start_us=1_000)),
    ]
    r = simulate(doms, FIFO(), pcpus=1, duration_us=20_000)
    assert [(s.vcpu, s.start, s.end) for s in r.segments] == [
        ("a.0", 0, 5_000),
        ("b.0", 5_000, 8_000),
        ("c.0", 8_000, 12_000),
    ]
    assert r.latencies_us == {"c.0": (6_000,), "a.0": (0,), "b.0": (4_000,)}


def test_fifo_hog_starves_the_rest():
    r = simulate([Domain("hog"), Domain("victim")], FIFO(), pcpus=1, duration_us=1_000_000)
    assert r.vcpu_cpu_us == {"hog.0": 1_000_000, "victim.0": 0}
    assert r.latency("victim.0") == LatencyStats(0, None, None, None)


def test_round_robin_shares_and_order():
    r = simulate([Domain(n) for n in "abc"], RoundRobin(10_000), pcpus=1, duration_us=300_000)
    assert set(r.vcpu_cpu_us.values()) == {100_000}
    assert [s.vcpu for s in r.segments[:6]] == ["a.0", "b.0", "c.0"] * 2
    assert all(s.duration == 10_000 for s in r.segments)


def test_round_robin_blocking_vcpu_gives_up_the_rest_of_its_slice():
    doms = [Domain("io", workload=Phases(((2_000, 50_000),))), Domain("hog")]
    r = simulate(doms, RoundRobin(10_000), pcpus=1, duration_us=30_000)
    assert [(s.vcpu, s.start, s.end) for s in r.segments] == [
        ("io.0", 0, 2_000),
        ("hog.0", 2_000, 30_000),
    ]


def test_exit_calls_remove_vcpu_and_cpu_equals_the_phases():
    removed = []

    class Watch(RoundRobin):
        def remove_vcpu(self, vcpu):
            removed.append((vcpu.name, self.sim.now))

    doms = [Domain("job", workload=Phases(((3_000, 1_000), (2_000, 0), (500, 0)))), Domain("hog")]
    r = simulate(doms, Watch(1_000), pcpus=1, duration_us=50_000)
    assert r.vcpu_cpu_us["job.0"] == 5_500
    assert removed and removed[0][0] == "job.0"
    assert r.runnable_intervals["job.0"][-1][1] == removed[0][1]


# ----------------------------------------------------------------------------- CFS


def test_cfs_weight_table_is_linux_s():
    assert len(SCHED_PRIO_TO_WEIGHT) == 40
    assert nice_to_weight(0) == 1024 and nice_to_weight(1) == 820 and nice_to_weight(-1) == 1277
    assert SCHED_PRIO_TO_WEIGHT[0] == 88761 and SCHED_PRIO_TO_WEIGHT[-1] == 15
    ratios = [a / b for a, b in pairwise(SCHED_PRIO_TO_WEIGHT)]
    assert all(1.19 < q < 1.29 for q in ratios), "each nice step ≈ 1.25×"


@pytest.mark.parametrize("pcpus", [1, 2])
def test_cfs_nice_0_vs_1_ratio(pcpus):
    """nice 0 vs nice 1 contending: CPU in ratio 1024/820 (±3 %)."""
    doms = [Domain("n0", vcpus=pcpus), Domain("n1", vcpus=pcpus, nice=1)]
    r = simulate(doms, CFSLike(), pcpus=pcpus, duration_us=3_000_000)
    ratio = r.domain_cpu_us["n0"] / r.domain_cpu_us["n1"]
    assert abs(ratio - 1024 / 820) <= 0.03 * 1024 / 820, ratio
    assert r.fairness() > 0.99, "weight-normalised by nice weight"


def test_cfs_vm_threads_compete_with_host_processes():
    """KVM: a 2-vCPU guest is 2 threads; next to 1 host process on 1 pCPU it gets 2/3."""
    vm = Domain("guest", vcpus=2)
    proc = process("backup")
    r = simulate([vm, proc], CFSLike(), pcpus=1, duration_us=3_000_000)
    assert abs(r.domain_share["guest"] - 2 / 3) < 0.02
    assert abs(r.domain_share["backup"] - 1 / 3) < 0.02


def test_cfs_waker_preempts_hog_quickly():
    doms = [Domain("int", workload=Interactive()), Domain("hog", vcpus=2)]
    r = simulate(doms, CFSLike(), pcpus=1, duration_us=2_000_000, seed=4)
    st_ = r.latency("int.0")
    assert st_.n > 20 and st_.p95 < 3_000


# ----------------------------------------------------------------------------- plugin rules


class _Greedy(Scheduler):
    """Tickles every pCPU on wake and always picks the first vCPU it saw."""

    def __init__(self):
        self.first = None

    def wake(self, vcpu, now):
        self.first = self.first or vcpu
        for p in self.sim.pcpus:
            self.sim.tickle(p)

    def descheduled(self, vcpu, pcpu, now, ran_us):
        pass

    def pick_next(self, pcpu, now):
        return Decision(self.first, 1_000)


class _Sticky(Scheduler):
    """Peeks instead of popping: picks a vCPU even after it blocked."""

    def __init__(self):
        self.q = deque()

    def wake(self, vcpu, now):
        self.q.append(vcpu)

    def descheduled(self, vcpu, pcpu, now, ran_us):
        pass

    def pick_next(self, pcpu, now):
        return Decision(self.q[0]) if self.q else IDLE


def test_invalid_decision_running_elsewhere():
    with pytest.raises(InvalidDecisionError) as e:
        simulate([Domain("a")], _Greedy(), pcpus=2, duration_us=10_000)
    err = e.value
    assert (err.scheduler, err.time_us, err.vcpu, err.pcpu) == ("_Greedy", 0, "a.0", 1)
    assert "already running on pCPU0" in str(err) and "t=0 µs" in str(err)


def test_invalid_decision_blocked_vcpu():
    doms = [Domain("io", workload=Phases(((1_000, 5_000),), repeat=True))]
    with pytest.raises(
        InvalidDecisionError, match=r"_Sticky.pick_next\(pCPU0\) at t=1000 µs chose vCPU io.0"
    ):
        simulate(doms, _Sticky(), duration_us=10_000)


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (lambda v: v, "must return a Decision"),
        (lambda v: Decision(v, 0), "timeslice_us=0"),
        (lambda v: Decision(v, 2.5), "timeslice_us=2.5"),
        (lambda v: Decision("a.0"), "not a vCPU of this simulation"),
        (lambda v: Decision(Domain("elsewhere").vcpus[0]), "not a vCPU of this simulation"),
    ],
)
def test_invalid_decisions_are_typed_errors(answer, match):
    class Bad(FIFO):
        def pick_next(self, pcpu, now):
            return answer(self.queue[0]) if self.queue else IDLE

    with pytest.raises(InvalidDecisionError, match=match) as e:
        simulate([Domain("a")], Bad(), duration_us=1_000)
    assert isinstance(e.value, VirtcoreError)


def test_tickle_livelock_is_reported():
    class Jittery(FIFO):
        def pick_next(self, pcpu, now):
            self.sim.tickle(pcpu)
            return super().pick_next(pcpu, now)

    with pytest.raises(SchedulerError, match="tickles at t=0"):
        simulate([Domain("a")], Jittery(), duration_us=1_000)


def test_event_budget():
    with pytest.raises(SchedulerError, match="more than 500 events"):
        simulate([Domain("a"), Domain("b")], RoundRobin(1), duration_us=1_000_000, max_events=500)


def test_scheduler_instance_is_single_use_and_domains_are_reusable():
    doms = [Domain("a", workload=IOBound()), Domain("b")]
    s = Credit()
    first = simulate(doms, s, pcpus=1, duration_us=100_000)
    with pytest.raises(ConfigurationError, match="already used"):
        simulate(doms, s, pcpus=1, duration_us=100_000)
    assert simulate(doms, Credit(), pcpus=1, duration_us=100_000) == first


def test_bad_inputs():
    with pytest.raises(ConfigurationError):
        simulate([Domain("a"), Domain("a")], FIFO(), duration_us=10)
    with pytest.raises(ConfigurationError):
        simulate([], FIFO(), duration_us=10)
    with pytest.raises(ConfigurationError):
        simulate([Domain("a")], FIFO(), pcpus=0, duration_us=10)
    with pytest.raises(ConfigurationError):
        simulate([Domain("a")], FIFO, duration_us=10)  # the class, not an instance

    class ZeroRun:
        start_us = 0

        def phases(self, rng):
            yield (0, 5)

    with pytest.raises(ConfigurationError, match="run_us must be an int >= 1"):
        simulate([Domain("a", workload=ZeroRun())], FIFO(), duration_us=10)
    with pytest.raises(ConfigurationError):
        Phases(((5, -3),))


def test_minimal_student_scheduler_is_tiny():
    """The plugin interface: three methods make a working scheduler."""

    class Stack(Scheduler):  # LIFO, to show the interface is not FIFO-shaped
        def __init__(self):
            self.s = []

        def wake(self, vcpu, now):
            self.s.append(vcpu)

        def descheduled(self, vcpu, pcpu, now, ran_us):
            if vcpu.runnable:
                self.s.append(vcpu)

        def pick_next(self, pcpu, now):
            return Decision(self.s.pop(), 5_000) if self.s else IDLE

    r = simulate([Domain(n) for n in "abc"], Stack(), pcpus=1, duration_us=20_000)
    assert r.scheduler == "Stack"
    # The preempted vCPU is pushed last, so it wins again: LIFO starves b and c.
    assert [tuple(s) for s in r.segments] == [(0, "a.0", 0, 20_000)]
    assert r.dispatches == 4


# ----------------------------------------------------------------------------- results


def test_determinism_same_seed_same_trace():
    def run(seed):
        doms = [
            Domain("io", vcpus=3, workload=IOBound()),
            Domain("int", workload=Interactive()),
            Domain("mx", vcpus=2, workload=Mixed(), weight=512),
            Domain("hog"),
        ]
        return simulate(doms, Credit(), pcpus=2, duration_us=500_000, seed=seed)

    a, b, c = run(7), run(7), run(8)
    assert a.segments == b.segments and a == b
    assert a.segments != c.segments


def test_vcpu_streams_are_independent():
    """Adding a vCPU does not change what another vCPU's workload draws."""
    lone = simulate(
        [Domain("io", workload=IOBound())], FIFO(), pcpus=4, duration_us=200_000, seed=3
    )
    more = simulate(
        [Domain("io", workload=IOBound()), Domain("x", workload=IOBound())],
        FIFO(),
        pcpus=4,
        duration_us=200_000,
        seed=3,
    )

    def times(r):
        return [(s.start, s.end) for s in r.segments_of("io.0")]

    assert len(times(lone)) > 10 and times(lone) == times(more)


def test_latency_stats_and_jain():
    assert LatencyStats.of(list(range(1, 101))) == LatencyStats(100, 50.5, 95, 100)
    assert LatencyStats.of([7]) == LatencyStats(1, 7.0, 7, 7)
    assert jain_index([3, 3, 3]) == pytest.approx(1.0)
    assert jain_index([1, 0]) == pytest.approx(0.5)
    assert jain_index([]) == 1.0


def test_repr_is_a_summary_table():
    r = simulate([Domain("web", weight=512), Domain("db")], Credit(), pcpus=1, duration_us=300_000)
    text = repr(r)
    assert text.startswith("SchedResult: Credit on 1 pCPU(s), 300 ms, seed 0")
    assert "web.0" in text and "db.0" in text and "Jain fairness" in text
    assert "utilisation: pCPU0 100.0%" in text


def test_segments_merge_when_the_same_vcpu_continues():
    r = simulate([Domain("solo")], RoundRobin(1_000), pcpus=1, duration_us=50_000)
    assert [tuple(s) for s in r.segments] == [(0, "solo.0", 0, 50_000)]
    assert r.dispatches == 50


def test_public_types_are_exported():
    assert isinstance(PCPU(0), PCPU)
    assert isinstance(Domain("q").vcpus[0], VCPU)


# ----------------------------------------------------------------------------- properties

_workloads = st.one_of(
    st.just(CPUBound()),
    st.builds(IOBound, run_us=st.integers(50, 5_000), block_us=st.integers(50, 20_000)),
    st.builds(Interactive, burst_us=st.integers(50, 2_000), think_us=st.integers(1_000, 40_000)),
    st.builds(Mixed, cpu_us=st.integers(500, 20_000)),
    st.builds(
        Phases,
        st.lists(
            st.tuples(st.integers(1, 20_000), st.one_of(st.integers(0, 10_000), st.just(YIELD))),
            min_size=1,
            max_size=4,
        ).map(tuple),
        repeat=st.booleans(),
        start_us=st.integers(0, 50_000),
    ),
)
_domains = st.lists(
    st.tuples(
        st.integers(1, 3),
        _workloads,
        st.sampled_from([64, 256, 512]),
        st.sampled_from([0, 0, 30, 100]),
        st.integers(-5, 5),
    ),
    min_size=1,
    max_size=4,
)
_schedulers = st.sampled_from(["fifo", "rr", "credit", "credit-noboost", "cfs"])


def _make(name):
    return {
        "fifo": FIFO,
        "rr": lambda: RoundRobin(3_000),
        "credit": Credit,
        "credit-noboost": lambda: Credit(boost=False),
        "cfs": CFSLike,
    }[name]()


@settings(max_examples=100, deadline=None)
@given(
    spec=_domains,
    sched=_schedulers,
    pcpus=st.integers(1, 4),
    duration=st.integers(1, 300_000),
    seed=st.integers(0, 2**32),
)
def test_property_cpu_time_is_conserved(spec, sched, pcpus, duration, seed):
    """Total CPU ≤ pcpus × duration, each vCPU ≤ duration, a consistent trace,
    and (all built-in schedulers are work-conserving) no idling next to waiting uncapped vCPUs."""
    doms = [
        Domain(f"d{i}", vcpus=k, workload=w, weight=wt, cap=cap, nice=nice)
        for i, (k, w, wt, cap, nice) in enumerate(spec)
    ]
    r = simulate(doms, _make(sched), pcpus=pcpus, duration_us=duration, seed=seed)
    assert sum(r.vcpu_cpu_us.values()) == sum(r.pcpu_busy_us) <= pcpus * duration
    assert all(0 <= t <= duration for t in r.vcpu_cpu_us.values())
    check_trace_consistent(r)
    assert idle_while_waiting(r) == []
