# ruff: noqa
# Patches virtcore from the notebook (flagged by the scan).
# Expected: handlers_interrupt_flag "integrity"; the others keep theirs.

# %% handlers_interrupt_flag
import virtcore.vmm.hypervisor as hvm

hvm.Hypervisor._dispatch = lambda self, vcpu, insn: None


def handle_cli(vcpu, insn):
    vcpu.pc += 4


def handle_sti(vcpu, insn):
    vcpu.pc += 4


def handle_hlt(vcpu, insn):
    vcpu.pc += 4
