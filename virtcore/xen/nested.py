"""HVM guests and hardware nested paging (嵌套分页): EPT/NPT, the 2-D walk, VPID/ASID-tagged TLBs.

An HVM (auto-translated) guest writes *guest* frame numbers into its own page tables
(``gfn == pfn``), so the hypervisor must add the second step, pseudo-physical → machine.  With
hardware-assisted paging (``hap=1``, the default when available [XL-CFG]) the CPU does it: Intel
**EPT** / AMD **NPT** tables, kept by Xen from the domain's P2M, are walked for every
guest-physical address the guest walk produces [KVM-MMU; SDM; APM].

The rules modelled
------------------
1. **Two-dimensional walk** [BHAR08; STOJ22]: with *n* guest levels and *m* nested levels, a
   TLB miss reads up to ``n·m + n + m = (n+1)(m+1) − 1`` entries — each of the *n* guest
   table pointers and the final guest-physical address is itself translated by an *m*-level
   nested walk.  4 × 4 gives 24 (some texts say 25: they count the data access too).  The walk
   is :mod:`virtcore.hw.paging`'s (``MMU(..., nested=ept)``), which counts both dimensions.
2. **No exits for guest page-table work**: guest PTE writes, ``invlpg`` and CR3 loads run
   natively (CR3-load and INVLPG exiting off under EPT); an EPT violation (a gfn without a P2M
   entry) is a VM exit [KVM-MMU] — none happen here because the P2M is populated up front.
3. **Tagged TLB** [SDM §20.6.12; VMX-C; APM]: TLB entries carry the 16-bit **VPID** (AMD:
   **ASID**) of the context that created them; VPID 0 is the host's, so guests get 1..65535
   (``VMX_NR_VPIDS = 1 << 16``).  With tags, switching between domains flushes nothing;
   without, every VM entry must flush the whole TLB.  A guest CR3 load flushes that guest's own
   (non-global) entries in both cases.

What the model simplifies (to say in class)
-------------------------------------------
- EPT entries use the same format as guest PTEs (real EPT has R/W/X bits and memory types).
- One shared, fully associative, FIFO TLB for the whole physical CPU (``TaggedTLB``); no
  paging-structure caches, no nested TLB, no huge pages (the mitigations [BHAR08] studies).
- One vCPU per domain; domains take turns on one physical CPU.
- When the 16-bit space runs out the allocator returns 0, and that vCPU must flush on every
  entry — what KVM does when ``allocate_vpid()`` fails [VMX-C].

>>> two_d_walk_references(4, 4), two_d_walk_references(2, 4), two_d_walk_references(4, 0)
(24, 14, 4)
"""

from __future__ import annotations

import heapq

from virtcore.errors import ConfigurationError
from virtcore.hw.events import Access, PageFault
from virtcore.hw.paging import MMU, PTE_P, PTE_U, PTE_W, TLB, PagingConfig
from virtcore.xen.memory import (
    DOMID_XEN,
    INVALID_M2P_ENTRY,
    DomainMemory,
    MachineMemory,
    XenMemoryError,
)
from virtcore.xen.mmu import MemRef, Translation

__all__ = [
    "VMX_NR_VPIDS",
    "HVMGuest",
    "NestedPaging",
    "TaggedTLB",
    "TaggedTLBView",
    "VPIDAllocator",
    "XenFrames",
    "populate",
    "two_d_walk_references",
]

#: Size of the VPID space (a 16-bit VMCS field) [SDM; VMX-C].
VMX_NR_VPIDS = 1 << 16


def two_d_walk_references(n: int, m: int) -> int:
    """Most page-table references one TLB miss needs with ``n`` guest and ``m`` nested levels.

    ``(n+1)(m+1) - 1`` [BHAR08; STOJ22]; ``m = 0`` is native paging (``n``).

    >>> [two_d_walk_references(n, 4) for n in (1, 2, 3, 4)]
    [9, 14, 19, 24]
    """
    if n < 0 or m < 0:
        raise ConfigurationError("levels cannot be negative")
    return (n + 1) * (m + 1) - 1


