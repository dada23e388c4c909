"""Multi-level paging (分页) with a TLB, and the two-dimensional (nested) walk.

The MMU turns a virtual address into a physical one by walking a tree of page
tables (页表) whose root is in CR3, caching results in a TLB (快表).  The layout
is x86's 32-bit paging, made configurable so that students can walk tables by
hand at *teaching sizes* (unrealistically small: 32-byte pages, 11-bit
addresses).

Virtual address layout (x86 32-bit, :meth:`PagingConfig.x86_32`)::

     31          22 21          12 11               0
    +--------------+--------------+------------------+
    |   L2 index   |   L1 index   |   page offset    |
    +--------------+--------------+------------------+
    L2 = page directory (levels count down; L1 is the leaf table)

    teaching size PagingConfig.tiny(): 11-bit addresses, 32-byte pages
     10   8 7    5 4       0
    +------+------+---------+
    |  L2  |  L1  | offset  |
    +------+------+---------+

Page-table entry (PTE, 页表项): one 32-bit word, with x86's bit positions::

     31                          12 11  9 8 7 6 5 4 3 2 1 0
    +------------------------------+-----+-+-+-+-+-+-+-+-+-+
    |  PFN: frame number of the    | AVL |G|S|D|A|C|T|U|W|P|
    |  next table, or of the page  |     | | | | | | | | | |
    +------------------------------+-----+-+-+-+-+-+-+-+-+-+
    P present   W writable   U user   A accessed   D dirty (leaf only)
    (T, C, S, G, AVL keep their x86 places but virtcore ignores them.)

With 4 KiB pages this is exactly x86's format: the frame's address is
``pfn << 12``.  With teaching sizes the top 20 bits still hold a frame
*number*, and the frame's address is ``pfn << page_bits``.

Rules modelled (and simplifications)
------------------------------------
- P must be set at every level; W and U must be set at *every* level for a
  write / a user access.  Kernel writes to read-only pages fault too: CR0.WP=1,
  as Xen keeps it [XEN-H; XEN-MM-C; XIG].
- A walk that succeeds sets A in every entry it used and, for a write, D in the
  leaf.  A walk that faults writes nothing (real CPUs may already have set some
  A bits).  Execute is checked like read (32-bit x86 without PAE has no NX bit).
- A TLB entry carries W only once the leaf's D bit is set, so the first write
  to a clean page always takes the slow path that sets D — as on x86.
- A table pointer outside installed memory is reported as a not-present fault
  at that level (real hardware would raise a machine check).  The *final*
  physical address is not checked: it may be MMIO, and the CPU decides.
- Nested paging (EPT/NPT) [BHAR08; STOJ22]: with an enabled ``nested=`` MMU, every guest-physical
  address
  — each guest table entry the walk reads and the final address — goes through
  a walk of the nested tables, so a miss costs ``(n+1)(m+1) - 1`` references
  (24 for 4 x 4 levels).  Nested entries use this same PTE format (real EPT has
  R/W/X bits instead; U is ignored in the nested dimension), and the nested D
  bit is set only by the final data write, not by the walker's A/D updates.

>>> from virtcore.hw.memory import FrameAllocator, PhysicalMemory
>>> mem = PhysicalMemory(size=1024, frame_size=32)
>>> alloc = FrameAllocator(mem, reserved=[0])
>>> mmu = MMU(mem, PagingConfig.tiny())
>>> mmu.set_root(mmu.alloc_table(alloc))
>>> mmu.map(0x120, 0x3e0, allocator=alloc)
>>> mmu.enabled = True
>>> hex(mmu.translate(0x12c, Access.READ, user=True))
'0x3ec'
>>> mmu.memory_references, mmu.tlb.misses, mmu.translate(0x124, Access.READ, True) == 0x3e4
(2, 1, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from virtcore.errors import AddressError, ConfigurationError, VirtcoreError
from virtcore.hw.events import Access, PageFault
from virtcore.hw.memory import PhysicalMemory

__all__ = [
    "MMU",
    "PFN_LIMIT",
    "PTE_A",
    "PTE_D",
    "PTE_P",
    "PTE_PFN_SHIFT",
    "PTE_U",
    "PTE_W",
    "TLB",
    "FrameSource",
    "PagingConfig",
    "PagingError",
    "Walk",
    "WalkStep",
    "describe_pte",
    "make_pte",
    "pte_flags",
    "pte_pfn",
]

# -- PTE format (see the drawing above) ------------------------------------------

PTE_P = 0x001  # present
PTE_W = 0x002  # writable
PTE_U = 0x004  # user-accessible
PTE_A = 0x020  # accessed: set by the walker when it uses the entry
PTE_D = 0x040  # dirty: set by the walker in the leaf on a write
PTE_FLAGS_MASK = 0xFFF
PTE_PFN_SHIFT = 12
PFN_LIMIT = 1 << 20  # a PFN has 20 bits

_FLAG_NAMES = ((PTE_P, "P"), (PTE_W, "W"), (PTE_U, "U"), (PTE_A, "A"), (PTE_D, "D"))
_WRITE = Access.WRITE
_READ = Access.READ


class PagingError(VirtcoreError, ValueError):
    """Host-side misuse of page tables: a misaligned or out-of-range mapping,
    unmapping what is not mapped.  (Guest faults are :class:`PageFault` values.)"""


def make_pte(pfn: int, flags: int) -> int:
    """A page-table entry pointing at frame ``pfn`` with ``flags``.

    >>> hex(make_pte(0x5, PTE_P | PTE_W | PTE_U | PTE_A))
    '0x5027'
    """
    if not 0 <= pfn < PFN_LIMIT:
        raise PagingError(f"frame number {pfn:#x} does not fit in a PTE's 20 PFN bits")
    if not 0 <= flags <= PTE_FLAGS_MASK:
        raise PagingError(f"flags {flags:#x} do not fit in a PTE's low 12 bits")
    return (pfn << PTE_PFN_SHIFT) | flags


def pte_pfn(pte: int) -> int:
    """The frame number in ``pte`` (bits 31..12).

    >>> pte_pfn(0x5027)
    5
    """
    return pte >> PTE_PFN_SHIFT


def pte_flags(pte: int) -> int:
    """The flag bits of ``pte`` (bits 11..0).

    >>> hex(pte_flags(0x5027))
    '0x27'
    """
    return pte & PTE_FLAGS_MASK


def describe_pte(pte: int) -> str:
    """``pte`` in words: its frame number and the flags that are set.

    >>> describe_pte(0x5027)
    'pfn 0x5 P W U A'
    >>> describe_pte(0), describe_pte(0x3002)
    ('pfn 0x0 -', 'pfn 0x3 W (not present)')
    """
    names = [name for bit, name in _FLAG_NAMES if pte & bit]
    text = f"pfn {pte >> PTE_PFN_SHIFT:#x} " + (" ".join(names) if names else "-")
    if names and not pte & PTE_P:
        text += " (not present)"
    return text


# -- geometry ---------------------------------------------------------------------


@dataclass(frozen=True)
class PagingConfig:
    """The shape of the page tables: page size, number of levels, bits per level.

    Parameters
    ----------
    page_bits : int
        log2 of the page size in bytes (at least 3, so the TLB's permission
        bits fit below the offset).
    levels : int
        Number of table levels; L``levels`` is the root, L1 the leaf table.
    index_bits : int
        Virtual-address bits per level; a table has ``2**index_bits`` 4-byte
        entries and must fit in one page.
    label : str
        What this is, e.g. ``"x86 32-bit: ..."``; teaching sizes say so.

    Examples
    --------
    >>> cfg = PagingConfig.tiny()
    >>> cfg.page_size, cfg.entries_per_table, cfg.va_bits, hex(cfg.va_limit)
    (32, 8, 11, '0x800')
    >>> cfg.split(0x5a7)
    ([5, 5], 7)
    >>> PagingConfig(page_bits=5, levels=2, index_bits=4)
    Traceback (most recent call last):
    ...
    virtcore.errors.ConfigurationError: a table of 16 4-byte entries does not fit in a 32-byte page
    """

    page_bits: int = 12
    levels: int = 2
    index_bits: int = 10
    label: str = ""

    def __post_init__(self) -> None:
        for name in ("page_bits", "levels", "index_bits"):
            if not isinstance(getattr(self, name), int):
                raise ConfigurationError(f"{name} must be an int")
        if self.page_bits < 3:
            raise ConfigurationError(f"pages of 2**{self.page_bits} bytes are below 8 bytes")
        if self.levels < 1 or self.index_bits < 1:
            raise ConfigurationError("need at least one level of at least one index bit")
        if self.index_bits + 2 > self.page_bits:
            raise ConfigurationError(
                f"a table of {1 << self.index_bits} 4-byte entries does not fit in a"
                f" {1 << self.page_bits}-byte page")
        if self.va_bits > 32:
            raise ConfigurationError(f"{self.va_bits}-bit virtual addresses exceed 32 bits")

    # presets -----------------------------------------------------------------------

    @classmethod
    def x86_32(cls) -> PagingConfig:
        """x86 32-bit paging: 4 KiB pages, 2 levels of 1024 entries (10 + 10 + 12 bits).

        >>> PagingConfig.x86_32().va_bits
        32
        """
        return cls(12, 2, 10, "x86 32-bit: 4 KiB pages, 2 levels (10+10+12 bits)")

    @classmethod
    def tiny(cls) -> PagingConfig:
        """Teaching size: 32-byte pages, 2 levels of 8 entries, 11-bit addresses.

        >>> "teaching size" in PagingConfig.tiny().label
        True
        """
        return cls(5, 2, 3, "teaching size — unrealistically small: 32-byte pages,"
                            " 2 levels (3+3+5 bits), 11-bit addresses")

    @classmethod
    def tiny4(cls) -> PagingConfig:
        """Teaching size: 32-byte pages, 4 levels of 8 entries, 17-bit addresses.

        Four levels like x86-64, small enough to print every table.

        >>> PagingConfig.tiny4().va_bits
        17
        """
        return cls(5, 4, 3, "teaching size — unrealistically small: 32-byte pages,"
                            " 4 levels (3+3+3+3+5 bits), 17-bit addresses")

    @classmethod
    def small(cls) -> PagingConfig:
        """Teaching size: 256-byte pages, 2 levels of 64 entries, 20-bit addresses.

        >>> PagingConfig.small().entries_per_table
        64
        """
        return cls(8, 2, 6, "teaching size — unrealistically small: 256-byte pages,"
                            " 2 levels (6+6+8 bits), 20-bit addresses")

    # derived sizes -------------------------------------------------------------------

    @property
    def page_size(self) -> int:
        """Bytes per page (= bytes per frame)."""
        return 1 << self.page_bits

    @property
    def offset_mask(self) -> int:
        """Mask of the page-offset bits of an address."""
        return (1 << self.page_bits) - 1

    @property
    def entries_per_table(self) -> int:
        """Entries in one page table."""
        return 1 << self.index_bits

    @property
    def va_bits(self) -> int:
        """Bits of a virtual address: offset plus one index per level."""
        return self.page_bits + self.levels * self.index_bits

    @property
    def va_limit(self) -> int:
        """First virtual address beyond the translatable range."""
        return 1 << self.va_bits

    def shift(self, level: int) -> int:
        """Position of the lowest bit of level ``level``'s index.

        >>> PagingConfig.x86_32().shift(2)
        22
        """
        return self.page_bits + (level - 1) * self.index_bits

    def split(self, vaddr: int) -> tuple[list[int], int]:
        """The table indices (root level first) and the page offset of ``vaddr``.

        >>> PagingConfig.x86_32().split(0x00403004)
        ([1, 3], 4)
        """
        if not 0 <= vaddr < self.va_limit:
            raise PagingError(f"{vaddr:#x} is outside the {self.va_bits}-bit address space")
        mask = self.entries_per_table - 1
        indices = [(vaddr >> self.shift(level)) & mask for level in range(self.levels, 0, -1)]
        return indices, vaddr & self.offset_mask

    def layout(self) -> str:
        """Which bits of a virtual address do what.

        >>> PagingConfig.x86_32().layout()
        'bits 31..22 L2 index | 21..12 L1 index | 11..0 offset'
        """
        parts = []
        for level in range(self.levels, 0, -1):
            low = self.shift(level)
            parts.append(f"{low + self.index_bits - 1}..{low} L{level} index")
        parts.append(f"{self.page_bits - 1}..0 offset")
        return "bits " + " | ".join(parts)

    def __str__(self) -> str:
        return self.label or (f"{self.page_size}-byte pages, {self.levels} levels,"
                              f" {self.va_bits}-bit addresses")


# -- TLB -------------------------------------------------------------------------------


class TLB:
    """A translation lookaside buffer (快表): virtual page number → frame + permissions.

    ``entries`` maps a VPN to ``frame_base | perms``: the physical address of
    the frame (low ``page_bits`` bits zero) OR-ed with a subset of
    ``PTE_P | PTE_W | PTE_U`` (P always; U if user access is allowed; W only if
    writes are allowed *and* the leaf's D bit is already set).  The permission
    bits fit below the page offset because pages are at least 8 bytes.

    Hot-path contract: whoever looks up ``entries`` directly (the CPU, or
    :meth:`MMU.translate`) adds 1 to ``lookups`` per lookup; a miss is counted
    in ``misses`` by :meth:`MMU.refill`.  So ``hits + misses == lookups``.

    Replacement is FIFO in insertion order (deterministic); re-inserting a VPN
    that is present updates it in place without moving it.  Real TLBs use
    (pseudo-)LRU and are set-associative; a ``capacity`` of 0 models no TLB.

    Examples
    --------
    >>> tlb = TLB(capacity=2)
    >>> tlb.insert(1, 0x100 | PTE_P); tlb.insert(2, 0x200 | PTE_P); tlb.insert(3, 0x300 | PTE_P)
    >>> sorted(tlb.entries), tlb.evictions
    ([2, 3], 1)
    >>> tlb.lookups, tlb.misses = 10, 1
    >>> tlb
    TLB(2/2 entries, 10 lookups, 1 misses, hit rate 90.0%)
    """

    def __init__(self, capacity: int = 16) -> None:
        if not isinstance(capacity, int) or capacity < 0:
            raise ConfigurationError(f"TLB capacity {capacity!r} is not a non-negative int")
        self.capacity: int = capacity
        self.entries: dict[int, int] = {}
        self.lookups: int = 0
        self.misses: int = 0
        self.flushes: int = 0
        self.evictions: int = 0

    @property
    def hits(self) -> int:
        """Lookups that found a usable entry."""
        return self.lookups - self.misses

    @property
    def hit_rate(self) -> float | None:
        """``hits / lookups``, or None before the first lookup."""
        return self.hits / self.lookups if self.lookups else None

    def __len__(self) -> int:
        return len(self.entries)

    def insert(self, vpn: int, value: int) -> None:
        """Cache ``value`` for ``vpn``, evicting the oldest entry if full."""
        entries = self.entries
        if vpn not in entries:
            if self.capacity == 0:
                return
            if len(entries) >= self.capacity:
                del entries[next(iter(entries))]
                self.evictions += 1
        entries[vpn] = value

    def flush(self) -> None:
        """Drop every entry (a CR3 load, or a full flush)."""
        self.entries.clear()
        self.flushes += 1

    def invalidate(self, vpn: int) -> None:
        """Drop the entry for ``vpn`` if there is one (``invlpg``)."""
        self.entries.pop(vpn, None)

    def reset_stats(self) -> None:
        """Zero the counters (not the entries)."""
        self.lookups = self.misses = self.flushes = self.evictions = 0

    def __repr__(self) -> str:
        rate = self.hit_rate
        shown = "n/a" if rate is None else f"{100 * rate:.1f}%"
        return (f"TLB({len(self.entries)}/{self.capacity} entries, {self.lookups} lookups,"
                f" {self.misses} misses, hit rate {shown})")


# -- walk traces ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WalkStep:
    """One page-table entry read by a walk.

    Attributes
    ----------
    level : int
        Level of the table (L1 = leaf).
    index : int
        Index into the table.
    table_paddr : int
        Address of the table in its own dimension (guest-physical for a guest
        table under nested paging).
    entry_paddr : int
        Host-physical address actually read.
    entry : int
        The PTE read.
    nested : bool
        True for a read of the nested (EPT/NPT) tables.
    address : int
        The address this step helps translate (the virtual address, or for a
        nested step the guest-physical one).
    """

    level: int
    index: int
    table_paddr: int
    entry_paddr: int
    entry: int
    nested: bool = False
    address: int = 0

    def __str__(self) -> str:
        where = f"@{self.entry_paddr:#x}"
        own = self.table_paddr + 4 * self.index
        if own != self.entry_paddr:
            where = f"@{own:#x} (host {self.entry_paddr:#x})"
        name = f"    --> N{self.level}" if self.nested else f"--> L{self.level}"
        return (f"{name} index {self.index:#x} [decimal {self.index}] entry {where}"
                f" = {self.entry:#010x} ({describe_pte(self.entry)})")


@dataclass(frozen=True)
class Walk:
    """The trace of a page walk (from :meth:`MMU.walk`): every entry read, and the result.

    ``str(walk)`` prints it OSTEP-style, in hex and decimal.
    """

    vaddr: int
    access: Access
    user: bool
    config: PagingConfig
    paging: bool
    steps: tuple[WalkStep, ...]
    paddr: int | None
    fault: PageFault | None

    @property
    def ok(self) -> bool:
        """True if the address translated."""
        return self.fault is None

    @property
    def references(self) -> int:
        """Page-table entries read (both dimensions)."""
        return len(self.steps)

    @property
    def nested_references(self) -> int:
        """Entries read in the nested dimension."""
        return sum(1 for step in self.steps if step.nested)

    def __str__(self) -> str:
        who = "user" if self.user else "kernel"
        lines = [f"{self.access.name.lower()} of {self.vaddr:#x} [decimal {self.vaddr}]"
                 f" from {who} mode"]
        if self.paging and 0 <= self.vaddr < self.config.va_limit:
            indices, offset = self.config.split(self.vaddr)
            parts = [f"L{self.config.levels - i} index {x:#x}" for i, x in enumerate(indices)]
            lines.append(f"  ({self.config})")
            lines.append("  split: " + " | ".join([*parts, f"offset {offset:#x}"]))
        elif not self.paging:
            lines.append("  paging is off: the address is " + (
                "guest-physical" if self.steps else "used as it is"))
        previous: WalkStep | None = None
        for step in self.steps:
            if step.nested and (previous is None or not previous.nested
                                or step.address != previous.address):
                lines.append(f"    nested walk of guest-physical {step.address:#x}:")
            lines.append(str(step))
            previous = step
        if self.fault is not None:
            lines.append(f"--> {self.fault}")
        else:
            assert self.paddr is not None
            lines.append(f"--> physical address {self.paddr:#x} [decimal {self.paddr}]")
        nested = self.nested_references
        lines.append(f"{self.references} page-table references"
                     + (f" ({nested} in the nested dimension)" if nested else ""))
        return "\n".join(lines)


@dataclass
class _WalkState:
    """Scratch for one walk: counters, A/D bits to set if it succeeds, optional trace."""

    steps: list[WalkStep] | None = None
    refs: int = 0
    nested_refs: int = 0
    updates: list[tuple[int, int]] = field(default_factory=list)  # (entry paddr, bits)


class FrameSource(Protocol):
    """Anything that hands out frame numbers, like :class:`~virtcore.hw.memory.FrameAllocator`."""

    def alloc(self) -> int:
        """A free frame number."""
        ...


# -- the MMU ---------------------------------------------------------------------------------


class MMU:
    """A memory-management unit (内存管理单元): CR0.PG, CR3, the walker and a TLB.

    Parameters
    ----------
    memory : PhysicalMemory
        Where the tables and pages live; its frame size must be the page size.
    config : PagingConfig, optional
        Table shape; defaults to :meth:`PagingConfig.x86_32` for 4096-byte frames
        (required otherwise).
    tlb_size : int
        TLB capacity (0 = no TLB).
    nested : MMU, optional
        The second dimension (EPT/NPT) for a guest, over the *same* memory: then
        this MMU's ``root`` and table pointers are guest-physical, and while
        ``nested.enabled`` is True (EPT on) every guest-physical address goes
        through ``nested``'s tables (user=False); when it is False,
        guest-physical = host-physical.  The 2-D walk uses neither the nested
        MMU's TLB nor its counters (this MMU counts both dimensions).  Changing
        the nested tables does not flush this MMU's TLB: do it yourself (INVEPT).

    Attributes
    ----------
    enabled : bool
        CR0.PG.  When False and no enabled ``nested``, :meth:`translate` is the
        identity.  When False *with* an enabled ``nested`` (a guest with paging
        off under EPT) the address is guest-physical and still goes through
        ``nested`` (the CPU may equally call ``nested.translate`` itself).
    root : int
        CR3: the physical address of the top table (set it with :meth:`set_root`).
    memory_references, nested_references, walks : int
        Entries read by walks (both dimensions / nested only) and walks made by
        :meth:`refill`.

    Notes
    -----
    Hot-path contract (the CPU inlines the TLB hit):

    .. code-block:: python

        e = mmu.tlb.entries.get(vaddr >> page_bits)      # and mmu.tlb.lookups += 1
        need = (PTE_W if write else 0) | (PTE_U if user else 0)
        if e is None or e & need != need:
            paddr = mmu.refill(vaddr, access, user)     # counts the miss, never a lookup
        else:
            paddr = (e & ~offset_mask) | (vaddr & offset_mask)

    The TLB path must be taken whenever :attr:`translating` is true.  A
    separate TLB (e.g. the CPU's instruction TLB) can be filled by passing it
    as ``refill(..., tlb=itlb)``.

    Examples
    --------
    >>> from virtcore.hw.memory import FrameAllocator, PhysicalMemory
    >>> mem = PhysicalMemory(size=64 * 1024)
    >>> alloc = FrameAllocator(mem, reserved=[0])
    >>> mmu = MMU(mem)
    >>> str(mmu.config)
    'x86 32-bit: 4 KiB pages, 2 levels (10+10+12 bits)'
    >>> mmu.set_root(mmu.alloc_table(alloc))
    >>> mmu.map(0x0040_3000, 0x5000, writable=False, allocator=alloc)
    >>> mmu.enabled = True
    >>> hex(mmu.translate(0x0040_3004, Access.READ, user=True))
    '0x5004'
    >>> mmu.translate(0x0040_3004, Access.WRITE, user=False).present   # CR0.WP=1
    True
    """

    def __init__(
        self,
        memory: PhysicalMemory,
        config: PagingConfig | None = None,
        *,
        tlb_size: int = 16,
        nested: MMU | None = None,
    ) -> None:
        if config is None:
            if memory.frame_size != 4096:
                raise ConfigurationError(
                    f"frames of {memory.frame_size} bytes need an explicit PagingConfig")
            config = PagingConfig.x86_32()
        if memory.frame_size != config.page_size:
            raise ConfigurationError(
                f"page size {config.page_size} differs from the frame size {memory.frame_size}")
        if memory.nframes > PFN_LIMIT:
            raise ConfigurationError(f"{memory.nframes} frames cannot be named by 20-bit PFNs")
        if nested is not None:
            if nested.memory is not memory:
                raise ConfigurationError("the nested MMU must use the same physical memory")
            if nested.nested is not None:
                raise ConfigurationError("only two dimensions of paging are modelled")
        self.memory: PhysicalMemory = memory
        self.config: PagingConfig = config
        self.tlb: TLB = TLB(tlb_size)
        self.nested: MMU | None = nested
        self.enabled: bool = False
        self.root: int = 0
        self.memory_references: int = 0
        self.nested_references: int = 0
        self.walks: int = 0
        # precomputed geometry for the walker
        self._page_bits = config.page_bits
        self._offset_mask = config.offset_mask
        self._index_mask = config.entries_per_table - 1
        self._va_limit = config.va_limit
        self._levels = tuple((level, config.shift(level)) for level in range(config.levels, 0, -1))

    def __repr__(self) -> str:
        state = "on" if self.enabled else "off"
        extra = ", nested" if self.nested is not None else ""
        return f"MMU({self.config}; paging {state}, root {self.root:#x}{extra}, {self.tlb!r})"

    @property
    def translating(self) -> bool:
        """True when addresses go through the TLB and tables (paging on, or EPT on)."""
        return self.enabled or self._active_nested() is not None

    def _active_nested(self) -> MMU | None:
        """The nested MMU if there is one and it is enabled (EPT on), else None."""
        nested = self.nested
        return nested if nested is not None and nested.enabled else None

    # -- control registers ----------------------------------------------------------------

    def set_root(self, paddr: int) -> None:
        """Load CR3 with ``paddr`` (page-aligned) and flush the TLB, as a CR3 write does.

        >>> from virtcore.hw.memory import PhysicalMemory
        >>> mmu = MMU(PhysicalMemory())
        >>> mmu.tlb.insert(1, 0x3001); mmu.set_root(0x2000)
        >>> hex(mmu.root), len(mmu.tlb), mmu.tlb.flushes
        ('0x2000', 0, 1)
        """
        if paddr < 0 or paddr & self._offset_mask or paddr >> self._page_bits >= PFN_LIMIT:
            raise PagingError(f"root {paddr:#x} is not a page-aligned frame address")
        self.root = paddr
        self.tlb.flush()

    def invlpg(self, vaddr: int) -> None:
        """Drop the TLB entry for the page of ``vaddr`` (x86 ``invlpg``).

        >>> from virtcore.hw.memory import PhysicalMemory
        >>> mmu = MMU(PhysicalMemory())
        >>> mmu.tlb.insert(0x12, 0x5001); mmu.invlpg(0x12345); len(mmu.tlb)
        0
        """
        self.tlb.invalidate(vaddr >> self._page_bits)

    # -- translation ----------------------------------------------------------------------

    def translate(self, vaddr: int, access: Access, user: bool) -> int | PageFault:
        """The physical address for ``vaddr``, or the :class:`PageFault`.

        Counts exactly one TLB lookup; on a miss (no entry, or an entry without
        the W / U permission the access needs) calls :meth:`refill`, which counts
        the miss.  With paging off and no enabled nested MMU this is the
        identity and counts nothing.

        Examples
        --------
        >>> from virtcore.hw.memory import PhysicalMemory
        >>> mmu = MMU(PhysicalMemory())
        >>> mmu.translate(0x1234, Access.READ, user=False)      # paging off
        4660
        >>> mmu.enabled = True
        >>> fault = mmu.translate(0x1234, Access.READ, user=False)   # empty root table
        >>> fault.present, fault.level, mmu.tlb.lookups, mmu.tlb.misses
        (False, 2, 1, 1)
        """
        if not self.enabled and (self.nested is None or not self.nested.enabled):
            return vaddr
        tlb = self.tlb
        tlb.lookups += 1
        e = tlb.entries.get(vaddr >> self._page_bits)
        if e is not None:
            need = (PTE_W if access == _WRITE else 0) | (PTE_U if user else 0)
            if e & need == need:
                offset_mask = self._offset_mask
                return (e & ~offset_mask) | (vaddr & offset_mask)
        return self.refill(vaddr, access, user)

    def refill(
        self, vaddr: int, access: Access, user: bool, *, tlb: TLB | None = None,
    ) -> int | PageFault:
        """The slow path after a TLB miss: walk, check, set A/D, fill the TLB.

        Counts one TLB *miss* (never a lookup: the caller counted it), one walk
        and the entries read.  On success sets A in every entry used and D in the
        leaf for a write (writing the PTEs back to memory), inserts the TLB entry
        and returns the physical address.  On failure returns the fault and
        changes no PTE.  ``tlb`` selects another TLB to count the miss in and to
        fill (the CPU's instruction TLB); by default :attr:`tlb`.

        Examples
        --------
        >>> from virtcore.hw.memory import FrameAllocator, PhysicalMemory
        >>> mem = PhysicalMemory(1024, 32)
        >>> alloc = FrameAllocator(mem, reserved=[0])
        >>> mmu = MMU(mem, PagingConfig.tiny()); mmu.set_root(mmu.alloc_table(alloc))
        >>> mmu.map(0x40, 0x80, allocator=alloc); mmu.enabled = True
        >>> mmu.refill(0x44, Access.WRITE, user=True)
        132
        >>> describe_pte(mem.read_word(mmu.walk(0x44).steps[-1].entry_paddr))
        'pfn 0x4 P W U A D'
        >>> mmu.tlb.lookups, mmu.tlb.misses, mmu.walks, mmu.memory_references
        (0, 1, 1, 2)
        """
        if tlb is None:
            tlb = self.tlb
        tlb.misses += 1
        self.walks += 1
        state = _WalkState()
        result = self._translate2d(vaddr, access, user, state)
        self.memory_references += state.refs
        self.nested_references += state.nested_refs
        if isinstance(result, PageFault):
            return result
        paddr, perms = result
        memory = self.memory
        words = memory.words
        for entry, bits in state.updates:
            if ~words[entry >> 2] & bits:
                memory.write_word(entry, words[entry >> 2] | bits)
        tlb.insert(vaddr >> self._page_bits, (paddr & ~self._offset_mask) | PTE_P | perms)
        return paddr

    def walk(self, vaddr: int, access: Access = _READ, user: bool = False) -> Walk:
        """Walk the tables for ``vaddr`` and return the trace — without side effects.

        A pure teaching walk: it reads the same entries :meth:`refill` would,
        but touches neither the TLB, nor A/D bits, nor any counter.

        Examples
        --------
        >>> from virtcore.hw.memory import FrameAllocator, PhysicalMemory
        >>> mem = PhysicalMemory(1024, 32)
        >>> alloc = FrameAllocator(mem, reserved=[0])
        >>> mmu = MMU(mem, PagingConfig.tiny()); mmu.set_root(mmu.alloc_table(alloc))
        >>> mmu.map(0x1e0, 0x3e0, allocator=alloc); mmu.enabled = True
        >>> print(mmu.walk(0x1e5))
        read of 0x1e5 [decimal 485] from kernel mode
          (teaching size — unrealistically small: ...)
          split: L2 index 0x1 | L1 index 0x7 | offset 0x5
        --> L2 index 0x1 [decimal 1] entry @0x24 = 0x00002007 (pfn 0x2 P W U)
        --> L1 index 0x7 [decimal 7] entry @0x5c = 0x0001f007 (pfn 0x1f P W U)
        --> physical address 0x3e5 [decimal 997]
        2 page-table references
        >>> mmu.walks, mmu.memory_references, len(mmu.tlb)
        (0, 0, 0)
        """
        state = _WalkState(steps=[])
        result = self._translate2d(vaddr, access, user, state)
        steps = tuple(state.steps or ())
        if isinstance(result, PageFault):
            return Walk(vaddr, access, user, self.config, self.enabled, steps, None, result)
        return Walk(vaddr, access, user, self.config, self.enabled, steps, result[0], None)

    # -- the walker (shared by refill and walk) ------------------------------------------

    def _translate2d(
        self, vaddr: int, access: Access, user: bool, state: _WalkState,
    ) -> tuple[int, int] | PageFault:
        """Both dimensions: returns (physical address, TLB permission bits) or a fault."""
        if self.enabled:
            result = self._walk_tables(vaddr, access, user, state, nested_dim=False)
            if isinstance(result, PageFault):
                return result
            gpa, perms = result
        else:
            gpa, perms = vaddr, PTE_W | PTE_U
        nested = self._active_nested()
        if nested is None:
            return gpa, perms
        result = nested._walk_tables(gpa, access, False, state, nested_dim=True)
        if isinstance(result, PageFault):
            return result
        hpa, nested_perms = result
        return hpa, perms & (nested_perms | PTE_U)  # U means nothing in the nested dimension

    def _walk_tables(
        self, addr: int, access: Access, user: bool, state: _WalkState, *, nested_dim: bool,
    ) -> tuple[int, int] | PageFault:
        """One dimension: walk this MMU's tables for ``addr``.

        Returns ``(output address, perms)`` where perms holds PTE_U if U is set at
        every level and PTE_W if W is set at every level and the leaf is (or is
        about to be made) dirty; or the fault.  Entry addresses are translated
        through ``self.nested`` when it is enabled (the 2-D walk).
        """
        levels = self._levels
        if not 0 <= addr < self._va_limit:
            return PageFault(addr, access, user, False, levels[0][0], nested_dim)
        write = access == _WRITE
        need = (PTE_W if write else 0) | (PTE_U if user else 0)
        words = self.memory.words
        size = self.memory.size
        page_bits = self._page_bits
        index_mask = self._index_mask
        nested = self._active_nested()
        steps = state.steps
        updates = state.updates
        table = self.root
        perms = PTE_W | PTE_U
        deny = 0  # highest level whose entry lacks a needed permission
        entry = pte = 0
        for level, shift in levels:
            index = (addr >> shift) & index_mask
            entry = table + (index << 2)
            if nested is not None:  # the guest table itself is at a guest-physical address
                hop = nested._walk_tables(entry, _READ, False, state, nested_dim=True)
                if isinstance(hop, PageFault):
                    return hop
                entry = hop[0]
            if entry >= size:  # simplification: no machine check for a wild table pointer
                return PageFault(addr, access, user, False, level, nested_dim)
            pte = words[entry >> 2]
            state.refs += 1
            if nested_dim:
                state.nested_refs += 1
            if steps is not None:
                steps.append(WalkStep(level, index, table, entry, pte, nested_dim, addr))
            if not pte & PTE_P:
                return PageFault(addr, access, user, False, level, nested_dim)
            perms &= pte
            if need & ~pte and not deny:
                deny = level
            if not pte & PTE_A:
                updates.append((entry, PTE_A))
            table = (pte >> PTE_PFN_SHIFT) << page_bits
        if deny:
            return PageFault(addr, access, user, True, deny, nested_dim)
        if write:
            if not pte & PTE_D:
                updates.append((entry, PTE_D))
        elif not pte & PTE_D:
            perms &= ~PTE_W  # clean page: the first write must come back to set D
        return table | (addr & self._offset_mask), perms & (PTE_W | PTE_U)

    # -- building tables (host side) ------------------------------------------------------

    def _host_address(self, paddr: int) -> int:
        """Where this MMU's physical address ``paddr`` lives in memory (no side effects)."""
        nested = self._active_nested()
        if nested is not None:
            result = nested._walk_tables(paddr, _READ, False, _WalkState(), nested_dim=True)
            if isinstance(result, PageFault):
                raise PagingError(f"guest-physical {paddr:#x} is not mapped by the nested MMU")
            paddr = result[0]
        if not 0 <= paddr < self.memory.size:
            raise AddressError(f"page table at {paddr:#x} is outside installed memory")
        return paddr

    def alloc_table(self, allocator: FrameSource) -> int:
        """A new, empty page table from ``allocator``; returns its physical address.

        Use it for the root: ``mmu.set_root(mmu.alloc_table(alloc))``.  With a
        nested MMU the allocator hands out *guest* frame numbers and the table
        is cleared through the nested mapping.

        >>> from virtcore.hw.memory import FrameAllocator, PhysicalMemory
        >>> mem = PhysicalMemory()
        >>> hex(MMU(mem).alloc_table(FrameAllocator(mem, reserved=[0, 1])))
        '0x2000'
        """
        paddr = allocator.alloc() << self._page_bits
        host = self._host_address(paddr)
        start = host >> 2
        count = self.config.entries_per_table
        self.memory.words[start:start + count] = [0] * count
        return paddr

    def _leaf_entry(self, vaddr: int, allocator: FrameSource | None) -> int | None:
        """Host address of the leaf PTE for ``vaddr``, allocating tables if an
        allocator is given (else None when a level is missing)."""
        words = self.memory.words
        table = self.root
        for level, shift in self._levels:
            entry = self._host_address(table + (((vaddr >> shift) & self._index_mask) << 2))
            if level == 1:
                return entry
            pte = words[entry >> 2]
            if not pte & PTE_P:
                if allocator is None:
                    return None
                # intermediate entries allow everything: the leaf decides
                pte = make_pte(self.alloc_table(allocator) >> self._page_bits,
                               PTE_P | PTE_W | PTE_U)
                self.memory.write_word(entry, pte)
            table = (pte >> PTE_PFN_SHIFT) << self._page_bits
        raise AssertionError("unreachable: the loop returns at level 1")

    def map(
        self,
        vaddr: int,
        paddr: int,
        *,
        writable: bool = True,
        user: bool = True,
        allocator: FrameSource,
    ) -> None:
        """Map the page at ``vaddr`` to the frame at ``paddr``, creating tables as needed.

        Missing tables come from ``allocator``; their entries get P|W|U so the
        leaf decides the permissions.  Replaces an existing mapping and drops its
        TLB entry.  ``paddr`` is not checked against installed memory (it may be
        MMIO).  With a nested MMU, ``paddr``, ``root`` and the allocator's frames
        are guest-physical; the tables are written through the nested mapping,
        which must already map them.

        Examples
        --------
        >>> from virtcore.hw.memory import FrameAllocator, PhysicalMemory
        >>> mem = PhysicalMemory(1024, 32)
        >>> alloc = FrameAllocator(mem, reserved=[0])
        >>> mmu = MMU(mem, PagingConfig.tiny()); mmu.set_root(mmu.alloc_table(alloc))
        >>> mmu.map(0x40, 0x80, user=False, allocator=alloc)
        >>> [(hex(v), hex(p), describe_pte(f)) for v, p, f in mmu.mappings()]
        [('0x40', '0x80', 'pfn 0x0 P W')]
        >>> mmu.map(0x41, 0x80, allocator=alloc)
        Traceback (most recent call last):
        ...
        virtcore.hw.paging.PagingError: 0x41 -> 0x80 is not page-aligned (32-byte pages)
        """
        if vaddr & self._offset_mask or paddr & self._offset_mask:
            raise PagingError(f"{vaddr:#x} -> {paddr:#x} is not page-aligned"
                              f" ({self.config.page_size}-byte pages)")
        if not 0 <= vaddr < self._va_limit:
            raise PagingError(f"{vaddr:#x} is outside the {self.config.va_bits}-bit address space")
        flags = PTE_P | (PTE_W if writable else 0) | (PTE_U if user else 0)
        if paddr < 0:
            raise PagingError(f"negative physical address {paddr:#x}")
        pte = make_pte(paddr >> self._page_bits, flags)
        entry = self._leaf_entry(vaddr, allocator)
        assert entry is not None
        self.memory.write_word(entry, pte)
        self.tlb.invalidate(vaddr >> self._page_bits)

    def unmap(self, vaddr: int) -> None:
        """Clear the leaf PTE for the page of ``vaddr`` and drop its TLB entry.

        Tables are not freed.  Raises :class:`PagingError` if nothing is mapped.

        >>> from virtcore.hw.memory import FrameAllocator, PhysicalMemory
        >>> mem = PhysicalMemory(1024, 32)
        >>> alloc = FrameAllocator(mem, reserved=[0])
        >>> mmu = MMU(mem, PagingConfig.tiny()); mmu.set_root(mmu.alloc_table(alloc))
        >>> mmu.map(0x40, 0x80, allocator=alloc); mmu.unmap(0x47)
        >>> mmu.mappings()
        []
        """
        if not 0 <= vaddr < self._va_limit:
            raise PagingError(f"{vaddr:#x} is outside the {self.config.va_bits}-bit address space")
        entry = self._leaf_entry(vaddr, None)
        if entry is None or not self.memory.words[entry >> 2] & PTE_P:
            raise PagingError(f"{vaddr:#x} is not mapped")
        self.memory.write_word(entry, 0)
        self.tlb.invalidate(vaddr >> self._page_bits)

    def mappings(self) -> list[tuple[int, int, int]]:
        """Every present leaf as ``(vaddr, paddr, flags)``, in address order.

        Physical addresses are in this MMU's physical space (guest-physical
        under nesting).  Tables the nested MMU does not map are skipped.
        """
        out: list[tuple[int, int, int]] = []
        words = self.memory.words
        page_bits = self._page_bits
        count = self.config.entries_per_table

        def visit(table: int, depth: int, base: int) -> None:
            level, shift = self._levels[depth]
            try:
                host = self._host_address(table)
            except (PagingError, AddressError):
                return
            for index in range(count):
                pte = words[(host >> 2) + index]
                if not pte & PTE_P:
                    continue
                vaddr = base | (index << shift)
                frame = (pte >> PTE_PFN_SHIFT) << page_bits
                if level == 1:
                    out.append((vaddr, frame, pte & PTE_FLAGS_MASK))
                else:
                    visit(frame, depth + 1, vaddr)

        visit(self.root, 0, 0)
        return out
