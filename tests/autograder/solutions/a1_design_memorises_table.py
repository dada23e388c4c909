# ruff: noqa
# The design part answered from memory: the real ISA table's mnemonics, looked up, and a
# guess ("direct") for any other.  Right on virtcore.hw.TABLE; wrong on every made-up ISA
# (each has privileged and sensitive rows under invented names).
# Expected: design_treatment 1/5 (design_table only); the other parts keep theirs.

# %% design_treatment
KNOWN = {
    **dict.fromkeys("cli sti hlt in out rdcr wrcr iret invlpg".split(), "trap"),
    **dict.fromkeys("pushf popf".split(), "translate"),
}


def treatment(row):
    return KNOWN.get(row.mnemonic, "direct")
