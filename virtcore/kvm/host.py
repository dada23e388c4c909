"""Guests as processes, vCPUs as threads: a KVM host on Linux's fair scheduler.

Avi Kivity's original KVM submission put it in one sentence: "Each virtual
machine is a process on the host; a virtual cpu is a thread in that process.
kill(1), nice(1), top(1) work as expected." [KVM-ORIG] (syllabus S3.2).
KVM brings no scheduler of its own: the host kernel's
scheduler places each vCPU thread on a physical CPU, next to every other
thread on the machine — QEMU creates one thread per vCPU, named
``"CPU %d/KVM"`` [QEMU-ACCEL].

Concepts and how each is represented:

- **host** (宿主机) — :class:`Host`: pCPUs, processes, and the scheduler
  (:class:`virtcore.sched.CFSLike`, Linux CFS, by default);
- **a VM = a QEMU process** — :meth:`Host.add_vm` makes a
  :class:`HostProcess` of kind ``"vm"`` whose threads are the vCPUs (and, if
  asked, QEMU's main-loop thread); in the scheduler each process is a
  :class:`virtcore.sched.Domain` and each thread one of its ``VCPU`` entities;
- **an ordinary process** — :meth:`Host.add_process` (``Domain(kind="process")``);
- **nice** (优先级) — :meth:`Host.renice`: nice −20..19 maps to a load weight
  through Linux's ``sched_prio_to_weight`` table (1024 at nice 0, ≈ ×1.25 per
  step), and CFS shares the CPU in proportion to the weights of the runnable
  threads (:func:`fair_shares` gives the ideal);
- **kill** — :meth:`Host.kill` removes a process (a VM dies like any process);
- **top** — :meth:`HostRun.top` prints %CPU per process and thread.

Simplified (say so in class): one run queue for all pCPUs (see
:mod:`virtcore.sched.cfs`); no cgroups — real hosts (libvirt) put each VM in a
cgroup with its own CPU weight, so that a VM's share does not grow with its
number of vCPUs; here, as with plain ``qemu-kvm`` started from a shell,
every *thread* counts, and a 2-vCPU VM gets twice the CPU of a one-thread
process.

>>> host = Host(pcpus=1)
>>> _ = host.add_vm("web", vcpus=2)
>>> _ = host.add_process("make")
>>> run = host.run(duration_us=600_000)
>>> round(run.share("web") / run.share("make"), 1)
2.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from virtcore.errors import ConfigurationError, VirtcoreError
from virtcore.sched import (
    CFSLike,
    CPUBound,
    Domain,
    Interactive,
    SchedResult,
    Scheduler,
    Workload,
    nice_to_weight,
    simulate,
)

__all__ = [
    "FIRST_PID",
    "Host",
    "HostError",
    "HostProcess",
    "HostRun",
    "fair_shares",
]

#: PIDs handed out from here (teaching choice; Linux starts user processes low and counts up).
FIRST_PID = 1000


class HostError(VirtcoreError):
    """Misuse of the host model (unknown or duplicate process names, bad parameters)."""


@dataclass(frozen=True)
class HostProcess:
    """One process on the host: a VM (QEMU) or an ordinary program.

    Attributes
    ----------
    name : str
        Short name (unique on the host).
    pid : int
    kind : {"vm", "process"}
    nice : int
    threads : tuple of str
        Thread names as ``top -H`` shows them: ``"CPU 0/KVM"``, … for a VM's
        vCPUs (QEMU's naming, [KVM-ORIG; QEMU-ACCEL]), ``"qemu-main"`` for its main loop,
        the process name for an ordinary process's threads.
    vcpus : int
        vCPU threads (0 for an ordinary process).
    workloads : tuple of Workload
        What each thread does.

    >>> Host().add_vm("db", vcpus=2, main_loop=True)
    HostProcess('db', pid 1000, vm, nice 0, threads: CPU 0/KVM, CPU 1/KVM, qemu-main)
    """

    name: str
    pid: int
    kind: str
    nice: int
    threads: tuple[str, ...]
    vcpus: int
    workloads: tuple[Workload, ...] = field(repr=False)

    @property
    def command(self) -> str:
        """The command line ``ps`` would show."""
        if self.kind == "vm":
            return f"qemu-system-x86_64 -enable-kvm -name {self.name} -smp {self.vcpus}"
        return self.name

    @property
    def weight(self) -> int:
        """Load weight of each of its threads (``sched_prio_to_weight[nice + 20]``)."""
        return nice_to_weight(self.nice)

    def __repr__(self) -> str:
        return (f"HostProcess({self.name!r}, pid {self.pid}, {self.kind}, nice {self.nice}, "
                f"threads: {', '.join(self.threads)})")


class Host:
    """A Linux host with KVM: VMs and ordinary processes, all threads on one scheduler.

    Parameters
    ----------
    pcpus : int
        Physical CPUs.
    scheduler : callable, optional
        Makes a fresh :class:`virtcore.sched.Scheduler` for each run (default
        :class:`virtcore.sched.CFSLike`, the host's CFS).

    Examples
    --------
    nice 5 on a VM against a nice-0 process, one pCPU: the shares follow the
    weights 335 : 1024.

    >>> host = Host()
    >>> _ = host.add_vm("guest", nice=5); _ = host.add_process("shell")
    >>> r = host.run(duration_us=1_000_000)
    >>> round(r.share("shell") / r.share("guest"), 1), round(1024 / 335, 1)
    (3.1, 3.1)
    """

    def __init__(self, pcpus: int = 1, *,
                 scheduler: Callable[[], Scheduler] | None = None) -> None:
        if isinstance(pcpus, bool) or not isinstance(pcpus, int) or pcpus < 1:
            raise ConfigurationError(f"pcpus must be a positive int, got {pcpus!r}")
        self.pcpus = pcpus
        self.make_scheduler: Callable[[], Scheduler] = scheduler or CFSLike
        self.processes: dict[str, HostProcess] = {}
        self._next_pid = FIRST_PID

    # -- processes ---------------------------------------------------------------------
    def _add(self, name: str, kind: str, nice: int, threads: tuple[str, ...], vcpus: int,
             workloads: Sequence[Workload]) -> HostProcess:
        if not isinstance(name, str) or not name or "." in name:
            raise HostError(f"a process name must be a non-empty str without '.', got {name!r}")
        if name in self.processes:
            raise HostError(f"a process named {name!r} already runs (pid "
                            f"{self.processes[name].pid})")
        nice_to_weight(nice)  # validates -20..19
        proc = HostProcess(name, self._next_pid, kind, nice, threads, vcpus, tuple(workloads))
        self._next_pid += len(threads)  # thread ids follow the pid, as TIDs do
        self.processes[name] = proc
        return proc

    def add_vm(self, name: str, *, vcpus: int = 1, nice: int = 0,
               workload: Workload | Sequence[Workload] | None = None,
               main_loop: bool = False) -> HostProcess:
        """Start a VM: a QEMU process with one ``"CPU n/KVM"`` thread per vCPU.

        Parameters
        ----------
        vcpus : int
            vCPU threads.
        nice : int
            The process's nice value (all its threads).
        workload : Workload or sequence, optional
            What the guest's vCPUs do (default CPU-bound: a busy guest).
        main_loop : bool
            Add QEMU's event-loop thread (mostly asleep: device emulation).
        """
        if isinstance(vcpus, bool) or not isinstance(vcpus, int) or vcpus < 1:
            raise HostError(f"vcpus must be a positive int, got {vcpus!r}")
        wls = _workloads(workload, vcpus, name)
        threads = tuple(f"CPU {i}/KVM" for i in range(vcpus))
        if main_loop:
            threads += ("qemu-main",)
            wls.append(Interactive(burst_us=200, think_us=5_000))
        return self._add(name, "vm", nice, threads, vcpus, wls)

    def add_process(self, name: str, *, threads: int = 1, nice: int = 0,
                    workload: Workload | Sequence[Workload] | None = None) -> HostProcess:
        """Start an ordinary host process with ``threads`` threads (default CPU-bound)."""
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise HostError(f"threads must be a positive int, got {threads!r}")
        wls = _workloads(workload, threads, name)
        return self._add(name, "process", nice, (name,) * threads, 0, wls)

    def renice(self, name: str, nice: int) -> HostProcess:
        """``renice -n nice -p pid``: change a process's nice value (all its threads)."""
        proc = self[name]
        nice_to_weight(nice)
        new = HostProcess(proc.name, proc.pid, proc.kind, nice, proc.threads, proc.vcpus,
                          proc.workloads)
        self.processes[name] = new
        return new

    def kill(self, name: str) -> HostProcess:
        """``kill pid``: the process (VM or not) is gone, with all its threads."""
        proc = self[name]
        del self.processes[name]
        return proc

    def __getitem__(self, name: str) -> HostProcess:
        try:
            return self.processes[name]
        except KeyError:
            raise HostError(f"no process {name!r}; running: "
                            f"{', '.join(self.processes) or 'none'}") from None

    def ps(self) -> str:
        """The process list, like ``ps -eLo pid,tid,ni,comm`` (one line per thread).

        >>> h = Host(); _ = h.add_vm("vm1", vcpus=2); _ = h.add_process("sshd", nice=5)
        >>> print(h.ps())
          PID    TID  NI  KIND     THREAD        COMMAND
         1000   1000   0  vm       CPU 0/KVM     qemu-system-x86_64 -enable-kvm -name vm1 -smp 2
         1000   1001   0  vm       CPU 1/KVM     qemu-system-x86_64 -enable-kvm -name vm1 -smp 2
         1002   1002   5  process  sshd          sshd
        """
        lines = ["  PID    TID  NI  KIND     THREAD        COMMAND"]
        for p in self.processes.values():
            for k, t in enumerate(p.threads):
                lines.append(f"{p.pid:5d}  {p.pid + k:5d}  {p.nice:2d}  {p.kind:<7}  {t:<12}  "
                             f"{p.command}")
        return "\n".join(lines)

    # -- running -------------------------------------------------------------------------
    def domains(self) -> list[Domain]:
        """The processes as scheduler domains (fresh objects: one per run)."""
        return [
            Domain(p.name, vcpus=len(p.threads), workload=list(p.workloads), nice=p.nice,
                   kind=p.kind)
            for p in self.processes.values()
        ]

    def run(self, duration_us: int = 1_000_000, *, seed: int = 0) -> HostRun:
        """Schedule every thread for ``duration_us`` of simulated time."""
        if not self.processes:
            raise HostError("no process to run")
        procs = dict(self.processes)
        res = simulate(self.domains(), self.make_scheduler(), pcpus=self.pcpus,
                       duration_us=duration_us, seed=seed)
        return HostRun(res, procs, fair_shares(list(procs.values()), self.pcpus))

    def __repr__(self) -> str:
        vms = sum(p.kind == "vm" for p in self.processes.values())
        return (f"Host({self.pcpus} pCPUs, {vms} VMs, {len(self.processes) - vms} other "
                f"processes, {sum(len(p.threads) for p in self.processes.values())} threads)")


def _workloads(workload: Workload | Sequence[Workload] | None, n: int, name: str
               ) -> list[Workload]:
    if workload is None:
        return [CPUBound()] * n
    if isinstance(workload, Sequence):
        wls = list(workload)
        if len(wls) != n:
            raise HostError(f"{name!r}: {len(wls)} workloads for {n} threads")
        return wls
    return [workload] * n


def fair_shares(processes: Sequence[HostProcess], pcpus: int) -> dict[str, float]:
    """CFS's ideal long-run share of each process, in pCPUs, if every thread were always runnable.

    Each thread gets ``pcpus × weight / Σweights``, but no thread more than one
    pCPU: the surplus of a thread that would exceed one pCPU is shared again
    among the others (water-filling).  Real threads that sleep get less.

    >>> h = Host(pcpus=2); _ = h.add_vm("a", vcpus=1); _ = h.add_process("b", threads=3)
    >>> {k: round(v, 3) for k, v in fair_shares(list(h.processes.values()), 2).items()}
    {'a': 0.5, 'b': 1.5}
    """
    threads = [(p.name, p.weight) for p in processes for _ in p.threads]
    share = [0.0] * len(threads)
    capped: set[int] = set()
    left = float(pcpus)
    while True:
        free = [i for i in range(len(threads)) if i not in capped]
        total = sum(threads[i][1] for i in free)
        if not free or total == 0:
            break
        over = [i for i in free if left * threads[i][1] / total > 1.0]
        if not over:
            for i in free:
                share[i] = left * threads[i][1] / total
            break
        for i in over:
            share[i] = 1.0
            capped.add(i)
            left -= 1.0
    out: dict[str, float] = {p.name: 0.0 for p in processes}
    for (name, _), s in zip(threads, share):
        out[name] += s
    return out


@dataclass(frozen=True, repr=False)
class HostRun:
    """A host's run: the scheduler's result, read per process and per thread.

    Attributes
    ----------
    result : SchedResult
        The full schedule (segments, shares, latencies).
    processes : dict
        name → :class:`HostProcess`, as they were when the run started.
    ideal : dict
        name → :func:`fair_shares` prediction (pCPUs).

    >>> h = Host(pcpus=2); _ = h.add_vm("vm", vcpus=2)
    >>> r = h.run(duration_us=100_000)
    >>> round(r.share("vm"), 3), r.ideal["vm"], round(r.thread_share("vm", 1), 3)
    (2.0, 2.0, 1.0)
    """

    result: SchedResult
    processes: dict[str, HostProcess]
    ideal: dict[str, float]

    def share(self, name: str) -> float:
        """CPU share of a process (all its threads), in pCPUs (1.0 = one pCPU all the time)."""
        if name not in self.processes:
            raise HostError(f"no process {name!r} in this run")
        return self.result.domain_share[name]

    def thread_share(self, name: str, thread: int) -> float:
        """CPU share of thread ``thread`` (0-based) of process ``name``."""
        return self.result.vcpu_share[f"{name}.{thread}"]

    def top(self) -> str:
        """A ``top -H``-like table: %CPU per thread and per process (100% = one pCPU).

        >>> h = Host(); _ = h.add_vm("vm", vcpus=2); _ = h.add_process("cc")
        >>> print(h.run(duration_us=300_000).top())   # doctest: +NORMALIZE_WHITESPACE
          PID  NI  WEIGHT   %CPU  ideal  THREAD     PROCESS
         1000   0    1024   33.3   33.3  CPU 0/KVM  vm
         1000   0    1024   33.3   33.3  CPU 1/KVM  vm
         1002   0    1024   33.3   33.3  cc         cc
        total by process: vm 66.7%, cc 33.3%
        """
        lines = ["  PID  NI  WEIGHT   %CPU  ideal  THREAD     PROCESS"]
        shares = self.result.vcpu_share
        for p in self.processes.values():
            per = self.ideal[p.name] / len(p.threads) if p.threads else 0.0
            for k, t in enumerate(p.threads):
                lines.append(f" {p.pid:4d}  {p.nice:2d}  {p.weight:6d}  "
                             f"{100 * shares[f'{p.name}.{k}']:5.1f}  {100 * per:5.1f}  "
                             f"{t:<9}  {p.name}")
        total = ", ".join(f"{n} {100 * self.share(n):.1f}%" for n in self.processes)
        lines.append(f"total by process: {total}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        r = self.result
        return (f"HostRun({r.scheduler} on {r.pcpus} pCPU(s), {r.duration_us / 1000:g} ms)\n"
                + self.top())
