"""End to end: guests driven through the /dev/kvm API (virtcore.kvm.api) by the QEMU-like loop.

The same ioctl sequence a C VMM uses [LWN15]: open, create the VM, a memory slot,
a vCPU, registers; then :class:`virtcore.kvm.qemu.QemuVMM` loops on ``KVM_RUN`` through
:class:`virtcore.kvm.qemu.KvmApiVcpu` and emulates the devices the guest touches.

Backends: for x86 guests the real kernel module where ``/dev/kvm`` is usable (skipped with
the reason otherwise) and the simulated ``/dev/kvm`` (:mod:`virtcore.kvm.model`) with its
unicorn backend; for teaching-ISA guests the model's default backend, checked exit by exit
against :class:`virtcore.kvm.qemu.TeachingVcpu` (the same guest without the ioctl API).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from virtcore.hw.devices import NetworkCard
from virtcore.kvm import api
from virtcore.kvm.qemu import KvmApiVcpu, QemuRun, QemuVMM, SlotMemory

#: The LWN "Using the KVM API" guest [LWN15; LOCAL].
LWN_GUEST = bytes.fromhex("baf80300d80430eeb00aeef4")

#: 16-bit x86: read sector 3 of the emulated ATA-like disk by DMA to 0x1800, poll STATUS,
#: print the first two bytes on COM1, halt.
DISK_GUEST = bytes.fromhex(
    "baf001" "b80300" "ef"  # mov dx,0x1f0; mov ax,3; out dx,ax       SECTOR = 3
    "baf101" "b80018" "ef"  # mov dx,0x1f1; mov ax,0x1800; out dx,ax  DMA_ADDR
    "baf201" "b80100" "ef"  # mov dx,0x1f2; mov ax,1; out dx,ax       COUNT = 1
    "baf301" "ef"  # mov dx,0x1f3; out dx,ax                          COMMAND = 1 (read)
    "baf701" "ec" "88c3"  # mov dx,0x1f7; in al,dx; mov bl,al         STATUS
    "baf803" "a00018" "ee" "a00118" "ee"  # print [0x1800], [0x1801]
    "f4"  # hlt
)

#: 16-bit x86: send 5 bytes at 0x1800 through an MMIO network card at 0x8000 (no memslot
#: there, so every access is KVM_EXIT_MMIO), read STATUS back and print it as a digit.
NIC_GUEST = bytes.fromhex(
    "b80018" "a30080"  # mov ax,0x1800; mov [0x8000],ax   TX_ADDR
    "b80500" "a30480"  # mov ax,5; mov [0x8004],ax        TX_LEN
    "b80100" "a30880"  # mov ax,1; mov [0x8008],ax        TX_DOORBELL
    "a11480"  # mov ax,[0x8014]                           STATUS
    "0430" "baf803" "ee"  # add al,'0'; mov dx,0x3f8; out dx,al
    "f4"
)


def _real() -> Any:
    from virtcore.kvm.real import kvm_available, open_real_kvm

    ok, why = kvm_available()
    if not ok:
        pytest.skip(f"real KVM not usable here: {why}")
    return open_real_kvm()


def _model_x86() -> Any:
    pytest.importorskip("unicorn", reason="the model's x86 backend needs unicorn")
    from virtcore.kvm.model import open_model_kvm

    return open_model_kvm(isa="x86")


BACKENDS: dict[str, Callable[[], Any]] = {"real": _real, "model-x86": _model_x86}


@pytest.fixture(params=sorted(BACKENDS))
def kvm(request: pytest.FixtureRequest) -> Iterator[Any]:
    """An open system descriptor of each backend that runs x86 code."""
    fd = BACKENDS[request.param]()
    try:
        yield fd
    finally:
        fd.close()


def run_x86(kvm: Any, code: bytes, *, setup: Callable[[QemuVMM, SlotMemory], None] | None = None,
            ) -> tuple[QemuRun, Any, QemuVMM]:
    """The canonical sequence [LWN15] with ``code`` at 0x1000, then the QEMU-like loop."""
    assert kvm.api_version() == api.KVM_API_VERSION == 12
    vm = kvm.create_vm(0)
    mem = api.GuestMemory(0x1000)
    mem.write(0, code)
    vm.set_user_memory_region(0, 0x1000, 0x1000, mem.address)
    vcpu = vm.create_vcpu(0)
    run = vcpu.mmap(kvm.vcpu_mmap_size())
    sregs = vcpu.get_sregs()
    sregs.cs.base = 0
    sregs.cs.selector = 0
    vcpu.set_sregs(sregs)
    vcpu.set_regs(api.kvm_regs(rip=0x1000, rax=2, rbx=2, rflags=0x2))
    slot = SlotMemory(mem, 0x1000)
    vmm = QemuVMM(slot)
    if setup is not None:
        setup(vmm, slot)
    result = vmm.run(KvmApiVcpu(vcpu, run), max_exits=100)
    regs = vcpu.get_regs()
    return result, regs, vmm


def test_lwn_guest_through_the_qemu_loop(kvm: Any) -> None:
    """Check the LWN guest: '4\\n' on COM1 and the exits IO, IO, HLT [LWN15; LOCAL]."""
    result, regs, _vmm = run_x86(kvm, LWN_GUEST)
    assert result.output == "4\n" and result.stop == "KVM_EXIT_HLT"
    assert [e.reason for e in result.trace] == ["KVM_EXIT_IO", "KVM_EXIT_IO", "KVM_EXIT_HLT"]
    assert result.trace[0].detail == "OUT port 0x3f8 size 1 data 34 '4'"
    assert result.trace[1].detail == "OUT port 0x3f8 size 1 data 0a"
    assert regs.rip == 0x100C
    assert (result.stats.kernel_to_user, result.stats.user_to_kernel) == (3, 2)


def test_x86_guest_reads_the_emulated_disk_by_dma(kvm: Any) -> None:
    """Check port-I/O exits program the disk, QEMU's DMA lands in the slot, the guest prints it."""

    def setup(vmm: QemuVMM, _slot: SlotMemory) -> None:
        vmm.bus["disk"].write_sector(3, b"OK, from the disk")  # type: ignore[attr-defined]

    result, regs, vmm = run_x86(kvm, DISK_GUEST, setup=setup)
    assert result.stop == "KVM_EXIT_HLT" and result.output == "OK"
    assert regs.rbx & 0xFF == 2  # STATUS = DONE, read by `in al, dx`
    details = [e.detail for e in result.trace]
    assert details[:4] == [
        "OUT port 0x1f0 size 2 data 0300", "OUT port 0x1f1 size 2 data 0018",
        "OUT port 0x1f2 size 2 data 0100", "OUT port 0x1f3 size 2 data 0100"]
    assert details[4] == "IN port 0x1f7 size 1"
    assert vmm.stats.by_device["disk"] == 5 and vmm.stats.requests == 1


