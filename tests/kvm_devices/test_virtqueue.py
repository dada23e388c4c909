"""Split virtqueues: sizes and flags of the spec, chains round trip, indices wrap, suppression.

Facts checked: [VIRTIO-SPEC; VIRTIO-RING-H].
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtcore.errors import ConfigurationError, VirtcoreError
from virtcore.hw.memory import PhysicalMemory
from virtcore.kvm import virtio as V
from virtcore.kvm.virtio import (
    Descriptor,
    GuestRAM,
    LayoutError,
    QueueFullError,
    QueueSizeError,
    VirtqDevice,
    VirtqDriver,
    VirtqLayout,
    vring_need_event,
)

# ------------------------------------------------------------------ [VIRTIO-SPEC; VIRTIO-RING-H]


def test_flag_values_and_descriptor_size() -> None:
    """Check the flag constants and the 16-byte descriptor [VIRTIO-SPEC; VIRTIO-RING-H]."""
    assert (V.VIRTQ_DESC_F_NEXT, V.VIRTQ_DESC_F_WRITE, V.VIRTQ_DESC_F_INDIRECT) == (1, 2, 4)
    assert V.VIRTQ_AVAIL_F_NO_INTERRUPT == 1 and V.VIRTQ_USED_F_NO_NOTIFY == 1
    assert (V.VIRTIO_F_INDIRECT_DESC, V.VIRTIO_F_EVENT_IDX) == (28, 29)
    assert V.DESC_SIZE == 16 == len(Descriptor(1, 2, 3, 4).pack())
    raw = Descriptor(0x1122334455667788, 0x99AABBCC, 0x0102, 0x0304).pack()
    assert raw == struct.pack("<QIHH", 0x1122334455667788, 0x99AABBCC, 0x0102, 0x0304)
    status = (V.ACKNOWLEDGE, V.DRIVER, V.DRIVER_OK, V.FEATURES_OK, V.DEVICE_NEEDS_RESET, V.FAILED)
    assert status == (1, 2, 4, 8, 64, 128)


@pytest.mark.parametrize("qs", [1 << k for k in range(16)])
def test_ring_sizes_for_every_power_of_two(qs: int) -> None:
    """Check avail = 6 + 2·QS, used = 6 + 8·QS, table = 16·QS [VIRTIO-SPEC; VIRTIO-RING-H]."""
    assert V.avail_ring_size(qs) == 6 + 2 * qs
    assert V.used_ring_size(qs) == 6 + 8 * qs
    assert V.desc_table_size(qs) == 16 * qs
    lay = VirtqLayout.contiguous(qs, base=0x1000)
    assert (lay.desc_size, lay.avail_size, lay.used_size) == (16 * qs, 6 + 2 * qs, 6 + 8 * qs)
    assert lay.desc % 16 == 0 and lay.avail % 2 == 0 and lay.used % 4 == 0
    assert lay.avail >= lay.desc + lay.desc_size and lay.used >= lay.avail + lay.avail_size


@pytest.mark.parametrize("bad", [0, 3, 6, 100, 32767, 65536, 1 << 20, -8, True, 2.0, "8"])
def test_queue_size_must_be_power_of_two_at_most_32768(bad: object) -> None:
    """Check that other Queue Sizes raise the typed error [VIRTIO-SPEC; VIRTIO-RING-H]."""
    with pytest.raises(QueueSizeError):
        V.check_queue_size(bad)  # type: ignore[arg-type]
    with pytest.raises(QueueSizeError):
        VirtqLayout.contiguous(bad)  # type: ignore[arg-type]
    assert issubclass(QueueSizeError, VirtcoreError) and issubclass(QueueSizeError,
                                                                    ConfigurationError)


def test_max_queue_size_is_accepted() -> None:
    """Check that 32768 is the largest Queue Size and lays out (legacy: used ring page-aligned)."""
    assert V.check_queue_size(32768) == 32768 == V.MAX_QUEUE_SIZE
    lay = VirtqLayout.contiguous(32768, legacy=True)
    assert lay.used % 4096 == 0 and lay.end == lay.used + 6 + 8 * 32768


def test_layout_checks_alignment_overlap_and_memory() -> None:
    """Check misaligned or overlapping areas and areas outside guest memory are refused."""
    with pytest.raises(LayoutError, match="16-byte aligned"):
        VirtqLayout(8, desc=8, avail=0x400, used=0x800)
    with pytest.raises(LayoutError, match="2-byte aligned"):
        VirtqLayout(8, desc=0, avail=0x401, used=0x800)
    with pytest.raises(LayoutError, match="4-byte aligned"):
        VirtqLayout(8, desc=0, avail=0x400, used=0x802)
    with pytest.raises(LayoutError, match="overlap"):
        VirtqLayout(8, desc=0, avail=0x40, used=0x800)
    with pytest.raises(LayoutError, match="outside guest memory"):
        VirtqDriver(GuestRAM(4096), VirtqLayout.contiguous(256))


def test_ring_fields_lie_where_the_spec_puts_them() -> None:
    """Check avail.idx, the ring entry, used.idx and the used element at their spec offsets."""
    ram = GuestRAM(16384)
    lay = VirtqLayout.contiguous(4, base=0x100)
    drv, dev = VirtqDriver(ram, lay), VirtqDevice(ram, lay)
    head = drv.add([(0x2000, 10)], [(0x3000, 20)])
    assert struct.unpack_from("<HHH", ram.data, lay.avail) == (0, 1, head)  # flags, idx, ring[0]
    d0 = Descriptor.unpack(ram.read_bytes(lay.desc + 16 * head, 16))
    assert d0.addr == 0x2000 and d0.len == 10 and d0.flags == V.VIRTQ_DESC_F_NEXT
    d1 = Descriptor.unpack(ram.read_bytes(lay.desc + 16 * d0.next, 16))
    assert (d1.addr, d1.len, d1.flags) == (0x3000, 20, V.VIRTQ_DESC_F_WRITE)
    chain = dev.pop()
    assert chain is not None
    dev.push(chain.head, 7)
    assert struct.unpack_from("<HHII", ram.data, lay.used) == (0, 1, head, 7)


def test_works_on_hw_physical_memory() -> None:
    """Check the queue also runs in virtcore.hw's word-based PhysicalMemory."""
    mem = PhysicalMemory(64 * 1024, 4096)
    lay = VirtqLayout.contiguous(8, base=0x1000)
    drv, dev = VirtqDriver(mem, lay), VirtqDevice(mem, lay)
    mem.write_bytes(0x8000, b"hello virtio")
    drv.add([(0x8000, 12)], [(0x9001, 5)], token="t")
    chain = dev.pop()
    assert chain is not None and chain.read(mem) == b"hello virtio"
    dev.push(chain.head, chain.write(mem, b"HELLO"))
    assert drv.get_used() == ("t", 5) and mem.read_bytes(0x9001, 5) == b"HELLO"