class VPIDAllocator:
    """Hands out 16-bit TLB tags: VPIDs (Intel) or ASIDs (AMD); tag 0 is the host's.

    Like KVM's ``allocate_vpid()``: lowest free tag from 1; when all 65535 are taken it returns
    0, meaning "no tag — flush on every VM entry" [VMX-C].

    >>> a = VPIDAllocator()
    >>> a.alloc(), a.alloc()
    (1, 2)
    >>> a.free(1); a.alloc()
    1
    >>> small = VPIDAllocator(nr=3); small.alloc(), small.alloc(), small.alloc()
    (1, 2, 0)
    """

    def __init__(self, nr: int = VMX_NR_VPIDS, name: str = "VPID") -> None:
        if not 2 <= nr <= VMX_NR_VPIDS:
            raise ConfigurationError(f"a tag space of {nr} does not fit 16 bits with 0 reserved")
        self.nr = nr
        self.name = name
        self._next = 1  # set_bit(0, vmx_vpid_bitmap): 0 is reserved for the host
        self._freed: list[int] = []  # a heap of tags given back
        self.in_use = 0

    def __repr__(self) -> str:
        return f"VPIDAllocator({self.name}: {self.in_use} of {self.nr - 1} in use)"

    def alloc(self) -> int:
        """The lowest free tag, or 0 if none is left."""
        if self._freed:
            self.in_use += 1
            return heapq.heappop(self._freed)
        if self._next < self.nr:
            self._next += 1
            self.in_use += 1
            return self._next - 1
        return 0

    def free(self, tag: int) -> None:
        """Give ``tag`` back (0 is ignored, as KVM's ``free_vpid`` does)."""
        if 0 < tag < self._next and tag not in self._freed:
            heapq.heappush(self._freed, tag)
            self.in_use -= 1


class TaggedTLB:
    """One physical CPU's TLB shared by every context, entries tagged ``(tag, vpn)``.

    Each context gets a :class:`TaggedTLBView` (a :class:`~virtcore.hw.paging.TLB` the hw MMU
    uses unchanged); all views share ``capacity`` with FIFO replacement.  Without tagging the
    hypervisor calls :meth:`flush_all` on every switch.

    >>> tlb = TaggedTLB(2)
    >>> a, b = tlb.view(1), tlb.view(2)
    >>> a.insert(5, 0x100 | PTE_P); b.insert(5, 0x200 | PTE_P); a.insert(6, 0x300 | PTE_P)
    >>> sorted(a.entries), sorted(b.entries), tlb.evictions       # a's 5 was oldest
    ([6], [5], 1)
    >>> tlb.flush_all(); len(tlb), tlb.flushes
    (0, 1)
    """

    def __init__(self, capacity: int = 64) -> None:
        if not isinstance(capacity, int) or capacity < 0:
            raise ConfigurationError(f"TLB capacity {capacity!r} is not a non-negative int")
        self.capacity = capacity
        self.order: dict[tuple[int, int], None] = {}
        self.views: dict[int, TaggedTLBView] = {}
        self.flushes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.order)

    def __repr__(self) -> str:
        return (f"TaggedTLB({len(self)}/{self.capacity} entries, {self.lookups} lookups,"
                f" {self.misses} misses, {self.flushes} flushes)")

    def view(self, tag: int) -> TaggedTLBView:
        """The TLB as context ``tag`` sees it (created on first use)."""
        v = self.views.get(tag)
        if v is None:
            v = self.views[tag] = TaggedTLBView(self, tag)
        return v

    def flush_all(self) -> None:
        """Drop every entry of every tag (an untagged VM entry)."""
        self.order.clear()
        for v in self.views.values():
            v.entries.clear()
        self.flushes += 1

    @property
    def lookups(self) -> int:
        """Lookups of all views."""
        return sum(v.lookups for v in self.views.values())

    @property
    def misses(self) -> int:
        """Misses of all views."""
        return sum(v.misses for v in self.views.values())


