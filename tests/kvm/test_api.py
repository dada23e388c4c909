"""Names and numbers of the KVM API [KVM-H]."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from virtcore.kvm import api
from virtcore.kvm.api import (
    KVM_API_VERSION,
    KVM_CREATE_VCPU,
    KVM_CREATE_VM,
    KVM_GET_API_VERSION,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_RUN,
    KVM_SET_REGS,
    KVM_SET_SREGS,
    KVM_SET_USER_MEMORY_REGION,
    KVM_VCPU_MMAP_SIZE,
    KVMIO,
    GuestMemory,
    KvmUsageError,
    kvm_regs,
    kvm_run,
    kvm_segment,
    kvm_sregs,
    kvm_userspace_memory_region,
)
from virtcore.kvm.model import open_model_kvm


def test_api_version_and_kvmio() -> None:  # items 1, 2
    assert KVM_API_VERSION == 12
    assert KVMIO == 0xAE
    assert (KVM_GET_API_VERSION, KVM_CREATE_VM, KVM_CREATE_VCPU, KVM_RUN) == (
        0xAE00, 0xAE01, 0xAE41, 0xAE80)


def test_memory_region_request_and_struct() -> None:  # item 3
    assert KVM_SET_USER_MEMORY_REGION == 0x4020AE46
    assert ctypes.sizeof(kvm_userspace_memory_region) == 32
    offsets = [getattr(kvm_userspace_memory_region, f).offset
               for f in ("slot", "flags", "guest_phys_addr", "memory_size", "userspace_addr")]
    assert offsets == [0, 4, 8, 16, 24]


def test_register_requests_encode_their_struct_sizes() -> None:  # [KVM-H] table
    assert (ctypes.sizeof(kvm_regs), ctypes.sizeof(kvm_sregs), ctypes.sizeof(kvm_segment)) == (
        144, 312, 24)
    assert (KVM_GET_REGS, KVM_SET_REGS, KVM_GET_SREGS, KVM_SET_SREGS) == (
        0x8090AE81, 0x4090AE82, 0x8138AE83, 0x4138AE84)
    assert api.ioc_size(KVM_GET_SREGS) == ctypes.sizeof(kvm_sregs)
    assert api.ioc_dir(KVM_GET_REGS) == 2 and api.ioc_dir(KVM_SET_REGS) == 1


def test_kvm_run_layout() -> None:  # item 9 and [KVM-H; KVM-API §5] offsets
    assert kvm_run.exit_reason.offset == 8
    assert kvm_run.u.offset == 32 and kvm_run.io.offset == 32 and kvm_run.mmio.offset == 32
    io = {f: getattr(api.kvm_run_io, f).offset + 32
          for f in ("direction", "size", "port", "count", "data_offset")}
    assert io == {"direction": 32, "size": 33, "port": 34, "count": 36, "data_offset": 40}
    mmio = {f: getattr(api.kvm_run_mmio, f).offset + 32
            for f in ("phys_addr", "data", "len", "is_write")}
    assert mmio == {"phys_addr": 32, "data": 40, "len": 48, "is_write": 52}
    assert kvm_run.immediate_exit.offset == 1 and kvm_run.cr8.offset == 16
    assert ctypes.sizeof(api.kvm_run_exit) == 256


def test_mmap_size_is_three_pages() -> None:  # item 8
    assert KVM_VCPU_MMAP_SIZE == 12288
    assert open_model_kvm().ioctl(api.KVM_GET_VCPU_MMAP_SIZE, 0) == 12288


def test_exit_values() -> None:  # items 4-6
    assert (api.KVM_EXIT_UNKNOWN, api.KVM_EXIT_EXCEPTION, api.KVM_EXIT_IO,
            api.KVM_EXIT_HYPERCALL, api.KVM_EXIT_DEBUG) == (0, 1, 2, 3, 4)
    assert (api.KVM_EXIT_HLT, api.KVM_EXIT_MMIO, api.KVM_EXIT_SHUTDOWN, api.KVM_EXIT_FAIL_ENTRY,
            api.KVM_EXIT_INTERNAL_ERROR) == (5, 6, 8, 9, 17)
    assert (api.KVM_EXIT_IO_IN, api.KVM_EXIT_IO_OUT) == (0, 1)
    assert (api.KVM_MEM_LOG_DIRTY_PAGES, api.KVM_MEM_READONLY) == (1, 2)  # item 7
    assert api.exit_name(10) == "KVM_EXIT_INTR" and api.exit_name(24) == "KVM_EXIT_SYSTEM_EVENT"


HEADER = Path("/usr/include/linux/kvm.h")


@pytest.mark.skipif(not HEADER.is_file(), reason="no <linux/kvm.h> on this machine")
def test_exit_names_match_the_installed_header() -> None:
    found = dict(re.findall(r"#define (KVM_EXIT_[A-Z0-9_]+)\s+(\d+)\b", HEADER.read_text()))
    ours = {name: value for value, name in api.EXIT_NAMES.items()}
    common = set(found) & set(ours)
    assert len(common) >= 30
    assert {n: int(found[n]) for n in common} == {n: ours[n] for n in common}


def test_ioctl_names() -> None:
    assert api.ioctl_name(0x4020AE46) == "KVM_SET_USER_MEMORY_REGION"
    assert api.ioctl_name(KVM_GET_SREGS) == "KVM_GET_SREGS"


def test_guest_memory_is_page_aligned_and_shared() -> None:
    mem = GuestMemory(0x2000)
    mem.write(0x1ffe, b"\x12\x34")
    assert mem.address % 4096 == 0
    assert ctypes.string_at(mem.address + 0x1ffe, 2) == b"\x12\x34"
    with pytest.raises(KvmUsageError):
        GuestMemory(100)
    mem.close()
    assert mem.closed


def test_kvm_run_data_is_bounded_by_the_mapping() -> None:
    vcpu = open_model_kvm().create_vm().create_vcpu(0)
    run = vcpu.mmap(4096)  # only the kvm_run page
    with pytest.raises(KvmUsageError):
        run.data(4096, 1)
    assert len(vcpu.mmap().data(4096, 4)) == 4


def test_model_and_real_descriptors_name_their_kind_alike():
    from virtcore.kvm import open_kvm

    kvm = open_kvm(backend="model")
    vm = kvm.create_vm()
    assert (kvm.kind, vm.kind, vm.create_vcpu(0).kind) == ("system", "vm", "vcpu")


def test_signal_after_interrupts_a_blocking_call_and_only_in_the_main_thread() -> None:
    """Ends a vCPU's in-kernel sleep: EINTR in the main thread, refused elsewhere."""
    import threading
    import time

    from virtcore.kvm.api import KvmUsageError
    from virtcore.kvm.real import signal_after

    t0 = time.monotonic()
    with pytest.raises(InterruptedError), signal_after(0.05):
        time.sleep(5)
    assert time.monotonic() - t0 < 2
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with signal_after(0.01):
                pass
        except KvmUsageError as e:
            errors.append(e)

    th = threading.Thread(target=worker)
    th.start()
    th.join()
    assert len(errors) == 1
