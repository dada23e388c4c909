"""Ungraded self-checks: a small question, an answer typed by the reader, a verdict.

OSTEP's method: one code path makes the problem and the answer.  Each
question is a :class:`SelfCheck` with ``generate(rng)`` — the text and the
data of a problem, varied by the seed — and ``solve(data)``, which computes
the answer *by running virtcore* (nothing is hard-coded).  A chapter shows
the question with :func:`ask`, the reader writes an answer, and
:func:`check_answer` compares; :func:`solution` reveals the answer (OSTEP's
``-c``, "compute answers for me").

Answers left as the placeholder ``...`` (or ``None``) are *not answered
yet*: the verdict says so and nothing is raised, so "Run All" never fails.

Chapters register their own questions with :func:`register`; the questions
of chapter 0 are defined at the bottom of this module.

>>> ask("ch0.chapter-of", seed=1).qid
'ch0.chapter-of'
>>> check_answer("ch0.chapter-of", ..., seed=1)
… not answered yet: replace ... with your answer and run the cell again.
>>> check_answer("ch0.chapter-of", solution("ch0.chapter-of", seed=1), seed=1).status
'correct'
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from virtcore.errors import ConfigurationError, VirtcoreError
from virtcore.rng import make_rng

__all__ = [
    "NOT_ANSWERED",
    "Problem",
    "SelfCheck",
    "UnknownQuestionError",
    "Verdict",
    "as_int",
    "as_int_pair",
    "as_mnemonics",
    "as_text",
    "ask",
    "check_answer",
    "questions",
    "register",
    "solution",
]

#: The placeholder a reader replaces with an answer.
NOT_ANSWERED: Any = ...


class UnknownQuestionError(VirtcoreError, KeyError):
    """No self-check has this id."""


class AnswerFormatError(VirtcoreError, ValueError):
    """An answer that cannot be read as the kind of value the question wants."""


# ---------------------------------------------------------------------------
# answer normalizers: reader's answer → comparable value (or AnswerFormatError)


def as_int(answer: object) -> int:
    """An integer answer; accepts ints and strings like ``"13"``, ``"0xd"``; mod 2**32.

    >>> as_int("0x10"), as_int(" 7 "), as_int(-1) == 0xFFFFFFFF
    (16, 7, True)
    >>> as_int(True)
    Traceback (most recent call last):
    ...
    virtcore.viz.selfcheck.AnswerFormatError: expected an integer (like 13 or 0xd), got True
    """
    if isinstance(answer, bool):
        raise AnswerFormatError(f"expected an integer (like 13 or 0xd), got {answer!r}")
    if isinstance(answer, int):
        return answer & 0xFFFF_FFFF
    if isinstance(answer, str):
        try:
            return int(answer.strip(), 0) & 0xFFFF_FFFF
        except ValueError:
            pass
    raise AnswerFormatError(f"expected an integer (like 13 or 0xd), got {answer!r}")


def as_int_pair(answer: object) -> tuple[int, int]:
    """Two integers, e.g. ``(0x8, 13)``.

    >>> as_int_pair([8, "13"])
    (8, 13)
    """
    if isinstance(answer, (tuple, list)) and len(answer) == 2:
        return as_int(answer[0]), as_int(answer[1])
    raise AnswerFormatError(f"expected two integers like (0x8, 13), got {answer!r}")


def as_text(answer: object) -> str:
    """A text answer, compared exactly (a trailing newline is ignored).

    >>> as_text("hi\\n")
    'hi'
    """
    if not isinstance(answer, str):
        raise AnswerFormatError(f"expected a string in quotes, got {answer!r}")
    return answer.rstrip("\n")


def as_mnemonics(answer: object) -> frozenset[str]:
    """A set of instruction names; accepts one name, a comma-separated string or a collection.

    >>> sorted(as_mnemonics("POPF, cli")), as_mnemonics([]) == frozenset()
    (['cli', 'popf'], True)
    """
    if isinstance(answer, str):
        items: Iterable[object] = [p for p in answer.replace(",", " ").split() if p]
    elif isinstance(answer, (list, tuple, set, frozenset)):
        items = answer
    else:
        raise AnswerFormatError(f"expected instruction names like ['cli', 'hlt'], got {answer!r}")
    out = set()
    for item in items:
        if not isinstance(item, str):
            raise AnswerFormatError(f"expected instruction names (strings), got {item!r}")
        out.add(item.strip().lower())
    return frozenset(out)


# ---------------------------------------------------------------------------
# questions, problems, verdicts


@dataclass(frozen=True)
class Problem:
    """One generated question: its text and the data its answer is computed from.

    >>> print(ask("ch0.steps", seed=1).text.splitlines()[0])
    How many instructions does this program execute, hlt included?
    """

    qid: str
    seed: int
    text: str
    data: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:
        return (f"Self-check {self.qid} (seed {self.seed})\n\n{self.text}\n\n"
                f"Answer with: check_answer({self.qid!r}, your_answer, seed={self.seed})")


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`check_answer`; its repr is the message shown to the reader.

    ``status`` is ``"correct"``, ``"wrong"`` or ``"unanswered"``; a verdict
    is true only when correct.

    >>> bool(Verdict("q", "wrong", "✘")), bool(Verdict("q", "correct", "✔"))
    (False, True)
    """

    qid: str
    status: str
    message: str

    def __bool__(self) -> bool:
        return self.status == "correct"

    def __repr__(self) -> str:
        return self.message


