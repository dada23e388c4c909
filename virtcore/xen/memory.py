"""Machine memory (机器内存) as Xen sees it: frames, the frame table, M2P and each domain's P2M.

Xen owns the machine.  Every 4 KiB machine frame has an entry in the *frame table* (Xen's
``struct page_info``) saying who owns it and what it is currently used as; a global *M2P* table
maps each machine frame back to the pseudo-physical frame its owner calls it; each domain has a
*P2M* table for the inverse [XIG §"Pseudo-physical memory"; XEN-ARCH-X86].

Three address spaces, three types (names per [XEN-MM-H])
---------------------------------------------------------
- **guest virtual** (客户机虚拟地址) — :data:`GVA`: what the guest's programs use.
- **pseudo-physical** (伪物理地址) — :data:`PFN` / :data:`GPA`: "a linear idea of a guest
  physical address space", contiguous from 0, per domain.  :data:`GFN` is "the value a guest
  puts in its own pagetables": for a PV (non-translated) guest ``gfn == mfn``; for an
  auto-translated guest (HVM with shadow or EPT) ``gfn == pfn``.
- **machine** (机器地址) — :data:`MFN` / :data:`MADDR`: the host's real frames.

Beware the clash of names: Xen's *pfn* is the guest's pseudo-physical frame, while KVM's *pfn*
is a *host* frame (KVM calls the guest's ``gfn``) [XEN-MM-H; KVM-MMU].  The types are
:class:`typing.NewType` over ``int`` — free at run time (the hot paths stay plain ints) but mypy
rejects an ``MFN`` where a ``PFN`` is expected.

The rules modelled (Xen's names)
--------------------------------
1. **Page types and two counts** [XEN-MM-C; XEN-ASM-MM]: every frame has ``count_info``
   (``tot_count``: all references) and ``type_info`` (a type ``PGT_*`` and ``type_count``:
   references *as that type*).  "A page can only change its type when its type count is zero"
   — ``_get_page_type()``; a reference of the wrong type fails with ``-EINVAL`` ("Bad type").
   So a frame cannot be a page table (``PGT_l1_page_table`` …) and writable
   (``PGT_writable_page``) at once.
2. **Validation on type change**: when a frame becomes a page-table type Xen validates every
   entry (``alloc_page_type()`` → ``alloc_l1_table()`` …) and sets ``PGT_validated``; when the
   type count drops to 0 it releases what the entries referenced (``free_page_type()``).  Here
   the MMU model supplies those two steps through :attr:`MachineMemory.alloc_page_type` and
   :attr:`MachineMemory.free_page_type`; without them any type change is accepted as valid.
3. **Ownership**: ``get_page(page, d)`` takes a general reference only if ``d`` owns the
   frame.  Allocation holds one reference (``PGC_allocated``); a frame returns to the free heap
   when its last reference is put (``put_page()`` → ``free_domheap_page()``).
4. **M2P and P2M** [XIG; XEN-MEMORY]: ``populate_physmap`` allocates frames for pseudo-physical
   frames and sets both tables; ``decrease_reservation`` (the balloon driver's call) gives
   frames back: the P2M entry becomes invalid, the M2P entry ``INVALID_M2P_ENTRY``, and the
   allocation reference is dropped — a frame still mapped somewhere stays the domain's until its
   last reference goes, as in ``guest_remove_page()``.  So P2M and M2P are always inverse.

What the model simplifies (to say in class)
-------------------------------------------
- ``type_info``/``count_info`` are separate fields, not packed bits (Xen keeps the type in the
  top 3 bits: ``PGT_l1_page_table`` is ``1 << 61``; here it is ``1``); no ``PGT_partial`` /
  preemptible validation, no ``PGT_locked``, no overflow checks, no concurrency.
- Hypercall-style calls return Xen's negative errno values [XEN-ERRNO] and never raise for
  guest-controlled input; host-side misuse (a wrong Python type, a bad configuration) raises a
  :class:`~virtcore.errors.VirtcoreError`.
- Frames are scrubbed (zeroed) when allocated, not when freed; no NUMA, no memory sharing, no
  paging-to-disk, one ``max_pages`` limit per domain.

>>> machine = MachineMemory(16)
>>> dom1 = machine.new_domain_memory(1, max_pages=4)
>>> dom1.populate_physmap([0, 1, 2])
3
>>> mfn = dom1.pfn_to_mfn(PFN(2)); (mfn, dom1.mfn_to_pfn(mfn), machine.owner_of(mfn))
(2, 2, 1)
>>> machine.get_page_type(mfn, PGT_writable_page), machine.get_page_type(mfn, PGT_l1_page_table)
(0, -22)
>>> machine.page_info(mfn)
PageInfo(mfn=0x2, owner=d1, type=PGT_writable_page, type_count=1, count=1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NewType

from virtcore.errors import ConfigurationError, VirtcoreError
from virtcore.hw.memory import FrameAllocator, OutOfFramesError, PhysicalMemory

__all__ = [
    "DOMID_IO",
    "DOMID_SELF",
    "DOMID_XEN",
    "EACCES",
    "EBUSY",
    "EEXIST",
    "EFAULT",
    "EINVAL",
    "ENOENT",
    "ENOMEM",
    "ENOSYS",
    "EPERM",
    "ESRCH",
    "GFN",
    "GPA",
    "GVA",
    "INVALID_M2P_ENTRY",
    "INVALID_MFN",
    "MADDR",
    "MFN",
    "PFN",
    "PGT_NAMES",
    "DomainMemory",
    "MachineMemory",
    "MemorySnapshot",
    "PGT_l1_page_table",
    "PGT_l2_page_table",
    "PGT_l3_page_table",
    "PGT_l4_page_table",
    "PGT_none",
    "PGT_seg_desc_page",
    "PGT_shared_page",
    "PGT_writable_page",
    "PageInfo",
    "XenMemoryError",
    "gpa_to_pfn",
    "maddr_to_mfn",
    "mfn_to_maddr",
    "pfn_to_gpa",
]

# -- the three address spaces [XEN-MM-H] ------------------------------------------------------

GVA = NewType("GVA", int)
"""A guest virtual address."""
PFN = NewType("PFN", int)
"""A pseudo-physical frame number (per domain, contiguous from 0) — Xen's *pfn*."""
GPA = NewType("GPA", int)
"""A guest pseudo-physical byte address (``pfn << page_bits | offset``)."""
GFN = NewType("GFN", int)
"""The frame number a guest writes in its page tables: an MFN for PV, a PFN when translated."""
MFN = NewType("MFN", int)
"""A machine frame number — the host's real frame (KVM calls this a *pfn*)."""
MADDR = NewType("MADDR", int)
"""A machine byte address (``mfn << page_bits | offset``)."""

