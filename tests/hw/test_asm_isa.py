"""The ISA table, the assembler and the disassembler."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtcore.errors import AssemblyError, DecodeError
from virtcore.hw import ISA, TABLE, assemble, disassemble, format_instruction
from virtcore.hw.isa import CR, Kind, decode, encode, privileged, sensitive


def test_table_is_consistent():
    assert len({r.opcode for r in TABLE}) == len(TABLE)
    for row in TABLE:
        if row.privileged:
            assert row.kind is Kind.SYSTEM, row
        if row.sensitive:
            assert row.kind is Kind.SYSTEM, row  # the translator never inlines them


def test_sensitive_is_not_a_subset_of_privileged_because_of_popf_and_pushf():
    assert set(sensitive()) - set(privileged()) == {"popf", "pushf"}
    assert {"cli", "sti", "hlt", "in", "out", "rdcr", "wrcr", "iret"} <= set(privileged())


def test_system_instructions_required_by_the_course_exist():
    for m in ("cli", "sti", "hlt", "in", "out", "rdcr", "wrcr", "iret", "syscall", "hcall",
              "popf", "pushf", "invlpg"):
        assert m in ISA


def _valid_words():
    def build(row, rd, rs, imm, cr):
        ops = set(row.operands)
        return encode(row.mnemonic,
                      rd=rd if "rd" in ops else 0,
                      rs=rs if ops & {"rs", "mem"} else 0,
                      imm=(cr if "cr" in ops else imm) if ops & {"imm", "uimm", "target", "mem",
                                                                  "port", "cr"} else 0)
    return st.builds(build, st.sampled_from(TABLE), st.integers(0, 7), st.integers(0, 7),
                     st.integers(0, 0xFFFF), st.sampled_from(list(CR)))


@given(st.lists(_valid_words(), min_size=1, max_size=30), st.integers(0, 1000))
def test_assemble_of_disassemble_is_identity(words, origin_words):
    origin = 4 * origin_words
    src = disassemble(words, origin, listing=False)
    assert assemble(src, origin).words == words


@given(st.integers(0, 0xFFFFFFFF))
def test_every_word_either_decodes_and_round_trips_or_is_data(word):
    src = disassemble([word], listing=False)
    assert assemble(src).words == [word]
    if decode(word) is None:
        assert src.startswith(".word")
        with pytest.raises(DecodeError):
            format_instruction(word)


def test_labels_data_equ_org_and_strings():
    p = assemble("""
        .equ PORT, 0x3f8
    start:  li r1, msg
            out PORT, r1
            jmp start
    msg:    .ascii "hi!\\n"
            .org 0x120
    tbl:    .word 1, start, msg+4, -1
    """, origin=0x100)
    assert p.symbols["start"] == 0x100
    assert p.symbols["msg"] == 0x110
    assert p.symbols["tbl"] == 0x120
    assert p.words[4] == int.from_bytes(b"hi!\n", "little")
    assert p.words[-4:] == [1, 0x100, 0x114, 0xFFFFFFFF]
    assert "out 0x3f8, r1" in disassemble(p.words, 0x100)


@pytest.mark.parametrize(("src", "line", "col", "fragment"), [
    ("nop\n  mvo r1, r2", 2, 3, "unknown mnemonic 'mvo'"),
    ("movi r1, 40000", 1, 10, "immediate 40000 out of range"),
    ("add r1", 1, 1, "add takes 2 operand(s)"),
    ("jmp nowhere", 1, 5, "undefined name 'nowhere'"),
    ("x: nop\nx: nop", 2, 1, "label 'x' defined twice"),
    ("ld r1, r2", 1, 8, "expected a memory operand"),
    ("wrcr cr9, r1", 1, 6, "unknown control register 'cr9'"),
    ("r1: nop", 1, 1, "reserved"),
    (".ascii hello", 1, 8, "expected a string"),
    ("  .org 3", 1, 8, "word-aligned"),
    ("movi r1, 12abc", 1, 10, "expected a number"),
])
def test_malformed_source_names_line_and_column(src, line, col, fragment):
    with pytest.raises(AssemblyError) as exc:
        assemble(src)
    assert (exc.value.line, exc.value.column) == (line, col)
    assert fragment in exc.value.message
    assert str(exc.value).startswith(f"line {line}, column {col}:")


def test_branch_targets_are_pc_relative():
    a = assemble("loop: jmp loop", origin=0)
    b = assemble("loop: jmp loop", origin=0x4000)
    assert a.words == b.words  # position independent
    assert format_instruction(a.words[0], 0x4000) == "jmp 0x4000"
