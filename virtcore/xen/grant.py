"""Grant tables (授权表): sharing frames between domains, every mapping authorised by Xen (S4.1).

The real rules, with the names of ``xen/include/public/grant_table.h`` and
``xen/common/grant_table.c`` [XEN-GNTTAB; XEN-GNTTAB-C; XEN-GRANT-TXT]:

- a domain's grant table is an array of ``struct grant_entry_v1 { uint16_t flags; domid_t
  domid; uint32_t frame; }`` (8 bytes, 512 per 4 KiB frame) that the *granting* guest writes
  directly; a ``grant_ref_t`` indexes it.  The first ``GNTTAB_NR_RESERVED_ENTRIES`` (8) are
  reserved (0 console, 1 xenstore).  The table grows to at most ``gnttab_max_frames`` frames
  (default 64) [XEN-CMDLINE].
- granting: write ``domid``, then ``frame``, then (after a barrier) ``flags =
  GTF_permit_access`` (``| GTF_readonly`` for a read-only grant).  For a PV granter ``frame``
  is a machine frame; for HVM/PVH it is a guest frame (gfn), translated through the P2M.
- mapping (``GNTTABOP_map_grant_ref`` 0, [``map_grant_ref``]) goes through Xen, which checks
  the flags (``GNTMAP_host_map`` or ``GNTMAP_device_map`` needed, else ``GNTST_bad_gntref``),
  the granting domain (``GNTST_bad_domain``), the ref's bounds (``GNTST_bad_gntref``), that the
  entry is ``GTF_permit_access`` *for the mapping domain* and — for a writable map — not
  ``GTF_readonly`` (both ``GNTST_general_error`` in ``_set_status_v1``: "Attempt to write-pin a
  r/o grant entry"), and that the granter owns the frame.  It then sets ``GTF_reading`` (and
  ``GTF_writing`` for a writable map) in the shared entry, pins the active entry, takes page
  (and, writable, ``PGT_writable_page`` type) references, installs the mapping and returns a
  **handle** (from the mapper's *maptrack* table).
- ``GNTTABOP_unmap_grant_ref`` (1): a bad handle → ``GNTST_bad_handle``, a wrong ``host_addr``
  → ``GNTST_bad_virt_addr``; the last unmap clears ``GTF_writing`` / ``GTF_reading``.
- revoking (Linux ``gnttab_end_foreign_access_ref``): CMPXCHG(flags → 0) succeeds only if
  neither ``GTF_reading`` nor ``GTF_writing`` is set: "an in-use entry cannot be revoked".
  After a successful revoke every new map or copy of the ref fails.
- ``GNTTABOP_copy`` (5): Xen copies between a granted frame and the caller's own frame (or two
  granted frames) without mapping either; ``GNTST_bad_copy_arg`` for a range outside the page.
- ``GNTTABOP_setup_table`` (2) grows the table (more than the limit: ``GNTST_general_error``);
  ``GNTTABOP_query_size`` (6) reports ``nr_frames`` and ``max_nr_frames``; acting on another
  domain needs privilege (``GNTST_permission_denied``).
- ``grant_table_op(cmd, uop, count)`` returns 0 (each op has its own ``status``) or ``-errno``
  for a bad command or count.

What the model simplifies: the table lives in Python objects (not in machine frames that are
shared with the guest); guests change entries only through :meth:`GrantTable.grant_access` and
:meth:`GrantTable.end_foreign_access` (a raw racing write is not modelled, so the "pinned entry
ignores its shared flags" corner of ``_set_status_v1`` is not reachable); v1 entries only, no
transitive or sub-page grants, no ``GNTTABOP_transfer``; ``host_addr`` is recorded (the MMU
model may install the PTE) and must be page aligned below 2**47.

>>> from virtcore.xen import Xen
>>> xen = Xen(frames=256)
>>> a = xen.create_guest("a", memory_pages=4); b = xen.create_guest("b", memory_pages=4)
>>> mfn = xen.pfn_to_mfn(a.domid, 0)
>>> ref = a.grant_table.grant_access(b.domid, mfn, readonly=True)
>>> op = GnttabMapGrantRef(host_addr=0x10000, flags=GNTMAP_host_map, ref=ref, dom=a.domid)
>>> xen.hypercall(b, HYPERVISOR_grant_table_op, GNTTABOP_map_grant_ref, op, 1)
0
>>> op.status   # writable map of a read-only grant: refused
-1
>>> op.flags |= GNTMAP_readonly; _ = xen.hypercall(b, 20, GNTTABOP_map_grant_ref, op, 1)
>>> op.status, a.grant_table.entries[ref]
(0, GrantEntry(flags=GTF_permit_access|GTF_readonly|GTF_reading, domid=2, frame=0x40))
>>> a.grant_table.end_foreign_access(ref)       # in use: the CMPXCHG fails
False
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from virtcore.xen.constants import (
    DOMID_FIRST_RESERVED,
    DOMID_SELF,
    EFAULT,
    EINVAL,
    ENOSYS,
    GNTTAB_NR_RESERVED_ENTRIES,
    GRANT_ENTRY_V1_SIZE,
    GNTCOPY_dest_gref,
    GNTCOPY_source_gref,
    GNTMAP_application_map,
    GNTMAP_contains_pte,
    GNTMAP_device_map,
    GNTMAP_host_map,
    GNTMAP_readonly,
    GNTST_bad_copy_arg,
    GNTST_bad_domain,
    GNTST_bad_gntref,
    GNTST_bad_handle,
    GNTST_bad_virt_addr,
    GNTST_general_error,
    GNTST_no_space,
    GNTST_okay,
    GNTST_permission_denied,
    GNTTABOP_copy,
    GNTTABOP_map_grant_ref,
    GNTTABOP_query_size,
    GNTTABOP_setup_table,
    GNTTABOP_unmap_grant_ref,
    GTF_permit_access,
    GTF_reading,
    GTF_readonly,
    GTF_type_mask,
    GTF_writing,
    HYPERVISOR_grant_table_op,
)

if TYPE_CHECKING:
    from virtcore.xen.domain import Domain
    from virtcore.xen.hypervisor import Xen

__all__ = [
    "MAPTRACK_MAX",
    "GNTMAP_host_map",
    "GNTMAP_readonly",
    "GNTTABOP_map_grant_ref",
    "GnttabCopy",
    "GnttabCopyPtr",
    "GnttabMapGrantRef",
    "GnttabQuerySize",
    "GnttabSetupTable",
    "GnttabUnmapGrantRef",
    "GrantEntry",
    "GrantTable",
    "HYPERVISOR_grant_table_op",
    "MapTrack",
    "Mapping",
    "do_grant_table_op",
    "flags_name",
]

#: Handles per domain's maptrack table (Xen's default ``max_maptrack_frames`` 1024 × 256).
MAPTRACK_MAX = 1024 * 256
_GTF_NAMES = ((GTF_readonly, "GTF_readonly"), (GTF_reading, "GTF_reading"),
              (GTF_writing, "GTF_writing"))


def flags_name(flags: int) -> str:
    """``GTF_permit_access|GTF_readonly`` for a flags word.

    >>> flags_name(1 | 4 | 8), flags_name(0)
    ('GTF_permit_access|GTF_readonly|GTF_reading', 'GTF_invalid')
    """
    kind = ("GTF_invalid", "GTF_permit_access", "GTF_accept_transfer",
            "GTF_transitive")[flags & GTF_type_mask]
    return "|".join([kind] + [n for bit, n in _GTF_NAMES if flags & bit])


def _int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class GrantEntry:
    """``struct grant_entry_v1`` (8 bytes)."""

    flags: int = 0
    domid: int = 0
    frame: int = 0

    def __repr__(self) -> str:
        return (f"GrantEntry(flags={flags_name(self.flags)}, domid={self.domid},"
                f" frame={self.frame:#x})")


class _Entries:
    """The shared entries, made on first touch (a table starts as zeros; most refs stay so).

    Indexable and sized like the real table (``nr_frames × 512``); ``entries[ref]`` of a ref
    never written is a fresh all-zero :class:`GrantEntry`.
    """

    __slots__ = ("_made", "_size")

    def __init__(self, size: int) -> None:
        self._made: dict[int, GrantEntry] = {}
        self._size = size

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, ref: int) -> GrantEntry:
        if not 0 <= ref < self._size:
            raise IndexError(f"grant ref {ref} outside the table (0..{self._size - 1})")
        e = self._made.get(ref)
        if e is None:
            e = self._made[ref] = GrantEntry()
        return e

    def grow(self, size: int) -> None:
        self._size = max(self._size, size)

    def made(self) -> list[tuple[int, GrantEntry]]:
        """The entries that exist (ever touched), by ref."""
        return sorted(self._made.items())

    def first_free(self, start: int) -> int:
        """The lowest ref at or above ``start`` whose flags are 0, or -1."""
        made = self._made
        for r in range(start, self._size):
            e = made.get(r)
            if e is None or e.flags == 0:
                return r
        return -1


@dataclass
class _Active:
    """``struct active_grant_entry``: pins held by mappings and what they pinned."""

    domid: int
    mfn: int
    readers: int = 0
    writers: int = 0


class GrantTable:
    """One domain's grant table: the shared entries (guest-written) and Xen's active entries.

    >>> from virtcore.xen.memory import MachineMemory
    >>> from virtcore.xen.domain import Domain
    >>> d = Domain(1, "g", "pv", MachineMemory(4).new_domain_memory(1, 1))
    >>> gt = GrantTable(d); gt.nr_frames, len(gt.entries), gt.grant_access(0, 7)
    (1, 512, 8)
    """

    def __init__(self, dom: Domain, max_frames: int = 64) -> None:
        self.dom = dom
        self.max_frames = max_frames
        self.nr_frames = 1
        self.entries = _Entries(self.per_frame)
        self.active: dict[int, _Active] = {}
        self.touched: set[int] = set()  # refs ever written (what snapshot() compares)

    @property
    def per_frame(self) -> int:
        """Entries per frame: frame size / 8 (512 for 4 KiB)."""
        return self.dom.memory.machine.frame_size // GRANT_ENTRY_V1_SIZE

    def grow(self, nr_frames: int) -> bool:
        """``gnttab_grow_table``: enlarge to ``nr_frames`` (never shrinks); False past the limit."""
        if nr_frames > self.max_frames:
            return False
        if nr_frames > self.nr_frames:
            self.nr_frames = nr_frames
            self.entries.grow(nr_frames * self.per_frame)
        return True

    # ------------------------------------------------------------------ guest side
    def grant_access(self, domid: int, frame: int, readonly: bool = False,
                     ref: int | None = None) -> int:
        """The guest grants ``domid`` access to ``frame`` (Linux ``gnttab_grant_foreign_access``).

        Picks the lowest free ref at or above 8 (or uses ``ref``); writes ``domid``, ``frame``,
        then ``flags``.  Returns the ref, or ``-1`` if the table is full / ``ref`` in use.
        """
        if ref is None:
            ref = self.entries.first_free(GNTTAB_NR_RESERVED_ENTRIES)
            if ref < 0 and self.grow(self.nr_frames + 1):
                ref = self.entries.first_free(GNTTAB_NR_RESERVED_ENTRIES)
            if ref < 0:
                return -1
        elif not (_int(ref) and 0 <= ref < len(self.entries)) or self.entries[ref].flags:
            return -1
        e = self.entries[ref]
        self.touched.add(ref)
        e.domid = domid
        e.frame = frame
        e.flags = GTF_permit_access | (GTF_readonly if readonly else 0)
        return ref

    def end_foreign_access(self, ref: int) -> bool:
        """Revoke ``ref`` (Linux ``gnttab_end_foreign_access_ref``): CMPXCHG(flags → 0).

        Fails (False, entry unchanged) while ``GTF_reading`` or ``GTF_writing`` is set.
        """
        if not (_int(ref) and 0 <= ref < len(self.entries)):
            return False
        e = self.entries[ref]
        if e.flags & (GTF_reading | GTF_writing):
            return False
        e.flags = 0
        return True

    def in_use(self) -> list[int]:
        """Refs whose entry grants something."""
        return [r for r, e in self.entries.made() if e.flags]

    def snapshot(self) -> tuple[object, ...]:
        """State for before/after comparison."""
        entries = self.entries
        return (self.nr_frames,
                tuple((r, entries[r].flags, entries[r].domid, entries[r].frame)
                      for r in sorted(self.touched)),
                tuple(sorted((r, a.domid, a.mfn, a.readers, a.writers)
                             for r, a in self.active.items())))

    def __repr__(self) -> str:
        return (f"GrantTable(d{self.dom.domid}: {self.nr_frames}/{self.max_frames} frames,"
                f" {len(self.in_use())} grants, {len(self.active)} mapped)")


@dataclass
class Mapping:
    """One maptrack entry: a granted frame mapped by this domain."""

    granter: int
    ref: int
    mfn: int
    flags: int
    host_addr: int

    @property
    def writable(self) -> bool:
        return not self.flags & GNTMAP_readonly


class MapTrack:
    """The mapping domain's maptrack table: handle → :class:`Mapping`, plus per-frame counts.

    >>> mt = MapTrack(); h = mt.add(Mapping(1, 8, 0x40, GNTMAP_host_map, 0x1000))
    >>> h, mt.allows(0x40, write=True), mt.allows(0x41, write=False)
    (0, True, False)
    """

    def __init__(self) -> None:
        self.handles: dict[int, Mapping] = {}
        self.frames: dict[int, list[int]] = {}  # mfn -> [readonly maps, writable maps]
        self._next = 0

    def full(self) -> bool:
        return len(self.handles) >= MAPTRACK_MAX

    def add(self, m: Mapping) -> int:
        h = self._next
        while h in self.handles:
            h += 1
        self._next = h + 1
        self.handles[h] = m
        self.frames.setdefault(m.mfn, [0, 0])[1 if m.writable else 0] += 1
        return h

    def remove(self, handle: int) -> Mapping:
        m = self.handles.pop(handle)
        c = self.frames[m.mfn]
        c[1 if m.writable else 0] -= 1
        if c == [0, 0]:
            del self.frames[m.mfn]
        self._next = min(self._next, handle)
        return m

    def allows(self, mfn: int, write: bool) -> bool:
        """Is ``mfn`` mapped here (writable, for a write)?"""
        c = self.frames.get(mfn)
        return c is not None and (c[1] > 0 if write else True)

    def snapshot(self) -> tuple[object, ...]:
        return tuple(sorted((h, m.granter, m.ref, m.mfn, m.flags, m.host_addr)
                            for h, m in self.handles.items()))

    def __repr__(self) -> str:
        return f"MapTrack({len(self.handles)} mappings of {len(self.frames)} frames)"


# ------------------------------------------------------------------ argument structures
@dataclass
class GnttabMapGrantRef:
    """``struct gnttab_map_grant_ref``: IN host_addr, flags, ref, dom; OUT status, handle,
    dev_bus_addr."""

    host_addr: int = 0
    flags: int = GNTMAP_host_map
    ref: int = 0
    dom: int = 0
    status: int = GNTST_okay
    handle: int = -1
    dev_bus_addr: int = 0


@dataclass
class GnttabUnmapGrantRef:
    """``struct gnttab_unmap_grant_ref``: IN host_addr, dev_bus_addr, handle; OUT status."""

    host_addr: int = 0
    dev_bus_addr: int = 0
    handle: int = 0
    status: int = GNTST_okay


@dataclass
class GnttabCopyPtr:
    """One side of a copy: a grant ``ref`` (with ``GNTCOPY_*_gref``) or the caller's ``gmfn``."""

    ref: int = 0
    gmfn: int = 0
    domid: int = DOMID_SELF
    offset: int = 0