# ------------------------------------------------------------------ vring_need_event


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0x8000))
def test_vring_need_event_means_event_in_old_new_window(event: int, old: int, step: int) -> None:
    """Check the formula equals 'event is one of the entries old .. new-1' (mod 2^16)."""
    new = (old + step) & 0xFFFF
    window = {(old + k) & 0xFFFF for k in range(step)}
    assert vring_need_event(event, new, old) == (event in window)


# ------------------------------------------------------------------ round trips


def _fast_forward(drv: VirtqDriver, dev: VirtqDevice, idx: int) -> None:
    """Both sides as if ``idx`` chains had already gone round (indices free-running)."""
    ring_avail, ring_used = drv.layout.avail, drv.layout.used
    drv.avail_idx = drv.last_used = idx
    dev.last_avail = dev.used_idx = dev.signalled_used = idx
    drv.memory.write_bytes(ring_avail + 2, struct.pack("<H", idx))
    drv.memory.write_bytes(ring_used + 2, struct.pack("<H", idx))
    if drv.event_idx:
        drv.memory.write_bytes(ring_avail + 4 + 2 * drv.queue_size, struct.pack("<H", idx))
        drv.memory.write_bytes(ring_used + 4 + 8 * drv.queue_size, struct.pack("<H", idx))


chains = st.tuples(
    st.lists(st.integers(1, 300), min_size=0, max_size=3),  # readable buffer sizes
    st.lists(st.integers(1, 300), min_size=0, max_size=3),  # writable buffer sizes
).filter(lambda rw: rw[0] or rw[1])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    qs_log=st.integers(0, 4),
    start=st.integers(0xFFFF - 8, 0xFFFF),
    batches=st.lists(st.lists(chains, min_size=1, max_size=8), min_size=1, max_size=12),
    event_idx=st.booleans(),
    indirect=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_every_chain_comes_back_exactly_once(qs_log: int, start: int, batches: list,
                                             event_idx: bool, indirect: bool,
                                             seed: int) -> None:
    """Check random batches of chains: each returns once, with its token, data and length.

    Indices start just below 65535 so every run wraps the 16-bit counters.
    """
    import random

    rnd = random.Random(seed)
    qs = 1 << qs_log
    ram = GuestRAM(1 << 20)
    lay = VirtqLayout.contiguous(qs, base=0x1000)
    drv = VirtqDriver(ram, lay, event_idx=event_idx)
    dev = VirtqDevice(ram, lay, event_idx=event_idx)
    _fast_forward(drv, dev, start)
    heap = 0x10000
    tables = 0x80000
    expect: dict[int, tuple[bytes, int]] = {}
    returned: list[int] = []
    token = 0
    for batch in batches:
        added = []
        for rsizes, wsizes in batch:
            nbufs = len(rsizes) + len(wsizes)
            use_ind = indirect and nbufs > 1
            if drv.num_free < (1 if use_ind else nbufs) or nbufs > qs:  # chain <= Queue Size
                continue
            out, ins = [], []
            payload = bytearray()
            for n in rsizes:
                data = bytes(rnd.randrange(256) for _ in range(n))
                ram.write_bytes(heap, data)
                out.append((heap, n))
                payload += data
                heap += n
            for n in wsizes:
                ins.append((heap, n))
                heap += n
            table = tables if use_ind else None
            if use_ind:
                tables += 16 * nbufs
            drv.add(out, ins, token=token, indirect_table=table)
            expect[token] = (bytes(payload), sum(wsizes))
            added.append(token)
            token += 1
        drv.kick()
        # the device serves the batch: reads the request, fills some of the reply
        while (chain := dev.pop()) is not None:
            assert dev.broken is None
            written = rnd.randrange(chain.writable_len + 1)
            reply = bytes([chain.head & 0xFF]) * written
            assert chain.write(ram, reply) == written
            dev.push(chain.head, written)
            dev.notify()
            reads = chain.read(ram)
            assert any(reads == expect[t][0] for t in added)
        while (got := drv.get_used()) is not None:
            t, written = got
            assert written <= expect[t][1]  # type: ignore[index]
            returned.append(t)  # type: ignore[arg-type]
    assert sorted(returned) == list(range(token)), "every chain exactly once"
    assert drv.num_free == qs and drv.in_flight == 0
    total = token
    assert drv.avail_idx == (start + total) & 0xFFFF == dev.used_idx
    if total > 0xFFFF - start:
        assert drv.avail_idx < start  # wrapped past 65535


