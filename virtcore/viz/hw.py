"""Views of the simulated machine (:mod:`virtcore.hw`): registers, memory, the ISA, a stepper.

Every view is a function of state: it reads a CPU (or a saved
:class:`~virtcore.hw.CPUState`), memory, a trace or the ISA table, and
returns text, HTML, a plot or a widget.  Nothing here changes the machine,
except the stepper's buttons, which call :meth:`virtcore.hw.Machine.run`.

- :func:`registers_table` / :func:`registers_html` — pc, mode, flags decoded
  (CF ZF SF IF OF), ``r0``–``r7`` in hex and decimal.
- :func:`memory_table` / :func:`memory_html` — words with decimal, ASCII,
  labels and disassembly; the row at ``pc`` is marked.
- :func:`isa_reference_table` — the reference card of chapter 0, with the
  privileged and sensitive columns of Popek & Goldberg.
- :func:`describe_event` / :func:`describe_stop` — a trap, VM exit or stop in words.
- :class:`Stepper` — the stepper's logic, pure Python; :func:`stepper` wraps
  it in ipywidgets buttons.
- :func:`plot_trace` — pc over steps, coloured by privilege mode.

matplotlib and ipywidgets are imported inside :func:`plot_trace` and
:func:`stepper` only.

>>> from virtcore.hw import Machine
>>> m = Machine.with_program("movi r1, -2\\nhlt")
>>> _ = m.run()
>>> print(registers_table(m.cpu).splitlines()[3])
r1    0xfffffffe  4294967294 (-2)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from virtcore.errors import VirtcoreError
from virtcore.hw.asm import Program, assemble, format_instruction
from virtcore.hw.cpu import CPU, CPUState, RunResult, StopReason, TraceEntry
from virtcore.hw.events import Privilege, Trap, TrapCause, VMExit
from virtcore.hw.isa import (
    FLAG_CF,
    FLAG_IF,
    FLAG_OF,
    FLAG_SF,
    FLAG_ZF,
    REG_NAMES,
    TABLE,
    Instruction,
    Sensitivity,
    decode,
)
from virtcore.hw.machine import Machine
from virtcore.viz import ViewError
from virtcore.viz._lazy import TextView, esc, require

if TYPE_CHECKING:
    from virtcore.hw.memory import PhysicalMemory

__all__ = [
    "FLAG_NAMES",
    "Stepper",
    "decode_flags",
    "describe_event",
    "describe_stop",
    "isa_reference_table",
    "labels_of",
    "memory_html",
    "memory_table",
    "plot_trace",
    "registers_html",
    "registers_table",
    "stepper",
]

#: The flags the views decode, with their x86 EFLAGS bits.
FLAG_NAMES: tuple[tuple[str, int], ...] = (
    ("CF", FLAG_CF), ("ZF", FLAG_ZF), ("SF", FLAG_SF), ("IF", FLAG_IF), ("OF", FLAG_OF),
)

_MODE_WORDS = {
    Privilege.KERNEL: "kernel (ring 0, 内核态)",
    Privilege.USER: "user (ring 3, 用户态)",
}

_MONO = "font-family: var(--jp-code-font-family, monospace); font-size: 12px;"
_TD = '<td style="text-align: left; white-space: nowrap;">'  # Jupyter right-aligns by default
_HIGHLIGHT = "background: #fff3b0;"
_CHANGED = "color: #b00020; font-weight: bold;"

CPULike = CPU | CPUState


# ---------------------------------------------------------------------------
# registers


def decode_flags(flags: int) -> dict[str, int]:
    """The flags CF, ZF, SF, IF, OF of a FLAGS value, each 0 or 1.

    Parameters
    ----------
    flags : int
        A FLAGS register value (x86 bit positions: CF 0, ZF 6, SF 7, IF 9, OF 11).

    Returns
    -------
    dict
        Flag name → 0 or 1, in the order of :data:`FLAG_NAMES`.

    Examples
    --------
    >>> decode_flags(0x246)
    {'CF': 0, 'ZF': 1, 'SF': 0, 'IF': 1, 'OF': 0}
    """
    return {name: int(bool(flags & bit)) for name, bit in FLAG_NAMES}


def _decimal(value: int) -> str:
    """Unsigned decimal, plus the signed reading when bit 31 is set."""
    if value & 0x8000_0000:
        return f"{value} ({value - (1 << 32)})"
    return str(value)


def _mode_text(state: CPULike) -> str:
    text = _MODE_WORDS.get(state.mode, state.mode.name.lower())
    if getattr(state, "guest_mode", False):
        text += ", guest (VMX non-root)"
    return text


def _changed(state: CPULike, previous: CPUState | None) -> set[str]:
    """Names of the registers (and pc/flags) that differ from ``previous``."""
    if previous is None:
        return set()
    out = {REG_NAMES[i] for i, (a, b) in enumerate(zip(state.regs, previous.regs)) if a != b}
    if state.pc != previous.pc:
        out.add("pc")
    if state.flags != previous.flags:
        out.add("flags")
    return out


def registers_table(cpu: CPULike, *, previous: CPUState | None = None) -> TextView:
    """The registers as a text table: pc, mode, flags decoded, r0–r7 in hex and decimal.

    Parameters
    ----------
    cpu : CPU or CPUState
        A live CPU or a snapshot from :meth:`~virtcore.hw.CPU.save_state`
        (for example a vCPU's saved state).
    previous : CPUState, optional
        An earlier snapshot; registers that differ from it are marked ``*``.

    Returns
    -------
    TextView
        The text (a ``str``), with an HTML rendering (:func:`registers_html`) for Jupyter.

    Examples
    --------
    >>> from virtcore.hw import Machine
    >>> m = Machine.with_program("movi r1, 7\\ncmpi r1, 7\\nhlt")
    >>> before = m.cpu.save_state()
    >>> _ = m.run()
    >>> print(registers_table(m.cpu, previous=before))
    pc    0x0000000c  mode kernel (ring 0, 内核态)  halted *
    flags 0x00000042  CF=0 ZF=1 SF=0 IF=0 OF=0 *
    r0    0x00000000  0
    r1    0x00000007  7 *
    r2    0x00000000  0
    r3    0x00000000  0
    r4    0x00000000  0
    r5    0x00000000  0
    r6    0x00000000  0
    sp    0x00010000  65536
    """
    changed = _changed(cpu, previous)

    def mark(name: str) -> str:
        return " *" if name in changed else ""

    state = "halted" if cpu.halted else "running"
    flags = cpu.flags
    bits = " ".join(f"{k}={v}" for k, v in decode_flags(flags).items())
    lines = [
        f"pc    {cpu.pc:#010x}  mode {_mode_text(cpu)}  {state}{mark('pc')}",
        f"flags {flags:#010x}  {bits}{mark('flags')}",
    ]
    lines += [f"{name:<5} {value:#010x}  {_decimal(value)}{mark(name)}"
              for name, value in zip(REG_NAMES, cpu.regs)]
    return TextView("\n".join(lines), html=registers_html(cpu, previous=previous))


def registers_html(cpu: CPULike, *, previous: CPUState | None = None) -> str:
    """The registers as an HTML table (what the stepper and Jupyter show).

    Registers that differ from ``previous`` are shown in bold red.

    Examples
    --------
    >>> from virtcore.hw import Machine
    >>> m = Machine.with_program("movi r3, 300\\nhlt"); _ = m.run()
    >>> html = registers_html(m.cpu)
    >>> "<td>r3</td>" in html and "0x0000012c" in html and ">300<" in html
    True
    """
    changed = _changed(cpu, previous)

    def style(name: str) -> str:
        return f' style="{_CHANGED}"' if name in changed else ""

    flags = cpu.flags
    chips = " ".join(
        f'<span title="{name}" style="padding:0 3px;border-radius:3px;'
        f'{"background:#c8e6c9;font-weight:bold;" if v else "color:#999;"}">{name}</span>'
        for name, v in decode_flags(flags).items())
    head = (f'<div style="{_MONO}">pc <span{style("pc")}>{cpu.pc:#010x}</span> · '
            f"{esc(_mode_text(cpu))}{' · halted' if cpu.halted else ''}<br>"
            f'flags <span{style("flags")}>{flags:#010x}</span> {chips}</div>')
    rows = [f"<tr><td>{name}</td><td{style(name)}>{value:#010x}</td>"
            f"<td{style(name)}>{esc(_decimal(value))}</td></tr>"
            for name, value in zip(REG_NAMES, cpu.regs)]
    return (f'<div class="virtcore-registers">{head}<table style="{_MONO}">'
            "<tr><th>reg</th><th>hex</th><th>decimal</th></tr>" + "".join(rows)
            + "</table></div>")


# ---------------------------------------------------------------------------
# memory


def labels_of(program: Program) -> dict[int, str]:
    """Address → label for the labels of ``program`` that point into its own words.

    ``.equ`` constants share the symbol table with labels; only names whose
    value is a word address inside the program are kept (a constant that
    happens to equal such an address is shown as a label too — a
    simplification).

    Examples
    --------
    >>> p = assemble(".equ COM1, 0x3f8\\nstart: nop\\nend: hlt")
    >>> labels_of(p)
    {0: 'start', 4: 'end'}
    """
    out: dict[int, str] = {}
    for name, value in program.symbols.items():
        if program.origin <= value < program.end and value % 4 == 0:
            out[value] = f"{out[value]},{name}" if value in out else name
    return dict(sorted(out.items()))


def _ascii(word: int) -> str:
    return "".join(chr(b) if 32 <= b < 127 else "." for b in word.to_bytes(4, "little"))


def _instruction_text(word: int, address: int) -> str:
    return format_instruction(word, address) if decode(word) is not None else f".word {word:#010x}"


def _memory_rows(memory: PhysicalMemory, start: int, nwords: int,
                 read: Callable[[int], int | None] | None = None,
                 ) -> list[tuple[int, int | None]]:
    if isinstance(nwords, bool) or not isinstance(nwords, int) or nwords < 0:
        raise ViewError(f"nwords must be a non-negative int, not {nwords!r}")
    if not isinstance(start, int) or start % 4:
        raise ViewError(f"start must be a word-aligned address, not {start!r}")
    if read is None:
        if start < 0 or start + 4 * nwords > memory.size:
            raise ViewError(f"words {start:#x}..{start + 4 * nwords:#x} are outside the "
                            f"installed memory (0x0..{memory.size:#x})")
        words = memory.words
        return [(a, words[a >> 2]) for a in range(start, start + 4 * nwords, 4)]
    return [(a, read(a)) for a in range(start, start + 4 * nwords, 4)]


def memory_table(memory: PhysicalMemory, start: int, nwords: int, *, pc: int | None = None,
                 labels: Mapping[int, str] | Program | None = None) -> TextView:
    """Words of physical memory with decimal, ASCII, labels and disassembly.

    Parameters
    ----------
    memory : PhysicalMemory
    start : int
        First address (a multiple of 4).
    nwords : int
        How many words.
    pc : int, optional
        The row at this address is marked ``→`` (and highlighted in HTML).
    labels : Program or mapping, optional
        Address → label, or a program whose labels to show (:func:`labels_of`).

    Returns
    -------
    TextView
        Text with an HTML rendering (:func:`memory_html`).

    Raises
    ------
    ViewError
        If the range is not inside installed memory.

    Examples
    --------
    >>> from virtcore.hw import Machine
    >>> p = assemble("top: movi r1, 'A'\\n st r1, [r0+data]\\n hlt\\ndata: .word 0")
    >>> m = Machine.with_program(p); _ = m.run(2)    # two steps: pc is at the hlt
    >>> print(memory_table(m.memory, 0, 4, pc=m.cpu.pc, labels=p))
        address  word      decimal     ascii  label  instruction
        0x0000   02100041    34603073  A...   top:   movi r1, 65
        0x0004   3110000c   823132172  ...1          st r1, [r0+12]
      → 0x0008   42000000  1107296256  ...B          hlt
        0x000c   00000041          65  A...   data:  .word 0x00000041
    """
    rows = _memory_rows(memory, start, nwords)
    return TextView(_memory_text(rows, pc, labels),
                    html=memory_html(memory, start, nwords, pc=pc, labels=labels))


def _label_map(labels: Mapping[int, str] | Program | None) -> Mapping[int, str]:
    if labels is None:
        return {}
    if isinstance(labels, Program):
        return labels_of(labels)
    return labels


def _memory_text(rows: Sequence[tuple[int, int | None]], pc: int | None,
                 labels: Mapping[int, str] | Program | None) -> str:
    names = _label_map(labels)
    width = max([len(n) + 1 for n in names.values()] + [5])
    lines = [f"    address  word      {'decimal':>10}  ascii  {'label':<{width}}  instruction"]
    for address, word in rows:
        mark = "  → " if address == pc else "    "
        label = f"{names[address]}:" if address in names else ""
        if word is None:
            lines.append(f"{mark}{address:#06x}   {'--------':<8}  {'':>10}  {'':<5}  "
                         f"{label:<{width}}  (not mapped)")
            continue
        lines.append(f"{mark}{address:#06x}   {word:08x}  {word:>10}  {_ascii(word):<5}  "
                     f"{label:<{width}}  {_instruction_text(word, address)}")
    return "\n".join(line.rstrip() for line in lines)


def memory_html(memory: PhysicalMemory, start: int, nwords: int, *, pc: int | None = None,
                labels: Mapping[int, str] | Program | None = None,
                read: Callable[[int], int | None] | None = None) -> str:
    """The HTML rendering of :func:`memory_table`; the ``pc`` row is highlighted.

    ``read``, if given, maps an address to its word (or None when it is not
    mapped) instead of reading physical memory — the stepper uses it to show
    virtual addresses when paging is on.

    Examples
    --------
    >>> from virtcore.hw.memory import PhysicalMemory
    >>> mem = PhysicalMemory(64, 32); mem.load_words(0, [0x42000000])
    >>> html = memory_html(mem, 0, 2, pc=0)
    >>> html.count("<tr"), "background: #fff3b0" in html, "hlt" in html
    (3, True, True)
    """
    rows = _memory_rows(memory, start, nwords, read)
    names = _label_map(labels)
    body = []
    for address, word in rows:
        here = address == pc
        style = f' style="{_HIGHLIGHT}"' if here else ""
        label = f"{esc(names[address])}:" if address in names else ""
        if word is None:
            cells = ["--------", "", "", label, "(not mapped)"]
        else:
            cells = [f"{word:08x}", str(word), esc(_ascii(word)), label,
                     esc(_instruction_text(word, address))]
        body.append(f"<tr{style}><td>{'→' if here else ''}</td><td>{address:#06x}</td>"
                    + "".join(f"{_TD}{c}</td>" if i >= 3 else f"<td>{c}</td>"
                              for i, c in enumerate(cells)) + "</tr>")
    head = ("<tr><th></th><th>address</th><th>word</th><th>decimal</th><th>ascii</th>"
            "<th>label</th><th>instruction</th></tr>")
    return (f'<table class="virtcore-memory" style="{_MONO}">' + head + "".join(body)
            + "</table>")


# ---------------------------------------------------------------------------
# the ISA reference card

_SENSITIVITY_WORDS = {
    Sensitivity.NONE: "",
    Sensitivity.CONTROL: "control",
    Sensitivity.BEHAVIOUR: "behaviour",
}


def _isa_cells(row: Instruction) -> list[str]:
    return [row.mnemonic, row.syntax, f"{row.opcode:#04x}", row.semantics,
            "yes" if row.privileged else "", _SENSITIVITY_WORDS[row.sensitivity], row.note]


def isa_reference_table(rows: Iterable[Instruction] | None = None) -> TextView:
    """The ISA reference card: one line per instruction, with privileged and sensitive columns.

    The columns come straight from :data:`virtcore.hw.isa.TABLE`; an
    instruction is *sensitive* (敏感指令) when it reads or changes the
    machine's configuration (control-sensitive) or behaves differently
    depending on it (behaviour-sensitive), and *privileged* (特权指令) when it
    traps in user mode (Popek & Goldberg 1974;
    [PG74]).

    Parameters
    ----------
    rows : iterable of Instruction, optional
        Which rows (default: the whole table, in its order).

    Returns
    -------
    TextView
        Markdown (the text), with an HTML rendering.

    Examples
    --------
    >>> from virtcore.hw import ISA
    >>> card = isa_reference_table([ISA["add"], ISA["popf"]])
    >>> print(card.splitlines()[0])
    | instruction | syntax | opcode | meaning | privileged | sensitive | note |
    >>> [line.split("|")[5:7] for line in card.splitlines()[2:]]
    [['  ', '  '], ['  ', ' control ']]
    >>> "rd ← rd \\\\| rs" in isa_reference_table()   # '|' escaped for Markdown
    True
    """
    chosen = list(TABLE if rows is None else rows)
    head = ["instruction", "syntax", "opcode", "meaning", "privileged", "sensitive", "note"]

    def md(cell: str, code: bool) -> str:
        cell = cell.replace("|", "\\|")
        return f"`{cell}`" if code and cell else cell

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in chosen:
        cells = _isa_cells(row)
        lines.append("| " + " | ".join(md(c, i in (0, 1, 3)) for i, c in enumerate(cells))
                     + " |")
    html_rows = []
    for row in chosen:
        cells = _isa_cells(row)
        style = ' style="background:#ffe0e0;"' if row.sensitive and not row.privileged else ""
        html_rows.append(f"<tr{style}>" + "".join(
            f"{_TD}<code>{esc(c)}</code></td>" if i in (0, 1)
            else f'<td style="text-align: left;">{esc(c)}</td>'
            for i, c in enumerate(cells)) + "</tr>")
    html = ('<table class="virtcore-isa">'
            + "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(html_rows)
            + "</table><p><small>Rows in red are sensitive but not privileged: they do not "
            "trap in user mode (Popek–Goldberg's condition fails).</small></p>")
    return TextView("\n".join(lines), markdown="\n".join(lines), html=html)


# ---------------------------------------------------------------------------
# events in words

#: Short name and meaning of each synchronous trap cause.
_CAUSE_WORDS: dict[TrapCause, tuple[str, str, str]] = {
    TrapCause.INVALID_OPCODE: ("#UD", "invalid opcode",
                               "the word at pc is not an instruction (or hcall ran with no "
                               "hypervisor below)"),
    TrapCause.GENERAL_PROTECTION: ("#GP", "general protection",
                                   "a privileged instruction ran in user mode"),
    TrapCause.PAGE_FAULT: ("#PF", "page fault",
                           "the address has no translation, or the translation forbids "
                           "this access"),
    TrapCause.ALIGNMENT_CHECK: ("#AC", "alignment check",
                                "a word access at an address that is not a multiple of 4"),
    TrapCause.MACHINE_CHECK: ("#MC", "machine check",
                              "no RAM or device answers at this physical address"),
    TrapCause.SYSCALL: ("int 0x80", "system call",
                        "the program asks its kernel for a service (call number in r0)"),
    TrapCause.HYPERCALL: ("int 0x82", "hypercall",
                          "a paravirtualized kernel asks the hypervisor for a service"),
}


def _irq_devices() -> dict[int, str]:
    """IRQ line → device name, read from the PC's standard devices."""
    from virtcore.hw.devices import InterruptController, make_pc_devices

    bus = make_pc_devices(None, InterruptController())
    out: dict[int, str] = {}
    for device in bus.devices:
        line = getattr(device, "irq_line", None)
        if isinstance(line, int):
            out[line] = device.name
    return out


def describe_event(event: Trap | VMExit | None) -> str:
    """A trap, interrupt or VM exit in one or two sentences.

    Parameters
    ----------
    event : Trap or VMExit or None

    Returns
    -------
    str

    Examples
    --------
    >>> from virtcore.hw import Machine
    >>> ev = Machine.with_program("nop\\ncli", mode="user").run().event
    >>> print(describe_event(ev))
    trap #GP (general protection, vector 13) at pc=0x0004 in user mode: cli in user mode. \
A privileged instruction ran in user mode.
    >>> describe_event(None)
    'no event'
    """
    if event is None:
        return "no event"
    if isinstance(event, VMExit):
        q = ", ".join(f"{k}={v:#x}" if isinstance(v, int) else f"{k}={v}"
                      for k, v in event.qualification.items())
        return (f"VM exit {event.reason.name} (basic exit reason {event.reason.value}) at guest "
                f"pc={event.pc:#06x}" + (f" [{q}]" if q else "")
                + ". The guest hands control to the VMM, which emulates and resumes it.")
    cause = event.cause
    mode = "user" if event.mode is Privilege.USER else "kernel"
    if cause.is_interrupt:
        line = cause.value - 32
        device = _irq_devices().get(line, "a device")
        return (f"hardware interrupt IRQ{line} (vector {cause.value}) from the {device}, "
                f"taken at pc={event.pc:#06x} in {mode} mode.")
    short, name, meaning = _CAUSE_WORDS.get(cause, (cause.name, cause.name.lower(), ""))
    where = f", address {event.address:#x}" if event.address is not None else ""
    detail = f": {event.detail}" if event.detail else ""
    text = (f"trap {short} ({name}, vector {cause.value}) at pc={event.pc:#06x} in {mode} mode"
            f"{where}{detail}.")
    if event.fault is not None:
        text += f" The MMU reports a {event.fault}."
    return text + (f" {meaning[0].upper()}{meaning[1:]}." if meaning else "")


def describe_stop(result: RunResult, cpu: CPU | None = None, *, budget: int | None = None) -> str:
    """Why a run stopped, in words, with what to do next.

    Parameters
    ----------
    result : RunResult
    cpu : CPU, optional
        The CPU after the run, to say why a ``hlt`` is final.
    budget : int, optional
        The step budget that was given, for the "did not halt" message.

    Examples
    --------
    >>> from virtcore.hw import Machine
    >>> m = Machine.with_program("loop: jmp loop")
    >>> print(describe_stop(m.run(50), m.cpu, budget=50))
    The step budget ran out: the program did not halt in 50 steps.
    >>> m = Machine.with_program("hlt")
    >>> print(describe_stop(m.run(), m.cpu))
    Halted: hlt with interrupts off (IF=0), so nothing can wake the CPU.
    """
    if result.reason is StopReason.BUDGET:
        n = budget if budget is not None else result.steps
        return f"The step budget ran out: the program did not halt in {n} steps."
    if result.reason is StopReason.HALTED:
        if cpu is not None and not cpu.intr:
            return "Halted: hlt with interrupts off (IF=0), so nothing can wake the CPU."
        return "Halted: hlt, and no device is due to raise an interrupt."
    if result.reason is StopReason.VMEXIT:
        return "Stopped by a " + describe_event(result.event)
    return ("Stopped by a " + describe_event(result.event) + " No trap handler is installed "
            "(TVEC = 0), so the trap goes to the caller — in a virtualized machine, the VMM.")


# ---------------------------------------------------------------------------
# the stepper


class Stepper:
    """The logic behind the stepper widget: run a machine a little at a time and describe it.

    Pure Python; :func:`stepper` puts buttons on it.  Every action returns
    quickly: ``step`` and ``run`` use the traced interpreter for at most a
    few instructions, ``run_to_halt`` the fast path with a step budget.

    Parameters
    ----------
    machine : Machine or callable
        The machine to drive, or a function of no arguments that builds one
        (then :meth:`reset` builds a fresh machine, devices included).
    program : Program or str, optional
        The program, for the listing and its labels (a string is assembled
        at origin 0 — only for the listing; it is not loaded).
    budget : int
        Steps that "Run to halt" may execute before it gives up.
    window : int
        Most rows in the listing (centred on pc).

    Notes
    -----
    Simplification: with a machine (not a factory), :meth:`reset` rewinds the
    CPU, RAM, the serial output and pending interrupts to the moment the
    stepper was made; other device state (timers, disk, network card) is
    not rewound — pass a factory to reset those too.

    Examples
    --------
    >>> from virtcore.hw import Machine
    >>> s = Stepper(Machine.with_program("movi r1, 5\\nloop: addi r1, -1\\njnz loop\\nhlt"))
    >>> _ = s.step(); s.steps, s.machine.cpu.regs[1]
    (1, 5)
    >>> print(s.message)
    Executed movi r1, 5 at 0x0000.
    >>> s.run_to_halt().reason.name, s.stopped
    ('BUDGET', False)
    >>> s.reset(); s.steps, s.machine.cpu.pc
    (0, 0)
    """

    def __init__(self, machine: Machine | Callable[[], Machine], *,
                 program: Program | str | None = None, budget: int = 10_000,
                 window: int = 24) -> None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ViewError(f"budget must be a positive int, not {budget!r}")
        self.factory: Callable[[], Machine] | None = None
        if isinstance(machine, Machine):
            self.machine = machine
        elif callable(machine):
            self.factory = machine
            self.machine = machine()
            if not isinstance(self.machine, Machine):
                raise ViewError(f"the factory returned {type(self.machine).__name__}, "
                                "not a Machine")
        else:
            raise ViewError(f"expected a Machine or a function that makes one, not {machine!r}")
        self.program = assemble(program) if isinstance(program, str) else program
        self.budget = budget
        self.window = window
        self._snapshot = self._take_snapshot()
        self._clear()

    # -- state -------------------------------------------------------------
    def _clear(self) -> None:
        self.steps = 0
        self.last_event: Trap | VMExit | None = None
        self.last_result: RunResult | None = None
        self.stopped = False
        self.message = "Ready. Press Step to execute one instruction."
        self.previous: CPUState | None = None

    def _take_snapshot(self) -> dict[str, Any]:
        m = self.machine
        return {
            "cpu": m.cpu.save_state(),
            "clock": m.cpu.clock,
            "retired": m.cpu.retired,
            "trap_counts": dict(m.cpu.trap_counts),
            "exit_counts": dict(m.cpu.exit_counts),
            "ram": list(m.memory.words),
            "serial": len(m.serial.output),
            "irq": m.irq.pending,
        }

    def reset(self) -> None:
        """Back to the state when the stepper was made (see Notes)."""
        if self.factory is not None:
            self.machine = self.factory()
        else:
            snap, m = self._snapshot, self.machine
            m.memory.load_words(0, snap["ram"])
            m.cpu.load_state(snap["cpu"])
            m.cpu.flush_tlb()
            m.cpu.clock, m.cpu.retired = snap["clock"], snap["retired"]
            m.cpu.trap_counts = dict(snap["trap_counts"])
            m.cpu.exit_counts = dict(snap["exit_counts"])
            del m.serial.output[snap["serial"]:]
            m.irq.pending = snap["irq"]
        self._clear()
        self.message = "Reset to the start."

    # -- actions -------------------------------------------------------------
    def _refuse(self) -> bool:
        if self.stopped:
            self.message = (describe_stop(self.last_result, self.machine.cpu)
                            if self.last_result is not None else "Stopped.")
            self.message += " Press Reset to start again."
            return True
        return False

    def step(self, n: int = 1) -> RunResult | None:
        """Execute up to ``n`` instructions with the traced interpreter (``None`` if stopped)."""
        if self._refuse():
            return None
        cpu = self.machine.cpu
        self.previous = cpu.save_state()
        result = self.machine.run(n, trace=True)
        self._after(result)
        trace = result.trace or ()
        for entry in reversed(trace):
            if entry.event is not None:
                self.last_event = entry.event
                break
        if result.reason is StopReason.BUDGET:
            if n == 1 and trace:
                self.message = f"Executed {trace[-1].text} at {trace[-1].pc:#06x}."
            else:
                self.message = f"Executed {result.steps} instructions."
            if trace and trace[-1].event is not None:
                self.message += " " + describe_event(trace[-1].event)
        return result

    def run_to_halt(self) -> RunResult | None:
        """Run on the fast path until the machine stops or :attr:`budget` steps are spent."""
        if self._refuse():
            return None
        cpu = self.machine.cpu
        self.previous = cpu.save_state()
        before = dict(cpu.trap_counts)
        result = self.machine.run(self.budget)
        self._after(result)
        taken = {c: n - before.get(c, 0) for c, n in cpu.trap_counts.items()
                 if n != before.get(c, 0)}
        if taken and result.event is None:
            self.message += " Traps taken on the way: " + ", ".join(
                f"{c.name}×{n}" for c, n in taken.items()) + "."
        return result

    def _after(self, result: RunResult) -> None:
        self.steps += result.steps
        self.last_result = result
        if result.event is not None:
            self.last_event = result.event
        if result.reason in (StopReason.TRAP, StopReason.VMEXIT):
            self.stopped = True
        self.message = describe_stop(result, self.machine.cpu, budget=result.steps)
        if result.reason is StopReason.BUDGET:
            self.message = (f"Ran {result.steps} instructions; the budget of {self.budget} "
                            "steps is spent and the program has not halted. Press again to go on.")
        elif result.reason is StopReason.HALTED:
            self.message += f" ({self.steps} instructions executed.)"

    # -- views -----------------------------------------------------------------
    def _listing_range(self) -> tuple[int, int]:
        """First address and word count of the listing window."""
        pc = self.machine.cpu.pc
        half = self.window // 2
        if self.program is not None and len(self.program) <= self.window:
            return self.program.origin, len(self.program)
        if self.program is not None:
            lo, hi = self.program.origin, self.program.end
        else:
            lo, hi = 0, self.machine.memory.size
        start = max(lo, min(pc - 4 * half, hi - 4 * self.window))
        start = max(lo, start - start % 4)
        return start, min(self.window, (hi - start) // 4)

    def _read(self, address: int) -> int | None:
        """The word at ``address`` as the CPU would fetch it (virtual when paging is on)."""
        m = self.machine
        paddr: int | None = address
        mmu = m.mmu if m.mmu.enabled else m.mmu.nested
        if mmu is not None:
            try:
                paddr = mmu.walk(address).paddr
            except VirtcoreError:
                paddr = None
        if paddr is None or not 0 <= paddr < m.memory.size or paddr % 4:
            return None
        return m.memory.words[paddr >> 2]

    def listing_html(self) -> str:
        """The listing around pc, current instruction highlighted."""
        start, n = self._listing_range()
        return memory_html(self.machine.memory, start, n, pc=self.machine.cpu.pc,
                           labels=self.program, read=self._read)

    def listing_text(self) -> str:
        """The listing around pc as text, current instruction marked ``→``."""
        start, n = self._listing_range()
        rows = _memory_rows(self.machine.memory, start, n, self._read)
        return _memory_text(rows, self.machine.cpu.pc, self.program)

    def status(self) -> str:
        """One line: steps, pc, mode, clock."""
        cpu = self.machine.cpu
        return (f"step {self.steps} · pc {cpu.pc:#06x} · {_mode_text(cpu)} · clock {cpu.clock}"
                + (" · halted" if cpu.halted else "") + (" · stopped" if self.stopped else ""))

    def event_text(self) -> str:
        """The last trap or VM exit in words."""
        return ("last event: " + describe_event(self.last_event)
                if self.last_event is not None else "last event: none yet")

    def serial_text(self) -> str:
        """What the program has printed on COM1."""
        return self.machine.serial.text

    def __repr__(self) -> str:
        out = [self.status(), str(registers_table(self.machine.cpu, previous=self.previous)),
               self.listing_text(), self.event_text(), self.message]
        if self.serial_text():
            out.append(f"serial: {self.serial_text()!r}")
        return "\n".join(out)


def stepper(machine: Machine | Callable[[], Machine], *, program: Program | str | None = None,
            budget: int = 10_000) -> Any:
    """An ipywidgets stepper: Step, Run 10, Run to halt, Reset; registers, listing, last event.

    The buttons call :class:`Stepper` methods; each click runs at most a
    few instructions on the traced interpreter (or ``budget`` on the fast
    path) and redraws the views, well under 100 ms.  Works without a
    frontend: the widget can be made (and its buttons clicked with
    ``button.click()``) in plain Python.

    Parameters
    ----------
    machine : Machine or callable
        See :class:`Stepper`.
    program : Program or str, optional
        For the listing's labels.
    budget : int
        Steps for "Run to halt".

    Returns
    -------
    ipywidgets.VBox
        With attributes ``stepper`` (the :class:`Stepper`), ``buttons`` (a dict
        ``"step"``, ``"run10"``, ``"halt"``, ``"reset"`` → Button) and
        ``refresh`` (redraw).

    Examples
    --------
    >>> from virtcore.hw import Machine
    >>> w = stepper(Machine.with_program("movi r2, 9\\nhlt"))
    >>> w.buttons["step"].click()
    >>> w.stepper.machine.cpu.regs[2], "r2" in w.children[3].children[0].value
    (9, True)
    """
    widgets = require("ipywidgets")
    core = Stepper(machine, program=program, budget=budget)

    def button(label: str, icon: str, tip: str) -> Any:
        return widgets.Button(description=label, icon=icon, tooltip=tip,
                              layout=widgets.Layout(width="auto"))

    buttons = {
        "step": button("Step", "step-forward", "execute one instruction"),
        "run10": button("Run 10", "forward", "execute ten instructions"),
        "halt": button("Run to halt", "fast-forward", f"run until the machine stops "
                       f"(at most {budget} steps)"),
        "reset": button("Reset", "undo", "back to the start"),
    }
    status = widgets.HTML()
    registers = widgets.HTML(layout=widgets.Layout(min_width="300px"))
    listing = widgets.HTML()
    event = widgets.HTML()
    message = widgets.HTML()
    serial = widgets.HTML()

    def refresh() -> None:
        status.value = f'<b style="{_MONO}">{esc(core.status())}</b>'
        registers.value = registers_html(core.machine.cpu, previous=core.previous)
        listing.value = core.listing_html()
        event.value = f"<span>{esc(core.event_text())}</span>"
        colour = "#b00020" if core.stopped else "#1b5e20"
        message.value = f'<span style="color:{colour}">{esc(core.message)}</span>'
        text = core.serial_text()
        serial.value = (f'serial COM1: <code style="{_MONO}">{esc(text)}</code>'
                        if text else "")

    def action(fn: Callable[[], object]) -> Callable[[Any], None]:
        def on_click(_button: Any) -> None:
            try:
                fn()
            except VirtcoreError as exc:  # misuse of the library: show it, do not crash
                core.message = f"error: {exc}"
            refresh()
        return on_click

    buttons["step"].on_click(action(core.step))
    buttons["run10"].on_click(action(lambda: core.step(10)))
    buttons["halt"].on_click(action(core.run_to_halt))
    buttons["reset"].on_click(action(core.reset))
    refresh()
    box = widgets.VBox([
        widgets.HBox(list(buttons.values())),
        status,
        message,
        widgets.HBox([registers, listing]),
        event,
        serial,
    ])
    box.stepper = core
    box.buttons = buttons
    box.refresh = refresh
    return box


# ---------------------------------------------------------------------------
# plots

_MODE_COLOURS = {Privilege.KERNEL: "tab:blue", Privilege.USER: "tab:orange"}


def _short_event(event: Trap | VMExit) -> str:
    if isinstance(event, VMExit):
        return f"exit {event.reason.name}"
    if event.cause.is_interrupt:
        return f"IRQ{event.cause.value - 32}"
    return _CAUSE_WORDS.get(event.cause, (event.cause.name,))[0]


def plot_trace(trace: RunResult | Sequence[TraceEntry], ax: Any = None, *,
               labels: Mapping[int, str] | Program | None = None,
               title: str | None = None) -> Any:
    """Plot pc over steps, one dot per instruction, coloured by privilege mode.

    Traps, interrupts and VM exits are marked with a red cross and their short
    name (``#GP``, ``int 0x80``, ``IRQ0`` …).

    Parameters
    ----------
    trace : RunResult or sequence of TraceEntry
        A run made with ``trace=True``, or its trace.
    ax : matplotlib Axes, optional
        Where to draw; a new figure is made if omitted.
    labels : Program or mapping, optional
        Labels to mark on the pc axis.
    title : str, optional

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ViewError
        If the run was not traced or the trace is empty.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")   # no display needed
    >>> from virtcore.hw import Machine
    >>> ax = plot_trace(Machine.with_program("nop\\nhlt").run(trace=True))
    >>> ax.get_xlabel(), len(ax.collections[0].get_offsets())
    ('step (instructions executed)', 2)
    >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    if isinstance(trace, RunResult):
        if trace.trace is None:
            raise ViewError("this run has no trace: run it with trace=True")
        trace = trace.trace
    entries = list(trace)
    if not entries:
        raise ViewError("the trace is empty: nothing to plot")
    if ax is None:
        plt = require("matplotlib.pyplot")
        _, ax = plt.subplots(figsize=(8, 3))
    ticker = require("matplotlib.ticker")
    xs = list(range(1, len(entries) + 1))
    pcs = [e.pc for e in entries]
    ax.plot(xs, pcs, color="0.8", linewidth=0.8, zorder=1)
    for mode, colour in _MODE_COLOURS.items():
        pts = [(x, e.pc) for x, e in zip(xs, entries) if e.mode is mode]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, color=colour,
                       label=f"{mode.name.lower()} mode", zorder=2)
    events = [(x, e) for x, e in zip(xs, entries) if e.event is not None]
    if events:
        ax.scatter([x for x, _ in events], [e.pc for _, e in events], marker="x", s=60,
                   color="tab:red", label="trap / exit", zorder=3)
        for x, e in events:
            assert e.event is not None
            ax.annotate(_short_event(e.event), (x, e.pc), textcoords="offset points",
                        xytext=(3, 5), fontsize=8, color="tab:red")
    names = _label_map(labels)
    if names:
        lo, hi = min(pcs), max(pcs)
        ticks: dict[int, str] = {}
        last = None
        for address, name in sorted(names.items()):
            if not lo <= address <= hi:
                continue
            text = f"{name} {address:#06x}"
            if last is not None and address - last < (hi - lo) / 12:  # too close: one tick
                ticks[last] += f", {text}"
            else:
                ticks[address], last = text, address
        ax.set_yticks(list(ticks), list(ticks.values()))
    else:
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{int(v):#06x}"))
    ax.set_xlabel("step (instructions executed)")
    ax.set_ylabel("pc")
    ax.set_title(title or f"{len(entries)} steps")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return ax