@dataclass
class GnttabCopy:
    """``struct gnttab_copy``: IN source, dest, len, flags; OUT status."""

    source: GnttabCopyPtr = field(default_factory=GnttabCopyPtr)
    dest: GnttabCopyPtr = field(default_factory=GnttabCopyPtr)
    len: int = 0
    flags: int = 0
    status: int = GNTST_okay


@dataclass
class GnttabSetupTable:
    """``struct gnttab_setup_table``: IN dom, nr_frames; OUT status, frame_list."""

    dom: int = DOMID_SELF
    nr_frames: int = 1
    status: int = GNTST_okay
    frame_list: list[int] = field(default_factory=list)


@dataclass
class GnttabQuerySize:
    """``struct gnttab_query_size``: IN dom; OUT nr_frames, max_nr_frames, status."""

    dom: int = DOMID_SELF
    nr_frames: int = 0
    max_nr_frames: int = 0
    status: int = GNTST_okay


_STRUCTS: dict[int, type[Any]] = {
    GNTTABOP_map_grant_ref: GnttabMapGrantRef,
    GNTTABOP_unmap_grant_ref: GnttabUnmapGrantRef,
    GNTTABOP_copy: GnttabCopy,
    GNTTABOP_setup_table: GnttabSetupTable,
    GNTTABOP_query_size: GnttabQuerySize,
}


