"""What the KVM walkthrough relies on, checked here instead of in asserts in the chapter.

The walkthrough (notebooks/kvm-walkthrough.ipynb) keeps only the asserts that state something
the reader should notice; these guard the numbers and states its text quotes.
"""

from __future__ import annotations

import ctypes
import errno

import pytest

from virtcore.kvm import open_kvm
from virtcore.kvm.api import (
    KVM_API_VERSION,
    KVM_GET_API_VERSION,
    KVM_GET_VCPU_MMAP_SIZE,
    KVM_MP_STATE_HALTED,
    KVM_RUN,
    KVM_SET_USER_MEMORY_REGION,
    GuestMemory,
    kvm_regs,
    kvm_userspace_memory_region,
)
from virtcore.kvm.cli import run_guest
from virtcore.kvm.guests import teaching_lwn
from virtcore.kvm.host import Host
from virtcore.kvm.qemu import DEFAULT_COSTS, KvmApiVcpu, QemuVMM, SlotMemory, TeachingVcpu
from virtcore.viz.course import SYLLABUS

GUEST = teaching_lwn()


def test_request_numbers_decode_as_the_text_says() -> None:
    req = KVM_SET_USER_MEMORY_REGION
    assert (req >> 30, (req >> 16) & 0x3FFF, (req >> 8) & 0xFF, req & 0xFF) == (1, 32, 0xAE, 0x46)
    assert (KVM_GET_API_VERSION, KVM_RUN, req) == (0xAE00, 0xAE80, 0x4020AE46)
    assert open_kvm().ioctl(KVM_GET_API_VERSION, 0) == KVM_API_VERSION == 12


def test_memory_region_and_vcpu_area_sizes() -> None:
    mem = GuestMemory(GUEST.memory_size)
    mem.write(0, GUEST.code)
    region = kvm_userspace_memory_region(slot=0, guest_phys_addr=GUEST.gpa,
                                         memory_size=GUEST.memory_size, userspace_addr=mem.address)
    assert ctypes.sizeof(region) == 32 and mem.address % 4096 == 0
    assert mem.read(0, len(GUEST.code)) == GUEST.code
    kvm = open_kvm()
    vcpu = kvm.create_vm().create_vcpu(0)
    size = kvm.ioctl(KVM_GET_VCPU_MMAP_SIZE, 0)
    assert size == vcpu.mmap(size).mapping_size == 12288
    mem.close()


def test_run_guest_is_the_hand_written_loop() -> None:
    report = run_guest(GUEST)
    assert report.output == "4\n"
    assert report.ioctls.count("KVM_RUN") == len(report.exits) == 3


def test_same_vcpu_id_twice_and_forgotten_sregs() -> None:
    vm = open_kvm().create_vm()
    vm.create_vcpu(0)
    with pytest.raises(OSError) as e:
        vm.create_vcpu(0)
    assert (errno.errorcode[e.value.errno], e.value.errno) == ("EEXIST", 17)
    forgot = run_guest(GUEST, set_sregs=False)
    assert (forgot.final, forgot.exits[0].suberror, forgot.output) == (
        "KVM_EXIT_INTERNAL_ERROR", 1, "")


def test_irqchip_run_ends_halted_in_the_kernel() -> None:
    chip = run_guest(GUEST, irqchip=True)
    assert chip.mp_state == KVM_MP_STATE_HALTED and chip.output == "4\n"
    assert chip.ioctls[-2:] == ["KVM_GET_MP_STATE", "KVM_GET_REGS"]


def test_host_shares_nice_and_kill() -> None:
    host = Host(pcpus=1)
    host.add_vm("web", vcpus=2)
    host.add_vm("db", vcpus=1)
    host.add_process("make")
    before = host.run(duration_us=1_000_000, seed=0)
    assert abs(before.share("web") - 2 * before.share("db")) < 0.02
    host.renice("db", 10)
    after = host.run(duration_us=1_000_000, seed=0)
    assert after.share("db") < before.share("db") / 5
    assert all(abs(after.share(p) - after.ideal[p]) < 0.02 for p in ("web", "db", "make"))
    host.kill("web")
    assert "web" not in host.processes
    assert len(host.ps().splitlines()) == 1 + 2  # a header, db's vCPU thread, make


def test_qemu_loop_over_the_model_with_qemus_irqchip() -> None:
    kvm = open_kvm("model", isa=GUEST.isa)
    vm = kvm.create_vm()
    mem = GuestMemory(GUEST.memory_size)
    mem.write(0, GUEST.code)
    vm.set_user_memory_region(0, GUEST.gpa, GUEST.memory_size, mem.address)
    vm.create_irqchip()
    vcpu = vm.create_vcpu(0)
    sregs = vcpu.get_sregs()
    sregs.cs.base = sregs.cs.selector = 0
    vcpu.set_sregs(sregs)
    vcpu.set_regs(kvm_regs(rip=GUEST.gpa, rflags=0x2, **GUEST.regs))
    run = QemuVMM(SlotMemory(mem, GUEST.gpa)).run(KvmApiVcpu(vcpu))
    assert run.output == "4\n" and run.stop == "KVM_MP_STATE_HALTED"
    assert run.stats.transitions == 2 + 2  # the hlt never returns to QEMU


DISK_WRITE = """
        li   r1, 0x2000
        li   r2, 0x6c6c6568      ; 'hell'
        st   r2, [r1+0]
        movi r2, 3
        out  0x1f0, r2
        out  0x1f1, r1
        movi r2, 1
        out  0x1f2, r2
        movi r2, 2
        out  0x1f3, r2
        in   r3, 0x1f7
        hlt
"""


def test_disk_driver_exits_and_the_quoted_prices() -> None:
    vcpu = TeachingVcpu(DISK_WRITE)
    vmm = QemuVMM(vcpu.memory)
    run = vmm.run(vcpu)
    assert run.stats.by_device["disk"] == 5 and run.stats.transitions == 2 * 5
    assert vmm.bus["disk"].read_sector(3)[:4] == b"hell"  # type: ignore[attr-defined]
    assert vcpu.cpu.regs[3] == 2  # STATUS = DONE
    c = DEFAULT_COSTS  # the text quotes 4100, 1000 and 1
    assert (c.user_exit, c.kernel_exit, c.native_instruction) == (4100, 1000, 1)


def test_the_claims_table_names_real_syllabus_ids() -> None:
    import json
    from pathlib import Path

    nb = json.loads((Path(__file__).resolve().parents[2] / "notebooks" /
                     "kvm-walkthrough.ipynb").read_text(encoding="utf-8"))
    cell = next("".join(c["source"]) for c in nb["cells"] if "TAUGHT = {" in "".join(c["source"]))
    namespace: dict = {}
    exec(cell.split("rows =")[0], namespace)  # the TAUGHT dict only
    assert set(namespace["TAUGHT"]) <= set(SYLLABUS)
