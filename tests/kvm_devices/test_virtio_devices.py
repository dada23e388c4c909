"""virtio-blk against its backing store, virtio-net between two devices."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtcore.kvm.virtio import (
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_ID_BLOCK,
    VIRTIO_ID_NET,
    VIRTIO_NET_HDR_SIZE,
    GuestRAM,
    QueueFullError,
    VirtioBlk,
    VirtioBlkDriver,
    VirtioError,
    VirtioNet,
    VirtioNetDriver,
)

SECTORS = 32


def _blk(event_idx: bool = True, indirect: bool = False, queue_size: int = 32
         ) -> tuple[GuestRAM, VirtioBlk, VirtioBlkDriver]:
    ram = GuestRAM(256 * 1024)
    dev = VirtioBlk(ram, capacity_sectors=SECTORS, event_idx=event_idx)
    wanted = dev.device_features if indirect else dev.device_features & ~(
        1 << VIRTIO_F_INDIRECT_DESC)
    assert dev.driver_init(wanted) == 15
    return ram, dev, VirtioBlkDriver(ram, dev, queue_size=queue_size, base=0x1000,
                                     indirect=indirect)


def test_request_layout_is_header_data_status() -> None:
    """Check a read request's chain: 16-byte header readable, data then status writable."""
    ram, dev, drv = _blk()
    head = drv.submit(VIRTIO_BLK_T_IN, 5, 0x20000, 1024)
    q = dev.queue(0)
    chain = q.pop()
    assert chain is not None and chain.head == head
    (hdr_addr, hdr_len), = chain.readable
    assert hdr_len == 16
    assert struct.unpack("<IIQ", ram.read_bytes(hdr_addr, 16)) == (VIRTIO_BLK_T_IN, 0, 5)
    assert chain.writable[0] == (0x20000, 1024) and chain.writable[1][1] == 1
    assert dev.device_id == VIRTIO_ID_BLOCK == 2