def test_indices_really_wrap_after_65536_requests() -> None:
    """Check a queue of size 2 serving 65,600 requests from index 0 (no fast-forward)."""
    ram = GuestRAM(8192)
    lay = VirtqLayout.contiguous(2)
    drv, dev = VirtqDriver(ram, lay, event_idx=True), VirtqDevice(ram, lay, event_idx=True)
    seen_zero_again = False
    for i in range(65_600):
        drv.add([(0x1000, 4)], [(0x1100, 4)], token=i)
        drv.kick()
        chain = dev.pop()
        assert chain is not None
        dev.push(chain.head, 4)
        dev.notify()
        assert drv.get_used() == (i, 4)
        if i > 0 and drv.avail_idx == 0:
            seen_zero_again = True
    assert seen_zero_again and drv.avail_idx == 65_600 - 65_536 == dev.used_idx
    assert struct.unpack_from("<H", ram.data, lay.avail + 2)[0] == 64


def test_queue_full_and_bad_buffers() -> None:
    """Check that a chain longer than the free descriptors, or outside memory, is refused."""
    ram = GuestRAM(8192)
    drv = VirtqDriver(ram, VirtqLayout.contiguous(2))
    with pytest.raises(QueueFullError):
        drv.add([(0x1000, 1)] * 3)
    drv.add([(0x1000, 1)], [(0x1001, 1)])
    with pytest.raises(QueueFullError):
        drv.add([(0x1000, 1)])
    with pytest.raises(V.VirtioError):
        drv.add([(0x1FFF, 2)])
    with pytest.raises(V.VirtioError):
        drv.add([], [])