@dataclass(frozen=True)
class SelfCheck:
    """A question: generator, solver, answer normalizer and a hint.

    Attributes
    ----------
    qid : str
        ``"ch<chapter>.<name>"``.
    chapter : int
    generate : callable
        ``generate(rng) -> (text, data)``.
    solve : callable
        ``solve(data) -> answer``, computed with virtcore.
    normalize : callable
        Turns the reader's answer (and the solution) into a comparable value;
        raises :class:`AnswerFormatError` for answers of the wrong kind.
    hint : str
        Shown after a wrong answer.
    covers : tuple of str
        Syllabus ids the question exercises, if any.

    Examples
    --------
    >>> REGISTRY["ch0.trap-pc"].normalize(["0x8", "13"])
    (8, 13)
    """

    qid: str
    chapter: int
    generate: Callable[[random.Random], tuple[str, dict[str, Any]]]
    solve: Callable[[Mapping[str, Any]], object]
    normalize: Callable[[object], object] = as_int
    hint: str = ""
    covers: tuple[str, ...] = ()


REGISTRY: dict[str, SelfCheck] = {}


def register(check: SelfCheck) -> SelfCheck:
    """Add a question to the registry (ids are unique).

    >>> register(REGISTRY["ch0.registers"])
    Traceback (most recent call last):
    ...
    virtcore.errors.ConfigurationError: self-check 'ch0.registers' is already registered
    """
    if check.qid in REGISTRY:
        raise ConfigurationError(f"self-check {check.qid!r} is already registered")
    REGISTRY[check.qid] = check
    return check


def _get(qid: str) -> SelfCheck:
    try:
        return REGISTRY[qid]
    except KeyError:
        raise UnknownQuestionError(
            f"no self-check {qid!r}; known: {', '.join(sorted(REGISTRY))}") from None


def questions(chapter: int | None = None) -> list[str]:
    """The ids of the registered questions (of one chapter, if given).

    >>> questions(0)[:2]
    ['ch0.chapter-of', 'ch0.registers']
    """
    return [q for q, c in REGISTRY.items() if chapter is None or c.chapter == chapter]


def ask(qid: str, *, seed: int = 0) -> Problem:
    """The question ``qid`` for ``seed`` (the same seed gives the same question).

    >>> ask("ch0.isa-traps", seed=3) == ask("ch0.isa-traps", seed=3)
    True
    """
    check = _get(qid)
    text, data = check.generate(make_rng(seed))
    return Problem(qid, seed, text, data)


def solution(qid: str, *, seed: int = 0) -> object:
    """The answer to ``ask(qid, seed=seed)``, computed by running virtcore.

    >>> set(solution("ch0.isa-traps", seed=0)) <= {"cli", "sti", "hlt", "in", "out", "rdcr",
    ...                                           "wrcr", "iret", "invlpg"}
    True
    """
    problem = ask(qid, seed=seed)
    return _get(qid).solve(problem.data)