# -- numbers from Xen ------------------------------------------------------------------------

#: Special domain ids [XEN-H]: ids >= DOMID_FIRST_RESERVED (0x7FF0) are never ordinary domains.
DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_XEN = 0x7FF2

#: Page types, the index Xen keeps in bits 61-63 of ``type_info`` [XEN-ASM-MM].
PGT_none = 0
PGT_l1_page_table = 1
PGT_l2_page_table = 2
PGT_l3_page_table = 3
PGT_l4_page_table = 4
PGT_seg_desc_page = 5
PGT_shared_page = 6
PGT_writable_page = 7
PGT_NAMES = ("PGT_none", "PGT_l1_page_table", "PGT_l2_page_table", "PGT_l3_page_table",
             "PGT_l4_page_table", "PGT_seg_desc_page", "PGT_shared_page", "PGT_writable_page")

#: Xen's error numbers (public/errno.h, the Linux values) [XEN-ERRNO]; calls return them negated.
EPERM = 1
ENOENT = 2
ESRCH = 3
ENOMEM = 12
EACCES = 13
EFAULT = 14
EBUSY = 16
EEXIST = 17
EINVAL = 22
ENOSYS = 38

#: ``INVALID_M2P_ENTRY`` is ``~0UL`` and ``INVALID_MFN`` is ``~0UL`` in Xen [XEN-ASM-MM]; both
#: are all-ones 64-bit values here.
INVALID_M2P_ENTRY = (1 << 64) - 1
INVALID_MFN = (1 << 64) - 1

_FREE = -1  # internal owner value of a frame on the free heap


class XenMemoryError(VirtcoreError, ValueError):
    """Host-side misuse of the machine-memory model (not a guest's bad request)."""


def mfn_to_maddr(mfn: MFN, page_bits: int = 12) -> MADDR:
    """The machine address where frame ``mfn`` starts.

    >>> hex(mfn_to_maddr(MFN(5)))
    '0x5000'
    """
    return MADDR(mfn << page_bits)


def maddr_to_mfn(maddr: MADDR, page_bits: int = 12) -> MFN:
    """The machine frame holding ``maddr``.

    >>> maddr_to_mfn(MADDR(0x5abc))
    5
    """
    return MFN(maddr >> page_bits)


