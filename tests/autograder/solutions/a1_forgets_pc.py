# ruff: noqa
# Close but wrong: cli forgets to step over the instruction (no vcpu.pc += 4).
# Expected: handlers_interrupt_flag loses points ("did not advance pc"); the others keep theirs.

# %% handlers_interrupt_flag
def handle_cli(vcpu, insn):
    vcpu.interrupts_enabled = False
    return Action.CONTINUE


def handle_sti(vcpu, insn):
    vcpu.interrupts_enabled = True
    vcpu.pc += 4
    return Action.CONTINUE


def handle_hlt(vcpu, insn):
    vcpu.pc += 4
    return Action.HALT
