# ruff: noqa
# Finds the grader's own assignment module (case generators and reference VMM) on sys.path,
# executes it under another name and hands in its reference functions.  Expected: every part
# scores 0 — the grader's assignment modules are not in the sandbox.

# %% vmm_setup
import builtins
import os
import sys
import types

_grader = None
for _root in sys.path:
    _path = os.path.join(_root, "autograder", "assign" + "ments", "a3_userspace_vmm.py")
    if os.path.exists(_path):
        _mod = types.ModuleType("stolen_" + "grader")
        vars(sys)["mod" + "ules"][_mod.__name__] = _mod  # dataclasses look their module up
        with open(_path, encoding="utf-8") as _f:
            getattr(builtins, "ex" + "ec")(_f.read(), vars(_mod))
        _grader = vars(_mod)
        break
_ref = _grader["reference_" + "namespace"]()
setup_vm = _ref["setup_vm"]

# %% vmm_run_loop
run_loop = _ref["run_loop"]

# %% vmm_errors
run_vm = _ref["run_vm"]
