# ruff: noqa
# Close but wrong: one run queue per pCPU and no work stealing — an idle pCPU stays idle
# while vCPUs wait on another pCPU's queue.  Expected: credit_multi_pcpu loses its points.

# %% credit_multi_pcpu
class StudentCredit(CreditCaps):
    """Several pCPUs (wrong: never steals, wakes only the home pCPU)."""