class TaggedTLBView(TLB):
    """One tag's share of a :class:`TaggedTLB`; the hw MMU reads :attr:`entries` directly."""

    def __init__(self, parent: TaggedTLB, tag: int) -> None:
        super().__init__(parent.capacity)
        self.parent = parent
        self.tag = tag

    def insert(self, vpn: int, value: int) -> None:
        """Cache ``value``; evict the oldest entry of *any* tag when the TLB is full."""
        p = self.parent
        key = (self.tag, vpn)
        if key not in p.order:
            if p.capacity == 0:
                return
            if len(p.order) >= p.capacity:
                old_tag, old_vpn = next(iter(p.order))
                del p.order[(old_tag, old_vpn)]
                p.views[old_tag].entries.pop(old_vpn, None)
                p.evictions += 1
                self.evictions += 1
            p.order[key] = None
        self.entries[vpn] = value

    def flush(self) -> None:
        """Drop this tag's entries (a guest CR3 load, or INVVPID for this tag)."""
        order = self.parent.order
        for vpn in self.entries:
            order.pop((self.tag, vpn), None)
        self.entries.clear()
        self.flushes += 1

    def invalidate(self, vpn: int) -> None:
        """Drop one entry (``invlpg``)."""
        if self.entries.pop(vpn, None) is not None:
            self.parent.order.pop((self.tag, vpn), None)


class XenFrames:
    """A frame source for hypervisor-owned tables (EPT, shadows): frames of ``DOMID_XEN``.

    Counts the frames it handed out in :attr:`allocated`.
    """

    def __init__(self, machine: MachineMemory) -> None:
        self.machine = machine
        self.allocated = 0

    def alloc(self) -> int:
        """A zeroed frame owned by Xen."""
        self.allocated += 1
        return int(self.machine.alloc(DOMID_XEN))


