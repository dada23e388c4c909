"""Shared I/O rings (共享环), with the semantics of Xen's ``public/io/ring.h`` [XEN-RING].

The real rules:

- ``DEFINE_RING_TYPES(name, req_t, rsp_t)`` lays out one shared page: a 64-byte header
  ``RING_IDX req_prod, req_event, rsp_prod, rsp_event`` (+ padding), then a ring of
  ``union { req_t; rsp_t; }`` entries.  The number of entries is what fits after the header,
  **rounded down to a power of two** (``__RD32``): 32 for blkif (112-byte requests), 256 for
  netif tx/rx, per 4 KiB page.
- ``RING_IDX`` is a free-running ``unsigned int``: indices only grow (mod 2**32); a slot is
  ``idx & (RING_SIZE - 1)``.  The front end keeps private ``req_prod_pvt`` and ``rsp_cons``, the
  back end ``rsp_prod_pvt`` and ``req_cons``.
- ``SHARED_RING_INIT``: ``req_prod = rsp_prod = 0``, ``req_event = rsp_event = 1`` (only the
  front end initialises the shared ring).
- ``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(r, notify)``: publish ``req_prod = req_prod_pvt`` and
  ``notify = (RING_IDX)(new - req_event) < (RING_IDX)(new - old)`` — notify only if the new
  requests crossed the index the back end asked to be woken at.  Symmetric for responses.
- ``RING_FINAL_CHECK_FOR_REQUESTS(r, work)``: if nothing is unconsumed, set ``req_event =
  req_cons + 1`` and look again (a request that raced in is not missed).  Same for responses.
- "these macros do NO INTERLOCKS OR FLOW CONTROL": the front end must keep at most
  ``RING_SIZE`` requests outstanding (``RING_FREE_REQUESTS``).

The ring lives in a machine frame; each side reaches it through an accessor that goes through
Xen's access check (the front end's own frame; the back end's grant mapping of it), so a side
without access faults (:class:`RingFaultError`).

Simplified: no memory barriers (one thread of execution); entries are packed with
:mod:`struct` in little-endian x86-64 layout.

>>> BLKIF_RING.size, NETIF_TX_RING.size, NETIF_RX_RING.size, BLKIF_RING.req_size
(32, 256, 256, 112)
>>> acc = MemoryAccessor(bytearray(4096))
>>> shared_ring_init(acc); read_header(acc)
(0, 1, 0, 1)
>>> front = FrontRing(BLKIF_RING, acc); back = BackRing(BLKIF_RING, acc)
>>> _ = front.put_request(BLKIF_RING.pack_req((0, 1, 0, 7, 0) + (0, 0, 0) * 11))
>>> front.push_requests_and_check_notify()      # new - req_event = 0 < new - old = 1
True
>>> back.unconsumed_requests(), back.get_request()[3]
(1, 7)
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from virtcore.errors import VirtcoreError

__all__ = [
    "BLKIF_RING",
    "NETIF_RX_RING",
    "NETIF_TX_RING",
    "RING_HEADER_SIZE",
    "BackRing",
    "FrontRing",
    "GuestAccessor",
    "MemoryAccessor",
    "RingFaultError",
    "RingLayout",
    "read_header",
    "ring_size",
    "shared_ring_init",
]

RING_IDX_MASK = 0xFFFFFFFF
#: ``sizeof`` the shared ring header (four RING_IDX + padding to 64 bytes).
RING_HEADER_SIZE = 64
_HDR = struct.Struct("<IIII")


class RingFaultError(VirtcoreError):
    """A ring access faulted: the side has no (more) access to the ring's frame."""


def _rd32(x: int) -> int:
    """``__RD32``: round down to a power of two."""
    return 1 << (x.bit_length() - 1) if x > 0 else 0


