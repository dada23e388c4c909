"""Assembler and disassembler for the teaching ISA.

Source format, one statement per line::

    ; a comment (``#`` works too)
    start:  movi r1, 10          ; labels end with ':'
    loop:   addi r1, -1
            cmpi r1, 0
            jnz  loop
            li   r2, 0x12345678  ; pseudo-instruction: lui + ori (always 2 words)
            hlt
    .equ COM1, 0x3f8             ; a named constant
    msg:    .ascii "hi\\n"       ; bytes, packed little-endian, zero-padded to a word
    table:  .word 1, 2, start    ; data words (numbers or labels)
    .org 0x100                   ; move the location counter forward (zero fill)

Operands: registers ``r0``–``r7``/``sp``; numbers in decimal, ``0x`` hex,
``0b`` binary, ``'c'`` characters, optionally negative; a label or
``.equ`` name, optionally ``+``/``-`` a number; memory ``[r2]``,
``[r2+8]``, ``[r2-4]``; control registers by name (``cr3``, ``tvec`` …).

Errors are :class:`~virtcore.errors.AssemblyError` naming line and column.

>>> prog = assemble('''
...     movi r1, 3
... top: addi r1, -1
...     cmpi r1, 0
...     jnz top
...     hlt
... ''')
>>> [hex(w) for w in prog.words]
['0x2100003', '0x510ffff', '0x19100000', '0x2200fffe', '0x42000000']
>>> print(disassemble(prog.words))
0x0000: 02100003  movi r1, 3
0x0004: 0510ffff  addi r1, -1
0x0008: 19100000  cmpi r1, 0
0x000c: 2200fffe  jnz 0x0004
0x0010: 42000000  hlt
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from virtcore.errors import AssemblyError, DecodeError
from virtcore.hw.isa import CR, ISA, MASK32, NUM_REGS, REG_NAMES, decode, fields, sext16

_REGS = {name: i for i, name in enumerate(REG_NAMES)} | {f"r{i}": i for i in range(NUM_REGS)}
_CRS = {c.name.lower(): c.value for c in CR}
_LABEL = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*$")
_MEM = re.compile(r"\[\s*(\w+)\s*(?:([+-])\s*([^\]]+?))?\s*\]$")
_PSEUDO_SIZE = {"li": 2}


@dataclass
class Program:
    """An assembled program: words to load at ``origin`` plus its symbol table.

    >>> p = assemble("start: nop\\n hlt", origin=0x100)
    >>> p.symbols['start'], len(p), p.end
    (256, 2, 264)
    """

    words: list[int]
    origin: int = 0
    symbols: dict[str, int] = field(default_factory=dict)
    lines: dict[int, int] = field(default_factory=dict)  # address → source line

    def __len__(self) -> int:
        return len(self.words)

    @property
    def end(self) -> int:
        """First address after the program."""
        return self.origin + 4 * len(self.words)

    def to_bytes(self) -> bytes:
        """The program as little-endian bytes (what a loader copies into memory)."""
        return b"".join(w.to_bytes(4, "little") for w in self.words)


@dataclass
class _Stmt:
    line: int
    col: int
    text: str
    op: str
    args: list[tuple[str, int]]  # (text, column)
    address: int


def _err(msg: str, line: int, col: int, src: str) -> AssemblyError:
    return AssemblyError(msg, line=line, column=col, source_line=src.rstrip("\n"))


def _split_args(text: str, start_col: int) -> list[tuple[str, int]]:
    """Split on commas outside brackets and quotes, keeping 1-based columns."""
    out: list[tuple[str, int]] = []
    depth, quote, begin = 0, "", 0
    for i, ch in enumerate(text + ","):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            piece = text[begin:i]
            stripped = piece.strip()
            lead = len(piece) - len(piece.lstrip())
            out.append((stripped, start_col + begin + lead))
            begin = i + 1
    if len(out) == 1 and out[0][0] == "":
        return []
    return out


def _strip_comment(line: str) -> str:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote and line[i - 1] != "\\":
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in ";#":
            return line[:i]
    return line


def _parse_string(text: str, line: int, col: int, src: str) -> bytes:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise _err("expected a string in double quotes", line, col, src)
    try:
        return text[1:-1].encode("latin-1").decode("unicode_escape").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:
        raise _err(f"bad string: {exc}", line, col, src) from None


class _Assembler:
    def __init__(self, source: str, origin: int) -> None:
        self.source = source
        self.src_lines = source.splitlines()
        self.origin = origin
        self.symbols: dict[str, int] = {}
        self.stmts: list[_Stmt] = []

    # -- pass 1: parse, assign addresses --------------------------------
    def parse(self) -> None:
        pc = self.origin
        for lineno, raw in enumerate(self.src_lines, start=1):
            body = _strip_comment(raw)
            col = 1
            # labels (several allowed on a line)
            while True:
                m = re.match(r"\s*([A-Za-z_.][A-Za-z0-9_.]*)\s*:", body)
                if not m:
                    break
                name = m.group(1)
                ncol = col + m.start(1)
                if name in self.symbols:
                    raise _err(f"label {name!r} defined twice", lineno, ncol, raw)
                if name.lower() in _REGS or name.lower() in _CRS or name in ISA:
                    raise _err(f"{name!r} is reserved and cannot be a label", lineno, ncol, raw)
                self.symbols[name] = pc
                col += m.end()
                body = body[m.end():]
            stripped = body.strip()
            if not stripped:
                continue
            lead = len(body) - len(body.lstrip())
            opcol = col + lead
            parts = stripped.split(None, 1)
            op = parts[0].lower()
            rest = parts[1] if len(parts) > 1 else ""
            argcol = opcol + len(parts[0]) + (len(stripped[len(parts[0]):]) -
                                               len(stripped[len(parts[0]):].lstrip()))
            args = _split_args(rest, argcol)
            stmt = _Stmt(lineno, opcol, raw, op, args, pc)
            if op == ".equ":
                if len(args) != 2 or not _LABEL.match(args[0][0]):
                    raise _err(".equ needs a name and a value", lineno, opcol, raw)
                if args[0][0] in self.symbols:
                    raise _err(f"name {args[0][0]!r} defined twice", lineno, args[0][1], raw)
                self.symbols[args[0][0]] = self.value(args[1], stmt, allow_forward=False)
                continue
            if op == ".org":
                if len(args) != 1:
                    raise _err(".org needs one address", lineno, opcol, raw)
                target = self.value(args[0], stmt, allow_forward=False)
                if target < pc or target % 4:
                    raise _err(f".org {target:#x} must be word-aligned and not behind the "
                               f"current address {pc:#x}", lineno, args[0][1], raw)
                stmt.op, stmt.args = ".zero", [(str((target - pc) // 4), args[0][1])]
                self.stmts.append(stmt)
                pc = target
                continue
            self.stmts.append(stmt)
            pc += 4 * self.size(stmt)

    def size(self, st: _Stmt) -> int:
        if st.op == ".word":
            if not st.args:
                raise _err(".word needs at least one value", st.line, st.col, st.text)
            return len(st.args)
        if st.op == ".ascii":
            if len(st.args) != 1:
                raise _err(".ascii needs one string", st.line, st.col, st.text)
            data = _parse_string(st.args[0][0], st.line, st.args[0][1], st.text)
            return (len(data) + 3) // 4
        if st.op in _PSEUDO_SIZE:
            return _PSEUDO_SIZE[st.op]
        if st.op not in ISA:
            raise _err(f"unknown mnemonic {st.op!r}", st.line, st.col, st.text)
        return 1

    # -- operand parsing ---------------------------------------------------
    def value(self, arg: tuple[str, int], st: _Stmt, *, allow_forward: bool = True) -> int:
        text, col = arg
        if not text:
            raise _err("missing operand", st.line, col, st.text)
        m = re.fullmatch(r"([A-Za-z_.][A-Za-z0-9_.]*)\s*(?:([+-])\s*(.+))?", text)
        if m and m.group(1).lower() not in _REGS:
            name = m.group(1)
            if name not in self.symbols:
                what = "undefined name" if allow_forward else "name not defined yet"
                raise _err(f"{what} {name!r}", st.line, col, st.text)
            base = self.symbols[name]
            if m.group(2):
                off = self.number(m.group(3), st, col + m.start(3))
                base = base + off if m.group(2) == "+" else base - off
            return base
        return self.number(text, st, col)

    def number(self, text: str, st: _Stmt, col: int) -> int:
        t = text.strip()
        try:
            if len(t) == 3 and t[0] == t[2] == "'":
                return ord(t[1])
            return int(t, 0)
        except ValueError:
            raise _err(f"expected a number, got {text!r}", st.line, col, st.text) from None

    def reg(self, arg: tuple[str, int], st: _Stmt) -> int:
        text, col = arg
        r = _REGS.get(text.lower())
        if r is None:
            raise _err(f"expected a register r0–r7 or sp, got {text!r}", st.line, col, st.text)
        return r

    def ranged(self, v: int, lo: int, hi: int, what: str, arg: tuple[str, int], st: _Stmt) -> int:
        if not lo <= v <= hi:
            raise _err(f"{what} {v} out of range [{lo}, {hi}]", st.line, arg[1], st.text)
        return v

    # -- pass 2: encode ----------------------------------------------------
    def encode(self, st: _Stmt) -> list[int]:
        op, args = st.op, st.args
        if op == ".zero":
            return [0] * int(args[0][0])
        if op == ".word":
            return [self.value(a, st) & MASK32 for a in args]
        if op == ".ascii":
            data = _parse_string(args[0][0], st.line, args[0][1], st.text)
            data += b"\0" * (-len(data) % 4)
            return [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]
        if op == "li":
            if len(args) != 2:
                raise _err("li needs 2 operands: li rd, value", st.line, st.col, st.text)
            rd = self.reg(args[0], st)
            v = self.value(args[1], st)
            self.ranged(v, -(1 << 31), MASK32, "value", args[1], st)
            v &= MASK32
            return [ISA["lui"].opcode << 24 | rd << 20 | v >> 16,
                    ISA["ori"].opcode << 24 | rd << 20 | (v & 0xFFFF)]
        row = ISA[op]
        if len(args) != len(row.operands):
            raise _err(f"{op} takes {len(row.operands)} operand(s): {row.syntax}",
                       st.line, st.col, st.text)
        rd = rs = imm = 0
        for kind, arg in zip(row.operands, args):
            if kind == "rd":
                rd = self.reg(arg, st)
            elif kind == "rs":
                rs = self.reg(arg, st)
            elif kind == "imm":
                imm = self.ranged(self.value(arg, st), -0x8000, 0x7FFF, "immediate", arg, st)
            elif kind in ("uimm", "port"):
                imm = self.ranged(self.value(arg, st), 0, 0xFFFF, kind, arg, st)
            elif kind == "target":
                dest = self.value(arg, st)
                if dest % 4:
                    raise _err(f"branch target {dest:#x} is not word-aligned",
                               st.line, arg[1], st.text)
                delta = (dest - st.address) & MASK32  # addresses wrap at 2**32
                if delta >= 1 << 31:
                    delta -= 1 << 32
                imm = self.ranged(delta // 4, -0x8000, 0x7FFF,
                                  "branch distance (words)", arg, st)
            elif kind == "cr":
                c = _CRS.get(arg[0].lower())
                if c is None:
                    raise _err(f"unknown control register {arg[0]!r} (one of "
                               f"{', '.join(_CRS)})", st.line, arg[1], st.text)
                imm = c
            elif kind == "mem":
                m = _MEM.match(arg[0])
                if not m:
                    raise _err(f"expected a memory operand like [r2+8], got {arg[0]!r}",
                               st.line, arg[1], st.text)
                rs = self.reg((m.group(1), arg[1] + 1), st)
                if m.group(2):
                    off = self.value((m.group(3), arg[1] + m.start(3)), st)
                    off = off if m.group(2) == "+" else -off
                    imm = self.ranged(off, -0x8000, 0x7FFF, "offset", arg, st)
        return [(row.opcode << 24) | (rd << 20) | (rs << 16) | (imm & 0xFFFF)]

    def run(self) -> Program:
        self.parse()
        words: list[int] = []
        lines: dict[int, int] = {}
        for st in self.stmts:
            out = self.encode(st)
            if st.op != ".zero":
                for k in range(len(out)):
                    lines[st.address + 4 * k] = st.line
            words.extend(out)
        return Program(words, self.origin, dict(self.symbols), lines)


def assemble(source: str, origin: int = 0) -> Program:
    """Assemble ``source`` for loading at ``origin`` (a word-aligned byte address).

    Raises
    ------
    AssemblyError
        With the line and column of the first problem.

    >>> assemble("movi r9, 1")
    Traceback (most recent call last):
    ...
    virtcore.errors.AssemblyError: line 1, column 6: expected a register r0–r7 or sp, got 'r9'
        movi r9, 1
             ^
    """
    if origin % 4 or origin < 0:
        raise AssemblyError(f"origin {origin:#x} must be a non-negative multiple of 4",
                            line=1, column=1)
    return _Assembler(source, origin).run()


def format_instruction(word: int, pc: int = 0) -> str:
    """Disassemble one word at address ``pc``.

    >>> format_instruction(0x30120008)
    'ld r1, [r2+8]'
    >>> format_instruction(0x46020003)
    'wrcr cr3, r2'

    Raises
    ------
    DecodeError
        If ``word`` is not a valid instruction.
    """
    row = decode(word)
    if row is None:
        raise DecodeError(f"{word:#010x} is not a valid instruction")
    _, rd, rs, imm = fields(word)
    parts = []
    for kind in row.operands:
        if kind == "rd":
            parts.append(REG_NAMES[rd])
        elif kind == "rs":
            parts.append(REG_NAMES[rs])
        elif kind == "imm":
            parts.append(str(sext16(imm)))
        elif kind == "uimm" or kind == "port":
            parts.append(f"{imm:#x}")
        elif kind == "target":
            parts.append(f"{(pc + 4 * sext16(imm)) & MASK32:#06x}")
        elif kind == "cr":
            parts.append(CR(imm).name.lower())
        elif kind == "mem":
            off = sext16(imm)
            parts.append(f"[{REG_NAMES[rs]}{'+' if off >= 0 else '-'}{abs(off)}]" if off
                         else f"[{REG_NAMES[rs]}]")
    return f"{row.mnemonic} {', '.join(parts)}".strip()


def disassemble_lines(words: Sequence[int], origin: int = 0) -> Iterable[tuple[int, int, str]]:
    """Yield ``(address, word, text)``; words that do not decode become ``.word``."""
    for i, w in enumerate(words):
        pc = origin + 4 * i
        text = format_instruction(w, pc) if decode(w) is not None else f".word {w:#010x}"
        yield pc, w, text


def disassemble(words: Sequence[int], origin: int = 0, *, listing: bool = True) -> str:
    """Disassemble words loaded at ``origin``.

    With ``listing=False`` the output is plain source that :func:`assemble`
    turns back into the same words (at the same origin).

    >>> src = disassemble([0x02100003, 0xdeadbeef], listing=False)
    >>> print(src)
    movi r1, 3
    .word 0xdeadbeef
    >>> assemble(src).words == [0x02100003, 0xdeadbeef]
    True
    """
    out = []
    for pc, w, text in disassemble_lines(words, origin):
        out.append(f"{pc:#06x}: {w:08x}  {text}" if listing else text)
    return "\n".join(out)
