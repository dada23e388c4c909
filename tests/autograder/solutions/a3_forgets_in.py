# ruff: noqa
# Close but wrong: the loop records the data of an IN but never writes it into kvm_run, so
# the guest reads whatever was left in the port-I/O page.  Expected: vmm_run_loop loses
# points with a message pointing at the IN (run.set_io_data); the other parts keep theirs.

# %% vmm_run_loop
def run_loop(machine, result, inputs=b"", max_exits=1000):
    run = machine.run
    pending = bytearray(inputs)
    scratch = {}
    while len(result.exits) < max_exits:
        machine.vcpu.ioctl(KVM_RUN, 0)
        reason = run.exit_reason
        if reason == KVM_EXIT_IO:
            io = run.io
            if io.direction == KVM_EXIT_IO_OUT:
                data = run.io_data()
                if io.port == COM1:
                    result.output += data[::io.size]
            else:
                n = io.size * io.count
                data = bytes(pending[:n]).ljust(n, b"\0")
                del pending[:n]
                # forgot: run.set_io_data(data)
            result.exits.append(ExitRecord(reason, port=io.port, direction=io.direction,
                                           size=io.size, count=io.count, data=data))
        elif reason == KVM_EXIT_MMIO:
            mmio = run.mmio
            if mmio.is_write:
                data = run.mmio_data()
                for i, b in enumerate(data):
                    scratch[mmio.phys_addr + i] = b
            else:
                data = bytes(scratch.get(mmio.phys_addr + i, 0x41 + i) for i in range(mmio.len))
                run.set_mmio_data(data)
            result.exits.append(ExitRecord(reason, phys_addr=mmio.phys_addr, size=mmio.len,
                                           is_write=bool(mmio.is_write), data=data))
        else:
            result.exits.append(read_exit(run))
            result.stop = exit_name(reason)
            return result
    result.stop = "max_exits"
    return result