def test_x86_guest_drives_an_mmio_network_card(kvm: Any) -> None:
    """Check stores/loads with no memslot become KVM_EXIT_MMIO and reach the emulated NIC."""
    nic = NetworkCard(name="nic0", base=0x8000, latency=0)

    def setup(vmm: QemuVMM, slot: SlotMemory) -> None:
        vmm.add_device(nic)
        slot.write_bytes(0x1800, b"hello")

    result, _regs, _vmm = run_x86(kvm, NIC_GUEST, setup=setup)
    assert result.stop == "KVM_EXIT_HLT"
    assert nic.sent == [b"hello"] and result.output == "1"  # STATUS.TX_DONE
    mmio = [e.detail for e in result.trace if e.reason == "KVM_EXIT_MMIO"]
    assert mmio == ["WRITE 0x8000 len 2 data 0018", "WRITE 0x8004 len 2 data 0500",
                    "WRITE 0x8008 len 2 data 0100", "READ 0x8014 len 2"]


def test_exit_numbers_agree_with_the_api() -> None:
    """Check qemu.py's KVM_EXIT_* copies equal virtcore.kvm.api's [KVM-H]."""
    from virtcore.kvm import qemu

    for name in ("KVM_EXIT_IO", "KVM_EXIT_HLT", "KVM_EXIT_MMIO", "KVM_EXIT_SHUTDOWN",
                 "KVM_EXIT_FAIL_ENTRY", "KVM_EXIT_INTR", "KVM_EXIT_INTERNAL_ERROR",
                 "KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT", "KVM_INTERNAL_ERROR_EMULATION"):
        assert getattr(qemu, name) == getattr(api, name), name
    for reason in range(25):
        if reason in qemu._EXIT_NAMES:
            assert qemu.exit_name(reason) == api.exit_name(reason)


# ------------------------------------------------------------------ teaching ISA on the model

TEACHING_DISK = """
; write 0x2000 to sector 3, read sector 5 into 0x3000, print its first byte, then
; send 6 bytes at 0x2000 through the MMIO NIC and print STATUS + '0'
        li   r1, 0x2000
        movi r2, 3
        out  0x1f0, r2
        out  0x1f1, r1
        movi r2, 1
        out  0x1f2, r2
        movi r2, 2
        out  0x1f3, r2
w1:     in   r3, 0x1f7
        cmpi r3, 2
        jnz  w1
        li   r1, 0x3000
        movi r2, 5
        out  0x1f0, r2
        out  0x1f1, r1
        movi r2, 1
        out  0x1f2, r2
        out  0x1f3, r2
w2:     in   r3, 0x1f7
        cmpi r3, 2
        jnz  w2
        ld   r4, [r1+0]
        out  0x3f8, r4
        li   r6, 0xfeb00000
        li   r1, 0x2000
        st   r1, [r6+0]
        movi r1, 6
        st   r1, [r6+4]
        movi r1, 1
        st   r1, [r6+8]
        ld   r2, [r6+0x14]
        addi r2, 0x30
        out  0x3f8, r2
        hlt
"""


