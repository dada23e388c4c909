"""Shadow page tables (影子页表): the hypervisor's own gva → machine tables, kept in sync.

Without hardware nested paging (Xen HVM with ``hap=0`` [XL-CFG]; KVM's "shadow mmu" [KVM-MMU])
the CPU walks tables the *hypervisor* builds: for each guest address space a *shadow* whose
leaves map guest virtual pages straight to machine frames.  The guest still has its own tables
(holding gfns), which the hypervisor reads to build the shadows and must follow:

The rules modelled
------------------
1. **Shadow fault** (``sh_page_fault()`` in Xen, ``FNAME(page_fault)`` in KVM): a TLB miss walks
   the shadow (*n* references); if the shadow has no entry the CPU page-faults, which exits to
   the hypervisor.  It walks the guest's tables in software (*n* more reads), translates each gfn
   through the P2M, and writes the shadow entries (gva → mfn with the guest's W/U bits); a
   missing guest mapping is a real guest page fault, injected back.
2. **Write protection** [KVM-MMU: "we keep all guest page tables write protected, and
   synchronize sptes to gptes when a gpte is written"]: every guest frame the shadows were built
   from is write-protected; a guest store to one exits, is emulated, and the shadow entries
   derived from that guest entry are updated (a leaf: the new gfn through the P2M, read-only
   until the guest entry is dirty) or dropped (a higher level: refilled on the next fault).
3. **CR3 loads and invlpg exit**: a guest CR3 load switches to the shadow of that guest root
   (kept while in use, built on demand); a guest ``invlpg`` exits so the hypervisor can drop the
   TLB entry.
4. **Dirty bits**: a shadow leaf is writable only once the guest entry's D bit is set, so the
   first write to a clean page faults again and the hypervisor sets D in the guest entry — the
   guest sees exact A/D bits.

What the model simplifies (to say in class)
-------------------------------------------
- Shadows are always in sync (no "unsync" leaves resynchronized at the next flush, which KVM and
  Xen use to avoid some write exits); every write to a shadowed guest table exits.
- A dropped shadow subtree's frames are kept until the shadow is torn down (no reclamation,
  no ``shadow_memory`` limit); shadows are never shared between guest roots.
- Guest table pages are write-protected by the hypervisor's bookkeeping (writes come through
  :meth:`ShadowPaging.pte_write`) rather than by read-only shadow entries for them.
- Same TLB, VPID and one-vCPU conventions as :mod:`virtcore.xen.nested`.

>>> from virtcore.hw.paging import PagingConfig
>>> from virtcore.xen.memory import MachineMemory
>>> from virtcore.xen.nested import HVMGuest, TaggedTLB, populate
>>> m = MachineMemory(256, 32)
>>> g = HVMGuest(m, populate(m, 1, 32), PagingConfig.tiny())
>>> sh = ShadowPaging(m, TaggedTLB(8)); sh.add_guest(g)
>>> page = g.take_data_page()
>>> sh.map(1, 0, 0x40, page)     # writes the root (write-protected: exit) and a new L1
>>> sh.exits, sh.emulations
(1, 1)
>>> sh.access(1, 0x44) == g.gpa_to_maddr(page << 5) + 4    # shadow fault, fill, retry
True
>>> sh.exits, sh.shadow_faults, sh.software_refs, sh.shadow_writes    # leaf + a table
(2, 1, 2, 2)
>>> sh.map(1, 0, 0x60, g.take_data_page())    # that L1 is write-protected now: exit,
>>> sh.exits, sh.emulations, sh.shadow_writes  # and the new leaf goes straight to the shadow
(3, 2, 3)
"""

from __future__ import annotations

from virtcore.errors import ConfigurationError
from virtcore.hw.events import Access, PageFault
from virtcore.hw.paging import MMU, PTE_D, PTE_P, PTE_U, PTE_W
from virtcore.xen.memory import INVALID_M2P_ENTRY, MachineMemory
from virtcore.xen.mmu import MemRef, Translation
from virtcore.xen.nested import HVMGuest, TaggedTLB, VPIDAllocator, XenFrames

__all__ = ["ShadowPaging"]


