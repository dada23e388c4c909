# ruff: noqa
# Calls the reference implementation (flagged by the scan).
# Expected: handlers_control "integrity"; the others keep theirs.

# %% handlers_control
from virtcore.vmm.handlers import handle_iret, handle_rdcr, handle_syscall, handle_wrcr


def handle_invlpg(vcpu, insn):
    vcpu.pc += 4