def check_answer(qid: str, answer: object = NOT_ANSWERED, *, seed: int = 0) -> Verdict:
    """Compare the reader's ``answer`` with the computed one; never raises on an answer.

    Parameters
    ----------
    qid : str
        The question.
    answer : object
        The reader's answer; ``...`` or ``None`` mean "not answered yet".
    seed : int
        The seed the question was asked with.

    Returns
    -------
    Verdict
        ``correct``, ``wrong`` (with a hint) or ``unanswered``.

    Examples
    --------
    >>> check_answer("ch0.registers", 0, seed=0).status in ("correct", "wrong")
    True
    >>> check_answer("ch0.registers", "twelve")
    ✘ not quite: expected an integer (like 13 or 0xd), got 'twelve'
    """
    check = _get(qid)
    if answer is NOT_ANSWERED or answer is None:
        return Verdict(qid, "unanswered", "… not answered yet: replace ... with your answer "
                                          "and run the cell again.")
    try:
        given = check.normalize(answer)
    except AnswerFormatError as exc:
        return Verdict(qid, "wrong", f"✘ not quite: {exc}")
    expected = check.normalize(solution(qid, seed=seed))
    if given == expected:
        return Verdict(qid, "correct", f"✔ correct: {answer!r}")
    hint = f" Hint: {check.hint}" if check.hint else ""
    return Verdict(qid, "wrong", f"✘ not quite: {answer!r} is not the answer.{hint}")


# ---------------------------------------------------------------------------
# chapter 0's questions
#
# Each generator returns (text, data); each solver runs the machine.  Imports
# are local so that importing this module stays cheap.


def _indent(source: str) -> str:
    return "\n".join("    " + line for line in source.strip("\n").splitlines())


def _gen_chapter_of(rng: random.Random) -> tuple[str, dict[str, Any]]:
    from virtcore.viz.course import SYLLABUS

    claim = rng.choice(sorted(c for c in SYLLABUS if c.startswith("S")))
    return (f"Which chapter teaches claim {claim} of the notes — {SYLLABUS[claim]}?\n"
            "Answer with the chapter number."), {"claim": claim}


def _solve_chapter_of(data: Mapping[str, Any]) -> int:
    from virtcore.viz.course import chapter_of

    return chapter_of(data["claim"]).number


def _gen_registers(rng: random.Random) -> tuple[str, dict[str, Any]]:
    a, b, c = rng.randint(5, 30), rng.randint(2, 9), rng.randint(-9, 9)
    op = rng.choice(["add", "sub", "mul", "xor", "and", "or"])
    source = f"movi r1, {a}\nmovi r2, {b}\n{op}  r1, r2\naddi r1, {c}\nhlt"
    return ("What is in r1 (in decimal) when this program halts?\n\n" + _indent(source),
            {"source": source})


def _run_source(source: str, mode: str = "kernel", steps: int = 10_000) -> Any:
    from virtcore.hw import Machine

    machine = Machine.with_program(source, mode=mode)
    return machine, machine.run(steps)


def _solve_registers(data: Mapping[str, Any]) -> int:
    machine, _ = _run_source(data["source"])
    return int(machine.cpu.regs[1])


def _gen_isa_traps(rng: random.Random) -> tuple[str, dict[str, Any]]:
    from virtcore.hw.isa import TABLE

    names = [row.mnemonic for row in TABLE]
    chosen = sorted(rng.sample(names, 6))
    return ("Which of these instructions trap with #GP when they run in user mode?\n"
            f"    {', '.join(chosen)}\n"
            "Answer with a list of mnemonics, e.g. ['nop', 'add'] (or [] for none)."),\
        {"chosen": chosen}


def _solve_isa_traps(data: Mapping[str, Any]) -> list[str]:
    from virtcore.hw.isa import ISA

    return sorted(m for m in data["chosen"] if ISA[m].privileged)


#: Privileged instructions with operands filled in, for generated programs.
_PRIVILEGED_FORMS = ("cli", "sti", "hlt", "iret", "in r1, 0x3f8", "out 0x3f8, r1",
                     "rdcr r1, cr3", "wrcr cr3, r1", "invlpg r1")
_HARMLESS_FORMS = ("nop", "movi r1, 3", "addi r2, 1", "add r1, r2", "push r1", "pop r3",
                   "pushf", "cmpi r1, 0")