# ------------------------------------------------------------------ malformed chains


def _one(ram: GuestRAM, qs: int = 4) -> tuple[VirtqLayout, VirtqDriver, VirtqDevice]:
    lay = VirtqLayout.contiguous(qs)
    return lay, VirtqDriver(ram, lay), VirtqDevice(ram, lay)


@pytest.mark.parametrize(
    ("desc", "why"),
    [
        (Descriptor(0x1000, 4, V.VIRTQ_DESC_F_NEXT, 9), "out of range"),
        (Descriptor(0x1000, 4, V.VIRTQ_DESC_F_INDIRECT | V.VIRTQ_DESC_F_NEXT, 1), "both"),
        (Descriptor(0xFFFF_0000, 4, 0, 0), "outside guest memory"),
        (Descriptor(0x1000, 20, V.VIRTQ_DESC_F_INDIRECT, 0), "malformed"),
    ],
)
def test_malformed_chain_breaks_the_queue_not_the_simulator(desc: Descriptor, why: str) -> None:
    """Check a guest's bad descriptor makes the device broken (a value), never an exception."""
    ram = GuestRAM(16384)
    lay, drv, dev = _one(ram)
    head = drv.add([(0x1000, 4)])
    ram.write_bytes(lay.desc + 16 * head, desc.pack())
    assert dev.pop() is None
    assert dev.broken is not None and why in dev.broken
    assert dev.pop() is None and dev.pending() == 0


def test_readable_after_writable_and_bad_avail_idx() -> None:
    """Check two more guest bugs: order of buffers, and avail.idx running ahead."""
    ram = GuestRAM(16384)
    lay, drv, dev = _one(ram)
    drv.add([(0x1000, 4)], [(0x1100, 4)])
    d0 = Descriptor.unpack(ram.read_bytes(lay.desc, 16))
    ram.write_bytes(lay.desc, d0._replace(flags=V.VIRTQ_DESC_F_NEXT | V.VIRTQ_DESC_F_WRITE).pack())
    ram.write_bytes(lay.desc + 16 * d0.next, Descriptor(0x1100, 4, 0, 0).pack())
    assert dev.pop() is None and "after a writable" in (dev.broken or "")
    ram2 = GuestRAM(16384)
    lay2, _drv2, dev2 = _one(ram2)
    ram2.write_bytes(lay2.avail + 2, struct.pack("<H", 9))  # 9 entries in a 4-entry queue
    assert dev2.pending() == 0 and "moved 9 entries" in (dev2.broken or "")


def test_driver_detects_a_bogus_used_id() -> None:
    """Check the driver refuses a used-ring id that is not a head in flight."""
    ram = GuestRAM(16384)
    _lay, drv, dev = _one(ram)
    drv.add([(0x1000, 4)])
    dev.pop()
    dev.push(3, 0)  # descriptor 3 was never a head
    assert drv.get_used() is None and "not a head" in (drv.broken or "")


def test_device_status_needs_reset_after_a_guest_bug() -> None:
    """Check a broken queue sets DEVICE_NEEDS_RESET (64) and further kicks do nothing."""
    ram = GuestRAM(64 * 1024)
    dev = V.VirtioBlk(ram, capacity_sectors=4)
    dev.driver_init()
    drv = V.VirtioBlkDriver(ram, dev, base=0x1000)
    drv.submit(V.VIRTIO_BLK_T_IN, 0, 0x8000, 512)
    lay = drv.queue.layout
    ram.write_bytes(lay.desc, Descriptor(0x8000, 4, V.VIRTQ_DESC_F_NEXT, 99).pack())
    assert drv.kick() and dev.status & V.DEVICE_NEEDS_RESET
    assert "DEVICE_NEEDS_RESET" in dev.status_names() and dev.kick(0) == 0


# ------------------------------------------------------------------ notification suppression


