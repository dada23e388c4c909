# ruff: noqa
# A scheduler whose decisions are not the machine's to make: by case, it names a vCPU of a
# domain that is not in this case, a vCPU left over from an earlier case, one that is not
# runnable yet, or garbage (a name instead of a vCPU, a float timeslice, not a Decision at
# all).  Expected: every case of every part fails with the simulator's own refusal
# (InvalidDecisionError): every part 0, no more than the blank.

# %% credit_accounting
class StudentCredit(Scheduler):
    """Always a wrong answer, of a different kind in each case."""

    tick_us = 10_000
    account_us = 30_000
    cases = []

    def attach(self, sim):
        super().attach(sim)
        StudentCredit.cases.append(sim)
        self.kind = len(StudentCredit.cases) % 6

    def wake(self, vcpu, now):
        pass

    def descheduled(self, vcpu, pcpu, now, ran_us):
        pass

    def pick_next(self, pcpu, now):
        vcpus = self.sim.vcpus
        if self.kind == 0:
            return Decision(Domain("ghost").vcpus[0], 30_000)  # not of this case
        if self.kind == 1 and len(StudentCredit.cases) > 1:
            return Decision(StudentCredit.cases[0].vcpus[0], 30_000)  # an earlier case's
        if self.kind == 2:
            return Decision(vcpus[0].name, 30_000)  # a name, not a vCPU
        if self.kind == 3:
            return Decision(vcpus[0], 2.5)  # a float timeslice
        if self.kind == 4:
            return (vcpus[0], 30_000)  # not a Decision
        waiting = [v for v in vcpus if not v.runnable or v.running_on is not None]
        return Decision(waiting[0] if waiting else Domain("ghost").vcpus[0], 30_000)

# %% credit_boost
pass

# %% credit_caps
pass

# %% credit_multi_pcpu
pass