def _gen_trap_pc(rng: random.Random) -> tuple[str, dict[str, Any]]:
    lines = [rng.choice(_HARMLESS_FORMS) for _ in range(rng.randint(1, 5))]
    lines.append(rng.choice(_PRIVILEGED_FORMS))
    lines.append("nop")
    source = "\n".join(lines)
    return ("This program runs in user mode (用户态), with no trap handler installed.\n"
            "At which address does it stop, and with which trap cause number?\n\n"
            + _indent(source)
            + "\n\nAnswer as a pair (pc, cause), e.g. (0x4, 6)."), {"source": source}


def _solve_trap_pc(data: Mapping[str, Any]) -> tuple[int, int]:
    _, result = _run_source(data["source"], mode="user")
    event = result.event
    return (int(event.pc), int(event.cause)) if event is not None else (-1, -1)


def _gen_silent(rng: random.Random) -> tuple[str, dict[str, Any]]:
    from virtcore.hw.isa import TABLE

    quiet = [r.mnemonic for r in TABLE if r.sensitive and not r.privileged]
    loud = [r.mnemonic for r in TABLE if r.privileged]
    plain = [r.mnemonic for r in TABLE if not r.sensitive and not r.privileged]
    chosen = rng.sample(quiet, rng.randint(1, len(quiet))) + rng.sample(loud, 2) \
        + rng.sample(plain, 2)
    chosen.sort()
    return ("A VMM runs a guest kernel in user mode and relies on traps to notice when the "
            "guest\nreads or changes the machine's configuration (trap-and-emulate). Which of "
            "these\ninstructions are sensitive (敏感指令) yet never trap — so the VMM never "
            f"sees them?\n    {', '.join(chosen)}\nAnswer with a list of mnemonics."),\
        {"chosen": chosen}


def _solve_silent(data: Mapping[str, Any]) -> list[str]:
    from virtcore.hw.isa import ISA

    return sorted(m for m in data["chosen"] if ISA[m].sensitive and not ISA[m].privileged)


def _gen_serial(rng: random.Random) -> tuple[str, dict[str, Any]]:
    lines = [".equ COM1, 0x3f8", f"movi r1, '{rng.choice('aeimo')}'"]
    for _ in range(rng.randint(3, 5)):
        lines.append(f"addi r1, {rng.randint(-3, 4)}")
        lines.append("out  COM1, r1")
    lines.append("hlt")
    source = "\n".join(lines)
    return ("What does this program print on the serial port (串口) COM1?\n\n" + _indent(source)
            + "\n\nAnswer with a string, e.g. 'abc'."), {"source": source}


def _solve_serial(data: Mapping[str, Any]) -> str:
    machine, _ = _run_source(data["source"])
    return str(machine.serial.text)


def _gen_steps(rng: random.Random) -> tuple[str, dict[str, Any]]:
    n = rng.randint(3, 9)
    source = f"       movi r1, {n}\nloop:  addi r1, -1\n       cmpi r1, 0\n       jnz  loop\n" \
             "       hlt"
    return ("How many instructions does this program execute, hlt included?\n\n"
            + _indent(source)), {"source": source}


def _solve_steps(data: Mapping[str, Any]) -> int:
    _, result = _run_source(data["source"])
    return int(result.steps)


register(SelfCheck("ch0.chapter-of", 0, _gen_chapter_of, _solve_chapter_of,
                   hint="look at the course map: claim S<k>.x belongs to chapter k."))
register(SelfCheck("ch0.registers", 0, _gen_registers, _solve_registers,
                   hint="run it by hand line by line, or load it into a Machine and look at "
                        "registers_table."))
register(SelfCheck("ch0.isa-traps", 0, _gen_isa_traps, _solve_isa_traps, as_mnemonics,
                   hint="the 'privileged' column of isa_reference_table()."))
register(SelfCheck("ch0.trap-pc", 0, _gen_trap_pc, _solve_trap_pc, as_int_pair,
                   hint="each instruction is 4 bytes; the first privileged one traps with "
                        "#GP, and the trap reports its own address."))
register(SelfCheck("ch0.silent", 0, _gen_silent, _solve_silent, as_mnemonics,
                   hint="sensitive and not privileged: the red rows of the ISA table.",
                   covers=("S1.3",)))
register(SelfCheck("ch0.serial", 0, _gen_serial, _solve_serial, as_text,
                   hint="'a' + 1 is 'b'; each out writes the character in r1."))
register(SelfCheck("ch0.steps", 0, _gen_steps, _solve_steps,
                   hint="count the loop body once per pass; plot_trace(run(trace=True)) "
                        "shows every step."))