# ------------------------------------------------------------------ the operations
def _granted_mfn(xen: Xen, rd: Domain, frame: int) -> int | None:
    """The machine frame a grant's ``frame`` names, if the granter owns it."""
    mfn = frame if rd.type == "pv" else int(rd.memory.pfn_to_mfn(frame))  # type: ignore
    if xen.memory.owner_of(mfn) != rd.domid:  # type: ignore[arg-type]
        return None
    return mfn


def _check_entry(rd: Domain, ref: int, ldomid: int, readonly: bool) -> int:
    """``_set_status_v1``'s checks on the shared entry (``GNTST_okay`` or an error)."""
    assert rd.grant_table is not None
    e = rd.grant_table.entries[ref]
    if (e.flags & GTF_type_mask) != GTF_permit_access or e.domid != ldomid:
        return GNTST_general_error  # "Bad flags or dom"
    if not readonly and e.flags & GTF_readonly:
        return GNTST_general_error  # "Attempt to write-pin a r/o grant entry"
    return GNTST_okay


def _map(xen: Xen, ld: Domain, op: GnttabMapGrantRef) -> int:
    if not all(_int(x) for x in (op.host_addr, op.flags, op.ref, op.dom)):
        return GNTST_general_error
    if not op.flags & (GNTMAP_device_map | GNTMAP_host_map):
        return GNTST_bad_gntref
    if ld.type != "pv" and op.flags & (GNTMAP_device_map | GNTMAP_application_map
                                       | GNTMAP_contains_pte):
        return GNTST_general_error  # "No device mapping in HVM domain"
    rd = xen.domains.get(op.dom) if 0 <= op.dom < DOMID_FIRST_RESERVED else None
    if rd is None or rd.is_dying or rd.grant_table is None:
        return GNTST_bad_domain
    assert ld.maptrack is not None
    if ld.maptrack.full():
        return GNTST_no_space
    gt = rd.grant_table
    if not 0 <= op.ref < len(gt.entries):
        return GNTST_bad_gntref
    readonly = bool(op.flags & GNTMAP_readonly)
    rc = _check_entry(rd, op.ref, ld.domid, readonly)
    if rc:
        return rc
    e = gt.entries[op.ref]
    mfn = _granted_mfn(xen, rd, e.frame)
    if mfn is None:
        return GNTST_general_error  # "Could not pin grant frame"
    if op.flags & GNTMAP_host_map and (op.host_addr < 0 or op.host_addr & 0xFFF
                                       or op.host_addr >= 1 << 47):
        return GNTST_bad_virt_addr
    mem = xen.memory
    from virtcore.xen.memory import PGT_writable_page

    if mem.get_page(mfn, rd.domid):  # type: ignore[arg-type]
        return GNTST_general_error
    if not readonly and mem.get_page_type(mfn, PGT_writable_page):  # type: ignore[arg-type]
        mem.put_page(mfn)  # type: ignore[arg-type]
        return GNTST_general_error  # e.g. the frame is a page table
    # commit
    act = gt.active.setdefault(op.ref, _Active(ld.domid, mfn))
    if readonly:
        act.readers += 1
    else:
        act.writers += 1
    e.flags |= GTF_reading | (0 if readonly else GTF_writing)
    op.handle = ld.maptrack.add(Mapping(rd.domid, op.ref, mfn, op.flags, op.host_addr))
    op.dev_bus_addr = int(mem.maddr(mfn)) if op.flags & GNTMAP_device_map else 0  # type: ignore
    c = xen.costs
    xen.trace.add("grant", ld.domid, f"map d{rd.domid} ref {op.ref} → mfn {mfn:#x}"
                  f" ({'ro' if readonly else 'rw'}) handle {op.handle}",
                  cost=2 * c.validate + c.pte_update)
    return GNTST_okay


