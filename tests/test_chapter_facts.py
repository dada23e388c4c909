"""Facts the chapters' demos rely on, checked here instead of in the chapters.

The chapters keep only the asserts that state something a reader should notice; these guard the
demos themselves (the same code, the same numbers), so a change in the library that would make a
chapter's text wrong fails here with a name.
"""

from __future__ import annotations

from virtcore.hw import Machine, assemble


def test_ch0_the_sum_program_stores_55():
    program = assemble("""
        movi r1, 0
        movi r2, 10
loop:   add  r1, r2
        addi r2, -1
        cmpi r2, 0
        jnz  loop
        st   r1, [r0+result]
        hlt
result: .word 0
""")
    machine = Machine.with_program(program)
    machine.run()
    assert machine.cpu.regs[1] == sum(range(1, 11)) == 55
    assert machine.memory.read_word(program.symbols["result"]) == 55
    from virtcore.viz.hw import Stepper

    walk = Stepper(Machine.with_program(program), program=program)
    walk.step(4)
    assert (walk.steps, walk.machine.cpu.regs[1], walk.machine.cpu.regs[2]) == (4, 10, 9)


def test_ch0_kernel_mode_runs_to_the_end_and_hello_prints():
    kernel = Machine.with_program("movi r1, 1\ncli\nmovi r1, 2\nhlt", mode="kernel")
    assert (kernel.run().event, kernel.cpu.regs[1]) == (None, 2)
    hello = Machine.with_program("""
        .equ COM1, 0x3f8
        li   r2, msg
next:   ld   r1, [r2]
        cmpi r1, 0
        jz   done
        out  COM1, r1
        addi r2, 4
        jmp  next
done:   hlt
msg:    .word 'h', 'e', 'l', 'l', 'o', 10, 0
""")
    hello.run()
    assert hello.serial.text == "hello\n"


def test_ch0_event_channels_are_chapter_6():
    from virtcore.viz.course import chapter_of

    assert chapter_of("S6.3").number == 6