def pfn_to_gpa(pfn: PFN, page_bits: int = 12) -> GPA:
    """The pseudo-physical address where ``pfn`` starts.

    >>> hex(pfn_to_gpa(PFN(3)))
    '0x3000'
    """
    return GPA(pfn << page_bits)


def gpa_to_pfn(gpa: GPA, page_bits: int = 12) -> PFN:
    """The pseudo-physical frame holding ``gpa``.

    >>> gpa_to_pfn(GPA(0x3fff))
    3
    """
    return PFN(gpa >> page_bits)


def _domname(domid: int | None) -> str:
    if domid is None:
        return "free"
    if domid == DOMID_XEN:
        return "DOMID_XEN"
    if domid == DOMID_IO:
        return "DOMID_IO"
    return f"d{domid}"


@dataclass(frozen=True)
class PageInfo:
    """One frame-table entry, a read-only view of Xen's ``struct page_info`` [XEN-ASM-MM].

    Attributes
    ----------
    mfn : int
        The machine frame.
    owner : int or None
        Owning domid (``DOMID_XEN`` for Xen's own frames), None if free.
    type : int
        ``PGT_*`` (kept after the type count drops to 0, as in Xen).
    type_count : int
        References held *as* ``type``.
    count : int
        All references (``count_info & PGC_count_mask``; the allocation holds one).
    pinned, validated : bool
        ``PGT_pinned`` / ``PGT_validated``.
    m2p : int
        The M2P entry: the owner's pseudo-physical frame, or ``INVALID_M2P_ENTRY``.
    """

    mfn: int
    owner: int | None
    type: int
    type_count: int
    count: int
    pinned: bool = False
    validated: bool = False
    m2p: int = INVALID_M2P_ENTRY

    @property
    def type_name(self) -> str:
        """``PGT_*`` by name."""
        return PGT_NAMES[self.type]

    def __repr__(self) -> str:
        flags = "".join((", pinned" if self.pinned else "",
                         ", validated" if self.validated and self.type in _PT_TYPES else ""))
        return (f"PageInfo(mfn={self.mfn:#x}, owner={_domname(self.owner)}, type={self.type_name},"
                f" type_count={self.type_count}, count={self.count}{flags})")


_PT_TYPES = frozenset({PGT_l1_page_table, PGT_l2_page_table, PGT_l3_page_table,
                       PGT_l4_page_table})


@dataclass(frozen=True)
class MemorySnapshot:
    """Everything in a :class:`MachineMemory`, for equality checks ("a rejected call changed
    nothing").  Compare two snapshots with ``==``."""

    words: tuple[int, ...]
    owner: tuple[int, ...]
    type: tuple[int, ...]
    type_count: tuple[int, ...]
    count: tuple[int, ...]
    pinned: tuple[bool, ...]
    validated: tuple[bool, ...]
    allocated: tuple[bool, ...]
    m2p: tuple[int, ...]
    p2m: tuple[tuple[int, tuple[tuple[int, int], ...], int, int], ...]
    extra: tuple[object, ...] = ()


