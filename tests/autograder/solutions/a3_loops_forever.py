# ruff: noqa
# Ignores HLT (and every other exit that is not IO or MMIO) and never counts its exits: after
# the guest's hlt, KVM_RUN goes on forever.  Expected: vmm_run_loop "timeout"; the other
# parts keep theirs (the errors part runs with the reference loop).

# %% vmm_run_loop
def run_loop(machine, result, inputs=b"", max_exits=1000):
    run = machine.run
    pending = bytearray(inputs)
    while True:
        machine.vcpu.ioctl(KVM_RUN, 0)
        if run.exit_reason == KVM_EXIT_IO:
            io = run.io
            if io.direction == KVM_EXIT_IO_OUT:
                if io.port == COM1:
                    result.output += run.io_data()[:1]
            else:
                data = bytes(pending[:4]).ljust(4, b"\0")
                del pending[:4]
                run.set_io_data(data)
        elif run.exit_reason == KVM_EXIT_MMIO and not run.mmio.is_write:
            run.set_mmio_data(b"ABCD")
        # anything else (HLT…): wait for an interrupt and run again
