"""The instructor's view of a whole class: what ``python -m autograder report`` adds at scale.

With hundreds of students the interesting questions are about the class, not a notebook:
which checks most students fail (a hard part — or a wrong hidden case), how scores are
spread, how long grading takes per student (what a cluster must absorb, and which
submissions make it slow), and which submissions stand out and deserve a human look.
:func:`class_stats` answers them from the cached grading results
(``autograded/<student>/<assignment>/virtcore-result.json``), in one pass, linear in the
number of results; :func:`report_text` prints them and :func:`plot_times` draws the
grading-time distribution.

Outliers are found with robust statistics (median and median absolute deviation, MAD — a
few extreme submissions do not move them, unlike mean and standard deviation):

- **slow**: grading took more than ``median + 6 × 1.4826 × MAD`` and more than twice the
  median (an infinite loop that ran into the timeout, a memory hog);
- **faults**: a part ended ``timeout``, ``crashed`` or ``integrity`` (the code touched the
  reference, the checker…) — always worth reading;
- **score**: ``|score − median| > 3.5 × 1.4826 × MAD`` (the usual "modified z-score" rule
  [IGLEWICZ93]), when the MAD is not 0.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CheckStat", "ClassStats", "Outlier", "class_stats", "plot_times", "report_text"]

#: Part statuses that always make a submission an outlier worth reading.
FAULTS = ("timeout", "crashed", "integrity")
MAD_SCALE = 1.4826  # MAD → standard deviation for normally distributed data
SLOW_K = 6.0
SCORE_Z = 3.5


@dataclass(frozen=True)
class CheckStat:
    """How many graded submissions failed one check."""

    part: str
    check: str
    hidden: bool
    failed: int
    seen: int

    @property
    def rate(self) -> float:
        """Share of submissions failing it (a missing or broken part counts as failing)."""
        return self.failed / self.seen if self.seen else 0.0


@dataclass(frozen=True)
class Outlier:
    """A submission that stands out, and why."""

    student: str
    kind: str  # "slow", "fault", "score"
    why: str


@dataclass
class ClassStats:
    """Everything :func:`report_text` shows about one assignment's results."""

    assignment: str
    n: int
    max_score: float
    scores: list[float]
    seconds: list[float]
    checks: list[CheckStat]
    statuses: dict[str, int]
    outliers: list[Outlier] = field(default_factory=list)

    @property
    def mean(self) -> float:
        """Mean score."""
        return statistics.fmean(self.scores) if self.scores else 0.0

    @property
    def median(self) -> float:
        """Median score."""
        return statistics.median(self.scores) if self.scores else 0.0

    def time_quantile(self, q: float) -> float:
        """Grading-time quantile ``q`` (0..1), seconds (nearest rank)."""
        if not self.seconds:
            return 0.0
        s = sorted(self.seconds)
        return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]

    def histogram(self, bins: int = 10) -> list[tuple[float, float, int]]:
        """``(low, high, count)`` per score bin over ``[0, max_score]`` (last bin closed)."""
        if self.max_score <= 0:
            return []
        width = self.max_score / bins
        counts = [0] * bins
        for s in self.scores:
            counts[min(bins - 1, max(0, int(s / width)))] += 1
        return [(i * width, (i + 1) * width, c) for i, c in enumerate(counts)]


def _mad(xs: Sequence[float]) -> tuple[float, float]:
    med = statistics.median(xs)
    return med, statistics.median(abs(x - med) for x in xs)


