# ruff: noqa
# A hook that switches its alarm off and sleeps, on capped workloads only: the worker's own
# time budget cannot stop it, the grader's deadline for a reply does.
# Expected: credit_caps "timeout"; the other parts keep theirs; no process is left behind.

# %% credit_multi_pcpu
class StudentCredit(CreditCaps):
    """The correct scheduler, except on capped domains."""

    def add_vcpu(self, vcpu):
        if vcpu.domain.cap:
            import signal
            import time

            signal.signal(signal.SIGALRM, signal.SIG_IGN)
            time.sleep(600)
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
