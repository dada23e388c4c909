# ruff: noqa
# A hook that raises, but only on capped workloads (every case of the caps part has one).
# Expected: each capped case fails with the student's own traceback, so credit_caps scores 0
# ("ok": the cases ran and failed); the other parts keep theirs.

# %% credit_multi_pcpu
class StudentCredit(CreditCaps):
    """The correct scheduler, except on capped domains."""

    def add_vcpu(self, vcpu):
        if vcpu.domain.cap:
            raise ValueError(f"caps are not supported ({vcpu.domain.name})")
        super().add_vcpu(vcpu)

    def tickle(self, s):
        home = self.sim.pcpus[s.home]
        if home.current is None:
            self.sim.tickle(home)
            return
        for p in self.sim.pcpus:
            if p.current is None:
                self.sim.tickle(p)
                return
        if s.pri > home.current.priv.pri:
            self.sim.tickle(home)

    def pick_next(self, pcpu, now):
        q = self.runq[pcpu.id]
        head = q[0].pri if q else OVER - 1
        if head <= OVER:
            for other in self.sim.pcpus:
                if other is pcpu:
                    continue
                for s in self.runq[other.id]:
                    if s.pri > head and s.vcpu.running_on is None:
                        self.remove(s)
                        return self.run(s, pcpu, now)
        return super().pick_next(pcpu, now)