def _teaching_on_model(program: str, budget: int = 5_000_000,
                       irqchip: bool = True) -> tuple[QemuRun, QemuVMM, Any]:
    from virtcore.hw.asm import assemble
    from virtcore.kvm.model import open_model_kvm

    kvm = open_model_kvm(budget=budget)
    vm = kvm.create_vm(0)
    mem = api.GuestMemory(0x10000)
    mem.write(0, assemble(program).to_bytes())
    mem.write(0x2000, b"from the guest".ljust(512, b"."))
    vm.set_user_memory_region(0, 0, 0x10000, mem.address)
    if irqchip:  # as QEMU does on x86
        vm.create_irqchip()
    vcpu = vm.create_vcpu(0)
    sregs = vcpu.get_sregs()
    sregs.cs.base = 0
    sregs.cs.selector = 0
    vcpu.set_sregs(sregs)
    vcpu.set_regs(api.kvm_regs(rip=0, rflags=0x2, rsp=0x10000))
    vmm = QemuVMM(SlotMemory(mem, 0))
    vmm.bus["disk"].write_sector(5, b"Zebra")  # type: ignore[attr-defined]
    run = vmm.run(KvmApiVcpu(vcpu), max_exits=1000)
    return run, vmm, mem


def test_teaching_guest_through_the_model_matches_teaching_vcpu() -> None:
    """Check disk DMA and MMIO NIC through the model's ioctls: same exits as TeachingVcpu."""
    from virtcore.kvm.qemu import TeachingVcpu

    run, vmm, mem = _teaching_on_model(TEACHING_DISK)
    assert run.stop == "KVM_MP_STATE_HALTED" and run.output == "Z1"
    disk = vmm.bus["disk"]
    assert disk.read_sector(3).startswith(b"from the guest")  # type: ignore[attr-defined]
    assert mem.read(0x3000, 5) == b"Zebra"  # QEMU's DMA, seen in the slot's user memory
    assert vmm.bus["nic"].sent == [b"from t"]  # type: ignore[attr-defined]

    ref_vcpu = TeachingVcpu(TEACHING_DISK)
    ref_vcpu.memory.write_bytes(0x2000, b"from the guest".ljust(512, b"."))
    ref_vmm = QemuVMM(ref_vcpu.memory)
    ref_vmm.bus["disk"].write_sector(5, b"Zebra")  # type: ignore[attr-defined]
    ref = ref_vmm.run(ref_vcpu)
    assert [(e.reason, e.detail, e.device) for e in run.trace] == [
        (e.reason, e.detail, e.device) for e in ref.trace]
    assert run.output == ref.output and run.stats.exits == ref.stats.exits == 17
    assert run.stats.kernel_exits == 1  # the hlt, kept in KVM by the in-kernel irqchip


def test_without_irqchip_hlt_reaches_qemu() -> None:
    """Check a VM without KVM_CREATE_IRQCHIP (the LWN program's) returns KVM_EXIT_HLT to QEMU,
    like TeachingVcpu(irqchip=False); with one, the hlt costs no kernel↔user transition."""
    from virtcore.kvm.qemu import TeachingVcpu

    prog = "movi r1, 'k'\nout 0x3f8, r1\nhlt"
    plain, _vmm, _mem = _teaching_on_model(prog, irqchip=False)
    ref = QemuVMM(TeachingVcpu(prog, irqchip=False).memory)
    ref_run = ref.run(TeachingVcpu(prog, irqchip=False))
    assert plain.stop == ref_run.stop == "KVM_EXIT_HLT"
    assert plain.stats.transitions == 2 + 1  # the out's round trip, the hlt's return
    chip, _vmm, _mem = _teaching_on_model(prog)
    assert chip.stop == "KVM_MP_STATE_HALTED" and chip.stats.transitions == 2


def test_model_budget_eintr_is_re_entered() -> None:
    """Check EINTR from KVM_RUN (the model's budget) becomes KVM_EXIT_INTR and the loop goes on."""
    prog = "li r1, 5000\nl: addi r1, -1\ncmpi r1, 0\njnz l\nmovi r2, '!'\nout 0x3f8, r2\nhlt"
    run, _vmm, _mem = _teaching_on_model(prog, budget=2000)
    assert run.stop == "KVM_MP_STATE_HALTED" and run.output == "!"  # EINTRs re-entered, not halts
    assert run.stats.by_reason["KVM_EXIT_IO"] == 1 and run.stats.transitions > 2
