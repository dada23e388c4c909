# ruff: noqa
# Reaches the reference VMM through a name built at run time (the scan cannot see it; the
# reference switched off in the worker catches the call).  Expected: vmm_errors "integrity",
# the other parts full marks.

# %% vmm_errors
import virtcore.kvm.cli as tools


def run_vm(kvm, guest, inputs=b"", max_exits=1000):
    report = getattr(tools, "run_" + "guest")(guest, isa="teaching", inputs=inputs,
                                              max_exits=max_exits)
    result = VmResult(output=report.output.encode("latin-1"), exits=list(report.exits))
    result.stop = report.final
    return result
