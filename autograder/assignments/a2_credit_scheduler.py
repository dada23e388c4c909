"""Assignment 2 — vCPU scheduling (虚拟CPU调度): Xen's credit scheduler on virtcore.sched.

The student's solution cells must leave a class ``StudentCredit`` in the namespace: a
subclass of :class:`virtcore.sched.Scheduler` that can be built with no arguments (how the
class is split over the cells — one class per cell, mixins, methods attached later — is the
notebook's choice).

Parts (nbgrader grade ids), each checked on its own workloads so that a bug in one costs
only that part:

======================= ================================================== ======
part                    what is checked                                    points
======================= ================================================== ======
``credit_accounting``   CPU-bound domains on one pCPU: each domain's share   15
                        follows its weight (burn 10 credits/ms, earn every
                        30 ms in proportion to weight)
``credit_boost``        one pCPU, CPU hogs plus interactive and I/O          10
                        domains: a waking vCPU with credit left runs at once
                        (BOOST) — low wake-up latency — and BOOST does not
                        buy more than the fair share (it ends at the tick)
``credit_caps``         capped domains on one pCPU: never more than the     10
                        cap (also on an otherwise idle host), not much
                        less; uncapped domains keep the rest
``credit_multi_pcpu``   2–4 pCPUs, more vCPUs than pCPUs, CPU- and I/O-      10
                        bound: no pCPU idles while an uncapped vCPU waits
                        (work conserving: steal from other run queues),
                        as busy as the reference, nobody starved
======================= ================================================== ======

How a case is run: **the grader runs the simulation; the sandbox only answers the scheduler's
hooks** (:data:`INTERACTIVE`, :func:`converse`). For each case the grader runs
:func:`virtcore.sched.simulate` itself — the case's domains, workloads and seed, an event
budget — with a proxy scheduler whose hooks (``attach``, ``add_vcpu``, ``wake``, ``block``,
``descheduled``, ``pick_next``, ``tick``, ``account``…) are requests to the part's worker,
where a new ``StudentCredit()`` answers them on a mirror of the machine
(:func:`autograder.harness.a2.serve`): each reply carries the pCPUs the student's code tickled,
and ``pick_next``'s its decision, which the grader turns into a
:class:`~virtcore.sched.Decision` on its own vCPUs and its simulator checks as it checks any
scheduler's (a vCPU that is blocked, already running, or not of this case is refused, and the
case fails). The sandbox never sees a workload, a phase or a seed — only what a scheduler sees
through its hooks — and nothing it could write stands for a result: the trace scored is the
grader's own. Hooks that return nothing travel together up to the simulator's next look at its
tickled pCPUs, with the hooks of the next ticks, accountings or wake-up sent ahead
(:class:`_Flushing`): about 500–6,700 hook calls in 130–3,100 round trips per case. A hook that
raises fails its case with the student's traceback; a case has :data:`CASE_TIMEOUT` seconds of
the student's own time, and the grader waits at most that plus :data:`REPLY_SLACK` for any
reply. The notebook's own checks (:func:`check_seeds`, ``run_visible``) run the whole
simulation in the student's kernel and use the same :func:`compare`.

How a case is checked: from the grader's trace (segments, runnable intervals, wake-up
latencies) the grader computes every metric, simulates the same case with the reference
:class:`~virtcore.sched.Credit` in its own process and compares *properties*, with tolerances
that any faithful credit1 implementation meets (the reference also models Xen's context-switch
rate limit and exact residuals, which a student's need not): shares within :data:`SHARE_ABS` +
:data:`SHARE_REL` × the reference's share (or as close to the weight-proportional share as the
reference's, in the accounting part), caps never exceeded over any 300 ms window, wake-up
latency at most :data:`LATENCY_FACTOR` × the reference's (or + :data:`LATENCY_SLACK_US`),
idle-while-waiting time at most the reference's + 1 % of the run, on several pCPUs no domain
below :data:`STARVATION` × its reference share. The message names the first metric out of
bounds, expected vs got, and the case seed.

>>> [p.grade_id for p in SPEC.parts], SPEC.points
(['credit_accounting', 'credit_boost', 'credit_caps', 'credit_multi_pcpu'], 45)
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from autograder.harness.a2 import CLASS_NAME, build, run_case, simulate_case, worker_setup
from autograder.spec import AssignmentSpec, Check, Part

__all__ = [
    "CAP_WINDOW_SLACK",
    "CAP_WINDOW_US",
    "CASE_TIMEOUT",
    "CELL_TIMEOUT",
    "CLASS_NAME",
    "FORBIDDEN",
    "HIDDEN_CASES",
    "INTERACTIVE",
    "LATENCY_FACTOR",
    "LATENCY_SLACK_US",
    "PUBLIC_SEEDS",
    "REFERENCES",
    "REPLY_SLACK",
    "SHARE_ABS",
    "SHARE_REL",
    "SPEC",
    "STARVATION",
    "WORKED_EXAMPLES",
    "OwnTrace",
    "build",
    "cases",
    "check_seeds",
    "compare",
    "converse",
    "generated_case",
    "ideal_shares",
    "run_case",
    "simulate_case",
    "worker_setup",
]

#: Cases per hidden check.
HIDDEN_CASES = 5
#: Share tolerance: |share − reference share| ≤ SHARE_ABS + SHARE_REL × reference (pCPUs).
SHARE_ABS = 0.03
SHARE_REL = 0.15
#: With several pCPUs only starvation is checked: each domain gets ≥ STARVATION × its
#: reference share (per-pCPU run queues make shares depend on balancing details).
STARVATION = 0.25
#: Wake-up latency bound: mean ≤ max(LATENCY_FACTOR × reference, reference + LATENCY_SLACK_US).
LATENCY_FACTOR = 3.0
LATENCY_SLACK_US = 1000
#: Window (µs) over which a cap must hold, after the first window (warm-up).
CAP_WINDOW_US = 300_000
#: Slack of the windowed cap check (pCPUs), on top of SHARE_REL × the cap.
CAP_WINDOW_SLACK = 0.05
CASE_TIMEOUT = 8.0
CELL_TIMEOUT = 5.0
_MAX_EVENTS = 400_000

#: The fixed seeds of the public (visible) generated workloads — the same for every student.
PUBLIC_SEEDS: dict[str, tuple[int, ...]] = {
    "accounting_public": (1, 2, 3),
    "boost_public": (4, 5, 6),
    "caps_public": (7, 8, 9),
    "multi_public": (10, 11, 12),
}

SPEC = AssignmentSpec(
    name="a2_credit_scheduler",
    notebook="credit_scheduler.ipynb",
    title="The credit scheduler: weights, caps, BOOST and many pCPUs",
    parts=(
        Part("credit_accounting", 15, (
            Check("accounting_worked_example", 4, False,
                  "the worked examples: weights 256/512 and 128/256/512 on one pCPU"),
            Check("accounting_public", 4, False, "CPU-bound domains, public seeds"),
            Check("accounting_hidden", 7, True, "CPU-bound domains, your hidden seeds"),
        ), "credit accounting: burn, earn by weight, clamp, UNDER/OVER", (CLASS_NAME,)),
        Part("credit_boost", 10, (
            Check("boost_public", 4, False, "hogs and interactive domains, public seeds"),
            Check("boost_hidden", 6, True, "hogs and interactive domains, your hidden seeds"),
        ), "BOOST on wake-up, back to UNDER at the tick", (CLASS_NAME,)),
        Part("credit_caps", 10, (
            Check("caps_public", 4, False, "capped domains, public seeds"),
            Check("caps_hidden", 6, True, "capped domains, your hidden seeds"),
        ), "caps: park a domain that used its cap, unpark when its credit is back",
            (CLASS_NAME,)),
        Part("credit_multi_pcpu", 10, (
            Check("multi_public", 4, False, "2–4 pCPUs, public seeds"),
            Check("multi_hidden", 6, True, "2–4 pCPUs, your hidden seeds"),
        ), "several pCPUs: per-pCPU run queues, work stealing, no idle pCPU while work waits",
            (CLASS_NAME,)),
    ),
)

#: Switched off in the worker before student code runs.
REFERENCES: dict[str, tuple[str, ...]] = {
    "virtcore.sched.credit": ("Credit", "credit_shares", "_acct_domains", "_Unit", "_Dom"),
    "virtcore.sched": ("Credit", "credit_shares"),
}

#: Flagged by the static scan.
FORBIDDEN: tuple[str, ...] = (
    "virtcore.sched.Credit", "virtcore.sched.credit_shares",
    "virtcore.sched.credit.Credit", "virtcore.sched.credit.credit_shares",
    "virtcore.sched.credit._acct_domains", "virtcore.sched.credit._Unit",
    "virtcore.sched.credit._Dom",
)


def sandbox_plan(grade_id: str) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    """What the sandbox of a part holds: :mod:`virtcore.sched.credit` (the reference scheduler)
    redacted whole, and :mod:`autograder.harness.a2`.

    >>> sandbox_plan("credit_caps")
    ({'virtcore.sched.credit': ('*',)}, ('a2',))
    """
    return {"virtcore.sched.credit": ("*",)}, ("a2",)


_CHECK_KIND = {"accounting_worked_example": "accounting", "accounting_public": "accounting",
               "accounting_hidden": "accounting", "boost_public": "boost",
               "boost_hidden": "boost", "caps_public": "caps", "caps_hidden": "caps",
               "multi_public": "multi", "multi_hidden": "multi"}


def _dom(name: str, *, weight: int = 256, cap: int = 0, vcpus: int = 1,
         workload: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "weight": weight, "cap": cap, "vcpus": vcpus,
            "workload": workload or {"kind": "cpu"}}


#: The visible worked examples of the accounting part [XEN-CREDIT]: (label, pCPUs, domains).
WORKED_EXAMPLES: tuple[tuple[str, int, tuple[dict[str, Any], ...]], ...] = (
    ("weights 256 and 512", 1, (_dom("a", weight=256), _dom("b", weight=512))),
    ("weights 128, 256 and 512", 1,
     (_dom("a", weight=128), _dom("b", weight=256), _dom("c", weight=512))),
    ("weight 512 with two vCPUs against 256", 1,
     (_dom("a", weight=256), _dom("b", weight=512, vcpus=2))),
)


# ----------------------------------------------------------------------------- generation

#: Weights of generated domains: at most 8:1 apart (with 64 against 1024 the reference itself
#: strays far from weight-proportional shares, and faithful variants stray differently).
_WEIGHTS = (128, 192, 256, 384, 512, 768, 1024)


def _gen_accounting(rng: Any) -> tuple[int, list[dict[str, Any]], int]:
    n = rng.randint(2, 4)
    doms = [_dom(f"d{i}", weight=rng.choice(_WEIGHTS), vcpus=1 if rng.random() < 0.8 else 2)
            for i in range(n)]
    return 1, doms, 3_000_000


def _gen_boost(rng: Any) -> tuple[int, list[dict[str, Any]], int]:
    doms = [_dom(f"hog{i}", weight=rng.choice((256, 512))) for i in range(rng.randint(1, 2))]
    doms.append(_dom("shell", workload={"kind": "interactive",
                                        "burst_us": rng.randint(150, 600),
                                        "think_us": rng.randint(5_000, 25_000)}))
    if rng.random() < 0.6:
        doms.append(_dom("disk", workload={"kind": "io", "run_us": rng.randint(500, 3000),
                                           "block_us": rng.randint(2_000, 10_000)}))
    return 1, doms, 2_000_000


def _gen_caps(rng: Any) -> tuple[int, list[dict[str, Any]], int]:
    capped = [rng.choice((256, 512)) for _ in range(1 if rng.random() < 0.7 else 2)]
    hogs = [rng.choice(_WEIGHTS) for _ in range(rng.choice((0, 0, 1, 2)))]  # often idle
    total = sum(capped) + sum(hogs)
    doms = []
    for i, w in enumerate(capped):  # a cap that binds: below 80 % of the domain's fair share
        fair = 100 * w / total
        options = [c for c in (10, 20, 25, 30, 40, 50, 60, 75) if c <= 0.8 * fair] or [10]
        doms.append(_dom(f"capped{i}", weight=w, cap=rng.choice(options)))
    doms += [_dom(f"hog{i}", weight=w) for i, w in enumerate(hogs)]
    return 1, doms, 3_000_000


def _gen_multi(rng: Any) -> tuple[int, list[dict[str, Any]], int]:
    pcpus = rng.randint(2, 4)
    target = rng.randint(pcpus + 1, 2 * pcpus)
    doms: list[dict[str, Any]] = []
    total = 0
    while total < target:
        n = min(target - total, 1 if rng.random() < 0.7 else 2)
        if rng.random() < 0.6:
            wl: dict[str, Any] = {"kind": "cpu"}
        else:
            wl = {"kind": "io", "run_us": rng.randint(500, 4000),
                  "block_us": rng.randint(1_000, 10_000)}
        doms.append(_dom(f"d{len(doms)}", weight=rng.choice(_WEIGHTS), vcpus=n, workload=wl))
        total += n
    return pcpus, doms, 2_000_000


_GENERATORS = {"accounting": _gen_accounting, "boost": _gen_boost, "caps": _gen_caps,
               "multi": _gen_multi}


def _case(label: str, seed: int | None, kind: str, pcpus: int, domains: list[dict[str, Any]],
          duration_us: int) -> dict[str, Any]:
    return {"label": label, "seed": seed, "kind": kind, "pcpus": pcpus,
            "duration_us": duration_us, "domains": list(domains), "max_events": _MAX_EVENTS,
            "sim_seed": seed if seed is not None else 0}


def generated_case(kind: str, seed: int, label: str = "") -> dict[str, Any]:
    """The case of kind ``kind`` (accounting, boost, caps, multi) generated from ``seed``.

    >>> c = generated_case("multi", 10)
    >>> c["pcpus"] >= 2, sum(d["vcpus"] for d in c["domains"]) > c["pcpus"]
    (True, True)
    """
    from virtcore.rng import make_rng

    pcpus, doms, duration = _GENERATORS[kind](make_rng(seed))
    return _case(label or f"{kind} seed={seed}", seed, kind, pcpus, doms, duration)


def cases(part: Part, check: Check, seed_of: Callable[[int], int]) -> list[dict[str, Any]]:
    """The cases of ``check`` (see :mod:`autograder.assignments`).

    >>> part = SPEC.part("credit_accounting")
    >>> [c["label"] for c in cases(part, part.checks[0], lambda k: k)][:1]
    ['worked example: weights 256 and 512']
    >>> [c["seed"] for c in cases(part, part.checks[1], lambda k: k)]
    [1, 2, 3]
    """
    kind = _CHECK_KIND[check.name]
    if check.name == "accounting_worked_example":
        return [_case(f"worked example: {label}", None, kind, pcpus, list(doms), 3_000_000)
                for label, pcpus, doms in WORKED_EXAMPLES]
    if not check.hidden:
        return [generated_case(kind, s, f"public workload seed={s}")
                for s in PUBLIC_SEEDS[check.name]]
    return [generated_case(kind, seed_of(k), f"hidden workload #{k + 1}")
            for k in range(HIDDEN_CASES)]


# ------------------------------------------------------------------------------- running

#: The grader drives this assignment's parts: :func:`autograder.grade` runs its worker in
#: serving mode and calls :func:`converse` (the cases never go to the sandbox).
INTERACTIVE = True
#: Extra wall time the grader waits for one reply, beyond the case's own budget.
REPLY_SLACK = 5.0
#: Events the grader sends ahead when it asks for the hooks of an instant (0: none; see
#: :class:`_Flushing`).
LOOK_AHEAD = 8


class OwnTrace(dict):  # type: ignore[type-arg]
    """A trace the grader's own simulator produced (:func:`converse`): :func:`compare` takes
    it as it is.  Nothing that comes from a worker (JSON data) is one."""


class _StudentError(Exception):
    """The student's hook raised in the worker (the reply carries the traceback)."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(str(reply.get("error", "")))
        self.reply = reply