def _unmap_handle(xen: Xen, ld: Domain, handle: int) -> Mapping:
    """Remove one mapping (checks done); drop pins, flags and page references.

    If the virtual-MMU model is attached (``xen.mm``), the page-table entries of the mapper
    that map the frame are cleared first, as ``replace_grant_host_mapping()`` clears the PTE.
    """
    assert ld.maptrack is not None
    mapping = ld.maptrack.handles[handle]
    mm = getattr(xen, "mm", None)
    if mm is not None and mapping.flags & GNTMAP_host_map:
        mm.zap_foreign_mappings(ld.domid, mapping.mfn)
    m = ld.maptrack.remove(handle)
    rd = xen.domains.get(m.granter)
    if rd is not None and rd.grant_table is not None:
        gt = rd.grant_table
        act = gt.active.get(m.ref)
        if act is not None:
            if m.writable:
                act.writers -= 1
            else:
                act.readers -= 1
            e = gt.entries[m.ref]
            if act.writers == 0:
                e.flags &= ~GTF_writing
            if act.readers + act.writers == 0:
                e.flags &= ~GTF_reading
                del gt.active[m.ref]
    mem = xen.memory
    if m.writable:
        mem.put_page_type(m.mfn)  # type: ignore[arg-type]
    mem.put_page(m.mfn)  # type: ignore[arg-type]
    c = xen.costs
    xen.trace.add("grant", ld.domid, f"unmap handle {handle} (d{m.granter} ref {m.ref})",
                  cost=c.pte_update + c.tlb_flush)
    return m