@settings(max_examples=25, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.booleans(), st.integers(0, SECTORS - 1), st.integers(1, 4),
                  st.binary(min_size=1, max_size=8)),
        min_size=1, max_size=24),
    batch=st.integers(1, 8),
    event_idx=st.booleans(),
    indirect=st.booleans(),
)
def test_blk_matches_a_reference_disk(ops: list, batch: int, event_idx: bool,
                                      indirect: bool) -> None:
    """Check random reads and writes (in batches) against a bytearray model of the disk."""
    ram, dev, drv = _blk(event_idx, indirect)
    ref = bytearray(SECTORS * 512)
    pending: list[tuple[int, int, int, int, bytes | None]] = []
    for i, (is_write, sector, nsec, seed) in enumerate(ops):
        nsec = min(nsec, SECTORS - sector)
        buf = 0x10000 + (i % batch) * 4 * 512
        n = nsec * 512
        if is_write:
            data = (seed * (n // len(seed) + 1))[:n]
            ram.write_bytes(buf, data)
            ref[sector * 512 : sector * 512 + n] = data
            drv.submit(VIRTIO_BLK_T_OUT, sector, buf, n, token=i)
            pending.append((i, sector, n, buf, None))
        else:
            drv.submit(VIRTIO_BLK_T_IN, sector, buf, n, token=i)
            pending.append((i, sector, n, buf, bytes(ref[sector * 512 : sector * 512 + n])))
        if len(pending) == batch or i == len(ops) - 1:
            drv.kick()
            done = {t: (s, w) for t, s, w in drv.collect()}
            for tok, _sector, nbytes, b, expect in pending:
                status, written = done[tok]
                assert status == VIRTIO_BLK_S_OK
                if expect is None:
                    assert written == 1
                else:
                    assert written == nbytes + 1
                    assert ram.read_bytes(b, nbytes) == expect
            pending.clear()
    assert bytes(dev.disk) == bytes(ref)
    assert dev.requests == len(ops) and dev.errors == 0


def test_blk_errors_are_status_bytes() -> None:
    """Check out-of-range, ragged and unknown requests get IOERR/UNSUPP; flush is OK."""
    _ram, dev, drv = _blk()
    assert drv.read(SECTORS - 1, 0x10000, 1024) == VIRTIO_BLK_S_IOERR  # runs past the end
    assert drv.write(0, 0x10000, 100) == VIRTIO_BLK_S_IOERR  # not a whole sector
    drv.submit(7, 0, 0x10000, 0)  # an unknown request type
    drv.kick()
    assert drv.collect()[-1][1] == VIRTIO_BLK_S_UNSUPP
    drv.submit(VIRTIO_BLK_T_FLUSH, 0, 0, 0)
    drv.kick()
    assert drv.collect()[-1][1] == VIRTIO_BLK_S_OK
    assert dev.errors == 3 and dev.requests == 4


def test_blk_queue_fills_up_and_indirect_descriptors_help() -> None:
    """Check 3-descriptor requests fill a 4-entry queue after one; indirect ones fit four."""
    _ram, _dev, drv = _blk(queue_size=4)
    drv.submit(VIRTIO_BLK_T_IN, 0, 0x10000, 512)
    with pytest.raises(QueueFullError):
        drv.submit(VIRTIO_BLK_T_IN, 1, 0x10400, 512)
    _ram, dev, drv = _blk(queue_size=4, indirect=True)
    for i in range(4):
        drv.submit(VIRTIO_BLK_T_IN, i, 0x10000 + 0x400 * i, 512)
    with pytest.raises(QueueFullError):
        drv.submit(VIRTIO_BLK_T_IN, 4, 0x11000, 512)
    drv.kick()
    done = drv.collect()
    assert [d[1] for d in done] == [VIRTIO_BLK_S_OK] * 4
    assert dev.queue(0).chains == 4


def test_feature_negotiation() -> None:
    """Check the driver gets only offered features and the status reaches DRIVER_OK."""
    ram = GuestRAM(64 * 1024)
    dev = VirtioBlk(ram, event_idx=False)
    dev.driver_init(wanted=(1 << VIRTIO_F_EVENT_IDX) | (1 << 40))
    assert not dev.has_feature(VIRTIO_F_EVENT_IDX) and not dev.has_feature(40)
    assert dev.status_names() == "ACKNOWLEDGE|DRIVER|DRIVER_OK|FEATURES_OK"
    fresh = VirtioBlk(ram)
    assert fresh.kick(0) == 0  # not initialised: the kick is ignored


# ------------------------------------------------------------------ virtio-net


def _pair(queue_size: int = 8, event_idx: bool = True
          ) -> tuple[VirtioNetDriver, VirtioNetDriver, VirtioNet, VirtioNet]:
    ra, rb = GuestRAM(256 * 1024), GuestRAM(256 * 1024)
    a, b = VirtioNet(ra, event_idx=event_idx), VirtioNet(rb, event_idx=event_idx)
    a.connect(b)
    a.driver_init()
    b.driver_init()
    da = VirtioNetDriver(ra, a, queue_size=queue_size, base=0x1000)
    db = VirtioNetDriver(rb, b, queue_size=queue_size, base=0x1000)
    return da, db, a, b


@settings(max_examples=30, deadline=None)
@given(frames=st.lists(st.binary(min_size=1, max_size=1514), min_size=1, max_size=20),
       event_idx=st.booleans())
def test_net_frames_cross_between_two_devices_intact(frames: list[bytes],
                                                     event_idx: bool) -> None:
    """Check frames sent by guest A arrive in guest B in order, byte for byte, both ways."""
    da, db, a, b = _pair(event_idx=event_idx)
    da.fill_rx()
    db.fill_rx()
    got_b: list[bytes] = []
    got_a: list[bytes] = []
    for f in frames:
        da.send(f)
        got_b += db.receive()
        db.send(f[::-1])
        got_a += da.receive()
    assert got_b == frames and got_a == [f[::-1] for f in frames]
    assert a.tx_frames == b.rx_frames == len(frames) == b.tx_frames == a.rx_frames
    assert a.device_id == VIRTIO_ID_NET == 1


def test_net_receive_buffers_carry_the_header() -> None:
    """Check a received buffer holds a 12-byte virtio_net_hdr (num_buffers = 1) then the frame."""
    da, db, _a, _b = _pair()
    db.fill_rx()
    da.send(b"\xaa" * 60)
    used = db.rx.get_used()
    assert used is not None
    slot, length = used
    addr = db.rx_bufs + db.BUF * slot  # type: ignore[operator]
    assert length == VIRTIO_NET_HDR_SIZE + 60 == 72
    hdr = db.memory.read_bytes(addr, 12)
    assert struct.unpack("<BBHHHHH", hdr) == (0, 0, 0, 0, 0, 0, 1)
    assert db.memory.read_bytes(addr + 12, 60) == b"\xaa" * 60


def test_net_backlog_waits_for_receive_buffers() -> None:
    """Check frames with no posted buffer wait, then flow when the guest posts and kicks."""
    da, db, _a, b = _pair(queue_size=4)
    frames = [bytes([i]) * (10 + i) for i in range(7)]
    for f in frames:
        da.send(f)
    assert len(b.backlog) == 7 and db.receive(refill=False) == []
    db.fill_rx()  # posts 4 buffers and kicks queue 0: 4 frames delivered
    first = db.receive(refill=False)
    assert first == frames[:4] and len(b.backlog) == 3
    db.fill_rx()
    assert db.receive() == frames[4:] and not b.backlog


def test_net_rejects_bad_frames() -> None:
    """Check the driver refuses empty or oversized frames."""
    da, _db, _a, _b = _pair()
    with pytest.raises(VirtioError):
        da.send(b"")
    with pytest.raises(VirtioError):
        da.send(b"x" * 1515)


def test_net_tx_kicks_are_batched_and_interrupts_suppressed() -> None:
    """Check several frames queued before one kick: one kick, one TX interrupt (event idx)."""
    da, db, a, _b = _pair(queue_size=16)
    db.fill_rx()
    ints = []
    a.interrupt_callback = ints.append
    for i in range(8):
        da.send(bytes([i]) * 20, kick=False)
    assert da.tx.kick() is True and da.tx.kicks == 1
    assert len(db.receive()) == 8
    assert ints.count(1) == 1  # queue 1 (TX) completions: one interrupt for eight frames
