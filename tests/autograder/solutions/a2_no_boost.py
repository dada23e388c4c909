# ruff: noqa
# Close but wrong: no BOOST — a waking vCPU queues behind the CPU hogs.
# Expected: credit_boost loses its points; the other parts keep theirs.

# %% credit_boost
class CreditBoost(CreditAccounting):
    """BOOST (wrong: never given)."""
