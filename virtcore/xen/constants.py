"""Xen's public numbers (公开接口常量), exactly as Xen's public headers define them.

Every value here is copied by name and number from the header cited beside it (Xen commit
c447b7308b13, see ``docs/references.md``); nothing is invented.  Groups are plain ``int``
constants, as in C, plus one ``*_NAMES`` dict per group so traces and reprs can print names.

- hypercall numbers ``__HYPERVISOR_*`` — [XEN-H] (``HYPERVISOR_*`` here, without underscores);
- error numbers ``XEN_E*`` — [XEN-ERRNO] (hypercalls return them negated: ``-EPERM``);
- domain ids ``DOMID_*``, virtual IRQs ``VIRQ_*`` — [XEN-H];
- ``EVTCHNOP_*``, ``EVTCHNSTAT_*`` — [XEN-EVTCHN];
- ``GNTTABOP_*``, ``GTF_*``, ``GNTMAP_*``, ``GNTST_*``, ``GNTCOPY_*`` — [XEN-GNTTAB];
- ``XEN_DOMCTL_*`` — [XEN-DOMCTL]; ``XEN_SYSCTL_*`` — [XEN-SYSCTL];
- ``SCHEDOP_*``, ``SHUTDOWN_*`` — [XEN-SCHED-H]; ``PHYSDEVOP_*`` — [XEN-PHYSDEV];
- ``BLKIF_*`` — [XEN-BLKIF]; ``NETIF_RSP_*`` — [XEN-NETIF]; ``XenbusState*`` — [XEN-XENBUS].

>>> HYPERVISOR_event_channel_op, EVTCHNOP_send, DOMID_SELF == 0x7FF0
(32, 4, True)
>>> errno_name(-EPERM), errno_name(0), HYPERCALL_NAMES[20]
('-EPERM', '0', 'grant_table_op')
"""

from __future__ import annotations

# ----------------------------------------------------------------- hypercalls [XEN-H]
HYPERVISOR_set_trap_table = 0
HYPERVISOR_mmu_update = 1
HYPERVISOR_set_gdt = 2
HYPERVISOR_stack_switch = 3
HYPERVISOR_set_callbacks = 4
HYPERVISOR_fpu_taskswitch = 5
HYPERVISOR_platform_op = 7
HYPERVISOR_memory_op = 12
HYPERVISOR_multicall = 13
HYPERVISOR_update_va_mapping = 14
HYPERVISOR_set_timer_op = 15
HYPERVISOR_xen_version = 17
HYPERVISOR_console_io = 18
HYPERVISOR_grant_table_op = 20
HYPERVISOR_vm_assist = 21
HYPERVISOR_iret = 23
HYPERVISOR_vcpu_op = 24
HYPERVISOR_mmuext_op = 26
HYPERVISOR_sched_op = 29
HYPERVISOR_event_channel_op = 32
HYPERVISOR_physdev_op = 33
HYPERVISOR_hvm_op = 34
HYPERVISOR_sysctl = 35
HYPERVISOR_domctl = 36
HYPERVISOR_dm_op = 41

HYPERCALL_NAMES: dict[int, str] = {
    v: k.removeprefix("HYPERVISOR_") for k, v in dict(globals()).items()
    if k.startswith("HYPERVISOR_")
}
#: Size of one stub in the hypercall page: ``call hypercall_page + nr * 32`` [XEN-HCALL-ABI].
HYPERCALL_STUB_SIZE = 32

# ----------------------------------------------------------------- errno [XEN-ERRNO]
EPERM = 1
ENOENT = 2
ESRCH = 3
EINTR = 4
EIO = 5
ENXIO = 6
E2BIG = 7
EBADF = 9
EAGAIN = 11
ENOMEM = 12
EACCES = 13
EFAULT = 14
EBUSY = 16
EEXIST = 17
ENODEV = 19
EINVAL = 22
ENOSPC = 28
ENOSYS = 38

ERRNO_NAMES: dict[int, str] = {
    EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EINTR: "EINTR", EIO: "EIO",
    ENXIO: "ENXIO", E2BIG: "E2BIG", EBADF: "EBADF", EAGAIN: "EAGAIN", ENOMEM: "ENOMEM",
    EACCES: "EACCES", EFAULT: "EFAULT", EBUSY: "EBUSY", EEXIST: "EEXIST", ENODEV: "ENODEV",
    EINVAL: "EINVAL", ENOSPC: "ENOSPC", ENOSYS: "ENOSYS",
}


def errno_name(rc: int) -> str:
    """A hypercall result as Xen's name: ``-EPERM``, ``0``, or a positive value as is.

    >>> errno_name(-22), errno_name(5)
    ('-EINVAL', '5')
    """
    if rc < 0 and -rc in ERRNO_NAMES:
        return "-" + ERRNO_NAMES[-rc]
    return str(rc)