class ShadowPaging:
    """Shadow paging (``hap=0``) for HVM guests on one physical CPU.

    Attributes
    ----------
    exits : int
        VM exits: shadow faults, trapped guest page-table writes, CR3 loads, invlpg.
    shadow_faults, emulations, shadow_writes, guest_faults : int
        Faults that filled shadows; emulated guest PTE stores; shadow entries written
        (filled, updated or dropped); real guest page faults injected.
    software_refs : int
        Guest page-table entries the hypervisor read in its software walks.
    """

    mode = "shadow paging (hap=0)"

    def __init__(self, machine: MachineMemory, tlb: TaggedTLB, *, use_vpid: bool = True) -> None:
        self.machine = machine
        self.tlb = tlb
        self.use_vpid = use_vpid
        self.vpids = VPIDAllocator()
        self.frames = XenFrames(machine)
        self.guests: dict[int, HVMGuest] = {}
        self.mmus: dict[int, MMU] = {}
        # per domain: guest root gfn -> shadow root machine address
        self.shadow_roots: dict[int, dict[int, int]] = {}
        # per domain: guest table gfn -> {(guest root gfn, level, va base of that table)}
        self.rmap: dict[int, dict[int, set[tuple[int, int, int]]]] = {}
        self.running: int | None = None
        self.exits = self.shadow_faults = self.emulations = self.shadow_writes = 0
        self.guest_faults = self.software_refs = self.pte_writes = 0
        self.flushes_on_switch = self.switches = 0

    def add_guest(self, guest: HVMGuest) -> None:
        """Give ``guest`` a vCPU MMU walking its (empty) shadow for the current process."""
        cfg = guest.config
        if cfg.page_size != self.machine.frame_size:
            raise ConfigurationError("guest page size must be the machine frame size")
        mmu = MMU(self.machine.physical, cfg)
        tag = self.vpids.alloc() if self.use_vpid else 0
        mmu.tlb = self.tlb.view(tag if tag else -guest.domid)
        self.guests[guest.domid] = guest
        self.mmus[guest.domid] = mmu
        self.shadow_roots[guest.domid] = {}
        self.rmap[guest.domid] = {}
        mmu.set_root(self._shadow_root(guest.domid, guest.roots[guest.current]))
        mmu.enabled = True

    def _shadow_root(self, domid: int, root_gfn: int) -> int:
        roots = self.shadow_roots[domid]
        if root_gfn not in roots:
            roots[root_gfn] = self.frames.alloc() << self.machine.page_bits
            self.shadow_writes += 0  # an empty table: nothing written yet
            self._note(domid, root_gfn, root_gfn, self.guests[domid].config.levels, 0)
        return roots[root_gfn]

    def _note(self, domid: int, table_gfn: int, root_gfn: int, level: int, base: int) -> None:
        """Write-protect guest table ``table_gfn`` and remember which shadow depends on it."""
        self.rmap[domid].setdefault(table_gfn, set()).add((root_gfn, level, base))

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
        """The guest touches ``va``: TLB, shadow walk, and on a shadow miss the fault path."""
        mmu = self.mmus[domid]
        access = Access.WRITE if write else Access.READ
        for _ in range(3):  # a fill, then possibly a dirty-bit fill, then the hit
            result = mmu.translate(va, access, True)
            if not isinstance(result, PageFault):
                return result
            self.exits += 1
            self.shadow_faults += 1
            if not self._fill(domid, va, write):
                self.guest_faults += 1
                return result
        raise AssertionError("a shadow fill did not make the access succeed")

    def _fill(self, domid: int, va: int, write: bool) -> bool:
        """The shadow fault handler: walk the guest tables, write the shadow leaf."""
        g = self.guests[domid]
        cfg = g.config
        root = g.roots[g.current]
        steps, leaf_gfn, perms = g.guest_walk(root, va)
        self.software_refs += len(steps)
        if leaf_gfn is None or (write and not perms & PTE_W) or not perms & PTE_U:
            return False
        # remember every guest table this translation depends on
        base_mask = 0
        for i, (table_gfn, _index, _e) in enumerate(steps):
            level = cfg.levels - i
            span = cfg.shift(level) + cfg.index_bits
            base_mask = ~((1 << span) - 1)
            self._note(domid, table_gfn, root, level, va & base_mask)
        leaf_gpa = (steps[-1][0] << cfg.page_bits) + (steps[-1][1] << 2)
        leaf = steps[-1][2]
        set_bits = PTE_P | 0x20 | (PTE_D if write else 0)  # A, and D on a write
        if leaf & set_bits != set_bits:
            g.write_gpa(leaf_gpa, leaf | set_bits)  # the hypervisor sets A/D for the guest
            leaf |= set_bits
        mfn = g.mem.p2m[leaf_gfn]
        writable = perms & PTE_W and leaf & PTE_D
        mmu = self.mmus[domid]
        before = self.frames.allocated
        mmu.map(va & ~cfg.offset_mask, mfn << cfg.page_bits, writable=bool(writable), user=True,
                allocator=self.frames)
        self.shadow_writes += 1 + (self.frames.allocated - before)
        return True

    def pte_write(self, domid: int, gpa: int, value: int) -> None:
        """A guest store to a page-table page: if it is write-protected (shadowed), exit,
        emulate the store and bring the shadows derived from it up to date."""
        g = self.guests[domid]
        g.write_gpa(gpa, value)
        self.pte_writes += 1
        gfn = gpa >> g.config.page_bits
        deps = self.rmap[domid].get(gfn)
        if not deps:
            return
        self.exits += 1
        self.emulations += 1
        cfg = g.config
        index = (gpa & g.config.offset_mask) >> 2
        for root_gfn, level, base in deps:
            va = base | (index << cfg.shift(level))
            new = 0
            if level == 1 and value & PTE_P and value & PTE_U and (value >> 12) in g.mem.p2m:
                dirty_w = PTE_W if value & PTE_W and value & PTE_D else 0
                new = (g.mem.p2m[value >> 12] << 12) | PTE_P | PTE_U | dirty_w
            self._set_shadow_entry(domid, root_gfn, level, va, new)

    def _set_shadow_entry(self, domid: int, root_gfn: int, level: int, va: int,
                          new: int) -> None:
        """Write the shadow entry of ``va`` at ``level`` (0 drops it: the next access
        refills it) if the shadow has a table there."""
        cfg = self.guests[domid].config
        words = self.machine.physical.words
        table = self.shadow_roots[domid][root_gfn]
        mask = cfg.entries_per_table - 1
        for lv in range(cfg.levels, level - 1, -1):
            entry = table + (((va >> cfg.shift(lv)) & mask) << 2)
            e = words[entry >> 2]
            if lv == level:
                if e != new:
                    words[entry >> 2] = new
                    self.shadow_writes += 1
                return
            if not e & PTE_P:
                return
            table = (e >> 12) << cfg.page_bits

    def map(self, domid: int, proc: int, va: int, gfn: int, writable: bool = True) -> None:
        """The guest kernel maps ``va`` → ``gfn`` in process ``proc``."""
        g = self.guests[domid]
        for gpa, value in g.plan_map(proc, va, gfn, writable):
            self.pte_write(domid, gpa, value)

    def unmap(self, domid: int, proc: int, va: int) -> None:
        """The guest kernel unmaps ``va`` in process ``proc`` and invalidates it."""
        for gpa, value in self.guests[domid].plan_unmap(proc, va):
            self.pte_write(domid, gpa, value)
        if self.guests[domid].current == proc:
            self.invlpg(domid, va)

    def invlpg(self, domid: int, va: int) -> None:
        """Guest ``invlpg``: exits; the hypervisor drops the TLB entry."""
        self.exits += 1
        self.mmus[domid].invlpg(va)

    def load_cr3(self, domid: int, proc: int) -> None:
        """Guest CR3 load: exits; switch to (or build) the shadow of that root."""
        g = self.guests[domid]
        g.current = proc
        self.exits += 1
        self.mmus[domid].set_root(self._shadow_root(domid, g.roots[proc]))

    # -- counts and trace -------------------------------------------------------------------------

    @property
    def hw_refs(self) -> int:
        """Page-table references made by hardware walks of the shadows."""
        return sum(m.memory_references for m in self.mmus.values())

    @property
    def misses(self) -> int:
        """TLB misses of every guest (each walks the shadow)."""
        return sum(m.tlb.misses for m in self.mmus.values())

    def translate(self, domid: int, va: int, write: bool = False) -> Translation:
        """The hardware's view of ``va``: one walk of the shadow (machine addresses), pure.

        >>> from virtcore.hw.paging import PagingConfig
        >>> from virtcore.xen.memory import MachineMemory
        >>> from virtcore.xen.nested import HVMGuest, TaggedTLB, populate
        >>> m = MachineMemory(128, 32)
        >>> g = HVMGuest(m, populate(m, 1, 32), PagingConfig.tiny())
        >>> sh = ShadowPaging(m, TaggedTLB(8)); sh.add_guest(g)
        >>> sh.map(1, 0, 0x40, 7); _ = sh.access(1, 0x40)
        >>> t = sh.translate(1, 0x40); t.references, t.pfn, [r.table for r in t.refs]
        (2, 7, ['shadow L2', 'shadow L1'])
        """
        mmu = self.mmus[domid]
        g = self.guests[domid]
        access = Access.WRITE if write else Access.READ
        walk = mmu.walk(va, access, True)
        refs = tuple(MemRef(f"shadow L{s.level}", "machine", s.level, s.index, s.table_paddr,
                            s.entry_paddr, s.entry, va) for s in walk.steps)
        note = ("the CPU walks the hypervisor's shadow (gva -> mfn); the guest's own tables"
                " are read only on a shadow fault",)
        if walk.fault is not None or walk.paddr is None:
            return Translation(self.mode, va, access.name.lower(), refs, None, None, None,
                               "shadow miss: exit to the hypervisor", note)
        mfn = walk.paddr >> g.config.page_bits
        pfn = self.machine.m2p[mfn] if self.machine.valid_mfn(mfn) else INVALID_M2P_ENTRY
        return Translation(self.mode, va, access.name.lower(), refs, pfn, mfn, walk.paddr,
                           None, note)

