# ruff: noqa
# The released notebook, unchanged: every solution raises NotImplementedError.
# Expected: every part 0 with status "not implemented".

# %% design_treatment
def treatment(row):
    # YOUR CODE HERE
    raise NotImplementedError()


# %% handlers_interrupt_flag
def handle_cli(vcpu, insn):
    # YOUR CODE HERE
    raise NotImplementedError()


def handle_sti(vcpu, insn):
    # YOUR CODE HERE
    raise NotImplementedError()


def handle_hlt(vcpu, insn):
    # YOUR CODE HERE
    raise NotImplementedError()


# %% handlers_io
def handle_in(vcpu, insn):
    # YOUR CODE HERE
    raise NotImplementedError()


def handle_out(vcpu, insn):
    # YOUR CODE HERE
    raise NotImplementedError()


# %% handlers_control
def handle_rdcr(vcpu, insn):
    # YOUR CODE HERE
    raise NotImplementedError()


def handle_wrcr(vcpu, insn):
    # YOUR CODE HERE
    raise NotImplementedError()


def handle_iret(vcpu, insn):
    # YOUR CODE HERE
    raise NotImplementedError()


def handle_syscall(vcpu, insn):
    # YOUR CODE HERE
    raise NotImplementedError()


def handle_invlpg(vcpu, insn):
    # YOUR CODE HERE
    raise NotImplementedError()


# %% popf_binary_translation
def handle_pushf(vcpu, insn):
    # YOUR CODE HERE
    raise NotImplementedError()


def handle_popf(vcpu, insn):
    # YOUR CODE HERE
    raise NotImplementedError()
