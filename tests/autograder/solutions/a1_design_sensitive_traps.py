# ruff: noqa
# The design part that forgets the POPF problem: every sensitive instruction is taken to
# trap, so popf/pushf (and every made-up sensitive, unprivileged row) "trap" — yet they never
# do in user mode.  Expected: design_treatment 0/5; the other parts keep theirs.

# %% design_treatment
def treatment(row):
    return "trap" if row.sensitive else "direct"