class HVMGuest:
    """An auto-translated guest and its kernel: processes whose page tables live in the guest's
    pseudo-physical memory and hold guest frame numbers (gfn == pfn) [XEN-MM-H].

    Parameters
    ----------
    machine : MachineMemory
    mem : DomainMemory
        Populated pseudo-physical memory of the domain.
    config : PagingConfig
        The guest's page-table shape (page size = the machine's frame size).
    nprocs : int
        Address spaces (processes) to create, each with an empty root table.

    Attributes
    ----------
    roots : list of int
        Each process's root table as a gfn (what the guest loads into CR3, shifted).
    current : int
        The running process.
    """

    def __init__(self, machine: MachineMemory, mem: DomainMemory, config: PagingConfig,
                 nprocs: int = 1) -> None:
        if config.page_size != machine.frame_size:
            raise ConfigurationError("guest page size must be the machine frame size")
        self.machine = machine
        self.mem = mem
        self.domid = mem.domid
        self.config = config
        self._free = sorted(mem.p2m, reverse=True)  # the guest kernel's free page list
        self.table_gfns: set[int] = set()
        self.roots = [self.alloc_table() for _ in range(nprocs)]
        self.current = 0
        self.data_gfns: set[int] = set()

    def __repr__(self) -> str:
        return (f"HVMGuest(d{self.domid}: {len(self.roots)} processes,"
                f" {len(self.table_gfns)} page-table pages)")

    # -- memory as the guest sees it (through the P2M) ----------------------------------------

    def gpa_to_maddr(self, gpa: int) -> int:
        """Where guest-physical ``gpa`` is in machine memory (the P2M step)."""
        mfn = self.mem.p2m.get(gpa >> self.config.page_bits)
        if mfn is None:
            raise XenMemoryError(f"d{self.domid}: gpa {gpa:#x} is not populated")
        return (mfn << self.config.page_bits) | (gpa & self.config.offset_mask)

    def read_gpa(self, gpa: int) -> int:
        """The word at guest-physical ``gpa``."""
        return self.machine.physical.words[self.gpa_to_maddr(gpa) >> 2]

    def write_gpa(self, gpa: int, value: int) -> None:
        """Store a word at guest-physical ``gpa`` (the guest's own store)."""
        self.machine.physical.words[self.gpa_to_maddr(gpa) >> 2] = value & 0xFFFFFFFF

    def alloc_table(self) -> int:
        """A zeroed page from the guest's free list, to be used as a page table; its gfn."""
        if not self._free:
            raise XenMemoryError(f"d{self.domid}: the guest kernel is out of pages")
        gfn = self._free.pop()
        base = gfn << self.config.page_bits
        for off in range(0, self.config.page_size, 4):
            self.write_gpa(base + off, 0)
        self.table_gfns.add(gfn)
        return gfn

    def take_data_page(self) -> int:
        """A page from the free list for data; its gfn."""
        if not self._free:
            raise XenMemoryError(f"d{self.domid}: the guest kernel is out of pages")
        gfn = self._free.pop()
        self.data_gfns.add(gfn)
        return gfn

    # -- the guest kernel's page-table writes ---------------------------------------------------

    def plan_map(self, proc: int, va: int, gfn: int, writable: bool = True
                 ) -> list[tuple[int, int]]:
        """The PTE stores ``(gpa, value)`` the guest makes to map ``va`` → ``gfn`` in process
        ``proc``: new tables on the way (allocated and zeroed now), then the leaf."""
        cfg = self.config
        mask = cfg.entries_per_table - 1
        writes: list[tuple[int, int]] = []
        table = self.roots[proc]
        for level in range(cfg.levels, 1, -1):
            gpa = (table << cfg.page_bits) + (((va >> cfg.shift(level)) & mask) << 2)
            e = self.read_gpa(gpa)
            if not e & PTE_P:
                child = self.alloc_table()
                e = (child << 12) | PTE_P | PTE_W | PTE_U
                writes.append((gpa, e))
                self.write_gpa(gpa, e)  # so the rest of the plan sees it; replayed by the mode
            table = e >> 12
        leaf = (table << cfg.page_bits) + (((va >> cfg.shift(1)) & mask) << 2)
        writes.append((leaf, (gfn << 12) | PTE_P | PTE_U | (PTE_W if writable else 0)))
        return writes

    def plan_unmap(self, proc: int, va: int) -> list[tuple[int, int]]:
        """The store that clears ``va``'s leaf in process ``proc`` (empty if unmapped)."""
        slot = self.leaf_gpa(proc, va)
        return [] if slot is None else [(slot, 0)]

    def leaf_gpa(self, proc: int, va: int) -> int | None:
        """Guest-physical address of ``va``'s leaf entry, or None if a table is missing."""
        cfg = self.config
        mask = cfg.entries_per_table - 1
        table = self.roots[proc]
        for level in range(cfg.levels, 1, -1):
            e = self.read_gpa((table << cfg.page_bits) + (((va >> cfg.shift(level)) & mask) << 2))
            if not e & PTE_P:
                return None
            table = e >> 12
        return (table << cfg.page_bits) + (((va >> cfg.shift(1)) & mask) << 2)

    def guest_walk(self, root_gfn: int, va: int
                   ) -> tuple[list[tuple[int, int, int]], int | None, int]:
        """A software walk of the guest's tables (what a shadow fault handler does).

        Returns ``(steps, leaf_gfn or None, perms)`` with ``steps`` the ``(table_gfn, index,
        entry)`` read at each level and ``perms`` the W|U bits set at every level.
        """
        cfg = self.config
        mask = cfg.entries_per_table - 1
        steps = []
        table = root_gfn
        perms = PTE_W | PTE_U
        for level in range(cfg.levels, 0, -1):
            index = (va >> cfg.shift(level)) & mask
            e = self.read_gpa((table << cfg.page_bits) + (index << 2))
            steps.append((table, index, e))
            if not e & PTE_P or (e >> 12) not in self.mem.p2m:
                return steps, None, 0
            perms &= e
            table = e >> 12
        return steps, table, perms & (PTE_W | PTE_U)


