"""The dispatcher (a table by number), its trace, memory_op and XenStore permissions."""

from __future__ import annotations

import pytest

from virtcore.errors import ConfigurationError
from virtcore.xen import Xen, XenError
from virtcore.xen import constants as k
from virtcore.xen.memop import (
    XENMEM_current_reservation,
    XENMEM_decrease_reservation,
    XENMEM_populate_physmap,
    XenMemoryReservation,
)


def test_another_module_registers_a_handler_by_number() -> None:
    xen = Xen(frames=128)
    calls = []

    def do_mmu_update(xen_: Xen, dom: object, vcpu: int, args: tuple[object, ...]) -> int:
        calls.append((dom, vcpu, args))
        return -k.EINVAL if args == ("bad",) else 0

    assert xen.hypercall(0, k.HYPERVISOR_mmu_update, "x") == -k.ENOSYS
    xen.hypercalls.register(k.HYPERVISOR_mmu_update, do_mmu_update)
    assert xen.hypercall(0, k.HYPERVISOR_mmu_update, "ok") == 0
    assert xen.hypercall(0, k.HYPERVISOR_mmu_update, "bad") == -k.EINVAL
    assert calls[0][0] is xen.dom0 and calls[0][2] == ("ok",)
    with pytest.raises(ConfigurationError):
        xen.hypercalls.register(k.HYPERVISOR_mmu_update, do_mmu_update)
    with pytest.raises(ConfigurationError):
        xen.hypercalls.register(128, do_mmu_update)
    xen.hypercalls.register(k.HYPERVISOR_mmu_update, lambda *a: 7, replace=True)
    assert xen.hypercall(0, 1) == 7
    assert xen.dom0.stats.by_hypercall["mmu_update"] == 4
    assert xen.dom0.stats.hypercall_errors == 2


def test_trace_names_the_call_result_and_transfer_instruction() -> None:
    xen = Xen(frames=256, vendor="amd")
    pv, hvm = xen.create_guest("pv"), xen.create_guest("h", type="pvh")
    xen.hypercall(pv, 99)
    xen.hypercall(hvm, k.HYPERVISOR_xen_version)
    a, b = xen.trace.of_kind("hypercall")[-2:]
    assert a.text == "99() = -ENOSYS   [SYSCALL]" and a.cost == 2 * xen.costs.trap
    assert b.text.endswith("= 262163   [VMMCALL]") and b.cost == 2 * xen.costs.vm_exit
    assert hvm.hypercall_instruction == "VMCALL" and hvm.type == "pvh"


def test_python_misuse_raises_but_guest_input_never_does() -> None:
    xen = Xen(frames=128)
    with pytest.raises(XenError):
        xen.hypercall(77, 17)                     # no such domain: a Python mistake
    with pytest.raises(XenError):
        xen.hypercall(0, 17, vcpu=3)
    for nr in range(64):                          # any number, junk arguments: a value
        assert isinstance(xen.hypercall(0, nr, object(), -1, "x"), int)


def test_memory_op_reservations() -> None:
    xen = Xen(frames=128)
    u = xen.create_guest("u", memory_pages=8)
    assert xen.hypercall(u, 12, XENMEM_current_reservation, k.DOMID_SELF) == 8
    assert xen.hypercall(u, 12, XENMEM_current_reservation, 0) == -k.EPERM
    r = XenMemoryReservation(extent_start=[7, 6])
    assert xen.hypercall(u, 12, XENMEM_decrease_reservation, r) == 2
    assert xen.hypercall(u, 12, XENMEM_populate_physmap,
                         XenMemoryReservation(extent_start=[40, 41, 42])) == 2   # max_pages 8
    assert xen.hypercall(u, 12, XENMEM_populate_physmap,
                         XenMemoryReservation(extent_start=[1], domid=0)) == -k.EPERM
    assert xen.hypercall(u, 12, XENMEM_populate_physmap,
                         XenMemoryReservation(extent_start=[-1])) == -k.EINVAL
    assert xen.hypercall(u, 12, XENMEM_populate_physmap, [1, 2]) == -k.EFAULT
    xen.memory.check_invariants()


def test_xenstore_permissions() -> None:
    xen = Xen(frames=128)
    a, b = xen.create_guest("a"), xen.create_guest("b")
    xs = xen.xenstore
    path = f"/local/domain/{a.domid}/data/x"
    assert xs.write(a.domid, path, "1") == 0
    assert xs.write(b.domid, path, "2") == -k.EACCES
    assert xs.read(b.domid, path) == -k.EACCES
    assert xs.set_readers(b.domid, path, {b.domid}) == -k.EACCES
    assert xs.set_readers(a.domid, f"/local/domain/{a.domid}/data", {b.domid}) == 0
    assert xs.read(b.domid, path) == "1"          # read permission on the directory
    assert xs.read(0, "/nowhere") == -k.ENOENT
    xen.xl.destroy("a")
    assert xs.ls(f"/local/domain/{a.domid}/") == []
