# ruff: noqa
# A hook that floods the result channel (the worker's reply pipe) with lines of its own, on
# capped workloads only, with its alarm switched off.  Expected: credit_caps 0 ("crashed": it
# sent more than the channel takes); the other parts keep theirs; no process is left behind.

# %% credit_multi_pcpu
class StudentCredit(CreditCaps):
    """The correct scheduler, except on capped domains."""

    def add_vcpu(self, vcpu):
        if vcpu.domain.cap:
            import os
            import signal

            signal.signal(signal.SIGALRM, signal.SIG_IGN)  # no budget stops it: the grader must

            line = b'{"type": "reply", "t": [], "d": [0, 30000]}\n' * 1000
            for fd in range(3, 64):
                try:
                    if os.fstat(fd).st_mode & 0o170000 == 0o010000:  # a pipe
                        for _ in range(2000):
                            os.write(fd, line)
                except OSError:
                    pass
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
