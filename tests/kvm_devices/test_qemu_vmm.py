"""The QEMU-like VMM: the run loop on exits, emulated devices, exit accounting, comparisons."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtcore.errors import ConfigurationError
from virtcore.kvm.qemu import (
    DEFAULT_COSTS,
    KVM_EXIT_IO,
    KVM_EXIT_IO_OUT,
    VIRTIO_NOTIFY_PORT,
    ExitCosts,
    GuestIO,
    IOExit,
    QemuError,
    QemuVMM,
    TeachingVcpu,
    VcpuExit,
    compare_block_io,
    compare_net_tx,
)
from virtcore.kvm.virtio import GuestRAM, VirtioBlk, VirtioBlkDriver

HELLO = """
        movi r1, 'h'
        out  0x3f8, r1
        movi r1, 'i'
        out  0x3f8, r1
        hlt
"""


def test_run_loop_hello_trace_and_transitions() -> None:
    """Check two OUT exits then HLT, and each exit's VM exit/entry and kernel↔user crossings
    (a VM without the in-kernel irqchip, like the LWN program's: the hlt reaches QEMU)."""
    vcpu = TeachingVcpu(HELLO, irqchip=False)
    vmm = QemuVMM(vcpu.memory)
    run = vmm.run(vcpu)
    assert run.output == "hi" and run.stop == "KVM_EXIT_HLT"
    assert [(e.reason, e.device, e.path) for e in run.trace] == [
        ("KVM_EXIT_IO", "serial", "user"), ("KVM_EXIT_IO", "serial", "user"),
        ("KVM_EXIT_HLT", "-", "stop")]
    st_ = run.stats
    assert (st_.exits, st_.vm_exits, st_.vm_entries) == (3, 3, 2)
    assert (st_.kernel_to_user, st_.user_to_kernel, st_.transitions) == (3, 2, 5)
    assert st_.native_instructions == 2  # the two movi; out and hlt exited
    c = DEFAULT_COSTS
    expect = 2 * c.native_instruction + 2 * c.user_exit + c.vm_exit + c.kernel_user
    assert st_.time_ns == pytest.approx(expect)
    assert "KVM_EXIT_IO" in repr(run) and "OUT port 0x3f8" in run.format_trace()


def test_in_kernel_irqchip_keeps_the_hlt_in_kvm() -> None:
    """Check QEMU's default VM (in-kernel irqchip): the hlt is a VM exit KVM handles; QEMU never
    sees KVM_EXIT_HLT, and it costs no kernel↔user transition."""
    vcpu = TeachingVcpu(HELLO)
    run = QemuVMM(vcpu.memory).run(vcpu)
    assert run.output == "hi" and run.stop == "KVM_MP_STATE_HALTED"
    assert [(e.reason, e.path) for e in run.trace][-1] == ("hlt (in KVM)", "kernel")
    st_ = run.stats
    assert (st_.exits, st_.vm_exits, st_.kernel_exits, st_.transitions) == (3, 3, 1, 4)
    assert "KVM_EXIT_HLT" not in st_.by_reason
    c = DEFAULT_COSTS
    expect = 2 * c.native_instruction + 2 * c.user_exit + c.vm_exit + c.in_kernel
    assert st_.time_ns == pytest.approx(expect)


def test_exit_costs_come_from_the_course_cost_model() -> None:
    """Check ExitCosts is the course's one cost model under this VMM's names."""
    from virtcore.costs import DEFAULT_COSTS as COURSE
    from virtcore.kvm.qemu import COURSE_FIELDS, as_exit_costs

    for mine, theirs in COURSE_FIELDS.items():
        assert getattr(DEFAULT_COSTS, mine) == getattr(COURSE, theirs)
    cheap = dataclasses.replace(COURSE, context_switch=0)
    vcpu = TeachingVcpu(HELLO)
    assert QemuVMM(vcpu.memory, costs=cheap).costs == as_exit_costs(cheap)
    assert as_exit_costs(cheap).user_exit == 2 * COURSE.vm_exit + COURSE.emulate
    with pytest.raises(ConfigurationError):
        as_exit_costs(42)  # type: ignore[arg-type]


def test_costs_follow_the_model() -> None:
    """Check a different cost model changes the time exactly as the formula says."""
    costs = ExitCosts(native_instruction=2, vm_exit=10, vm_entry=20, kernel_user=100,
                      emulate=7, interrupt=0, device=0)
    vcpu = TeachingVcpu(HELLO, irqchip=False)
    run = QemuVMM(vcpu.memory, costs=costs).run(vcpu)
    assert costs.user_exit == 10 + 200 + 7 + 20
    assert run.stats.time_ns == 2 * 2 + 2 * costs.user_exit + 10 + 100
    with pytest.raises(ConfigurationError):
        ExitCosts(kernel_user=float("nan"))
    assert set(ExitCosts.assumptions()) == {f.name for f in dataclasses.fields(ExitCosts)}


DISK_GUEST = """
; write the buffer at 0x2000 to sector 3, read sector 5 into 0x3000, print its first byte
        li   r1, 0x2000
        movi r2, 3
        out  0x1f0, r2          ; SECTOR
        out  0x1f1, r1          ; DMA_ADDR
        movi r2, 1
        out  0x1f2, r2          ; COUNT
        movi r2, 2
        out  0x1f3, r2          ; COMMAND = write
w1:     in   r3, 0x1f7          ; STATUS
        cmpi r3, 2
        jnz  w1
        li   r1, 0x3000
        movi r2, 5
        out  0x1f0, r2
        out  0x1f1, r1
        movi r2, 1
        out  0x1f2, r2
        out  0x1f3, r2          ; COMMAND = read
w2:     in   r3, 0x1f7
        cmpi r3, 2
        jnz  w2
        ld   r4, [r1+0]
        out  0x3f8, r4
        hlt
"""


def test_teaching_guest_drives_the_emulated_disk_by_port_io() -> None:
    """Check a guest's ATA-like disk I/O: data lands on disk and in RAM, one exit per access."""
    vcpu = TeachingVcpu(DISK_GUEST)
    vcpu.memory.write_bytes(0x2000, b"written by the guest".ljust(512, b"."))
    vmm = QemuVMM(vcpu.memory)
    disk = vmm.bus["disk"]
    disk.write_sector(5, b"Zebra")  # type: ignore[attr-defined]
    run = vmm.run(vcpu)
    assert run.stop == "KVM_MP_STATE_HALTED" and run.output == "Z"
    assert disk.read_sector(3).startswith(b"written by the guest")  # type: ignore[attr-defined]
    assert vcpu.memory.read_bytes(0x3000, 5) == b"Zebra"
    assert run.stats.by_device["disk"] == 10  # 8 outs + 2 status reads (done at once)
    assert run.stats.by_device["serial"] == 1 and run.stats.requests == 2
    assert run.stats.interrupts == 2  # IRQ 14 once per command, counted as injections


NIC_GUEST = """
; send 6 bytes at 0x2000 through the MMIO network card, read STATUS back, print it
        li   r6, 0xfeb00000
        li   r1, 0x2000
        st   r1, [r6+0]         ; TX_ADDR
        movi r1, 6
        st   r1, [r6+4]         ; TX_LEN
        movi r1, 1
        st   r1, [r6+8]         ; TX_DOORBELL
        ld   r2, [r6+0x14]      ; STATUS
        addi r2, 0x30
        out  0x3f8, r2
        li   r6, 0xdead0000
        ld   r3, [r6+0]         ; nothing there: reads all ones
        hlt
"""


def test_teaching_guest_mmio_exits() -> None:
    """Check st/ld to the NIC exit as KVM_EXIT_MMIO, send the frame, and read back STATUS."""
    vcpu = TeachingVcpu(NIC_GUEST)
    vcpu.memory.write_bytes(0x2000, b"frame!")
    vmm = QemuVMM(vcpu.memory)
    run = vmm.run(vcpu)
    assert run.stop == "KVM_MP_STATE_HALTED"
    assert vmm.bus["nic"].sent == [b"frame!"]  # type: ignore[attr-defined]
    assert run.output == "1"  # STATUS = TX_DONE
    mmio = [e for e in run.trace if e.reason == "KVM_EXIT_MMIO"]
    assert [e.detail.split()[0] for e in mmio] == ["WRITE", "WRITE", "WRITE", "READ", "READ"]
    assert vcpu.cpu.regs[3] == 0xFFFF_FFFF and mmio[-1].device == "-"


@pytest.mark.parametrize(
    ("program", "stop"),
    [
        (".word 0xff000000", "KVM_EXIT_SHUTDOWN"),  # undecodable: #UD with no guest handler
        ("li r6, 0xfeb00000\nmov sp, r6\npush r1\nhlt", "KVM_EXIT_INTERNAL_ERROR"),
    ],
)
def test_errors_stop_the_loop(program: str, stop: str) -> None:
    """Check a guest crash and an unemulatable MMIO access end the run with their exit."""
    vcpu = TeachingVcpu(program)
    run = QemuVMM(vcpu.memory).run(vcpu)
    assert run.stop == stop and run.trace[-1].path == "stop"


def test_budget_exits_are_signals_and_the_loop_goes_on() -> None:
    """Check KVM_EXIT_INTR (the step budget) is re-entered without emulation."""
    vcpu = TeachingVcpu("li r1, 3000\nl: addi r1, -1\ncmpi r1, 0\njnz l\nhlt", budget=1000)
    run = QemuVMM(vcpu.memory).run(vcpu)
    assert run.stop == "KVM_MP_STATE_HALTED" and vcpu.cpu.regs[1] == 0
    assert run.stats.by_reason["hlt (in KVM)"] == 1 and run.stats.native_instructions > 9000
    assert run.stats.by_reason["KVM_EXIT_INTR"] == 0  # the budget's EINTRs are re-entered


def test_run_refuses_something_that_is_not_a_vcpu() -> None:
    """Check the protocol is enforced."""
    with pytest.raises(QemuError):
        QemuVMM(GuestRAM(4096)).run(object())  # type: ignore[arg-type]


def test_ioeventfd_kick_stays_in_the_kernel() -> None:
    """Check a kick to an ioeventfd port is an exit without kernel↔user transitions."""
    for ioeventfd, transitions in ((False, 2), (True, 0)):
        ram = GuestRAM(256 * 1024)
        vmm = QemuVMM(ram)
        dev = VirtioBlk(ram, capacity_sectors=8)
        dev.driver_init()
        vmm.add_virtio(dev, ioeventfd=ioeventfd)
        gio = GuestIO(vmm)
        drv = VirtioBlkDriver(ram, dev, base=0x1000,
                              notify=lambda g=gio: g.outl(VIRTIO_NOTIFY_PORT, 0))
        dev.disk[:4] = b"blk!"
        assert drv.read(0, 0x20000, 512) == 0 and ram.read_bytes(0x20000, 4) == b"blk!"
        st_ = vmm.stats
        assert st_.exits == 1 and st_.transitions == transitions
        assert st_.kernel_exits == int(ioeventfd) and st_.requests == 1
        assert st_.interrupts == 1


def test_handle_exit_supports_rep_out_and_sizes() -> None:
    """Check a 'rep outsb' exit (count > 1) writes every byte, and IN data has the right size."""
    vmm = QemuVMM(GuestRAM(4096))
    vmm.handle_exit(VcpuExit(KVM_EXIT_IO, io=IOExit(KVM_EXIT_IO_OUT, 1, 0x3F8, 3, b"abc")))
    assert vmm.output == "abc"
    lsr = vmm.handle_exit(VcpuExit(KVM_EXIT_IO, io=IOExit(0, 2, 0x3FD)))
    assert lsr == b"\x60\x00"


# ------------------------------------------------------------------ emulated vs virtio


def test_emulated_costs_five_exits_per_request_virtio_one_per_batch() -> None:
    """Check the exit counts the comparison reports, and that all data checked out."""
    cmp = compare_block_io(requests=24, batch=6)
    assert all(r.data_ok for r in cmp.rows)
    assert cmp["native"].exits == cmp["native-legacy"].exits == 0
    assert cmp["emulated"].exits == 5 * 24 and cmp["emulated"].transitions == 2 * 5 * 24
    assert cmp["virtio"].exits == cmp["virtio"].kicks == 4
    assert cmp["virtio+ioeventfd"].transitions == 0 and cmp["virtio+ioeventfd"].kernel_exits == 4
    assert cmp["virtio"].interrupts == cmp["native"].interrupts == 4  # event idx: one per batch
    assert cmp["emulated"].interrupts == cmp["native-legacy"].interrupts == 24
    assert "exits/req" in repr(cmp)


@pytest.mark.parametrize("batch", [1, 2, 8, 32])
@pytest.mark.parametrize("compare", [compare_block_io, compare_net_tx])
def test_no_virtual_path_beats_its_native_baseline(batch: int, compare: Any) -> None:
    """Check the fair comparison: same driver, batching and interrupt policy natively and
    virtualized, and the virtual path is never faster than the hardware."""
    cmp = compare(32, batch)
    legacy, queued = cmp["native-legacy"].requests_per_s, cmp["native"].requests_per_s
    assert cmp["emulated"].requests_per_s < legacy
    for path in ("virtio", "virtio+ioeventfd", "vhost"):
        assert cmp[path].requests_per_s < queued, path
        assert cmp[path].interrupts == cmp["native"].interrupts
        assert cmp[path].kicks == cmp["native"].kicks


def test_ioeventfd_moves_the_work_to_qemus_io_thread_and_vhost_into_the_kernel() -> None:
    """Check ioeventfd spares the vCPU thread its return to user space, but QEMU's I/O thread
    still crosses into user space for every kick; only vhost avoids user space entirely."""
    cmp = compare_block_io(requests=32, batch=4)
    plain, efd, vhost = cmp["virtio"], cmp["virtio+ioeventfd"], cmp["vhost"]
    assert (plain.transitions, plain.iothread_transitions) == (2 * 8, 0)
    assert (efd.transitions, efd.iothread_transitions) == (0, 2 * 8)
    assert (vhost.transitions, vhost.iothread_transitions) == (0, 0)
    assert efd.vcpu_time_ns < plain.vcpu_time_ns  # the vCPU is free sooner…
    assert efd.requests_per_s == pytest.approx(plain.requests_per_s, rel=0.05)  # …same work
    assert vhost.requests_per_s > plain.requests_per_s


@settings(max_examples=12, deadline=None)
@given(requests=st.integers(2, 40), batch=st.integers(2, 16), event_idx=st.booleans())
def test_virtio_strictly_fewer_exits_per_request_for_batches(requests: int, batch: int,
                                                              event_idx: bool) -> None:
    """Check virtio-blk has strictly fewer exits per request than the emulated disk."""
    cmp = compare_block_io(requests=requests, batch=batch, request_bytes=512,
                           event_idx=event_idx)
    emu, vio = cmp["emulated"], cmp["virtio"]
    assert vio.exits_per_request < emu.exits_per_request
    assert vio.exits == -(-requests // batch)
    assert vio.time_ns < emu.time_ns and vio.data_ok and emu.data_ok


def test_interrupt_suppression_shows_in_the_comparison() -> None:
    """Check event_idx cuts interrupts from one per request to one per batch."""
    with_idx = compare_block_io(requests=32, batch=8, event_idx=True)["virtio"]
    without = compare_block_io(requests=32, batch=8, event_idx=False)["virtio"]
    assert (with_idx.interrupts, without.interrupts) == (4, 32)
    assert with_idx.time_ns < without.time_ns


def test_virtio_one_request_per_kick_is_about_half_native() -> None:
    """Check the calibration: virtio at batch 1 ≈ half the native IOPS [FELTER14]."""
    cmp = compare_block_io(requests=16, batch=1)
    ratio = cmp["virtio"].requests_per_s / cmp["native"].requests_per_s
    assert 0.4 < ratio < 0.75
    assert cmp.speedup("virtio", "emulated") > 2


def test_net_tx_comparison() -> None:
    """Check the NIC: five MMIO exits per frame emulated, one kick per batch with virtio-net."""
    cmp = compare_net_tx(frames=20, batch=5, frame_bytes=300)
    assert all(r.data_ok for r in cmp.rows)
    assert cmp["emulated"].exits == 100 and cmp["virtio"].exits == 4
    assert cmp["virtio"].requests_per_s > cmp["emulated"].requests_per_s
    with pytest.raises(ConfigurationError):
        compare_net_tx(frame_bytes=2000)
    with pytest.raises(ConfigurationError):
        compare_block_io(request_bytes=1000)