# ----------------------------------------------------------------- domain ids [XEN-H]
DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_XEN = 0x7FF2
DOMID_COW = 0x7FF3
DOMID_INVALID = 0x7FF4
DOMID_IDLE = 0x7FFF

# ----------------------------------------------------------------- virtual IRQs [XEN-H]
VIRQ_TIMER = 0
VIRQ_DEBUG = 1
VIRQ_CONSOLE = 2
VIRQ_DOM_EXC = 3
VIRQ_TBUF = 4
VIRQ_DEBUGGER = 6
VIRQ_XENOPROF = 7
VIRQ_CON_RING = 8
VIRQ_PCPU_STATE = 9
VIRQ_MEM_EVENT = 10
VIRQ_ARGO = 11
VIRQ_ENOMEM = 12
VIRQ_XENPMU = 13
NR_VIRQS = 24
#: Per-vCPU virqs ("V." in xen.h); the others are global and bind to vCPU 0 only.
VIRQS_PER_VCPU = frozenset({VIRQ_TIMER, VIRQ_DEBUG, VIRQ_XENOPROF, VIRQ_XENPMU})

# ----------------------------------------------------------------- event channels [XEN-EVTCHN]
EVTCHNOP_bind_interdomain = 0
EVTCHNOP_bind_virq = 1
EVTCHNOP_bind_pirq = 2
EVTCHNOP_close = 3
EVTCHNOP_send = 4
EVTCHNOP_status = 5
EVTCHNOP_alloc_unbound = 6
EVTCHNOP_bind_ipi = 7
EVTCHNOP_bind_vcpu = 8
EVTCHNOP_unmask = 9
EVTCHNOP_reset = 10
EVTCHNOP_NAMES = {v: k for k, v in dict(globals()).items() if k.startswith("EVTCHNOP_")}

EVTCHNSTAT_closed = 0
EVTCHNSTAT_unbound = 1
EVTCHNSTAT_interdomain = 2
EVTCHNSTAT_pirq = 3
EVTCHNSTAT_virq = 4
EVTCHNSTAT_ipi = 5
EVTCHNSTAT_NAMES = {v: k for k, v in dict(globals()).items() if k.startswith("EVTCHNSTAT_")}

#: Bits in ``xen_ulong_t`` on x86-64; the 2-level ABI has BITS² ports [XEN-EVTCHN].
BITS_PER_XEN_ULONG = 64
EVTCHN_2L_NR_CHANNELS = BITS_PER_XEN_ULONG * BITS_PER_XEN_ULONG
#: Bound on a PIRQ channel's flags: ``BIND_PIRQ__WILL_SHARE``.
BIND_PIRQ__WILL_SHARE = 1

# ----------------------------------------------------------------- grant tables [XEN-GNTTAB]
GNTTABOP_map_grant_ref = 0
GNTTABOP_unmap_grant_ref = 1
GNTTABOP_setup_table = 2
GNTTABOP_dump_table = 3
GNTTABOP_transfer = 4
GNTTABOP_copy = 5
GNTTABOP_query_size = 6
GNTTABOP_unmap_and_replace = 7
GNTTABOP_set_version = 8
GNTTABOP_get_status_frames = 9
GNTTABOP_get_version = 10
GNTTABOP_swap_grant_ref = 11
GNTTABOP_cache_flush = 12
GNTTABOP_NAMES = {v: k for k, v in dict(globals()).items() if k.startswith("GNTTABOP_")}

GTF_invalid = 0
GTF_permit_access = 1
GTF_accept_transfer = 2
GTF_transitive = 3
GTF_type_mask = 3
GTF_readonly = 1 << 2
GTF_reading = 1 << 3
GTF_writing = 1 << 4
GTF_PWT = 1 << 5
GTF_PCD = 1 << 6
GTF_PAT = 1 << 7
GTF_sub_page = 1 << 8

GNTMAP_device_map = 1 << 0
GNTMAP_host_map = 1 << 1
GNTMAP_readonly = 1 << 2
GNTMAP_application_map = 1 << 3
GNTMAP_contains_pte = 1 << 4

GNTCOPY_source_gref = 1 << 0
GNTCOPY_dest_gref = 1 << 1

GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3
GNTST_bad_handle = -4
GNTST_bad_virt_addr = -5
GNTST_bad_dev_addr = -6
GNTST_no_device_space = -7
GNTST_permission_denied = -8
GNTST_bad_page = -9
GNTST_bad_copy_arg = -10
GNTST_address_too_big = -11
GNTST_eagain = -12
GNTST_no_space = -13
GNTST_NAMES = {v: k for k, v in dict(globals()).items() if k.startswith("GNTST_")}

