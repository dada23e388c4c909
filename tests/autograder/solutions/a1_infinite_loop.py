# ruff: noqa
# An infinite loop in a handler.  Expected: handlers_io "timeout"; the others keep theirs.

# %% handlers_io
def handle_in(vcpu, insn):
    vcpu.regs[insn.rd] = vcpu.vm.port_in(insn.imm)
    vcpu.pc += 4


def handle_out(vcpu, insn):
    while True:
        pass