class MachineMemory:
    """The host's machine frames, Xen's frame table and the global M2P table.

    Parameters
    ----------
    nframes : int
        Machine frames installed.
    frame_size : int
        Bytes per frame: 4096 (x86), or a teaching size such as 32 (unrealistically small,
        for tracing by hand).
    reserved : iterable of int
        Frames never handed out (owned by nobody, never mappable).

    Attributes
    ----------
    physical : PhysicalMemory
        The frames' contents (reused from :mod:`virtcore.hw.memory`).
    allocator : FrameAllocator
        Xen's heap (lowest free frame first, zero-filled).
    domains : dict of int to DomainMemory
        Each domain's P2M, by domid.
    alloc_page_type, free_page_type : callable or None
        Validation hooks (Xen's ``alloc_page_type()`` / ``free_page_type()``), installed by the
        MMU model: ``alloc_page_type(mfn, type) -> 0 or -errno`` when a frame takes a
        page-table type, ``free_page_type(mfn, type)`` when its type count drops to 0.
    tlb_flush_hook : callable or None
        Called as ``tlb_flush_hook(mfn)`` when a frame stops being a writable page (its type
        changes) or is freed, so stale TLB entries cannot reach it — Xen flushes the TLBs of
        the CPUs that may hold them in ``_get_page_type()`` and before reusing a freed page
        (``tlbflush_timestamp``); the model's MMU flushes every TLB it knows.
    generation : int
        Bumped by every state change of the frame table or a P2M (cheap change detection).

    Examples
    --------
    >>> m = MachineMemory(8, frame_size=32)
    >>> m
    MachineMemory(8 frames of 32 bytes: 8 free, 0 domains)
    >>> mfn = m.alloc(DOMID_XEN); m.page_info(mfn)
    PageInfo(mfn=0x0, owner=DOMID_XEN, type=PGT_none, type_count=0, count=1)
    >>> m.write_word(mfn, 4, 0xCAFE); hex(m.read_word(mfn, 4))
    '0xcafe'
    >>> m.free(mfn), m.owner_of(mfn)
    (0, None)
    """

    def __init__(self, nframes: int, frame_size: int = 4096, *,
                 reserved: Iterable[int] = ()) -> None:
        if not isinstance(nframes, int) or isinstance(nframes, bool) or nframes <= 0:
            raise ConfigurationError(f"nframes {nframes!r} is not a positive int")
        self.physical: PhysicalMemory = PhysicalMemory(nframes * frame_size, frame_size)
        self.allocator: FrameAllocator = FrameAllocator(self.physical, reserved)
        self.nframes: int = nframes
        self.frame_size: int = frame_size
        self.page_bits: int = self.physical.frame_bits
        # the frame table, one list per field (hot paths index them directly)
        self.owner: list[int] = [_FREE] * nframes
        self.type: list[int] = [PGT_none] * nframes
        self.type_count: list[int] = [0] * nframes
        self.count: list[int] = [0] * nframes
        self.pinned: list[bool] = [False] * nframes
        self.validated: list[bool] = [False] * nframes
        self.allocated: list[bool] = [False] * nframes
        self.m2p: list[int] = [INVALID_M2P_ENTRY] * nframes
        self.domains: dict[int, DomainMemory] = {}
        self.alloc_page_type: Callable[[int, int], int] | None = None
        self.free_page_type: Callable[[int, int], None] | None = None
        self.tlb_flush_hook: Callable[[int], None] | None = None
        self.generation: int = 0

    def __repr__(self) -> str:
        return (f"MachineMemory({self.nframes} frames of {self.frame_size} bytes:"
                f" {self.allocator.free_count} free, {len(self.domains)} domains)")

    # -- frames ----------------------------------------------------------------------------------

    def valid_mfn(self, mfn: int) -> bool:
        """True if ``mfn`` names an installed frame (Xen's ``mfn_valid()``).

        >>> MachineMemory(4).valid_mfn(4)
        False
        """
        return isinstance(mfn, int) and 0 <= mfn < self.nframes

    def alloc(self, domid: int) -> MFN:
        """A free frame, zeroed, owned by ``domid`` with the allocation reference held.

        Raises :class:`~virtcore.hw.memory.OutOfFramesError` when the heap is empty (a host-side
        call; :meth:`DomainMemory.populate_physmap` turns it into ``-ENOMEM``).

        >>> m = MachineMemory(2); m.alloc(3), m.alloc(DOMID_XEN), m.owner_of(MFN(0))
        (0, 1, 3)
        """
        if not isinstance(domid, int) or not (0 <= domid < DOMID_SELF or domid == DOMID_XEN):
            raise XenMemoryError(f"{domid!r} is not a domid that can own memory")
        mfn = self.allocator.alloc()
        self.owner[mfn] = domid
        self.type[mfn] = PGT_none
        self.type_count[mfn] = 0
        self.count[mfn] = 1  # the reference PGC_allocated stands for
        self.allocated[mfn] = True
        dom = self.domains.get(domid)
        if dom is not None:
            dom.tot_pages += 1
        self.pinned[mfn] = False
        self.validated[mfn] = False
        self.m2p[mfn] = INVALID_M2P_ENTRY
        self.generation += 1
        return MFN(mfn)

    def free(self, mfn: MFN) -> int:
        """Drop the allocation reference of ``mfn`` (0, or ``-EINVAL`` if it is not allocated).

        The frame goes back to the heap when no other reference remains; a frame still mapped
        or typed stays with its owner until then.  If the frame backs a pseudo-physical frame,
        that P2M entry and the M2P entry are invalidated first (P2M and M2P stay inverse).
        """
        if not self.valid_mfn(mfn) or self.owner[mfn] == _FREE or not self.allocated[mfn]:
            return -EINVAL
        pfn = self.m2p[mfn]
        dom = self.domains.get(self.owner[mfn])
        if dom is not None:
            dom.tot_pages -= 1
            if pfn != INVALID_M2P_ENTRY and dom.p2m.get(pfn) == mfn:
                del dom.p2m[pfn]
        self.m2p[mfn] = INVALID_M2P_ENTRY
        self.allocated[mfn] = False
        self.put_page(mfn)
        return 0

    def owner_of(self, mfn: MFN) -> int | None:
        """The domid owning ``mfn``, or None if it is free (or not installed).

        >>> MachineMemory(2).owner_of(MFN(1)) is None
        True
        """
        if not self.valid_mfn(mfn):
            return None
        owner = self.owner[mfn]
        return None if owner == _FREE else owner

    def page_info(self, mfn: MFN) -> PageInfo:
        """The frame-table entry of ``mfn`` as a readable value."""
        if not self.valid_mfn(mfn):
            raise XenMemoryError(f"mfn {mfn!r} is not installed (0..{self.nframes - 1})")
        return PageInfo(mfn, self.owner_of(mfn), self.type[mfn], self.type_count[mfn],
                        self.count[mfn], self.pinned[mfn], self.validated[mfn], self.m2p[mfn])

    def frames_of(self, domid: int) -> list[MFN]:
        """Every frame owned by ``domid``, in order.

        >>> m = MachineMemory(4); _ = m.alloc(2); _ = m.alloc(1); _ = m.alloc(2)
        >>> m.frames_of(2)
        [0, 2]
        """
        return [MFN(f) for f, owner in enumerate(self.owner) if owner == domid]

    # -- contents --------------------------------------------------------------------------------

    def maddr(self, mfn: MFN, offset: int = 0) -> MADDR:
        """The machine address of byte ``offset`` in frame ``mfn``.

        >>> hex(MachineMemory(4, 32).maddr(MFN(2), 8))
        '0x48'
        """
        if not self.valid_mfn(mfn) or not 0 <= offset < self.frame_size:
            raise XenMemoryError(f"no byte {offset!r} in machine frame {mfn!r}")
        return MADDR((mfn << self.page_bits) | offset)

    def read_word(self, mfn: MFN, offset: int) -> int:
        """The 32-bit word at byte ``offset`` (a multiple of 4) of frame ``mfn``."""
        return self.physical.read_word(self.maddr(mfn, offset))

    def write_word(self, mfn: MFN, offset: int, value: int) -> None:
        """Store a 32-bit word at byte ``offset`` of frame ``mfn`` (host side: no checks of
        types; guests change page tables only through the validated hypercalls)."""
        self.physical.write_word(self.maddr(mfn, offset), value)

    def read_bytes(self, mfn: MFN, offset: int, n: int) -> bytes:
        """``n`` bytes from byte ``offset`` of frame ``mfn`` (within the frame).

        >>> m = MachineMemory(2, 32); m.write_bytes(MFN(1), 3, b"xen"); m.read_bytes(MFN(1), 3, 3)
        b'xen'
        """
        if n < 0 or offset + n > self.frame_size:
            raise XenMemoryError(f"{n} bytes from offset {offset} leave the frame")
        return self.physical.read_bytes(self.maddr(mfn, offset), n)

    def write_bytes(self, mfn: MFN, offset: int, data: bytes) -> None:
        """Store ``data`` from byte ``offset`` of frame ``mfn`` (within the frame)."""
        if offset + len(data) > self.frame_size:
            raise XenMemoryError(f"{len(data)} bytes from offset {offset} leave the frame")
        self.physical.write_bytes(self.maddr(mfn, offset), data)

    # -- references and types [XEN-MM-C] ----------------------------------------------------------

    def get_page(self, mfn: MFN, domid: int) -> int:
        """Take a general reference on ``mfn`` for ``domid`` — Xen's ``get_page()``.

        Succeeds (0) only if ``domid`` owns the frame; else ``-EINVAL`` (Xen's returns false and
        its callers turn that into ``-EINVAL`` or ``-EBUSY``).

        >>> m = MachineMemory(2); mfn = m.alloc(1)
        >>> m.get_page(mfn, 1), m.get_page(mfn, 2), m.count[mfn]
        (0, -22, 2)
        """
        if not self.valid_mfn(mfn) or self.owner[mfn] != domid or domid == _FREE:
            return -EINVAL
        self.count[mfn] += 1
        self.generation += 1
        return 0

    def put_page(self, mfn: MFN) -> None:
        """Drop a general reference; the frame is freed when the last one goes."""
        count = self.count
        if count[mfn] <= 0:
            raise XenMemoryError(f"put_page on mfn {mfn:#x} with no references")
        count[mfn] -= 1
        self.generation += 1
        if count[mfn] == 0:
            if self.type_count[mfn] or self.allocated[mfn]:
                raise XenMemoryError(f"mfn {mfn:#x} freed while still allocated or typed")
            self.owner[mfn] = _FREE
            self.type[mfn] = PGT_none
            self.pinned[mfn] = self.validated[mfn] = False
            self.m2p[mfn] = INVALID_M2P_ENTRY
            self.allocator.free(mfn)
            if self.tlb_flush_hook is not None:
                self.tlb_flush_hook(mfn)

    def get_page_type(self, mfn: MFN, type: int) -> int:
        """Take a type reference — Xen's ``_get_page_type()``.

        With type count 0 the frame may change type (and a page-table type is validated
        through :attr:`alloc_page_type`); with references held it must already have ``type``,
        else ``-EINVAL`` ("Bad type").  The frame must be allocated (``-EINVAL`` otherwise).

        Examples
        --------
        >>> m = MachineMemory(2); mfn = m.alloc(1)
        >>> m.get_page_type(mfn, PGT_l1_page_table), m.get_page_type(mfn, PGT_writable_page)
        (0, -22)
        >>> m.put_page_type(mfn); m.get_page_type(mfn, PGT_writable_page)
        0
        """
        if not self.valid_mfn(mfn) or self.owner[mfn] == _FREE or not 0 <= type <= 7:
            return -EINVAL
        tc = self.type_count[mfn]
        if tc == 0:
            if self.type[mfn] != type or not self.validated[mfn]:
                if self.type[mfn] == PGT_writable_page and self.tlb_flush_hook is not None:
                    self.tlb_flush_hook(mfn)
                self.type[mfn] = type
                self.validated[mfn] = False
                self.type_count[mfn] = 1
                self.generation += 1
                if type in _PT_TYPES and self.alloc_page_type is not None:
                    rc = self.alloc_page_type(mfn, type)
                    if rc < 0:
                        self.type_count[mfn] = 0
                        return rc
                self.validated[mfn] = True
                return 0
        elif self.type[mfn] != type:
            return -EINVAL
        self.type_count[mfn] = tc + 1
        self.generation += 1
        return 0

    def put_page_type(self, mfn: MFN) -> None:
        """Drop a type reference — Xen's ``put_page_type()``.

        When the count drops to 0 a page-table frame is de-validated (``free_page_type()``:
        the references its entries held are released); the type itself stays recorded.
        """
        tc = self.type_count[mfn]
        if tc <= 0:
            raise XenMemoryError(f"put_page_type on mfn {mfn:#x} with type count 0")
        self.type_count[mfn] = tc - 1
        self.generation += 1
        if tc == 1:
            t = self.type[mfn]
            if t in _PT_TYPES:
                self.validated[mfn] = False
                if self.free_page_type is not None:
                    self.free_page_type(mfn, t)

    def get_page_and_type(self, mfn: MFN, domid: int, type: int) -> int:
        """:meth:`get_page` then :meth:`get_page_type`; on failure nothing is held.

        >>> m = MachineMemory(2); mfn = m.alloc(1)
        >>> m.get_page_and_type(mfn, 2, PGT_writable_page), m.count[mfn]
        (-22, 1)
        """
        rc = self.get_page(mfn, domid)
        if rc:
            return rc
        rc = self.get_page_type(mfn, type)
        if rc:
            self.put_page(mfn)
        return rc

    def put_page_and_type(self, mfn: MFN) -> None:
        """:meth:`put_page_type` then :meth:`put_page`."""
        self.put_page_type(mfn)
        self.put_page(mfn)

    # -- domains ---------------------------------------------------------------------------------

    def new_domain_memory(self, domid: int, max_pages: int) -> DomainMemory:
        """Create (and register) the pseudo-physical memory of domain ``domid``.

        >>> MachineMemory(4).new_domain_memory(1, 2)
        DomainMemory(d1: 0/2 pages populated)
        """
        if not isinstance(domid, int) or not 0 <= domid < DOMID_SELF:
            raise XenMemoryError(f"{domid!r} is not an ordinary domid (0..0x7fef)")
        if domid in self.domains:
            raise XenMemoryError(f"domain {domid} already has memory")
        dom = DomainMemory(self, domid, max_pages)
        self.domains[domid] = dom
        self.generation += 1
        return dom

    def destroy_domain_memory(self, domid: int) -> int:
        """Give back everything domain ``domid`` holds — Xen's ``domain_relinquish_resources()``
        → ``relinquish_memory()``: pins are dropped (``put_page_and_type``), then every
        allocation reference, and the P2M is unregistered.  Frames still referenced from
        elsewhere (grant-mapped by another domain, or a base pointer the caller has not dropped)
        stay owned by ``domid`` until their last reference goes.  Returns the number of frames
        whose allocation reference was dropped.

        >>> m = MachineMemory(4); d = m.new_domain_memory(1, 4); _ = d.populate_physmap([0, 1])
        >>> m.get_page(MFN(1), 1)              # someone still holds frame 1
        0
        >>> m.destroy_domain_memory(1), m.owner_of(MFN(0)), m.owner_of(MFN(1)), m.domains
        (2, None, 1, {})
        """
        if domid not in self.domains:
            raise XenMemoryError(f"d{domid} has no memory to destroy")
        for mfn in range(self.nframes):
            if self.owner[mfn] == domid and self.pinned[mfn]:
                self.pinned[mfn] = False
                self.put_page_and_type(MFN(mfn))
        dropped = 0
        for mfn in range(self.nframes):
            if self.owner[mfn] == domid and self.allocated[mfn]:
                self.free(MFN(mfn))
                dropped += 1
        del self.domains[domid]
        self.generation += 1
        return dropped

    def check_invariants(self) -> None:
        """Raise :class:`XenMemoryError` unless P2M and M2P are inverse and counts are sane.

        >>> m = MachineMemory(4); d = m.new_domain_memory(1, 4); _ = d.populate_physmap([0, 3])
        >>> m.check_invariants()
        """
        for domid, dom in self.domains.items():
            for pfn, mfn in dom.p2m.items():
                if self.owner[mfn] != domid or self.m2p[mfn] != pfn:
                    raise XenMemoryError(f"d{domid}: p2m[{pfn:#x}] = {mfn:#x} but m2p says"
                                         f" {self.m2p[mfn]:#x}, owner {self.owner[mfn]}")
        for mfn in range(self.nframes):
            pfn = self.m2p[mfn]
            if pfn != INVALID_M2P_ENTRY:
                owner_dom = self.domains.get(self.owner[mfn])
                if owner_dom is None or owner_dom.p2m.get(pfn) != mfn:
                    raise XenMemoryError(f"m2p[{mfn:#x}] = {pfn:#x} has no matching p2m entry")
            if self.owner[mfn] == _FREE and (self.count[mfn] or self.type_count[mfn]):
                raise XenMemoryError(f"free mfn {mfn:#x} holds references")
            if self.type_count[mfn] > self.count[mfn]:
                raise XenMemoryError(f"mfn {mfn:#x}: more type references than references")
        for domid, dom in self.domains.items():
            held = sum(1 for f in range(self.nframes)
                       if self.owner[f] == domid and self.allocated[f])
            if held != dom.tot_pages:
                raise XenMemoryError(f"d{domid}: tot_pages {dom.tot_pages} but {held} allocated")

    def snapshot(self, extra: tuple[object, ...] = ()) -> MemorySnapshot:
        """All state, for comparing before and after (``extra`` adds the caller's own state).

        A frame whose type count is 0 has no type in force: Xen keeps the stale type bits
        (the next :meth:`get_page_type` may change them freely), so the snapshot records such
        a frame as ``PGT_none``, not validated.
        """
        p2m = tuple(sorted((d, tuple(sorted(dm.p2m.items())), dm.max_pages, dm.nr_pages)
                           for d, dm in self.domains.items()))
        tc = self.type_count
        types = tuple(t if c else PGT_none for t, c in zip(self.type, tc))
        valid = tuple(v and c > 0 for v, c in zip(self.validated, tc))
        return MemorySnapshot(tuple(self.physical.words), tuple(self.owner), types, tuple(tc),
                              tuple(self.count), tuple(self.pinned), valid,
                              tuple(self.allocated), tuple(self.m2p), p2m, extra)


