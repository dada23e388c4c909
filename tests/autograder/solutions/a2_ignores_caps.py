# ruff: noqa
# Close but wrong: the caps cell treats every domain as uncapped (no cap on credit, no parking).
# Expected: credit_caps loses its points; the other parts keep theirs.

# %% credit_caps
class CreditCaps(CreditBoost):
    """Caps (wrong: ignored) — credit is still redistributed as in the correct solution."""

    def shares(self, doms, total):
        weight_total = sum(w * n for w, n, _ in doms)
        weight_left = weight_total
        peaks = [self.peak(w, n, 0, weight_total) for w, n, _ in doms]
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
