"""Tests for virtcore.hw.devices: interrupt controller, bus, serial, timer, disk, NIC."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtcore.errors import ConfigurationError, VirtcoreError
from virtcore.hw.devices import (
    BLK_CMD_READ,
    BLK_CMD_WRITE,
    FLOATING_BUS,
    MAX_FRAME,
    NIC_BASE,
    NIC_ERROR,
    NIC_RX_ACK,
    NIC_RX_ADDR,
    NIC_RX_LEN,
    NIC_RX_READY,
    NIC_STATUS,
    NIC_TX_ADDR,
    NIC_TX_DONE,
    NIC_TX_DOORBELL,
    NIC_TX_LEN,
    STATUS_BUSY,
    STATUS_DONE,
    STATUS_ERROR,
    BlockDevice,
    Bus,
    BusEvent,
    Device,
    DeviceError,
    InterruptController,
    NetworkCard,
    Serial,
    Timer,
    UnknownDeviceError,
    make_pc_devices,
)
from virtcore.hw.memory import PhysicalMemory

COM1 = 0x3F8
LSR = COM1 + 5
IER = COM1 + 1
IIR = COM1 + 2
LCR = COM1 + 3
SCR = COM1 + 7
PIT0 = 0x40
ATA = 0x1F0


def new_pc(size: int = 64 * 1024) -> tuple[Bus, InterruptController, PhysicalMemory]:
    mem = PhysicalMemory(size)
    irq = InterruptController()
    return make_pc_devices(mem, irq), irq, mem


def disk_command(bus: Bus, command: int, sector: int, addr: int, count: int) -> None:
    bus.port_out(ATA + 0, sector)
    bus.port_out(ATA + 1, addr)
    bus.port_out(ATA + 2, count)
    bus.port_out(ATA + 3, command)


def nic_send(bus: Bus, mem: PhysicalMemory, frame: bytes, addr: int = 0x1000) -> None:
    mem.write_bytes(addr, frame)
    bus.mmio_write(NIC_BASE + NIC_TX_ADDR, addr)
    bus.mmio_write(NIC_BASE + NIC_TX_LEN, len(frame))
    bus.mmio_write(NIC_BASE + NIC_TX_DOORBELL, 1)


def brute_deadline(bus: Bus) -> int | None:
    ds = [d for dev in bus.devices if (d := dev.next_deadline()) is not None]
    return min(ds) if ds else None


# ---------------------------------------------------------------------------
# Interrupt controller
# ---------------------------------------------------------------------------


def test_priority_lowest_line_wins():
    pic = InterruptController()
    for line in (14, 4, 11, 0):
        pic.raise_irq(line)
    assert [pic.acknowledge() for _ in range(5)] == [0, 4, 11, 14, None]
    assert pic.pending == 0
    assert pic.acknowledged[4] == 1


def test_mask_holds_request_until_unmasked():
    pic = InterruptController()
    pic.mask = (1 << 0) | (1 << 4)
    pic.raise_irq(4)
    assert pic.pending == 1 << 4, "a masked line still latches its request (IRR)"
    assert pic.highest_pending() is None
    assert pic.acknowledge() is None
    assert pic.is_masked(4)
    pic.mask &= ~(1 << 4)
    assert not pic.is_masked(4)
    assert pic.highest_pending() == 4
    assert pic.acknowledge() == 4


def test_masked_higher_priority_does_not_block_lower():
    pic = InterruptController()
    pic.mask = 1 << 0
    pic.raise_irq(0)
    pic.raise_irq(14)
    assert pic.acknowledge() == 14
    assert pic.pending == 1


def test_edge_coalescing_and_counts():
    pic = InterruptController()
    pic.raise_irq(4)
    pic.raise_irq(4)
    assert pic.pending == 1 << 4
    assert (pic.raised[4], pic.coalesced[4]) == (2, 1)
    assert pic.acknowledge() == 4
    assert pic.acknowledge() is None, "two edges while pending deliver one interrupt"
    assert pic.counts() == {4: 2}


def test_lower_irq_withdraws_request():
    pic = InterruptController()
    pic.raise_irq(9)
    pic.lower_irq(9)
    pic.lower_irq(9)  # not pending: nothing to withdraw
    assert pic.pending == 0
    assert pic.withdrawn[9] == 1
    assert pic.acknowledge() is None


@pytest.mark.parametrize("line", [-1, 16, 3.0, "4", True, None])
def test_bad_lines_rejected(line):
    pic = InterruptController()
    with pytest.raises(ConfigurationError):
        pic.raise_irq(line)
    with pytest.raises(ConfigurationError):
        pic.lower_irq(line)


def test_bad_count_rejected():
    with pytest.raises(ConfigurationError):
        InterruptController().raise_irq(1, count=0)


def test_history_records_ticks_from_bus():
    bus, irq, _ = new_pc()
    bus.port_out(PIT0, 10)
    bus.advance(10)
    irq.acknowledge()
    assert list(irq.history) == [(10, "raise", 0), (10, "ack", 0)]
    assert "pending=[]" in repr(irq)


@given(st.lists(st.tuples(st.sampled_from(["raise", "lower", "ack", "mask"]),
                          st.integers(0, 15)), max_size=60))
def test_pic_accounting_invariant(ops):
    """Every edge is delivered, coalesced, withdrawn or still pending."""
    pic = InterruptController()
    for op, line in ops:
        if op == "raise":
            pic.raise_irq(line)
        elif op == "lower":
            pic.lower_irq(line)
        elif op == "ack":
            got = pic.acknowledge()
            if got is not None:
                assert not pic.mask >> got & 1
        else:
            pic.mask ^= 1 << line
    for line in range(16):
        pending = pic.pending >> line & 1
        assert pic.raised[line] == (pic.acknowledged[line] + pic.coalesced[line]
                                    + pic.withdrawn[line] + pending), line


# ---------------------------------------------------------------------------
# Bus: decoding, floating bus, overlaps
# ---------------------------------------------------------------------------


def test_port_decoding_routes_each_range():
    bus, _, _ = new_pc()
    bus.port_out(SCR, 0x5A)
    assert bus.port_in(SCR) == 0x5A
    assert bus.port_in(LSR) == 0x60
    bus.port_out(ATA + 0, 7)
    assert bus.port_in(ATA + 0) == 7
    assert bus["disk"].sector == 7
    bus.port_out(PIT0, 25)
    assert bus.port_in(PIT0) == 25
    # Neighbours of owned ranges are not owned.
    for port in (COM1 - 1, COM1 + 8, PIT0 + 1, PIT0 + 3, ATA - 1, ATA + 8):
        assert bus.port_in(port) == FLOATING_BUS, hex(port)


def test_floating_bus_and_unowned_counters():
    bus = Bus(InterruptController(), None)
    assert bus.port_in(0x1234) == 0xFFFF_FFFF
    assert bus.port_in(0x80) == 0xFFFF_FFFF
    bus.port_out(0x80, 0x55)
    assert (bus.unowned_reads, bus.unowned_writes) == (2, 1)
    assert bus.mmio_read(0xFEB0_0000) is None
    assert bus.mmio_write(0xFEB0_0000, 1) is False
    assert not bus.is_mmio(0xFEB0_0000)
    assert bus.unowned_mmio == 2


def test_port_values_masked_to_32_bits():
    bus, _, _ = new_pc()
    bus.port_out(ATA + 1, 0x1_2345_6789)
    assert bus.port_in(ATA + 1) == 0x2345_6789


def test_overlapping_ports_rejected_naming_both():
    bus = Bus(InterruptController(), None)
    bus.attach(BlockDevice(name="ata0"))

    class Weird(Device):
        ports = range(0x1F7, 0x1FA)

    with pytest.raises(ConfigurationError, match=r"'weird'.*'ata0'"):
        bus.attach(Weird("weird"))
    assert [d.name for d in bus.devices] == ["ata0"]
    assert bus.port_in(0x1F8) == FLOATING_BUS, "a rejected device must not claim ports"


def test_overlapping_mmio_rejected_naming_both():
    bus = Bus(InterruptController(), PhysicalMemory(4096))
    bus.attach(NetworkCard(name="eth0"))
    with pytest.raises(ConfigurationError, match=r"'eth1'.*'eth0'"):
        bus.attach(NetworkCard(name="eth1", base=NIC_BASE + 0x800))
    bus.attach(NetworkCard(name="eth1", base=NIC_BASE + 0x1000))  # adjacent is fine
    assert bus.mmio_write(NIC_BASE + 0x1000 + NIC_RX_ADDR, 0x40)
    assert bus["eth1"].rx_addr == 0x40
    assert bus["eth0"].rx_addr == 0


def test_mmio_inside_ram_rejected():
    bus = Bus(InterruptController(), PhysicalMemory(64 * 1024))
    with pytest.raises(ConfigurationError, match="RAM"):
        bus.attach(NetworkCard(base=0x8000))


def test_duplicate_names_and_double_attach_rejected():
    bus = Bus(InterruptController(), None)
    s = bus.attach(Serial())
    with pytest.raises(ConfigurationError, match="already attached"):
        bus.attach(Serial(base=0x2F8, irq_line=3))
    with pytest.raises(ConfigurationError, match="already attached"):
        Bus(InterruptController(), None).attach(s)
    with pytest.raises(ConfigurationError):
        bus.attach("serial")  # type: ignore[arg-type]


def test_bad_ranges_rejected():
    class Wide(Device):
        ports = range(0xFFFF, 0x10001)

    class Stepped(Device):
        ports = range(0x100, 0x110, 2)

    class BadIrq(Device):
        irq_line = 16

    bus = Bus(InterruptController(), None)
    for cls in (Wide, Stepped, BadIrq):
        with pytest.raises(ConfigurationError):
            bus.attach(cls(cls.__name__.lower()))
    with pytest.raises(ConfigurationError):
        Device("")


def test_lookup_by_name():
    bus, _, _ = new_pc()
    assert isinstance(bus["serial"], Serial)
    assert "nic" in bus
    assert "gpu" not in bus
    assert len(bus) == 4
    assert list(bus) == bus.devices
    with pytest.raises(UnknownDeviceError, match="gpu") as info:
        bus["gpu"]
    assert isinstance(info.value, VirtcoreError)
    assert isinstance(info.value, KeyError)


def test_resources_table():
    bus, _, _ = new_pc()
    assert bus.resources() == [
        ("serial", "0x3f8-0x3ff", "", 4),
        ("timer", "0x40-0x40", "", 0),
        ("disk", "0x1f0-0x1f7", "", 14),
        ("nic", "", "0xfeb00000-0xfeb00fff", 11),
    ]


def test_tracing_off_by_default_and_records_when_on():
    bus, _, _ = new_pc()
    bus.port_out(COM1, ord("a"))
    assert bus.trace == []
    bus.tracing = True
    bus.advance(3)
    bus.port_out(COM1, ord("b"))
    bus.port_in(0x80)
    bus.mmio_read(NIC_BASE + NIC_STATUS)
    assert bus.trace == [
        BusEvent(3, "serial", "out", COM1, ord("b")),
        BusEvent(3, None, "in", 0x80, FLOATING_BUS),
        BusEvent(3, "nic", "mmio_read", NIC_BASE + NIC_STATUS, 0),
    ]
    assert "0x3f8 <- 0x62" in str(bus.trace[0])


def test_trace_shows_dma_and_irq():
    bus, _, _ = new_pc()
    bus.tracing = True
    disk_command(bus, BLK_CMD_READ, 0, 0x2000, 1)
    bus.advance(100)
    ops = [(e.op, e.device) for e in bus.trace if e.op in ("dma_write", "irq")]
    assert ops == [("dma_write", "disk"), ("irq", "disk")]
    dma = next(e for e in bus.trace if e.op == "dma_write")
    assert (dma.tick, dma.where, dma.value) == (100, 0x2000, 512)


def test_clock_may_not_go_backwards():
    bus, _, _ = new_pc()
    bus.advance(50)
    with pytest.raises(DeviceError):
        bus.advance(49)
    bus.advance(50)  # standing still is fine


def test_device_that_never_consumes_its_deadline_is_reported():
    class Stuck(Device):
        def next_deadline(self) -> int:
            return 5

    bus = Bus(InterruptController(), None)
    bus.attach(Stuck("stuck"))
    bus.advance(4)
    with pytest.raises(DeviceError, match="stuck"):
        bus.advance(5)


# ---------------------------------------------------------------------------
# Serial
# ---------------------------------------------------------------------------


def test_serial_output():
    bus, irq, _ = new_pc()
    for ch in "héllo\n".encode("latin-1"):
        bus.port_out(COM1, ch)
    bus.port_out(COM1, 0x141)  # only the low byte goes out
    s = bus["serial"]
    assert s.output == bytearray("héllo\n".encode("latin-1")) + b"A"
    assert s.text == "héllo\nA"
    assert irq.pending == 0, "no IRQ unless IER asks for one"
    assert repr(s) == "Serial(COM1 0x3f8, 7 bytes out, irq 4)"


def test_serial_input_and_lsr():
    bus, irq, _ = new_pc()
    s = bus["serial"]
    assert bus.port_in(LSR) & 0x01 == 0
    assert bus.port_in(COM1) == 0, "RBR reads 0 when nothing was received"
    s.feed(b"ab")
    assert irq.pending == 0, "IER bit 0 is clear: no interrupt"
    assert bus.port_in(LSR) == 0x61
    assert "2 bytes in" in repr(s)
    assert bus.port_in(COM1) == ord("a")
    assert bus.port_in(COM1) == ord("b")
    assert bus.port_in(LSR) == 0x60
    assert s.received == 2
    assert s.input_waiting == 0
    with pytest.raises(ConfigurationError):
        s.feed("text")  # type: ignore[arg-type]


def test_serial_receive_interrupt():
    bus, irq, _ = new_pc()
    s = bus["serial"]
    bus.port_out(IER, 0x01)
    assert irq.pending == 0
    s.feed(b"x")
    assert irq.acknowledge() == 4
    assert bus.port_in(IIR) == 0x04  # received data available
    assert bus.port_in(COM1) == ord("x")
    assert bus.port_in(IIR) == 0x01  # no interrupt pending
    s.feed(b"")
    assert irq.pending == 0, "feeding nothing raises nothing"


def test_serial_enabling_ier_with_queued_input_interrupts():
    bus, irq, _ = new_pc()
    bus["serial"].feed(b"q")
    assert irq.pending == 0
    bus.port_out(IER, 0x01)
    assert irq.highest_pending() == 4


def test_serial_thr_empty_interrupt():
    bus, irq, _ = new_pc()
    bus.port_out(IER, 0x02)
    assert irq.acknowledge() == 4, "THR is empty, so enabling ETBEI interrupts at once"
    assert bus.port_in(IIR) == 0x02
    assert bus.port_in(IIR) == 0x01, "reading IIR clears the THRE interrupt"
    bus.port_out(COM1, ord("z"))
    assert irq.acknowledge() == 4


def test_serial_divisor_latch():
    bus, _, _ = new_pc()
    bus.port_out(LCR, 0x80)  # DLAB
    bus.port_out(COM1, 0x01)
    bus.port_out(IER, 0x00)
    assert bus["serial"].divisor == 1  # 115200 baud
    assert bus.port_in(COM1) == 1
    bus.port_out(LCR, 0x03)  # 8N1, DLAB off
    bus.port_out(COM1, ord("k"))
    assert bus["serial"].text == "k", "divisor writes are not output"


def test_serial_on_com2():
    s = Serial(name="com2", base=0x2F8, irq_line=3)
    assert s.ports == range(0x2F8, 0x300)
    assert repr(s).startswith("Serial(COM2 0x2f8")


# ---------------------------------------------------------------------------
# Timer
# ---------------------------------------------------------------------------


def test_timer_fires_at_each_period_boundary():
    bus, irq, _ = new_pc()
    bus.advance(7)
    bus.port_out(PIT0, 100)
    assert bus.next_deadline() == 107
    fired_at = []
    for tick in range(7, 420):
        bus.advance(tick)
        if irq.acknowledge() == 0:
            fired_at.append(tick)
    assert fired_at == [107, 207, 307, 407]
    assert bus["timer"].fired == 4


def test_timer_long_jump_coalesces_into_one_pending_edge():
    bus, irq, _ = new_pc()
    t = bus["timer"]
    bus.port_out(PIT0, 100)
    bus.advance(1000)
    assert t.fired == 10
    assert irq.pending == 1 << 0
    assert (irq.raised[0], irq.coalesced[0]) == (10, 9)
    assert irq.acknowledge() == 0
    assert irq.acknowledge() is None, "the ten expiries deliver one interrupt"
    assert bus.next_deadline() == 1100
    bus.advance(1099)
    assert t.fired == 10
    assert irq.pending == 0
    bus.advance(1100)
    assert t.fired == 11
    assert irq.pending == 1


def test_timer_coalesces_with_unacknowledged_earlier_tick():
    bus, irq, _ = new_pc()
    bus.port_out(PIT0, 10)
    bus.advance(10)
    bus.advance(20)  # CPU never acknowledged the first tick
    assert irq.raised[0] == 2
    assert irq.coalesced[0] == 1
    assert bus["timer"].fired == 2


def test_timer_read_stop_and_reprogram():
    bus, irq, _ = new_pc()
    t = bus["timer"]
    assert bus.port_in(PIT0) == 0, "a stopped timer reads 0"
    bus.port_out(PIT0, 100)
    bus.advance(30)
    assert bus.port_in(PIT0) == 70
    bus.port_out(PIT0, 0)
    assert bus.next_deadline() is None
    bus.advance(500)
    assert t.fired == 0
    assert irq.pending == 0
    bus.port_out(PIT0, 50)  # restarts from now = 500
    assert bus.next_deadline() == 550
    assert repr(t) == "Timer(PIT 0x40, period 50, fired 0, irq 0)"
    with pytest.raises(ConfigurationError):
        t.program(-1)


# ---------------------------------------------------------------------------
# Block device
# ---------------------------------------------------------------------------


def test_block_write_then_read_round_trip_with_latency_and_irq():
    bus, irq, mem = new_pc()
    disk = bus["disk"]
    payload = bytes(range(256)) * 4  # two sectors
    mem.write_bytes(0x3000, payload)
    bus.advance(10)
    disk_command(bus, BLK_CMD_WRITE, 5, 0x3000, 2)
    assert bus.port_in(ATA + 7) == STATUS_BUSY
    assert disk.busy
    assert bus.next_deadline() == 110
    bus.advance(109)
    assert bus.port_in(ATA + 7) == STATUS_BUSY
    assert irq.pending == 0
    assert disk.read_sector(5) == bytes(512), "nothing is copied before completion"
    bus.advance(110)
    assert bus.port_in(ATA + 7) == STATUS_DONE
    assert irq.acknowledge() == 14
    assert disk.read_sector(5) + disk.read_sector(6) == payload
    assert bus.next_deadline() is None

    disk_command(bus, BLK_CMD_READ, 5, 0x8000, 2)
    bus.advance(300)
    assert bus.port_in(ATA + 7) == STATUS_DONE
    assert irq.acknowledge() == 14
    assert mem.read_bytes(0x8000, 1024) == payload
    assert (disk.reads, disk.writes, disk.bytes, disk.errors) == (1, 1, 2048, 0)


def test_block_dma_copy_happens_at_completion_time():
    bus, _, mem = new_pc()
    mem.write_bytes(0x100, b"old!")
    disk_command(bus, BLK_CMD_WRITE, 0, 0x100, 1)
    mem.write_bytes(0x100, b"new!")  # the driver touched the buffer while BUSY
    bus.advance(100)
    assert bus["disk"].read_sector(0)[:4] == b"new!"


def test_block_registers_latched_at_command():
    bus, _, mem = new_pc()
    disk = bus["disk"]
    disk.write_sector(3, b"three")
    disk_command(bus, BLK_CMD_READ, 3, 0x400, 1)
    bus.port_out(ATA + 0, 9)  # changing registers mid-flight does not change the command
    bus.port_out(ATA + 1, 0x900)
    bus.advance(100)
    assert mem.read_bytes(0x400, 5) == b"three"
    assert mem.read_bytes(0x900, 5) == bytes(5)


@pytest.mark.parametrize(
    ("command", "sector", "addr", "count", "why"),
    [
        (BLK_CMD_READ, 64, 0, 1, "beyond"),
        (BLK_CMD_READ, 63, 0, 2, "beyond"),
        (BLK_CMD_READ, 0, 0xFFFF_0000, 1, "not in RAM"),
        (BLK_CMD_WRITE, 0, 64 * 1024 - 100, 1, "not in RAM"),
        (BLK_CMD_WRITE, 0, 0, 0, "count"),
        (7, 0, 0, 1, "unknown command"),
    ],
)
def test_block_errors_set_error_status_not_crash(command, sector, addr, count, why):
    bus, irq, mem = new_pc()
    disk = bus["disk"]
    disk.write_sector(63, b"keep")
    mem.write_bytes(0, b"mem!")
    disk_command(bus, command, sector, addr, count)
    bus.advance(100)
    assert bus.port_in(ATA + 7) == STATUS_ERROR
    assert why in disk.error
    assert irq.acknowledge() == 14, "errors interrupt too, so the driver wakes up"
    assert disk.errors == 1
    assert disk.reads == disk.writes == disk.bytes == 0
    assert disk.read_sector(63)[:4] == b"keep"
    assert mem.read_bytes(0, 4) == b"mem!"
    assert "error" in repr(disk)


def test_block_command_while_busy_is_dropped():
    bus, _, _ = new_pc()
    disk = bus["disk"]
    disk_command(bus, BLK_CMD_READ, 0, 0, 1)
    bus.advance(50)
    disk_command(bus, BLK_CMD_WRITE, 1, 0, 1)
    assert disk.dropped == 1
    assert bus.next_deadline() == 100, "the in-flight command keeps its deadline"
    bus.advance(100)
    assert (disk.reads, disk.writes) == (1, 0)


def test_block_without_memory_errors():
    bus = Bus(InterruptController(), None)
    disk = bus.attach(BlockDevice(sectors=2, sector_size=16, latency=0))
    disk_command(bus, BLK_CMD_READ, 0, 0, 1)
    bus.advance(0)
    assert disk.status == STATUS_ERROR


def test_block_configuration_checked():
    for kwargs in ({"sectors": 0}, {"sector_size": 100}, {"sector_size": 2},
                   {"latency": -1}):
        with pytest.raises(ConfigurationError):
            BlockDevice(**kwargs)
    disk = BlockDevice(sectors=2, sector_size=16)
    with pytest.raises(ConfigurationError):
        disk.write_sector(2, b"")
    with pytest.raises(ConfigurationError):
        disk.write_sector(0, bytes(17))
    assert repr(disk) == "BlockDevice(ATA 0x1f0, 2 x 16 B, idle, irq 14)"


@settings(max_examples=60, deadline=None)
@given(
    sector_size=st.sampled_from([16, 64, 512]),
    data=st.data(),
)
def test_block_write_then_read_returns_same_bytes(sector_size, data):
    sectors = 16
    mem = PhysicalMemory(16 * 1024)
    bus = Bus(InterruptController(), mem)
    disk = bus.attach(BlockDevice(sectors=sectors, sector_size=sector_size, latency=7))
    count = data.draw(st.integers(1, 4), label="count")
    sector = data.draw(st.integers(0, sectors - count), label="sector")
    payload = data.draw(st.binary(min_size=count * sector_size, max_size=count * sector_size))
    src = data.draw(st.integers(0, 4096 - len(payload)), label="src")
    dst = data.draw(st.integers(8192, 16 * 1024 - len(payload)), label="dst")
    mem.write_bytes(src, payload)
    disk_command(bus, BLK_CMD_WRITE, sector, src, count)
    bus.advance(bus.next_deadline())
    disk_command(bus, BLK_CMD_READ, sector, dst, count)
    bus.advance(bus.next_deadline())
    assert disk.status == STATUS_DONE
    assert mem.read_bytes(dst, len(payload)) == payload
    assert bytes(disk.data[sector * sector_size:(sector + count) * sector_size]) == payload


# ---------------------------------------------------------------------------
# Network card
# ---------------------------------------------------------------------------


def two_machines(latency: int = 50):
    a_bus, a_irq, a_mem = new_pc()
    b_bus, b_irq, b_mem = new_pc()
    a, b = a_bus["nic"], b_bus["nic"]
    a.latency = b.latency = latency
    a.connect(b)
    return (a_bus, a_irq, a_mem), (b_bus, b_irq, b_mem)


def advance_both(t: int, *buses: Bus) -> None:
    for bus in buses:
        bus.advance(t)


def test_nic_send_between_connected_cards_with_latency():
    (a_bus, _, a_mem), (b_bus, b_irq, b_mem) = two_machines()
    b_bus.mmio_write(NIC_BASE + NIC_RX_ADDR, 0x6000)
    advance_both(20, a_bus, b_bus)
    nic_send(a_bus, a_mem, b"hello, world")
    assert a_bus.mmio_read(NIC_BASE + NIC_STATUS) & NIC_TX_DONE
    assert a_bus["nic"].sent == [b"hello, world"]
    assert b_bus.next_deadline() == 70
    advance_both(69, a_bus, b_bus)
    assert b_bus.mmio_read(NIC_BASE + NIC_RX_LEN) == 0
    assert b_irq.pending == 0
    advance_both(70, a_bus, b_bus)
    assert b_irq.acknowledge() == 11
    assert b_bus.mmio_read(NIC_BASE + NIC_RX_LEN) == 12
    assert b_bus.mmio_read(NIC_BASE + NIC_STATUS) & NIC_RX_READY
    assert b_mem.read_bytes(0x6000, 12) == b"hello, world"
    assert b_bus["nic"].received == [b"hello, world"]
    assert b_bus.next_deadline() is None


def test_nic_rx_backpressure_until_ack():
    (a_bus, _, a_mem), (b_bus, b_irq, b_mem) = two_machines(latency=10)
    b = b_bus["nic"]
    b_bus.mmio_write(NIC_BASE + NIC_RX_ADDR, 0x6000)
    nic_send(a_bus, a_mem, b"first")
    nic_send(a_bus, a_mem, b"second!", addr=0x1100)
    advance_both(10, a_bus, b_bus)
    assert b_irq.acknowledge() == 11
    assert b_bus.mmio_read(NIC_BASE + NIC_RX_LEN) == 5
    advance_both(500, a_bus, b_bus)
    assert b_irq.pending == 0, "the second frame waits: the RX buffer is full"
    assert b_mem.read_bytes(0x6000, 5) == b"first"
    assert b.queued == 1
    b_bus.mmio_write(NIC_BASE + NIC_RX_ACK, 1)
    assert b_irq.acknowledge() == 11, "ACK frees the buffer; the queued frame follows"
    assert b_bus.mmio_read(NIC_BASE + NIC_RX_LEN) == 7
    assert b_mem.read_bytes(0x6000, 7) == b"second!"
    b_bus.mmio_write(NIC_BASE + NIC_RX_ACK, 1)
    assert b_bus.mmio_read(NIC_BASE + NIC_RX_LEN) == 0
    assert not b_bus.mmio_read(NIC_BASE + NIC_STATUS) & NIC_RX_READY
    assert b_irq.pending == 0
    assert b.queued == 0
    b_bus.mmio_write(NIC_BASE + NIC_RX_ACK, 1)  # ACK with nothing in the buffer: harmless
    assert b.received == [b"first", b"second!"]


def test_nic_cable_is_bidirectional():
    (a_bus, a_irq, a_mem), (b_bus, _, b_mem) = two_machines(latency=5)
    a_bus.mmio_write(NIC_BASE + NIC_RX_ADDR, 0x7000)
    nic_send(b_bus, b_mem, b"pong")
    advance_both(5, a_bus, b_bus)
    assert a_irq.acknowledge() == 11
    assert a_mem.read_bytes(0x7000, 4) == b"pong"


@pytest.mark.parametrize(("length", "addr"), [(0, 0x1000), (MAX_FRAME + 1, 0x1000),
                                               (16, 64 * 1024 - 8)])
def test_nic_tx_errors(length, addr):
    bus, _, _ = new_pc()
    nic = bus["nic"]
    bus.mmio_write(NIC_BASE + NIC_TX_ADDR, addr)
    bus.mmio_write(NIC_BASE + NIC_TX_LEN, length)
    bus.mmio_write(NIC_BASE + NIC_TX_DOORBELL, 1)
    status = bus.mmio_read(NIC_BASE + NIC_STATUS)
    assert status & NIC_ERROR
    assert not status & NIC_TX_DONE
    assert nic.sent == []
    assert nic.errors == 1
    bus.mmio_write(NIC_BASE + NIC_STATUS, NIC_ERROR)  # write 1 to clear
    assert bus.mmio_read(NIC_BASE + NIC_STATUS) == 0


def test_nic_doorbell_needs_value_one_and_status_w1c():
    bus, _, mem = new_pc()
    nic = bus["nic"]
    mem.write_bytes(0x1000, b"abc")
    bus.mmio_write(NIC_BASE + NIC_TX_ADDR, 0x1000)
    bus.mmio_write(NIC_BASE + NIC_TX_LEN, 3)
    bus.mmio_write(NIC_BASE + NIC_TX_DOORBELL, 0)
    assert nic.sent == []
    bus.mmio_write(NIC_BASE + NIC_TX_DOORBELL, 1)
    assert nic.sent == [b"abc"], "without a peer the frame is only recorded"
    assert bus.mmio_read(NIC_BASE + NIC_TX_ADDR) == 0x1000
    assert bus.mmio_read(NIC_BASE + NIC_TX_LEN) == 3
    assert bus.mmio_read(NIC_BASE + 0x800) == 0
    bus.mmio_write(NIC_BASE + NIC_STATUS, NIC_TX_DONE)
    assert bus.mmio_read(NIC_BASE + NIC_STATUS) == 0
    assert bus.next_deadline() is None


def test_nic_rx_dma_outside_ram_drops_frame():
    bus, irq, _ = new_pc()
    nic = bus["nic"]
    bus.mmio_write(NIC_BASE + NIC_RX_ADDR, 64 * 1024 - 2)
    nic.inject(b"toolong")
    assert nic.received == []
    assert nic.errors == 1
    assert bus.mmio_read(NIC_BASE + NIC_STATUS) & NIC_ERROR
    assert irq.pending == 0


def test_nic_loopback_and_inject():
    bus, irq, mem = new_pc()
    nic = bus["nic"]
    nic.loopback = True
    bus.mmio_write(NIC_BASE + NIC_RX_ADDR, 0x5000)
    nic_send(bus, mem, b"echo")
    assert bus.next_deadline() == 50
    bus.advance(50)
    assert irq.acknowledge() == 11
    assert mem.read_bytes(0x5000, 4) == b"echo"
    bus.mmio_write(NIC_BASE + NIC_RX_ACK, 1)
    nic.inject(b"now")
    assert irq.acknowledge() == 11
    assert mem.read_bytes(0x5000, 3) == b"now"
    bus.mmio_write(NIC_BASE + NIC_RX_ACK, 1)
    nic.inject(b"later", delay=30)
    assert bus.next_deadline() == 80
    bus.advance(80)
    assert nic.received[-1] == b"later"
    with pytest.raises(ConfigurationError):
        nic.inject(b"")
    with pytest.raises(ConfigurationError):
        nic.inject(bytes(MAX_FRAME + 1))
    assert "loopback" in repr(nic)


def test_nic_zero_latency_delivers_at_once():
    (a_bus, _, a_mem), (b_bus, b_irq, b_mem) = two_machines(latency=0)
    b_bus.mmio_write(NIC_BASE + NIC_RX_ADDR, 0x6000)
    nic_send(a_bus, a_mem, b"now")
    assert b_irq.acknowledge() == 11
    assert b_mem.read_bytes(0x6000, 3) == b"now"


def test_nic_connect_rules():
    a, b, c = NetworkCard(name="a"), NetworkCard(name="b"), NetworkCard(name="c")
    with pytest.raises(ConfigurationError):
        a.connect(a)
    a.connect(b)
    a.connect(b)  # re-plugging the same cable is harmless
    with pytest.raises(ConfigurationError, match="already connected"):
        c.connect(a)
    a.disconnect()
    assert a.peer is None
    assert b.peer is None
    c.connect(a)
    assert repr(a) == "NetworkCard(a 0xfeb00000, 0 sent, 0 received, irq 11, peer c)"
    with pytest.raises(ConfigurationError):
        a.connect("b")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Deadlines: min and cache
# ---------------------------------------------------------------------------


def test_next_deadline_tracks_reprogramming():
    bus, _, _mem = new_pc()
    assert bus.next_deadline() is None
    bus.port_out(PIT0, 100)
    assert bus.next_deadline() == 100
    disk_command(bus, BLK_CMD_READ, 0, 0, 1)  # latency 100 from now=0
    bus["disk"].latency = 30
    disk_command(bus, BLK_CMD_READ, 0, 0, 1)  # dropped: busy
    assert bus.next_deadline() == 100
    bus.port_out(PIT0, 10)
    assert bus.next_deadline() == 10
    bus.advance(10)
    assert bus.next_deadline() == 20
    bus.port_out(PIT0, 0)
    assert bus.next_deadline() == 100, "the disk is now the earliest"
    bus.advance(100)
    assert bus.next_deadline() is None
    bus["nic"].inject(b"x", delay=5)
    assert bus.next_deadline() == 105
    assert "next deadline 105" in repr(bus)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["timer", "disk", "inject", "advance", "send"]),
                          st.integers(0, 300)), max_size=40))
def test_cached_deadline_always_equals_brute_force_min(ops):
    (a_bus, a_irq, _a_mem), (b_bus, _, _) = two_machines(latency=17)
    now = 0
    for op, n in ops:
        if op == "timer":
            a_bus.port_out(PIT0, n)
        elif op == "disk":
            a_bus["disk"].latency = n
            disk_command(a_bus, BLK_CMD_READ, n % 64, 0x2000, 1)
        elif op == "inject":
            a_bus["nic"].inject(b"frame", delay=n)
        elif op == "send":
            nic_send(b_bus, b_bus.memory, b"hi")  # type: ignore[arg-type]
            a_bus.mmio_write(NIC_BASE + NIC_RX_ACK, 1)
        else:
            now += n
            advance_both(now, a_bus, b_bus)
            a_irq.acknowledge()
            d = a_bus.next_deadline()
            assert d is None or d > now, "advance leaves nothing due"
        assert a_bus.next_deadline() == brute_deadline(a_bus)


def test_second_timer_on_its_own_port_and_line():
    irq = InterruptController()
    bus = Bus(irq, None)
    pit = bus.attach(Timer())
    slow = bus.attach(Timer(name="slow", port=0x41, irq_line=8))
    bus.port_out(0x40, 30)
    bus.port_out(0x41, 45)
    bus.advance(90)
    assert (pit.fired, slow.fired) == (3, 2)
    assert [irq.acknowledge(), irq.acknowledge(), irq.acknowledge()] == [0, 8, None]
    assert bus.next_deadline() == 120
