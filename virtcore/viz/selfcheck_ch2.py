"""Chapter 2's ungraded self-checks (``ch2.*``), registered with :mod:`virtcore.viz.selfcheck`.

Importing this module registers the questions (once; importing it again
changes nothing).  As for chapter 0, each question is a generator — the text
and data of a problem, varied by the seed — and a solver that computes the
answer **by running virtcore** (the VMM, the scheduler's credit arithmetic,
the lifecycle table, the pre-copy model); nothing is hard-coded.  Ask with
:func:`~virtcore.viz.selfcheck.ask`, answer with
:func:`~virtcore.viz.selfcheck.check_answer`; an answer left as ``...`` is
"not answered yet", never an error.

===================  =======================================================  ========
question             what it asks                                             covers
===================  =======================================================  ========
``ch2.efficiency``   instructions run directly vs. trapped, for a guest       S2.1
``ch2.p2m``          the host-physical address behind a guest-physical one    S2.2
``ch2.traps``        how often a looping guest traps into the VMM             S1.3
``ch2.equivalent``   is a guest equivalent under plain trap-and-emulate?      S2.1
``ch2.bt-translated`` which instructions binary translation does not copy      S2.1
``ch2.credit``       credits a domain earns per accounting period (credit1)   S2.3
``ch2.lifecycle``    the first management operation that is illegal           S2.4
``ch2.precopy``      live rounds of a pre-copy migration                      S2.4
===================  =======================================================  ========

>>> from virtcore.viz.selfcheck import ask, check_answer, questions, solution
>>> questions(2)[:3]
['ch2.efficiency', 'ch2.p2m', 'ch2.traps']
>>> check_answer("ch2.traps", ..., seed=3).status
'unanswered'
>>> check_answer("ch2.traps", solution("ch2.traps", seed=3), seed=3).status
'correct'
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from virtcore.viz.selfcheck import (
    REGISTRY,
    AnswerFormatError,
    SelfCheck,
    as_int,
    as_int_pair,
    as_mnemonics,
    register,
)

__all__ = ["CHECKS", "as_bool"]


def as_bool(answer: object) -> bool:
    """A yes/no answer: ``True``/``False`` or a word such as ``"yes"``, ``"no"``, ``"equivalent"``.

    >>> as_bool("Yes"), as_bool(False), as_bool("not equivalent")
    (True, False, False)
    >>> as_bool(3)
    Traceback (most recent call last):
    ...
    virtcore.viz.selfcheck.AnswerFormatError: expected True or False (or 'yes' / 'no'), got 3
    """
    if isinstance(answer, bool):
        return answer
    if isinstance(answer, str):
        word = " ".join(answer.strip().lower().replace("-", " ").split())
        if word in ("yes", "y", "true", "equivalent", "same"):
            return True
        if word in ("no", "n", "false", "not equivalent", "different"):
            return False
    raise AnswerFormatError(f"expected True or False (or 'yes' / 'no'), got {answer!r}")


def _indent(source: str) -> str:
    return "\n".join("    " + line for line in source.strip("\n").splitlines())


#: Unprivileged instructions for generated guests (no li: it is two instructions).
_PLAIN = ("movi r1, 5", "addi r2, 3", "add r1, r2", "sub r3, r1", "push r1", "pop r3",
          "xor r2, r2", "cmpi r1, 0", "mov r4, r1", "nop")
#: Privileged ones (trap under trap-and-emulate), harmless in a guest kernel.
_PRIVILEGED = ("cli", "sti", "out 0x3f8, r1", "in r2, 0x3fd", "rdcr r3, cr2", "wrcr cr2, r1")


# -- ch2.efficiency (S2.1: "efficient") -------------------------------------------------


def _gen_efficiency(rng: random.Random) -> tuple[str, dict[str, Any]]:
    lines = [rng.choice(_PLAIN + _PRIVILEGED) for _ in range(rng.randint(5, 9))]
    lines.append("hlt")
    source = "\n".join(lines)
    return ("This guest kernel runs under a trap-and-emulate VMM (deprivileged, 特权解除). How "
            "many of its\ninstructions run directly on the host CPU, and how many trap into "
            "the VMM?\n\n" + _indent(source)
            + "\n\nAnswer as a pair (direct, traps), like (0, 0)."), {"source": source}


def _solve_efficiency(data: Mapping[str, Any]) -> tuple[int, int]:
    from virtcore.vmm import run_guest

    _, vm = run_guest(data["source"], technique="trap", max_steps=1_000)
    return vm.stats.direct, vm.stats.traps


# -- ch2.p2m (S2.2: memory built from host frames) -------------------------------------


def _p2m_world(data: Mapping[str, Any]) -> Any:
    """Replay the host's history from the data; return the VM the question is about."""
    from virtcore.vmm import Hypervisor

    hv = Hypervisor()
    for name, pages in data["others"]:
        hv.create(name, pages, program="l: jmp l")
    for name in data["destroyed"]:
        hv.destroy(name)
    return hv.create("guest", data["pages"], program="l: jmp l")