class _Shown:
    """Stands for a value that only exists in the worker (its ``repr``): not a vCPU, not an
    int — the simulator refuses it with its own message."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class _Flushing(list):  # type: ignore[type-arg]
    """The simulator's list of tickled pCPUs, which first collects the replies of the hooks
    sent so far: the simulator looks at it (``if tickles:``) exactly where a tickle made in a
    hook takes effect, so hooks that return nothing can travel together up to that point.

    When it looks at the end of an instant (in its main loop) with nothing tickled yet, what
    it does next if the hooks tickle nothing is known: it takes the next event.  If that is a
    tick, an accounting or a wake-up, the hooks it will call (and the vCPU states they will
    see) are known too, so they go with the request, each event behind a ``["?"]`` that tells
    the worker to go on only while nothing was tickled (:data:`LOOK_AHEAD` events at most; a
    wake-up ends the look-ahead).  The reply says how many events it answered (``n``); the
    simulator's calls of those hooks then take their answers without a round trip (and must
    be exactly the calls sent: anything else is a bug of the grader, raised as such).
    """

    def __init__(self, remote: _Remote, loop_code: Any) -> None:
        super().__init__()
        self.remote = remote
        self.loop_code = loop_code

    def __bool__(self) -> bool:
        if self.remote.calls:
            ahead = (not len(self) and LOOK_AHEAD > 0
                     and sys._getframe(1).f_code is self.loop_code)
            self.remote.flush(ahead)
        return len(self) > 0


class _Remote:
    """The student's scheduler as the grader's simulator sees it: each hook goes to the worker
    (:func:`autograder.harness.a2.serve`), the reply's tickles are applied here and
    ``pick_next``'s answer becomes a :class:`~virtcore.sched.Decision` on this simulation's
    own objects, which the simulator checks as it checks any scheduler's decision.

    Built as a subclass of :class:`~virtcore.sched.Scheduler` by :func:`_remote_class` (so
    that this module imports no virtcore at load time).
    """

    calls: list[list[Any]]

    def flush(self, ahead: bool = False) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError


def _remote_class() -> type:
    from heapq import heappop, heappush

    from virtcore.sched.core import (
        EV_ACCOUNT,
        EV_RUN_END,
        EV_TICK,
        EV_WAKE,
        Decision,
        Scheduler,
        Simulator,
    )

    class Remote(Scheduler, _Remote):
        name = CLASS_NAME

        def __init__(self, channel: Any, index: int, case: dict[str, Any]) -> None:
            self.ch = channel
            setup = {"pcpus": case["pcpus"], "duration_us": case["duration_us"],
                     "domains": [[d["name"], d["vcpus"], d["weight"], d["cap"]]
                                 for d in case["domains"]]}
            self.calls = [["case", index, setup]]
            self.state: list[int] = []
            self.vcpus: tuple[Any, ...] = ()
            self.ahead: list[list[Any]] = []  # hooks answered ahead, in the order expected
            self.ahead_tickles: list[Any] = []

        def attach(self, sim: Any) -> None:
            super().attach(sim)
            self.vcpus = sim.vcpus
            self.state = [-2] * len(sim.vcpus)
            if type(getattr(sim, "_tickles", None)) is list and not sim._tickles:
                sim._tickles = _Flushing(self, Simulator.run.__code__)
            else:  # pragma: no cover - a simulator without that list: one hook per trip
                self.batch = False
            reply = self.flush()
            attrs = reply.get("a")
            if not (isinstance(attrs, list) and len(attrs) == 3):
                raise _protocol(self.ch, "no class attributes in the reply")
            tick, account, name = attrs
            self.name = name[:80] if isinstance(name, str) and name else CLASS_NAME
            # the simulator checks them right after attach, as it checks any scheduler's
            self.tick_us, self.account_us = (  # type: ignore[assignment]
                v if v is None or type(v) is int else _Shown(str(v)[:80]) for v in (tick, account))

        batch = True

        def _delta(self) -> list[int]:
            out: list[int] = []
            state = self.state
            for v in self.vcpus:
                p = v.running_on
                st = p.id if p is not None else (-1 if v.runnable else -2)
                if state[v.id] != st:
                    state[v.id] = st
                    out += (v.id, st)
            return out

        def _send(self, call: list[Any]) -> None:
            if self.ahead:  # answered ahead (see _Flushing)
                want = self.ahead.pop(0)
                if call != want:
                    raise RuntimeError(f"grader bug: the simulator called {call}, not the"
                                       f" {want} sent ahead")
                if not self.ahead:
                    self._tickle(self.ahead_tickles)
                return
            self.calls.append(call)
            if not self.batch:
                self.flush()

        def _levels(self) -> list[list[list[Any]]]:
            """The hooks of the next events if nothing is tickled now (see _Flushing)."""
            sim = self.sim
            heap = list(sim._heap)
            duration = sim.duration_us
            pcpus = range(len(sim.pcpus))
            seq = 1 << 62
            out: list[list[list[Any]]] = []
            while heap and len(out) < LOOK_AHEAD:
                t, kind, _, arg, gen = heap[0]
                if t >= duration:
                    break
                heappop(heap)
                if kind == EV_RUN_END:
                    if gen != sim.pcpus[arg]._gen:
                        continue  # superseded: the simulator skips it too
                    break
                if kind == EV_TICK:
                    out.append([["t", t, [], p] for p in pcpus])
                    if t + (self.tick_us or duration) < duration:
                        seq += 1
                        heappush(heap, (t + (self.tick_us or 0), EV_TICK, seq, 0, 0))
                elif kind == EV_ACCOUNT:
                    out.append([["c", t, []]])
                    if t + (self.account_us or duration) < duration:
                        seq += 1
                        heappush(heap, (t + (self.account_us or 0), EV_ACCOUNT, seq, 0, 0))
                elif kind == EV_WAKE and self.state[arg] == -2:
                    out.append([["w", t, [arg, -1], arg]])
                    break
                else:
                    break
            return out

        def flush(self, ahead: bool = False) -> dict[str, Any]:
            calls, self.calls = self.calls, []
            levels = self._levels() if ahead else []
            for level in levels:
                calls += [["?"], *level]
            reply = self.ch.call(calls)
            if "error" in reply:
                raise _StudentError(reply)
            tickles = reply.get("t")
            if not isinstance(tickles, list):
                raise _protocol(self.ch, "a reply without its tickles")
            done = reply.get("n", 0)
            if type(done) is not int or not 0 <= done <= len(levels):
                raise _protocol(self.ch, "a reply answering events it was not sent")
            if done:  # answered ahead; their tickles count when the last of them is called
                self.ahead = [call for level in levels[:done] for call in level]
                self.ahead_tickles = tickles
            else:
                self._tickle(tickles)
            return reply

        def _tickle(self, tickles: list[Any]) -> None:
            sim = self.sim
            n = len(sim.pcpus)
            for p in tickles:
                if type(p) is not int or not 0 <= p < n:
                    raise _protocol(self.ch, f"tickled {p!r}, not a pCPU of this case")
                sim.tickle(sim.pcpus[p])

        def add_vcpu(self, vcpu: Any) -> None:
            self._send(["a", self.sim.now, self._delta(), vcpu.id])

        def remove_vcpu(self, vcpu: Any) -> None:
            self._send(["r", self.sim.now, self._delta(), vcpu.id])

        def wake(self, vcpu: Any, now: int) -> None:
            self._send(["w", now, self._delta(), vcpu.id])

        def block(self, vcpu: Any, now: int) -> None:
            self._send(["b", now, self._delta(), vcpu.id])

        def yield_(self, vcpu: Any, now: int) -> None:
            self._send(["y", now, self._delta(), vcpu.id])

        def descheduled(self, vcpu: Any, pcpu: Any, now: int, ran_us: int) -> None:
            self._send(["d", now, self._delta(), vcpu.id, pcpu.id, ran_us])

        def tick(self, pcpu: Any, now: int) -> None:
            self._send(["t", now, self._delta(), pcpu.id])

        def account(self, now: int) -> None:
            self._send(["c", now, self._delta()])

        def pick_next(self, pcpu: Any, now: int) -> Any:
            self.calls.append(["p", now, self._delta(), pcpu.id])
            d = self.flush().get("d")
            if isinstance(d, str):  # it returned something that is not a Decision
                return _Shown(d)
            if not (isinstance(d, list) and len(d) == 2):
                raise _protocol(self.ch, "pick_next's reply has no decision")
            vid, ts = d
            vcpus = self.vcpus
            vcpu = (vcpus[vid] if type(vid) is int and 0 <= vid < len(vcpus)
                    else None if vid is None else _Shown(str(vid)))
            if not (ts is None or type(ts) is int):
                ts = _Shown(str(ts))
            return Decision(vcpu, ts)  # type: ignore[arg-type]

    Remote.__name__ = Remote.__qualname__ = "RemoteScheduler"
    return Remote


def _protocol(channel: Any, why: str) -> Exception:
    """A reply that breaks the protocol: the part's results are not trusted (see
    :meth:`autograder.sandbox.Channel.refuse`)."""
    from autograder.sandbox import ChannelError

    refuse = getattr(channel, "refuse", None)
    return refuse(why) if refuse is not None else ChannelError(f"protocol: {why}")


def converse(channel: Any, cases: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """Grade-side driver of a serving worker: simulate each case *here*, asking the worker
    (the student's scheduler) one hook at a time; one result per case.

    A result is ``{"result": OwnTrace}`` (this simulation's trace), ``{"error": …,
    "error_type": …}`` (the student's hook raised, or its decision broke the simulator's
    rules: only that case fails) or None (never reached: the conversation ended, e.g. the
    worker ran past its budget or wrote something that is not a reply).
    """
    import gc

    remote = _remote_class()
    out: list[dict[str, Any] | None] = [None] * len(cases)
    collecting = gc.isenabled()
    gc.disable()  # tens of thousands of small messages: no cycle hunts in between
    try:
        _converse_cases(channel, cases, remote, out)
    finally:
        if collecting:
            gc.enable()
    return out


def _converse_cases(channel: Any, cases: list[dict[str, Any]], remote: type,
                    out: list[dict[str, Any] | None]) -> None:
    from autograder.sandbox import ChannelError
    from virtcore.errors import VirtcoreError

    for i, case in enumerate(cases):
        channel.case = i
        sched = remote(channel, i, case)
        try:
            trace = simulate_case(sched, case)
            if sched.calls:  # hooks of the last instant whose replies nobody awaited yet
                sched.flush()
        except _StudentError as e:
            reply = e.reply
            res: dict[str, Any] = {"error": str(reply.get("error"))[:4000],
                                   "error_type": str(reply.get("error_type", "Exception"))}
            if isinstance(reply.get("touched"), list) and reply["touched"]:
                res["touched"] = [str(x)[:2000] for x in reply["touched"][:1]]
            out[i] = res
            continue
        except ChannelError:
            break
        except VirtcoreError as e:  # the simulator refused a decision, or the class's set-up
            out[i] = {"error": f"{type(e).__name__}: {e}", "error_type": type(e).__name__}
            continue
        out[i] = {"result": OwnTrace(trace)}


def reply_timeout() -> float:
    """How long the grader waits for one reply (the case budget, plus slack for the load)."""
    return CASE_TIMEOUT + REPLY_SLACK


# ----------------------------------------------------------------------------- comparing


class _Trace:
    """A validated trace with the metrics the checks use, computed in the grader."""

    def __init__(self, case: dict[str, Any], data: Any) -> None:
        self.case = case
        self.duration = int(case["duration_us"])
        self.pcpus = int(case["pcpus"])
        names = [f"{d['name']}.{i}" for d in case["domains"] for i in range(int(d["vcpus"]))]
        self.names = names
        self.domain_of = {f"{d['name']}.{i}": d["name"] for d in case["domains"]
                          for i in range(int(d["vcpus"]))}
        if not isinstance(data, dict) or data.get("vcpus") != names:
            raise ValueError("the trace does not list this case's vCPUs")
        segs = data.get("segments")
        runnable = data.get("runnable")
        lat = data.get("latencies")
        if not (isinstance(segs, list) and isinstance(runnable, list)
                and isinstance(lat, list) and len(runnable) == len(names)
                and len(lat) == len(names)):
            raise ValueError("the trace is incomplete")
        n = len(names)
        d = self.duration
        cpu = [0] * n
        per_pcpu: list[list[tuple[int, int]]] = [[] for _ in range(self.pcpus)]
        per_vcpu: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        clean = []
        for s in segs:
            if not (isinstance(s, list) and len(s) == 4 and all(type(x) is int for x in s)):
                raise ValueError("a segment is not [pcpu, vcpu, start, end]")
            p, v, a, b = s
            if not (0 <= p < self.pcpus and 0 <= v < n and 0 <= a < b <= d):
                raise ValueError(f"segment {s} lies outside the run")
            cpu[v] += b - a
            per_pcpu[p].append((a, b))
            per_vcpu[v].append((a, b))
            clean.append((p, v, a, b))
        for what, groups in (("pCPU", per_pcpu), ("vCPU", per_vcpu)):
            for i, ivs in enumerate(groups):
                ivs.sort()
                for (_, b1), (a2, _) in zip(ivs, ivs[1:]):  # noqa: RUF007 (py3.10 has it too)
                    if a2 < b1:
                        who = f"pCPU{i}" if what == "pCPU" else names[i]
                        raise ValueError(f"{who} is in two places at t={a2} µs")
        self.segments = clean
        self.cpu = cpu
        self.runnable = []
        for ivs in runnable:
            if not isinstance(ivs, list) or not all(
                    isinstance(iv, list) and len(iv) == 2 and all(type(x) is int for x in iv)
                    for iv in ivs):
                raise ValueError("bad runnable intervals")
            self.runnable.append([(a, b) for a, b in ivs])
        self.latencies = []
        for xs in lat:
            if not isinstance(xs, list) or not all(type(x) is int and x >= 0 for x in xs):
                raise ValueError("bad wake-up latencies")
            self.latencies.append(xs)

    def share(self, domain: str) -> float:
        return sum(c for nm, c in zip(self.names, self.cpu)
                   if self.domain_of[nm] == domain) / self.duration

    def utilisation(self) -> float:
        return sum(self.cpu) / self.duration

    def mean_latency(self, domain: str) -> float | None:
        xs = [x for nm, ls in zip(self.names, self.latencies) if self.domain_of[nm] == domain
              for x in ls]
        return sum(xs) / len(xs) if xs else None

    def window_max(self, domain: str, window: int) -> tuple[float, int]:
        """The largest CPU share of ``domain`` over consecutive windows after the first."""
        vs = {i for i, nm in enumerate(self.names) if self.domain_of[nm] == domain}
        best, at = 0.0, 0
        start = window
        while start + window <= self.duration:
            end = start + window
            used = sum(min(b, end) - max(a, start) for _, v, a, b in self.segments
                       if v in vs and a < end and b > start)
            if used / window > best:
                best, at = used / window, start
            start += window
        return best, at

    def idle_while_waiting(self, *, uncapped_only: bool = True) -> int:
        """µs during which a pCPU idled while an (uncapped) vCPU waited."""
        caps = {d["name"]: int(d["cap"]) for d in self.case["domains"]}
        skip = {i for i, nm in enumerate(self.names)
                if uncapped_only and caps[self.domain_of[nm]]}
        delta: dict[int, list[int]] = {}
        for i, ivs in enumerate(self.runnable):
            if i in skip:
                continue
            for a, b in ivs:
                delta.setdefault(a, [0, 0, 0])[0] += 1
                delta.setdefault(b, [0, 0, 0])[0] -= 1
        for _, v, a, b in self.segments:
            da = delta.setdefault(a, [0, 0, 0])
            db = delta.setdefault(b, [0, 0, 0])
            da[2] += 1
            db[2] -= 1
            if v not in skip:
                da[1] += 1
                db[1] -= 1
        total = runnable = running = busy = prev = 0
        for t in sorted(delta):
            if busy < self.pcpus and runnable > running:
                total += t - prev
            x = delta[t]
            runnable += x[0]
            running += x[1]
            busy += x[2]
            prev = t
        return total


_REF_CACHE: OrderedDict[str, _Trace] = OrderedDict()


def _reference(case: dict[str, Any], *, boost: bool = True) -> _Trace:
    """The reference Credit's trace of ``case`` (computed in the grader's process, cached)."""
    key = json.dumps([case["pcpus"], case["duration_us"], case["domains"], case["sim_seed"],
                      boost], sort_keys=True)
    hit = _REF_CACHE.get(key)
    if hit is not None:
        _REF_CACHE.move_to_end(key)
        return hit
    from virtcore.sched.credit import Credit

    out = _Trace(case, simulate_case(Credit(boost=boost), case))
    _REF_CACHE[key] = out
    if len(_REF_CACHE) > 256:
        _REF_CACHE.popitem(last=False)
    return out


def _share_bound(ref: float) -> float:
    return SHARE_ABS + SHARE_REL * ref


def ideal_shares(case: dict[str, Any]) -> dict[str, float]:
    """Weight-proportional shares of CPU-bound, uncapped domains (credit1's weight counts once
    per active vCPU), each domain at most one pCPU per vCPU — water-filling.

    >>> ideal_shares(_case("x", None, "accounting", 1, list(WORKED_EXAMPLES[0][2]), 1))
    {'a': 0.3333333333333333, 'b': 0.6666666666666666}
    """
    left = float(case["pcpus"])
    todo = {d["name"]: (int(d["weight"]) * int(d["vcpus"]), int(d["vcpus"]))
            for d in case["domains"]}
    out: dict[str, float] = {}
    while todo:
        total = sum(w for w, _ in todo.values())
        full = {n: v for n, (w, v) in todo.items() if left * w / total >= v}
        if not full:
            out.update({n: left * w / total for n, (w, _) in todo.items()})
            break
        for n, v in full.items():
            out[n] = float(v)
            left -= v
            del todo[n]
    return out


def _check_shares(case: dict[str, Any], ref: _Trace, got: _Trace, *,
                  ideal: dict[str, float] | None = None) -> str | None:
    for d in case["domains"]:
        name = d["name"]
        r, g = ref.share(name), got.share(name)
        if ideal is not None and abs(g - ideal[name]) <= abs(r - ideal[name]) + _share_bound(r):
            continue  # as close to the weight-proportional share as the reference is
        if abs(g - r) > _share_bound(r):
            cap = f", cap {d['cap']}" if d["cap"] else ""
            plural = "s" if d["vcpus"] > 1 else ""
            return (f"domain {name} (weight {d['weight']}{cap}, {d['vcpus']} vCPU{plural}) got"
                    f" {100 * g:.1f}% of a pCPU over {case['duration_us'] // 1000} ms; the"
                    f" reference gives {100 * r:.1f}% (allowed ±{100 * _share_bound(r):.1f})")
    return None


def _check_starvation(case: dict[str, Any], ref: _Trace, got: _Trace) -> str | None:
    for d in case["domains"]:
        r, g = ref.share(d["name"]), got.share(d["name"])
        if g < STARVATION * r:
            return (f"domain {d['name']} (weight {d['weight']}) got only {100 * g:.1f}% of a"
                    f" pCPU; the reference gives it {100 * r:.1f}% — is it starved?")
    return None


def _check_utilisation(ref: _Trace, got: _Trace, slack: float) -> str | None:
    if got.utilisation() < ref.utilisation() - slack:
        return (f"the pCPUs were busy {100 * got.utilisation():.1f}% (in pCPUs:"
                f" {got.utilisation():.2f}); the reference keeps them busy"
                f" {100 * ref.utilisation():.1f}% — work was left waiting")
    return None


def replay(case: dict[str, Any], data: Any) -> dict[str, Any]:
    """Re-run ``case`` in the grader with the trace's own decisions; the grader's trace.

    A scheduler that only *replays* the trace's segments (pCPU, vCPU, start, end) drives
    virtcore's simulator, which owns the truth of who is runnable: choosing a blocked vCPU,
    or one already running elsewhere, is an error there, and a vCPU that blocks sooner (or
    later) than the trace claims ends its segment at another time.  The trace is a legal
    schedule of this case exactly when the replay gives the same segments; then the metrics
    are taken from the replay (runnable intervals, wake-up latencies), never from the worker.

    Raises
    ------
    ValueError
        Not a legal schedule of the case (the message says where).

    >>> from virtcore.sched import RoundRobin
    >>> case = generated_case("accounting", 1)
    >>> t = simulate_case(RoundRobin(10_000), case)
    >>> replay(case, t) == t
    True
    >>> case = generated_case("boost", 4)                  # an interactive shell sleeps a lot
    >>> shell = case["domains"].index(next(d for d in case["domains"] if d["name"] == "shell"))
    >>> forged = {**simulate_case(RoundRobin(10_000), case),
    ...           "segments": [[0, shell, 0, case["duration_us"]]]}   # "it ran all the time"
    >>> replay(case, forged)
    Traceback (most recent call last):
    ...
    ValueError: the trace is not a schedule of this case: ...
    """
    from virtcore.sched.core import IDLE, Decision, Scheduler

    _Trace(case, data)  # shape, bounds, nobody in two places at once
    names = list(data["vcpus"])
    pcpus = int(case["pcpus"])
    plan: list[list[tuple[int, int, int]]] = [[] for _ in range(pcpus)]
    for p, v, a, b in data["segments"]:
        plan[p].append((a, b, v))
    for lst in plan:
        lst.sort()

    class Replay(Scheduler):
        name = "replay"

        def __init__(self) -> None:
            self.pos = [0] * pcpus
            self.waiting: dict[str, Any] = {}
            self.by_name: dict[str, Any] = {}

        def wake(self, vcpu: Any, now: int) -> None:
            waiting = self.waiting.pop(vcpu.name, None)
            if waiting is not None:
                self.sim.tickle(waiting)

        def descheduled(self, vcpu: Any, pcpu: Any, now: int, ran_us: int) -> None:
            waiting = self.waiting.pop(vcpu.name, None)
            if waiting is not None:
                self.sim.tickle(waiting)

        def pick_next(self, pcpu: Any, now: int) -> Decision:
            if not self.by_name:
                self.by_name = {v.name: v for v in self.sim.vcpus}
            lst, i = plan[pcpu.id], self.pos[pcpu.id]
            while i < len(lst) and lst[i][1] <= now:
                i += 1
            self.pos[pcpu.id] = i
            if i < len(lst) and lst[i][0] <= now:
                a, b, v = lst[i]
                vcpu = self.by_name[names[v]]
                other = vcpu.running_on
                if a == now and ((other is not None and other is not pcpu)
                                 or (other is None and not vcpu.runnable)):
                    # it moves here at this instant and its old pCPU has not let it go yet,
                    # or it wakes at this instant and the wake-up is not processed yet
                    # (events of one instant run in order): idle until then
                    self.waiting[vcpu.name] = pcpu
                    return IDLE
                return Decision(vcpu, b - now)
            return Decision(None, lst[i][0] - now) if i < len(lst) else IDLE

    try:
        again = simulate_case(Replay(), case)
    except Exception as e:  # the simulator refused a decision: not a legal schedule
        raise ValueError(f"the trace is not a schedule of this case: {e}") from None
    mine = sorted(map(tuple, data["segments"]))
    theirs = sorted(map(tuple, again["segments"]))
    if mine != theirs:
        diff = next((f"{x} vs {y}" for x, y in zip(mine, theirs) if x != y),
                    f"{len(mine)} segments vs {len(theirs)}")
        raise ValueError(f"the trace is not a schedule of this case: the simulator, following"
                         f" its decisions, ran [pCPU, vCPU, start, end] differently ({diff})")
    return again


def compare(part: Part, check: Check, case: dict[str, Any], got: Any) -> str | None:
    """Check the student's trace against the reference Credit's (computed here); None = pass.

    ``got`` is the grader's own trace (an :class:`OwnTrace`, from :func:`converse`), taken as
    it is; any other trace (e.g. one simulated in the student's kernel) is first replayed
    (:func:`replay`) and must be a legal schedule of the case.

    >>> from virtcore.sched import RoundRobin
    >>> part = SPEC.part("credit_accounting")
    >>> case = cases(part, part.checks[0], lambda k: k)[0]
    >>> print(compare(part, part.checks[0], case, simulate_case(RoundRobin(30_000), case)))
    ... # doctest: +NORMALIZE_WHITESPACE
    domain a (weight 256, 1 vCPU) got 50.0% of a pCPU over 3000 ms;
    the reference gives 34.0% (allowed ±8.1)
    """
    try:
        mine = _Trace(case, got if isinstance(got, OwnTrace) else replay(case, got))
    except ValueError as e:
        return f"the trace is not valid: {e}"
    kind = case["kind"]
    ref = _reference(case)
    if kind == "accounting":
        return (_check_shares(case, ref, mine, ideal=ideal_shares(case))
                or _check_utilisation(ref, mine, 0.02))
    if kind == "boost":
        for d in case["domains"]:
            if d["workload"]["kind"] not in ("interactive", "io"):
                continue
            r, g = ref.mean_latency(d["name"]), mine.mean_latency(d["name"])
            if r is None or g is None:
                continue
            bound = max(LATENCY_FACTOR * r, r + LATENCY_SLACK_US)
            if g > bound:
                return (f"domain {d['name']} ({d['workload']['kind']}) waited {g:.0f} µs on"
                        f" average after waking up; the reference (with BOOST) waits {r:.0f} µs"
                        f" (allowed up to {bound:.0f}) — is a waking vCPU boosted and does it"
                        " preempt?")
        return _check_shares(case, ref, mine) or _check_utilisation(ref, mine, 0.02)
    if kind == "caps":
        for d in case["domains"]:
            if not d["cap"]:
                continue
            name, cap = d["name"], int(d["cap"]) / 100
            g = mine.share(name)
            limit = min(cap, float(d["vcpus"])) + SHARE_ABS
            if g > limit:
                return (f"domain {name} (cap {d['cap']}) got {100 * g:.1f}% of a pCPU over"
                        f" {case['duration_us'] // 1000} ms, more than its cap")
            wr, _ = ref.window_max(name, CAP_WINDOW_US)
            wg, at = mine.window_max(name, CAP_WINDOW_US)
            wlimit = max(wr, cap) + CAP_WINDOW_SLACK + SHARE_REL * cap
            if wg > wlimit:
                return (f"domain {name} (cap {d['cap']}) got {100 * wg:.1f}% of a pCPU between"
                        f" t={at // 1000} ms and {(at + CAP_WINDOW_US) // 1000} ms; the cap"
                        f" allows {100 * cap:.0f}% (the reference's worst window:"
                        f" {100 * wr:.1f}%)")
            r = ref.share(name)
            if g < r - _share_bound(r):
                return (f"domain {name} (cap {d['cap']}) got only {100 * g:.1f}% of a pCPU;"
                        f" the reference gives {100 * r:.1f}% (allowed"
                        f" −{100 * _share_bound(r):.1f}) — is it unparked when its credit"
                        " is back?")
        return _check_utilisation(ref, mine, 0.02)
    # multi: work conserving, and nobody starved (shares across pCPUs depend on balancing
    # details too much to compare them closely)
    waste_r = ref.idle_while_waiting()
    waste_g = mine.idle_while_waiting()
    allowed = waste_r + case["duration_us"] // 100
    if waste_g > allowed:
        return (f"a pCPU was idle while an uncapped vCPU waited for {waste_g // 1000} ms in"
                f" all (the reference: {waste_r // 1000} ms; allowed {allowed // 1000} ms) —"
                " does an idle pCPU steal work from the other run queues?")
    return (_check_utilisation(ref, mine, 0.02 * case["pcpus"])
            or _check_starvation(case, ref, mine))


def check_seeds(grade_id: str, namespace: dict[str, Any], seeds: Iterable[int]) -> list[str]:
    """Run a part's generated workloads with these ``seeds`` on the ``StudentCredit`` of
    ``namespace``, in this process, with the hidden check's comparison: the failure messages
    ([] when all pass).

    For a notebook's own test cells (advice, not a score: no sandbox, the reference runs
    here, as in :func:`autograder.grade.run_visible`).

    >>> from virtcore.sched import Credit
    >>> check_seeds("credit_caps", {CLASS_NAME: Credit}, (40,))
    []
    """
    part = SPEC.part(grade_id)
    check = part.checks[-1]
    worker_setup(grade_id)  # a2 keeps nothing before the references go
    impl = build(namespace, grade_id, None)
    out = []
    for seed in seeds:
        case = generated_case(_CHECK_KIND[check.name], seed, f"workload seed={seed}")
        try:
            msg = compare(part, check, case, run_case(impl, case))
        except Exception as e:  # a bug of the grader would surface here, not be hidden
            msg = f"{type(e).__name__}: {e}"
        if msg is not None:
            out.append(f"{case['label']}: {msg}")
    return out
