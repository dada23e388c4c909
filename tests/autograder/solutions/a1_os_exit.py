# ruff: noqa
# A kernel crash: the in handler ends the process with os._exit (not caught by the scan).
# Expected: handlers_io "crashed"; the others keep theirs.

# %% handlers_io
import os


def handle_in(vcpu, insn):
    os._exit(0)


def handle_out(vcpu, insn):
    vcpu.vm.port_out(insn.imm, vcpu.regs[insn.rs])
    vcpu.pc += 4
    return Action.CONTINUE
