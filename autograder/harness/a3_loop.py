"""The reference ``run_loop`` of assignment 3 (the loop of ``virtcore.kvm.cli.run_guest``).

Staged into the sandbox only for the parts that build on it (``vmm_setup``, ``vmm_errors``),
never for ``vmm_run_loop``, whose answer it is.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from autograder.harness.a3 import COM1, MAX_EXITS
from virtcore.kvm.api import (
    KVM_EXIT_IO,
    KVM_EXIT_IO_OUT,
    KVM_EXIT_MMIO,
    KVM_RUN,
    read_exit,
)

__all__ = ["ref_loop"]


def ref_loop(machine: Any, result: Any, inputs: bytes = b"",
              max_exits: int = MAX_EXITS) -> Any:
    """The loop of :func:`virtcore.kvm.cli.run_guest` — the reference ``run_loop``.

    ``OSError`` from ``KVM_RUN`` (``EINTR`` included) is passed on to the caller.
    """
    run, vcpu = machine.run, machine.vcpu
    pending = bytearray(inputs)
    scratch: dict[int, int] = {}  # the MMIO scratch device: address -> byte
    exits = result.exits
    while len(exits) < max_exits:
        vcpu.ioctl(KVM_RUN, 0)
        rec = read_exit(run)
        if rec.reason == KVM_EXIT_IO:
            if rec.direction == KVM_EXIT_IO_OUT:
                if rec.port == COM1:
                    result.output = bytes(result.output) + rec.data[::rec.size]
            else:
                assert rec.size is not None  # an IO exit has a size and a count
                assert rec.count is not None
                n = rec.size * rec.count
                data = bytes(pending[:n]).ljust(n, b"\0")
                del pending[:n]
                run.set_io_data(data)
                rec = replace(rec, data=data)
        elif rec.reason == KVM_EXIT_MMIO:
            assert rec.phys_addr is not None  # an MMIO exit has an address and a size
            assert rec.size is not None
            if rec.is_write:
                for i, b in enumerate(rec.data):
                    scratch[rec.phys_addr + i] = b
            else:
                data = bytes(scratch.get(rec.phys_addr + i, 0x41 + i) for i in range(rec.size))
                run.set_mmio_data(data)
                rec = replace(rec, data=data)
        exits.append(rec)
        if rec.reason not in (KVM_EXIT_IO, KVM_EXIT_MMIO):
            result.stop = rec.name
            return result
    result.stop = "max_exits"
    return result
