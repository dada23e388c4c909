"""What an assignment is made of: graded parts (one per nbgrader solution cell) and their checks.

An :class:`AssignmentSpec` is pure data — the name nbgrader knows the
assignment by, the notebook file, and its :class:`Part` objects.  A part is
one graded solution cell (its nbgrader ``grade_id``) worth ``points``, split
over :class:`Check` objects.  A check is *visible* (public cases, the same
for every student; the notebook shows them) or *hidden* (cases derived from
the course secret and the student id; only its name, pass/fail and a message
naming the first divergence reach the student).

The code that generates cases, runs the student's implementation and
compares it with the reference lives in the assignment's module
(:mod:`autograder.assignments`); this module only describes.

>>> c = Check("public", 4, hidden=False, description="three public guests")
>>> p = Part("handlers_io", 10, (c, Check("hidden", 6, hidden=True)), "in/out",
...          requires=("handle_in", "handle_out"))
>>> spec = AssignmentSpec("a9_demo", "demo.ipynb", (p,), "Demo")
>>> spec.points, spec.part("handlers_io").hidden_points, [k.name for k in spec.checks()]
(10, 6, ['public', 'hidden'])
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from virtcore.errors import VirtcoreError

__all__ = ["AssignmentSpec", "Check", "GradingError", "Part"]


class GradingError(VirtcoreError):
    """The grading machinery was misused (unknown assignment, bad spec, unreadable source notebook).

    Problems of a *submission* are never raised: they become statuses and reasons.

    >>> issubclass(GradingError, VirtcoreError)
    True
    """


@dataclass(frozen=True)
class Check:
    """One check of a part: ``points`` earned in proportion to the cases passed.

    Parameters
    ----------
    name : str
        Unique within the assignment (it also seeds the check's hidden cases).
    points : float
        Points when every case passes (partial credit: fraction of cases passed).
    hidden : bool
        Hidden checks use per-student cases and are never shown in the release.
    description : str
        One line for the feedback.

    >>> Check("io_public", 3.0, False, "public guests").hidden
    False
    """

    name: str
    points: float
    hidden: bool
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise GradingError(f"a check needs a non-empty name, not {self.name!r}")
        if isinstance(self.points, bool) or not isinstance(self.points, (int, float)) or (
                self.points < 0):
            raise GradingError(f"check {self.name!r}: points must be >= 0, not {self.points!r}")


@dataclass(frozen=True)
class Part:
    """A graded part: one nbgrader solution cell (``grade_id``) and its checks.

    ``points`` must equal the sum of the checks' points.  ``requires`` names
    what the part's cell must define (e.g. ``handle_cli``; a class name) —
    shown in messages when something is missing.

    >>> Part("x", 3, (Check("a", 1, False), Check("b", 1, True)))
    Traceback (most recent call last):
    ...
    autograder.spec.GradingError: part 'x': points 3 differ from the sum of its checks' points 2
    """

    grade_id: str
    points: float
    checks: tuple[Check, ...]
    description: str = ""
    requires: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        total = sum(c.points for c in self.checks)
        if abs(total - self.points) > 1e-9:
            raise GradingError(f"part {self.grade_id!r}: points {self.points:g} differ from the"
                               f" sum of its checks' points {total:g}")
        names = [c.name for c in self.checks]
        if len(set(names)) != len(names):
            raise GradingError(f"part {self.grade_id!r}: two checks share a name: {names}")

    @property
    def hidden_points(self) -> float:
        """Points of the hidden checks."""
        return sum(c.points for c in self.checks if c.hidden)

    def check(self, name: str) -> Check:
        """The check called ``name`` (GradingError if none)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise GradingError(f"part {self.grade_id!r} has no check {name!r}")


@dataclass(frozen=True)
class AssignmentSpec:
    """An assignment: its nbgrader id, notebook file, title and graded parts.

    Parameters
    ----------
    name : str
        nbgrader assignment id, e.g. ``"a1_trap_and_emulate"``.
    notebook : str
        Notebook file name inside the assignment folder.
    parts : tuple of Part
        In notebook order; grade ids and check names unique.
    title : str
    """

    name: str
    notebook: str
    parts: tuple[Part, ...]
    title: str = ""

    def __post_init__(self) -> None:
        ids = [p.grade_id for p in self.parts]
        if len(set(ids)) != len(ids):
            raise GradingError(f"assignment {self.name!r}: duplicate grade ids {ids}")
        checks = [c.name for p in self.parts for c in p.checks]
        if len(set(checks)) != len(checks):
            raise GradingError(f"assignment {self.name!r}: check names must be unique: {checks}")

    @property
    def points(self) -> float:
        """Total points."""
        return sum(p.points for p in self.parts)

    def part(self, grade_id: str) -> Part:
        """The part with ``grade_id`` (GradingError if none)."""
        for p in self.parts:
            if p.grade_id == grade_id:
                return p
        raise GradingError(f"assignment {self.name!r} has no part {grade_id!r}")

    def checks(self) -> Iterator[Check]:
        """Every check, part by part."""
        for p in self.parts:
            yield from p.checks