def _unmap(xen: Xen, ld: Domain, op: GnttabUnmapGrantRef) -> int:
    assert ld.maptrack is not None
    if not all(_int(x) for x in (op.host_addr, op.dev_bus_addr, op.handle)):
        return GNTST_general_error
    m = ld.maptrack.handles.get(op.handle)
    if m is None:
        return GNTST_bad_handle
    if op.host_addr and m.flags & GNTMAP_host_map and op.host_addr != m.host_addr:
        return GNTST_bad_virt_addr
    _unmap_handle(xen, ld, op.handle)
    return GNTST_okay


def _copy_side(xen: Xen, ld: Domain, p: GnttabCopyPtr, is_gref: bool, write: bool
               ) -> tuple[int, int]:
    """(status, mfn) of one side of a copy."""
    if not all(_int(x) for x in (p.ref, p.gmfn, p.domid, p.offset)):
        return GNTST_general_error, -1
    d = xen.lookup_any(ld, p.domid)
    if d is None:
        return GNTST_bad_domain, -1
    if not is_gref:
        if d is not ld and not ld.is_privileged:
            return GNTST_permission_denied, -1
        mfn = p.gmfn if d.type == "pv" else int(d.memory.pfn_to_mfn(p.gmfn))  # type: ignore
        if xen.memory.owner_of(mfn) != d.domid:  # type: ignore[arg-type]
            return GNTST_general_error, -1
        return GNTST_okay, mfn
    assert d.grant_table is not None
    if not 0 <= p.ref < len(d.grant_table.entries):
        return GNTST_bad_gntref, -1
    rc = _check_entry(d, p.ref, ld.domid, readonly=not write)
    if rc:
        return rc, -1
    granted = _granted_mfn(xen, d, d.grant_table.entries[p.ref].frame)
    return (GNTST_general_error, -1) if granted is None else (GNTST_okay, granted)


