# ruff: noqa
# A correct solution of a2_credit_scheduler, one block per graded cell ("# %% <grade_id>").
# The test helpers turn such files into submitted notebooks.

# %% credit_accounting
BOOST, UNDER, OVER = 0, -1, -2
CREDITS_PER_MSEC = 10
TSLICE_US = 30_000
CREDITS_PER_TSLICE = CREDITS_PER_MSEC * TSLICE_US // 1000


class VState:
    """The scheduler's view of one vCPU."""

    def __init__(self, vcpu, home):
        self.vcpu = vcpu
        self.credit = 0
        self.residual = 0
        self.pri = UNDER
        self.home = home
        self.start = 0
        self.active = False
        self.parked = False
        self.queued = False


class CreditAccounting(Scheduler):
    """Credit accounting: burn while running, earn every 30 ms in proportion to weight."""

    tick_us = TSLICE_US // 3
    account_us = TSLICE_US

    def attach(self, sim):
        super().attach(sim)
        self.runq = [[] for _ in sim.pcpus]
        self.homes = 0
        self.balance = 0  # credit left over after the last accounting (all active vCPUs)

    def add_vcpu(self, vcpu):
        vcpu.priv = VState(vcpu, self.homes % len(self.runq))
        self.homes += 1

    def insert(self, s):
        q = self.runq[s.home]
        pos = len(q)
        for i, other in enumerate(q):
            if s.pri > other.pri:
                pos = i
                break
        q.insert(pos, s)
        s.queued = True

    def remove(self, s):
        if s.queued:
            self.runq[s.home].remove(s)
            s.queued = False

    def burn(self, s, now):
        delta = now - s.start
        if delta > 0:
            spent, s.residual = divmod(delta * CREDITS_PER_MSEC + s.residual, 1000)
            s.credit -= spent
            s.start = now

    def tickle(self, s):
        p = self.sim.pcpus[s.home]
        if p.current is None or s.pri > p.current.priv.pri:
            self.sim.tickle(p)

    def wake(self, vcpu, now):
        s = vcpu.priv
        self.insert(s)
        self.tickle(s)

    def block(self, vcpu, now):
        self.remove(vcpu.priv)

    def remove_vcpu(self, vcpu):
        s = vcpu.priv
        self.remove(s)
        s.active = False

    def descheduled(self, vcpu, pcpu, now, ran_us):
        s = vcpu.priv
        self.burn(s, now)
        if vcpu.runnable and self.may_run(s):
            self.insert(s)

    def may_run(self, s):
        return True

    def pick_next(self, pcpu, now):
        q = self.runq[pcpu.id]
        if not q:
            return IDLE
        s = q.pop(0)
        s.queued = False
        return self.run(s, pcpu, now)

    def run(self, s, pcpu, now):
        s.start = now
        s.home = pcpu.id
        return Decision(s.vcpu, TSLICE_US)

    def tick(self, pcpu, now):
        v = pcpu.current
        if v is not None:
            s = v.priv
            self.burn(s, now)
            s.active = True

    def peak(self, w, n, cap, weight_total):
        """The most a domain can use in one period (more when the balance is negative)."""
        peak = n * CREDITS_PER_TSLICE
        if self.balance < 0:
            peak += -(-(-self.balance) * w * n // weight_total)
        return peak

    def shares(self, doms, total):
        """Per-vCPU credit for each active domain, from (weight, active vCPUs, cap)."""
        weight_total = sum(w * n for w, n, _ in doms)
        out = []
        for w, n, cap in doms:
            fair = -(-total * w * n // weight_total)
            fair = min(fair, self.peak(w, n, cap, weight_total))
            out.append(-(-fair // n))
        return out

    def account(self, now):
        doms = {}
        for v in self.sim.vcpus:
            s = v.priv
            if s is not None and s.active:
                doms.setdefault(v.domain.name, []).append(s)
        if not doms:
            return
        groups = list(doms.values())
        params = [(g[0].vcpu.domain.weight, len(g), g[0].vcpu.domain.cap) for g in groups]
        total = CREDITS_PER_TSLICE * len(self.runq)
        if self.balance < 0:  # more was burnt than handed out: hand out more
            total -= self.balance
        per = self.shares(params, total)
        self.balance = 0
        for g, credit in zip(groups, per):
            for s in g:
                s.credit += credit
                self.update(s)
                self.balance += s.credit
        for q in self.runq:  # priorities changed: UNDER before OVER again (a stable sort)
            q.sort(key=lambda s: -s.pri)

    def update(self, s):
        if s.credit < 0:
            s.pri = OVER
            if s.credit < -CREDITS_PER_TSLICE:
                s.credit = -CREDITS_PER_TSLICE
        else:
            if s.pri != BOOST:
                s.pri = UNDER
            if s.credit > CREDITS_PER_TSLICE:
                s.active = False
                s.credit //= 2


# %% credit_boost
class CreditBoost(CreditAccounting):
    """BOOST: a vCPU that wakes with credit left runs first; the next tick takes it away."""

    def wake(self, vcpu, now):
        s = vcpu.priv
        if s.pri == UNDER:
            s.pri = BOOST
        super().wake(vcpu, now)

    def tick(self, pcpu, now):
        v = pcpu.current
        if v is not None and v.priv.pri == BOOST:
            v.priv.pri = UNDER
        super().tick(pcpu, now)


# %% credit_caps
class CreditCaps(CreditBoost):
    """Caps: a capped domain earns at most cap% of a pCPU and is parked when it overspends."""

    def shares(self, doms, total):
        """As the parent's, but a capped domain earns at most its cap and what it cannot
        use goes to the others (the most limited domains are served first)."""
        weight_total = sum(w * n for w, n, _ in doms)
        weight_left = weight_total
        peaks = []
        for w, n, cap in doms:
            peak = self.peak(w, n, cap, weight_total)
            if cap:
                peak = min(peak, -(-cap * CREDITS_PER_TSLICE // 100))
            peaks.append(peak)
        order = sorted(range(len(doms)), key=lambda i: peaks[i] / (doms[i][0] * doms[i][1]))
        out = [0] * len(doms)
        for i in order:
            w, n, _cap = doms[i]
            weight_left -= w * n
            fair = -(-total * w * n // weight_total)
            if fair > peaks[i]:
                if weight_left:
                    total += -(-(fair - peaks[i]) * weight_total // weight_left)
                fair = peaks[i]
            out[i] = -(-fair // n)
        return out

    def may_run(self, s):
        return not s.parked

    def wake(self, vcpu, now):
        if vcpu.priv.parked:
            return
        super().wake(vcpu, now)

    def update(self, s):
        super().update(s)
        dom = s.vcpu.domain
        if dom.cap:
            total_cap = -(-dom.cap * CREDITS_PER_TSLICE // 100)
            cap_credit = -(-total_cap // len(dom.vcpus))
            if s.credit < -cap_credit and not s.parked:
                s.parked = True
                self.remove(s)
                if s.vcpu.running_on is not None:
                    self.sim.tickle(s.vcpu.running_on)
            elif s.credit >= 0 and s.parked:
                s.parked = False
                v = s.vcpu
                if v.runnable and v.running_on is None and not s.queued:
                    self.insert(s)
                    self.tickle(s)


# %% credit_multi_pcpu
class StudentCredit(CreditCaps):
    """Several pCPUs: an idle pCPU, or one with only OVER work, steals better work."""

    def tickle(self, s):
        home = self.sim.pcpus[s.home]
        if home.current is None:
            self.sim.tickle(home)
            return
        for p in self.sim.pcpus:  # an idle pCPU will steal it
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