def class_stats(spec: Any, results: Sequence[Any]) -> ClassStats:
    """Failure rate per check, score and time distributions, outliers, in one pass.

    ``spec`` is the :class:`~autograder.spec.AssignmentSpec`, ``results`` the
    :class:`~autograder.grade.NotebookResult` of each student.

    >>> from autograder.grade import NotebookResult, PartResult, CheckResult
    >>> from autograder.spec import AssignmentSpec, Part, Check
    >>> spec = AssignmentSpec("demo", "demo.ipynb",
    ...                       (Part("p", 2.0, (Check("c1", 1.0, False), Check("c2", 1.0, True))),))
    >>> def res(s, ok2, secs):
    ...     checks = [CheckResult("c1", 1, 1, True, "", False),
    ...               CheckResult("c2", 1 if ok2 else 0, 1, ok2, "", True)]
    ...     score = 1 + ok2
    ...     part = PartResult("p", score, 2, "ok", checks)
    ...     return NotebookResult(s, "demo", score, 2, "ok", [part],
    ...                           "", secs)
    >>> st = class_stats(spec, [res("a", True, 1.0), res("b", False, 1.1), res("c", True, 0.9)])
    >>> [(c.check, c.failed, c.seen) for c in st.checks]
    [('c1', 0, 3), ('c2', 1, 3)]
    >>> st.median, st.time_quantile(0.5)
    (2.0, 1.0)
    """
    index: dict[tuple[str, str], int] = {}
    failed: list[int] = []
    meta: list[tuple[str, str, bool]] = []
    for part in spec.parts:
        for check in part.checks:
            index[(part.grade_id, check.name)] = len(meta)
            meta.append((part.grade_id, check.name, check.hidden))
            failed.append(0)
    statuses: dict[str, int] = {}
    outliers: list[Outlier] = []
    for r in results:
        passed = [False] * len(meta)
        for p in r.parts:
            statuses[p.status] = statuses.get(p.status, 0) + 1
            if p.status in FAULTS:
                outliers.append(Outlier(r.student, "fault",
                                        f"{p.grade_id}: {p.status}"
                                        + (f" ({p.reason})" if p.reason else "")))
            for c in p.checks:
                i = index.get((p.grade_id, c.name))
                if i is not None and c.passed:
                    passed[i] = True
        if r.status != "ok":
            statuses[f"notebook {r.status}"] = statuses.get(f"notebook {r.status}", 0) + 1
        for i, ok in enumerate(passed):
            if not ok:
                failed[i] += 1
    n = len(results)
    checks = [CheckStat(pg, ch, hid, failed[i], n) for i, (pg, ch, hid) in enumerate(meta)]
    scores = [float(r.score) for r in results]
    seconds = [float(r.seconds) for r in results]
    total = float(sum(p.points for p in spec.parts))
    st = ClassStats(spec.name, n, total, scores, seconds, checks, statuses, outliers)
    if n >= 5:
        med_t, mad_t = _mad(seconds)
        limit = max(med_t + SLOW_K * MAD_SCALE * mad_t, 2 * med_t)
        for r in results:
            if r.seconds > limit:
                st.outliers.append(Outlier(r.student, "slow",
                                           f"graded in {r.seconds:.1f} s (median {med_t:.2f} s)"))
        med_s, mad_s = _mad(scores)
        if mad_s > 0:
            for r in results:
                z = (r.score - med_s) / (MAD_SCALE * mad_s)
                if abs(z) > SCORE_Z:
                    st.outliers.append(Outlier(r.student, "score",
                                               f"score {r.score:g} (median {med_s:g},"
                                               f" modified z {z:+.1f})"))
    st.outliers.sort(key=lambda o: (o.kind, o.student))
    return st


def report_text(st: ClassStats, *, top: int = 10, max_outliers: int = 40) -> str:
    """The class report as plain text (what ``report`` prints and saves)."""
    lines = [f"{st.assignment}: {st.n} graded submission(s), max {st.max_score:g} points"]
    if not st.n:
        return lines[0] + "\n"
    lines.append(f"score: mean {st.mean:.1f}, median {st.median:g},"
                 f" min {min(st.scores):g}, max {max(st.scores):g}")
    lines.append("score histogram:")
    peak = max(c for _, _, c in st.histogram()) or 1
    for lo, hi, count in st.histogram():
        lines.append(f"  {lo:5.1f}–{hi:5.1f} {count:5d} {'#' * round(40 * count / peak)}")
    lines.append(f"grading time per student: median {st.time_quantile(0.5):.2f} s,"
                 f" p90 {st.time_quantile(0.9):.2f} s, p99 {st.time_quantile(0.99):.2f} s,"
                 f" max {max(st.seconds):.2f} s, total {sum(st.seconds):.0f} s")
    lines.append("part outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(st.statuses.items())))
    lines.append(f"checks failed most often (of {len(st.checks)}):")
    for c in sorted(st.checks, key=lambda c: (-c.rate, c.part, c.check))[:top]:
        kind = "hidden" if c.hidden else "visible"
        lines.append(f"  {100 * c.rate:5.1f}%  {c.part}/{c.check} ({kind}, {c.failed}/{c.seen})")
    lines.append(f"outliers: {len(st.outliers)}")
    for o in st.outliers[:max_outliers]:
        lines.append(f"  {o.student:<24} {o.kind:<6} {o.why}")
    if len(st.outliers) > max_outliers:
        lines.append(f"  … and {len(st.outliers) - max_outliers} more")
    return "\n".join(lines) + "\n"


def plot_times(st: ClassStats, path: Path) -> Path:
    """Save a histogram of the grading time per student (log-scaled counts) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(st.seconds, bins=40, color="#44aa99", edgecolor="white")
    ax.set_yscale("log")
    med = st.time_quantile(0.5)
    ax.axvline(med, color="#cc3311", linestyle="--", label=f"median {med:.2f} s")
    ax.set_xlabel("grading time per student (s)")
    ax.set_ylabel("students (log)")
    ax.set_title(f"{st.assignment}: grading time (n={st.n})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
