# ruff: noqa
# Executes virtcore's reference credit scheduler from its source file under another name and
# hands it in as StudentCredit.  Expected: every part scores 0 — in the sandbox
# virtcore.sched.credit is redacted whole.

# %% credit_accounting
import builtins
import virtcore.sched.credit as _credit

_stolen = {"__name__": "stolen_" + "credit"}
with open(_credit.__file__, encoding="utf-8") as _f:
    getattr(builtins, "ex" + "ec")(_f.read(), _stolen)


class StudentCredit(_stolen["Cre" + "dit"]):
    pass

# %% credit_boost
pass

# %% credit_caps
pass

# %% credit_multi_pcpu
pass
