# ruff: noqa
# The worker kills itself (SIGKILL), which the scan does not flag.
# Expected: handlers_control "crashed"; the others keep theirs.

# %% handlers_control
import os
import signal


def handle_rdcr(vcpu, insn):
    os.kill(os.getpid(), signal.SIGKILL)


def handle_wrcr(vcpu, insn):
    vcpu.crs[CR(insn.imm)] = vcpu.regs[insn.rs]
    vcpu.pc += 4


def handle_iret(vcpu, insn):
    vcpu.pc = vcpu.crs[CR.EPC]


def handle_syscall(vcpu, insn):
    return vcpu.reflect(TrapCause.SYSCALL)


def handle_invlpg(vcpu, insn):
    vcpu.pc += 4
