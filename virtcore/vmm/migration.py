"""Live migration by pre-copy (预拷贝): copy memory while the guest runs, then stop and copy.

Clark et al., "Live Migration of Virtual Machines" [CLARK05]:
round 0 copies every page while the VM keeps running; each later round
copies the pages the guest dirtied during the previous round; when few
enough remain (or after too many rounds) the VM is paused, the last dirty
pages and the CPU and device state are copied (*stop-and-copy*), and the VM
resumes on the target.  The pause is the *downtime* — "as low as 60ms" in
the paper.

Two forms here:

- :func:`precopy` — a pure model with rates (pages/s), for plots and
  exercises.  Each round lasts ``pages_sent / bandwidth`` seconds and the
  guest dirties ``dirty_rate`` *distinct* pages per second of it, drawn
  (seeded) from its writable working set.  So the dirty set shrinks by the
  factor ``dirty_rate / bandwidth`` per round — and when the guest dirties
  pages at least as fast as the link sends them, it never shrinks: the
  model stops after ``max_rounds`` with ``converged=False`` instead of
  looping.
- :func:`live_migrate` — a real migration of a running VM between two
  :class:`~virtcore.vmm.Hypervisor` hosts of the simulation.  The dirty log
  is kept the classic way by default: every page of the guest is
  write-protected in the VMM's table, the guest's first write to a page
  faults into the VMM, which logs the page and makes it writable again; each
  round reads and clears the log and protects the logged pages again —
  Xen's log-dirty mode (``XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY``,
  ``..._CLEAN``) and KVM's ``KVM_MEM_LOG_DIRTY_PAGES`` with
  ``KVM_GET_DIRTY_LOG`` [XEN-DOMCTL, KVM-API, KVM-H].  The result counts those
  write faults.  ``dirty_log="d-bit"`` reads the dirty bits of the VMM's
  table instead, the later hardware method (EPT dirty flags, Page-Modification
  Logging [SDM]).  The guest keeps running during the rounds.
- :func:`migrate` — what the management call does with each state: live
  pre-copy for a running VM; a paused VM is copied as it is and stays paused
  on the target; an inactive one (defined or shut off) moves only its
  definition (``virsh migrate --offline --persistent``) [VIRSH].

>>> r = precopy(memory_pages=1000, dirty_rate=100, bandwidth=1000, stop_threshold=5, seed=1)
>>> r.converged, [x.pages_sent for x in r.rounds], r.stop_and_copy_pages
(True, [1000, 100, 10], 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from virtcore.errors import ConfigurationError
from virtcore.rng import make_rng
from virtcore.vmm.lifecycle import IllegalTransition, VMState, next_state

if TYPE_CHECKING:
    import random

    from virtcore.vmm.hypervisor import Hypervisor
    from virtcore.vmm.vm import VM, GuestMemory

__all__ = ["MigrationResult", "PrecopyResult", "PrecopyRound", "live_migrate", "migrate",
           "precopy"]


@dataclass(frozen=True)
class PrecopyRound:
    """One iterative round: pages sent while the guest ran, how long, what it dirtied meanwhile.

    >>> print(precopy(100, 10, 100).rounds[0])
    round   0: sent      100 pages in    1.0000 s, dirtied       10
    """

    index: int
    pages_sent: int
    duration: float
    pages_dirtied: int
    dirty_pages: tuple[int, ...] = ()  # which pages (seeded), when recorded

    def __str__(self) -> str:
        return (f"round {self.index:3d}: sent {self.pages_sent:8d} pages in"
                f" {self.duration:9.4f} s, dirtied {self.pages_dirtied:8d}")


@dataclass(frozen=True)
class PrecopyResult:
    """The outcome of :func:`precopy`.

    Attributes
    ----------
    rounds : tuple of PrecopyRound
        The live rounds (round 0 sends all memory).
    stop_and_copy_pages : int
        Pages sent with the VM paused.
    total_pages, total_time, downtime : int, float, float
        Pages sent in all; seconds from start to resume; seconds paused.
    converged : bool
        True when the dirty set fell to the threshold; False when it stopped
        because of ``max_rounds``.
    reason : str

    Examples
    --------
    >>> precopy(100, 10, 100, stop_threshold=0)
    PrecopyResult(converged, 3 rounds, 111 pages sent, total 1.11 s, downtime 0 s)
    """

    rounds: tuple[PrecopyRound, ...]
    stop_and_copy_pages: int
    total_pages: int
    total_time: float
    downtime: float
    converged: bool
    reason: str
    memory_pages: int
    dirty_rate: float
    bandwidth: float

    @property
    def pages_per_round(self) -> list[int]:
        """Pages sent in each live round, then in the stop-and-copy."""
        return [r.pages_sent for r in self.rounds] + [self.stop_and_copy_pages]

    def __repr__(self) -> str:
        return (f"PrecopyResult({'converged' if self.converged else 'NOT converged'},"
                f" {len(self.rounds)} rounds, {self.total_pages} pages sent,"
                f" total {self.total_time:.4g} s, downtime {self.downtime:.4g} s)")

    def __str__(self) -> str:
        lines = [repr(self),
                 f"  memory {self.memory_pages} pages, dirty rate {self.dirty_rate:g} pages/s,"
                 f" bandwidth {self.bandwidth:g} pages/s"]
        lines += ["  " + str(r) for r in self.rounds]
        lines.append(f"  stop-and-copy: {self.stop_and_copy_pages} pages,"
                     f" downtime {self.downtime:.4g} s")
        lines.append(f"  {self.reason}")
        return "\n".join(lines)


def _check_number(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigurationError(f"{name} must be a number, not {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigurationError(f"{name} must be {'> 0' if positive else '>= 0'}, not {value!r}")
    return float(value)


def precopy(memory_pages: int, dirty_rate: float, bandwidth: float, *,
            stop_threshold: int = 50, max_rounds: int = 30,
            working_set: int | None = None, record_pages: bool = False,
            seed: int | random.Random | None = None) -> PrecopyResult:
    """Model pre-copy live migration round by round.

    Parameters
    ----------
    memory_pages : int
        Guest memory (round 0 sends all of it).
    dirty_rate : float
        Distinct pages the running guest dirties per second.
    bandwidth : float
        Pages the link sends per second.
    stop_threshold : int
        Stop-and-copy as soon as at most this many pages are dirty.
    max_rounds : int
        Live rounds allowed (round 0 included) before a forced stop-and-copy.
    working_set : int, optional
        The guest's writable working set (pages it writes at all); default
        all memory.  Dirtied pages are drawn from it.
    record_pages : bool
        Keep the (seeded) numbers of the dirtied pages in each round.
    seed : int or random.Random, optional
        Chooses *which* pages are dirtied; the counts do not depend on it.

    Returns
    -------
    PrecopyResult

    Notes
    -----
    Each round lasting *t* seconds dirties ``min(W, dirty_rate·t)`` distinct
    pages (fractions carried to the next round), *W* the working set.  A
    simplification: real guests re-dirty hot pages, so their distinct dirty
    rate falls as a round gets longer.

    Examples
    --------
    >>> r = precopy(10_000, dirty_rate=2_000, bandwidth=1_000, max_rounds=5)
    >>> r.converged, len(r.rounds), r.stop_and_copy_pages
    (False, 5, 10000)
    >>> print(r.reason)  # doctest: +NORMALIZE_WHITESPACE
    did not converge: the guest dirties 2000 pages/s but the link sends only 1000 pages/s,
    so no round can shrink the dirty set; stopped after 5 rounds and copied the remaining
    10000 pages with the VM paused
    """
    if isinstance(memory_pages, bool) or not isinstance(memory_pages, int) or memory_pages < 1:
        raise ConfigurationError(f"memory_pages must be a positive int, not {memory_pages!r}")
    dirty_rate = _check_number("dirty_rate", dirty_rate)
    bandwidth = _check_number("bandwidth", bandwidth, positive=True)
    if (isinstance(stop_threshold, bool) or not isinstance(stop_threshold, int)
            or stop_threshold < 0):
        raise ConfigurationError(f"stop_threshold must be an int >= 0, not {stop_threshold!r}")
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
        raise ConfigurationError(f"max_rounds must be an int >= 1, not {max_rounds!r}")
    wws = memory_pages if working_set is None else working_set
    if isinstance(wws, bool) or not isinstance(wws, int) or not 0 <= wws <= memory_pages:
        raise ConfigurationError(f"working_set must be an int 0..memory_pages, not {working_set!r}")
    rng = make_rng(seed)
    rounds: list[PrecopyRound] = []
    to_send = memory_pages
    carry = 0.0
    converged = False
    while True:
        duration = to_send / bandwidth
        exact = dirty_rate * duration + carry
        whole = math.floor(exact + 1e-9)  # 107 × (1/107) is 0.999…: count it as 1
        count = min(wws, whole)
        carry = max(0.0, exact - whole) if count < wws else 0.0
        pages = tuple(sorted(rng.sample(range(wws), count))) if record_pages else ()
        rounds.append(PrecopyRound(len(rounds), to_send, duration, count, pages))
        to_send = count
        if count <= stop_threshold:
            converged = True
            break
        if len(rounds) >= max_rounds:
            break
    downtime = to_send / bandwidth
    total_pages = sum(r.pages_sent for r in rounds) + to_send
    total_time = sum(r.duration for r in rounds) + downtime
    n = len(rounds)
    if converged:
        reason = (f"converged: after {n} round{'s' if n != 1 else ''} only {to_send} dirty"
                  f" page{'s' if to_send != 1 else ''} remained (threshold {stop_threshold})")
    elif dirty_rate >= bandwidth:
        reason = (f"did not converge: the guest dirties {dirty_rate:g} pages/s but the link"
                  f" sends only {bandwidth:g} pages/s, so no round can shrink the dirty set;"
                  f" stopped after {n} rounds and copied the remaining {to_send} pages with"
                  " the VM paused")
    else:
        reason = (f"did not converge within {n} rounds: {to_send} pages were still dirty"
                  f" (threshold {stop_threshold}); copied them with the VM paused")
    return PrecopyResult(tuple(rounds), to_send, total_pages, total_time, downtime, converged,
                         reason, memory_pages, dirty_rate, bandwidth)


@dataclass(frozen=True)
class MigrationResult:
    """The outcome of :func:`live_migrate` (times in host ticks of the source).

    >>> MigrationResult("g", "a", "b", (4, 1), 0, 5, 100, 0, True, "")  # doctest: +ELLIPSIS
    MigrationResult(g: a -> b, converged, rounds [4, 1] + 0 stop-and-copy, 5 pages, ...)
    """

    vm: str
    source: str
    target: str
    rounds: tuple[int, ...]  # pages sent in each live round
    stop_and_copy_pages: int
    total_pages: int
    total_ticks: int
    downtime_ticks: int
    converged: bool
    reason: str
    write_faults: int = 0  # classic dirty logging: first writes trapped by write protection
    dirty_log: str = "write-protect"

    def __repr__(self) -> str:
        return (f"MigrationResult({self.vm}: {self.source} -> {self.target},"
                f" {'converged' if self.converged else 'NOT converged'}, rounds {list(self.rounds)}"
                f" + {self.stop_and_copy_pages} stop-and-copy, {self.total_pages} pages,"
                f" {self.total_ticks} ticks, downtime {self.downtime_ticks})")


def migrate(source: Hypervisor, vm: VM, target: Hypervisor, **options: object
            ) -> MigrationResult:
    """Move ``vm`` from ``source`` to ``target`` the way its state allows [VIRSH].

    RUNNING: live, by pre-copy (:func:`live_migrate`, which takes the
    options; other migrations ignore them).  PAUSED: every page copied while
    the VM does not run; it stays paused on the target.  DEFINED or SHUTOFF:
    offline — only the definition moves.  Any other state raises :class:`IllegalTransition`.

    >>> from virtcore.vmm import Hypervisor
    >>> a, b = Hypervisor(name="a"), Hypervisor(name="b")
    >>> _ = a.define("cold", 2)
    >>> r = a.migrate("cold", b)
    >>> r.total_pages, r.reason, "cold" in b.vms
    (0, 'offline: the VM is defined; only its definition moved to b', True)
    """
    _check_hosts(source, vm, target)
    state = vm.state
    if state is VMState.RUNNING:
        return live_migrate(source, vm, target, **options)  # type: ignore[arg-type]
    next_state(state, "migrate", vm=vm.name)  # IllegalTransition for other states
    pages = 0
    if state is VMState.PAUSED:
        assert vm.mem is not None
        new_mem = target.build_memory(vm)
        old_mem = vm.mem
        for page in range(vm.memory_pages):
            _copy_page(old_mem, new_mem, page)
        pages = vm.memory_pages
        source.free_memory(old_mem)
        vm.mem = None
        if source._on_cpu is not None and source._on_cpu.vm is vm:
            source._on_cpu = None
    source._transition(vm, "migrate", detail=f"to {target.name} ({state.value})")
    del source.vms[vm.name]
    vm.host = target
    target.vms[vm.name] = vm
    if state is VMState.PAUSED:
        target.attach_memory(vm, new_mem)
        reason = (f"paused: all {pages} pages copied while the VM did not run;"
                  f" it stays paused on {target.name}")
    else:
        reason = f"offline: the VM is {state.value}; only its definition moved to {target.name}"
    return MigrationResult(vm.name, source.name, target.name, (), pages, pages, 0, 0, True,
                           reason, 0, "none")


def _check_hosts(source: Hypervisor, vm: VM, target: Hypervisor) -> None:
    from virtcore.vmm.hypervisor import Hypervisor as _Hypervisor

    if not isinstance(target, _Hypervisor) or target is source:
        raise ConfigurationError("migrate to another Hypervisor")
    if vm.host is not source:
        raise ConfigurationError(f"VM {vm.name!r} is not on host {source.name}")
    if target.memory.frame_size != source.memory.frame_size:
        raise ConfigurationError("source and target hosts must use the same page size")
    other = target.vms.get(vm.name)
    if other is not None and other.state is not VMState.UNDEFINED:
        raise ConfigurationError(f"host {target.name} already has a VM named {vm.name!r}")


def _copy_page(old_mem: GuestMemory, new_mem: GuestMemory, page: int) -> None:
    shift = old_mem.page_bits
    src = (old_mem.p2m[page] << shift) >> 2
    words = old_mem.memory.words[src:src + (1 << (shift - 2))]
    new_mem.memory.load_words(new_mem.p2m[page] << shift, words)


def live_migrate(source: Hypervisor, vm: VM, target: Hypervisor, *, bandwidth: float = 0.05,
                 stop_threshold: int = 1, max_rounds: int = 8,
                 dirty_log: str = "write-protect") -> MigrationResult:
    """Move a running VM from ``source`` to ``target`` by pre-copy, while it keeps running.

    1. ``migrate``: the VM enters MIGRATING (it is still scheduled); the
       target allocates frames and builds the VM's map.
    2. Dirty logging starts: every guest page is write-protected in the
       VMM's table (relocation map or EPT), so the guest's first write to a
       page faults into the VMM, which logs it and lets the write go on
       (``result.write_faults`` counts these).  Round 0 copies every page;
       each later round copies the pages logged since the previous read —
       read-and-clear, protecting them again, then a TLB flush.  Copying
       one page takes ``1/bandwidth`` host ticks, during which the source
       host keeps running its VMs (this one included).
    3. When at most ``stop_threshold`` pages are dirty, or after
       ``max_rounds`` rounds: stop-and-copy — the VM does not run while
       the last dirty pages, its vCPU and device state move; the source
       frees its frames; the VM is RUNNING on the target.

    Parameters
    ----------
    source, target : Hypervisor
    vm : VM
        A RUNNING VM on ``source``.
    bandwidth : float
        Pages copied per host tick (0.05 = one page per 20 ticks).
    stop_threshold, max_rounds : int
    dirty_log : {"write-protect", "d-bit"}
        The classic write-protection log (default), or the dirty bits of
        the VMM's table.

    Returns
    -------
    MigrationResult

    Examples
    --------
    >>> from virtcore.vmm import Hypervisor
    >>> a, b = Hypervisor(name="a"), Hypervisor(name="b")
    >>> vm = a.create("web", 2, program="loop: jmp loop")
    >>> r = a.migrate("web", b)
    >>> r.converged, vm.host is b, "web" in a.vms, vm.state.name
    (True, True, False, 'RUNNING')
    """
    _check_hosts(source, vm, target)
    if bandwidth <= 0:
        raise ConfigurationError(f"bandwidth must be > 0 pages per tick, not {bandwidth!r}")
    if max_rounds < 1 or stop_threshold < 0:
        raise ConfigurationError("need max_rounds >= 1 and stop_threshold >= 0")
    if dirty_log not in ("write-protect", "d-bit"):
        raise ConfigurationError(f"dirty_log is 'write-protect' or 'd-bit', not {dirty_log!r}")
    if vm.state is not VMState.RUNNING:
        raise IllegalTransition(vm.state, "live-migrate", vm=vm.name)
    next_state(vm.state, "migrate", vm=vm.name)  # raises IllegalTransition when not RUNNING
    assert vm.mem is not None
    new_mem = target.build_memory(vm)  # before the state changes: may raise VMMError
    source._transition(vm, "migrate", detail=f"to {target.name}")
    old_mem = vm.mem
    per_page = 1.0 / bandwidth
    ticks = 0.0
    credit = 0.0

    def copy(page: int) -> None:
        _copy_page(old_mem, new_mem, page)

    def run_for(duration: float) -> None:
        nonlocal ticks, credit
        ticks += duration
        credit += duration
        whole = int(credit)
        if whole:
            credit -= whole
            source.run(whole)

    classic = dirty_log == "write-protect"

    def read_dirty() -> list[int]:
        pages = old_mem.collect_dirty_log() if classic else old_mem.collect_dirty()
        source.cpu.flush_tlb()  # cached translations may still allow writes unlogged
        return pages

    if classic:
        old_mem.start_log_dirty()
    read_dirty()  # start a fresh dirty log
    pending = list(range(vm.memory_pages))
    rounds: list[int] = []
    converged = False
    while True:
        for page in pending:
            copy(page)
            run_for(per_page)
        rounds.append(len(pending))
        pending = read_dirty()
        if len(pending) <= stop_threshold:
            converged = True
            break
        if len(rounds) >= max_rounds:
            break
    # stop-and-copy: the VM does not run from here on
    for page in pending:
        copy(page)
    write_faults = old_mem.write_faults
    if classic:
        old_mem.stop_log_dirty()
    downtime = len(pending) * per_page
    ticks += downtime
    source.free_memory(old_mem)
    vm.mem = None
    if source._on_cpu is not None and source._on_cpu.vm is vm:
        source._on_cpu = None
    del source.vms[vm.name]
    vm.host = target
    target.vms[vm.name] = vm
    target.attach_memory(vm, new_mem)
    new_mem.soft_dirty.clear()
    target._transition(vm, "migrated", detail=f"from {source.name}")
    target._settle(vm)
    if converged:
        reason = (f"converged after {len(rounds)} rounds: {len(pending)} dirty pages left"
                  f" (threshold {stop_threshold})")
    else:
        reason = (f"did not converge in {max_rounds} rounds: the guest kept {len(pending)}"
                  f" pages dirty (threshold {stop_threshold}); stopped and copied them")
    return MigrationResult(vm.name, source.name, target.name, tuple(rounds), len(pending),
                           sum(rounds) + len(pending), math.ceil(ticks), math.ceil(downtime),
                           converged, reason, write_faults, dirty_log)
