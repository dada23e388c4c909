# ruff: noqa
# A correct solution of a1_trap_and_emulate, one block per graded cell ("# %% <grade_id>").
# The notebook's set-up cells (the preamble, see the tests) import Action, CR, Privilege,
# TrapCause, CR0_PG, ESTATUS_USER, FLAG_IF and MASK32.

# %% design_treatment
def treatment(row):
    # the guest kernel runs deprivileged: what traps there reaches the VMM by itself
    if row.privileged:
        return "trap"
    # sensitive, yet no trap: it would run with the wrong effect, unseen
    if row.sensitive:
        return "translate"
    return "direct"


# %% handlers_interrupt_flag
def handle_cli(vcpu, insn):
    vcpu.interrupts_enabled = False  # the *virtual* IF
    vcpu.pc += 4
    return Action.CONTINUE


def handle_sti(vcpu, insn):
    vcpu.interrupts_enabled = True
    vcpu.pc += 4
    return Action.CONTINUE


def handle_hlt(vcpu, insn):
    vcpu.pc += 4
    return Action.HALT


# %% handlers_io
def handle_in(vcpu, insn):
    vcpu.regs[insn.rd] = vcpu.vm.port_in(insn.imm) & MASK32
    vcpu.pc += 4
    return Action.CONTINUE


def handle_out(vcpu, insn):
    vcpu.vm.port_out(insn.imm, vcpu.regs[insn.rs])
    vcpu.pc += 4
    return Action.CONTINUE


# %% handlers_control
def handle_rdcr(vcpu, insn):
    vcpu.regs[insn.rd] = vcpu.crs[CR(insn.imm)]
    vcpu.pc += 4
    return Action.CONTINUE


def handle_wrcr(vcpu, insn):
    cr = CR(insn.imm)
    value = vcpu.regs[insn.rs] & MASK32
    if cr is CR.CR0 and value & CR0_PG:
        return vcpu.crash("guest paging is not virtualized by this VMM")
    vcpu.crs[cr] = value
    vcpu.pc += 4
    return Action.CONTINUE


def handle_iret(vcpu, insn):
    status = vcpu.crs[CR.ESTATUS]
    vcpu.flags = status
    vcpu.mode = Privilege.USER if status & ESTATUS_USER else Privilege.KERNEL
    vcpu.pc = vcpu.crs[CR.EPC]
    return Action.CONTINUE


def handle_syscall(vcpu, insn):
    return vcpu.reflect(TrapCause.SYSCALL)


def handle_invlpg(vcpu, insn):
    vcpu.pc += 4
    return Action.CONTINUE


# %% popf_binary_translation
def handle_pushf(vcpu, insn):
    if vcpu.push(vcpu.flags):
        vcpu.pc += 4
    return Action.CONTINUE


def handle_popf(vcpu, insn):
    value = vcpu.pop()
    if value is None:  # the pop faulted and the fault was reflected
        return Action.CONTINUE
    if vcpu.mode is Privilege.USER:  # user mode cannot change IF
        value = (value & ~FLAG_IF) | (vcpu.flags & FLAG_IF)
    vcpu.flags = value
    vcpu.pc += 4
    return Action.CONTINUE
