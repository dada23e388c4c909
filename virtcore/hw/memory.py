"""Physical memory (物理内存) made of frames, and a frame allocator.

Physical memory is a flat array of bytes, cut into equal *frames*
(页框, 4096 bytes on x86, see [XIG; XEN-MM-H]:
"4kB machine page frames numbered consecutively starting from 0").
Frame *f* starts at byte address ``f * frame_size``.

Storage
-------
The simulated CPU is word-oriented, so memory is stored as one unsigned 32-bit
int per 4 bytes, in the public list :attr:`PhysicalMemory.words`: the word at
byte address *a* (a multiple of 4) is ``words[a >> 2]``.  The CPU's hot loop
reads and writes that list directly; everything else should use the checked
methods below, which raise :class:`~virtcore.errors.AddressError` for an
address outside the installed memory (a *host-side* mistake — a guest access
outside memory is a machine-check trap value, decided by the CPU).

Byte views (:meth:`PhysicalMemory.read_bytes`, :meth:`~PhysicalMemory.write_bytes`)
are little-endian, as on x86: the byte at address *a* is bits ``8*(a%4)`` and
up of word ``a >> 2``.

Self-modifying code
-------------------
The CPU caches translated code per frame and lists those frames in
:attr:`PhysicalMemory.code_frames`.  Every write method here calls
:attr:`PhysicalMemory.on_code_write` with the frame number when it touches a
frame in that set, so the CPU can drop its stale translations.  (Stores made by
the CPU's hot loop straight into ``words`` are the CPU's own business.)

>>> mem = PhysicalMemory(size=256, frame_size=32)
>>> mem.nframes, mem.frame_of(0x45), hex(mem.frame_address(2))
(8, 2, '0x40')
>>> mem.write_word(0x40, 0x11223344)
>>> mem.read_bytes(0x40, 4)
b'D3"\\x11'
>>> alloc = FrameAllocator(mem, reserved=[0])
>>> alloc.alloc(), alloc.alloc(), alloc.free_count
(1, 2, 5)
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Callable, Iterable, Sequence

from virtcore.errors import AddressError, ConfigurationError, VirtcoreError

__all__ = [
    "FrameAllocator",
    "FrameError",
    "OutOfFramesError",
    "PhysicalMemory",
]

WORD_MASK = 0xFFFF_FFFF


class PhysicalMemory:
    """Installed RAM: ``size`` bytes in frames of ``frame_size`` bytes.

    Parameters
    ----------
    size : int
        Bytes of memory; a positive multiple of ``frame_size``.
    frame_size : int
        Bytes per frame; a power of two, at least 8.  4096 is x86's; 32 or 256
        are *teaching sizes* — unrealistically small, for tracing by hand.

    Attributes
    ----------
    words : list of int
        The storage, one unsigned 32-bit word per 4 bytes (hot path: the CPU
        indexes it directly with ``paddr >> 2``).
    size, frame_size, nframes, frame_bits : int
        Geometry; ``frame_size == 1 << frame_bits``.
    code_frames : set of int
        Frames holding code the CPU has translated (maintained by the CPU).
    on_code_write : callable or None
        Called as ``on_code_write(frame)`` when a write method below touches a
        frame in ``code_frames``.

    Examples
    --------
    >>> mem = PhysicalMemory()
    >>> mem.size, mem.nframes, mem.frame_bits
    (65536, 16, 12)
    >>> mem.write_word(8, -1)          # masked to 32 bits
    >>> hex(mem.read_word(8)), mem.words[2] == mem.read_word(8)
    ('0xffffffff', True)
    >>> PhysicalMemory(size=100, frame_size=32)
    Traceback (most recent call last):
    ...
    virtcore.errors.ConfigurationError: memory size 100 is not a positive multiple of frame size 32
    """

    def __init__(self, size: int = 64 * 1024, frame_size: int = 4096) -> None:
        if (
            not isinstance(frame_size, int)
            or frame_size < 8
            or frame_size & (frame_size - 1)
        ):
            raise ConfigurationError(
                f"frame size {frame_size!r} is not a power of two of at least 8 bytes")
        if not isinstance(size, int) or size <= 0 or size % frame_size:
            raise ConfigurationError(
                f"memory size {size!r} is not a positive multiple of frame size {frame_size}")
        self.size: int = size
        self.frame_size: int = frame_size
        self.frame_bits: int = frame_size.bit_length() - 1
        self.nframes: int = size // frame_size
        self.words: list[int] = [0] * (size >> 2)
        self.code_frames: set[int] = set()
        self.on_code_write: Callable[[int], None] | None = None

    def __repr__(self) -> str:
        size = f"{self.size // 1024} KiB" if self.size % 1024 == 0 else f"{self.size} bytes"
        return f"PhysicalMemory({size}, {self.nframes} frames of {self.frame_size} bytes)"

    # -- checks and notification (cold path) ---------------------------------

    def _check_range(self, paddr: int, nbytes: int) -> None:
        if not isinstance(paddr, int) or not isinstance(nbytes, int) or nbytes < 0:
            raise AddressError(f"bad address range {paddr!r}, {nbytes!r} bytes")
        if paddr < 0 or paddr + nbytes > self.size:
            raise AddressError(
                f"physical address range {paddr:#x}..{paddr + nbytes:#x} is outside"
                f" installed memory (0x0..{self.size:#x})")

    def _check_word(self, paddr: int) -> None:
        self._check_range(paddr, 4)
        if paddr & 3:
            raise AddressError(f"physical address {paddr:#x} is not a multiple of 4")

    def _notify(self, first: int, end: int) -> None:
        """Tell ``on_code_write`` about code frames among bytes [first, end)."""
        code = self.code_frames
        callback = self.on_code_write
        if not code or callback is None or end <= first:
            return
        fb = self.frame_bits
        for frame in range(first >> fb, ((end - 1) >> fb) + 1):
            if frame in code:
                callback(frame)

    # -- words ----------------------------------------------------------------

    def read_word(self, paddr: int) -> int:
        """The unsigned 32-bit word at ``paddr`` (a multiple of 4).

        Raises
        ------
        AddressError
            If ``paddr`` is outside memory or not a multiple of 4.

        Examples
        --------
        >>> mem = PhysicalMemory(64, 32)
        >>> mem.words[1] = 7
        >>> mem.read_word(4)
        7
        >>> mem.read_word(6)
        Traceback (most recent call last):
        ...
        virtcore.errors.AddressError: physical address 0x6 is not a multiple of 4
        """
        self._check_word(paddr)
        return self.words[paddr >> 2]

    def write_word(self, paddr: int, value: int) -> None:
        """Store ``value`` (masked to 32 bits) at ``paddr`` (a multiple of 4).

        Examples
        --------
        >>> mem = PhysicalMemory(64, 32)
        >>> mem.code_frames.add(1)
        >>> hits = []
        >>> mem.on_code_write = hits.append
        >>> mem.write_word(0, 1); mem.write_word(32, 2)
        >>> hits
        [1]
        """
        self._check_word(paddr)
        self.words[paddr >> 2] = value & WORD_MASK
        if self.code_frames:
            self._notify(paddr, paddr + 4)

    def load_words(self, paddr: int, words: Sequence[int]) -> None:
        """Copy ``words`` into memory from ``paddr`` on (program loading).

        Examples
        --------
        >>> mem = PhysicalMemory(64, 32)
        >>> mem.load_words(28, [1, 2, 3])
        >>> mem.words[7:10]
        [1, 2, 3]
        """
        words = [w & WORD_MASK for w in words]
        self._check_range(paddr, 4 * len(words))
        if paddr & 3:
            raise AddressError(f"physical address {paddr:#x} is not a multiple of 4")
        start = paddr >> 2
        self.words[start:start + len(words)] = words
        self._notify(paddr, paddr + 4 * len(words))

    # -- bytes (little-endian) -------------------------------------------------

    def read_bytes(self, paddr: int, n: int) -> bytes:
        """``n`` bytes from ``paddr`` (any alignment), little-endian within words.

        Examples
        --------
        >>> mem = PhysicalMemory(64, 32)
        >>> mem.load_words(0, [0x64636261, 0x00006665])
        >>> mem.read_bytes(1, 5)
        b'bcdef'
        """
        self._check_range(paddr, n)
        if n == 0:
            return b""
        first = paddr >> 2
        last = (paddr + n - 1) >> 2
        raw = struct.pack(f"<{last - first + 1}I", *self.words[first:last + 1])
        skip = paddr & 3
        return raw[skip:skip + n]

    def write_bytes(self, paddr: int, data: bytes) -> None:
        """Store ``data`` from ``paddr`` on (any alignment), little-endian within words.

        Examples
        --------
        >>> mem = PhysicalMemory(64, 32)
        >>> mem.write_bytes(2, b"\\x01\\x02\\x03")
        >>> hex(mem.words[0]), hex(mem.words[1])
        ('0x2010000', '0x3')
        """
        data = bytes(data)
        n = len(data)
        self._check_range(paddr, n)
        if n == 0:
            return
        first = paddr >> 2
        last = (paddr + n - 1) >> 2
        count = last - first + 1
        raw = bytearray(struct.pack(f"<{count}I", *self.words[first:last + 1]))
        skip = paddr & 3
        raw[skip:skip + n] = data
        self.words[first:last + 1] = struct.unpack(f"<{count}I", raw)
        self._notify(paddr, paddr + n)

    # -- frames ------------------------------------------------------------------

    def frame_of(self, paddr: int) -> int:
        """The number of the frame holding byte ``paddr``.

        >>> PhysicalMemory(128, 32).frame_of(0x7f)
        3
        """
        self._check_range(paddr, 1)
        return paddr >> self.frame_bits

    def frame_address(self, frame: int) -> int:
        """The physical address where ``frame`` starts.

        >>> hex(PhysicalMemory().frame_address(3))
        '0x3000'
        """
        if not isinstance(frame, int) or not 0 <= frame < self.nframes:
            raise AddressError(f"frame {frame!r} is not installed (0..{self.nframes - 1})")
        return frame << self.frame_bits

    def zero_frame(self, frame: int) -> None:
        """Fill ``frame`` with zeros (notifies a code write if it held code).

        >>> mem = PhysicalMemory(64, 32)
        >>> mem.words[9] = 5
        >>> mem.zero_frame(1); mem.words[9]
        0
        """
        base = self.frame_address(frame)
        per = self.frame_size >> 2
        start = base >> 2
        self.words[start:start + per] = [0] * per
        self._notify(base, base + self.frame_size)

    # -- teaching view -------------------------------------------------------------

    def dump(self, paddr: int, nwords: int) -> str:
        """A hex dump of ``nwords`` words from ``paddr``, four words a line.

        Examples
        --------
        >>> mem = PhysicalMemory(64, 32)
        >>> mem.load_words(0, [0xdeadbeef, 1, 2, 3, 4])
        >>> print(mem.dump(0, 5))
        0x0000: deadbeef 00000001 00000002 00000003
        0x0010: 00000004
        """
        if nwords < 0:
            raise AddressError(f"cannot dump {nwords} words")
        if nwords:
            self._check_word(paddr)
        self._check_range(paddr, 4 * nwords)
        width = max(4, len(f"{self.size - 1:x}"))
        words = self.words
        lines = []
        for line_start in range(paddr, paddr + 4 * nwords, 16):
            end = min(line_start + 16, paddr + 4 * nwords)
            cells = " ".join(f"{words[a >> 2]:08x}" for a in range(line_start, end, 4))
            lines.append(f"0x{line_start:0{width}x}: {cells}")
        return "\n".join(lines)


class OutOfFramesError(VirtcoreError):
    """Every frame is in use: :meth:`FrameAllocator.alloc` has nothing to give."""


class FrameError(VirtcoreError, ValueError):
    """A frame was freed twice, was reserved, or is not installed."""


class FrameAllocator:
    """Hands out free frames, lowest number first, zero-filled.

    Deterministic on purpose: the same calls give the same frames, so traces
    and exercises are reproducible.  (A real kernel's allocator is a buddy
    system with per-CPU free lists; only the contract — a free, zeroed frame or
    failure — matters here.)

    Parameters
    ----------
    memory : PhysicalMemory
        Whose frames are managed.
    reserved : iterable of int
        Frames never handed out (e.g. frame 0, a loaded kernel image, MMIO).

    Examples
    --------
    >>> mem = PhysicalMemory(128, 32)
    >>> alloc = FrameAllocator(mem, reserved=[0, 2])
    >>> alloc.alloc(), alloc.alloc()
    (1, 3)
    >>> alloc.alloc()
    Traceback (most recent call last):
    ...
    virtcore.hw.memory.OutOfFramesError: all 4 frames are in use (2 reserved)
    >>> alloc.free(1); alloc.alloc()
    1
    """

    def __init__(self, memory: PhysicalMemory, reserved: Iterable[int] = ()) -> None:
        self.memory = memory
        reserved_set = frozenset(reserved)
        for frame in reserved_set:
            if not isinstance(frame, int) or not 0 <= frame < memory.nframes:
                raise FrameError(f"reserved frame {frame!r} is not installed")
        self.reserved: frozenset[int] = reserved_set
        self._free: list[int] = [f for f in range(memory.nframes) if f not in reserved_set]
        heapq.heapify(self._free)
        self._used: set[int] = set()

    def __repr__(self) -> str:
        return (f"FrameAllocator({len(self._used)} used, {len(self._free)} free,"
                f" {len(self.reserved)} reserved)")

    @property
    def free_count(self) -> int:
        """How many frames :meth:`alloc` can still hand out."""
        return len(self._free)

    @property
    def used(self) -> frozenset[int]:
        """Frames handed out and not yet freed."""
        return frozenset(self._used)

    def alloc(self) -> int:
        """The lowest free frame, filled with zeros.

        Raises
        ------
        OutOfFramesError
            If no frame is free.
        """
        if not self._free:
            raise OutOfFramesError(
                f"all {self.memory.nframes} frames are in use ({len(self.reserved)} reserved)")
        frame = heapq.heappop(self._free)
        self._used.add(frame)
        self.memory.zero_frame(frame)
        return frame

    def free(self, frame: int) -> None:
        """Give ``frame`` back.

        Raises
        ------
        FrameError
            If ``frame`` is reserved, not installed, or not allocated (double free).
        """
        if frame in self.reserved:
            raise FrameError(f"frame {frame} is reserved and cannot be freed")
        if frame not in self._used:
            raise FrameError(f"frame {frame!r} is not allocated (double free?)")
        self._used.remove(frame)
        heapq.heappush(self._free, frame)
