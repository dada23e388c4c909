"""Worker side of assignment 2 (the credit scheduler): simulate a case with the student's class.

Staged into the sandbox with a copy of virtcore whose reference scheduler
(:mod:`virtcore.sched.credit`) is redacted; the grader uses the same :func:`simulate_case`
with the real :class:`~virtcore.sched.Credit`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CLASS_NAME", "build", "run_case", "simulate_case", "worker_setup"]

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


