# ruff: noqa
# Reaches the reference through a name built at run time (the scan cannot see it; the
# disabled reference catches it).  Expected: handlers_io "integrity".

# %% handlers_io
import virtcore.vmm.handlers as table

handle_in = getattr(table, "handle_" + "in")
handle_out = getattr(table, "handle_" + "out")
