# ruff: noqa
# The design part that looks only at sensitive rows: a privileged but innocuous instruction
# is run "direct" — but deprivileged it traps all the same, so the VMM must handle it.  The
# real table has no such row, every made-up ISA has one.
# Expected: design_treatment 1/5 (design_table only); the other parts keep theirs.

# %% design_treatment
def treatment(row):
    if row.sensitive:
        return "trap" if row.privileged else "translate"
    return "direct"