def _copy(xen: Xen, ld: Domain, op: GnttabCopy) -> int:
    if not (isinstance(op.source, GnttabCopyPtr) and isinstance(op.dest, GnttabCopyPtr)
            and _int(op.len) and _int(op.flags)):
        return GNTST_general_error
    size = xen.memory.frame_size
    for p in (op.source, op.dest):
        if not _int(p.offset) or p.offset < 0 or op.len < 0 or p.offset + op.len > size:
            return GNTST_bad_copy_arg
    st, src = _copy_side(xen, ld, op.source, bool(op.flags & GNTCOPY_source_gref), False)
    if st:
        return st
    st, dst = _copy_side(xen, ld, op.dest, bool(op.flags & GNTCOPY_dest_gref), True)
    if st:
        return st
    mem = xen.memory
    mem.write_bytes(dst, op.dest.offset, mem.read_bytes(src, op.source.offset, op.len))  # type: ignore
    c = xen.costs
    xen.trace.add("grant", ld.domid, f"copy {op.len} bytes mfn {src:#x} → mfn {dst:#x}",
                  cost=2 * c.validate + c.page_copy * op.len / size)
    return GNTST_okay


def _setup_table(xen: Xen, ld: Domain, op: GnttabSetupTable) -> int:
    if not (_int(op.dom) and _int(op.nr_frames)) or op.nr_frames < 0:
        return GNTST_general_error
    d = xen.lookup_any(ld, op.dom)
    if d is None:
        return GNTST_bad_domain
    if d is not ld and not ld.is_privileged:
        return GNTST_permission_denied
    assert d.grant_table is not None
    if not d.grant_table.grow(op.nr_frames):
        return GNTST_general_error
    op.frame_list = list(range(op.nr_frames))
    return GNTST_okay


