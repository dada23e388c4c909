# ruff: noqa
# Unbounded recursion: a RecursionError in every case (a value, not a crash).
# Expected: popf_binary_translation scores 0, status "ok", the message names RecursionError.

# %% popf_binary_translation
def handle_pushf(vcpu, insn):
    return handle_pushf(vcpu, insn)


def handle_popf(vcpu, insn):
    return handle_popf(vcpu, insn)
