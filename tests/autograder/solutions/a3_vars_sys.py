# ruff: noqa
# Reaches the grader's assignment module through vars(sys) (no "sys.modules" for the scan to
# see): the old worker had imported it.  Expected: every part scores 0 — the worker imports
# nothing of the grader's side.

# %% vmm_setup
import sys

_mods = vars(sys)["mod" + "ules"]
_ref = _mods["autograder.assign" + "ments.a3_userspace_vmm"].reference_namespace()
setup_vm = _ref["setup_vm"]

# %% vmm_run_loop
run_loop = _ref["run_loop"]

# %% vmm_errors
run_vm = _ref["run_vm"]
