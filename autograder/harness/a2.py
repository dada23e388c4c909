"""Worker side of assignment 2 (the credit scheduler): the student's scheduler, answering hooks.

Staged into the sandbox with a copy of virtcore whose reference scheduler
(:mod:`virtcore.sched.credit`) is redacted.  When graded, the worker *serves*
(:func:`serve`): the grader runs every case's simulation itself and sends each scheduler hook
the simulator calls — ``attach``, ``add_vcpu``, ``wake``, ``block``, ``descheduled``,
``pick_next``, ``tick``, ``account``… — here, where the student's ``StudentCredit`` answers it
on a *mirror* of the machine.  The mirror is a :class:`virtcore.sched.core.Simulator` that never
runs: the domains (name, vCPUs, weight, cap), the pCPUs, ``now`` and each vCPU's
``runnable``/``running_on`` (so each pCPU's ``current``), as the grader's simulator had them
when it called the hook, so ``self.sim`` offers what it offers in the student's notebook
(``now``, ``pcpus``, ``vcpus``, ``tickle(pcpu)``, ``idle_pcpus()``).  Workloads never come
here (a vCPU's ``workload`` is ``None``): no durations, phases or seeds, only what a scheduler
sees through its hooks.

A request is one JSON line: a list of calls ``[op, now, delta, *args]`` (``delta``: the vCPUs
whose state changed since the previous call, flattened ``[id, state, …]``; state ``k >= 0``
running on pCPU ``k``, ``-1`` runnable and waiting, ``-2`` not runnable), the first call of a
case being ``["case", index, setup]``; a ``["?"]`` between calls means "go on only if nothing
was tickled so far" (the grader sends the hooks of the next events ahead; ``n`` in the reply
counts the ``["?"]`` passed). The reply: the pCPU ids the student's code tickled (``t``), the
decision of a final ``pick_next`` (``d``: ``[vcpu id or None, timeslice]``, or the ``repr`` of
whatever else it returned), and, for ``case``, the class's ``tick_us``, ``account_us`` and
``name`` (``a``). The grader turns the decision into a ``Decision`` on its own objects and its
simulator checks it as it checks any scheduler's.

:func:`simulate_case` (the whole simulation in one process) is what the grader runs for the
reference, and what the notebook's own checks run in the student's kernel.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CLASS_NAME", "OPS", "build", "run_case", "serve", "simulate_case",
           "worker_setup"]

#: The name the solution cells must define.
CLASS_NAME = "StudentCredit"


def _workload(spec: dict[str, Any]) -> Any:
    from virtcore.sched.workloads import CPUBound, Interactive, IOBound, Mixed

    kind = spec.get("kind")
    if kind == "cpu":
        return CPUBound()
    if kind == "io":
        return IOBound(run_us=int(spec["run_us"]), block_us=int(spec["block_us"]))
    if kind == "interactive":
        return Interactive(burst_us=int(spec["burst_us"]), think_us=int(spec["think_us"]))
    if kind == "mixed":
        return Mixed(cpu_us=int(spec["cpu_us"]), run_us=int(spec["run_us"]),
                     block_us=int(spec["block_us"]), io_cycles=int(spec["io_cycles"]))
    raise ValueError(f"unknown workload kind {kind!r}")


def _domains(case: dict[str, Any]) -> list[Any]:
    from virtcore.sched.model import Domain

    return [Domain(d["name"], vcpus=int(d["vcpus"]), weight=int(d["weight"]),
                   cap=int(d["cap"]), workload=_workload(d["workload"]))
            for d in case["domains"]]


def simulate_case(scheduler: Any, case: dict[str, Any]) -> dict[str, Any]:
    """Simulate the case's domains under ``scheduler``; return the trace as JSON data.

    >>> from virtcore.sched import RoundRobin
    >>> case = {"pcpus": 1, "duration_us": 40_000, "sim_seed": 0, "max_events": 10_000,
    ...         "domains": [{"name": n, "vcpus": 1, "weight": 256, "cap": 0,
    ...                      "workload": {"kind": "cpu"}} for n in "ab"]}
    >>> t = simulate_case(RoundRobin(10_000), case)
    >>> sorted(t), t["segments"][0][1:]
    (['busy', 'latencies', 'runnable', 'segments', 'vcpus'], [0, 0, 10000])
    """
    from virtcore.sched.core import simulate

    r = simulate(_domains(case), scheduler, pcpus=int(case["pcpus"]),
                 duration_us=int(case["duration_us"]), seed=int(case["sim_seed"]),
                 max_events=int(case["max_events"]))
    index = {n: i for i, n in enumerate(r.vcpu_names)}
    return {"vcpus": list(r.vcpu_names),
            "segments": [[s.pcpu, index[s.vcpu], s.start, s.end] for s in r.segments],
            "runnable": [[list(iv) for iv in r.runnable_intervals[n]] for n in r.vcpu_names],
            "latencies": [list(r.latencies_us[n]) for n in r.vcpu_names],
            "busy": list(r.pcpu_busy_us)}


def worker_setup(grade_id: str) -> None:
    """Nothing to keep before the references go (the reference Credit is never needed)."""
    return


def build(namespace: dict[str, Any], grade_id: str, setup: object) -> type:
    """The student's scheduler class from the executed cells (BuildError if unusable)."""
    from autograder.worker import BuildError
    from virtcore.sched.core import Scheduler

    cls = namespace.get(CLASS_NAME)
    if cls is None:
        raise BuildError(f"{CLASS_NAME} is not defined: the solution cells must define a class"
                         f" {CLASS_NAME}(Scheduler)")
    if not isinstance(cls, type) or not issubclass(cls, Scheduler):
        raise BuildError(f"{CLASS_NAME} must be a subclass of virtcore.sched.Scheduler"
                         f" (it is {cls!r})")
    return cls


