# ruff: noqa
# A memory hog: hlt asks for 4 GiB.  Expected: handlers_interrupt_flag "crashed" (memory).

# %% handlers_interrupt_flag
def handle_cli(vcpu, insn):
    vcpu.interrupts_enabled = False
    vcpu.pc += 4


def handle_sti(vcpu, insn):
    vcpu.interrupts_enabled = True
    vcpu.pc += 4


def handle_hlt(vcpu, insn):
    hog = bytearray(4 << 30)
    vcpu.pc += 4
    return hog and Action.HALT
