"""Guest instructions per second of the hw CPU on a loop, against a bare interpreter.

The baseline is the simplest honest pure-Python interpreter for the same
encoding: instructions pre-decoded into tuples, an ``if``/``elif`` chain,
registers in a list, flags as the last compare's operands.  It has no
privilege checks, no traps, no devices, no paging — it only runs this loop.

The hw CPU runs the same words untraced, with paging off and with paging on
(identity-mapped code and data pages, TLB on every access).

Targets (issue 2): ≥ 25 % of the baseline and ≥ 5 M guest instructions/s.
"""

from __future__ import annotations

from benchmarks._util import Row, best_of
from virtcore.hw import Machine, assemble
from virtcore.hw.isa import fields, sext16

ITERATIONS = 200_000
LOOP = f"""
        li   r5, 0x8000      ; a counter in memory
        movi r1, 0
        li   r2, {ITERATIONS}
loop:   ld   r3, [r5]
        addi r3, 1
        st   r3, [r5]
        add  r1, r3
        addi r2, -1
        cmpi r2, 0
        jnz  loop
        hlt
"""


def baseline(words: list[int], mem_words: int) -> int:
    """A bare interpreter for the loop's instructions; returns instructions executed."""
    prog = []
    for w in words:
        op, rd, rs, imm = fields(w)
        prog.append((op, rd, rs, imm, sext16(imm)))
    mem = [0] * mem_words
    r = [0] * 8
    pc = 0
    ca = cb = 0
    n = 0
    M = 0xFFFFFFFF
    while True:
        op, rd, rs, imm, s = prog[pc >> 2]
        n += 1
        if op == 0x30:  # ld
            r[rd] = mem[((r[rs] + s) & M) >> 2]
            pc += 4
        elif op == 0x05:  # addi
            r[rd] = (r[rd] + s) & M
            pc += 4
        elif op == 0x31:  # st
            mem[((r[rs] + s) & M) >> 2] = r[rd]
            pc += 4
        elif op == 0x10:  # add
            r[rd] = (r[rd] + r[rs]) & M
            pc += 4
        elif op == 0x19:  # cmpi
            ca, cb = r[rd], s & M
            pc += 4
        elif op == 0x22:  # jnz
            pc = pc + 4 * s if ca != cb else pc + 4
        elif op == 0x02:  # movi
            r[rd] = s & M
            pc += 4
        elif op == 0x03:  # lui
            r[rd] = imm << 16
            pc += 4
        elif op == 0x04:  # ori
            r[rd] |= imm
            pc += 4
        elif op == 0x42:  # hlt
            return n
        else:
            raise ValueError(f"baseline cannot run opcode {op:#x}")


def _machine(paging: bool) -> Machine:
    m = Machine.with_program(LOOP, memory_size=64 * 1024)
    if paging:
        alloc = m.frame_allocator(reserved=range(9))  # program and data frames
        root = alloc.alloc() * m.memory.frame_size
        m.mmu.root = root
        for page in (0x0000, 0x8000):
            m.mmu.map(page, page, allocator=alloc)
        m.enable_paging(root)
    return m


def hw_run(paging: bool) -> int:
    """Run the loop on a fresh machine; returns instructions executed."""
    m = _machine(paging)
    r = m.run(max_steps=10 * ITERATIONS)
    assert r.reason.name == "HALTED", r
    assert m.cpu.regs[1] == ITERATIONS * (ITERATIONS + 1) // 2 & 0xFFFFFFFF
    return m.cpu.retired


def run(repeat: int = 3) -> list[Row]:
    """Measure the baseline and the hw CPU in this run."""
    words = assemble(LOOP).words
    t_base, n_base = best_of(lambda: baseline(words, 64 * 1024 // 4), repeat)
    base = n_base / t_base
    rows = [Row("bare pure-Python interpreter (baseline)", base / 1e6, "M instr/s")]
    for paging in (False, True):
        t, n = best_of(lambda p=paging: hw_run(p), repeat)
        ips = n / t
        label = "hw CPU, translated, paging " + ("on (TLB per access)" if paging else "off")
        rows.append(Row(label, ips / 1e6, "M instr/s",
                        f"{ips / base:.2f}x baseline (target >= 0.25x and >= 5 M/s)"))
    t, n = best_of(_reference_only, 1)
    rows.append(Row("hw CPU, reference interpreter only (step by step)", n / t / 1e6,
                    "M instr/s", f"{n / t / base:.2f}x baseline"))
    return rows


def _reference_only() -> int:
    m = _machine(False)
    m.cpu.translated = False
    m.run(max_steps=200_000)
    return m.cpu.retired
