"""A small binary translator: basic blocks of guest code → Python functions.

Interpreting one instruction at a time costs a fetch, a decode and a
dispatch per instruction.  Like QEMU's TCG and VMware's binary translator
(chapter 2), virtcore translates a *basic block* — a run of ordinary
instructions ending at a branch, a system instruction or a page boundary —
once, into Python source, and then runs the compiled function each time the
guest gets there.  Registers live in Python locals inside a block; a block
that branches back to its own start (a loop) becomes a ``while`` loop.

What a block never contains: system instructions (``cli``, ``in``, ``hlt``,
``popf``, ``syscall`` …).  Those always go through the reference interpreter
(:meth:`virtcore.hw.cpu.CPU.step`), which handles privilege checks, traps and
VM exits.  So translation changes speed, never meaning — the test suite
runs random programs both ways and compares the machines.

Cache invalidation: a block is keyed by its *physical* address, the
privilege level and the translation regime; the frame it was read from is
marked in ``memory.code_frames``, and any write to such a frame (a store,
a DMA, a loader) drops every block read from it (self-modifying code).

>>> from virtcore.hw import Machine
>>> m = Machine.with_program('''
...     movi r1, 0
...     movi r2, 100
... loop: addi r1, 3
...     addi r2, -1
...     cmpi r2, 0
...     jnz loop
...     hlt''')
>>> m.run().steps, m.cpu.regs[1]
(403, 300)
>>> print(m.cpu.translator.source_at(8))  # doctest: +ELLIPSIS
def block(cpu, R, limit, ...):
    r1 = R[1]; r2 = R[2]
    ...
    while True:
        r1 = (r1 + 3) & 0xFFFFFFFF
...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from virtcore.hw.events import Access, Privilege, TrapCause
from virtcore.hw.isa import SP, Instruction, Kind, decode, sext16

if TYPE_CHECKING:
    from virtcore.hw.cpu import CPU

MAX_BLOCK = 64
_M = "0xFFFFFFFF"


@dataclass
class Block:
    """One translated basic block."""

    vpc: int
    ppc: int
    length: int
    loop: bool
    source: str
    fn: Callable[..., int]


class _Gen:
    """Generates the Python source of one block."""

    def __init__(self, insns: list[tuple[int, int, Instruction]], kind: int, user: bool) -> None:
        self.insns = insns
        self.kind = kind  # 0: physical, 1: paging MMU, 2: nested-only (EPT, guest paging off)
        self.user = user and kind == 1
        self.start = insns[0][0]
        self.length = len(insns)
        last_pc, last_word, last_row = insns[-1]
        self.term = last_row if last_row.kind is Kind.BRANCH else None
        self.loop = False
        if self.term is not None and self.term.mnemonic in ("jmp", "jz", "jnz", "jlt", "jge"):
            target = (last_pc + 4 * sext16(last_word)) & 0xFFFFFFFF
            self.loop = target == self.start
        self.has_cmp = any(r.mnemonic in ("cmp", "cmpi") for _, _, r in insns)
        self.has_mem = any(r.mnemonic in ("ld", "st", "push", "pop", "call", "ret")
                           for _, _, r in insns)
        self.written: set[int] = set()
        self.read: set[int] = set()
        self.lines: list[str] = []
        self.ind = 2 if self.loop else 1
        self.tmp = 0

    # -- helpers -----------------------------------------------------------
    def emit(self, line: str, extra: int = 0) -> None:
        self.lines.append("    " * (self.ind + extra) + line)

    def reg(self, r: int) -> str:
        self.read.add(r)
        return f"r{r}"

    def wreg(self, r: int) -> str:
        self.written.add(r)
        self.read.add(r)
        return f"r{r}"

    def count(self, i: int) -> str:
        return f"n + {i}" if self.loop else str(i)

    def exit(self, pc: str, count: str, extra: int) -> None:
        # The write-back is filled in by finish(): in a loop, an exit in the
        # second iteration must also store registers written later in the body.
        self.emit("@WRITEBACK@", extra)
        self.emit(f"cpu.pc = {pc}", extra)
        self.emit(f"return {count}", extra)

    def writeback(self) -> list[str]:
        out = [f"R[{r}] = r{r}" for r in sorted(self.written)]
        if self.has_cmp:
            out.append("cpu.cc_a = ca; cpu.cc_b = cb")
        if self.kind and self.has_mem:
            out.append("DT.lookups += dl")
        return out

    # -- memory access -------------------------------------------------------
    def address(self, base: str, off: int, access: Access, i: int, pc: int) -> str:
        """Emit code leaving the physical address in ``p``; returns nothing useful."""
        a = base if off == 0 else f"({base} + {off}) & {_M}"
        self.emit(f"a = {a}")
        self.emit("if a & 3:")
        self.emit(f"cpu._block_fault(AC, a, {pc:#x})", 1)
        self.exit(f"{pc:#x}", self.count(i), 1)
        if self.kind == 0:
            self.emit("p = a")
            return "p"
        need = (2 if access is Access.WRITE else 0) | (4 if self.user else 0)
        self.emit("dl += 1")
        self.emit("e = TG(a >> PB)")
        test = "e is None" if need == 0 else f"e is None or (e & {need}) != {need}"
        self.emit(f"if {test}:")
        self.emit(f"p = RF(a, {'WR' if access is Access.WRITE else 'RD'}, {self.user})", 1)
        self.emit("if p.__class__ is not int:", 1)
        self.emit(f"cpu._block_fault(p, a, {pc:#x})", 2)
        self.exit(f"{pc:#x}", self.count(i), 2)
        self.emit("else:")
        self.emit("p = (e & FM) | (a & OM)", 1)
        return "p"

    def load(self, dest: str, base: str, off: int, i: int, pc: int) -> None:
        self.address(base, off, Access.READ, i, pc)
        self.emit("if p < MS:")
        self.emit(f"{dest} = W[p >> 2]", 1)
        self.emit("else:")
        self.emit(f"v = cpu._block_mmio_read(p, {pc:#x}, {self.count(i)})", 1)
        self.emit("if v is None:", 1)
        self.exit(f"{pc:#x}", self.count(i), 2)
        self.emit(f"{dest} = v", 1)

    def store(self, value: str, base: str, off: int, i: int, pc: int,
              post: list[str], next_pc: str) -> None:
        self.address(base, off, Access.WRITE, i, pc)
        self.emit("if p < MS:")
        self.emit(f"W[p >> 2] = {value}", 1)
        for line in post:
            self.emit(line, 1)
        self.emit("if (p >> FB) in CF:", 1)
        self.emit("cpu._block_code_write(p)", 2)
        self.exit(next_pc, self.count(i + 1), 2)
        self.emit("else:")
        self.emit(f"if not cpu._block_mmio_write(p, {value}, {pc:#x}, {self.count(i)}):", 1)
        self.exit(f"{pc:#x}", self.count(i), 2)
        for line in post:
            self.emit(line, 1)
        self.exit(next_pc, self.count(i + 1), 1)

    # -- instructions --------------------------------------------------------
    def cond(self, mnemonic: str, opcode: int) -> str:
        if not self.has_cmp:
            return f"cpu._cond({opcode:#x})"
        return {
            "jz": "ca == cb",
            "jnz": "ca != cb",
            "jlt": "(ca ^ 0x80000000) < (cb ^ 0x80000000)",
            "jge": "(ca ^ 0x80000000) >= (cb ^ 0x80000000)",
        }[mnemonic]

    def insn(self, i: int, pc: int, word: int, row: Instruction) -> None:
        m = row.mnemonic
        rd, rs, imm = (word >> 20) & 0xF, (word >> 16) & 0xF, word & 0xFFFF
        s = sext16(imm)
        nxt = f"{(pc + 4) & 0xFFFFFFFF:#x}"
        alu = {"add": "({d} + {s}) & " + _M, "sub": "({d} - {s}) & " + _M,
               "mul": "({d} * {s}) & " + _M, "and": "{d} & {s}", "or": "{d} | {s}",
               "xor": "{d} ^ {s}", "shl": "({d} << ({s} & 31)) & " + _M,
               "shr": "{d} >> ({s} & 31)"}
        if m == "nop":
            return
        if m == "mov":
            src = self.reg(rs)
            self.emit(f"{self.wreg(rd)} = {src}")
        elif m == "movi":
            self.emit(f"{self.wreg(rd)} = {s & 0xFFFFFFFF:#x}")
        elif m == "lui":
            self.emit(f"{self.wreg(rd)} = {imm << 16:#x}")
        elif m == "ori":
            d = self.wreg(rd)
            self.emit(f"{d} = {d} | {imm:#x}")
        elif m == "addi":
            d = self.wreg(rd)
            self.emit(f"{d} = ({d} + {s}) & {_M}")
        elif m in alu:
            src = self.reg(rs)
            d = self.wreg(rd)
            self.emit(f"{d} = " + alu[m].format(d=d, s=src))
        elif m == "cmp":
            self.emit(f"ca = {self.reg(rd)}; cb = {self.reg(rs)}")
        elif m == "cmpi":
            self.emit(f"ca = {self.reg(rd)}; cb = {s & 0xFFFFFFFF:#x}")
        elif m == "ld":
            base = self.reg(rs)
            self.load(self.wreg(rd), base, s, i, pc)
        elif m == "st":
            base = self.reg(rs)
            self.store(self.reg(rd), base, s, i, pc, [], nxt)
        elif m == "push":
            val = self.reg(rs)
            sp = self.wreg(SP)
            self.emit(f"a_sp = ({sp} - 4) & {_M}")
            self.store(val, "a_sp", 0, i, pc, [f"{sp} = a_sp"], nxt)
        elif m == "pop":
            sp = self.wreg(SP)
            self.load("v", sp, 0, i, pc)
            self.emit(f"{sp} = ({sp} + 4) & {_M}")
            self.emit(f"{self.wreg(rd)} = v")
        else:  # pragma: no cover - terminators are handled by finish()
            raise AssertionError(m)

    def finish(self) -> str:
        insns = self.insns
        body = insns[:-1] if self.term is not None else insns
        for i, (pc, word, row) in enumerate(body):
            self.insn(i, pc, word, row)
        L = self.length
        last_pc, last_word, _ = insns[-1]
        nxt = f"{(last_pc + 4) & 0xFFFFFFFF:#x}"
        term = self.term
        if term is None:
            self.exit(nxt, self.count(L), 0)
        else:
            m = term.mnemonic
            target = f"{(last_pc + 4 * sext16(last_word)) & 0xFFFFFFFF:#x}"
            i = L - 1
            if self.loop:
                self.emit(f"n += {L}")
                if m != "jmp":
                    self.emit(f"if not ({self.cond(m, term.opcode)}):")
                    self.emit(f"pc = {nxt}", 1)
                    self.emit("break", 1)
                self.emit(f"if n + {L} > limit:")
                self.emit(f"pc = {target}", 1)
                self.emit("break", 1)
                self.ind = 1
                self.emit("@WRITEBACK@")
                self.emit("cpu.pc = pc")
                self.emit("return n")
            elif m == "jmp":
                self.exit(target, str(L), 0)
            elif m in ("jz", "jnz", "jlt", "jge"):
                self.emit(f"pc = {target} if {self.cond(m, term.opcode)} else {nxt}")
                self.exit("pc", str(L), 0)
            elif m == "call":
                sp = self.wreg(SP)
                self.emit(f"a_sp = ({sp} - 4) & {_M}")
                self.store(nxt, "a_sp", 0, i, last_pc, [f"{sp} = a_sp"], target)
                self.exit(target, str(L), 0)
            elif m == "ret":
                sp = self.wreg(SP)
                self.load("v", sp, 0, i, last_pc)
                self.emit(f"{sp} = ({sp} + 4) & {_M}")
                self.exit("v", str(L), 0)
        lines: list[str] = []
        for line in self.lines:
            if line.strip() == "@WRITEBACK@":
                pad = line[: len(line) - len(line.lstrip())]
                lines.extend(pad + wb for wb in self.writeback())
            else:
                lines.append(line)
        src = "\n".join(lines)
        params = ("cpu, R, limit, W=W, MS=MS, TG=TG, RF=RF, DT=DT, CF=CF, FB=FB, FM=FM, "
                  "OM=OM, PB=PB, AC=AC, RD=RD, WR=WR")
        head = [f"def block({params}):"]
        regs = sorted(self.read | self.written)
        if regs:
            head.append("    " + "; ".join(f"r{r} = R[{r}]" for r in regs))
        if self.has_cmp:
            head.append("    ca = cpu.cc_a; cb = cpu.cc_b")
        if self.kind and self.has_mem:
            head.append("    dl = 0")
        if self.loop:
            head.append("    n = 0")
            head.append("    while True:")
        return "\n".join(head) + "\n" + src + "\n"


class Translator:
    """Translates and caches basic blocks for one CPU.

    Attributes
    ----------
    compiled : int
        Blocks translated so far.
    invalidations : int
        Blocks dropped because their code was overwritten.
    """

    def __init__(self, cpu: CPU) -> None:
        self.cpu = cpu
        self.cache: dict[tuple[int, bool, int, int], Block | None] = {}
        self.by_frame: dict[int, list[tuple[int, bool, int, int]]] = {}
        self.compiled = 0
        self.invalidations = 0
        cpu.memory.on_code_write = self.invalidate_frame

    def invalidate_frame(self, frame: int) -> None:
        """Drop every block read from physical ``frame``."""
        keys = self.by_frame.pop(frame, [])
        for k in keys:
            if self.cache.pop(k, None) is not None:
                self.invalidations += 1
        self.cpu.memory.code_frames.discard(frame)

    def flush(self) -> None:
        """Drop every block."""
        for frame in list(self.by_frame):
            self.invalidate_frame(frame)

    def run_block(self, avail: int) -> int:
        """Run the block at the CPU's pc if there is one that fits in ``avail`` steps.

        Returns the number of instructions executed, 0 when the caller must
        use the interpreter instead (system instruction, fetch needing a
        walk or a fault, block longer than ``avail``).
        """
        cpu = self.cpu
        pc = cpu.pc
        if pc & 3:
            return 0
        mmu = cpu.mmu
        user = cpu.mode is Privilege.USER
        nested = mmu.nested
        if mmu.enabled or nested is not None:
            tr = mmu if mmu.enabled or nested is None else nested
            cfg = tr.config
            e = cpu.itlb.entries.get(pc >> cfg.page_bits)
            if e is None or (user and tr is mmu and not e & 4):
                return 0
            om = cfg.offset_mask
            ppc = (e & ~om) | (pc & om)
            key = (ppc, user, 1 if tr is mmu else 2, id(tr))
        else:
            ppc = pc
            key = (ppc, user, 0, 0)
        blk = self.cache[key] if key in self.cache else self.translate(pc, ppc, key)
        if blk is None or blk.length > avail:
            return 0
        n: int = blk.fn(cpu, cpu.regs, avail)
        if key[2]:  # every instruction fetched from this page hit the iTLB entry
            cpu.itlb.tlb.lookups += n + (cpu._pending is not None)
        return n

    def translate(self, vpc: int, ppc: int, key: tuple[int, bool, int, int]) -> Block | None:
        """Translate the block at physical ``ppc`` (virtual ``vpc``) and cache it."""
        cpu = self.cpu
        mem = cpu.memory
        words = mem.words
        page = mem.frame_size
        insns: list[tuple[int, int, Instruction]] = []
        if ppc < mem.size:
            for i in range(MAX_BLOCK):
                pa = ppc + 4 * i
                if (i and pa % page == 0) or pa >= mem.size:
                    break
                w = words[pa >> 2]
                row = decode(w)
                if row is None or row.kind is Kind.SYSTEM:
                    break
                insns.append(((vpc + 4 * i) & 0xFFFFFFFF, w, row))
                if row.kind is Kind.BRANCH:
                    break
        if not insns:
            self.cache[key] = None
            frame = ppc // page
            self.by_frame.setdefault(frame, []).append(key)
            mem.code_frames.add(frame)
            return None
        gen = _Gen(insns, key[2], key[1])
        source = gen.finish()
        mmu = cpu.mmu
        tr = mmu if key[2] == 1 else mmu.nested
        ns: dict[str, object] = {
            "W": words, "MS": mem.size, "CF": mem.code_frames,
            "FB": mem.frame_size.bit_length() - 1,
            "AC": TrapCause.ALIGNMENT_CHECK, "RD": Access.READ, "WR": Access.WRITE,
            "TG": None, "RF": None, "DT": None, "FM": 0, "OM": 0, "PB": 0,
        }
        if key[2]:
            assert tr is not None  # kind 1/2 blocks exist only while that MMU translates
            cfg = tr.config
            ns.update(TG=tr.tlb.entries.get, RF=tr.refill, DT=tr.tlb, PB=cfg.page_bits,
                      OM=cfg.offset_mask, FM=~cfg.offset_mask)
        exec(compile(source, f"<block {vpc:#x}>", "exec"), ns)
        blk = Block(vpc, ppc, len(insns), gen.loop, source, ns["block"])  # type: ignore[arg-type]
        self.cache[key] = blk
        frame = ppc // page
        self.by_frame.setdefault(frame, []).append(key)
        mem.code_frames.add(frame)
        self.compiled += 1
        return blk

    def source_at(self, vpc: int) -> str:
        """The Python source of a cached block starting at virtual ``vpc`` (for teaching)."""
        for blk in self.cache.values():
            if blk is not None and blk.vpc == vpc:
                return blk.source.rstrip("\n")
        raise KeyError(f"no translated block starts at {vpc:#x}")