def _deferred_run(event_idx: bool, n: int, lag: int) -> tuple[int, int]:
    """The driver adds and kicks after every request; the device only runs every ``lag`` adds."""
    ram = GuestRAM(1 << 16)
    lay = VirtqLayout.contiguous(64, base=0x1000)
    drv = VirtqDriver(ram, lay, event_idx=event_idx)
    dev = VirtqDevice(ram, lay, event_idx=event_idx)
    for i in range(n):
        drv.add([(0x8000, 16)], token=i)
        drv.kick()
        if (i + 1) % lag == 0:
            dev.set_notifications(False)
            while (c := dev.pop()) is not None:
                dev.push(c.head, 0)
            dev.set_notifications(True)
            while drv.get_used() is not None:
                pass
    return drv.kicks, drv.kicks_suppressed


def test_event_idx_suppresses_kicks_while_the_device_lags() -> None:
    """Check that with event indices only the first add after the device caught up kicks."""
    kicks, suppressed = _deferred_run(True, 64, 8)
    assert kicks == 8 and suppressed == 56
    kicks_flags, sup_flags = _deferred_run(False, 64, 8)
    assert kicks_flags == 64 and sup_flags == 0  # the flag is only set while the device works
    assert kicks < kicks_flags


def test_no_notify_flag_suppresses_kicks_while_the_device_works() -> None:
    """Check VIRTQ_USED_F_NO_NOTIFY: adds made while the device processes do not kick."""
    ram = GuestRAM(1 << 16)
    lay = VirtqLayout.contiguous(8, base=0x1000)
    drv, dev = VirtqDriver(ram, lay), VirtqDevice(ram, lay)
    dev.set_notifications(False)
    assert ram.read_bytes(lay.used, 2) == b"\x01\x00"
    drv.add([(0x8000, 1)])
    assert drv.kick() is False and drv.kicks_suppressed == 1
    dev.set_notifications(True)
    drv.add([(0x8000, 1)])
    assert drv.kick() is True


def _warm_up(drv: VirtqDriver, dev: VirtqDevice) -> None:
    """One request round trip: QEMU always sends the very first notification of a queue."""
    drv.add([(0x8000, 1)], token="warm-up")
    drv.kick()
    c = dev.pop()
    assert c is not None
    dev.push(c.head, 0)
    assert dev.notify() is True
    assert drv.get_used() == ("warm-up", 0)
    dev.interrupts = dev.interrupts_suppressed = 0


def _interrupts(event_idx: bool, disable: bool, n: int = 16) -> tuple[int, int]:
    ram = GuestRAM(1 << 16)
    lay = VirtqLayout.contiguous(16, base=0x1000)
    drv = VirtqDriver(ram, lay, event_idx=event_idx)
    dev = VirtqDevice(ram, lay, event_idx=event_idx)
    _warm_up(drv, dev)
    for i in range(n):
        drv.add([(0x8000, 1)], token=i)
    drv.kick()
    if disable:
        drv.disable_interrupts()
    while (c := dev.pop()) is not None:  # QEMU notifies after each completed request
        dev.push(c.head, 0)
        dev.notify()
    return dev.interrupts, dev.interrupts_suppressed


def test_interrupt_suppression() -> None:
    """Check one interrupt per batch with event indices, one per request without, none if off."""
    assert _interrupts(event_idx=False, disable=False) == (16, 0)
    assert _interrupts(event_idx=True, disable=False) == (1, 15)
    assert _interrupts(event_idx=False, disable=True) == (0, 16)  # VIRTQ_AVAIL_F_NO_INTERRUPT
    assert _interrupts(event_idx=True, disable=True) == (0, 16)


def test_enable_interrupts_reports_work_that_slipped_in() -> None:
    """Check enable_interrupts() returns False when used chains arrived while disabled."""
    ram = GuestRAM(1 << 16)
    lay = VirtqLayout.contiguous(4, base=0x1000)
    for event_idx in (False, True):
        drv = VirtqDriver(ram, lay, event_idx=event_idx)
        dev = VirtqDevice(ram, lay, event_idx=event_idx)
        _warm_up(drv, dev)
        drv.add([(0x8000, 1)], token="a")
        drv.disable_interrupts()
        c = dev.pop()
        assert c is not None
        dev.push(c.head, 0)
        assert dev.notify() is False
        assert drv.enable_interrupts() is False
        assert drv.get_used() == ("a", 0) and drv.enable_interrupts() is True
