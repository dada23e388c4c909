# ruff: noqa
# Close but wrong: skips step 9 of the canonical sequence (cs.base = cs.selector = 0), so
# the vCPU starts at cs.base + rip = 0xffff0000 + rip, where no memory is.  Expected:
# vmm_setup loses its run checks (not the refusal) with a message naming cs.base.

# %% vmm_setup
def setup_vm(kvm, guest):
    version = kvm.ioctl(KVM_GET_API_VERSION, 0)
    if version != KVM_API_VERSION:
        raise VmmError(f"KVM_GET_API_VERSION returned {version}")
    vm = kvm.ioctl(KVM_CREATE_VM, 0)
    memory = GuestMemory(guest.memory_size)
    memory.write(0, guest.code)
    vm.ioctl(KVM_SET_USER_MEMORY_REGION, kvm_userspace_memory_region(
        slot=0, guest_phys_addr=guest.gpa, memory_size=guest.memory_size,
        userspace_addr=memory.address))
    vcpu = vm.ioctl(KVM_CREATE_VCPU, 0)
    run = vcpu.mmap(kvm.ioctl(KVM_GET_VCPU_MMAP_SIZE, 0))
    entry = guest.gpa if guest.entry is None else guest.entry
    vcpu.ioctl(KVM_SET_REGS, kvm_regs(rip=entry, rflags=0x2, **guest.regs))
    return Machine(kvm, vm, vcpu, run, memory)