def _gen_p2m(rng: random.Random) -> tuple[str, dict[str, Any]]:
    others = [(f"vm{i}", rng.randint(1, 3)) for i in range(rng.randint(2, 4))]
    destroyed = sorted(rng.sample([n for n, _ in others], rng.randint(1, len(others) - 1)))
    pages = rng.randint(3, 5)
    data: dict[str, Any] = {"others": others, "destroyed": destroyed, "pages": pages}
    vm = _p2m_world(data)
    gpa = rng.randrange(pages) * 4096 + 4 * rng.randrange(1024)
    data["gpa"] = gpa
    return (f"A VM has {pages} pages of 4 KiB (页). Its P2M table (guest-physical frame → host "
            f"frame) is\n    p2m = {vm.p2m}\nThe guest reads guest-physical address "
            f"{gpa:#06x}. Which host-physical address does the\naccess really reach? Answer "
            "with an integer, like 0x3."), data


def _solve_p2m(data: Mapping[str, Any]) -> int:
    return int(_p2m_world(data).hpa(data["gpa"]))


# -- ch2.traps (S1.3(a): every privileged instruction traps) -------------------------------


def _gen_traps(rng: random.Random) -> tuple[str, dict[str, Any]]:
    n = rng.randint(2, 6)
    body = [rng.choice(_PLAIN) for _ in range(rng.randint(0, 2))]
    body += rng.sample(_PRIVILEGED, rng.randint(1, 2))
    rng.shuffle(body)
    source = "\n".join([f"        movi r5, {n}", "loop:   movi r1, 'x'",
                        *(f"        {b}" for b in body),
                        "        addi r5, -1", "        cmpi r5, 0", "        jnz  loop",
                        "        hlt"])
    return ("Under trap-and-emulate the guest kernel runs in user mode, so each privileged "
            "instruction\ntraps to the VMM. How many traps does this guest cause before it "
            "stops?\n\n" + source + "\n\nAnswer with an integer."), {"source": source}


def _solve_traps(data: Mapping[str, Any]) -> int:
    from virtcore.vmm import run_guest

    _, vm = run_guest(data["source"], technique="trap", max_steps=2_000)
    return vm.stats.traps


# -- ch2.equivalent (Popek–Goldberg equivalence) ------------------------------------------

_EQ_TEMPLATES = (
    ("cli", "pushf", "pop r2"),  # reads the real IF (1) instead of the virtual IF (0)
    ("sti", "pushf", "pop r2"),  # real and virtual IF agree
    ("sti", "movi r1, 2", "push r1", "popf"),  # popf cannot clear IF in user mode
    ("movi r1, 0x202", "push r1", "popf", "cli"),  # popf's failure is undone by cli
    ("sti", "cli"),  # only privileged instructions: each one traps
    ("movi r1, 0x2c2", "push r1", "popf", "pushf", "pop r4"),  # arithmetic flags and IF
)


def _gen_equivalent(rng: random.Random) -> tuple[str, dict[str, Any]]:
    core = list(rng.choice(_EQ_TEMPLATES))
    before = [rng.choice(_PLAIN[:4]) for _ in range(rng.randint(0, 2))]
    source = "\n".join([*before, *core, "hlt"])
    return ("Run this guest kernel on bare hardware (kernel mode) and under plain "
            "trap-and-emulate.\nDo the two runs end in exactly the same state (registers, "
            "flags, memory, output)?\n\n" + _indent(source)
            + "\n\nAnswer True (equivalent) or False."), {"source": source}