class DomainMemory:
    """One domain's pseudo-physical memory: its P2M (PFN → MFN) and page accounting.

    Create with :meth:`MachineMemory.new_domain_memory`.  ``p2m`` is a dict (holes are absent:
    ballooned-out or never populated frames).

    Examples
    --------
    >>> m = MachineMemory(8)
    >>> d = m.new_domain_memory(1, max_pages=3)
    >>> d.populate_physmap([0, 1, 5, 6])      # the 4th exceeds max_pages: 3 done
    3
    >>> d.p2m_table()
    {0: 0, 1: 1, 5: 2}
    >>> d.decrease_reservation([1, 7])         # pfn 7 is not populated: 1 done
    1
    >>> d.nr_pages, d.pfn_to_mfn(PFN(1)) == INVALID_MFN, m.owner_of(MFN(1))
    (2, True, None)
    """

    def __init__(self, machine: MachineMemory, domid: int, max_pages: int) -> None:
        if not isinstance(max_pages, int) or max_pages < 0:
            raise XenMemoryError(f"max_pages {max_pages!r} is not a non-negative int")
        self.machine: MachineMemory = machine
        self.domid: int = domid
        self.max_pages: int = max_pages
        self.tot_pages: int = 0
        self.p2m: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"DomainMemory(d{self.domid}: {self.nr_pages}/{self.max_pages} pages populated)"

    @property
    def nr_pages(self) -> int:
        """Frames allocated to the domain (Xen's ``tot_pages``; :attr:`max_pages` caps it)."""
        return self.tot_pages

    def pfn_to_mfn(self, pfn: PFN) -> MFN:
        """The machine frame behind ``pfn``, or ``INVALID_MFN`` for a hole.

        >>> m = MachineMemory(4); d = m.new_domain_memory(1, 4); _ = d.populate_physmap([2])
        >>> d.pfn_to_mfn(PFN(2)), d.pfn_to_mfn(PFN(3)) == INVALID_MFN
        (0, True)
        """
        return MFN(self.p2m.get(pfn, INVALID_MFN))

    def mfn_to_pfn(self, mfn: MFN) -> PFN:
        """The pseudo-physical frame of ``mfn`` read from the global M2P, or
        ``INVALID_M2P_ENTRY`` (also for a frame this domain does not own)."""
        m = self.machine
        if not m.valid_mfn(mfn) or m.owner[mfn] != self.domid:
            return PFN(INVALID_M2P_ENTRY)
        return PFN(m.m2p[mfn])

    def p2m_table(self) -> dict[int, int]:
        """The P2M as a sorted plain dict (for display)."""
        return dict(sorted(self.p2m.items()))

    def populate_physmap(self, pfns: Iterable[int]) -> int:
        """``XENMEM_populate_physmap`` (6): back each ``pfn`` with a fresh machine frame.

        Returns the number of extents done; it stops at the first that fails (already
        populated, or over ``max_pages``, or no free frame), as Xen's ``populate_physmap()``
        reports ``nr_done`` [XEN-MEMORY].
        """
        m = self.machine
        done = 0
        for pfn in pfns:
            if not isinstance(pfn, int) or pfn < 0 or pfn in self.p2m:
                break
            if self.nr_pages >= self.max_pages:
                break
            try:
                mfn = m.alloc(self.domid)
            except OutOfFramesError:
                break
            self.p2m[pfn] = mfn
            m.m2p[mfn] = pfn
            done += 1
        return done

    def decrease_reservation(self, pfns: Iterable[int]) -> int:
        """``XENMEM_decrease_reservation`` (1), the balloon driver's call: give frames back.

        For each ``pfn``: the P2M hole and ``INVALID_M2P_ENTRY`` are written, and the
        allocation reference dropped (``guest_remove_page()``); a frame still referenced — e.g.
        mapped by a page table — stays this domain's until its last reference goes.  Returns
        the number done; stops at the first pfn that is not populated.
        """
        m = self.machine
        done = 0
        for pfn in pfns:
            mfn = self.p2m.get(pfn) if isinstance(pfn, int) else None
            if mfn is None:
                break
            m.free(MFN(mfn))
            done += 1
        return done

    def set_m2p(self, mfn: MFN, pfn: PFN) -> int:
        """``MMU_MACHPHYS_UPDATE``: the guest says "my frame ``mfn`` is now ``pfn``".

        The domain must own ``mfn`` (else ``-EINVAL``, as ``get_page_from_mfn()`` fails in
        ``do_mmu_update()``).  The P2M is updated with it, so the two tables stay inverse:
        ``pfn``'s previous frame (if another) loses its M2P entry and ``mfn``'s previous pfn
        becomes a hole.  Returns 0 or ``-EINVAL``.

        >>> m = MachineMemory(4); d = m.new_domain_memory(1, 4); _ = d.populate_physmap([0, 1])
        >>> d.set_m2p(MFN(0), PFN(7)), d.p2m_table(), m.m2p[0], m.m2p[1]
        (0, {1: 1, 7: 0}, 7, 1)
        """
        m = self.machine
        if not m.valid_mfn(mfn) or m.owner[mfn] != self.domid:
            return -EINVAL
        if not isinstance(pfn, int) or pfn < 0 or pfn >= INVALID_M2P_ENTRY:
            return -EINVAL
        old_pfn = m.m2p[mfn]
        if old_pfn != INVALID_M2P_ENTRY and self.p2m.get(old_pfn) == mfn:
            del self.p2m[old_pfn]
        other = self.p2m.get(pfn)
        if other is not None and other != mfn:
            m.m2p[other] = INVALID_M2P_ENTRY
        self.p2m[pfn] = mfn
        m.m2p[mfn] = pfn
        m.generation += 1
        return 0
