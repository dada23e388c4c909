# ruff: noqa
# Lets the reference VMM loop do the work.  Flagged by the scan in this cell; the cell still
# runs when the other parts are graded (the reference is switched off there, and they do not
# call run_vm).  Expected: vmm_errors "integrity", the other parts full marks.

# %% vmm_errors
from virtcore.kvm.cli import run_guest


def run_vm(kvm, guest, inputs=b"", max_exits=1000):
    result = VmResult()
    try:
        report = run_guest(guest, isa="teaching", inputs=inputs, max_exits=max_exits)
    except OSError as e:
        result.stop, result.error = "error", e.errno
        return result
    result.output = report.output.encode("latin-1")
    result.exits = list(report.exits)
    result.stop = report.final
    return result
