"""virtio (半虚拟化I/O): split virtqueues in guest memory, virtio-blk and virtio-net.

virtio is **paravirtualized I/O** (半虚拟化I/O): the guest runs a driver that
*knows* it talks to a hypervisor and exchanges buffers with the host through
rings in shared guest memory, instead of poking the registers of an imitated
piece of real hardware one trapped access at a time.  It is *not* device
pass-through (设备直通) — that is VFIO / SR-IOV, where the guest drives a real
device directly (syllabus N4).  And it is why "KVM only supports full
virtualization" is true only of the CPU: KVM's CPU virtualization is full
(hardware-assisted, unmodified guest kernels), but its I/O is usually
paravirtual, through virtio (syllabus N5; S4.5).

Concepts and how each is represented [VIRTIO-SPEC; VIRTIO-RING-H]:

- **split virtqueue** — three areas in guest memory, each written by only one
  side: the *descriptor table* (16 bytes per entry, driver), the *available
  ring* (6 + 2·QueueSize bytes, driver) and the *used ring* (6 + 8·QueueSize
  bytes, device); placed by :class:`VirtqLayout`; Queue Size a power of two
  ≤ 32768 (else :class:`QueueSizeError`);
- **descriptor** — :class:`Descriptor` (``le64 addr; le32 len; le16 flags;
  le16 next``) with :data:`VIRTQ_DESC_F_NEXT` = 1, :data:`VIRTQ_DESC_F_WRITE`
  = 2, :data:`VIRTQ_DESC_F_INDIRECT` = 4; a request is a *chain* of them,
  device-readable buffers first, then device-writable ones (:class:`Chain`);
- **driver side** (guest) — :class:`VirtqDriver` (after Linux
  ``drivers/virtio/virtio_ring.c``): add a chain, publish it in the available
  ring, *kick* the device (available buffer notification), collect used
  buffers;
- **device side** (host, e.g. QEMU) — :class:`VirtqDevice` (after QEMU
  ``hw/virtio/virtio.c``): pop chains, push ``{id, len}`` into the used ring,
  *interrupt* the guest (used buffer notification);
- **notification suppression** — the flags :data:`VIRTQ_AVAIL_F_NO_INTERRUPT`
  and :data:`VIRTQ_USED_F_NO_NOTIFY`, or with :data:`VIRTIO_F_EVENT_IDX` the
  event indices ``used_event`` / ``avail_event`` and :func:`vring_need_event`;
- **devices** — :class:`VirtioBlk` (request header ``type``/``sector``, data,
  status byte) with its guest driver :class:`VirtioBlkDriver`, and
  :class:`VirtioNet` (12-byte header + frame, receive queue 0 and transmit
  queue 1) with :class:`VirtioNetDriver`.

Indices in the rings are **free-running 16-bit counters**: ``avail.idx`` and
``used.idx`` only ever increase (mod 2^16), and the slot is ``idx % QueueSize``.

Guest memory is any :class:`virtcore.hw.devices.MemoryLike` — an object with
``size``, ``read_bytes(addr, n)`` and ``write_bytes(addr, data)`` addressed by
guest-physical address: :class:`GuestRAM` here, or
:class:`virtcore.hw.memory.PhysicalMemory`.  All structures are little-endian,
as the spec requires for virtio 1.x.

Simplified (say so in class): no transport — virtio-pci's or virtio-mmio's
registers are reduced to a callback for the kick and one for the interrupt
(:mod:`virtcore.kvm.qemu` puts the kick behind a port write); no memory
barriers (one thread runs both sides here); no packed virtqueues; a device
reports a malformed chain by going *broken* (status ``DEVICE_NEEDS_RESET``),
as QEMU's ``virtio_error`` does, never by raising.

>>> ram = GuestRAM(64 * 1024)
>>> lay = VirtqLayout.contiguous(8, base=0x1000)
>>> drv, dev = VirtqDriver(ram, lay), VirtqDevice(ram, lay)
>>> head = drv.add([(0x8000, 16)], [(0x9000, 512)], token="req0")
>>> drv.kick(), dev.pending()
(True, 1)
>>> chain = dev.pop()
>>> chain.readable, chain.writable
(((32768, 16),), ((36864, 512),))
>>> dev.push(chain.head, 512); dev.notify()
True
>>> drv.get_used()
('req0', 512)
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from virtcore.errors import AddressError, ConfigurationError, VirtcoreError
from virtcore.hw.devices import MemoryLike

__all__ = [
    "ACKNOWLEDGE",
    "AVAIL_ALIGN",
    "DESC_ALIGN",
    "DESC_SIZE",
    "DEVICE_NEEDS_RESET",
    "DRIVER",
    "DRIVER_OK",
    "FAILED",
    "FEATURES_OK",
    "LEGACY_QUEUE_ALIGN",
    "MAX_QUEUE_SIZE",
    "USED_ALIGN",
    "VIRTIO_BLK_SECTOR_SIZE",
    "VIRTIO_BLK_S_IOERR",
    "VIRTIO_BLK_S_OK",
    "VIRTIO_BLK_S_UNSUPP",
    "VIRTIO_BLK_T_FLUSH",
    "VIRTIO_BLK_T_IN",
    "VIRTIO_BLK_T_OUT",
    "VIRTIO_F_EVENT_IDX",
    "VIRTIO_F_INDIRECT_DESC",
    "VIRTIO_ID_BLOCK",
    "VIRTIO_ID_NET",
    "VIRTIO_NET_HDR_SIZE",
    "VIRTIO_NET_RX",
    "VIRTIO_NET_TX",
    "VIRTQ_AVAIL_F_NO_INTERRUPT",
    "VIRTQ_DESC_F_INDIRECT",
    "VIRTQ_DESC_F_NEXT",
    "VIRTQ_DESC_F_WRITE",
    "VIRTQ_USED_F_NO_NOTIFY",
    "BumpAllocator",
    "Chain",
    "Descriptor",
    "GuestRAM",
    "LayoutError",
    "QueueFullError",
    "QueueSizeError",
    "VirtioBlk",
    "VirtioBlkDriver",
    "VirtioDevice",
    "VirtioError",
    "VirtioNet",
    "VirtioNetDriver",
    "VirtqDevice",
    "VirtqDriver",
    "VirtqLayout",
    "avail_ring_size",
    "check_queue_size",
    "desc_table_size",
    "used_ring_size",
    "vring_need_event",
]

# ---------------------------------------------------------------------------
# Constants [VIRTIO-SPEC split-ring.tex, content.tex; VIRTIO-RING-H]
# ---------------------------------------------------------------------------

#: This descriptor continues in ``next``.
VIRTQ_DESC_F_NEXT = 1
#: The buffer is device write-only (else device read-only).
VIRTQ_DESC_F_WRITE = 2
#: The buffer holds a table of descriptors (an indirect chain).
VIRTQ_DESC_F_INDIRECT = 4
#: In ``avail.flags``: the driver asks not to be interrupted.
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
#: In ``used.flags``: the device asks not to be kicked.
VIRTQ_USED_F_NO_NOTIFY = 1
#: Feature bit: indirect descriptors.
VIRTIO_F_INDIRECT_DESC = 28
#: Feature bit: event-index notification suppression (``used_event``/``avail_event``).
VIRTIO_F_EVENT_IDX = 29

#: Largest Queue Size (a 16-bit power of two).
MAX_QUEUE_SIZE = 32768
#: Bytes per descriptor (``le64 addr; le32 len; le16 flags; le16 next``).
DESC_SIZE = 16
#: Alignment of the descriptor table, available ring and used ring (bytes).
DESC_ALIGN, AVAIL_ALIGN, USED_ALIGN = 16, 2, 4
#: The legacy interface's "Queue Align": the used ring starts on a 4096-byte page.
LEGACY_QUEUE_ALIGN = 4096

# Device status bits [VIRTIO-SPEC content.tex].
ACKNOWLEDGE = 1
DRIVER = 2
DRIVER_OK = 4
FEATURES_OK = 8
DEVICE_NEEDS_RESET = 64
FAILED = 128

# Device IDs (virtio 1.x spec, "Device Types": 1 network card, 2 block device).
VIRTIO_ID_NET = 1
VIRTIO_ID_BLOCK = 2

# virtio-blk (virtio 1.x spec "Block Device"; Linux include/uapi/linux/virtio_blk.h).
VIRTIO_BLK_T_IN = 0  # read: device -> driver
VIRTIO_BLK_T_OUT = 1  # write: driver -> device
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2
#: virtio-blk counts in 512-byte sectors whatever the disk's real block size.
VIRTIO_BLK_SECTOR_SIZE = 512
#: ``struct virtio_blk_req`` header: ``le32 type; le32 reserved; le64 sector``.
BLK_HEADER = struct.Struct("<IIQ")

# virtio-net (virtio 1.x spec "Network Device"; Linux include/uapi/linux/virtio_net.h).
#: ``struct virtio_net_hdr_v1``: flags, gso_type (u8), hdr_len, gso_size, csum_start,
#: csum_offset, num_buffers (le16) — 12 bytes, in front of every frame.
VIRTIO_NET_HDR_SIZE = 12
NET_HEADER = struct.Struct("<BBHHHHH")
VIRTIO_NET_RX = 0  # receiveq1
VIRTIO_NET_TX = 1  # transmitq1
MAX_FRAME = 1514  # Ethernet frame without FCS (as virtcore.hw.devices.MAX_FRAME)

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")
_M16 = 0xFFFF


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class VirtioError(VirtcoreError):
    """Misuse of the virtio model by the Python caller."""


class QueueSizeError(VirtioError, ConfigurationError):
    """A Queue Size that is not a power of two in 1..32768 [VIRTIO-SPEC; VIRTIO-RING-H]."""


class LayoutError(VirtioError, ConfigurationError):
    """Virtqueue areas misaligned, overlapping, or outside guest memory."""


class QueueFullError(VirtioError):
    """The driver has not enough free descriptors for the chain it wants to add."""


# ---------------------------------------------------------------------------
# Guest memory
# ---------------------------------------------------------------------------


class GuestRAM:
    """Guest-physical memory as a flat ``bytearray`` (fast byte access for the rings).

    Parameters
    ----------
    size : int
        Bytes; positive.

    >>> ram = GuestRAM(4096)
    >>> ram.write_bytes(0x10, b"virtio"); ram.read_bytes(0x10, 6)
    b'virtio'
    >>> ram.read_bytes(4090, 8)
    Traceback (most recent call last):
    ...
    virtcore.errors.AddressError: guest-physical range 0xffa..0x1002 is outside guest RAM ...
    """

    __slots__ = ("data", "size")

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ConfigurationError(f"guest RAM size must be a positive int, got {size!r}")
        self.size = size
        self.data = bytearray(size)

    def _check(self, paddr: int, n: int) -> None:
        if paddr < 0 or n < 0 or paddr + n > self.size:
            raise AddressError(
                f"guest-physical range {paddr:#x}..{paddr + n:#x} is outside guest RAM "
                f"({self.size:#x} bytes)"
            )

    def read_bytes(self, paddr: int, n: int) -> bytes:
        """``n`` bytes at ``paddr``."""
        self._check(paddr, n)
        return bytes(self.data[paddr : paddr + n])

    def write_bytes(self, paddr: int, data: bytes) -> None:
        """Store ``data`` at ``paddr``."""
        n = len(data)
        self._check(paddr, n)
        self.data[paddr : paddr + n] = data

    def __repr__(self) -> str:
        return f"GuestRAM({self.size // 1024} KiB)" if self.size % 1024 == 0 else (
            f"GuestRAM({self.size} bytes)")


class BumpAllocator:
    """Hands out aligned pieces of a guest-physical range, never frees (a boot-time allocator).

    >>> a = BumpAllocator(0x1000, 0x2000)
    >>> hex(a.alloc(10)), hex(a.alloc(16, align=16)), a.free
    ('0x1000', '0x1010', 4064)
    """

    def __init__(self, start: int, end: int) -> None:
        if not 0 <= start <= end:
            raise ConfigurationError(f"bad range {start:#x}..{end:#x}")
        self.start, self.end, self.next = start, end, start

    @property
    def free(self) -> int:
        """Bytes left."""
        return self.end - self.next

    def alloc(self, size: int, align: int = 1) -> int:
        """Address of ``size`` fresh bytes aligned to ``align`` (a power of two)."""
        if size < 0 or align < 1 or align & (align - 1):
            raise ConfigurationError(f"bad allocation: {size} bytes aligned to {align}")
        addr = (self.next + align - 1) & ~(align - 1)
        if addr + size > self.end:
            raise VirtioError(f"out of guest memory: {size} bytes wanted, {self.free} left")
        self.next = addr + size
        return addr


# ---------------------------------------------------------------------------
# Sizes and layout
# ---------------------------------------------------------------------------


def check_queue_size(queue_size: int) -> int:
    """Return ``queue_size`` if it is a power of two in 1..32768, else raise QueueSizeError.

    >>> check_queue_size(256)
    256
    >>> check_queue_size(100)
    Traceback (most recent call last):
    ...
    virtcore.kvm.virtio.QueueSizeError: Queue Size must be a power of two in 1..32768, got 100
    """
    if (
        isinstance(queue_size, bool)
        or not isinstance(queue_size, int)
        or not 1 <= queue_size <= MAX_QUEUE_SIZE
        or queue_size & (queue_size - 1)
    ):
        raise QueueSizeError(
            f"Queue Size must be a power of two in 1..{MAX_QUEUE_SIZE}, got {queue_size!r}"
        )
    return queue_size


def desc_table_size(queue_size: int) -> int:
    """Bytes of the descriptor table: 16 × QueueSize.

    >>> desc_table_size(256)
    4096
    """
    return DESC_SIZE * check_queue_size(queue_size)


def avail_ring_size(queue_size: int) -> int:
    """Bytes of the available ring: ``flags, idx, ring[QS], used_event`` = 6 + 2 × QueueSize.

    >>> avail_ring_size(256)
    518
    """
    return 6 + 2 * check_queue_size(queue_size)


def used_ring_size(queue_size: int) -> int:
    """Bytes of the used ring: ``flags, idx, ring[QS] of {id, len}, avail_event`` = 6 + 8 × QS.

    >>> used_ring_size(256)
    2054
    """
    return 6 + 8 * check_queue_size(queue_size)


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """Linux's ``vring_need_event``: notify iff the other side's event index lies in [old, new).

    ``(u16)(new_idx - event_idx - 1) < (u16)(new_idx - old_idx)`` [VIRTIO-RING-H]: the
    producer moved its index from ``old_idx`` to ``new_idx``; the consumer asked to be told
    when entry ``event_idx`` is published.  All arithmetic is mod 2^16, so it works across
    the wrap from 65535 to 0.

    >>> vring_need_event(5, new_idx=6, old_idx=5)      # entry 5 published: tell
    True
    >>> vring_need_event(5, new_idx=9, old_idx=6)      # 5 was passed before: already told
    False
    >>> vring_need_event(65535, new_idx=1, old_idx=65534)   # across the wrap
    True
    """
    return ((new_idx - event_idx - 1) & _M16) < ((new_idx - old_idx) & _M16)


@dataclass(frozen=True)
class VirtqLayout:
    """Where the three areas of one split virtqueue lie in guest memory.

    Parameters
    ----------
    queue_size : int
        Entries; a power of two ≤ 32768.
    desc, avail, used : int
        Guest-physical addresses of the descriptor table (16-aligned), available
        ring (2-aligned) and used ring (4-aligned).

    >>> lay = VirtqLayout.contiguous(4, base=0x2000)
    >>> print(lay)
    split virtqueue, Queue Size 4
      descriptor table  0x2000..0x203f   64 bytes  written by the driver
      available ring    0x2040..0x204d   14 bytes  written by the driver
      used ring         0x2050..0x2075   38 bytes  written by the device
    >>> VirtqLayout(4, desc=0x2001, avail=0x2100, used=0x2200)
    Traceback (most recent call last):
    ...
    virtcore.kvm.virtio.LayoutError: descriptor table at 0x2001 is not 16-byte aligned
    """

    queue_size: int
    desc: int
    avail: int
    used: int

    def __post_init__(self) -> None:
        check_queue_size(self.queue_size)
        areas = self.areas()
        for (name, start, _size, _), align in zip(areas, (DESC_ALIGN, AVAIL_ALIGN, USED_ALIGN)):
            if isinstance(start, bool) or not isinstance(start, int) or start < 0:
                raise LayoutError(f"{name} address must be an int >= 0, got {start!r}")
            if start % align:
                raise LayoutError(f"{name} at {start:#x} is not {align}-byte aligned")
        for i, (n1, s1, z1, _) in enumerate(areas):
            for n2, s2, z2, _ in areas[i + 1 :]:
                if s1 < s2 + z2 and s2 < s1 + z1:
                    raise LayoutError(f"{n1} and {n2} overlap")

    @classmethod
    def contiguous(cls, queue_size: int, base: int = 0, *, legacy: bool = False) -> VirtqLayout:
        """The three areas one after another from ``base`` (legacy: used ring page-aligned).

        >>> VirtqLayout.contiguous(256, legacy=True).used    # the legacy vring of a 256-entry queue
        8192
        """
        qs = check_queue_size(queue_size)
        desc = (base + DESC_ALIGN - 1) & ~(DESC_ALIGN - 1)
        avail = desc + DESC_SIZE * qs
        align = LEGACY_QUEUE_ALIGN if legacy else USED_ALIGN
        used = (avail + 6 + 2 * qs + align - 1) & ~(align - 1)
        return cls(qs, desc, avail, used)

    @property
    def desc_size(self) -> int:
        """16 × QueueSize."""
        return DESC_SIZE * self.queue_size

    @property
    def avail_size(self) -> int:
        """6 + 2 × QueueSize."""
        return 6 + 2 * self.queue_size

    @property
    def used_size(self) -> int:
        """6 + 8 × QueueSize."""
        return 6 + 8 * self.queue_size

    @property
    def end(self) -> int:
        """First byte after the last area."""
        return max(s + z for _, s, z, _ in self.areas())

    def areas(self) -> list[tuple[str, int, int, str]]:
        """``(name, start, size, written by)`` of the three areas."""
        return [
            ("descriptor table", self.desc, DESC_SIZE * self.queue_size, "driver"),
            ("available ring", self.avail, 6 + 2 * self.queue_size, "driver"),
            ("used ring", self.used, 6 + 8 * self.queue_size, "device"),
        ]

    def check_fits(self, memory: MemoryLike) -> None:
        """Raise LayoutError unless every area lies inside ``memory``."""
        for name, start, size, _ in self.areas():
            if start + size > memory.size:
                raise LayoutError(
                    f"{name} {start:#x}..{start + size - 1:#x} is outside guest memory "
                    f"({memory.size:#x} bytes)"
                )

    def __str__(self) -> str:
        lines = [f"split virtqueue, Queue Size {self.queue_size}"]
        for name, start, size, who in self.areas():
            lines.append(
                f"  {name:<17} {start:#x}..{start + size - 1:#x} {size:>4} bytes  written by the "
                f"{who}"
            )
        return "\n".join(lines)


class Descriptor(NamedTuple):
    """One ``struct virtq_desc``: ``le64 addr; le32 len; le16 flags; le16 next`` (16 bytes).

    >>> raw = Descriptor(0x8000, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 3).pack()
    >>> d = Descriptor.unpack(raw)
    >>> d, d.flag_names
    (Descriptor(addr=32768, len=512, flags=3, next=3), 'NEXT|WRITE')
    >>> len(d.pack())
    16
    """

    addr: int
    len: int
    flags: int
    next: int

    def pack(self) -> bytes:
        """The 16 bytes as they lie in guest memory."""
        return _DESC.pack(self.addr, self.len, self.flags, self.next)

    @classmethod
    def unpack(cls, raw: bytes) -> Descriptor:
        """Decode 16 bytes."""
        return cls(*_DESC.unpack(raw))

    @property
    def flag_names(self) -> str:
        """The flags by name, e.g. ``'NEXT|WRITE'``."""
        names = [n for bit, n in ((1, "NEXT"), (2, "WRITE"), (4, "INDIRECT")) if self.flags & bit]
        return "|".join(names) or "-"


@dataclass(frozen=True)
class Chain:
    """A descriptor chain as the device sees it: readable buffers, then writable ones.

    Attributes
    ----------
    head : int
        Index of the first descriptor (what goes back in the used ring as ``id``).
    readable, writable : tuple of (addr, len)
        The device-readable and device-writable buffers, in order.
    indirect : bool
        Whether the chain came through an indirect table.

    >>> ram = GuestRAM(256); ram.write_bytes(0x10, b"abc"); ram.write_bytes(0x20, b"de")
    >>> c = Chain(0, ((0x10, 3), (0x20, 2)), ((0x40, 8),))
    >>> c.read(ram), c.write(ram, b"xyz"), ram.read_bytes(0x40, 3)
    (b'abcde', 3, b'xyz')
    """

    head: int
    readable: tuple[tuple[int, int], ...]
    writable: tuple[tuple[int, int], ...]
    indirect: bool = False

    @property
    def readable_len(self) -> int:
        """Total bytes the device may read."""
        return sum(n for _, n in self.readable)

    @property
    def writable_len(self) -> int:
        """Total bytes the device may write."""
        return sum(n for _, n in self.writable)

    def read(self, memory: MemoryLike) -> bytes:
        """All readable bytes, gathered in order."""
        return b"".join(memory.read_bytes(a, n) for a, n in self.readable)

    def write(self, memory: MemoryLike, data: bytes, offset: int = 0) -> int:
        """Scatter ``data`` over the writable buffers from ``offset``; return bytes written."""
        if offset + len(data) > self.writable_len:
            raise VirtioError(
                f"{len(data)} bytes at offset {offset} do not fit in {self.writable_len} "
                "writable bytes"
            )
        pos = 0
        skip = offset
        for addr, n in self.writable:
            if skip >= n:
                skip -= n
                continue
            take = min(n - skip, len(data) - pos)
            if take <= 0:
                break
            memory.write_bytes(addr + skip, data[pos : pos + take])
            pos += take
            skip = 0
        return pos


# ---------------------------------------------------------------------------
# Ring access shared by both sides
# ---------------------------------------------------------------------------


class _Ring:
    """Field access of one virtqueue in guest memory (offsets from the spec's structs)."""

    def __init__(self, memory: MemoryLike, layout: VirtqLayout) -> None:
        if not isinstance(layout, VirtqLayout):
            raise ConfigurationError(f"layout must be a VirtqLayout, got {layout!r}")
        layout.check_fits(memory)
        self.mem = memory
        self.layout = layout
        self.qs = layout.queue_size
        self.desc = layout.desc
        self.avail = layout.avail
        self.used = layout.used

    def r16(self, addr: int) -> int:
        return _U16.unpack(self.mem.read_bytes(addr, 2))[0]

    def w16(self, addr: int, value: int) -> None:
        self.mem.write_bytes(addr, _U16.pack(value & _M16))

    # struct virtq_avail { le16 flags; le16 idx; le16 ring[QS]; le16 used_event; }
    def avail_flags(self) -> int:
        return self.r16(self.avail)

    def avail_idx(self) -> int:
        return self.r16(self.avail + 2)

    def used_event(self) -> int:
        return self.r16(self.avail + 4 + 2 * self.qs)

    # struct virtq_used { le16 flags; le16 idx; struct {le32 id; le32 len} ring[QS];
    #                     le16 avail_event; }
    def used_flags(self) -> int:
        return self.r16(self.used)

    def used_idx(self) -> int:
        return self.r16(self.used + 2)

    def avail_event(self) -> int:
        return self.r16(self.used + 4 + 8 * self.qs)

    def read_desc(self, table: int, i: int) -> Descriptor:
        return Descriptor(*_DESC.unpack(self.mem.read_bytes(table + DESC_SIZE * i, DESC_SIZE)))


# ---------------------------------------------------------------------------
# Driver side (the guest)
# ---------------------------------------------------------------------------


class VirtqDriver:
    """The guest driver's half of a split virtqueue (Linux ``virtio_ring.c``, split ring).

    The driver owns the descriptor table and the available ring: it writes a
    chain of descriptors, puts the head's index in ``avail.ring[avail.idx %
    QS]`` and increments ``avail.idx``; then it *kicks* the device unless the
    device asked not to be (:data:`VIRTQ_USED_F_NO_NOTIFY`, or with event
    indices, unless ``avail_event`` lies outside the entries just published).
    It collects finished chains from the used ring with :meth:`get_used`.

    Parameters
    ----------
    memory : MemoryLike
        Guest memory holding the queue (the driver zeroes the three areas).
    layout : VirtqLayout
        Where the queue lies.
    event_idx : bool
        Whether :data:`VIRTIO_F_EVENT_IDX` was negotiated.
    notify : callable, optional
        Called with no argument for each kick that is actually sent (the
        transport's queue-notify write; under KVM a trapped I/O access).

    Attributes
    ----------
    kicks, kicks_suppressed : int
        Kicks sent, and kicks the suppression rules made unnecessary.
    broken : str or None
        Why the driver stopped trusting the device (a bad used-ring entry).

    Examples
    --------
    >>> ram = GuestRAM(8192); lay = VirtqLayout.contiguous(4)
    >>> drv = VirtqDriver(ram, lay)
    >>> drv.add([(0x1000, 8), (0x1100, 8)], [(0x1200, 1)], token="t")
    0
    >>> [drv.descriptor(i).flag_names for i in range(3)]
    ['NEXT', 'NEXT', 'WRITE']
    >>> drv
    VirtqDriver(Queue Size 4, 1 in flight, 1 free descriptors, avail.idx 1, last used 0, kicks 0)
    """

    def __init__(
        self,
        memory: MemoryLike,
        layout: VirtqLayout,
        *,
        event_idx: bool = False,
        notify: Callable[[], object] | None = None,
    ) -> None:
        self._ring = _Ring(memory, layout)
        self.memory = memory
        self.layout = layout
        self.queue_size = layout.queue_size
        self.event_idx = bool(event_idx)
        self.notify_callback = notify
        for _, start, size, _ in layout.areas():  # fresh, zeroed queue memory
            memory.write_bytes(start, bytes(size))
        self._free: deque[int] = deque(range(layout.queue_size))
        self._in_flight: dict[int, tuple[object, tuple[int, ...]]] = {}
        self.avail_idx = 0  # shadow of avail.idx (free-running, 16 bit)
        self.last_used = 0  # next used.idx entry to read
        self.num_added = 0  # published since the last kick decision
        self.interrupts_enabled = True
        self.kicks = 0
        self.kicks_suppressed = 0
        self.broken: str | None = None

    # -- adding ---------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Free descriptors."""
        return len(self._free)

    @property
    def in_flight(self) -> int:
        """Chains added and not yet returned through the used ring."""
        return len(self._in_flight)

    def descriptor(self, i: int) -> Descriptor:
        """Descriptor ``i`` of the table, read from guest memory."""
        return self._ring.read_desc(self.layout.desc, i)

    def add(
        self,
        out: Sequence[tuple[int, int]],
        in_: Sequence[tuple[int, int]] = (),
        token: object = None,
        *,
        indirect_table: int | None = None,
    ) -> int:
        """Add one chain and publish it in the available ring; returns its head index.

        Parameters
        ----------
        out : sequence of (addr, len)
            Device-readable buffers (the request).
        in_ : sequence of (addr, len)
            Device-writable buffers (the reply), placed after ``out``.
        token : object
            Returned by :meth:`get_used` with this chain (Linux's ``data``).
        indirect_table : int, optional
            Guest address of free memory (16-aligned) for an indirect table of
            ``len(out) + len(in_)`` descriptors; the chain then takes one slot
            of the ring's table (:data:`VIRTQ_DESC_F_INDIRECT`).

        Raises
        ------
        QueueFullError
            Not enough free descriptors.
        """
        bufs = [(int(a), int(n), 0) for a, n in out] + [
            (int(a), int(n), VIRTQ_DESC_F_WRITE) for a, n in in_
        ]
        if not bufs:
            raise VirtioError("a chain needs at least one buffer")
        for a, n, _ in bufs:
            if a < 0 or not 0 <= n <= 0xFFFF_FFFF or a + n > self.memory.size:
                raise VirtioError(f"buffer ({a:#x}, {n}) is not inside guest memory")
        if self.broken:
            raise VirtioError(f"the queue is broken: {self.broken}")
        ring = self._ring
        mem = self.memory
        if indirect_table is not None:
            if indirect_table % DESC_ALIGN:
                raise VirtioError(f"indirect table at {indirect_table:#x} is not 16-byte aligned")
            if len(bufs) > self.queue_size:
                raise VirtioError("an indirect chain may not be longer than the Queue Size")
            if not self._free:
                raise QueueFullError("no free descriptor for the indirect table")
            last = len(bufs) - 1
            table = b"".join(
                _DESC.pack(a, n, f | VIRTQ_DESC_F_NEXT, i + 1) if i < last
                else _DESC.pack(a, n, f, 0)
                for i, (a, n, f) in enumerate(bufs)
            )
            mem.write_bytes(indirect_table, table)
            head = self._free.popleft()
            mem.write_bytes(
                ring.desc + DESC_SIZE * head,
                _DESC.pack(indirect_table, len(table), VIRTQ_DESC_F_INDIRECT, 0),
            )
            used_slots: tuple[int, ...] = (head,)
        else:
            if len(bufs) > len(self._free):
                raise QueueFullError(
                    f"{len(bufs)} descriptors needed, {len(self._free)} free "
                    f"(Queue Size {self.queue_size})"
                )
            idx = [self._free.popleft() for _ in bufs]
            last = len(bufs) - 1
            for k, ((a, n, f), d) in enumerate(zip(bufs, idx)):
                nxt = idx[k + 1] if k < last else 0
                flags = f | (VIRTQ_DESC_F_NEXT if k < last else 0)
                mem.write_bytes(ring.desc + DESC_SIZE * d, _DESC.pack(a, n, flags, nxt))
            head = idx[0]
            used_slots = tuple(idx)
        self._in_flight[head] = (token, used_slots)
        # publish: ring entry first, then the index (a write barrier between them in C)
        ring.w16(ring.avail + 4 + 2 * (self.avail_idx % self.queue_size), head)
        self.avail_idx = (self.avail_idx + 1) & _M16
        ring.w16(ring.avail + 2, self.avail_idx)
        self.num_added += 1
        return head

    # -- kicking --------------------------------------------------------------------------
    def kick_prepare(self) -> bool:
        """Whether entries published since the last decision need a kick (``kick_prepare``).

        >>> ram = GuestRAM(4096); drv = VirtqDriver(ram, VirtqLayout.contiguous(4))
        >>> drv.kick_prepare()          # nothing published
        False
        """
        added, self.num_added = self.num_added, 0
        if not added:
            return False
        ring = self._ring
        new = self.avail_idx
        old = (new - added) & _M16
        if self.event_idx:
            return vring_need_event(ring.avail_event(), new, old)
        return not ring.used_flags() & VIRTQ_USED_F_NO_NOTIFY

    def kick(self) -> bool:
        """Notify the device if needed (``virtqueue_kick``); True when a kick was sent."""
        if not self.num_added:
            return False
        if self.kick_prepare():
            self.kicks += 1
            if self.notify_callback is not None:
                self.notify_callback()
            return True
        self.kicks_suppressed += 1
        return False

    # -- collecting ---------------------------------------------------------------------
    def has_used(self) -> bool:
        """Whether the device returned chains not collected yet (``more_used``)."""
        return self._ring.used_idx() != self.last_used

    def get_used(self) -> tuple[object, int] | None:
        """The next returned chain as ``(token, bytes written)``, or None (``virtqueue_get_buf``).

        Frees the chain's descriptors.  With event indices (and interrupts
        enabled) it also writes ``used_event = last_used``: "interrupt me at the
        next entry".
        """
        ring = self._ring
        if self.broken or ring.used_idx() == self.last_used:
            return None
        slot = ring.used + 4 + 8 * (self.last_used % self.queue_size)
        head, length = _USED_ELEM.unpack(self.memory.read_bytes(slot, 8))
        entry = self._in_flight.pop(head, None)
        if entry is None:
            self.broken = f"used ring entry {self.last_used}: id {head} is not a head in flight"
            return None
        token, slots = entry
        self._free.extend(slots)
        self.last_used = (self.last_used + 1) & _M16
        if self.event_idx and self.interrupts_enabled:
            ring.w16(ring.avail + 4 + 2 * self.queue_size, self.last_used)
        return token, length

    def disable_interrupts(self) -> None:
        """Ask the device not to interrupt (``virtqueue_disable_cb``).

        Without event indices: set :data:`VIRTQ_AVAIL_F_NO_INTERRUPT`.  With
        them the flag is ignored by the device, so ``used_event`` is parked one
        behind the last entry seen (Linux writes 0 there, "a hack"); the device
        then has no reason to interrupt until the index wraps around.
        """
        self.interrupts_enabled = False
        ring = self._ring
        if self.event_idx:
            ring.w16(ring.avail + 4 + 2 * self.queue_size, (self.last_used - 1) & _M16)
        else:
            ring.w16(ring.avail, ring.avail_flags() | VIRTQ_AVAIL_F_NO_INTERRUPT)

    def enable_interrupts(self) -> bool:
        """Re-enable interrupts (``virtqueue_enable_cb``); False if used chains already wait.

        A driver must check again after enabling, or it could sleep on a chain
        that completed while interrupts were off.
        """
        self.interrupts_enabled = True
        ring = self._ring
        if self.event_idx:
            ring.w16(ring.avail + 4 + 2 * self.queue_size, self.last_used)
        else:
            ring.w16(ring.avail, ring.avail_flags() & ~VIRTQ_AVAIL_F_NO_INTERRUPT)
        return not self.has_used()

    def __repr__(self) -> str:
        sup = f" ({self.kicks_suppressed} suppressed)" if self.kicks_suppressed else ""
        ev = ", event idx" if self.event_idx else ""
        return (
            f"VirtqDriver(Queue Size {self.queue_size}, {self.in_flight} in flight, "
            f"{self.num_free} free descriptors, avail.idx {self.avail_idx}, last used "
            f"{self.last_used}, kicks {self.kicks}{sup}{ev})"
        )


# ---------------------------------------------------------------------------
# Device side (the host: QEMU's virtio core)
# ---------------------------------------------------------------------------


class VirtqDevice:
    """The device's half of a split virtqueue (QEMU ``hw/virtio/virtio.c``).

    :meth:`pop` takes the next chain the driver made available and checks it
    (indices in range, no loops, writable after readable, INDIRECT not with
    NEXT, buffers inside guest memory); :meth:`push` returns it through the
    used ring with the number of bytes written; :meth:`notify` interrupts the
    guest unless suppressed (``virtio_should_notify``).  A malformed chain is
    a bug *in the guest*: the queue goes :attr:`broken` (QEMU's
    ``virtio_error``) and :meth:`pop` returns None from then on.

    Parameters
    ----------
    memory : MemoryLike
    layout : VirtqLayout
    event_idx : bool
        Whether :data:`VIRTIO_F_EVENT_IDX` was negotiated.
    interrupt : callable, optional
        Called for each used-buffer notification actually sent.

    Attributes
    ----------
    interrupts, interrupts_suppressed : int
        Notifications sent / avoided.
    chains : int
        Chains popped.

    Examples
    --------
    A loop in the descriptor table breaks the queue, not the simulator:

    >>> ram = GuestRAM(8192); lay = VirtqLayout.contiguous(4)
    >>> drv, dev = VirtqDriver(ram, lay), VirtqDevice(ram, lay)
    >>> head = drv.add([(0x1000, 4), (0x1004, 4)])
    >>> ram.write_bytes(lay.desc + 16 * 1, Descriptor(0x1004, 4, VIRTQ_DESC_F_NEXT, 0).pack())
    >>> dev.pop() is None, dev.broken
    (True, 'descriptor chain at head 0 is longer than the Queue Size 4 (a loop?)')
    """

    def __init__(
        self,
        memory: MemoryLike,
        layout: VirtqLayout,
        *,
        event_idx: bool = False,
        interrupt: Callable[[], object] | None = None,
    ) -> None:
        self._ring = _Ring(memory, layout)
        self.memory = memory
        self.layout = layout
        self.queue_size = layout.queue_size
        self.event_idx = bool(event_idx)
        self.interrupt_callback = interrupt
        self.last_avail = 0  # next avail entry to pop (free-running)
        self.used_idx = 0  # shadow of used.idx
        self.signalled_used = 0
        self.signalled_valid = False
        self.notifications_enabled = True
        self.interrupts = 0
        self.interrupts_suppressed = 0
        self.chains = 0
        self.broken: str | None = None

    def _break(self, why: str) -> None:
        if self.broken is None:
            self.broken = why

    def pending(self) -> int:
        """Chains available and not popped yet (0 once broken)."""
        if self.broken:
            return 0
        n = (self._ring.avail_idx() - self.last_avail) & _M16
        if n > self.queue_size:
            self._break(
                f"avail.idx moved {n} entries past the last one popped (Queue Size "
                f"{self.queue_size})"
            )
            return 0
        return n

    def pop(self) -> Chain | None:
        """The next available chain, checked, or None (empty or broken) (``virtqueue_pop``)."""
        if not self.pending():
            return None
        ring = self._ring
        qs = self.queue_size
        head = ring.r16(ring.avail + 4 + 2 * (self.last_avail % qs))
        self.last_avail = (self.last_avail + 1) & _M16
        if self.event_idx:  # "kick me when you publish entry last_avail"
            ring.w16(ring.used + 4 + 8 * qs, self.last_avail)
        chain = self._walk(head)
        if chain is not None:
            self.chains += 1
        return chain

    def _walk(self, head: int) -> Chain | None:
        ring = self._ring
        qs = self.queue_size
        size = self.memory.size
        if head >= qs:
            self._break(f"head index {head} >= Queue Size {qs}")
            return None
        table, limit, i = ring.desc, qs, head
        readable: list[tuple[int, int]] = []
        writable: list[tuple[int, int]] = []
        indirect = False
        seen = 0
        while True:
            d = ring.read_desc(table, i)
            if d.flags & VIRTQ_DESC_F_INDIRECT:
                if indirect:
                    self._break(f"nested indirect table in the chain at head {head}")
                    return None
                if d.flags & VIRTQ_DESC_F_NEXT:
                    self._break(f"descriptor {i} has both INDIRECT and NEXT set")
                    return None
                if d.len % DESC_SIZE or d.len == 0 or d.addr + d.len > size:
                    self._break(f"indirect table ({d.addr:#x}, {d.len}) is malformed")
                    return None
                if readable or writable:
                    self._break(f"indirect descriptor {i} is not alone in its chain")
                    return None
                indirect = True
                table, limit, i, seen = d.addr, d.len // DESC_SIZE, 0, 0
                continue
            seen += 1
            if seen > limit:
                self._break(
                    f"descriptor chain at head {head} is longer than the Queue Size {qs} (a loop?)"
                    if not indirect else f"indirect chain at head {head} loops"
                )
                return None
            if d.addr + d.len > size:
                self._break(f"buffer ({d.addr:#x}, {d.len}) is outside guest memory")
                return None
            if d.flags & VIRTQ_DESC_F_WRITE:
                writable.append((d.addr, d.len))
            elif writable:
                self._break(f"device-readable descriptor {i} after a writable one")
                return None
            else:
                readable.append((d.addr, d.len))
            if not d.flags & VIRTQ_DESC_F_NEXT:
                break
            i = d.next
            if i >= limit:
                self._break(f"next index {i} out of range ({limit})")
                return None
        return Chain(head, tuple(readable), tuple(writable), indirect)

    def push(self, head: int, written: int) -> None:
        """Return chain ``head`` with ``written`` bytes written (``virtqueue_push``)."""
        if not 0 <= head < self.queue_size:
            raise VirtioError(f"head {head} is not a descriptor index")
        ring = self._ring
        slot = ring.used + 4 + 8 * (self.used_idx % self.queue_size)
        self.memory.write_bytes(slot, _USED_ELEM.pack(head, written))
        self.used_idx = (self.used_idx + 1) & _M16
        ring.w16(ring.used + 2, self.used_idx)

    def set_notifications(self, enable: bool) -> None:
        """Ask for kicks or not (``virtio_queue_set_notification``).

        Without event indices: clear/set :data:`VIRTQ_USED_F_NO_NOTIFY`.  With
        them: write ``avail_event = avail.idx`` ("kick me at the next new entry").
        """
        self.notifications_enabled = bool(enable)
        ring = self._ring
        if self.event_idx:
            ring.w16(ring.used + 4 + 8 * self.queue_size, ring.avail_idx())
        elif enable:
            ring.w16(ring.used, ring.used_flags() & ~VIRTQ_USED_F_NO_NOTIFY)
        else:
            ring.w16(ring.used, ring.used_flags() | VIRTQ_USED_F_NO_NOTIFY)

    def should_interrupt(self) -> bool:
        """Whether the driver wants a used-buffer notification now (``virtio_should_notify``)."""
        ring = self._ring
        if not self.event_idx:
            return not ring.avail_flags() & VIRTQ_AVAIL_F_NO_INTERRUPT
        valid, self.signalled_valid = self.signalled_valid, True
        old, self.signalled_used = self.signalled_used, self.used_idx
        return not valid or vring_need_event(ring.used_event(), self.used_idx, old)

    def notify(self) -> bool:
        """Interrupt the guest unless suppressed; True when an interrupt was sent."""
        if self.should_interrupt():
            self.interrupts += 1
            if self.interrupt_callback is not None:
                self.interrupt_callback()
            return True
        self.interrupts_suppressed += 1
        return False

    def __repr__(self) -> str:
        state = f", broken: {self.broken}" if self.broken else ""
        return (
            f"VirtqDevice(Queue Size {self.queue_size}, last avail {self.last_avail}, used.idx "
            f"{self.used_idx}, {self.chains} chains, interrupts {self.interrupts} "
            f"({self.interrupts_suppressed} suppressed){state})"
        )


# ---------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------


class VirtioDevice:
    """What every virtio device has: status, feature bits, virtqueues [VIRTIO-SPEC; VIRTIO-RING-H].

    Feature negotiation is reduced to: the device offers :attr:`device_features`,
    the driver accepts a subset with :meth:`negotiate`, and the status byte goes
    ACKNOWLEDGE → DRIVER → FEATURES_OK → DRIVER_OK (:meth:`driver_init` does
    all of it).  No configuration space except what subclasses show as
    attributes.

    >>> dev = VirtioBlk(GuestRAM(8192), capacity_sectors=4)
    >>> dev.driver_init(wanted=1 << VIRTIO_F_EVENT_IDX)
    15
    >>> dev.has_feature(VIRTIO_F_EVENT_IDX), dev.has_feature(VIRTIO_F_INDIRECT_DESC)
    (True, False)
    """

    device_id = 0
    num_queues = 1

    def __init__(self, memory: MemoryLike, *, event_idx: bool = True) -> None:
        self.memory = memory
        self.device_features = (1 << VIRTIO_F_INDIRECT_DESC) | (
            (1 << VIRTIO_F_EVENT_IDX) if event_idx else 0)
        self.driver_features = 0
        self.status = 0
        self.queues: list[VirtqDevice | None] = [None] * self.num_queues
        self.interrupt_callback: Callable[[int], object] | None = None
        self.kicks = 0  # available-buffer notifications received

    # -- initialisation ------------------------------------------------------------------
    def has_feature(self, bit: int) -> bool:
        """Whether feature ``bit`` was negotiated."""
        return bool(self.driver_features >> bit & 1)

    def negotiate(self, wanted: int) -> int:
        """The driver accepts ``wanted & device_features`` and sets FEATURES_OK; returns them."""
        self.driver_features = wanted & self.device_features
        self.status |= FEATURES_OK
        return self.driver_features

    def driver_init(self, wanted: int | None = None) -> int:
        """The driver's initialisation sequence; returns the status byte (15 = all four bits)."""
        self.status = 0
        self.status |= ACKNOWLEDGE
        self.status |= DRIVER
        self.negotiate(self.device_features if wanted is None else wanted)
        self.status |= DRIVER_OK
        return self.status

    def set_queue(self, index: int, layout: VirtqLayout) -> VirtqDevice:
        """Set up queue ``index`` at ``layout`` (the driver wrote its addresses to the device)."""
        if not 0 <= index < self.num_queues:
            raise VirtioError(f"{type(self).__name__} has queues 0..{self.num_queues - 1}")
        q = VirtqDevice(
            self.memory, layout, event_idx=self.has_feature(VIRTIO_F_EVENT_IDX),
            interrupt=lambda: self._interrupt(index),
        )
        self.queues[index] = q
        return q

    def _interrupt(self, index: int) -> None:
        if self.interrupt_callback is not None:
            self.interrupt_callback(index)

    def queue(self, index: int) -> VirtqDevice:
        """Queue ``index`` (set up)."""
        q = self.queues[index] if 0 <= index < self.num_queues else None
        if q is None:
            raise VirtioError(f"queue {index} of {type(self).__name__} is not set up")
        return q

    @property
    def broken(self) -> str | None:
        """Why a queue broke, or None."""
        for q in self.queues:
            if q is not None and q.broken:
                return q.broken
        return None

    def _check_broken(self) -> bool:
        why = self.broken
        if why:
            self.status |= DEVICE_NEEDS_RESET
        return bool(why)

    # -- the kick -------------------------------------------------------------------
    def kick(self, index: int) -> int:
        """An available-buffer notification for queue ``index``: process it; returns chains done.

        Processes like QEMU's ``handle_output``: kicks off while draining the
        queue, on again, and drain once more if the driver slipped something
        in; a used-buffer notification after each completed chain (most are
        suppressed when the driver does not want them).
        """
        self.kicks += 1
        if not self.status & DRIVER_OK or self.status & DEVICE_NEEDS_RESET:
            return 0
        return self.process(index)

    def process(self, index: int) -> int:
        """Drain queue ``index`` (see :meth:`kick`)."""
        q = self.queue(index)
        done = 0
        while True:
            q.set_notifications(False)
            while (chain := q.pop()) is not None:
                q.push(chain.head, self.handle(index, chain))
                q.notify()
                done += 1
            q.set_notifications(True)
            if self._check_broken() or not q.pending():
                break
        return done

    def handle(self, index: int, chain: Chain) -> int:
        """Serve one chain of queue ``index``; return bytes written into it."""
        raise NotImplementedError

    def status_names(self) -> str:
        """The status byte by name.

        >>> d = VirtioBlk(GuestRAM(4096), capacity_sectors=1); _ = d.driver_init()
        >>> d.status_names()
        'ACKNOWLEDGE|DRIVER|DRIVER_OK|FEATURES_OK'
        """
        names = [(ACKNOWLEDGE, "ACKNOWLEDGE"), (DRIVER, "DRIVER"), (DRIVER_OK, "DRIVER_OK"),
                 (FEATURES_OK, "FEATURES_OK"), (DEVICE_NEEDS_RESET, "DEVICE_NEEDS_RESET"),
                 (FAILED, "FAILED")]
        return "|".join(n for bit, n in names if self.status & bit) or "0"


class VirtioBlk(VirtioDevice):
    """virtio-blk, the device side in the VMM: one request queue, a disk in :attr:`disk`.

    A request is one chain (virtio 1.x spec, "Block Device")::

        readable:  struct virtio_blk_req { le32 type; le32 reserved; le64 sector; }  16 bytes
                   [data, for VIRTIO_BLK_T_OUT]
        writable:  [data, for VIRTIO_BLK_T_IN]
                   u8 status          (the last writable byte: S_OK / S_IOERR / S_UNSUPP)

    Sectors are 512 bytes.  The used length is the bytes written: data + 1 for
    a read, 1 for a write.

    Parameters
    ----------
    memory : MemoryLike
    capacity_sectors : int
        Disk size in 512-byte sectors (the config space's ``capacity``).
    event_idx : bool
        Offer :data:`VIRTIO_F_EVENT_IDX`.

    >>> ram = GuestRAM(64 * 1024)
    >>> dev = VirtioBlk(ram, capacity_sectors=8); dev.driver_init()
    15
    >>> drv = VirtioBlkDriver(ram, dev, queue_size=8, base=0x1000)
    >>> dev.disk[512:517] = b"hello"
    >>> drv.read(1, 0x8000, 512)
    0
    >>> ram.read_bytes(0x8000, 5), dev
    (b'hello', VirtioBlk(8 sectors, 1 requests: 1 reads, 0 writes, 0 errors; kicks 1))
    """

    device_id = VIRTIO_ID_BLOCK
    num_queues = 1

    def __init__(self, memory: MemoryLike, *, capacity_sectors: int = 128,
                 event_idx: bool = True) -> None:
        super().__init__(memory, event_idx=event_idx)
        if isinstance(capacity_sectors, bool) or not isinstance(capacity_sectors, int) \
                or capacity_sectors < 1:
            raise ConfigurationError(f"capacity must be a positive int, got {capacity_sectors!r}")
        self.capacity = capacity_sectors
        self.disk = bytearray(capacity_sectors * VIRTIO_BLK_SECTOR_SIZE)
        self.requests = self.reads = self.writes = self.errors = self.bytes = 0

    def handle(self, index: int, chain: Chain) -> int:
        """Serve one request chain (see the class docstring)."""
        self.requests += 1
        mem = self.memory
        wlen = chain.writable_len
        if wlen < 1:  # nowhere to put the status: QEMU calls this a device error
            self.errors += 1
            return 0
        req = chain.read(mem)
        status = VIRTIO_BLK_S_OK
        written = 0
        if len(req) < BLK_HEADER.size:
            status = VIRTIO_BLK_S_IOERR
        else:
            rtype, _, sector = BLK_HEADER.unpack_from(req)
            ss = VIRTIO_BLK_SECTOR_SIZE
            if rtype == VIRTIO_BLK_T_IN:
                n = wlen - 1
                if n % ss or sector * ss + n > len(self.disk):
                    status = VIRTIO_BLK_S_IOERR
                else:
                    written = chain.write(mem, bytes(self.disk[sector * ss : sector * ss + n]))
                    self.reads += 1
                    self.bytes += n
            elif rtype == VIRTIO_BLK_T_OUT:
                data = req[BLK_HEADER.size :]
                n = len(data)
                if n % ss or sector * ss + n > len(self.disk):
                    status = VIRTIO_BLK_S_IOERR
                else:
                    self.disk[sector * ss : sector * ss + n] = data
                    self.writes += 1
                    self.bytes += n
            elif rtype == VIRTIO_BLK_T_FLUSH:
                pass  # the disk is memory: nothing to flush
            else:
                status = VIRTIO_BLK_S_UNSUPP
        if status != VIRTIO_BLK_S_OK:
            self.errors += 1
        chain.write(mem, bytes([status]), offset=wlen - 1)
        return written + 1

    def __repr__(self) -> str:
        return (
            f"VirtioBlk({self.capacity} sectors, {self.requests} requests: {self.reads} reads, "
            f"{self.writes} writes, {self.errors} errors; kicks {self.kicks})"
        )


class VirtioNet(VirtioDevice):
    """virtio-net, the device side: receive queue 0, transmit queue 1, a cable to a peer.

    Every buffer starts with the 12-byte ``struct virtio_net_hdr_v1`` (all
    zero here: no checksum offload, no GSO; ``num_buffers`` = 1 on receive).
    A kick on the transmit queue sends each frame to the peer
    (:meth:`connect`), which writes it into one of *its* guest's receive
    buffers and interrupts; a frame with no receive buffer waits in
    :attr:`backlog` until the guest posts buffers and kicks queue 0 (as QEMU
    queues packets for a guest that is not keeping up).

    >>> ra, rb = GuestRAM(64 * 1024), GuestRAM(64 * 1024)
    >>> a, b = VirtioNet(ra), VirtioNet(rb); a.connect(b)
    >>> a.driver_init(), b.driver_init()
    (15, 15)
    >>> da, db = VirtioNetDriver(ra, a, base=0x1000), VirtioNetDriver(rb, b, base=0x1000)
    >>> db.fill_rx()
    8
    >>> da.send(b"ping!")
    True
    >>> db.receive()
    [b'ping!']
    """

    device_id = VIRTIO_ID_NET
    num_queues = 2

    def __init__(self, memory: MemoryLike, *, event_idx: bool = True) -> None:
        super().__init__(memory, event_idx=event_idx)
        self.peer: VirtioNet | None = None
        self.backlog: deque[bytes] = deque()
        self.tx_frames = self.rx_frames = self.tx_errors = 0
        self.on_transmit: Callable[[bytes], object] | None = None

    def connect(self, other: VirtioNet) -> None:
        """A cable between this device and ``other`` (both ends)."""
        if not isinstance(other, VirtioNet) or other is self:
            raise ConfigurationError(f"cannot connect a VirtioNet to {other!r}")
        self.peer, other.peer = other, self

    def handle(self, index: int, chain: Chain) -> int:
        """Transmit (queue 1) one frame; or fill one receive buffer (queue 0) from the backlog."""
        if index == VIRTIO_NET_TX:
            raw = chain.read(self.memory)
            frame = raw[VIRTIO_NET_HDR_SIZE:]
            if len(raw) < VIRTIO_NET_HDR_SIZE or not 1 <= len(frame) <= MAX_FRAME:
                self.tx_errors += 1
                return 0
            self.tx_frames += 1
            if self.on_transmit is not None:
                self.on_transmit(frame)
            if self.peer is not None:
                self.peer.receive(frame)
            return 0
        raise VirtioError("receive buffers are filled by receive(), not by popping")

    def process(self, index: int) -> int:
        """Transmit everything queued, or (receive queue) deliver the backlog."""
        if index == VIRTIO_NET_RX:
            n = 0
            while self.backlog and self._deliver(self.backlog[0]):
                self.backlog.popleft()
                n += 1
            return n
        return super().process(index)

    def receive(self, frame: bytes) -> bool:
        """A frame from the wire; True if it went into a receive buffer, False if backlogged."""
        frame = bytes(frame)
        if self.backlog or not self._deliver(frame):
            self.backlog.append(frame)
            return False
        return True

    def _deliver(self, frame: bytes) -> bool:
        q = self.queues[VIRTIO_NET_RX]
        if q is None or not self.status & DRIVER_OK:
            return False
        chain = q.pop()
        if chain is None:
            self._check_broken()
            return False
        need = VIRTIO_NET_HDR_SIZE + len(frame)
        if chain.writable_len < need:  # a buffer too small: drop the frame, return the buffer
            q.push(chain.head, 0)
            q.notify()
            return True
        hdr = NET_HEADER.pack(0, 0, 0, 0, 0, 0, 1)
        chain.write(self.memory, hdr + frame)
        q.push(chain.head, need)
        q.notify()
        self.rx_frames += 1
        return True

    def __repr__(self) -> str:
        peer = ", connected" if self.peer is not None else ""
        return (
            f"VirtioNet({self.tx_frames} sent, {self.rx_frames} received, "
            f"{len(self.backlog)} waiting{peer}; kicks {self.kicks})"
        )


# ---------------------------------------------------------------------------
# Guest drivers (what runs inside the VM)
# ---------------------------------------------------------------------------


class VirtioBlkDriver:
    """The guest's virtio-blk driver: request headers and status bytes in guest memory.

    Parameters
    ----------
    memory : MemoryLike
    device : VirtioBlk
        The device (its queue is set up here — standing for the driver
        writing the queue addresses to the transport).
    queue_size : int
        Entries in the request queue.
    base : int
        Guest address of free memory for the queue and the per-request
        headers (``layout.end`` + 32 bytes per entry are used).
    notify : callable, optional
        The kick's transport write; default: call ``device.kick(0)`` directly.
    indirect : bool
        Put each request's descriptors in an indirect table.

    Attributes
    ----------
    queue : VirtqDriver

    >>> ram = GuestRAM(64 * 1024)
    >>> dev = VirtioBlk(ram, capacity_sectors=4); dev.driver_init()
    15
    >>> drv = VirtioBlkDriver(ram, dev, base=0x1000)
    >>> ram.write_bytes(0x8000, b"x" * 1024)
    >>> drv.write(2, 0x8000, 1024), bytes(dev.disk[1024:1027])
    (0, b'xxx')
    >>> drv.read(3, 0x8000, 1024)     # sectors 3 and 4: past the end of a 4-sector disk
    1
    """

    SLOT = 32  # header (16 bytes) + status (1 byte), rounded up; teaching layout

    def __init__(
        self,
        memory: MemoryLike,
        device: VirtioBlk,
        *,
        queue_size: int = 8,
        base: int = 0x1000,
        notify: Callable[[], object] | None = None,
        indirect: bool = False,
    ) -> None:
        self.memory = memory
        self.device = device
        layout = VirtqLayout.contiguous(queue_size, base)
        event_idx = device.has_feature(VIRTIO_F_EVENT_IDX)
        device.set_queue(0, layout)
        self.queue = VirtqDriver(
            memory, layout, event_idx=event_idx,
            notify=notify if notify is not None else (lambda: device.kick(0)),
        )
        self.indirect = indirect and device.has_feature(VIRTIO_F_INDIRECT_DESC)
        self.slots_base = (layout.end + 15) & ~15
        self.tables_base = self.slots_base + self.SLOT * queue_size
        self.end = self.tables_base + (3 * DESC_SIZE * queue_size if self.indirect else 0)
        if self.end > memory.size:
            raise LayoutError("guest memory too small for the queue and its request headers")
        self._free_slots: deque[int] = deque(range(queue_size))
        self.completed: list[tuple[object, int, int]] = []  # (token, status, written)

    def submit(self, rtype: int, sector: int, buf: int, nbytes: int, token: object = None) -> int:
        """Queue one request (no kick); returns its head descriptor index.

        ``buf``/``nbytes`` is the data buffer (device-writable for
        :data:`VIRTIO_BLK_T_IN`, readable for :data:`VIRTIO_BLK_T_OUT`).
        """
        if not self._free_slots:
            raise QueueFullError("all request slots are in use")
        slot = self._free_slots[0]
        hdr = self.slots_base + self.SLOT * slot
        status = hdr + 16
        self.memory.write_bytes(hdr, BLK_HEADER.pack(rtype, 0, sector))
        self.memory.write_bytes(status, b"\xff")  # "not done yet"
        out = [(hdr, BLK_HEADER.size)]
        ins = [(status, 1)]
        if nbytes:
            if rtype == VIRTIO_BLK_T_OUT:
                out.append((buf, nbytes))
            else:
                ins.insert(0, (buf, nbytes))
        table = self.tables_base + 3 * DESC_SIZE * slot if self.indirect else None
        head = self.queue.add(out, ins, (slot, token), indirect_table=table)
        self._free_slots.popleft()
        return head

    def kick(self) -> bool:
        """Notify the device of everything submitted (if needed)."""
        return self.queue.kick()

    def collect(self) -> list[tuple[object, int, int]]:
        """Every finished request since the last call: ``(token, status, bytes written)``."""
        out = []
        slot: int
        token: object
        while (got := self.queue.get_used()) is not None:
            (slot, token), written = got  # type: ignore[misc]
            status = self.memory.read_bytes(self.slots_base + self.SLOT * slot + 16, 1)[0]
            self._free_slots.append(slot)
            out.append((token, status, written))
        self.completed.extend(out)
        return out

    def _sync(self, rtype: int, sector: int, buf: int, nbytes: int) -> int:
        self.submit(rtype, sector, buf, nbytes, token="sync")
        self.kick()
        done = self.collect()
        if not done:
            raise VirtioError("the device did not complete the request (no kick reached it?)")
        return done[-1][1]

    def read(self, sector: int, buf: int, nbytes: int) -> int:
        """Read ``nbytes`` from ``sector`` into guest ``buf``; returns the status byte."""
        return self._sync(VIRTIO_BLK_T_IN, sector, buf, nbytes)

    def write(self, sector: int, buf: int, nbytes: int) -> int:
        """Write ``nbytes`` at guest ``buf`` to ``sector``; returns the status byte."""
        return self._sync(VIRTIO_BLK_T_OUT, sector, buf, nbytes)

    def __repr__(self) -> str:
        return f"VirtioBlkDriver({self.queue!r})"


class VirtioNetDriver:
    """The guest's virtio-net driver: receive buffers on queue 0, transmit on queue 1.

    Each buffer is 1536 bytes of guest memory (12-byte header + up to a
    1514-byte frame, rounded up), one per ring entry.

    Parameters
    ----------
    memory : MemoryLike
    device : VirtioNet
    queue_size : int
        Entries per queue.
    base : int
        Guest address of free memory for both queues and their buffers.
    notify : callable, optional
        Called as ``notify(queue_index)`` for a kick; default: ``device.kick``.

    Examples
    --------
    A loopback: the device's transmit callback feeds its own receive side.

    >>> ram = GuestRAM(64 * 1024)
    >>> dev = VirtioNet(ram); _ = dev.driver_init()
    >>> dev.on_transmit = dev.receive
    >>> drv = VirtioNetDriver(ram, dev, queue_size=4)
    >>> drv.fill_rx(), drv.send(b"echo"), drv.receive()
    (4, True, [b'echo'])
    """

    BUF = 1536

    def __init__(
        self,
        memory: MemoryLike,
        device: VirtioNet,
        *,
        queue_size: int = 8,
        base: int = 0x1000,
        notify: Callable[[int], object] | None = None,
    ) -> None:
        self.memory = memory
        self.device = device
        event_idx = device.has_feature(VIRTIO_F_EVENT_IDX)
        kick = notify if notify is not None else device.kick
        rx = VirtqLayout.contiguous(queue_size, base)
        tx = VirtqLayout.contiguous(queue_size, (rx.end + 15) & ~15)
        device.set_queue(VIRTIO_NET_RX, rx)
        device.set_queue(VIRTIO_NET_TX, tx)
        self.rx = VirtqDriver(memory, rx, event_idx=event_idx, notify=lambda: kick(VIRTIO_NET_RX))
        self.tx = VirtqDriver(memory, tx, event_idx=event_idx, notify=lambda: kick(VIRTIO_NET_TX))
        self.rx_bufs = (tx.end + 15) & ~15
        self.tx_bufs = self.rx_bufs + self.BUF * queue_size
        if self.tx_bufs + self.BUF * queue_size > memory.size:
            raise LayoutError("guest memory too small for the queues and their buffers")
        self._rx_free: deque[int] = deque(range(queue_size))
        self._tx_free: deque[int] = deque(range(queue_size))
        self.sent = 0

    def fill_rx(self) -> int:
        """Post every free receive buffer and kick queue 0; returns buffers posted."""
        n = 0
        while self._rx_free and self.rx.num_free:
            slot = self._rx_free.popleft()
            self.rx.add([], [(self.rx_bufs + self.BUF * slot, self.BUF)], token=slot)
            n += 1
        if n:
            self.rx.kick()
        return n

    def send(self, frame: bytes, *, kick: bool = True) -> bool:
        """Put ``frame`` (1..1514 bytes) with a zero header on the transmit queue; kick.

        Returns whether a kick was sent (False also when ``kick=False``).
        """
        frame = bytes(frame)
        if not 1 <= len(frame) <= MAX_FRAME:
            raise VirtioError(f"a frame has 1..{MAX_FRAME} bytes, not {len(frame)}")
        self.reclaim_tx()
        if not self._tx_free:
            raise QueueFullError("every transmit buffer is in flight")
        slot = self._tx_free.popleft()
        addr = self.tx_bufs + self.BUF * slot
        self.memory.write_bytes(addr, bytes(VIRTIO_NET_HDR_SIZE) + frame)
        self.tx.add([(addr, VIRTIO_NET_HDR_SIZE + len(frame))], [], token=slot)
        self.sent += 1
        return self.tx.kick() if kick else False

    def reclaim_tx(self) -> int:
        """Take back transmit buffers the device is done with."""
        n = 0
        while (got := self.tx.get_used()) is not None:
            self._tx_free.append(got[0])  # type: ignore[arg-type]
            n += 1
        return n

    def receive(self, *, refill: bool = True) -> list[bytes]:
        """Frames received since the last call (headers stripped); reposts the buffers."""
        frames = []
        while (got := self.rx.get_used()) is not None:
            slot, length = got
            addr = self.rx_bufs + self.BUF * slot  # type: ignore[operator]
            if length > VIRTIO_NET_HDR_SIZE:
                frames.append(self.memory.read_bytes(addr + VIRTIO_NET_HDR_SIZE,
                                                     length - VIRTIO_NET_HDR_SIZE))
            self._rx_free.append(slot)  # type: ignore[arg-type]
        if refill:
            self.fill_rx()
        return frames

    def __repr__(self) -> str:
        return f"VirtioNetDriver(rx {self.rx!r}, tx {self.tx!r})"
