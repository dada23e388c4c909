"""What gets scheduled, and on what: domains, their vCPUs, and physical CPUs.

Concepts and how each is represented here:

- **Domain** (域 / 虚拟机) — :class:`Domain`: a VM (``kind="vm"``) or, for the
  host scheduler of KVM, an ordinary host process (``kind="process"``).  It
  carries the scheduling parameters of both worlds: Xen credit's ``weight``
  (default ``CSCHED_DEFAULT_WEIGHT`` = 256, legal 1..65535) and ``cap`` (0 =
  uncapped, 100 = one pCPU), and Linux's ``nice`` (−20..19).
  ([XEN-CREDIT; XL-1].)
- **vCPU** (虚拟CPU) — :class:`VCPU`: the unit a scheduler places on a pCPU.
  A host process's threads are VCPU objects too: to Linux, a KVM vCPU *is* a
  thread [KVM-ORIG; QEMU-ACCEL], so one entity type serves both the Xen and the KVM
  chapters.  A task that belongs to no VM is simply a thread of a
  ``kind="process"`` domain (see :func:`process`).
- **pCPU** (物理CPU) — :class:`PCPU`: a physical CPU; ``current`` is the
  vCPU it runs, or ``None`` while idle.

The simulator (:mod:`virtcore.sched.core`) owns the truth of who runs where:
``VCPU.runnable``, ``VCPU.running_on`` and ``PCPU.current`` are read-only for
schedulers.  ``VCPU.priv`` is the scheduler's own slot (Xen's
``sched_unit->priv``).  Attributes starting with ``_`` belong to the simulator.

>>> web = Domain("web", vcpus=2, weight=512)
>>> [v.name for v in web.vcpus]
['web.0', 'web.1']
>>> web.vcpus[1].domain is web, web.cap
(True, 0)
>>> process("sshd", nice=5).kind
'process'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from virtcore.errors import ConfigurationError
from virtcore.sched.workloads import CPUBound

if TYPE_CHECKING:
    from collections.abc import Iterator

    from virtcore.sched.workloads import Workload

#: Default credit weight of a domain (Xen ``CSCHED_DEFAULT_WEIGHT``; [XEN-CREDIT; XL-1]).
DEFAULT_WEIGHT = 256
#: Legal range of a credit weight (``xl sched-credit -w``; [XEN-CREDIT; XL-1]).
WEIGHT_RANGE = (1, 65535)
#: Legal range of a Linux nice value.
NICE_RANGE = (-20, 19)
KINDS = ("vm", "process")


class PCPU:
    """A physical CPU (物理CPU).

    Parameters
    ----------
    id : int
        0-based index.

    Attributes
    ----------
    current : VCPU or None
        The vCPU running here, ``None`` while idle (read-only for schedulers).

    >>> p = PCPU(3)
    >>> p, p.current is None
    (pCPU3, True)
    """

    __slots__ = ("_busy", "_gen", "_slice_end", "_start", "_tickled", "_trace", "current", "id")

    def __init__(self, id: int) -> None:
        self.id = id
        self.current: VCPU | None = None
        self._start = 0  # when `current` was dispatched
        self._slice_end = 0  # end of the current timeslice (FOREVER if none)
        self._gen = 0  # bumped on every dispatch/stop: stale RUN_END events are skipped
        self._busy = 0  # µs spent running vCPUs
        self._trace: list[list[int]] = []  # [vcpu id, start, end], merged when contiguous
        self._tickled = False

    @property
    def idle(self) -> bool:
        """True while no vCPU runs here.

        >>> PCPU(0).idle
        True
        """
        return self.current is None

    def __repr__(self) -> str:
        return f"pCPU{self.id}"


class VCPU:
    """A virtual CPU (虚拟CPU) — or, for a host process, one of its threads.

    Created by :class:`Domain`; not meant to be built by hand.

    Attributes
    ----------
    domain : Domain
        Owner.
    index : int
        Index within the domain (Xen's ``vcpu_id``).
    name : str
        ``"<domain>.<index>"``, unique within a simulation.
    id : int
        Global 0-based index within the current simulation (set by the simulator).
    runnable : bool
        True while the workload wants the CPU (running or waiting); read-only.
    running_on : PCPU or None
        Where it runs now; read-only.
    priv : Any
        Free slot for the scheduler's per-vCPU data (like ``sched_unit->priv``).

    >>> v = Domain("db").vcpus[0]
    >>> v, v.runnable, v.running_on
    (db.0, False, None)
    """

    __slots__ = (
        "_cpu_us",
        "_exited",
        "_intervals",
        "_latencies",
        "_phases",
        "_remaining",
        "_sleep",
        "_wake_time",
        "domain",
        "id",
        "index",
        "name",
        "priv",
        "runnable",
        "running_on",
        "workload",
    )

    def __init__(self, domain: Domain, index: int, workload: Workload) -> None:
        self.domain = domain
        self.index = index
        self.name = f"{domain.name}.{index}"
        self.workload = workload
        self.id = -1
        self.runnable = False
        self.running_on: PCPU | None = None
        self.priv: Any = None
        self._reset(-1, iter(()))

    def _reset(self, id: int, phases: Iterator[tuple[int, int]]) -> None:
        """Fresh per-simulation state (the simulator calls this)."""
        self.id = id
        self.runnable = False
        self.running_on = None
        self.priv = None
        self._phases = phases
        self._remaining = 0  # CPU µs left in the current run phase, as of the dispatch time
        self._sleep = 0  # what follows the current run phase: sleep µs, 0, or YIELD
        self._wake_time = -1  # time of the last wake not yet followed by a run
        self._cpu_us = 0
        self._latencies: list[int] = []
        self._intervals: list[list[int]] = []  # runnable intervals [start, end]
        self._exited = False

    def __repr__(self) -> str:
        return self.name


class Domain:
    """A domain: a VM (虚拟机) or a host process, with its vCPUs and scheduling parameters.

    Parameters
    ----------
    name : str
        Unique name (``.`` not allowed: it separates domain and vCPU in names).
    vcpus : int
        Number of vCPUs (threads, for a process).
    workload : Workload or sequence of Workload, optional
        What each vCPU does (see :mod:`virtcore.sched.workloads`); one spec for
        all vCPUs (each still gets its own random stream) or one per vCPU.
        Default: CPU-bound.
    weight : int
        Xen credit weight, 1..65535, default 256 [XEN-CREDIT; XL-1].
    cap : int
        Xen credit cap in percent of one pCPU; 0 = uncapped [XEN-CREDIT; XL-1].
    nice : int
        Linux nice value −20..19, used by :class:`~virtcore.sched.cfs.CFSLike`.
    kind : {"vm", "process"}
        A VM, or an ordinary host process (for the KVM host-scheduler chapter).

    >>> d = Domain("hog", vcpus=3, cap=150)
    >>> len(d.vcpus), d.kind, d.weight
    (3, 'vm', 256)
    >>> Domain("x", weight=0)
    Traceback (most recent call last):
    ...
    virtcore.errors.ConfigurationError: domain 'x': weight must be an int in 1..65535, got 0
    """

    def __init__(
        self,
        name: str,
        *,
        vcpus: int = 1,
        workload: Workload | Sequence[Workload] | None = None,
        weight: int = DEFAULT_WEIGHT,
        cap: int = 0,
        nice: int = 0,
        kind: str = "vm",
    ) -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise ConfigurationError(
                f"domain name must be a non-empty str without '.', got {name!r}"
            )
        if not _is_int(vcpus) or vcpus < 1:
            raise ConfigurationError(f"domain {name!r}: vcpus must be an int >= 1, got {vcpus!r}")
        lo, hi = WEIGHT_RANGE
        if not _is_int(weight) or not lo <= weight <= hi:
            raise ConfigurationError(
                f"domain {name!r}: weight must be an int in {lo}..{hi}, got {weight!r}"
            )
        if not _is_int(cap) or cap < 0:
            raise ConfigurationError(f"domain {name!r}: cap must be an int >= 0, got {cap!r}")
        lo, hi = NICE_RANGE
        if not _is_int(nice) or not lo <= nice <= hi:
            raise ConfigurationError(
                f"domain {name!r}: nice must be an int in {lo}..{hi}, got {nice!r}"
            )
        if kind not in KINDS:
            raise ConfigurationError(f"domain {name!r}: kind must be one of {KINDS}, got {kind!r}")
        specs: list[Workload]
        if workload is None:
            specs = [CPUBound()] * vcpus
        elif isinstance(workload, Sequence):
            specs = list(workload)
            if len(specs) != vcpus:
                raise ConfigurationError(
                    f"domain {name!r}: {len(specs)} workloads given for {vcpus} vCPUs"
                )
        else:
            specs = [workload] * vcpus
        for spec in specs:
            if not callable(getattr(spec, "phases", None)):
                raise ConfigurationError(
                    f"domain {name!r}: a workload needs a phases(rng) method, got {spec!r}"
                )
        self.name = name
        self.weight = weight
        self.cap = cap
        self.nice = nice
        self.kind = kind
        self.vcpus: tuple[VCPU, ...] = tuple(VCPU(self, i, s) for i, s in enumerate(specs))

    def __repr__(self) -> str:
        extra = f", cap={self.cap}" if self.cap else ""
        extra += f", nice={self.nice}" if self.nice else ""
        extra += ", kind='process'" if self.kind == "process" else ""
        return f"Domain({self.name!r}, vcpus={len(self.vcpus)}, weight={self.weight}{extra})"


def process(
    name: str,
    *,
    threads: int = 1,
    workload: Workload | Sequence[Workload] | None = None,
    nice: int = 0,
) -> Domain:
    """An ordinary host process (no VM): a ``Domain(kind="process")`` whose vCPUs are its threads.

    Used next to KVM guests on the host scheduler ([KVM-ORIG; QEMU-ACCEL]: a vCPU is a thread).

    >>> p = process("make", threads=2, nice=10)
    >>> p.kind, [t.name for t in p.vcpus], p.nice
    ('process', ['make.0', 'make.1'], 10)
    """
    return Domain(name, vcpus=threads, workload=workload, nice=nice, kind="process")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
