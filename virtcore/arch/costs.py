"""Pricing event paths with the course's one cost model, and comparisons.

The notes rank the architectures by speed: OS-level fastest, bare-metal
(Type 1) between, hosted (Type 2) slowest (S1.7, S1.8), and hybrid faster than
hosted (S1.5).  This module prices the paths of :mod:`virtcore.arch.paths`
and shows when that ordering holds and what changes it: computation costs the
same everywhere (it runs directly on the CPU), so the ordering comes from the
*mix* of events — above all I/O — and from hardware assist, which makes some
events cheaper and others dearer.

The prices are those of :data:`virtcore.costs.DEFAULT_COSTS`, the course's one
cost model (see :meth:`virtcore.costs.Costs.describe`): **every number is a
teaching assumption**, roughly nanoseconds, order of magnitude only.  So any
ranking computed here follows from those assumptions — change a price and the
ranking may change (:func:`ordering_sweep` shows where).  :class:`CostModel`
is kept as this package's name for the same prices; it *is* a
:class:`~virtcore.costs.Costs` (a subclass adding two lookup methods), so
chapter 1, chapter 2 and the KVM walkthrough price a trap, a VM exit or a
world switch identically.

>>> mix = {Event.COMPUTE: 0.5, Event.IO: 0.5}
>>> [name for name, _ in compare_architectures(mix)]
['os-level', 'bare-metal', 'hosted']
>>> [name for name, _ in compare_architectures({Event.COMPUTE: 1})]
['hosted', 'bare-metal', 'os-level']
>>> len({cost for _, cost in compare_architectures({Event.COMPUTE: 1})})
1
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from virtcore.arch.paths import CrossingKind, Event, Path, Step, coerce_event, event_path
from virtcore.arch.stacks import (  # noqa: F401  (hosted, os_level: doctests)
    ArchitectureError,
    Stack,
    all_stacks,
    bare_metal,
    hosted,
    os_level,
)
from virtcore.costs import DEFAULT_COSTS, Costs

__all__ = [
    "DEFAULT_MODEL",
    "CostModel",
    "CostTable",
    "Crossover",
    "RankChange",
    "Sweep",
    "assist_configs",
    "compare_architectures",
    "cost_breakdown",
    "cost_table",
    "crossing_price",
    "normalize_mix",
    "ordering_sweep",
    "path_cost",
    "workload_cost",
]

#: A workload: events (or their names) mapped to fractions or counts.
Mix = Mapping[Event, float] | Mapping[str, float] | Mapping[Event | str, float]

#: The field of :class:`~virtcore.costs.Costs` that prices each crossing kind.
_FIELD = {kind: ("instruction" if kind is CrossingKind.DIRECT else kind.value)
          for kind in CrossingKind}


def crossing_price(costs: Costs, kind: CrossingKind | str) -> float:
    """Price of one crossing of ``kind`` under ``costs`` (any :class:`~virtcore.costs.Costs`).

    >>> crossing_price(DEFAULT_COSTS, "world_switch") == DEFAULT_COSTS.world_switch
    True
    >>> crossing_price(DEFAULT_COSTS, CrossingKind.DIRECT) == DEFAULT_COSTS.instruction
    True
    """
    return getattr(costs, _FIELD[CrossingKind(kind)])  # type: ignore[no-any-return]


def step_price(costs: Costs, step: Step) -> float:
    """Price of one step: its kind's price × its count.

    >>> step_price(DEFAULT_COSTS, Step("a", "hardware", CrossingKind.MEMORY_REFERENCE, count=24))
    480
    """
    return crossing_price(costs, step.kind) * step.count


@dataclass(frozen=True)
class CostModel(Costs):
    """The course's cost model (:class:`virtcore.costs.Costs`) with lookups by crossing kind.

    Same fields, same defaults, same assumptions as
    :data:`virtcore.costs.DEFAULT_COSTS`; override any field with
    :func:`dataclasses.replace`.  Every function here also accepts a plain
    :class:`~virtcore.costs.Costs`.

    >>> m = DEFAULT_MODEL
    >>> m.cost(CrossingKind.WORLD_SWITCH) > m.cost(CrossingKind.CONTEXT_SWITCH)
    True
    >>> import dataclasses
    >>> dataclasses.replace(DEFAULT_MODEL, world_switch=0).world_switch
    0
    >>> all(getattr(DEFAULT_MODEL, f) == getattr(DEFAULT_COSTS, f) for f in Costs.assumptions())
    True
    >>> CostModel(trap=-1)
    Traceback (most recent call last):
    ...
    virtcore.errors.ConfigurationError: cost 'trap' must be a finite number >= 0, got -1
    """

    @property
    def direct(self) -> float:
        """The price of one instruction run directly (the field ``instruction``)."""
        return self.instruction

    def cost(self, kind: CrossingKind | str) -> float:
        """Price of one crossing of ``kind``.

        >>> DEFAULT_MODEL.cost("syscall")
        100
        """
        return crossing_price(self, kind)

    def step_cost(self, step: Step) -> float:
        """Price of one step (its kind's price × its count)."""
        return step_price(self, step)

    @classmethod
    def from_costs(cls, costs: Costs) -> CostModel:
        """The same prices as ``costs``, as a :class:`CostModel`.

        >>> CostModel.from_costs(DEFAULT_COSTS) == DEFAULT_MODEL
        True
        """
        if isinstance(costs, CostModel):
            return costs
        return cls(**{f: getattr(costs, f) for f in Costs.assumptions()})


#: The course's default prices (:data:`virtcore.costs.DEFAULT_COSTS`) as a :class:`CostModel`.
DEFAULT_MODEL = CostModel.from_costs(DEFAULT_COSTS)


def path_cost(path: Path, model: Costs = DEFAULT_MODEL) -> float:
    """Total price of a path: the sum of its steps' prices.

    >>> p = event_path(bare_metal(), Event.PRIVILEGED_INSTRUCTION)
    >>> path_cost(p) == 2 * DEFAULT_MODEL.trap + DEFAULT_MODEL.emulate
    True
    """
    return sum(step_price(model, s) for s in path.steps)


def cost_breakdown(path: Path, model: Costs = DEFAULT_MODEL) -> dict[CrossingKind, float]:
    """Price of a path split by crossing kind (for stacked bars); sums to :func:`path_cost`.

    >>> b = cost_breakdown(event_path(bare_metal(), Event.IO, hardware_assist=True))
    >>> b[CrossingKind.VM_EXIT], b[CrossingKind.DEVICE]
    (800, 5000)
    """
    out: dict[CrossingKind, float] = {}
    for s in path.steps:
        out[s.kind] = out.get(s.kind, 0) + step_price(model, s)
    return out


def normalize_mix(mix: Mix) -> dict[Event, float]:
    """Check a mix and turn it into fractions that sum to 1.

    A mix maps events to fractions or counts (any non-negative weights).

    >>> normalize_mix({"io": 1, "compute": 3})
    {<Event.IO: 'io'>: 0.25, <Event.COMPUTE: 'compute'>: 0.75}
    """
    checked = _checked_mix(mix)
    total = sum(checked.values())
    return {e: w / total for e, w in checked.items()}


def _checked_mix(mix: Mix) -> dict[Event, float]:
    if not isinstance(mix, Mapping) or not mix:
        raise ArchitectureError(f"a mix is a non-empty mapping of events to weights, got {mix!r}")
    out: dict[Event, float] = {}
    for e, w in mix.items():
        ev = coerce_event(e)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ArchitectureError(
                f"weight of {ev.value!r} must be a finite number >= 0, got {w!r}"
            )
        out[ev] = out.get(ev, 0) + w
    if sum(out.values()) <= 0:
        raise ArchitectureError("a mix needs at least one positive weight")
    return out


def workload_cost(
    stack: Stack,
    mix: Mix,
    model: Costs = DEFAULT_MODEL,
    *,
    hardware_assist: bool = False,
    guest: str | None = None,
) -> float:
    """Σ weight × path cost over the mix (fractions give a cost per event, counts a total).

    >>> workload_cost(os_level(), {Event.SYSCALL: 10})
    2000
    >>> workload_cost(hosted(), {"io": 1}) > workload_cost(bare_metal(), {"io": 1})
    True
    """
    checked = _checked_mix(mix)
    return sum(
        w * path_cost(event_path(stack, e, hardware_assist=hardware_assist, guest=guest), model)
        for e, w in checked.items()
        if w
    )


def _default_stacks(hardware_assist: bool) -> tuple[Stack, ...]:
    return tuple(s for s in all_stacks() if hardware_assist or not s.requires_hardware_assist)


def compare_architectures(
    mix: Mix,
    model: Costs = DEFAULT_MODEL,
    hardware_assist: bool = False,
    *,
    stacks: Sequence[Stack] | None = None,
) -> list[tuple[str, float]]:
    """``(architecture, cost)`` pairs, cheapest first (ties keep the order of ``stacks``).

    By default the four architectures; without hardware assist the hybrid one
    is left out, since KVM cannot run without VT-x / AMD-V (S1.5).

    >>> compare_architectures({Event.IO: 1})
    [('os-level', 5300), ('bare-metal', 6600), ('hosted', 13000)]
    >>> [n for n, _ in compare_architectures({Event.IO: 1}, hardware_assist=True)]
    ['os-level', 'bare-metal', 'hybrid', 'hosted']
    """
    chosen = tuple(stacks) if stacks is not None else _default_stacks(hardware_assist)
    rows = [(s.name, workload_cost(s, mix, model, hardware_assist=hardware_assist)) for s in chosen]
    return sorted(rows, key=lambda r: r[1])


@dataclass(frozen=True)
class CostTable:
    """Cost of each event in each stack — a table with a readable repr.

    >>> t = cost_table()
    >>> t["hosted"][Event.IO] > t["bare-metal"][Event.IO]
    True
    """

    hardware_assist: bool
    events: tuple[Event, ...]
    rows: tuple[tuple[str, tuple[float, ...]], ...]

    def __getitem__(self, name: str) -> dict[Event, float]:
        for n, costs in self.rows:
            if n == name:
                return dict(zip(self.events, costs))
        raise ArchitectureError(f"no row {name!r}; rows: {', '.join(n for n, _ in self.rows)}")

    def __iter__(self) -> Iterator[tuple[str, dict[Event, float]]]:
        for n, costs in self.rows:
            yield n, dict(zip(self.events, costs))

    def __repr__(self) -> str:
        assist = "with" if self.hardware_assist else "without"
        widths = [max(len(e.value), 8) + 2 for e in self.events]
        head = f"{'':<14}" + "".join(f"{e.value:>{w}}" for e, w in zip(self.events, widths))
        lines = [f"cost per event, {assist} hardware assist (teaching units)", head]
        for n, costs in self.rows:
            lines.append(f"{n:<14}" + "".join(f"{c:>{w}g}" for c, w in zip(costs, widths)))
        return "\n".join(lines)


_EVENTS = (Event.COMPUTE, Event.SYSCALL, Event.PRIVILEGED_INSTRUCTION, Event.IO, Event.TLB_MISS)


def cost_table(
    model: Costs = DEFAULT_MODEL,
    hardware_assist: bool = False,
    *,
    stacks: Sequence[Stack] | None = None,
) -> CostTable:
    """The price of every event in every architecture.

    >>> cost_table(hardware_assist=True)["hybrid"][Event.TLB_MISS]
    480
    """
    chosen = tuple(stacks) if stacks is not None else _default_stacks(hardware_assist)
    rows = tuple(
        (
            s.name,
            tuple(
                path_cost(event_path(s, e, hardware_assist=hardware_assist), model) for e in _EVENTS
            ),
        )
        for s in chosen
    )
    return CostTable(hardware_assist, _EVENTS, rows)


# -- sweeps: when does the ordering change? -------------------------------------------


@dataclass(frozen=True)
class RankChange:
    """Between two neighbouring sweep points the ranking changed.

    >>> s = ordering_sweep(Event.IO, steps=3)
    >>> s.changes[0].before
    'hosted = bare-metal = os-level'
    """

    fraction_before: float
    fraction_after: float
    before: str
    after: str


@dataclass(frozen=True)
class Crossover:
    """Two configurations cost the same at ``fraction`` and swap order there.

    >>> Crossover("a", "b", 0.5).fraction
    0.5
    """

    a: str
    b: str
    fraction: float


@dataclass(frozen=True)
class Sweep:
    """Costs of several configurations as one event's share of the mix goes from 0 to 1.

    At fraction *f* the mix is ``f × vary + (1 − f) × base`` (base
    normalised), so each cost is a straight line in *f*; ``crossovers`` are
    the exact points where two lines cross inside (0, 1), ``changes`` the
    sampled points where the ranking (with ties) changes.

    >>> s = ordering_sweep(Event.IO, steps=5)
    >>> s.fractions
    (0.0, 0.25, 0.5, 0.75, 1.0)
    >>> s.ranking(0.0), s.ranking(1.0)
    ('hosted = bare-metal = os-level', 'os-level < bare-metal < hosted')
    """

    vary: Event
    base: tuple[tuple[Event, float], ...]
    hardware_assist: bool | None
    fractions: tuple[float, ...]
    labels: tuple[str, ...]
    costs: tuple[tuple[float, ...], ...]  # one tuple per label, one value per fraction
    rankings: tuple[str, ...]
    changes: tuple[RankChange, ...]
    crossovers: tuple[Crossover, ...]

    def cost(self, label: str) -> tuple[float, ...]:
        """The cost curve of one configuration.

        >>> ordering_sweep(Event.IO, steps=2).cost("os-level")
        (1.0, 5300.0)
        """
        try:
            return self.costs[self.labels.index(label)]
        except ValueError:
            raise ArchitectureError(f"no configuration {label!r}; have {self.labels}") from None

    def ranking(self, fraction: float) -> str:
        """The ranking at a sampled fraction, e.g. ``'os-level < bare-metal = hosted'``.

        >>> ordering_sweep(Event.SYSCALL, steps=2, hardware_assist=True).ranking(1.0)
        'hosted = bare-metal = os-level = hybrid'
        """
        for f, r in zip(self.fractions, self.rankings):
            if math.isclose(f, fraction, abs_tol=1e-12):
                return r
        raise ArchitectureError(f"{fraction} is not a sampled fraction; have {self.fractions}")

    def rows(self) -> list[dict[str, float]]:
        """One dict per sample: ``{'fraction': f, label: cost, ...}`` — for a plot or a DataFrame.

        >>> ordering_sweep(Event.IO, steps=2).rows()[1]["hosted"]
        13000.0
        """
        return [
            {"fraction": f, **{lab: self.costs[j][i] for j, lab in enumerate(self.labels)}}
            for i, f in enumerate(self.fractions)
        ]

    def __repr__(self) -> str:
        assist = {True: "with", False: "without", None: "mixed"}[self.hardware_assist]
        base = ", ".join(f"{e.value} {w:g}" for e, w in self.base)
        lines = [f"Sweep of {self.vary.value} against ({base}), {assist} hardware assist"]
        width = max(len(lab) for lab in self.labels)
        lines.append(
            f"  {'fraction':>8}  "
            + "  ".join(f"{lab:>{width}}" for lab in self.labels)
            + "  ranking"
        )
        for i, f in enumerate(self.fractions):
            cells = "  ".join(f"{self.costs[j][i]:>{width}.6g}" for j in range(len(self.labels)))
            lines.append(f"  {f:>8.3g}  {cells}  {self.rankings[i]}")
        for c in self.crossovers:
            lines.append(f"  crossover: {c.a} and {c.b} swap at fraction {c.fraction:.4g}")
        return "\n".join(lines)


def _rank_string(labels: Sequence[str], costs: Sequence[float]) -> str:
    order = sorted(range(len(labels)), key=lambda i: costs[i])
    out = labels[order[0]]
    for prev, cur in itertools.pairwise(order):
        same = math.isclose(costs[prev], costs[cur], rel_tol=1e-9, abs_tol=1e-9)
        out += (" = " if same else " < ") + labels[cur]
    return out


def assist_configs(stack: Stack) -> list[tuple[str, Stack, bool]]:
    """``stack`` without and with hardware assist, as two sweep configurations.

    >>> [label for label, _, _ in assist_configs(bare_metal())]
    ['bare-metal, software', 'bare-metal, VT-x/AMD-V']
    """
    return [(f"{stack.name}, software", stack, False), (f"{stack.name}, VT-x/AMD-V", stack, True)]


def ordering_sweep(
    vary: Event | str = Event.IO,
    *,
    base: Mix | None = None,
    steps: int = 11,
    model: Costs = DEFAULT_MODEL,
    hardware_assist: bool = False,
    configs: Sequence[tuple[str, Stack, bool]] | None = None,
) -> Sweep:
    """Sweep one event's share of the mix from 0 to 1 and find where the ordering changes.

    Parameters
    ----------
    vary : Event or str
        The event whose share grows (I/O by default).
    base : mix, optional
        What the rest of the workload is; pure computation by default.
    steps : int
        Number of sample points (at least 2), evenly spaced from 0 to 1.
    model : Costs
    hardware_assist : bool
        For the default configurations (the architectures).
    configs : sequence of (label, stack, hardware_assist), optional
        Compare these instead, e.g. :func:`assist_configs` of one stack.

    Returns
    -------
    Sweep

    With the default model the architectures tie on pure computation and
    separate as soon as there is any I/O (the notes' ordering appears).  With
    hardware assist as the varied *configuration*, the order really flips: a
    system-call-heavy workload favours VT-x, a privileged-instruction-heavy one
    the software VMM (as Adams & Agesen found for first-generation VT-x,
    [AA06]):

    >>> s = ordering_sweep(Event.PRIVILEGED_INSTRUCTION, base={Event.SYSCALL: 1},
    ...                    configs=assist_configs(bare_metal()))
    >>> s.crossovers
    (Crossover(a='bare-metal, software', b='bare-metal, VT-x/AMD-V', fraction=0.6),)
    >>> s.ranking(0.0)
    'bare-metal, VT-x/AMD-V < bare-metal, software'
    >>> s.ranking(1.0)
    'bare-metal, software < bare-metal, VT-x/AMD-V'
    """
    ev = coerce_event(vary)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ArchitectureError(f"steps must be an int >= 2, got {steps!r}")
    base_mix = normalize_mix(base if base is not None else {Event.COMPUTE: 1})
    if configs is None:
        configs = [(s.name, s, hardware_assist) for s in _default_stacks(hardware_assist)]
        assist_flag: bool | None = hardware_assist
    else:
        flags = {a for _, _, a in configs}
        assist_flag = flags.pop() if len(flags) == 1 else None
    labels = tuple(label for label, _, _ in configs)
    if len(set(labels)) != len(labels) or not labels:
        raise ArchitectureError(f"configuration labels must be unique and non-empty: {labels}")

    b_cost = [workload_cost(s, base_mix, model, hardware_assist=a) for _, s, a in configs]
    v_cost = [path_cost(event_path(s, ev, hardware_assist=a), model) for _, s, a in configs]
    fractions = tuple(i / (steps - 1) for i in range(steps))
    costs = tuple(
        tuple(float((1 - f) * b + f * v) for f in fractions) for b, v in zip(b_cost, v_cost)
    )
    rankings = tuple(_rank_string(labels, [c[i] for c in costs]) for i in range(steps))
    changes = tuple(
        RankChange(fractions[i - 1], fractions[i], rankings[i - 1], rankings[i])
        for i in range(1, steps)
        if rankings[i] != rankings[i - 1]
    )
    crossovers = []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            db = b_cost[i] - b_cost[j]
            dv = v_cost[i] - v_cost[j]
            if db * dv < 0:  # strictly opposite signs: the lines cross inside (0, 1)
                crossovers.append(Crossover(labels[i], labels[j], db / (db - dv)))
    crossovers.sort(key=lambda c: c.fraction)
    return Sweep(
        ev,
        tuple(base_mix.items()),
        assist_flag,
        fractions,
        labels,
        costs,
        rankings,
        changes,
        tuple(crossovers),
    )
