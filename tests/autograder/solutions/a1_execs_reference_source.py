# ruff: noqa
# Reads virtcore's reference handlers from their source file and executes them under another
# module name (the scan sees no reference name, the runtime switch-off of the old worker only
# replaced the names in the loaded module).  Expected: handlers_io scores 0 — in the sandbox
# the part's own handlers are redacted in the source (and there is no .pyc to unmarshal).

# %% handlers_io
import builtins
import virtcore.vmm.handlers as _table

_run = getattr(builtins, "ex" + "ec")
_stolen = {"__name__": "stolen_" + "table"}
with open(_table.__file__, encoding="utf-8") as _f:
    _run(_f.read(), _stolen)
_stolen["Action"] = Action  # the hypervisor's own enum (the notebook's set-up imports it)
handle_in = _stolen["handle_" + "in"]
handle_out = _stolen["handle_" + "out"]