def _solve_equivalent(data: Mapping[str, Any]) -> bool:
    from virtcore.vmm import check_equivalence

    return check_equivalence(data["source"], technique="trap", max_steps=1_000).equivalent


# -- ch2.bt-translated (binary translation) ---------------------------------------------


def _gen_bt(rng: random.Random) -> tuple[str, dict[str, Any]]:
    lines = [rng.choice((*_PLAIN, *_PRIVILEGED, "pushf", "popf", "pushf"))
             for _ in range(rng.randint(6, 10))]
    lines.append("hlt")
    source = "\n".join(lines)
    return ("A binary translator translates this block of guest-kernel code into its "
            "translation cache.\nWhich instructions does it NOT copy unchanged (it replaces "
            "them with code that acts on the\nvirtual CPU, or with a callout to the "
            "monitor)? Answer with a list of mnemonics.\n\n" + _indent(source),
            {"source": source})


def _solve_bt(data: Mapping[str, Any]) -> list[str]:
    from virtcore.hw import assemble
    from virtcore.vmm import translate_block

    program = assemble(data["source"])
    block = translate_block(lambda a: program.words[(a - program.origin) // 4], program.origin)
    return sorted(set(block.translated))


# -- ch2.credit (S2.3: Xen credit1 accounting) ----------------------------------------------


def _gen_credit(rng: random.Random) -> tuple[str, dict[str, Any]]:
    n = rng.randint(2, 3)
    ncpus = rng.choice((1, 1, 2))
    domains = []
    for _ in range(n):
        cap = rng.choice((0, 0, 0, 25, 50))
        domains.append((rng.choice((128, 256, 256, 512, 768)), 1, cap))
    asked = rng.randrange(n)
    table = "\n".join(f"    dom{i + 1}: weight {w}, 1 vCPU, cap {c or 'none'}"
                      f"{' (% of one pCPU)' if c else ''}, CPU-bound"
                      for i, (w, _, c) in enumerate(domains))
    return (f"Xen's credit scheduler hands out credit every 30 ms on a host with {ncpus} "
            f"pCPU(s):\n{table}\nHow many credits does dom{asked + 1}'s vCPU earn per "
            "accounting period?\n(300 credits = one pCPU for 30 ms; a vCPU can use at most "
            "one pCPU.)\nAnswer with an integer."), {"domains": domains, "ncpus": ncpus,
                                                    "asked": asked}


def _solve_credit(data: Mapping[str, Any]) -> int:
    from virtcore.sched import credit_shares

    shares = credit_shares([tuple(d) for d in data["domains"]], ncpus=data["ncpus"])
    return shares[data["asked"]]


# -- ch2.lifecycle (S2.4: the management interface is a state machine) ----------------------


def _gen_lifecycle(rng: random.Random) -> tuple[str, dict[str, Any]]:
    from virtcore.vmm import VMState, allowed_ops
    from virtcore.vmm.lifecycle import MANAGEMENT_OPS, TRANSITIONS

    state = VMState.DEFINED
    ops: list[str] = []
    for _ in range(rng.randint(4, 6)):
        legal = [op for op in allowed_ops(state) if op != "destroy"] or allowed_ops(state)
        op = rng.choice(legal) if legal and rng.random() < 0.8 else rng.choice(MANAGEMENT_OPS)
        ops.append(op)
        state = TRANSITIONS.get((state, op), state)
    listing = "\n".join(f"    {i}. {op}" for i, op in enumerate(ops, start=1))
    return ("A VM has just been defined (state 'defined'). A management tool then calls, in "
            f"order:\n{listing}\nWhich call is the first to fail with IllegalTransition? "
            "Answer its number, or 0 if none fails."), {"ops": ops}


def _solve_lifecycle(data: Mapping[str, Any]) -> int:
    from virtcore.vmm import IllegalTransition, VMState, next_state

    state = VMState.DEFINED
    for i, op in enumerate(data["ops"], start=1):
        try:
            state = next_state(state, op)
        except IllegalTransition:
            return i
    return 0


# -- ch2.precopy (S2.4: migration) ----------------------------------------------------------


def _gen_precopy(rng: random.Random) -> tuple[str, dict[str, Any]]:
    memory = rng.choice((4_000, 8_000, 16_000))
    bandwidth = rng.choice((2_000, 4_000, 8_000))
    dirty = rng.choice((bandwidth // 8, bandwidth // 4, bandwidth // 2, bandwidth * 2))
    threshold = rng.choice((20, 50, 100))
    rounds = 8
    return (f"Pre-copy live migration (预拷贝): memory {memory} pages, the link sends "
            f"{bandwidth} pages/s,\nthe guest dirties {dirty} distinct pages/s, the VM is "
            f"paused as soon as at most {threshold} pages are\ndirty, or after {rounds} "
            "live rounds. Round 0 sends all memory. How many live rounds (round 0\n"
            "included) run before the stop-and-copy?\nAnswer with an integer."), \
        {"memory": memory, "bandwidth": bandwidth, "dirty": dirty, "threshold": threshold,
         "rounds": rounds}


def _solve_precopy(data: Mapping[str, Any]) -> int:
    from virtcore.vmm import precopy

    r = precopy(data["memory"], data["dirty"], data["bandwidth"],
                stop_threshold=data["threshold"], max_rounds=data["rounds"])
    return len(r.rounds)


#: The chapter's questions, in the order of its sections.
CHECKS: tuple[SelfCheck, ...] = (
    SelfCheck("ch2.efficiency", 2, _gen_efficiency, _solve_efficiency, as_int_pair,
              hint="every privileged instruction (the 'privileged' column of the ISA table) "
                   "traps, hlt included; all the others run directly.",
              covers=("S2.1",)),
    SelfCheck("ch2.p2m", 2, _gen_p2m, _solve_p2m, as_int,
              hint="page = gpa >> 12, offset = gpa & 0xfff; host address = "
                   "(p2m[page] << 12) | offset.",
              covers=("S2.2",)),
    SelfCheck("ch2.traps", 2, _gen_traps, _solve_traps, as_int,
              hint="count the privileged instructions in the loop body, times the number of "
                   "passes, plus the final hlt.",
              covers=("S1.3",)),
    SelfCheck("ch2.equivalent", 2, _gen_equivalent, _solve_equivalent, as_bool,
              hint="deprivileged, pushf shows the real IF (always 1 under the VMM) and popf "
                   "cannot change IF; does the difference survive to the end?",
              covers=("S2.1",)),
    SelfCheck("ch2.bt-translated", 2, _gen_bt, _solve_bt, as_mnemonics,
              hint="every instruction that is privileged or sensitive is translated — not only "
                   "popf and pushf: cli must not trap either. Plain arithmetic, moves and stack "
                   "operations are copied unchanged.",
              covers=("S2.1",)),
    SelfCheck("ch2.credit", 2, _gen_credit, _solve_credit, as_int,
              hint="the total is 300 × pCPUs; a domain's fair part is ceil(total × weight / "
                   "Σweights), at most 300 per vCPU and ceil(cap × 300 / 100) with a cap; what "
                   "a limited domain cannot use goes to the ones after it (`credit_shares`).",
              covers=("S2.3",)),
    SelfCheck("ch2.lifecycle", 2, _gen_lifecycle, _solve_lifecycle, as_int,
              hint="follow the state machine (`lifecycle_graph`, `TRANSITIONS`): resume "
                   "needs 'paused'; destroy forces a running or paused VM off; undefine needs "
                   "a VM that is not running.",
              covers=("S2.4",)),
    SelfCheck("ch2.precopy", 2, _gen_precopy, _solve_precopy, as_int,
              hint="each round lasts pages / bandwidth seconds and dirties dirty rate × that "
                   "many pages: the dirty set shrinks by dirty/bandwidth per round.",
              covers=("S2.4",)),
)

for _check in CHECKS:
    if _check.qid not in REGISTRY:
        register(_check)
del _check
