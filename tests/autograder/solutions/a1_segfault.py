# ruff: noqa
# A segfault the scan cannot see: repr() of a deeply nested list with the recursion limit
# lifted overflows the C stack.  Expected: popf_binary_translation "crashed" (SIGSEGV).

# %% popf_binary_translation
import sys


def handle_pushf(vcpu, insn):
    sys.setrecursionlimit(10**7)
    nested = []
    for _ in range(10**6):
        nested = [nested]
    return repr(nested)


def handle_popf(vcpu, insn):
    vcpu.pc += 4