GNTTAB_NR_RESERVED_ENTRIES = 8
GNTTAB_RESERVED_CONSOLE = 0
GNTTAB_RESERVED_XENSTORE = 1
#: ``sizeof(struct grant_entry_v1)``: flags u16, domid u16, frame u32.
GRANT_ENTRY_V1_SIZE = 8
#: Default ``gnttab_max_frames`` (Xen command line) [XEN-CMDLINE].
GNTTAB_MAX_FRAMES_DEFAULT = 64

# ----------------------------------------------------------------- domctl / sysctl
XEN_DOMCTL_INTERFACE_VERSION = 0x18
XEN_SYSCTL_INTERFACE_VERSION = 0x16
XEN_DOMCTL_CDF_hvm = 1 << 0
XEN_DOMCTL_CDF_hap = 1 << 1
#: ``arch-x86/xen.h``: an HVM container with only a local APIC emulated is PVH.
XEN_X86_EMU_LAPIC = 1 << 0
XEN_DOMINF_dying = 1 << 0
XEN_DOMINF_shutdown = 1 << 2
XEN_DOMINF_paused = 1 << 3
XEN_DOMINF_blocked = 1 << 4
XEN_DOMINF_running = 1 << 5
XEN_DOMCTL_createdomain = 1
XEN_DOMCTL_destroydomain = 2
XEN_DOMCTL_pausedomain = 3
XEN_DOMCTL_unpausedomain = 4
XEN_DOMCTL_getdomaininfo = 5
XEN_DOMCTL_shadow_op = 10
XEN_DOMCTL_max_mem = 11
XEN_DOMCTL_max_vcpus = 15
XEN_DOMCTL_scheduler_op = 16
XEN_DOMCTL_irq_permission = 19
XEN_DOMCTL_iomem_permission = 20
XEN_DOMCTL_ioport_permission = 21
XEN_DOMCTL_resumedomain = 27
XEN_DOMCTL_assign_device = 37
XEN_DOMCTL_deassign_device = 47
XEN_DOMCTL_NAMES = {v: k for k, v in dict(globals()).items()
                    if k.startswith("XEN_DOMCTL_") and k[11:].islower()}

XEN_DOMCTL_SCHEDOP_putinfo = 0
XEN_DOMCTL_SCHEDOP_getinfo = 1
XEN_SCHEDULER_CREDIT = 5
XEN_SCHEDULER_CREDIT2 = 6

XEN_SYSCTL_readconsole = 1
XEN_SYSCTL_physinfo = 3
XEN_SYSCTL_sched_id = 4
XEN_SYSCTL_getdomaininfolist = 6
XEN_SYSCTL_NAMES = {v: k for k, v in dict(globals()).items() if k.startswith("XEN_SYSCTL_")}

# ----------------------------------------------------------------- sched_op [XEN-SCHED-H]
SCHEDOP_yield = 0
SCHEDOP_block = 1
SCHEDOP_shutdown = 2
SCHEDOP_poll = 3
SCHEDOP_remote_shutdown = 4
SCHEDOP_shutdown_code = 5
SCHEDOP_watchdog = 6
SCHEDOP_pin_override = 7
SCHEDOP_NAMES = {v: k for k, v in dict(globals()).items() if k.startswith("SCHEDOP_")}

SHUTDOWN_poweroff = 0
SHUTDOWN_reboot = 1
SHUTDOWN_suspend = 2
SHUTDOWN_crash = 3
SHUTDOWN_watchdog = 4
SHUTDOWN_soft_reset = 5

# ----------------------------------------------------------------- physdev_op [XEN-PHYSDEV]
PHYSDEVOP_eoi = 12
PHYSDEVOP_irq_status_query = 5
PHYSDEVOP_set_iopl = 6
PHYSDEVOP_map_pirq = 13
PHYSDEVOP_unmap_pirq = 14
PHYSDEVOP_NAMES = {v: k for k, v in dict(globals()).items() if k.startswith("PHYSDEVOP_")}

# ----------------------------------------------------------------- split drivers
BLKIF_OP_READ = 0
BLKIF_OP_WRITE = 1
BLKIF_MAX_SEGMENTS_PER_REQUEST = 11
BLKIF_RSP_EOPNOTSUPP = -2
BLKIF_RSP_ERROR = -1
BLKIF_RSP_OKAY = 0
#: Sector size the blkif protocol counts in (``first_sect``/``last_sect`` are 512-byte units).
BLKIF_SECTOR_SIZE = 512

NETIF_RSP_DROPPED = -2
NETIF_RSP_ERROR = -1
NETIF_RSP_OKAY = 0

XenbusStateUnknown = 0
XenbusStateInitialising = 1
XenbusStateInitWait = 2
XenbusStateInitialised = 3
XenbusStateConnected = 4
XenbusStateClosing = 5
XenbusStateClosed = 6
