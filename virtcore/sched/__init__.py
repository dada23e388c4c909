"""vCPU scheduling (虚拟CPU调度): a discrete-event simulator and pluggable schedulers.

Concepts and how each is represented:

- **domain / VM** (虚拟机) — :class:`Domain` (weight, cap, nice; ``kind="process"``
  for an ordinary host process, see :func:`process`);
- **vCPU** (虚拟CPU; to a host kernel, a thread) — :class:`VCPU`;
- **pCPU** (物理CPU) — :class:`PCPU`;
- **workload** — :class:`CPUBound`, :class:`IOBound`, :class:`Interactive`,
  :class:`Mixed`, :class:`Phases`: what each vCPU does, as (run, then) phases;
- **scheduler** (调度器) — a :class:`Scheduler` plugin: :class:`FIFO`,
  :class:`RoundRobin`, :class:`Credit` (Xen credit1, the reference, real
  constants), :class:`CFSLike` (Linux's fair scheduler, for KVM hosts);
- **run** — :func:`simulate` → :class:`SchedResult` (trace of
  :class:`Segment`, shares, wake-up latencies, utilisation, Jain's index).

Time is in integer microseconds.  Same seed → same trace.

>>> from virtcore.sched import Credit, Domain, IOBound, simulate
>>> doms = [Domain("web", weight=512), Domain("batch"), Domain("io", workload=IOBound())]
>>> r = simulate(doms, Credit(), pcpus=2, duration_us=600_000, seed=0)
>>> r.idle_while_waiting_us()
0
>>> r == simulate(doms, Credit(), pcpus=2, duration_us=600_000, seed=0)
True
"""

from virtcore.sched.cfs import SCHED_PRIO_TO_WEIGHT, CFSLike, nice_to_weight
from virtcore.sched.core import (
    IDLE,
    Decision,
    InvalidDecisionError,
    Scheduler,
    SchedulerError,
    Simulator,
    simulate,
)
from virtcore.sched.credit import Credit, credit_shares
from virtcore.sched.model import PCPU, VCPU, Domain, process
from virtcore.sched.result import LatencyStats, SchedResult, Segment, jain_index
from virtcore.sched.simple import FIFO, RoundRobin
from virtcore.sched.workloads import (
    FOREVER,
    YIELD,
    CPUBound,
    Interactive,
    IOBound,
    Mixed,
    Phases,
    Workload,
)

__all__ = [
    "FIFO",
    "FOREVER",
    "IDLE",
    "PCPU",
    "SCHED_PRIO_TO_WEIGHT",
    "VCPU",
    "YIELD",
    "CFSLike",
    "CPUBound",
    "Credit",
    "Decision",
    "Domain",
    "IOBound",
    "Interactive",
    "InvalidDecisionError",
    "LatencyStats",
    "Mixed",
    "Phases",
    "RoundRobin",
    "SchedResult",
    "Scheduler",
    "SchedulerError",
    "Segment",
    "Simulator",
    "Workload",
    "credit_shares",
    "jain_index",
    "nice_to_weight",
    "process",
    "simulate",
]
