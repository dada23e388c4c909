"""Workloads: what a vCPU does, as a sequence of *phases* ``(run_us, then_us)``.

A phase says: consume ``run_us`` µs of CPU time (≥ 1), then

- ``then_us > 0`` — block (sleep, wait for I/O) for that many µs of wall time;
- ``then_us == 0`` — go straight on with the next phase (stay runnable);
- ``then_us == YIELD`` — give up the pCPU voluntarily but stay runnable
  (the scheduler's ``yield_`` hook is called; cf. Xen ``SCHEDOP_yield``).

When the phases run out, the vCPU exits (the scheduler's ``remove_vcpu`` is
called).  A vCPU becomes runnable for the first time at ``start_us``.

Every workload is a small frozen spec with a ``phases(rng)`` generator; the
simulator gives each vCPU its own generator, derived from the run's seed and
the vCPU's name, so adding a vCPU never changes what the others do.  All
randomness comes from that generator (:func:`virtcore.rng.make_rng`).

Simplification: run phases are measured in CPU time and blocking happens only
at the end of a run phase, i.e. only while running — as in a real guest,
which blocks by executing HLT/SCHEDOP_block on its own vCPU.

>>> from itertools import islice
>>> from virtcore.rng import make_rng
>>> list(islice(IOBound(run_us=1000, block_us=4000, random=False).phases(make_rng(0)), 2))
[(1000, 4000), (1000, 4000)]
>>> all(r >= 1 and b >= 1 for r, b in islice(Interactive().phases(make_rng(1)), 50))
True
"""

from __future__ import annotations

import random as _random_module  # for the type only; never the global state
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from virtcore.errors import ConfigurationError

#: A run phase longer than any simulation: "CPU-bound forever".
FOREVER = 1 << 62
#: ``then_us`` value meaning "yield the pCPU, stay runnable".
YIELD = -1


@runtime_checkable
class Workload(Protocol):
    """Anything with ``start_us`` and a ``phases(rng)`` iterator of ``(run_us, then_us)``.

    >>> isinstance(CPUBound(), Workload)  # a structural type: no base class needed
    True
    """

    @property
    def start_us(self) -> int:
        """When the vCPU first becomes runnable (µs)."""
        ...  # pragma: no cover

    def phases(self, rng: _random_module.Random) -> Iterator[tuple[int, int]]:
        """Yield ``(run_us, then_us)`` phases."""
        ...  # pragma: no cover


def _exp(rng: _random_module.Random, mean: int) -> int:
    """An exponential draw with the given mean, rounded, at least 1 µs."""
    return max(1, round(rng.expovariate(1.0 / mean)))


@dataclass(frozen=True)
class CPUBound:
    """Always runnable: one endless run phase (a CPU hog, 计算密集型).

    >>> from virtcore.rng import make_rng
    >>> next(CPUBound().phases(make_rng(0))) == (FOREVER, 0)
    True
    """

    start_us: int = 0

    def phases(self, rng: _random_module.Random) -> Iterator[tuple[int, int]]:
        """One phase that never ends within a simulation."""
        yield (FOREVER, 0)


@dataclass(frozen=True)
class IOBound:
    """Run about ``run_us``, block about ``block_us``, repeat (I/O 密集型).

    With ``random=True`` (default) both are exponential with those means.

    >>> from virtcore.rng import make_rng
    >>> from itertools import islice
    >>> ph = list(islice(IOBound(run_us=500, block_us=5000).phases(make_rng(3)), 2000))
    >>> 400 < sum(r for r, _ in ph) / len(ph) < 600
    True
    """

    run_us: int = 1_000
    block_us: int = 4_000
    random: bool = True
    start_us: int = 0

    def phases(self, rng: _random_module.Random) -> Iterator[tuple[int, int]]:
        """Endless (run, block) pairs."""
        run, block = self.run_us, self.block_us
        if not self.random:
            while True:
                yield (run, block)
        while True:
            yield (_exp(rng, run), _exp(rng, block))


@dataclass(frozen=True)
class Interactive:
    """Latency-sensitive: short bursts (``burst_us``) after long think times (``think_us``).

    Like an editor or a shell: almost always asleep, but each wake-up wants the
    CPU *now*.  Both durations are exponential.

    >>> from virtcore.rng import make_rng
    >>> r, t = next(Interactive(burst_us=200, think_us=50_000).phases(make_rng(0)))
    >>> r < t
    True
    """

    burst_us: int = 300
    think_us: int = 30_000
    start_us: int = 0

    def phases(self, rng: _random_module.Random) -> Iterator[tuple[int, int]]:
        """Endless (burst, think) pairs."""
        while True:
            yield (_exp(rng, self.burst_us), _exp(rng, self.think_us))


@dataclass(frozen=True)
class Mixed:
    """Alternates a long CPU burst (mean ``cpu_us``) with ``io_cycles`` I/O cycles.

    Each I/O cycle runs about ``run_us`` then blocks about ``block_us`` — e.g.
    a build that compiles (CPU) then reads many files (I/O).

    >>> from itertools import islice
    >>> from virtcore.rng import make_rng
    >>> ph = list(islice(Mixed(cpu_us=20_000, io_cycles=3).phases(make_rng(0)), 4))
    >>> ph[0][1], all(b > 0 for _, b in ph[1:])
    (0, True)
    """

    cpu_us: int = 20_000
    run_us: int = 1_000
    block_us: int = 4_000
    io_cycles: int = 5
    start_us: int = 0

    def phases(self, rng: _random_module.Random) -> Iterator[tuple[int, int]]:
        """Endless CPU burst, then I/O cycles."""
        while True:
            yield (_exp(rng, self.cpu_us), 0)
            for _ in range(self.io_cycles):
                yield (_exp(rng, self.run_us), _exp(rng, self.block_us))


@dataclass(frozen=True)
class Phases:
    """An explicit list of ``(run_us, then_us)`` phases — for traces worked by hand.

    Parameters
    ----------
    steps : tuple of (int, int)
        The phases; ``run_us >= 1``, ``then_us >= 0`` or :data:`YIELD`.
    repeat : bool
        Start again from the first phase when done (else the vCPU exits).

    >>> from virtcore.rng import make_rng
    >>> list(Phases(((5_000, 1_000), (2_000, 0))).phases(make_rng(0)))
    [(5000, 1000), (2000, 0)]
    """

    steps: tuple[tuple[int, int], ...]
    repeat: bool = False
    start_us: int = 0

    def __post_init__(self) -> None:
        steps = tuple((int(r), int(t)) for r, t in self.steps)
        for r, t in steps:
            if r < 1 or (t < 0 and t != YIELD):
                raise ConfigurationError(
                    f"phase ({r}, {t}): run_us must be >= 1 and then_us >= 0 or YIELD"
                )
        if self.repeat and not steps:
            raise ConfigurationError("a repeating Phases workload needs at least one phase")
        object.__setattr__(self, "steps", steps)

    def phases(self, rng: _random_module.Random) -> Iterator[tuple[int, int]]:
        """The given phases, once or forever."""
        while True:
            yield from self.steps
            if not self.repeat:
                return
