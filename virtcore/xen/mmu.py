"""Xen's PV virtual MMU (虚拟MMU): direct paging with validated, read-only page tables.

A paravirtualized (PV) guest's page tables are *real*: the CPU walks them, and they hold
**machine** frame numbers.  So that a guest cannot map memory it does not own, Xen makes the
tables read-only to the guest and applies every change itself, after checking it
[XENPV-LINUX; XIG §"Page Table Updates"; XEN-H; XEN-MM-C].  Three address spaces, and the
guest does the middle step itself: to map its pseudo-physical frame *pfn* it looks up
``mfn = p2m[pfn]`` and writes the mfn into the entry ("three levels of addressing":
guest virtual → pseudo-physical → machine, S6.5).

The rules modelled (Xen's function names)
-----------------------------------------
1. ``HYPERVISOR_mmu_update(reqs, count, *done, foreigndom)`` (hypercall 1,
   ``do_mmu_update()``): each request ``(ptr, val)`` means ``*ptr = val``; ``ptr[1:0]`` is the
   command: ``MMU_NORMAL_PT_UPDATE`` 0, ``MMU_MACHPHYS_UPDATE`` 1 (set the M2P entry of frame
   ``ptr >> PAGE_SHIFT`` to ``val``), ``MMU_PT_UPDATE_PRESERVE_AD`` 2 (keep the A/D bits
   already in the entry), ``MMU_PT_UPDATE_NO_TRANSLATE`` 3 (as 0 for a PV guest).  ``ptr`` is
   the **machine** address of the entry.  Requests are applied in order and processing stops
   at the first failure: the earlier ones stay applied, ``*done`` says how many, and the
   return value is the failing request's error — exactly as ``do_mmu_update()`` does.
2. The frame holding ``ptr`` must belong to the caller (else ``-EINVAL``).  If it is a
   validated page table of level *k* the write goes through ``mod_l1_entry()`` /
   ``mod_l2_entry()`` …; if its type count is 0 it is an ordinary page and the write is a
   plain store (``get_page_type(PGT_writable_page)``); any other type → ``-EINVAL``.
3. ``mod_l1_entry()`` → ``get_page_from_l1e()`` for a present entry: flag bits outside the
   allowed set → ``-EINVAL`` ("Bad L1 flags"); a frame that is not RAM (no I/O permission in
   the model) → ``-EPERM``; a frame owned by another domain (free, Xen's own, or a domain
   that did not grant it) → ``-EBUSY``; a *writable* mapping needs a ``PGT_writable_page``
   type reference, which a page-table frame cannot give → ``-EBUSY`` ("Could not get page
   type PGT_writable_page").  So **a page-table page is never mapped writable**.  Then the
   old entry's references are dropped (``put_page_from_l1e()``).
4. ``mod_l2_entry()`` … for *k* ≥ 2: bad flags → ``-EINVAL``; the frame the entry points at
   must be the caller's and must take type ``PGT_l(k-1)_page_table``
   (``get_page_and_type_from_mfn()``); a frame that is mapped writable (type
   ``PGT_writable_page`` with references) cannot → ``-EINVAL``.  So **a writable page is
   never used as a page table**.  Taking the type validates the new table and, recursively,
   everything below it (``alloc_page_type()`` → ``alloc_l1_table()`` …); dropping the last
   type reference releases what its entries referenced (``free_page_type()``).
5. ``HYPERVISOR_mmuext_op`` (26, ``do_mmuext_op()``): ``MMUEXT_PIN_L1_TABLE`` 0 …
   ``PIN_L4_TABLE`` 3 take a type reference kept by the ``PGT_pinned`` flag (validating the
   whole tree once; pinning is *not* reference counted: pinning twice → ``-EINVAL``);
   ``UNPIN_TABLE`` 4 drops it; ``NEW_BASEPTR`` 5 loads the root (CR3) after taking a root-type
   reference (``new_guest_cr3()``); ``TLB_FLUSH_LOCAL`` 6, ``INVLPG_LOCAL`` 7.  Pinning a
   level this machine does not have is ignored (rc 0), as Xen ignores "invalid paging levels".
6. ``HYPERVISOR_update_va_mapping(va, val, flags)`` (14): one L1 entry found through the
   guest's *current* tables (``map_guest_l1e()``), changed by ``mod_l1_entry()``; then
   ``UVMF_TLB_FLUSH`` 1 or ``UVMF_INVLPG`` 2, ``UVMF_LOCAL`` 0 or ``UVMF_ALL`` 4.
7. ``foreigndom``: a privileged domain (dom0: the toolstack, a device model) may name another
   domain whose frames it maps (``get_pg_owner()``; else XSM says ``-EPERM``; an unknown domain
   ``-ESRCH``).  An unprivileged guest maps a foreign frame only through a **grant**: the
   :class:`ForeignMapPolicy` hook (installed by the grant-table code) says whether a current
   grant lets it, and is told of each such mapping and unmapping (so a grant in use cannot be
   revoked — ``GTF_reading``/``GTF_writing`` [XEN-GNTTAB]).
8. A rejected request changes nothing.  Xen flushes TLBs when a frame stops being writable
   or is freed, so no stale TLB entry reaches a page table either (see
   :attr:`~virtcore.xen.memory.MachineMemory.tlb_flush_hook`).

What the model simplifies (to say in class)
-------------------------------------------
- Page tables use :mod:`virtcore.hw.paging`'s format and walker: 32-bit entries with x86's flag
  positions and a 20-bit frame field, any :class:`~virtcore.hw.paging.PagingConfig` (x86's
  2-level 32-bit layout, or the teaching sizes; ``tiny4`` has 4 levels like x86-64 PV, whose
  real entries are 64-bit with an NX bit).  A root of *n* levels has type ``PGT_ln``.
- Allowed flags: L1 entries P, W, U, A, D, G and the three AVL bits (so ``L1_DISALLOW_MASK`` is
  PWT | PCD | PAT = ``0x098``, cache attributes being reserved for domains with cache-flush
  permission); higher levels also lose G (``base_disallow_mask``: ``0x198``).  Entry values
  above 32 bits → ``-EINVAL``.
- No MMIO / I/O-memory permissions, no linear (recursive) page tables, no Xen-private L2/L4
  slots, no ``PGT_partial`` / preemption (``-ERESTART``), no ``MMUEXT_NEW_USER_BASEPTR``, no
  ``pt_dom`` in the high half of ``foreigndom``, one vCPU per domain (``UVMF_ALL`` = local).
- The *P2M* of a PV guest is the guest's own table (Xen keeps only the M2P); the model keeps
  it in :class:`~virtcore.xen.memory.DomainMemory` and ``MMU_MACHPHYS_UPDATE`` updates both,
  as a guest kernel does in the same breath.
- The mmu_update fast path for "sufficiently similar" entries is not modelled separately: the
  model always takes the new references before dropping the old ones, which gives the same
  result.

Where things are
----------------
:class:`XenMM` (validation and the hypercalls, callable directly with the caller's domid),
:class:`PVGuest` (a guest's vCPU MMU and its kernel's side: building, ``map_request``, the
three-space :meth:`PVGuest.translate` trace), :func:`install_pv_mmu` (wires the hypercalls into
:class:`virtcore.xen.Xen`, with :class:`MaptrackPolicy` as the grant hook), and
:func:`translate_many` (the fast loop over the hw MMU).  HVM guests: :mod:`virtcore.xen.nested`
and :mod:`virtcore.xen.shadow`.

>>> from virtcore.xen.memory import MachineMemory
>>> from virtcore.hw.paging import PagingConfig
>>> xen = XenMM(MachineMemory(64, frame_size=32), PagingConfig.tiny())
>>> g = xen.create_pv_domain(1, max_pages=16)
>>> g.build({0x40: (5, True), 0x60: (6, False)})      # va -> (pfn, writable); pins and loads
>>> g.access(0x44, write=True) == g.pfn_maddr(5) + 4
True
>>> g.map_request(0x80, g.table_pfns[0], writable=True)  # try to map its own L2 writable
MMUUpdate(ptr=0x...)
>>> xen.mmu_update(1, [g.map_request(0x80, g.table_pfns[0], writable=True)])
HypercallResult(rc=-16 (-EBUSY), done=0)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from virtcore.errors import ConfigurationError
from virtcore.hw.events import Access, PageFault
from virtcore.hw.paging import (
    MMU,
    PTE_A,
    PTE_D,
    PTE_P,
    PTE_U,
    PTE_W,
    PagingConfig,
    describe_pte,
)
from virtcore.xen.memory import (
    DOMID_IO,
    DOMID_SELF,
    DOMID_XEN,
    EBUSY,
    EFAULT,
    EINVAL,
    ENOSYS,
    EPERM,
    ESRCH,
    INVALID_M2P_ENTRY,
    MADDR,
    MFN,
    PFN,
    DomainMemory,
    MachineMemory,
    MemorySnapshot,
    PGT_l1_page_table,
    PGT_writable_page,
    XenMemoryError,
)

__all__ = [
    "BASE_DISALLOW_MASK",
    "ERRNO_NAMES",
    "L1_DISALLOW_MASK",
    "MMUEXT_INVLPG_ALL",
    "MMUEXT_INVLPG_LOCAL",
    "MMUEXT_INVLPG_MULTI",
    "MMUEXT_NEW_BASEPTR",
    "MMUEXT_PIN_L1_TABLE",
    "MMUEXT_PIN_L2_TABLE",
    "MMUEXT_PIN_L3_TABLE",
    "MMUEXT_PIN_L4_TABLE",
    "MMUEXT_TLB_FLUSH_ALL",
    "MMUEXT_TLB_FLUSH_LOCAL",
    "MMUEXT_TLB_FLUSH_MULTI",
    "MMUEXT_UNPIN_TABLE",
    "MMU_MACHPHYS_UPDATE",
    "MMU_NORMAL_PT_UPDATE",
    "MMU_PT_UPDATE_NO_TRANSLATE",
    "MMU_PT_UPDATE_PRESERVE_AD",
    "UVMF_ALL",
    "UVMF_FLUSHTYPE_MASK",
    "UVMF_INVLPG",
    "UVMF_LOCAL",
    "UVMF_MULTI",
    "UVMF_NONE",
    "UVMF_TLB_FLUSH",
    "ForeignMapPolicy",
    "HypercallResult",
    "MMUExtOp",
    "MMUUpdate",
    "MaptrackPolicy",
    "MemRef",
    "PVGuest",
    "Translation",
    "XENMEM_current_reservation",
    "XENMEM_decrease_reservation",
    "XENMEM_increase_reservation",
    "XENMEM_maximum_reservation",
    "XENMEM_populate_physmap",
    "XenMM",
    "__HYPERVISOR_memory_op",
    "__HYPERVISOR_mmu_update",
    "__HYPERVISOR_mmuext_op",
    "__HYPERVISOR_update_va_mapping",
    "errno_name",
    "install_pv_mmu",
    "translate_many",
    "walk_tables",
]

# -- numbers [XEN-H; XEN-MEMORY] -------------------------------------------------------------

__HYPERVISOR_mmu_update = 1
__HYPERVISOR_memory_op = 12
__HYPERVISOR_update_va_mapping = 14
__HYPERVISOR_mmuext_op = 26

MMU_NORMAL_PT_UPDATE = 0
MMU_MACHPHYS_UPDATE = 1
MMU_PT_UPDATE_PRESERVE_AD = 2
MMU_PT_UPDATE_NO_TRANSLATE = 3

MMUEXT_PIN_L1_TABLE = 0
MMUEXT_PIN_L2_TABLE = 1
MMUEXT_PIN_L3_TABLE = 2
MMUEXT_PIN_L4_TABLE = 3
MMUEXT_UNPIN_TABLE = 4
MMUEXT_NEW_BASEPTR = 5
MMUEXT_TLB_FLUSH_LOCAL = 6
MMUEXT_INVLPG_LOCAL = 7
MMUEXT_TLB_FLUSH_MULTI = 8
MMUEXT_INVLPG_MULTI = 9
MMUEXT_TLB_FLUSH_ALL = 10
MMUEXT_INVLPG_ALL = 11

UVMF_NONE = 0
UVMF_TLB_FLUSH = 1
UVMF_INVLPG = 2
UVMF_FLUSHTYPE_MASK = 3
UVMF_MULTI = 0 << 2
UVMF_LOCAL = 0 << 2
UVMF_ALL = 1 << 2

_HYPERCALL_NUMBERS = (__HYPERVISOR_mmu_update, __HYPERVISOR_memory_op,
                      __HYPERVISOR_update_va_mapping, __HYPERVISOR_mmuext_op)

XENMEM_increase_reservation = 0
XENMEM_decrease_reservation = 1
XENMEM_current_reservation = 3
XENMEM_maximum_reservation = 4
XENMEM_populate_physmap = 6

#: PTE flag bits a PV guest may not set (the model's 12-bit flag field; see the module notes).
L1_DISALLOW_MASK = 0x098  # PWT 0x8 | PCD 0x10 | PAT/PSE 0x80
BASE_DISALLOW_MASK = 0x198  # ... | G 0x100 (allowed only in L1 entries)
_PTE_LIMIT = 1 << 32

ERRNO_NAMES = {1: "EPERM", 2: "ENOENT", 3: "ESRCH", 12: "ENOMEM", 13: "EACCES", 14: "EFAULT",
               16: "EBUSY", 17: "EEXIST", 22: "EINVAL", 38: "ENOSYS"}


def errno_name(rc: int) -> str:
    """``-16`` → ``'-EBUSY'``; 0 → ``'0'``; a positive count as it is.

    >>> errno_name(-22), errno_name(0), errno_name(3)
    ('-EINVAL', '0', '3')
    """
    if rc >= 0:
        return str(rc)
    return "-" + ERRNO_NAMES.get(-rc, f"E{-rc}")


# -- requests and results (readable values) ----------------------------------------------------


@dataclass(frozen=True)
class MMUUpdate:
    """One ``mmu_update_t``: ``*ptr = val`` with the command in ``ptr[1:0]`` [XEN-H].

    >>> MMUUpdate(0x1a4 | MMU_NORMAL_PT_UPDATE, 0x9007)
    MMUUpdate(ptr=0x1a4 MMU_NORMAL_PT_UPDATE, val=0x00009007 (pfn 0x9 P W U))
    """

    ptr: int
    val: int

    @property
    def cmd(self) -> int:
        """``ptr & 3``."""
        return self.ptr & 3

    def __repr__(self) -> str:
        names = ("MMU_NORMAL_PT_UPDATE", "MMU_MACHPHYS_UPDATE", "MMU_PT_UPDATE_PRESERVE_AD",
                 "MMU_PT_UPDATE_NO_TRANSLATE")
        val = (f"{self.val:#x} (pfn)" if self.cmd == MMU_MACHPHYS_UPDATE
               else f"{self.val:#010x} ({describe_pte(self.val & 0xFFFFFFFF)})")
        return f"MMUUpdate(ptr={self.ptr & ~3:#x} {names[self.cmd]}, val={val})"


@dataclass(frozen=True)
class MMUExtOp:
    """One ``struct mmuext_op``: ``cmd`` and ``arg`` (an mfn, or a linear address) [XEN-H].

    >>> MMUExtOp(MMUEXT_PIN_L2_TABLE, 7)
    MMUExtOp(MMUEXT_PIN_L2_TABLE, 0x7)
    """

    cmd: int
    arg: int = 0

    def __repr__(self) -> str:
        names = {0: "MMUEXT_PIN_L1_TABLE", 1: "MMUEXT_PIN_L2_TABLE", 2: "MMUEXT_PIN_L3_TABLE",
                 3: "MMUEXT_PIN_L4_TABLE", 4: "MMUEXT_UNPIN_TABLE", 5: "MMUEXT_NEW_BASEPTR",
                 6: "MMUEXT_TLB_FLUSH_LOCAL", 7: "MMUEXT_INVLPG_LOCAL",
                 8: "MMUEXT_TLB_FLUSH_MULTI", 9: "MMUEXT_INVLPG_MULTI",
                 10: "MMUEXT_TLB_FLUSH_ALL", 11: "MMUEXT_INVLPG_ALL"}
        return f"MMUExtOp({names.get(self.cmd, str(self.cmd))}, {self.arg:#x})"


@dataclass(frozen=True)
class HypercallResult:
    """What a batched hypercall returns: ``rc`` (0 or ``-errno``) and ``*done``."""

    rc: int
    done: int

    @property
    def ok(self) -> bool:
        """True if every request was applied."""
        return self.rc == 0

    def __repr__(self) -> str:
        rc = f"{self.rc} ({errno_name(self.rc)})" if self.rc < 0 else str(self.rc)
        return f"HypercallResult(rc={rc}, done={self.done})"


class ForeignMapPolicy(Protocol):
    """The grant-table code's answer to "may domain ``mapper`` map machine frame ``mfn``?".

    Installed as :attr:`XenMM.foreign`.  ``mapped``/``unmapped`` are called once per page-table
    entry that starts/stops mapping a granted frame, so the grant code can mark the grant in
    use (``GTF_reading`` / ``GTF_writing``) and refuse to revoke it meanwhile [XEN-GNTTAB].
    """

    def may_map(self, mapper: int, mfn: int, writable: bool) -> bool:
        """True if a current grant lets ``mapper`` map ``mfn`` (writable if asked)."""
        ...

    def mapped(self, mapper: int, mfn: int, writable: bool) -> None:
        """A page-table entry of ``mapper`` now maps granted ``mfn``."""
        ...

    def unmapped(self, mapper: int, mfn: int, writable: bool) -> None:
        """That entry is gone."""
        ...


# -- the teaching trace ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MemRef:
    """One memory reference made while translating: which table, in which space, which entry.

    Attributes
    ----------
    table : str
        ``"guest L2"`` … (the guest's own table), ``"EPT L4"`` … (nested / P2M table),
        ``"shadow L2"`` … (the hypervisor's shadow).
    space : str
        The space ``table_addr`` is in: ``"machine"`` or ``"pseudo-physical"``.
    level, index : int
        Table level (1 = leaf) and index into it.
    table_addr : int
        Address of the table in ``space``.
    maddr : int
        Machine address actually read.
    entry : int
        The entry read.
    translating : int
        The address this reference helps translate (guest virtual, or guest-physical for a
        nested reference).
    frame_kind : str
        What the entry's frame field holds: ``"mfn"`` (PV, EPT, shadow) or ``"gfn"`` (an
        auto-translated guest's own table).
    """

    table: str
    space: str
    level: int
    index: int
    table_addr: int
    maddr: int
    entry: int
    translating: int
    frame_kind: str = "mfn"

    def __str__(self) -> str:
        where = f"@{self.maddr:#x}"
        if self.space != "machine":
            where = f"@{self.table_addr + 4 * self.index:#x} {self.space} (machine {self.maddr:#x})"
        indent = "    " if self.table.startswith("EPT") else ""
        what = self.frame_kind + describe_pte(self.entry)[3:]
        return (f"{indent}--> {self.table} index:{self.index:#x} [decimal {self.index}]"
                f" entry {where} contents:{self.entry:#010x} ({what})")


@dataclass(frozen=True)
class Translation:
    """One guest virtual address carried through the three spaces, with every reference.

    ``str()`` prints the OSTEP-style trace; ``refs`` is the same as data.
    """

    mode: str
    gva: int
    access: str
    refs: tuple[MemRef, ...]
    pfn: int | None
    mfn: int | None
    maddr: int | None
    fault: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True if the address translated."""
        return self.fault is None

    @property
    def references(self) -> int:
        """Page-table memory references made (all dimensions)."""
        return len(self.refs)

    def __str__(self) -> str:
        lines = [f"[{self.mode}] {self.access} of guest virtual {self.gva:#x}"
                 f" [decimal {self.gva}]", *(f"  {n}" for n in self.notes)]
        lines += [str(r) for r in self.refs]
        if self.fault is not None:
            lines.append(f"--> fault: {self.fault}")
        else:
            assert self.maddr is not None
            pfn = "-" if self.pfn is None or self.pfn == INVALID_M2P_ENTRY else f"{self.pfn:#x}"
            lines.append(f"--> gva {self.gva:#x} -> pseudo-physical frame {pfn}"
                         f" -> machine frame {self.mfn:#x} -> maddr {self.maddr:#x}"
                         f" [decimal {self.maddr}]")
        lines.append(f"{self.references} page-table memory references")
        return "\n".join(lines)


# -- the hypervisor's memory manager ------------------------------------------------------------


class XenMM:
    """Xen's x86 memory manager for PV guests: validation, the hypercalls, the TLBs.

    Parameters
    ----------
    machine : MachineMemory
        The machine; its frame size must be ``config``'s page size.
    config : PagingConfig, optional
        Page-table shape of every PV guest (default x86 32-bit for 4 KiB frames).
    tlb_size : int
        Each guest vCPU's TLB capacity (0 = no TLB).

    Attributes
    ----------
    guests : dict of int to PVGuest
    foreign : ForeignMapPolicy or None
        The grant hook (None: no foreign frame may be mapped by an unprivileged guest).
    stats : Counter
        ``mmu_update`` requests applied / rejected, validations, TLB flushes forced by type
        changes (never part of :meth:`snapshot`).
    """

    def __init__(self, machine: MachineMemory, config: PagingConfig | None = None, *,
                 tlb_size: int = 16) -> None:
        if config is None:
            config = PagingConfig.x86_32()
        if config.page_size != machine.frame_size:
            raise ConfigurationError(f"page size {config.page_size} is not the machine's frame"
                                     f" size {machine.frame_size}")
        if config.levels > 4:
            raise ConfigurationError("Xen's page types go up to PGT_l4_page_table")
        if machine.alloc_page_type is not None:
            raise ConfigurationError("this machine already has a memory manager")
        self.machine = machine
        self.config = config
        self.tlb_size = tlb_size
        self.levels = config.levels
        self.guests: dict[int, PVGuest] = {}
        self.foreign: ForeignMapPolicy | None = None
        self.stats: Counter[str] = Counter()
        self._grant_maps: Counter[tuple[int, int, bool]] = Counter()
        self._entries = config.entries_per_table
        self._page_bits = config.page_bits
        self._offset_mask = config.offset_mask
        machine.alloc_page_type = self._alloc_page_type
        machine.free_page_type = self._free_page_type
        machine.tlb_flush_hook = self._flush_all_tlbs

    def __repr__(self) -> str:
        return (f"XenMM({self.config}; {len(self.guests)} PV guests, "
                f"{self.stats['mmu_update_ok']} updates applied,"
                f" {self.stats['mmu_update_rejected']} rejected)")

    def adopt_domain(self, domid: int, *, privileged: bool = False) -> PVGuest:
        """A :class:`PVGuest` for a domain whose memory already exists (made by the
        hypervisor's domain builder); nothing is populated."""
        if domid in self.guests:
            raise XenMemoryError(f"d{domid} already has a PV MMU")
        mem = self.machine.domains.get(domid)
        if mem is None:
            raise XenMemoryError(f"d{domid} has no memory")
        guest = PVGuest(self, mem, privileged=privileged)
        self.guests[domid] = guest
        return guest

    def create_pv_domain(self, domid: int, max_pages: int, *, privileged: bool = False,
                         populate: bool = True) -> PVGuest:
        """A new PV guest: its pseudo-physical memory (populated 0..max_pages-1 unless
        ``populate=False``) and a vCPU MMU over machine memory.

        >>> from virtcore.xen.memory import MachineMemory
        >>> xen = XenMM(MachineMemory(32, 32), PagingConfig.tiny())
        >>> xen.create_pv_domain(1, 8)
        PVGuest(d1: 8 pages, no base pointer)
        """
        if domid in self.guests:
            raise XenMemoryError(f"d{domid} already exists")
        mem = (self.machine.domains.get(domid)
               or self.machine.new_domain_memory(domid, max_pages))
        guest = PVGuest(self, mem, privileged=privileged)
        self.guests[domid] = guest
        if populate:
            mem.populate_physmap(range(max_pages))
        return guest

    def destroy_pv_domain(self, domid: int) -> int:
        """Tear a PV guest down: drop its base pointer (``vcpu_destroy_pagetables()``), then
        :meth:`~virtcore.xen.memory.MachineMemory.destroy_domain_memory`.  Returns the frames
        whose allocation reference was dropped.
        """
        guest = self.guests.pop(domid, None)
        if guest is None:
            raise XenMemoryError(f"d{domid} is not a PV guest here")
        if guest.baseptr is not None:
            base, guest.baseptr = guest.baseptr, None
            guest.mmu.enabled = False
            guest.mmu.tlb.flush()
            self.machine.put_page_and_type(MFN(base))
        return self.machine.destroy_domain_memory(domid)

    def zap_foreign_mappings(self, mapper: int, mfn: int) -> int:
        """Clear every L1 entry in ``mapper``'s current tables that maps foreign ``mfn`` (what
        ``replace_grant_host_mapping()`` does when a grant mapping is undone), dropping the
        references and flushing the TLB.  Returns how many entries were cleared.
        """
        g = self.guests.get(mapper)
        if g is None or g.baseptr is None:
            return 0
        cleared = 0
        for va, target, _w in g.leaf_mappings():
            if target == mfn and self.machine.owner[mfn] != mapper:
                slot = g.l1_slot(va)
                assert slot is not None
                if not self.mod_entry(slot[0], slot[1], 1, 0, MMU_NORMAL_PT_UPDATE, mapper,
                                      mapper):
                    cleared += 1
        if cleared:
            g.mmu.tlb.flush()
        return cleared

    # -- TLBs ------------------------------------------------------------------------------------

    def _flush_all_tlbs(self, mfn: int) -> None:
        """A frame lost its writable type or was freed: flush every vCPU TLB that is not empty
        (Xen flushes the CPUs that may hold a stale entry)."""
        for g in self.guests.values():
            if g.mmu.tlb.entries:
                g.mmu.tlb.flush()
                self.stats["tlb_flush_forced"] += 1

    # -- validation: the reference a student re-implements ---------------------------------------

    def get_page_from_l1e(self, l1e: int, l1e_owner: int, pg_owner: int) -> int:
        """Check a new present L1 entry and take its references — Xen's ``get_page_from_l1e()``.

        Returns 0, or ``-EINVAL`` (bad flags), ``-EPERM`` (not RAM: no I/O permission),
        ``-EBUSY`` (frame not ``pg_owner``'s and not granted, or a writable mapping of a frame
        that cannot become ``PGT_writable_page``, e.g. a page table).

        Examples
        --------
        >>> from virtcore.xen.memory import MachineMemory, PGT_l1_page_table
        >>> xen = XenMM(MachineMemory(8, 32), PagingConfig.tiny())
        >>> mine = xen.machine.alloc(1); theirs = xen.machine.alloc(2)
        >>> xen.get_page_from_l1e(mine << 12 | PTE_P | PTE_W, 1, 1)
        0
        >>> xen.get_page_from_l1e(theirs << 12 | PTE_P, 1, 1)        # not d1's: -EBUSY
        -16
        >>> xen.get_page_from_l1e(mine << 12 | PTE_P | 0x10, 1, 1)   # PCD: Bad L1 flags
        -22
        >>> xen.machine.get_page_type(theirs, PGT_l1_page_table)
        0
        >>> xen.get_page_from_l1e(theirs << 12 | PTE_P | PTE_W, 2, 2)  # a page table, writable
        -16
        """
        m = self.machine
        if l1e >= _PTE_LIMIT or l1e < 0 or l1e & L1_DISALLOW_MASK:
            return -EINVAL
        mfn = l1e >> 12
        if mfn >= m.nframes:
            return -EPERM  # not RAM: MMIO without iomem permission
        writable = bool(l1e & PTE_W)
        real_owner = m.owner[mfn]
        granted = False
        if real_owner != pg_owner:
            foreign = self.foreign
            if (real_owner < 0 or real_owner == DOMID_XEN or pg_owner != l1e_owner
                    or foreign is None or not foreign.may_map(l1e_owner, mfn, writable)):
                return -EBUSY  # could_not_pin
            granted = True
        m.count[mfn] += 1  # get_page(page, real_pg_owner)
        if writable and m.get_page_type(MFN(mfn), PGT_writable_page):
            m.put_page(MFN(mfn))
            return -EBUSY  # "Could not get page type PGT_writable_page"
        if granted:
            self._grant_maps[(l1e_owner, mfn, writable)] += 1
            assert self.foreign is not None
            self.foreign.mapped(l1e_owner, mfn, writable)
        m.generation += 1
        return 0

    def put_page_from_l1e(self, l1e: int, l1e_owner: int) -> None:
        """Drop what a present L1 entry held — Xen's ``put_page_from_l1e()``."""
        if not l1e & PTE_P:
            return
        m = self.machine
        mfn = l1e >> 12
        if mfn >= m.nframes:
            return
        writable = bool(l1e & PTE_W)
        key = (l1e_owner, mfn, writable)
        if self._grant_maps.get(key):
            self._grant_maps[key] -= 1
            if not self._grant_maps[key]:
                del self._grant_maps[key]
            if self.foreign is not None:
                self.foreign.unmapped(l1e_owner, mfn, writable)
        if writable:
            m.put_page_type(MFN(mfn))
        m.put_page(MFN(mfn))

    def get_page_from_lNe(self, entry: int, level: int, domid: int) -> int:
        """Check a new present entry of a level-``level`` table (≥ 2) and take a reference of
        type ``PGT_l(level-1)_page_table`` on the table it points at, validating that table
        if it was not already — Xen's ``get_page_from_l2e()`` / ``l3e`` / ``l4e``.

        >>> from virtcore.xen.memory import MachineMemory
        >>> xen = XenMM(MachineMemory(8, 32), PagingConfig.tiny())
        >>> t = xen.machine.alloc(1)
        >>> xen.get_page_from_lNe(t << 12 | PTE_P | PTE_W | PTE_U, 2, 1), xen.machine.type[t]
        (0, 1)
        >>> xen.get_page_from_lNe(t << 12 | PTE_P | 0x100, 2, 1)   # G in an L2 entry
        -22
        """
        if entry >= _PTE_LIMIT or entry < 0 or entry & BASE_DISALLOW_MASK:
            return -EINVAL
        mfn = entry >> 12
        if mfn >= self.machine.nframes:
            return -EINVAL
        rc = self.machine.get_page_and_type(MFN(mfn), domid, level - 1)
        if rc == 0:
            self.stats["entries_validated"] += 1
        return rc

    def put_page_from_lNe(self, entry: int) -> None:
        """Drop what a present level ≥ 2 entry held — Xen's ``put_page_from_l2e()`` …"""
        if entry & PTE_P:
            self.machine.put_page_and_type(MFN(entry >> 12))

    def _alloc_page_type(self, mfn: int, type_: int) -> int:
        """Validate every present entry of a frame becoming a level-``type_`` table
        (``alloc_l1_table()`` …); on failure undo the entries already taken."""
        m = self.machine
        owner = m.owner[mfn]
        words = m.physical.words
        base = (mfn << self._page_bits) >> 2
        done: list[int] = []
        self.stats["tables_validated"] += 1
        for i in range(self._entries):
            e = words[base + i]
            if not e & PTE_P:
                continue
            if type_ == PGT_l1_page_table:
                rc = self.get_page_from_l1e(e, owner, owner)
            else:
                rc = self.get_page_from_lNe(e, type_, owner)
            if rc:
                for prev in reversed(done):
                    self._put_entry(prev, type_, owner)
                return rc
            done.append(e)
        return 0

    def _free_page_type(self, mfn: int, type_: int) -> None:
        """Release what the entries of a table that is no longer one held (``free_l1_table()``…)."""
        m = self.machine
        owner = m.owner[mfn]
        words = m.physical.words
        base = (mfn << self._page_bits) >> 2
        for i in range(self._entries):
            e = words[base + i]
            if e & PTE_P:
                self._put_entry(e, type_, owner)

    def _put_entry(self, entry: int, type_: int, owner: int) -> None:
        if type_ == PGT_l1_page_table:
            self.put_page_from_l1e(entry, owner)
        else:
            self.put_page_from_lNe(entry)

    def mod_entry(self, table_mfn: int, index: int, level: int, new: int, cmd: int,
                  pt_owner: int, pg_owner: int) -> int:
        """Change entry ``index`` of a validated level-``level`` table — ``mod_l1_entry()`` /
        ``mod_l2_entry()`` …: validate and reference the new entry, write it, release the old.

        Returns 0 or ``-errno``; on an error nothing has changed.
        """
        m = self.machine
        words = m.physical.words
        w = ((table_mfn << self._page_bits) >> 2) + index
        old = words[w]
        if new & PTE_P:
            if level == 1:
                rc = self.get_page_from_l1e(new, pt_owner, pg_owner)
            elif pg_owner != pt_owner:
                return -EINVAL
            else:
                if new >= _PTE_LIMIT or new < 0 or new & BASE_DISALLOW_MASK:
                    return -EINVAL
                rc = self.get_page_from_lNe(new, level, pt_owner)
            if rc:
                return rc
        elif new >= _PTE_LIMIT or new < 0 or (level > 1 and pg_owner != pt_owner):
            return -EINVAL
        if cmd == MMU_PT_UPDATE_PRESERVE_AD:
            new |= old & (PTE_A | PTE_D)
        words[w] = new
        m.generation += 1
        if level == 1:
            self.put_page_from_l1e(old, pt_owner)
        else:
            self.put_page_from_lNe(old)
        return 0

    # -- the hypercalls ---------------------------------------------------------------------------

    def _pg_owner(self, caller: int, foreigndom: int) -> int:
        """``get_pg_owner()`` plus the XSM check: the domid whose frames are mapped, or -errno."""
        fd = foreigndom & 0xFFFF
        if foreigndom >> 16:
            return -EINVAL  # pt_dom (page tables of a foreign domain) is not modelled
        if fd in (DOMID_SELF, caller):
            return caller
        if fd in (DOMID_IO, DOMID_XEN) or fd not in self.guests:
            return -ESRCH
        if not self.guests[caller].privileged:
            return -EPERM
        return fd

    def mmu_update(self, caller: int, reqs: Sequence[MMUUpdate | tuple[int, int]],
                   foreigndom: int = DOMID_SELF) -> HypercallResult:
        """``HYPERVISOR_mmu_update`` (1) from domain ``caller``: apply ``reqs`` in order.

        Stops at the first failure; earlier requests stay applied; ``done`` counts them.

        Examples
        --------
        >>> from virtcore.xen.memory import MachineMemory
        >>> xen = XenMM(MachineMemory(64, 32), PagingConfig.tiny())
        >>> g = xen.create_pv_domain(1, 16); g.build({0x40: (5, True)})
        >>> ok = g.map_request(0x60, 6, writable=True)
        >>> bad = MMUUpdate(ok.ptr, ok.val | 0x10)               # PCD: not allowed
        >>> xen.mmu_update(1, [ok, bad, ok])
        HypercallResult(rc=-22 (-EINVAL), done=1)
        >>> g.access(0x64, write=True) == g.pfn_maddr(6) + 4      # the first one stayed
        True
        """
        if caller not in self.guests:
            return HypercallResult(-ESRCH, 0)
        pg_owner = self._pg_owner(caller, foreigndom)
        if pg_owner < 0:
            return HypercallResult(pg_owner, 0)
        done = 0
        rc = 0
        for req in reqs:
            ptr, val = (req.ptr, req.val) if isinstance(req, MMUUpdate) else req
            rc = self._one_update(caller, pg_owner, ptr, val)
            if rc:
                self.stats["mmu_update_rejected"] += 1
                break
            self.stats["mmu_update_ok"] += 1
            done += 1
        return HypercallResult(rc, done)

    def _one_update(self, caller: int, pg_owner: int, ptr: int, val: int) -> int:
        m = self.machine
        if not isinstance(ptr, int) or not isinstance(val, int) or ptr < 0 or val < 0:
            return -EINVAL
        cmd = ptr & 3
        ptr -= cmd
        mfn = ptr >> self._page_bits
        if cmd == MMU_MACHPHYS_UPDATE:
            if pg_owner != caller:
                return -EINVAL  # the model has no translated pg_owner; Xen checks ownership
            return m.domains[caller].set_m2p(MFN(mfn), PFN(val))
        if not m.valid_mfn(mfn) or m.owner[mfn] != caller:
            return -EINVAL  # "Could not get page for normal update"
        offset = ptr & self._offset_mask
        index = offset >> 2
        if index >= self._entries:
            return -EINVAL
        t = m.type[mfn]
        if m.type_count[mfn] and m.validated[mfn]:  # page_lock() succeeds
            if 1 <= t <= self.levels:
                return self.mod_entry(mfn, index, t, val, cmd, caller, pg_owner)
            if t == PGT_writable_page:
                return self._plain_write(mfn, index, val)
            return -EINVAL
        if m.get_page_type(MFN(mfn), PGT_writable_page):
            return -EINVAL
        rc = self._plain_write(mfn, index, val)
        m.put_page_type(MFN(mfn))
        return rc

    def _plain_write(self, mfn: int, index: int, val: int) -> int:
        if val >= _PTE_LIMIT:
            return -EINVAL
        self.machine.physical.words[((mfn << self._page_bits) >> 2) + index] = val
        self.machine.generation += 1
        return 0

    def mmuext_op(self, caller: int, ops: Iterable[MMUExtOp | tuple[int, int]],
                  foreigndom: int = DOMID_SELF) -> HypercallResult:
        """``HYPERVISOR_mmuext_op`` (26): pin/unpin tables, load the base pointer, flush.

        Examples
        --------
        >>> from virtcore.xen.memory import MachineMemory
        >>> xen = XenMM(MachineMemory(64, 32), PagingConfig.tiny())
        >>> g = xen.create_pv_domain(1, 16); g.build({0x40: (5, True)})
        >>> root = g.baseptr
        >>> xen.mmuext_op(1, [MMUExtOp(MMUEXT_PIN_L2_TABLE, root)])    # pinned by build()
        HypercallResult(rc=-22 (-EINVAL), done=0)
        >>> xen.mmuext_op(1, [(MMUEXT_UNPIN_TABLE, root), (MMUEXT_TLB_FLUSH_LOCAL, 0)])
        HypercallResult(rc=0, done=2)
        >>> xen.machine.page_info(root)       # still the base pointer: one type reference
        PageInfo(mfn=0x..., owner=d1, type=PGT_l2_page_table, type_count=1, count=2, validated)
        """
        guest = self.guests.get(caller)
        if guest is None:
            return HypercallResult(-ESRCH, 0)
        pg_owner = self._pg_owner(caller, foreigndom)
        if pg_owner < 0:
            return HypercallResult(pg_owner, 0)
        done = 0
        rc = 0
        for op in ops:
            cmd, arg = (op.cmd, op.arg) if isinstance(op, MMUExtOp) else op
            rc = self._one_ext(guest, pg_owner, cmd, arg)
            if rc:
                break
            done += 1
        return HypercallResult(rc, done)

    def _one_ext(self, guest: PVGuest, pg_owner: int, cmd: int, arg: int) -> int:
        m = self.machine
        if not isinstance(arg, int) or not isinstance(cmd, int):
            return -EINVAL
        if MMUEXT_PIN_L1_TABLE <= cmd <= MMUEXT_PIN_L4_TABLE:
            type_ = cmd + 1
            if type_ > self.levels:
                return 0  # "Ignore pinning of invalid paging levels."
            if m.get_page(MFN(arg), pg_owner):
                return -EINVAL
            rc = m.get_page_type(MFN(arg), type_)
            if rc:
                m.put_page(MFN(arg))
                return rc
            if m.pinned[arg]:
                m.put_page_and_type(MFN(arg))
                return -EINVAL  # "mfn already pinned"
            m.pinned[arg] = True
            return 0
        if cmd == MMUEXT_UNPIN_TABLE:
            if m.get_page(MFN(arg), pg_owner):
                return -EINVAL
            if not m.pinned[arg]:
                m.put_page(MFN(arg))
                return -EINVAL  # "mfn not pinned"
            m.pinned[arg] = False
            m.put_page_and_type(MFN(arg))
            m.put_page(MFN(arg))
            return 0
        if cmd == MMUEXT_NEW_BASEPTR:
            if pg_owner != guest.domid:
                return -EPERM
            return guest.new_guest_cr3(arg)
        if cmd in (MMUEXT_TLB_FLUSH_LOCAL, MMUEXT_TLB_FLUSH_MULTI, MMUEXT_TLB_FLUSH_ALL):
            guest.mmu.tlb.flush()
            return 0
        if cmd in (MMUEXT_INVLPG_LOCAL, MMUEXT_INVLPG_MULTI, MMUEXT_INVLPG_ALL):
            if 0 <= arg < self.config.va_limit:
                guest.mmu.invlpg(arg)
            return 0
        return -ENOSYS

    def update_va_mapping(self, caller: int, va: int, val: int, flags: int = UVMF_NONE,
                          foreigndom: int = DOMID_SELF) -> int:
        """``HYPERVISOR_update_va_mapping`` (14): set the L1 entry mapping ``va`` in the
        caller's current address space, then flush as ``flags`` say.

        >>> from virtcore.xen.memory import MachineMemory
        >>> xen = XenMM(MachineMemory(64, 32), PagingConfig.tiny())
        >>> g = xen.create_pv_domain(1, 16); g.build({0x40: (5, True)})
        >>> mfn = g.mem.pfn_to_mfn(PFN(7))
        >>> xen.update_va_mapping(1, 0x40, mfn << 12 | PTE_P | PTE_U, UVMF_INVLPG)
        0
        >>> g.access(0x40, write=True).present    # now read-only: a write faults
        True
        >>> xen.update_va_mapping(1, 0x400, mfn << 12 | PTE_P)   # no L1 table there
        -22
        """
        guest = self.guests.get(caller)
        if guest is None:
            return -ESRCH
        pg_owner = self._pg_owner(caller, foreigndom)
        if pg_owner < 0:
            return pg_owner
        if not isinstance(va, int) or not 0 <= va < self.config.va_limit:
            return -EINVAL
        slot = guest.l1_slot(va)  # map_guest_l1e()
        if slot is None:
            return -EINVAL
        l1mfn, index = slot
        m = self.machine
        if m.type[l1mfn] != PGT_l1_page_table or not m.type_count[l1mfn]:
            return -EINVAL
        rc = self.mod_entry(l1mfn, index, 1, val, MMU_NORMAL_PT_UPDATE, caller, pg_owner)
        if rc:
            self.stats["mmu_update_rejected"] += 1
            return rc
        self.stats["mmu_update_ok"] += 1
        kind = flags & UVMF_FLUSHTYPE_MASK
        if kind == UVMF_TLB_FLUSH:
            guest.mmu.tlb.flush()
        elif kind == UVMF_INVLPG:
            guest.mmu.invlpg(va)
        return 0

    def memory_op(self, caller: int, cmd: int, extents: Sequence[int] = ()) -> int:
        """``HYPERVISOR_memory_op`` (12) for the caller's own memory [XEN-MEMORY].

        ``XENMEM_populate_physmap`` (6) and ``XENMEM_decrease_reservation`` (1) take a list of
        pfns and return how many were done; ``XENMEM_current_reservation`` (3) and
        ``XENMEM_maximum_reservation`` (4) return page counts.  Others: ``-ENOSYS``.

        >>> from virtcore.xen.memory import MachineMemory
        >>> xen = XenMM(MachineMemory(16, 32), PagingConfig.tiny())
        >>> g = xen.create_pv_domain(1, 8, populate=False)
        >>> xen.memory_op(1, XENMEM_populate_physmap, [0, 1, 2]), xen.memory_op(1, 3)
        (3, 3)
        >>> xen.memory_op(1, XENMEM_decrease_reservation, [2, 9])
        1
        """
        guest = self.guests.get(caller)
        if guest is None:
            return -ESRCH
        mem = guest.mem
        if cmd == XENMEM_populate_physmap:
            return mem.populate_physmap(extents)
        if cmd == XENMEM_decrease_reservation:
            return mem.decrease_reservation(extents)
        if cmd == XENMEM_current_reservation:
            return mem.nr_pages
        if cmd == XENMEM_maximum_reservation:
            return mem.max_pages
        return -ENOSYS

    def hypercall_handlers(self) -> dict[int, object]:
        """The handlers by hypercall number, for a dispatcher: ``{1: mmu_update, 12: memory_op,
        14: update_va_mapping, 26: mmuext_op}`` (each takes the calling domid first).

        >>> sorted(XenMM(MachineMemory(4)).hypercall_handlers())
        [1, 12, 14, 26]
        """
        numbers = _HYPERCALL_NUMBERS  # (a class body would mangle the __HYPERVISOR_ names)
        return {numbers[0]: self.mmu_update, numbers[1]: self.memory_op,
                numbers[2]: self.update_va_mapping, numbers[3]: self.mmuext_op}

    # -- whole-state views -----------------------------------------------------------------------

    def snapshot(self) -> MemorySnapshot:
        """Machine state plus each guest's base pointer and TLB contents (for "a rejected call
        changed nothing")."""
        extra = tuple((d, g.baseptr, tuple(sorted(g.mmu.tlb.entries.items())))
                      for d, g in sorted(self.guests.items()))
        return self.machine.snapshot((*extra, tuple(sorted(self._grant_maps.items()))))


class PVGuest:
    """One PV guest: its pseudo-physical memory, its vCPU's MMU and what its kernel does.

    The vCPU's :class:`~virtcore.hw.paging.MMU` walks the guest's real tables in machine memory
    (CR3 = the base pointer's machine address).  The "guest kernel" helpers build requests the
    way XenoLinux does: pfn → mfn through the P2M, then ``mmu_update`` with the entry's machine
    address [XENPV-LINUX].

    Attributes
    ----------
    domid : int
    mem : DomainMemory
    privileged : bool
        May name another domain as ``foreigndom`` (dom0).
    mmu : MMU
        The vCPU's MMU (its ``tlb`` is the vCPU's TLB).
    baseptr : int or None
        The mfn loaded by ``MMUEXT_NEW_BASEPTR``.
    table_pfns : list of int
        Pseudo-physical frames the guest kernel uses as page tables (root first).
    """

    def __init__(self, xen: XenMM, mem: DomainMemory, *, privileged: bool = False) -> None:
        self.xen = xen
        self.mem = mem
        self.domid = mem.domid
        self.privileged = privileged
        self.mmu = MMU(xen.machine.physical, xen.config, tlb_size=xen.tlb_size)
        self.baseptr: int | None = None
        self.table_pfns: list[int] = []

    def __repr__(self) -> str:
        base = "no base pointer" if self.baseptr is None else f"base pointer mfn {self.baseptr:#x}"
        return f"PVGuest(d{self.domid}: {self.mem.nr_pages} pages, {base})"

    # -- called by XenMM -------------------------------------------------------------------------

    def new_guest_cr3(self, mfn: int) -> int:
        """``new_guest_cr3()``: take a root-type reference on ``mfn``, drop the old base."""
        m = self.xen.machine
        rc = m.get_page_and_type(MFN(mfn), self.domid, self.xen.levels)
        if rc:
            return rc
        old = self.baseptr
        self.baseptr = mfn
        self.mmu.set_root(mfn << self.xen.config.page_bits)
        self.mmu.enabled = True
        if old is not None:
            m.put_page_and_type(MFN(old))
        return 0

    def l1_slot(self, va: int) -> tuple[int, int] | None:
        """(L1 table mfn, index) of ``va`` in the current tables, or None (``map_guest_l1e()``)."""
        if self.baseptr is None:
            return None
        cfg = self.xen.config
        words = self.xen.machine.physical.words
        table = self.baseptr
        mask = cfg.entries_per_table - 1
        for level in range(cfg.levels, 1, -1):
            e = words[((table << cfg.page_bits) >> 2) + ((va >> cfg.shift(level)) & mask)]
            if not e & PTE_P:
                return None
            table = e >> 12
            if table >= self.xen.machine.nframes:
                return None
        return table, (va >> cfg.shift(1)) & mask

    # -- the guest kernel's side ------------------------------------------------------------------

    def pfn_maddr(self, pfn: int) -> MADDR:
        """Machine address of pseudo-physical frame ``pfn`` (through the P2M)."""
        return MADDR(self.mem.pfn_to_mfn(PFN(pfn)) << self.xen.config.page_bits)

    def entry_maddr(self, va: int, level: int = 1) -> int | None:
        """Machine address of the level-``level`` entry for ``va`` in the current tables."""
        if self.baseptr is None:
            return None
        cfg = self.xen.config
        words = self.xen.machine.physical.words
        table = self.baseptr
        mask = cfg.entries_per_table - 1
        for lv in range(cfg.levels, 0, -1):
            addr = (table << cfg.page_bits) + (((va >> cfg.shift(lv)) & mask) << 2)
            if lv == level:
                return addr
            e = words[addr >> 2]
            if not e & PTE_P or e >> 12 >= self.xen.machine.nframes:
                return None
            table = e >> 12
        return None

    def map_request(self, va: int, pfn: int, *, writable: bool = True, user: bool = True,
                    level: int = 1) -> MMUUpdate:
        """The ``mmu_update`` request a guest kernel sends to point ``va``'s level-``level``
        entry at its pseudo-physical frame ``pfn``: it looks up the mfn in its P2M first.

        Raises :class:`~virtcore.xen.memory.XenMemoryError` if the tables above that level
        are missing (a guest-kernel bug, host side).
        """
        ptr = self.entry_maddr(va, level)
        if ptr is None:
            raise XenMemoryError(f"d{self.domid}: no level-{level} table for {va:#x}")
        mfn = self.mem.pfn_to_mfn(PFN(pfn))
        flags = PTE_P | (PTE_W if writable else 0) | (PTE_U if user else 0)
        return MMUUpdate(ptr | MMU_NORMAL_PT_UPDATE, (mfn << 12) | flags)

    def unmap_request(self, va: int) -> MMUUpdate:
        """The request that clears ``va``'s L1 entry."""
        ptr = self.entry_maddr(va, 1)
        if ptr is None:
            raise XenMemoryError(f"d{self.domid}: no L1 table for {va:#x}")
        return MMUUpdate(ptr | MMU_NORMAL_PT_UPDATE, 0)

    def build(self, mappings: dict[int, tuple[int, bool]], *, first_table_pfn: int | None = None
              ) -> None:
        """Build an address space like a domain builder, then pin and load it.

        Writes the tables into the guest's own frames while they are still ordinary pages
        (taken from the top of its pseudo-physical memory unless ``first_table_pfn``), maps
        ``va -> (pfn, writable)`` (user pages), then ``MMUEXT_PIN_Ln_TABLE`` (Xen validates the
        whole tree) and ``MMUEXT_NEW_BASEPTR``.  Raises :class:`XenMemoryError` if Xen refuses
        (host-side: the builder's bug).
        """
        xen = self.xen
        cfg = xen.config
        m = xen.machine
        top = max(self.mem.p2m) if first_table_pfn is None else first_table_pfn
        step = -1 if first_table_pfn is None else 1
        used = {pfn for pfn, _ in mappings.values()}
        free = (p for p in range(top, -1 if step < 0 else top + self.mem.max_pages, step)
                if p in self.mem.p2m and p not in used)
        tables: dict[tuple[int, int], int] = {}  # (level, va prefix) -> mfn
        mask = cfg.entries_per_table - 1

        def table(level: int, prefix: int) -> int:
            key = (level, prefix)
            if key not in tables:
                pfn = next(free)
                self.table_pfns.append(pfn)
                mfn = self.mem.pfn_to_mfn(PFN(pfn))
                for i in range(cfg.entries_per_table):
                    m.write_word(mfn, 4 * i, 0)
                tables[key] = mfn
            return tables[key]

        root = table(cfg.levels, 0)
        for va, (pfn, writable) in sorted(mappings.items()):
            t = root
            for level in range(cfg.levels, 1, -1):
                prefix = va >> cfg.shift(level)
                child = table(level - 1, prefix)
                m.write_word(MFN(t), 4 * (prefix & mask),
                             (child << 12) | PTE_P | PTE_W | PTE_U)
                t = child
            leaf = (self.mem.pfn_to_mfn(PFN(pfn)) << 12) | PTE_P | PTE_U | (
                PTE_W if writable else 0)
            m.write_word(MFN(t), 4 * ((va >> cfg.shift(1)) & mask), leaf)
        res = xen.mmuext_op(self.domid, [MMUExtOp(cfg.levels - 1, root),
                                         MMUExtOp(MMUEXT_NEW_BASEPTR, root)])
        if not res.ok:
            raise XenMemoryError(f"d{self.domid}: Xen refused the built tables: {res}")

    def access(self, va: int, *, write: bool = False, user: bool = True) -> int | PageFault:
        """The vCPU touches ``va``: the hardware MMU (TLB, then a walk of the real tables).

        Returns the machine address or the :class:`~virtcore.hw.events.PageFault`.
        """
        if not self.mmu.enabled:
            return PageFault(va, Access.WRITE if write else Access.READ, user, False, 0, False)
        return self.mmu.translate(va, Access.WRITE if write else Access.READ, user)

    def translate(self, va: int, *, write: bool = False, user: bool = True) -> Translation:
        """Carry ``va`` through the three spaces and record every memory reference.

        A PV guest's tables hold machine frames (gfn == mfn), so the walk is one-dimensional
        in machine memory; the pseudo-physical frame of each table and of the result is read
        back from the M2P (Xen keeps it; the guest itself used its P2M when it wrote the
        entries).  Pure: no TLB, A/D bit or counter changes.

        >>> from virtcore.xen.memory import MachineMemory
        >>> xen = XenMM(MachineMemory(64, 32), PagingConfig.tiny())
        >>> dom0 = xen.create_pv_domain(0, 8)
        >>> g = xen.create_pv_domain(1, 16); g.build({0x40: (5, True)})
        >>> print(g.translate(0x44))
        [PV direct paging] read of guest virtual 0x44 [decimal 68]
          page tables hold machine frames (gfn == mfn); M2P names each frame's pfn
        --> guest L2 (mfn 0x17 = pfn 0xf) index:0x0 [decimal 0] entry @0x2e0
            contents:0x00016007 (mfn 0x16 P W U)
        --> guest L1 (mfn 0x16 = pfn 0xe) index:0x2 [decimal 2] entry @0x2c8
            contents:0x0000d007 (mfn 0xd P W U)
        --> gva 0x44 -> pseudo-physical frame 0x5 -> machine frame 0xd -> maddr 0x1a4 [decimal 420]
        2 page-table memory references
        """
        access = Access.WRITE if write else Access.READ
        walk = self.mmu.walk(va, access, user)
        m = self.xen.machine
        refs = []
        for s in walk.steps:
            table_mfn = s.table_paddr >> self.xen.config.page_bits
            pfn = m.m2p[table_mfn] if m.valid_mfn(table_mfn) else INVALID_M2P_ENTRY
            name = f"guest L{s.level} (mfn {table_mfn:#x} = pfn " + (
                f"{pfn:#x})" if pfn != INVALID_M2P_ENTRY else "none)")
            refs.append(MemRef(name, "machine", s.level, s.index, s.table_paddr,
                               s.entry_paddr, s.entry, va))
        note = "page tables hold machine frames (gfn == mfn); M2P names each frame's pfn"
        if walk.fault is not None or walk.paddr is None:
            f = walk.fault
            why = ("not mapped" if f is None else
                   f"not present at level {f.level}" if not f.present else
                   f"protection (W/U) at level {f.level}")
            return Translation("PV direct paging", va, access.name.lower(), tuple(refs), None,
                               None, None, why, (note,))
        mfn = walk.paddr >> self.xen.config.page_bits
        pfn = m.m2p[mfn] if m.valid_mfn(mfn) else INVALID_M2P_ENTRY
        return Translation("PV direct paging", va, access.name.lower(), tuple(refs), pfn, mfn,
                           walk.paddr, None, (note,))

    def leaf_mappings(self) -> list[tuple[int, int, bool]]:
        """Every mapping of the current tables as ``(va, mfn, writable)``; ``writable`` means
        W is set at every level (what the hardware would allow a write through)."""
        if self.baseptr is None:
            return []
        return walk_tables(self.xen.machine, self.xen.config, self.baseptr)


class MaptrackPolicy:
    """The grant hook over the hypervisor's grant code (:mod:`virtcore.xen.grant`): a PV
    domain may put a foreign frame in its page tables only while it holds a grant mapping of
    that frame in its maptrack (``GNTTABOP_map_grant_ref`` done, not yet unmapped), writable
    only if that mapping is writable [XEN-GNTTAB].

    ``pte_uses(mapper, mfn)`` tells the grant code how many page-table entries still map the
    frame; ``GNTTABOP_unmap_grant_ref`` should clear them first with
    :meth:`XenMM.zap_foreign_mappings` (Xen's ``replace_grant_host_mapping()`` clears the PTE).
    """

    def __init__(self, xen: Any) -> None:
        self.xen = xen
        self.uses: Counter[tuple[int, int]] = Counter()

    def may_map(self, mapper: int, mfn: int, writable: bool) -> bool:
        dom = self.xen.domains.get(mapper)
        mt = getattr(dom, "maptrack", None)
        return mt is not None and bool(mt.allows(mfn, writable))

    def mapped(self, mapper: int, mfn: int, writable: bool) -> None:
        self.uses[(mapper, mfn)] += 1

    def unmapped(self, mapper: int, mfn: int, writable: bool) -> None:
        self.uses[(mapper, mfn)] -= 1
        if not self.uses[(mapper, mfn)]:
            del self.uses[(mapper, mfn)]

    def pte_uses(self, mapper: int, mfn: int) -> int:
        """Page-table entries of ``mapper`` that map foreign ``mfn`` through a grant."""
        return self.uses.get((mapper, mfn), 0)


def install_pv_mmu(xen: Any, config: PagingConfig | None = None, *, tlb_size: int = 16
                   ) -> XenMM:
    """Give a :class:`virtcore.xen.Xen` hypervisor this PV MMU: its ``mmu_update`` (1),
    ``update_va_mapping`` (14) and ``mmuext_op`` (26) handlers, over ``xen.memory``.

    ``memory_op`` (12) stays the hypervisor's own (it already uses
    :class:`~virtcore.xen.memory.DomainMemory`).  A PV domain gets its :class:`PVGuest` on its
    first call.  The arguments follow the C prototypes, with Python values for guest memory:

    - ``mmu_update(reqs, count=len(reqs), pdone=None, foreigndom=DOMID_SELF)``: ``reqs`` a list
      of :class:`MMUUpdate` or ``(ptr, val)``; ``pdone`` a list whose first item receives the
      number done (Xen's ``*done``);
    - ``mmuext_op(ops, count=len(ops), pdone=None, foreigndom=DOMID_SELF)``;
    - ``update_va_mapping(va, val, flags)``.

    A malformed argument stands for an unreadable guest pointer: ``-EFAULT``.  HVM and PVH
    domains get ``-ENOSYS`` (these hypercalls are not in Xen's HVM hypercall table).

    Foreign frames: :class:`MaptrackPolicy` is installed as the grant hook, so a guest maps a
    frame of another domain only while its grant mapping of it is live.

    Returns the :class:`XenMM`, also kept as ``xen.mm``.

    >>> from virtcore.xen import Xen
    >>> xen = Xen(frames=64)
    >>> mm = install_pv_mmu(xen)
    >>> mm.guests                                    # dom0 attaches on its first call
    {}
    >>> done = [None]
    >>> xen.hypercall(0, 1, [], 0, done, DOMID_SELF), done
    (0, [0])
    >>> sorted(mm.guests)
    [0]
    """
    if config is None:
        config = (PagingConfig.x86_32() if xen.memory.frame_size == 4096 else
                  PagingConfig(xen.memory.page_bits, 2, xen.memory.page_bits - 2,
                               "teaching size: 2 levels, tables fill a page"))
    mm = XenMM(xen.memory, config, tlb_size=tlb_size)
    mm.foreign = MaptrackPolicy(xen)
    xen.mm = mm

    def guest_of(dom: Any) -> PVGuest | None:
        if getattr(dom, "type", "pv") != "pv":
            return None
        g = mm.guests.get(dom.domid)
        if g is None:
            g = mm.adopt_domain(dom.domid, privileged=bool(getattr(dom, "is_privileged", False)))
        return g

    def batch_args(args: tuple[Any, ...]) -> tuple[list[Any], list[Any] | None, int] | None:
        if not args or not isinstance(args[0], (list, tuple)):
            return None
        items = list(args[0])
        count = args[1] if len(args) > 1 else len(items)
        pdone = args[2] if len(args) > 2 else None
        fd = args[3] if len(args) > 3 else DOMID_SELF
        if (not isinstance(count, int) or not 0 <= count <= len(items)
                or not isinstance(fd, int) or (pdone is not None and not isinstance(pdone, list))):
            return None
        return items[:count], pdone, fd

    def do_mmu_update(xen_: Any, dom: Any, vcpu: int, args: tuple[Any, ...]) -> int:
        g = guest_of(dom)
        if g is None:
            return -ENOSYS
        parsed = batch_args(args)
        if parsed is None:
            return -EFAULT
        reqs, pdone, fd = parsed
        if not all(isinstance(r, MMUUpdate) or (isinstance(r, tuple) and len(r) == 2)
                   for r in reqs):
            return -EFAULT
        res = mm.mmu_update(dom.domid, reqs, foreigndom=fd)
        if pdone is not None:
            pdone[:1] = [res.done]
        return res.rc

    def do_mmuext_op(xen_: Any, dom: Any, vcpu: int, args: tuple[Any, ...]) -> int:
        g = guest_of(dom)
        if g is None:
            return -ENOSYS
        parsed = batch_args(args)
        if parsed is None:
            return -EFAULT
        ops, pdone, fd = parsed
        if not all(isinstance(o, MMUExtOp) or (isinstance(o, tuple) and len(o) == 2)
                   for o in ops):
            return -EFAULT
        res = mm.mmuext_op(dom.domid, ops, foreigndom=fd)
        if pdone is not None:
            pdone[:1] = [res.done]
        return res.rc

    def do_update_va_mapping(xen_: Any, dom: Any, vcpu: int, args: tuple[Any, ...]) -> int:
        g = guest_of(dom)
        if g is None:
            return -ENOSYS
        if len(args) not in (2, 3) or not all(isinstance(a, int) for a in args):
            return -EFAULT
        return mm.update_va_mapping(dom.domid, *args)

    numbers = _HYPERCALL_NUMBERS
    xen.hypercalls.register(numbers[0], do_mmu_update, replace=True)
    xen.hypercalls.register(numbers[2], do_update_va_mapping, replace=True)
    xen.hypercalls.register(numbers[3], do_mmuext_op, replace=True)
    return mm


def translate_many(mmu: MMU, vas: Iterable[int], *, write: bool = False, user: bool = True,
                   out: list[int | PageFault] | None = None) -> int:
    """Translate every address of ``vas`` on ``mmu`` as the CPU would, fast; returns how many
    faulted.

    The hot loop of the benchmark and of long simulations: the TLB hit is inlined as the hw
    MMU's hot-path contract allows, and so is the *common* TLB miss of a one-dimensional walk
    — every entry present, permitted, its A bit (and for a write the leaf's D bit) already set —
    with exactly :meth:`~virtcore.hw.paging.MMU.refill`'s counters and TLB fill.  Anything else
    (a fault, an A/D bit to set, nested paging) goes to ``mmu.refill`` itself, so results,
    counters, A/D bits and TLB contents are identical to calling ``mmu.translate`` per address
    (a test checks this).  With ``out`` every result is appended to it.

    >>> from virtcore.xen.memory import MachineMemory
    >>> xen = XenMM(MachineMemory(64, 32), PagingConfig.tiny())
    >>> g = xen.create_pv_domain(1, 16); g.build({0x40: (5, True)})
    >>> res = []; translate_many(g.mmu, [0x44, 0x48, 0x300], out=res)
    1
    >>> res[0] == g.pfn_maddr(5) + 4, res[2].present, g.mmu.tlb.lookups, g.mmu.tlb.misses
    (True, False, 3, 2)
    """
    access = Access.WRITE if write else Access.READ
    tlb = mmu.tlb
    entries = tlb.entries
    capacity = tlb.capacity
    cfg = mmu.config
    page_bits = cfg.page_bits
    offset_mask = cfg.offset_mask
    index_mask = cfg.entries_per_table - 1
    shifts = [cfg.shift(level) for level in range(cfg.levels, 0, -1)]
    nlevels = len(shifts)
    words = mmu.memory.words
    size = mmu.memory.size
    need = (PTE_W if write else 0) | (PTE_U if user else 0)
    must = PTE_P | PTE_A | need
    leaf_must = must | (PTE_D if write else 0)
    simple = mmu.nested is None and mmu.enabled
    va_limit = cfg.va_limit
    # the unrolled 2-level case: the root table lies inside memory (checked once here)
    two_level = (simple and nlevels == 2 and mmu.root + 4 * cfg.entries_per_table <= size)
    root_word = mmu.root >> 2
    index_bits = cfg.index_bits
    word_shift = page_bits - 2
    nframes = size >> page_bits
    vpn_limit = va_limit >> page_bits
    pte_wu, pte_u, pte_d, pte_p = PTE_W | PTE_U, PTE_U, PTE_D, PTE_P
    frame_mask = ~offset_mask
    refill = mmu.refill
    lookups = misses = walks = refs = faults = 0
    keep = out is not None
    if two_level and not keep:  # the benchmark's case, tightest: counters summed at the end
        vas = vas if isinstance(vas, list) else list(vas)
        for va in vas:
            vpn = va >> page_bits
            if capacity:
                e = entries.get(vpn)
                if e is not None and e & need == need:
                    continue
            if 0 <= vpn < vpn_limit:
                pde = words[root_word + (vpn >> index_bits)]
                if pde & must == must and pde >> 12 < nframes:
                    pte = words[((pde >> 12) << word_shift) + (vpn & index_mask)]
                    if pte & leaf_must == leaf_must:
                        walks += 1
                        if capacity:
                            perms = pde & pte & (pte_wu if pte & pte_d else pte_u)
                            if vpn not in entries and len(entries) >= capacity:
                                del entries[next(iter(entries))]
                                tlb.evictions += 1
                            entries[vpn] = ((pte >> 12) << page_bits) | pte_p | perms
                        continue
            if isinstance(refill(va, access, user), PageFault):  # counts its own miss
                faults += 1
        tlb.lookups += len(vas)
        tlb.misses += walks
        mmu.walks += walks
        mmu.memory_references += 2 * walks
        return faults
    for va in vas:
        lookups += 1
        vpn = va >> page_bits
        e = entries.get(vpn) if capacity else None
        if e is not None and e & need == need:
            if keep:
                out.append((e & ~offset_mask) | (va & offset_mask))  # type: ignore[union-attr]
            continue
        paddr = -1
        if two_level and 0 <= vpn < vpn_limit:  # the 2-level walk unrolled (x86 32-bit)
            pde = words[root_word + (vpn >> index_bits)]
            if pde & must == must and pde >> 12 < nframes:
                pte = words[((pde >> 12) << word_shift) + (vpn & index_mask)]
                if pte & leaf_must == leaf_must:
                    perms = pde & pte
                    table = (pte >> 12) << page_bits
                    paddr = table | (va & offset_mask)
        elif simple and 0 <= va < va_limit:
            table = mmu.root
            perms = PTE_W | PTE_U
            pte = 0
            for shift in shifts:
                entry = table + (((va >> shift) & index_mask) << 2)
                if entry >= size:
                    break
                pte = words[entry >> 2]
                if pte & must != must:
                    break
                perms &= pte
                table = (pte >> 12) << page_bits
            else:
                if pte & leaf_must == leaf_must:
                    paddr = table | (va & offset_mask)
        if paddr < 0:  # the general path: hw.paging's own walker
            tlb.lookups += lookups
            tlb.misses += misses + walks
            mmu.walks += walks
            mmu.memory_references += refs + walks * nlevels
            lookups = misses = walks = refs = 0
            result = refill(va, access, user)
            if isinstance(result, PageFault):
                faults += 1
            if keep:
                out.append(result)  # type: ignore[union-attr]
            continue
        walks += 1  # a miss, a walk, nlevels references
        if capacity:
            # W only if the leaf is dirty (a clean page's first write must come back)
            perms &= pte_wu if pte & pte_d else pte_u
            if vpn not in entries and len(entries) >= capacity:
                del entries[next(iter(entries))]
                tlb.evictions += 1
            entries[vpn] = (paddr & frame_mask) | pte_p | perms
        if keep:
            out.append(paddr)  # type: ignore[union-attr]
    tlb.lookups += lookups
    tlb.misses += misses + walks
    mmu.walks += walks
    mmu.memory_references += refs + walks * nlevels
    return faults


def walk_tables(machine: MachineMemory, config: PagingConfig, root_mfn: int
                ) -> list[tuple[int, int, bool]]:
    """All leaves under the table at ``root_mfn``: ``(va, mfn, writable at every level)``.

    >>> from virtcore.xen.memory import MachineMemory
    >>> xen = XenMM(MachineMemory(64, 32), PagingConfig.tiny())
    >>> g = xen.create_pv_domain(1, 16); g.build({0x40: (5, True), 0x60: (6, False)})
    >>> [(hex(va), mfn, w) for va, mfn, w in walk_tables(xen.machine, xen.config, g.baseptr)]
    [('0x40', 5, True), ('0x60', 6, False)]
    """
    words = machine.physical.words
    out: list[tuple[int, int, bool]] = []
    n = config.entries_per_table

    def visit(mfn: int, level: int, base: int, writable: bool) -> None:
        start = (mfn << config.page_bits) >> 2
        for i in range(n):
            e = words[start + i]
            if not e & PTE_P:
                continue
            va = base | (i << config.shift(level))
            w = writable and bool(e & PTE_W)
            target = e >> 12
            if level == 1:
                out.append((va, target, w))
            elif target < machine.nframes:
                visit(target, level - 1, va, w)

    visit(root_mfn, config.levels, 0, True)
    return out