def _query_size(xen: Xen, ld: Domain, op: GnttabQuerySize) -> int:
    if not _int(op.dom):
        return GNTST_general_error
    d = xen.lookup_any(ld, op.dom)
    if d is None:
        return GNTST_bad_domain
    if d is not ld and not ld.is_privileged:
        return GNTST_permission_denied
    assert d.grant_table is not None
    op.nr_frames = d.grant_table.nr_frames
    op.max_nr_frames = d.grant_table.max_frames
    return GNTST_okay


_OPS: dict[int, Callable[..., int]] = {
    GNTTABOP_map_grant_ref: _map,
    GNTTABOP_unmap_grant_ref: _unmap,
    GNTTABOP_copy: _copy,
    GNTTABOP_setup_table: _setup_table,
    GNTTABOP_query_size: _query_size,
}


def do_grant_table_op(xen: Xen, dom: Domain, vcpu: int, args: tuple[Any, ...]) -> int:
    """``do_grant_table_op(cmd, uop, count)``: hypercall 20.  ``uop`` is one structure or a list."""
    if len(args) not in (2, 3):
        return -EINVAL
    cmd, uop = args[0], args[1]
    if not _int(cmd) or cmd not in _OPS:
        return -ENOSYS
    ops = uop if isinstance(uop, list) else [uop]
    count: Any = args[2] if len(args) == 3 else len(ops)
    if not _int(count) or count < 0 or count > len(ops):
        return -EINVAL
    struct = _STRUCTS[cmd]
    if not all(isinstance(o, struct) for o in ops[:count]):
        return -EFAULT
    fn = _OPS[cmd]
    for o in ops[:count]:
        o.status = fn(xen, dom, o)
    return 0


def release_mappings(xen: Xen, d: Domain) -> None:
    """``gnttab_release_mappings``: a dying domain's mappings are all unmapped."""
    if d.maptrack is not None:
        for h in list(d.maptrack.handles):
            _unmap_handle(xen, d, h)
