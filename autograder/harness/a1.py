"""The worker side of assignment 1 (trap and emulate): run a guest with the student's handlers.

Staged into the sandbox (:mod:`autograder.sandbox`) with a copy of virtcore in which the part's
own reference handlers are redacted; the grader imports the same :func:`trace_guest` to compute
the reference trace with the real handlers.  The design part (:data:`DESIGN`) only asks the
student's ``treatment(row)`` about ISA rows (:func:`answer_rows`); which answer is right is
decided in the grader, never here.  Nothing here knows a case generator, a seed, a rule or
the course secret.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from itertools import compress
from typing import Any

__all__ = ["DESIGN", "HANDLERS", "TREATMENTS", "answer_rows", "build", "row_from_json",
           "row_to_json", "run_case", "trace_guest", "worker_setup"]

#: The design part: the student's ``treatment(row)`` says what the VMM does with an ISA row.
DESIGN = "design_treatment"
#: The answers ``treatment(row)`` may give.
TREATMENTS = ("direct", "trap", "translate")

#: Part → the instructions whose handlers the student writes (``handle_<mnemonic>``).
HANDLERS: dict[str, tuple[str, ...]] = {
    "handlers_interrupt_flag": ("cli", "sti", "hlt"),
    "handlers_io": ("in", "out"),
    "handlers_control": ("rdcr", "wrcr", "iret", "syscall", "invlpg"),
    "popf_binary_translation": ("pushf", "popf"),
}
#: Instructions the hypervisor may trap on that have a reference handler.
ALL_HANDLED = ("cli", "sti", "hlt", "in", "out", "rdcr", "wrcr", "iret", "invlpg", "syscall",
               "hcall", "pushf", "popf")
_MAX_TRAPS = 4000
_MAX_ANSWER = 40


class _AbortError(Exception):
    """Stops the hypervisor after a handler raised (the error is already recorded)."""


def _num(x: object) -> object:
    """A JSON-safe value for a piece of vCPU state (ints stay ints)."""
    if type(x) is int:
        return x
    if type(x) is bool:
        return int(x)
    if isinstance(x, enum.Enum):
        return str(x.name).lower()
    r = repr(x)
    return r if len(r) <= 80 else r[:79] + "…"


def _action(a: object) -> str:
    from virtcore.vmm.handlers import Action

    if a is None:
        return "continue"
    if isinstance(a, Action):
        return a.value
    return f"not an Action: {_num(a)}"


@functools.cache
def _control_registers() -> tuple[Any, ...]:
    from virtcore.hw.isa import CR

    return tuple(CR)


def _snapshot(vcpu: Any) -> list[object]:
    try:
        regs = [r if type(r) is int else _num(r) for r in list(vcpu.regs)[:16]]
    except Exception:
        regs = ["?"]
    try:
        get = vcpu.crs.get
        crs = [_num(get(c)) for c in _control_registers()]
    except Exception:
        crs = ["?"]
    mode = getattr(vcpu, "mode", None)
    return [_num(getattr(vcpu, "pc", None)), _num(getattr(vcpu, "flags", None)),
            _num(mode), int(bool(getattr(vcpu, "halted", False))), regs, crs]


def trace_guest(handlers: dict[str, Callable[..., Any]], case: dict[str, Any],
                student: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run the case's guest under the hypervisor with ``handlers``; return its trace (JSON data).

    The same function produces the student's trace (in the worker) and the reference trace
    (in the grader, with :func:`~virtcore.vmm.HandlerTable.reference`'s handlers).  An
    exception raised by a handler listed in ``student`` stops the run and is recorded under
    ``"error"`` with the student's own traceback.

    >>> from virtcore.hw.asm import assemble
    >>> from virtcore.vmm.handlers import HandlerTable
    >>> words = list(assemble("cli\\nhlt").words)
    >>> case = {"words": words, "origin": 0, "pages": 4, "technique": "trap", "max_steps": 50}
    >>> t = trace_guest(dict(HandlerTable.reference()), case)
    >>> t["stop"], [(r[2], hex(r[3])) for r in t["traps"]]
    ('halted', [('cli', '0x4'), ('hlt', '0x8')])
    """
    from virtcore.hw.asm import Program
    from virtcore.vmm.handlers import HandlerTable
    from virtcore.vmm.hypervisor import Hypervisor

    traps: list[list[object]] = []
    info: dict[str, Any] = {"ntraps": 0}

    def wrap(mnemonic: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        mine = mnemonic in student

        def recorded(vcpu: Any, insn: Any) -> Any:
            clock = vcpu.vm.clock
            pc = insn.pc
            info["ntraps"] += 1
            try:
                action = fn(vcpu, insn)
            except MemoryError:
                raise
            except Exception as e:
                if not mine:
                    raise
                from autograder.worker import student_traceback

                info["error"] = {"at": len(traps), "clock": clock, "pc": pc,
                                 "mnemonic": mnemonic, "message": student_traceback(e),
                                 "type": type(e).__name__}
                raise _AbortError() from None
            if len(traps) < _MAX_TRAPS:
                done = getattr(vcpu, "done", None)
                traps.append([clock, pc, mnemonic, *_snapshot(vcpu), _action(action),
                              done if isinstance(done, str) else _num(done)])
            return action

        return recorded

    table = HandlerTable({m: wrap(m, fn) for m, fn in handlers.items()})
    program = Program(list(case["words"]), int(case["origin"]))
    hv = Hypervisor(handlers=table)
    # Short runs: the reference interpreter beats translating every block first (same results).
    hv.cpu.translated = False
    vm = hv.create("guest", int(case["pages"]), program=program, technique=case["technique"],
                   on_violation="reflect", handlers=table)
    try:
        hv.run(int(case["max_steps"]))
    except _AbortError:
        pass
    except MemoryError:
        raise
    except Exception as e:  # the VMM refused what a handler did (e.g. a bad return value)
        from autograder.worker import student_traceback

        where = traps[-1] if traps else None
        info["error"] = {"at": len(traps), "clock": where[0] if where else 0,
                         "pc": where[1] if where else 0,
                         "mnemonic": where[2] if where else "?",
                         "message": student_traceback(e), "type": type(e).__name__,
                         "after": True}
    v = vm.vcpus[0]
    try:
        words = vm.memory_words()
    except Exception:
        words = []
    memory = [[i, words[i]] for i in compress(range(len(words)), words)]  # the non-zero words
    out: dict[str, Any] = {
        "stop": (v.done if isinstance(v.done, str) else "budget") if "error" not in info
        else "error",
        "pc": _num(v.pc), "flags": _num(v.flags), "mode": _num(v.mode),
        "regs": [_num(r) for r in list(v.regs)[:16]],
        "serial": bytes(vm.serial.output).hex(), "clock": vm.clock,
        "memory": memory, "traps": traps, "ntraps": info["ntraps"],
        "repeats": [int(v.worst_repeats[0]), int(v.worst_repeats[1])],
    }
    if "error" in info:
        out["error"] = info["error"]
    return out



# ------------------------------------------------------------------------- the design part

def row_to_json(row: Any) -> dict[str, Any]:
    """One ISA row (:class:`virtcore.hw.isa.Instruction`) as JSON data.

    >>> from virtcore.hw.isa import ISA
    >>> d = row_to_json(ISA["popf"])
    >>> d["mnemonic"], d["privileged"], d["sensitivity"], d["kind"]
    ('popf', False, 'control-sensitive', 'system')
    """
    return {"mnemonic": row.mnemonic, "opcode": int(row.opcode),
            "operands": list(row.operands), "semantics": row.semantics,
            "kind": row.kind.value, "privileged": bool(row.privileged),
            "sensitivity": row.sensitivity.value, "note": row.note}


def row_from_json(data: dict[str, Any]) -> Any:
    """The :class:`~virtcore.hw.isa.Instruction` a row's JSON data describes — the same type as
    the rows of :data:`virtcore.hw.TABLE`, so ``treatment`` sees a made-up row exactly as it
    sees a real one.

    >>> from virtcore.hw.isa import ISA
    >>> row_from_json(row_to_json(ISA["cli"])) == ISA["cli"]
    True
    """
    from virtcore.hw.isa import Instruction, Kind, Sensitivity

    return Instruction(str(data["mnemonic"]), int(data["opcode"]),
                       tuple(str(o) for o in data["operands"]), str(data["semantics"]),
                       Kind(data["kind"]), bool(data["privileged"]),
                       Sensitivity(data["sensitivity"]), str(data.get("note", "")))


def answer_rows(treatment: Callable[[Any], Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Ask ``treatment`` about every row, in order: its answers as JSON data.

    A string answer is kept as it is (clipped), anything else becomes ``"not a string: …"``.
    An exception stops the questions and is recorded under ``"error"`` (which row, the
    exception's type, the student's own traceback).  Whether an answer is right is not known
    here.

    >>> from virtcore.hw.isa import ISA
    >>> rows = [row_to_json(ISA[m]) for m in ("add", "cli")]
    >>> answer_rows(lambda row: row.mnemonic.upper(), rows)
    {'answers': ['ADD', 'CLI']}
    >>> answer_rows(lambda row: None, rows)["answers"]
    ['not a string: None', 'not a string: None']
    >>> answer_rows(lambda row: 1 / 0, rows)["error"]["type"]
    'ZeroDivisionError'
    """
    answers: list[str] = []
    out: dict[str, Any] = {"answers": answers}
    for i, data in enumerate(rows):
        row = row_from_json(data)
        try:
            got = treatment(row)
        except MemoryError:
            raise
        except Exception as e:
            from autograder.worker import student_traceback

            out["error"] = {"at": i, "type": type(e).__name__,
                            "message": student_traceback(e)}
            break
        if type(got) is str:
            answers.append(got if len(got) <= _MAX_ANSWER else got[: _MAX_ANSWER - 1] + "…")
        else:
            answers.append(f"not a string: {_num(got)}")
    return out


# ------------------------------------------------------------------------- the harness API

def worker_setup(grade_id: str) -> dict[str, Callable[..., Any]]:
    """In the worker, before student code: the handlers *other* parts are graded on.

    Taken by name from :mod:`virtcore.vmm.handlers`; in the sandbox the part's own handlers
    are redacted there, so they are never among them.  The design part runs no guest: none.

    >>> worker_setup(DESIGN)
    {}
    >>> sorted(worker_setup("handlers_io"))[:3]
    ['cli', 'hcall', 'hlt']
    """
    if grade_id == DESIGN:
        return {}
    from virtcore.vmm import handlers as h

    return {m: getattr(h, f"handle_{m}") for m in ALL_HANDLED
            if m not in HANDLERS[grade_id] and hasattr(h, f"handle_{m}")}


def build(namespace: dict[str, Any], grade_id: str,
          setup: dict[str, Callable[..., Any]]) -> dict[str, Any]:
    """The student's handlers for the part (or ``treatment`` for the design part), from the
    executed cells (BuildError if missing).

    >>> build({"treatment": len}, DESIGN, {})["treatment"] is len
    True
    """
    from autograder.worker import BuildError

    if grade_id == DESIGN:
        fn = namespace.get("treatment")
        if fn is None:
            raise BuildError(f"treatment is not defined: the cell {DESIGN} must define"
                             " treatment(row)")
        if not callable(fn):
            raise BuildError(f"treatment is not a function (it is {type(fn).__name__})")
        return {"treatment": fn}
    mine: dict[str, Callable[..., Any]] = {}
    missing = []
    for m in HANDLERS[grade_id]:
        fn = namespace.get(f"handle_{m}")
        if fn is None:
            missing.append(f"handle_{m}")
        elif not callable(fn):
            raise BuildError(f"handle_{m} is not a function (it is {type(fn).__name__})")
        else:
            mine[m] = fn
    if missing:
        need = ", ".join(f"handle_{m}" for m in HANDLERS[grade_id])
        raise BuildError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not"
                         f" defined: the cell {grade_id} must define {need}")
    return {"handlers": {**setup, **mine}, "student": tuple(mine)}


def run_case(impl: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
    """In the worker: the student's trace of one case (a guest), or their answers (ISA rows)."""
    if "treatment" in impl:
        return answer_rows(impl["treatment"], list(case["rows"]))
    return trace_guest(impl["handlers"], case, impl["student"])
