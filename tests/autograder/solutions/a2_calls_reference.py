# ruff: noqa
# Calls the reference's accounting arithmetic (credit_shares) from the caps cell: flagged in
# this cell by the scan, and caught at run time in every other part, since StudentCredit
# inherits this shares().  Expected: every part "integrity".

# %% credit_caps
from virtcore.sched import credit_shares


class CreditCaps(CreditBoost):
    """Caps — by asking the reference for the numbers."""

    def shares(self, doms, total):
        return credit_shares(doms, len(self.runq), credit_balance=min(self.balance, 0))

    def may_run(self, s):
        return not s.parked

    def wake(self, vcpu, now):
        if vcpu.priv.parked:
            return
        super().wake(vcpu, now)
