# ruff: noqa
# Patches the hypervisor from inside a handler, through an object the scan cannot resolve:
# every later run "finishes" at once.  It only changes what the worker reports, never what the
# grader compares with.  Expected: handlers_interrupt_flag loses points; the others keep theirs.

# %% handlers_interrupt_flag
def handle_cli(vcpu, insn):
    type(vcpu.vm.host).run = lambda self, max_steps=0: None
    vcpu.interrupts_enabled = False
    vcpu.pc += 4


def handle_sti(vcpu, insn):
    vcpu.interrupts_enabled = True
    vcpu.pc += 4


def handle_hlt(vcpu, insn):
    vcpu.pc += 4
    return Action.HALT