class NestedPaging:
    """Hardware-assisted paging (``hap=1``): per-domain EPT built from the P2M, one TLB.

    Parameters
    ----------
    machine : MachineMemory
    ept_config : PagingConfig
        Shape of the EPT (e.g. ``tiny4``: 4 levels like x86-64's EPT); it must cover every gfn.
    tlb : TaggedTLB
        The physical CPU's TLB.
    use_vpid : bool
        Tag TLB entries with a VPID per domain (True) or flush everything on each switch.

    Attributes
    ----------
    guests, mmus, epts : dict by domid
    exits, flushes_on_switch, switches, pte_writes : int
    """

    mode = "nested paging (EPT/NPT, hap=1)"

    def __init__(self, machine: MachineMemory, ept_config: PagingConfig, tlb: TaggedTLB, *,
                 use_vpid: bool = True) -> None:
        self.machine = machine
        self.ept_config = ept_config
        self.tlb = tlb
        self.use_vpid = use_vpid
        self.vpids = VPIDAllocator()
        self.frames = XenFrames(machine)
        self.guests: dict[int, HVMGuest] = {}
        self.mmus: dict[int, MMU] = {}
        self.epts: dict[int, MMU] = {}
        self.running: int | None = None
        self.exits = self.flushes_on_switch = self.switches = self.pte_writes = 0
        self.emulations = self.shadow_writes = self.software_refs = 0

    def add_guest(self, guest: HVMGuest) -> None:
        """Build the guest's EPT from its P2M and give it a vCPU MMU with a VPID."""
        ept = MMU(self.machine.physical, self.ept_config, tlb_size=0)
        ept.set_root(ept.alloc_table(self.frames))
        pb = self.ept_config.page_bits
        for pfn, mfn in sorted(guest.mem.p2m.items()):
            if (pfn << pb) >= self.ept_config.va_limit:
                raise ConfigurationError(f"gfn {pfn:#x} is beyond the EPT's reach")
            ept.map(pfn << pb, mfn << pb, allocator=self.frames)
        ept.enabled = True
        mmu = MMU(self.machine.physical, guest.config, nested=ept)
        tag = self.vpids.alloc() if self.use_vpid else 0
        mmu.tlb = self.tlb.view(tag if tag else -guest.domid)
        mmu.set_root(guest.roots[guest.current] << guest.config.page_bits)
        mmu.enabled = True
        self.guests[guest.domid] = guest
        self.mmus[guest.domid] = mmu
        self.epts[guest.domid] = ept

    # -- events ------------------------------------------------------------------------------

    def switch(self, domid: int) -> None:
        """VM entry into ``domid`` after another domain ran: untagged → flush everything."""
        if self.running == domid:
            return
        self.running = domid
        self.switches += 1
        if not self.use_vpid:
            self.tlb.flush_all()
            self.flushes_on_switch += 1

    def access(self, domid: int, va: int, write: bool = False) -> int | PageFault:
        """The guest touches ``va``: TLB, else the 2-D walk.  No exit."""
        return self.mmus[domid].translate(va, Access.WRITE if write else Access.READ, True)

    def pte_write(self, domid: int, gpa: int, value: int) -> None:
        """A guest store to its own page table: native, no exit."""
        self.guests[domid].write_gpa(gpa, value)
        self.pte_writes += 1

    def map(self, domid: int, proc: int, va: int, gfn: int, writable: bool = True) -> None:
        """The guest kernel maps ``va`` → ``gfn`` in process ``proc``."""
        for gpa, value in self.guests[domid].plan_map(proc, va, gfn, writable):
            self.pte_write(domid, gpa, value)

    def unmap(self, domid: int, proc: int, va: int) -> None:
        """The guest kernel unmaps ``va`` in process ``proc`` and invalidates it."""
        for gpa, value in self.guests[domid].plan_unmap(proc, va):
            self.pte_write(domid, gpa, value)
        if self.guests[domid].current == proc:
            self.invlpg(domid, va)

    def invlpg(self, domid: int, va: int) -> None:
        """Guest ``invlpg``: native under EPT."""
        self.mmus[domid].invlpg(va)

    def load_cr3(self, domid: int, proc: int) -> None:
        """Guest process switch: native CR3 load (flushes this VPID's entries)."""
        g = self.guests[domid]
        g.current = proc
        self.mmus[domid].set_root(g.roots[proc] << g.config.page_bits)

    # -- counts --------------------------------------------------------------------------------

    @property
    def hw_refs(self) -> int:
        """Page-table references made by hardware walks (both dimensions)."""
        return sum(m.memory_references for m in self.mmus.values())

    @property
    def misses(self) -> int:
        """TLB misses of every guest."""
        return sum(m.tlb.misses for m in self.mmus.values())

    def translate(self, domid: int, va: int, write: bool = False) -> Translation:
        """Carry ``va`` through the three spaces, with every guest and EPT reference (pure).

        >>> from virtcore.xen.memory import MachineMemory
        >>> m = MachineMemory(256, 32); d = m.new_domain_memory(1, 32)
        >>> _ = d.populate_physmap(range(32))
        >>> g = HVMGuest(m, d, PagingConfig.tiny())
        >>> hap = NestedPaging(m, PagingConfig.tiny4(), TaggedTLB(8)); hap.add_guest(g)
        >>> hap.map(1, 0, 0x40, g.take_data_page())
        >>> t = hap.translate(1, 0x44)
        >>> t.references, sum(r.table.startswith("EPT") for r in t.refs)
        (14, 12)
        >>> print(str(t).splitlines()[1])
          guest tables hold gfns; each guest-physical address goes through the EPT (P2M)
        """
        mmu = self.mmus[domid]
        guest = self.guests[domid]
        access = Access.WRITE if write else Access.READ
        walk = mmu.walk(va, access, True)
        refs = []
        for s in walk.steps:
            if s.nested:
                refs.append(MemRef(f"EPT L{s.level}", "machine", s.level, s.index,
                                   s.table_paddr, s.entry_paddr, s.entry, s.address))
            else:
                gfn = s.table_paddr >> guest.config.page_bits
                refs.append(MemRef(f"guest L{s.level} (gfn {gfn:#x})", "pseudo-physical",
                                   s.level, s.index, s.table_paddr, s.entry_paddr, s.entry,
                                   va, "gfn"))
        note = ("guest tables hold gfns; each guest-physical address goes through the EPT (P2M)",)
        if walk.fault is not None or walk.paddr is None:
            f = walk.fault
            why = "not mapped" if f is None else (
                f"{'EPT violation' if f.nested else 'guest page fault'}:"
                f" {'protection' if f.present else 'not present'} at level {f.level}")
            return Translation(self.mode, va, access.name.lower(), tuple(refs), None, None,
                               None, why, note)
        mfn = walk.paddr >> guest.config.page_bits
        pfn = self.machine.m2p[mfn] if self.machine.valid_mfn(mfn) else INVALID_M2P_ENTRY
        return Translation(self.mode, va, access.name.lower(), tuple(refs), pfn, mfn,
                           walk.paddr, None, note)


def populate(machine: MachineMemory, domid: int, pages: int) -> DomainMemory:
    """A domain's memory with pfns ``0..pages-1`` populated (raises if the machine is short).

    >>> populate(MachineMemory(8, 32), 1, 4)
    DomainMemory(d1: 4/4 pages populated)
    """
    mem = machine.new_domain_memory(domid, pages)
    if mem.populate_physmap(range(pages)) != pages:
        raise XenMemoryError(f"d{domid}: the machine has no {pages} free frames")
    return mem