def ring_size(page_size: int, entry_size: int) -> int:
    """``__CONST_RING_SIZE``: entries after the header, rounded down to a power of two.

    >>> ring_size(4096, 112), ring_size(4096, 12)
    (32, 256)
    """
    return _rd32((page_size - RING_HEADER_SIZE) // entry_size)


@dataclass(frozen=True)
class RingLayout:
    """One ``DEFINE_RING_TYPES``: request and response layouts (``struct`` formats)."""

    name: str
    req_format: str
    rsp_format: str
    page_size: int = 4096

    @property
    def req_size(self) -> int:
        return struct.calcsize(self.req_format)

    @property
    def rsp_size(self) -> int:
        return struct.calcsize(self.rsp_format)

    @property
    def entry_size(self) -> int:
        """``sizeof(union name_sring_entry)``."""
        return max(self.req_size, self.rsp_size)

    @property
    def size(self) -> int:
        """``RING_SIZE``."""
        return ring_size(self.page_size, self.entry_size)

    def offset(self, idx: int) -> int:
        """Byte offset in the page of the slot for free-running index ``idx``."""
        return RING_HEADER_SIZE + (idx & (self.size - 1)) * self.entry_size

    def pack_req(self, fields: tuple[Any, ...]) -> bytes:
        return struct.pack(self.req_format, *fields)

    def unpack_req(self, data: bytes) -> tuple[Any, ...]:
        return struct.unpack(self.req_format, data[: self.req_size])

    def pack_rsp(self, fields: tuple[Any, ...]) -> bytes:
        return struct.pack(self.rsp_format, *fields)

    def unpack_rsp(self, data: bytes) -> tuple[Any, ...]:
        return struct.unpack(self.rsp_format, data[: self.rsp_size])


#: ``blkif_request`` (operation u8, nr_segments u8, handle u16, id u64, sector_number u64,
#: 11 × {gref u32, first_sect u8, last_sect u8}) = 112 bytes; ``blkif_response`` (id u64,
#: operation u8, status i16) = 16 bytes [XEN-BLKIF].
BLKIF_RING = RingLayout("blkif", "<BBH4xQQ" + "IBB2x" * 11, "<QBxh4x")
#: ``netif_tx_request`` (gref u32, offset u16, flags u16, id u16, size u16) = 12 bytes,
#: ``netif_tx_response`` (id u16, status i16) [XEN-NETIF].
NETIF_TX_RING = RingLayout("netif_tx", "<IHHHH", "<Hh")
#: ``netif_rx_request`` (id u16, pad, gref u32), ``netif_rx_response`` (id u16, offset u16,
#: flags u16, status i16) [XEN-NETIF].
NETIF_RX_RING = RingLayout("netif_rx", "<HHI", "<HHHh")


class MemoryAccessor:
    """A ring page in a plain ``bytearray`` (for examples and baselines)."""

    def __init__(self, page: bytearray) -> None:
        self.page = page

    def read(self, offset: int, n: int) -> bytes:
        return bytes(self.page[offset:offset + n])

    def write(self, offset: int, data: bytes) -> None:
        self.page[offset:offset + len(data)] = data


class GuestAccessor:
    """A ring page in machine frame ``mfn`` as domain ``domid`` reaches it through Xen.

    Every read and write goes through :meth:`~virtcore.xen.hypervisor.Xen.guest_read` /
    ``guest_write``: a domain without access (no ownership, no grant mapping) faults.
    """

    def __init__(self, read: Callable[[int, int, int, int], bytes | int],
                 write: Callable[[int, int, int, bytes], int], domid: int, mfn: int) -> None:
        self._read, self._write, self.domid, self.mfn = read, write, domid, mfn

    def read(self, offset: int, n: int) -> bytes:
        r = self._read(self.domid, self.mfn, offset, n)
        if isinstance(r, int):
            raise RingFaultError(f"d{self.domid} cannot read ring frame {self.mfn:#x}")
        return r

    def write(self, offset: int, data: bytes) -> None:
        if self._write(self.domid, self.mfn, offset, data):
            raise RingFaultError(f"d{self.domid} cannot write ring frame {self.mfn:#x}")


def read_header(acc: Any) -> tuple[int, int, int, int]:
    """``(req_prod, req_event, rsp_prod, rsp_event)`` of the shared ring."""
    return _HDR.unpack(acc.read(0, 16))  # type: ignore[return-value]


def _put(acc: Any, field_index: int, value: int) -> None:
    acc.write(4 * field_index, struct.pack("<I", value & RING_IDX_MASK))


def _get(acc: Any, field_index: int) -> int:
    return int(struct.unpack("<I", acc.read(4 * field_index, 4))[0])


_REQ_PROD, _REQ_EVENT, _RSP_PROD, _RSP_EVENT = 0, 1, 2, 3


def shared_ring_init(acc: Any) -> None:
    """``SHARED_RING_INIT``: req_prod = rsp_prod = 0, req_event = rsp_event = 1."""
    acc.write(0, _HDR.pack(0, 1, 0, 1) + bytes(RING_HEADER_SIZE - 16))


class FrontRing:
    """``name_front_ring_t``: ``req_prod_pvt``, ``rsp_cons``, ``nr_ents`` over the shared page."""

    def __init__(self, layout: RingLayout, acc: Any, start: int = 0) -> None:
        self.layout = layout
        self.acc = acc
        self.nr_ents = layout.size
        self.req_prod_pvt = start  # FRONT_RING_INIT: 0 (``start`` only for wrap-around tests)
        self.rsp_cons = start

    def free_requests(self) -> int:
        """``RING_FREE_REQUESTS``."""
        return self.nr_ents - ((self.req_prod_pvt - self.rsp_cons) & RING_IDX_MASK)

    def full(self) -> bool:
        """``RING_FULL``."""
        return self.free_requests() == 0

    def put_request(self, data: bytes) -> int:
        """Write a request at ``req_prod_pvt`` (``RING_GET_REQUEST`` + fill); returns its index."""
        idx = self.req_prod_pvt
        self.acc.write(self.layout.offset(idx), data)
        self.req_prod_pvt = (idx + 1) & RING_IDX_MASK
        return idx

    def push_requests_and_check_notify(self) -> bool:
        """``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY``: publish; True if the back end must be told."""
        old = _get(self.acc, _REQ_PROD)
        new = self.req_prod_pvt
        _put(self.acc, _REQ_PROD, new)
        req_event = _get(self.acc, _REQ_EVENT)
        return ((new - req_event) & RING_IDX_MASK) < ((new - old) & RING_IDX_MASK)

    def unconsumed_responses(self) -> int:
        """``RING_HAS_UNCONSUMED_RESPONSES``."""
        return (_get(self.acc, _RSP_PROD) - self.rsp_cons) & RING_IDX_MASK

    def get_response(self) -> tuple[Any, ...]:
        """Read the response at ``rsp_cons`` and advance it."""
        data = self.acc.read(self.layout.offset(self.rsp_cons), self.layout.rsp_size)
        self.rsp_cons = (self.rsp_cons + 1) & RING_IDX_MASK
        return self.layout.unpack_rsp(data)

    def response_prod_overflow(self) -> bool:
        """``RING_RESPONSE_PROD_OVERFLOW``: the peer published more than a ring's worth."""
        return ((_get(self.acc, _RSP_PROD) - self.req_prod_pvt) & RING_IDX_MASK) < (
            RING_IDX_MASK // 2) and ((_get(self.acc, _RSP_PROD) - self.rsp_cons)
                                     & RING_IDX_MASK) > self.nr_ents

    def final_check_for_responses(self) -> bool:
        """``RING_FINAL_CHECK_FOR_RESPONSES``: re-arm ``rsp_event`` when idle, then re-check."""
        if self.unconsumed_responses():
            return True
        _put(self.acc, _RSP_EVENT, self.rsp_cons + 1)
        return self.unconsumed_responses() > 0


class BackRing:
    """``name_back_ring_t``: ``rsp_prod_pvt``, ``req_cons``, ``nr_ents``."""

    def __init__(self, layout: RingLayout, acc: Any, start: int = 0) -> None:
        self.layout = layout
        self.acc = acc
        self.nr_ents = layout.size
        self.rsp_prod_pvt = start
        self.req_cons = start

    def unconsumed_requests(self) -> int:
        """``RING_HAS_UNCONSUMED_REQUESTS`` (bounded by the ring size, as in ring.h)."""
        req = (_get(self.acc, _REQ_PROD) - self.req_cons) & RING_IDX_MASK
        rsp = self.nr_ents - ((self.req_cons - self.rsp_prod_pvt) & RING_IDX_MASK)
        return min(req, rsp)

    def get_request(self) -> tuple[Any, ...]:
        """Read the request at ``req_cons`` and advance it."""
        data = self.acc.read(self.layout.offset(self.req_cons), self.layout.req_size)
        self.req_cons = (self.req_cons + 1) & RING_IDX_MASK
        return self.layout.unpack_req(data)

    def put_response(self, data: bytes) -> int:
        """Write a response at ``rsp_prod_pvt``; returns its index."""
        idx = self.rsp_prod_pvt
        self.acc.write(self.layout.offset(idx), data)
        self.rsp_prod_pvt = (idx + 1) & RING_IDX_MASK
        return idx

    def push_responses_and_check_notify(self) -> bool:
        """``RING_PUSH_RESPONSES_AND_CHECK_NOTIFY``."""
        old = _get(self.acc, _RSP_PROD)
        new = self.rsp_prod_pvt
        _put(self.acc, _RSP_PROD, new)
        rsp_event = _get(self.acc, _RSP_EVENT)
        return ((new - rsp_event) & RING_IDX_MASK) < ((new - old) & RING_IDX_MASK)

    def request_prod_overflow(self) -> bool:
        """``RING_REQUEST_PROD_OVERFLOW``: ``req_prod - rsp_prod_pvt > RING_SIZE`` — a bogus
        (or corrupted) producer index; a back end must stop rather than loop on it."""
        return ((_get(self.acc, _REQ_PROD) - self.rsp_prod_pvt) & RING_IDX_MASK) > self.nr_ents

    def final_check_for_requests(self) -> bool:
        """``RING_FINAL_CHECK_FOR_REQUESTS``: re-arm ``req_event`` when idle, then re-check."""
        if self.unconsumed_requests():
            return True
        _put(self.acc, _REQ_EVENT, self.req_cons + 1)
        return self.unconsumed_requests() > 0