def run_case(impl: type, case: dict[str, Any]) -> dict[str, Any]:
    """In the worker: simulate the case with a new instance of the student's class."""
    return simulate_case(impl(), case)




#: The hooks a request may call, by op code: (hook, what its arguments are).
OPS = {"a": "add_vcpu(vcpu)", "r": "remove_vcpu(vcpu)", "w": "wake(vcpu, now)",
       "b": "block(vcpu, now)", "y": "yield_(vcpu, now)",
       "d": "descheduled(vcpu, pcpu, now, ran_us)", "p": "pick_next(pcpu, now)",
       "t": "tick(pcpu, now)", "c": "account(now)"}


class _Session:
    """The student's scheduler on one case's mirror machine (see the module doc)."""

    def __init__(self, impl: type) -> None:
        self.impl = impl
        self.sim: Any = None
        self.sched: Any = None

    def start(self, setup: dict[str, Any]) -> list[Any]:
        from virtcore.sched.core import Simulator
        from virtcore.sched.model import Domain

        self.sim = None
        doms = [Domain(str(n), vcpus=int(k), weight=int(w), cap=int(c))
                for n, k, w, c in setup["domains"]]
        sched = self.sched = self.impl()
        sim = Simulator(doms, sched, pcpus=int(setup["pcpus"]),
                        duration_us=int(setup["duration_us"]), seed=0)
        for v in sim.vcpus:  # the mirror knows no workload
            v.workload = None  # type: ignore[assignment]
            v._phases = iter(())
        self.sim = sim
        sched.attach(sim)
        attrs = []
        for value in (getattr(sched, "tick_us", None), getattr(sched, "account_us", None)):
            attrs.append(value if value is None or type(value) is int else repr(value)[:80])
        name = getattr(sched, "name", "")
        attrs.append(name[:80] if isinstance(name, str) else repr(name)[:80])
        return attrs

    def __call__(self, calls: list[list[Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        sched = self.sched
        ahead = 0
        for call in calls:
            op = call[0]
            if op == "?":  # the hooks of a later event, only if nothing was tickled so far
                if self.sim._tickles:
                    break
                ahead += 1
                continue
            if op == "case":
                out["a"] = self.start(call[2])
                sched = self.sched
                continue
            sim = self.sim
            sim.now = now = call[1]
            delta = call[2]
            if delta:
                self.apply(delta)
            if op == "p":
                d = sched.pick_next(sim.pcpus[call[3]], now)
                out["d"] = self.decision(d)
            elif op == "t":
                sched.tick(sim.pcpus[call[3]], now)
            elif op == "d":
                sched.descheduled(sim.vcpus[call[3]], sim.pcpus[call[4]], now, call[5])
            elif op == "w":
                sched.wake(sim.vcpus[call[3]], now)
            elif op == "b":
                sched.block(sim.vcpus[call[3]], now)
            elif op == "c":
                sched.account(now)
            elif op == "a":
                sched.add_vcpu(sim.vcpus[call[3]])
            elif op == "r":
                sched.remove_vcpu(sim.vcpus[call[3]])
            elif op == "y":
                sched.yield_(sim.vcpus[call[3]], now)
            else:
                raise ValueError(f"unknown request {op!r}")
        if ahead:
            out["n"] = ahead
        tickles = self.sim._tickles
        out["t"] = [p.id for p in tickles]
        for p in tickles:
            p._tickled = False
        tickles.clear()
        return out

    def apply(self, delta: list[int]) -> None:
        vcpus, pcpus = self.sim.vcpus, self.sim.pcpus
        changed = [(vcpus[delta[i]], delta[i + 1]) for i in range(0, len(delta), 2)]
        for v, _ in changed:
            p = v.running_on
            if p is not None and p.current is v:
                p.current = None
        for v, state in changed:
            v.runnable = state >= -1
            if state >= 0:
                p = pcpus[state]
                v.running_on = p
                p.current = v
            else:
                v.running_on = None

    def decision(self, d: Any) -> Any:
        from virtcore.sched.core import Decision
        from virtcore.sched.model import VCPU

        if not isinstance(d, Decision):
            return repr(d)[:200]
        v, ts = d
        if v is None:
            vid = None
        elif type(v) is VCPU and 0 <= v.id < len(self.sim.vcpus) and self.sim.vcpus[v.id] is v:
            vid = v.id
        else:
            vid = repr(v)[:80]  # not a vCPU of this simulation
        return [vid, ts if ts is None or type(ts) is int else repr(ts)[:80]]


def serve(impl: type) -> Any:
    """The function that answers the grader's requests with a new ``impl()`` per case.

    >>> from virtcore.sched import RoundRobin
    >>> answer = serve(lambda: RoundRobin(10_000))
    >>> setup = {"pcpus": 1, "duration_us": 1000, "domains": [["a", 1, 256, 0]]}
    >>> answer([["case", 0, setup], ["a", 0, [], 0]])
    {'a': [None, None, 'RoundRobin'], 't': []}
    >>> answer([["w", 0, [0, -1], 0], ["p", 0, [], 0]])
    {'d': [0, 10000], 't': []}
    """
    return _Session(impl)
