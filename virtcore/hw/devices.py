"""Devices, the interrupt controller and the bus that connects them to the CPU.

A real PC reaches its devices two ways: *port I/O* (the ``in``/``out``
instructions address a separate 16-bit port space) and *memory-mapped I/O*
(loads and stores to physical addresses where no RAM is installed are routed
to a device).  Devices signal the CPU by raising an *interrupt line*; an
interrupt controller remembers which lines are pending and which are masked.
virtcore models the classic PC/AT layout with its real numbers:

=================  =====================  =====  ==============================
device             registers              IRQ    real counterpart
=================  =====================  =====  ==============================
:class:`Serial`    ports 0x3F8–0x3FF      4      16550 UART on COM1
:class:`Timer`     port 0x40              0      8254 PIT channel 0
:class:`BlockDevice` ports 0x1F0–0x1F7    14     ATA primary channel (simplified)
:class:`NetworkCard` MMIO 0xFEB00000      11     a PCI NIC's BAR in the MMIO hole
=================  =====================  =====  ==============================

Time
----
The machine has one clock counted in *ticks*: one tick per executed
instruction; a halted CPU fast-forwards the clock to the next device
deadline.  Devices never look at Python's wall time.  Each device reports
the absolute tick of its next timed event (:meth:`Device.next_deadline`);
the :class:`Bus` keeps the minimum cached, so the CPU's hot loop only
compares two ints::

    if clock >= deadline:          # deadline = bus.next_deadline()
        bus.advance(clock)         # devices fire; may raise IRQs
    if irq.pending & ~irq.mask:    # then take an interrupt
        ...

The CPU must keep :attr:`Bus.now` current before a port or MMIO access (set
``bus.now = clock`` or call ``bus.advance(clock)``): a device programmed by
the access (a timer start, a disk command) starts counting from ``bus.now``.

Example: a whole PC's devices on one bus (``memory=None`` leaves out DMA):

>>> irq = InterruptController()
>>> bus = make_pc_devices(None, irq)
>>> [d.name for d in bus.devices]
['serial', 'timer', 'disk', 'nic']
>>> for ch in b"hi":
...     bus.port_out(0x3F8, ch)
>>> bus["serial"].text
'hi'
>>> hex(bus.port_in(0x80))          # nobody owns port 0x80: the bus floats high
'0xffffffff'
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from typing import NamedTuple, Protocol

from virtcore.errors import ConfigurationError, VirtcoreError

MASK32 = 0xFFFF_FFFF
FLOATING_BUS = 0xFFFF_FFFF  # what an unowned port reads on a PC (no device drives the lines)
NUM_IRQ_LINES = 16  # two cascaded 8259s on the PC/AT; one flat controller here
HISTORY_LENGTH = 4096  # interrupt-controller history entries kept (oldest dropped)


class DeviceError(VirtcoreError):
    """Misuse of the device layer at run time (e.g. the clock going backwards)."""


class UnknownDeviceError(VirtcoreError, KeyError):
    """``bus[name]`` for a name no attached device has."""


class MemoryLike(Protocol):
    """What devices need from physical memory (:class:`virtcore.hw.memory.PhysicalMemory`)."""

    size: int

    def read_bytes(self, paddr: int, n: int) -> bytes: ...

    def write_bytes(self, paddr: int, data: bytes) -> None: ...


# ---------------------------------------------------------------------------
# Interrupt controller
# ---------------------------------------------------------------------------


class InterruptController:
    """A 16-line interrupt controller in the manner of the 8259A PIC.

    ``pending`` plays the 8259's IRR (interrupt request register) and ``mask``
    its IMR (interrupt mask register), one bit per line.  A masked line still
    latches a request; it is just not delivered until unmasked.  Lower line
    numbers have higher priority (IRQ 0, the timer, beats everything), as with
    the 8259's default fixed priority.

    Simplified: the PC/AT cascades two 8259s (lines 8–15 reach the CPU through
    IRQ 2); here one flat controller has all 16 lines.  There is no in-service
    register and no EOI: :meth:`acknowledge` clears the request, and the line
    can be raised again at once.  Requests are edge-triggered: raising a line
    that is already pending is *coalesced* into the one pending request (the
    event is counted in ``coalesced`` but only one interrupt is delivered) —
    which is exactly how a real PIC loses timer ticks the CPU was too busy to
    take.

    Attributes
    ----------
    pending : int
        Bitmask of raised lines (read by the CPU between blocks:
        ``if irq.pending & ~irq.mask``).
    mask : int
        Bitmask of masked lines.
    raised, coalesced, acknowledged : list[int]
        Per-line counts of edges raised, edges merged into an already pending
        request, and interrupts delivered.  For every line, ``raised ==
        acknowledged + coalesced + withdrawn + (1 if pending)``.
    withdrawn : list[int]
        Per-line count of pending requests cleared by :meth:`lower_irq`.
    history : collections.deque
        The last :data:`HISTORY_LENGTH` events as ``(tick, event, line)`` with
        event ``"raise"``, ``"lower"`` or ``"ack"``; ``tick`` is :attr:`now`.
    now : int
        The clock as last seen (the :class:`Bus` updates it in ``advance``).

    Examples
    --------
    >>> pic = InterruptController()
    >>> pic.raise_irq(4); pic.raise_irq(14)
    >>> pic.highest_pending()           # lower number = higher priority
    4
    >>> pic.mask = 1 << 4               # mask the serial line
    >>> pic.acknowledge()
    14
    >>> pic.acknowledge() is None       # 4 is still pending, but masked
    True
    >>> pic.mask = 0; pic.acknowledge(), pic.pending
    (4, 0)
    """

    __slots__ = (
        "acknowledged",
        "coalesced",
        "history",
        "mask",
        "now",
        "pending",
        "raised",
        "withdrawn",
    )

    def __init__(self) -> None:
        self.pending = 0
        self.mask = 0
        self.now = 0
        self.raised = [0] * NUM_IRQ_LINES
        self.coalesced = [0] * NUM_IRQ_LINES
        self.acknowledged = [0] * NUM_IRQ_LINES
        self.withdrawn = [0] * NUM_IRQ_LINES
        self.history: deque[tuple[int, str, int]] = deque(maxlen=HISTORY_LENGTH)

    @staticmethod
    def _check(line: int) -> None:
        if isinstance(line, bool) or not isinstance(line, int) or not 0 <= line < NUM_IRQ_LINES:
            raise ConfigurationError(f"IRQ line must be an int 0..15, not {line!r}")

    def raise_irq(self, line: int, count: int = 1) -> None:
        """Raise interrupt ``line`` (0–15); ``count`` edges at once coalesce into one request.

        >>> pic = InterruptController()
        >>> pic.raise_irq(0, count=10)      # ten timer ticks while the CPU was busy
        >>> pic.pending, pic.raised[0], pic.coalesced[0]
        (1, 10, 9)
        """
        self._check(line)
        if count < 1:
            raise ConfigurationError(f"count must be >= 1, not {count}")
        bit = 1 << line
        lost = count - 1 if not self.pending & bit else count
        self.pending |= bit
        self.raised[line] += count
        self.coalesced[line] += lost
        self.history.append((self.now, "raise", line))

    def lower_irq(self, line: int) -> None:
        """Withdraw a pending request on ``line`` (a device de-asserting before delivery).

        >>> pic = InterruptController()
        >>> pic.raise_irq(3); pic.lower_irq(3); pic.pending
        0
        """
        self._check(line)
        bit = 1 << line
        if self.pending & bit:
            self.pending &= ~bit
            self.withdrawn[line] += 1
            self.history.append((self.now, "lower", line))

    def highest_pending(self) -> int | None:
        """The unmasked pending line with the lowest number, or None.

        >>> pic = InterruptController()
        >>> pic.raise_irq(11); pic.raise_irq(14); pic.highest_pending()
        11
        """
        p = self.pending & ~self.mask
        if not p:
            return None
        return (p & -p).bit_length() - 1

    def acknowledge(self) -> int | None:
        """Deliver the highest-priority unmasked request: return its line and clear it.

        This is the CPU's interrupt-acknowledge cycle (vector = 32 + line,
        :meth:`virtcore.hw.events.TrapCause.for_irq`).

        >>> pic = InterruptController()
        >>> pic.raise_irq(0); pic.acknowledge(), pic.acknowledge()
        (0, None)
        """
        p = self.pending & ~self.mask
        if not p:
            return None
        line = (p & -p).bit_length() - 1
        self.pending &= ~(1 << line)
        self.acknowledged[line] += 1
        self.history.append((self.now, "ack", line))
        return line

    def is_masked(self, line: int) -> bool:
        """Whether ``line`` is masked.

        >>> pic = InterruptController(); pic.mask = 0b1000; pic.is_masked(3)
        True
        """
        self._check(line)
        return bool(self.mask >> line & 1)

    def counts(self) -> dict[int, int]:
        """Lines that were ever raised, with how many edges each got (for views).

        >>> pic = InterruptController(); pic.raise_irq(4); pic.raise_irq(4); pic.counts()
        {4: 2}
        """
        return {line: n for line, n in enumerate(self.raised) if n}

    def __repr__(self) -> str:
        lines = [i for i in range(NUM_IRQ_LINES) if self.pending >> i & 1]
        masked = [i for i in range(NUM_IRQ_LINES) if self.mask >> i & 1]
        return f"InterruptController(pending={lines}, masked={masked})"


# ---------------------------------------------------------------------------
# Device base class and bus
# ---------------------------------------------------------------------------


class BusEvent(NamedTuple):
    """One traced bus operation: ``(tick, device, op, where, value)``.

    ``op`` is ``"in"``, ``"out"``, ``"mmio_read"``, ``"mmio_write"`` (``where``
    = port or address), ``"irq"`` (``where`` = line), or ``"dma_read"`` /
    ``"dma_write"`` (a device reading / writing memory; ``where`` = physical
    address, ``value`` = byte count).  ``device`` is None for unowned ports.

    >>> str(BusEvent(7, "serial", "out", 0x3F8, 0x41))
    '      7  serial  out         0x3f8 <- 0x41'
    """

    tick: int
    device: str | None
    op: str
    where: int
    value: int

    def __str__(self) -> str:
        arrow = "->" if self.op in ("in", "mmio_read") else "<-"
        if self.op == "irq":
            return f"{self.tick:7d}  {self.device or '-'}  irq {self.where}"
        return (
            f"{self.tick:7d}  {self.device or '-'}  {self.op:<10s} {self.where:#7x} "
            f"{arrow} {self.value:#x}"
        )


class Device:
    """Base class of every device on the :class:`Bus`.

    A subclass sets ``ports`` (a ``range`` of port numbers) and/or ``mmio`` (a
    ``range`` of physical addresses, outside RAM), ``irq_line``, and overrides
    the register accessors it uses.  Unclaimed accessors behave like empty
    hardware: reads return all ones, writes are ignored.

    A timed device reports :meth:`next_deadline` (absolute tick, or None) and
    does its work in :meth:`advance`; whenever its deadline changes outside
    ``advance`` it calls :meth:`reschedule` so the bus's cached minimum stays
    right.

    >>> d = Device("dummy")
    >>> d.port_read(0x10) == 0xFFFF_FFFF, d.next_deadline()
    (True, None)
    """

    ports: range | None = None
    mmio: range | None = None
    irq_line: int | None = None

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a device needs a non-empty name, not {name!r}")
        self.name = name
        self.bus: Bus | None = None
        self.irq: InterruptController | None = None
        self.memory: MemoryLike | None = None

    # Register access (overridden by subclasses) ---------------------------
    def port_read(self, port: int) -> int:
        """Value read from ``port`` (an ``in``); the base class floats high."""
        return FLOATING_BUS

    def port_write(self, port: int, value: int) -> None:
        """Handle an ``out`` of ``value`` to ``port``; the base class ignores it."""

    def mmio_read(self, paddr: int) -> int:
        """32-bit value read at physical address ``paddr``; the base class floats high."""
        return FLOATING_BUS

    def mmio_write(self, paddr: int, value: int) -> None:
        """Handle a 32-bit store of ``value`` at ``paddr``; the base class ignores it."""

    # Time ------------------------------------------------------------------
    def next_deadline(self) -> int | None:
        """Absolute tick of the next timed event, or None."""
        return None

    def advance(self, now: int) -> None:
        """Fire every event due at or before tick ``now`` (may raise IRQs)."""

    # Wiring ----------------------------------------------------------------
    def attach(self, bus: Bus) -> None:
        """Called by :meth:`Bus.attach`: remember the bus, its interrupt controller and memory."""
        self.bus = bus
        self.irq = bus.irq
        self.memory = bus.memory

    @property
    def now(self) -> int:
        """The bus clock (0 before the device is attached)."""
        return self.bus.now if self.bus is not None else 0

    def reschedule(self) -> None:
        """Tell the bus this device's deadline changed."""
        if self.bus is not None:
            self.bus.reschedule()

    def interrupt(self) -> None:
        """Raise this device's IRQ line (no-op when unattached or without a line)."""
        if self.irq is not None and self.irq_line is not None:
            self.irq.raise_irq(self.irq_line)
            bus = self.bus
            if bus is not None and bus.tracing:
                bus.trace.append(BusEvent(bus.now, self.name, "irq", self.irq_line, 1))

    def dma_ok(self, paddr: int, n: int) -> bool:
        """Whether ``n`` bytes at ``paddr`` lie inside installed RAM (DMA cannot reach MMIO)."""
        mem = self.memory
        return mem is not None and paddr >= 0 and n >= 0 and paddr + n <= mem.size

    def dma_read(self, paddr: int, n: int) -> bytes:
        """Device reads ``n`` bytes of RAM (caller checked :meth:`dma_ok`)."""
        assert self.memory is not None
        bus = self.bus
        if bus is not None and bus.tracing:
            bus.trace.append(BusEvent(bus.now, self.name, "dma_read", paddr, n))
        return bytes(self.memory.read_bytes(paddr, n))

    def dma_write(self, paddr: int, data: bytes) -> None:
        """Device writes ``data`` into RAM (caller checked :meth:`dma_ok`)."""
        assert self.memory is not None
        bus = self.bus
        if bus is not None and bus.tracing:
            bus.trace.append(BusEvent(bus.now, self.name, "dma_write", paddr, len(data)))
        self.memory.write_bytes(paddr, bytes(data))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def _check_range(what: str, r: object, limit: int | None) -> range:
    if not isinstance(r, range) or r.step != 1 or len(r) == 0 or r.start < 0:
        raise ConfigurationError(f"{what} must be a non-empty range with step 1, not {r!r}")
    if limit is not None and r.stop > limit:
        raise ConfigurationError(f"{what} {r.start:#x}..{r.stop - 1:#x} exceeds {limit - 1:#x}")
    return r


def _overlap(a: range, b: range) -> bool:
    return a.start < b.stop and b.start < a.stop


class Bus:
    """The I/O bus: routes port and MMIO accesses to devices and keeps device time.

    Parameters
    ----------
    irq : InterruptController
        The controller devices raise their lines on.
    memory : MemoryLike or None
        Physical memory, for DMA and to keep MMIO ranges out of RAM.  ``None``
        makes a bus without DMA (every DMA then fails as out of range).

    Attributes
    ----------
    devices : list[Device]
        In attach order (also the order devices fire in within one ``advance``).
    now : int
        The clock as last seen; devices programmed by an access start counting here.
    tracing : bool
        When True, every access, IRQ and DMA is appended to ``trace`` as a
        :class:`BusEvent`.  Off by default; no cost when off.
    unowned_reads, unowned_writes, unowned_mmio : int
        Port reads and writes nobody answered (PCs ignore these), and MMIO
        accesses nobody owns (the CPU turns those into a machine check).

    Examples
    --------
    >>> bus = Bus(InterruptController(), None)
    >>> timer = bus.attach(Timer())
    >>> bus.port_out(0x40, 100)          # period 100 ticks, from bus.now = 0
    >>> bus.next_deadline()
    100
    >>> bus.advance(250); timer.fired, bus.next_deadline()
    (2, 300)
    """

    def __init__(self, irq: InterruptController, memory: MemoryLike | None) -> None:
        self.irq = irq
        self.memory = memory
        self.devices: list[Device] = []
        self._by_name: dict[str, Device] = {}
        self._port_map: dict[int, Device] = {}
        self._mmio: list[tuple[int, int, Device]] = []
        self.now = 0
        self.tracing = False
        self.trace: list[BusEvent] = []
        self.unowned_reads = 0
        self.unowned_writes = 0
        self.unowned_mmio = 0
        self._deadline: int | None = None
        self._dirty = False

    # Wiring ----------------------------------------------------------------
    def attach(self, device: Device) -> Device:
        """Attach ``device``; overlapping port or MMIO ranges raise ConfigurationError.

        Returns the device, so ``serial = bus.attach(Serial())`` reads naturally.

        >>> bus = Bus(InterruptController(), None)
        >>> _ = bus.attach(Serial())
        >>> bus.attach(Serial(name="com1-again"))
        Traceback (most recent call last):
        ...
        virtcore.errors.ConfigurationError: ports 0x3f8..0x3ff of 'com1-again' overlap ports \
0x3f8..0x3ff of 'serial'
        """
        if not isinstance(device, Device):
            raise ConfigurationError(f"can only attach a Device, not {type(device).__name__}")
        if device.bus is not None:
            raise ConfigurationError(f"device {device.name!r} is already attached to a bus")
        if device.name in self._by_name:
            raise ConfigurationError(f"a device named {device.name!r} is already attached")
        if device.irq_line is not None:
            InterruptController._check(device.irq_line)
        ports = mmio = None
        if device.ports is not None:
            ports = _check_range(f"ports of {device.name!r}", device.ports, 0x10000)
            for other in self.devices:
                if other.ports is not None and _overlap(ports, other.ports):
                    raise ConfigurationError(
                        f"ports {ports.start:#x}..{ports.stop - 1:#x} of {device.name!r} overlap "
                        f"ports {other.ports.start:#x}..{other.ports.stop - 1:#x} of "
                        f"{other.name!r}"
                    )
        if device.mmio is not None:
            mmio = _check_range(f"MMIO range of {device.name!r}", device.mmio, None)
            if self.memory is not None and mmio.start < self.memory.size:
                raise ConfigurationError(
                    f"MMIO range {mmio.start:#x}..{mmio.stop - 1:#x} of {device.name!r} overlaps "
                    f"RAM (0..{self.memory.size - 1:#x})"
                )
            for other in self.devices:
                if other.mmio is not None and _overlap(mmio, other.mmio):
                    raise ConfigurationError(
                        f"MMIO {mmio.start:#x}..{mmio.stop - 1:#x} of {device.name!r} overlaps "
                        f"MMIO {other.mmio.start:#x}..{other.mmio.stop - 1:#x} of "
                        f"{other.name!r}"
                    )
        self.devices.append(device)
        self._by_name[device.name] = device
        if ports is not None:
            for p in ports:
                self._port_map[p] = device
        if mmio is not None:
            self._mmio.append((mmio.start, mmio.stop, device))
        device.attach(self)
        self._dirty = True
        return device

    def __getitem__(self, name: str) -> Device:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownDeviceError(
                f"no device named {name!r}; attached: {', '.join(self._by_name) or 'none'}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Device]:
        return iter(self.devices)

    def __len__(self) -> int:
        return len(self.devices)

    def resources(self) -> list[tuple[str, str, str, int | None]]:
        """The machine's resource map, one row per device: (name, ports, MMIO, IRQ).

        >>> make_pc_devices(None, InterruptController()).resources()[0]
        ('serial', '0x3f8-0x3ff', '', 4)
        """

        def fmt(r: range | None) -> str:
            return "" if r is None else f"{r.start:#x}-{r.stop - 1:#x}"

        return [(d.name, fmt(d.ports), fmt(d.mmio), d.irq_line) for d in self.devices]

    # Port I/O ----------------------------------------------------------------
    def port_in(self, port: int) -> int:
        """An ``in`` from ``port``: the owner's value, or 0xFFFFFFFF if nobody owns it.

        >>> bus = make_pc_devices(None, InterruptController())
        >>> hex(bus.port_in(0x3FD))     # serial LSR: THRE | TEMT
        '0x60'
        """
        dev = self._port_map.get(port)
        if dev is None:
            self.unowned_reads += 1
            value = FLOATING_BUS
        else:
            value = dev.port_read(port) & MASK32
        if self.tracing:
            self.trace.append(BusEvent(self.now, dev.name if dev else None, "in", port, value))
        return value

    def port_out(self, port: int, value: int) -> None:
        """An ``out`` of ``value`` (masked to 32 bits) to ``port``; unowned ports ignore it.

        >>> bus = Bus(InterruptController(), None)
        >>> bus.port_out(0x80, 1); bus.unowned_writes   # the PC's POST-code port: nobody here
        1
        """
        value &= MASK32
        dev = self._port_map.get(port)
        if self.tracing:
            self.trace.append(BusEvent(self.now, dev.name if dev else None, "out", port, value))
        if dev is None:
            self.unowned_writes += 1
        else:
            dev.port_write(port, value)

    # MMIO ----------------------------------------------------------------------
    def _mmio_owner(self, paddr: int) -> Device | None:
        for start, stop, dev in self._mmio:
            if start <= paddr < stop:
                return dev
        return None

    def is_mmio(self, paddr: int) -> bool:
        """Whether some device owns physical address ``paddr``.

        >>> bus = make_pc_devices(None, InterruptController())
        >>> bus.is_mmio(0xFEB0_0000), bus.is_mmio(0x1000)
        (True, False)
        """
        return self._mmio_owner(paddr) is not None

    def mmio_read(self, paddr: int) -> int | None:
        """32-bit read at ``paddr`` from its device, or None if nobody owns it (→ #MC).

        >>> bus = make_pc_devices(None, InterruptController())
        >>> bus.mmio_read(0xFEB0_0010), bus.mmio_read(0xDEAD_0000)   # NIC RX_LEN; nothing
        (0, None)
        """
        dev = self._mmio_owner(paddr)
        if dev is None:
            self.unowned_mmio += 1
            return None
        value = dev.mmio_read(paddr) & MASK32
        if self.tracing:
            self.trace.append(BusEvent(self.now, dev.name, "mmio_read", paddr, value))
        return value

    def mmio_write(self, paddr: int, value: int) -> bool:
        """32-bit write at ``paddr``; False if nobody owns the address (→ #MC).

        >>> bus = make_pc_devices(None, InterruptController())
        >>> bus.mmio_write(0xFEB0_0000, 0x2000), bus.mmio_write(0xDEAD_0000, 1)
        (True, False)
        """
        dev = self._mmio_owner(paddr)
        if dev is None:
            self.unowned_mmio += 1
            return False
        value &= MASK32
        if self.tracing:
            self.trace.append(BusEvent(self.now, dev.name, "mmio_write", paddr, value))
        dev.mmio_write(paddr, value)
        return True

    # Time --------------------------------------------------------------------------
    def reschedule(self) -> None:
        """Mark the cached deadline stale (devices call this when theirs changes)."""
        self._dirty = True

    def _recompute(self) -> None:
        best: int | None = None
        for dev in self.devices:
            d = dev.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        self._deadline = best
        self._dirty = False

    def next_deadline(self) -> int | None:
        """The earliest device deadline (absolute tick), or None; cached between changes.

        >>> bus = make_pc_devices(None, InterruptController())
        >>> bus.next_deadline() is None        # nothing programmed yet
        True
        """
        if self._dirty:
            self._recompute()
        return self._deadline

    def advance(self, now: int) -> None:
        """Move the bus clock to ``now`` and fire every device event due at or before it.

        Cheap when nothing is due (two comparisons), so the CPU may call it often.
        The clock may not go backwards.

        >>> bus = Bus(InterruptController(), None)
        >>> bus.advance(10); bus.advance(5)
        Traceback (most recent call last):
        ...
        virtcore.hw.devices.DeviceError: the clock went backwards: 5 < 10
        """
        if now < self.now:
            raise DeviceError(f"the clock went backwards: {now} < {self.now}")
        self.now = now
        self.irq.now = now
        if self._dirty:
            self._recompute()
        d = self._deadline
        if d is None or now < d:
            return
        for _ in range(64):
            for dev in self.devices:
                dd = dev.next_deadline()
                if dd is not None and dd <= now:
                    dev.advance(now)
            self._recompute()
            d = self._deadline
            if d is None or now < d:
                return
        stuck = [dev.name for dev in self.devices if (dev.next_deadline() or now + 1) <= now]
        raise DeviceError(f"device(s) {stuck} keep a deadline at or before {now} after advance")

    def __repr__(self) -> str:
        names = ", ".join(d.name for d in self.devices)
        return (
            f"Bus({len(self.devices)} devices: {names or 'none'}; now {self.now}, "
            f"next deadline {self.next_deadline()})"
        )


# ---------------------------------------------------------------------------
# Serial port: 16550 UART
# ---------------------------------------------------------------------------

# 16550 register offsets from the base port (COM1 = 0x3F8).
UART_RBR = 0  # read: receiver buffer            (write: THR, transmitter holding register)
UART_IER = 1  # interrupt enable: bit0 data ready, bit1 THR empty
UART_IIR = 2  # read: interrupt identification   (write: FCR, FIFO control)
UART_LCR = 3  # line control; bit7 = DLAB (offsets 0/1 become the divisor latch)
UART_MCR = 4  # modem control
UART_LSR = 5  # line status
UART_MSR = 6  # modem status
UART_SCR = 7  # scratch
LSR_DR = 0x01  # data ready: a received byte waits in RBR
LSR_THRE = 0x20  # transmitter holding register empty
LSR_TEMT = 0x40  # transmitter empty
IER_RDA = 0x01  # interrupt when received data is available
IER_THRE = 0x02  # interrupt when THR is empty
IIR_NONE = 0x01  # bit0 set = no interrupt pending
IIR_THRE = 0x02
IIR_RDA = 0x04
MSR_CONNECTED = 0xB0  # DCD | DSR | CTS: a cable with someone on the other end
COM_NAMES = {0x3F8: "COM1", 0x2F8: "COM2", 0x3E8: "COM3", 0x2E8: "COM4"}


class Serial(Device):
    """A 16550-like UART: COM1 at ports 0x3F8–0x3FF, IRQ 4 (PC/AT convention).

    Registers (offset from the base port): 0 RBR/THR, 1 IER, 2 IIR/FCR,
    3 LCR, 4 MCR, 5 LSR, 6 MSR, 7 scratch.  Writing THR sends a byte — it is
    appended to :attr:`output` at once.  LSR always shows THRE (0x20) and TEMT
    (0x40), and DR (0x01) while input is queued; reading RBR pops one input
    byte.  :meth:`feed` queues input (the host typing) and raises IRQ 4 when
    IER bit 0 is set.

    Simplified: no baud rate or line timing (the divisor latch behind
    LCR.DLAB is stored but changes nothing), transmission is instantaneous,
    the receive queue is unbounded (a real 16550 has a 16-byte FIFO and
    overruns), and the receive interrupt is raised once per :meth:`feed` (and
    when IER bit 0 is enabled with input waiting), not re-raised per byte —
    a driver reads RBR while LSR.DR is set, as Linux's ``serial8250`` does.
    With IER bit 1 (THR empty) set, every THR write raises IRQ 4 again.

    >>> com1 = Serial()
    >>> for ch in b"ok\\n":
    ...     com1.port_write(0x3F8, ch)
    >>> com1.text, com1
    ('ok\\n', Serial(COM1 0x3f8, 3 bytes out, irq 4))
    >>> com1.feed(b"y"); hex(com1.port_read(0x3FD)), chr(com1.port_read(0x3F8))
    ('0x61', 'y')
    """

    def __init__(self, name: str = "serial", base: int = 0x3F8, irq_line: int = 4) -> None:
        super().__init__(name)
        self.base = base
        self.ports = range(base, base + 8)
        self.irq_line = irq_line
        self.output = bytearray()
        self._input: deque[int] = deque()
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.scratch = 0
        self.divisor = 12  # 9600 baud from the 1.8432 MHz crystal (value stored only)
        self._thre_pending = False
        self.received = 0  # bytes the guest has read from RBR

    @property
    def text(self) -> str:
        """Everything written so far, decoded as Latin-1 (one char per byte)."""
        return self.output.decode("latin-1")

    @property
    def input_waiting(self) -> int:
        """Bytes queued for the guest to read."""
        return len(self._input)

    def feed(self, data: bytes) -> None:
        """Queue ``data`` as received bytes; raise IRQ 4 if receive interrupts are enabled.

        >>> s = Serial(); s.feed(b"ab"); s.input_waiting
        2
        """
        if isinstance(data, str):
            raise ConfigurationError("feed() takes bytes; encode the text first")
        if not data:
            return
        self._input.extend(bytes(data))
        if self.ier & IER_RDA:
            self.interrupt()

    def port_read(self, port: int) -> int:
        off = port - self.base
        dlab = self.lcr & 0x80
        if off == UART_RBR:
            if dlab:
                return self.divisor & 0xFF
            if self._input:
                self.received += 1
                return self._input.popleft()
            return 0
        if off == UART_IER:
            return (self.divisor >> 8) & 0xFF if dlab else self.ier
        if off == UART_IIR:
            if self._input and self.ier & IER_RDA:
                return IIR_RDA
            if self._thre_pending and self.ier & IER_THRE:
                self._thre_pending = False  # reading IIR clears the THRE interrupt (16550)
                return IIR_THRE
            return IIR_NONE
        if off == UART_LCR:
            return self.lcr
        if off == UART_MCR:
            return self.mcr
        if off == UART_LSR:
            return LSR_THRE | LSR_TEMT | (LSR_DR if self._input else 0)
        if off == UART_MSR:
            return MSR_CONNECTED
        if off == UART_SCR:
            return self.scratch
        return FLOATING_BUS

    def port_write(self, port: int, value: int) -> None:
        off = port - self.base
        value &= 0xFF
        dlab = self.lcr & 0x80
        if off == UART_RBR:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
                return
            self.output.append(value)
            if self.ier & IER_THRE:
                self._thre_pending = True
                self.interrupt()
        elif off == UART_IER:
            if dlab:
                self.divisor = (self.divisor & 0x00FF) | value << 8
                return
            newly = value & ~self.ier
            self.ier = value & 0x0F
            if newly & IER_RDA and self._input:
                self.interrupt()
            if newly & IER_THRE:  # THR is always empty here, so enabling it interrupts at once
                self._thre_pending = True
                self.interrupt()
        elif off == UART_LCR:
            self.lcr = value
        elif off == UART_MCR:
            self.mcr = value
        elif off == UART_SCR:
            self.scratch = value
        # FCR (offset 2), LSR and MSR writes are accepted and ignored.

    def __repr__(self) -> str:
        com = COM_NAMES.get(self.base, "UART")
        waiting = f", {len(self._input)} bytes in" if self._input else ""
        return (
            f"Serial({com} {self.base:#x}, {len(self.output)} bytes out{waiting}, "
            f"irq {self.irq_line})"
        )


# ---------------------------------------------------------------------------
# Timer: 8254 PIT channel 0
# ---------------------------------------------------------------------------


class Timer(Device):
    """A periodic timer like channel 0 of the 8254 PIT: port 0x40, IRQ 0 (PC/AT).

    Writing port 0x40 sets the period in ticks, starting from ``bus.now``
    (0 stops the timer); it then fires at ``start + period``, ``start +
    2*period``, … .  Reading port 0x40 gives the ticks until the next fire (0
    when stopped).  ``fired`` counts every expiry.

    Missed ticks coalesce, as on a PC: when the clock jumps past several
    expiries at once (a long instruction block, or a CPU that ignores
    interrupts), ``fired`` counts them all but the PIC gets one pending
    request — the line is already pending, so the further edges are lost
    (recorded in ``InterruptController.coalesced[0]``).  Guests that keep time
    by counting interrupts drift exactly the way real ones do.

    Simplified: the real 8254 counts down at 1.193182 MHz, independently of
    the CPU, and is programmed with a mode byte on port 0x43 followed by the
    16-bit reload value as two byte writes to port 0x40 (Linux uses mode 2,
    rate generator, with 1193182 / HZ).  Here one 32-bit write to 0x40 sets
    the period in CPU ticks; ports 0x41–0x43 are not modelled (they float).

    >>> t = Timer()
    >>> t.program(100); t.next_deadline()
    100
    >>> t.advance(1000); t.fired, t.next_deadline()
    (10, 1100)
    """

    def __init__(self, name: str = "timer", port: int = 0x40, irq_line: int = 0) -> None:
        super().__init__(name)
        self.port = port
        self.ports = range(port, port + 1)
        self.irq_line = irq_line
        self.period = 0
        self.start = 0
        self.fired = 0
        self._next: int | None = None

    def program(self, period: int) -> None:
        """Start firing every ``period`` ticks from now (0 stops); same as ``out 0x40``.

        >>> t = Timer(); t.program(0); t.next_deadline() is None
        True
        """
        if isinstance(period, bool) or not isinstance(period, int) or not 0 <= period <= MASK32:
            raise ConfigurationError(f"timer period must be an int 0..0xffffffff, not {period!r}")
        self.period = period
        self.start = self.now
        self._next = self.start + period if period else None
        self.reschedule()

    def port_read(self, port: int) -> int:
        if self._next is None:
            return 0
        return max(0, self._next - self.now)

    def port_write(self, port: int, value: int) -> None:
        self.program(value & MASK32)

    def next_deadline(self) -> int | None:
        return self._next

    def advance(self, now: int) -> None:
        nxt = self._next
        if nxt is None or now < nxt:
            return
        n = (now - nxt) // self.period + 1
        self.fired += n
        self._next = nxt + n * self.period
        if self.irq is not None and self.irq_line is not None:
            self.irq.raise_irq(self.irq_line, n)
            bus = self.bus
            if bus is not None and bus.tracing:
                bus.trace.append(BusEvent(now, self.name, "irq", self.irq_line, n))

    def __repr__(self) -> str:
        state = f"period {self.period}" if self.period else "stopped"
        return f"Timer(PIT {self.port:#x}, {state}, fired {self.fired}, irq {self.irq_line})"


# ---------------------------------------------------------------------------
# Block device: a simplified ATA disk with DMA
# ---------------------------------------------------------------------------

# Register offsets from the base port (ATA primary channel base = 0x1F0).
BLK_SECTOR = 0  # write: first sector (LBA)
BLK_DMA_ADDR = 1  # write: physical address of the memory buffer
BLK_COUNT = 2  # write: number of sectors (ATA 0x1F2 is the sector count too)
BLK_COMMAND = 3  # write: 1 = read disk -> memory, 2 = write memory -> disk
BLK_STATUS = 7  # read: status (ATA 0x1F7 is status/command too)
BLK_CMD_READ = 1
BLK_CMD_WRITE = 2
STATUS_BUSY = 0x1
STATUS_DONE = 0x2
STATUS_ERROR = 0x4


class BlockDevice(Device):
    """A disk with DMA, on the ATA primary channel's ports 0x1F0–0x1F7 and IRQ 14 (PC/AT).

    The disk holds ``sectors`` sectors of ``sector_size`` bytes in
    :attr:`data`.  Registers (port = base + offset; all read back)::

        0x1F0 SECTOR    first sector number
        0x1F1 DMA_ADDR  physical address of the buffer in RAM
        0x1F2 COUNT     number of sectors (>= 1)
        0x1F3 COMMAND   1 = read (disk -> memory), 2 = write (memory -> disk)
        0x1F7 STATUS    bit0 BUSY, bit1 DONE, bit2 ERROR (read only)

    Writing COMMAND latches SECTOR, DMA_ADDR and COUNT and sets BUSY.  The
    command completes ``latency`` ticks later: the DMA copy happens *then*
    (so the buffer must not be touched while BUSY), STATUS becomes DONE — or
    ERROR if the sectors lie beyond the disk, the buffer is not all in RAM,
    the count is 0 or the command unknown (:attr:`error` says which) — and
    IRQ 14 is raised either way.  A command written while BUSY is dropped
    (counted in ``dropped``).

    Simplified: real ATA uses 0x1F0 as the 16-bit data port, 0x1F1 for
    error/features, 0x1F3–0x1F6 for a 28-bit LBA and drive select, 0x1F7 for
    command (0x20 READ SECTORS, 0xC8 READ DMA…) and status (BSY 0x80, DRDY
    0x40, DRQ 0x08, ERR 0x01), and sets up DMA through a separate bus-master
    controller with a descriptor table.  Here one register per concept and
    one contiguous buffer.  Sector sizes below 512 bytes are unrealistically
    small teaching sizes.

    >>> disk = BlockDevice(sectors=4, sector_size=16)   # teaching size
    >>> disk.write_sector(2, b"hello")
    >>> disk.read_sector(2)[:5], disk
    (b'hello', BlockDevice(ATA 0x1f0, 4 x 16 B, idle, irq 14))
    """

    def __init__(
        self,
        sectors: int = 64,
        sector_size: int = 512,
        latency: int = 100,
        *,
        name: str = "disk",
        base: int = 0x1F0,
        irq_line: int = 14,
    ) -> None:
        super().__init__(name)
        if isinstance(sectors, bool) or not isinstance(sectors, int) or sectors < 1:
            raise ConfigurationError(f"sectors must be a positive int, not {sectors!r}")
        if (
            isinstance(sector_size, bool)
            or not isinstance(sector_size, int)
            or sector_size < 4
            or sector_size & (sector_size - 1)
        ):
            raise ConfigurationError(
                f"sector_size must be a power of two >= 4 (real disks: 512 or 4096), "
                f"not {sector_size!r}"
            )
        if isinstance(latency, bool) or not isinstance(latency, int) or latency < 0:
            raise ConfigurationError(f"latency must be an int >= 0, not {latency!r}")
        self.base = base
        self.ports = range(base, base + 8)
        self.irq_line = irq_line
        self.sectors = sectors
        self.sector_size = sector_size
        self.latency = latency
        self.data = bytearray(sectors * sector_size)
        self.sector = 0
        self.dma_addr = 0
        self.count = 0
        self.command = 0
        self.status = 0
        self.error = ""
        self.reads = 0  # completed read commands
        self.writes = 0  # completed write commands
        self.bytes = 0  # bytes moved by completed commands
        self.errors = 0
        self.dropped = 0
        self._done_at: int | None = None
        self._op: tuple[int, int, int, int] = (0, 0, 0, 0)  # latched command, sector, addr, count

    # Host side -------------------------------------------------------------------
    def read_sector(self, n: int) -> bytes:
        """Sector ``n``'s bytes (host side: no latency, no DMA)."""
        self._check_sector(n)
        s = self.sector_size
        return bytes(self.data[n * s : (n + 1) * s])

    def write_sector(self, n: int, data: bytes) -> None:
        """Store ``data`` (at most one sector; zero-padded) in sector ``n`` (host side)."""
        self._check_sector(n)
        if len(data) > self.sector_size:
            raise ConfigurationError(
                f"{len(data)} bytes do not fit in a {self.sector_size}-byte sector")
        s = self.sector_size
        self.data[n * s : (n + 1) * s] = bytes(data).ljust(s, b"\0")

    def _check_sector(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < self.sectors:
            raise ConfigurationError(f"sector {n!r} is not on a disk of {self.sectors} sectors")

    @property
    def busy(self) -> bool:
        """Whether a command is in flight."""
        return self._done_at is not None

    # Registers ---------------------------------------------------------------------
    def port_read(self, port: int) -> int:
        off = port - self.base
        if off == BLK_SECTOR:
            return self.sector
        if off == BLK_DMA_ADDR:
            return self.dma_addr
        if off == BLK_COUNT:
            return self.count
        if off == BLK_COMMAND:
            return self.command
        if off == BLK_STATUS:
            return self.status
        return 0

    def port_write(self, port: int, value: int) -> None:
        off = port - self.base
        if off == BLK_SECTOR:
            self.sector = value
        elif off == BLK_DMA_ADDR:
            self.dma_addr = value
        elif off == BLK_COUNT:
            self.count = value
        elif off == BLK_COMMAND:
            self.start_command(value)
        # writes to the other ports (0x1F4-0x1F7) are ignored

    def start_command(self, command: int) -> None:
        """Issue ``command`` with the current SECTOR/DMA_ADDR/COUNT (what ``out 0x1F3`` does)."""
        if self._done_at is not None:
            self.dropped += 1
            return
        self.command = command
        self._op = (command, self.sector, self.dma_addr, self.count)
        self.status = STATUS_BUSY
        self.error = ""
        self._done_at = self.now + self.latency
        self.reschedule()

    def next_deadline(self) -> int | None:
        return self._done_at

    def advance(self, now: int) -> None:
        if self._done_at is None or now < self._done_at:
            return
        self._done_at = None
        command, sector, addr, count = self._op
        nbytes = count * self.sector_size
        if command not in (BLK_CMD_READ, BLK_CMD_WRITE):
            err = f"unknown command {command}"
        elif count == 0:
            err = "count is 0"
        elif sector + count > self.sectors:
            err = f"sectors {sector}..{sector + count - 1} beyond a disk of {self.sectors}"
        elif not self.dma_ok(addr, nbytes):
            err = f"DMA buffer {addr:#x}..{addr + nbytes - 1:#x} is not in RAM"
        else:
            err = ""
        if err:
            self.status = STATUS_ERROR
            self.error = err
            self.errors += 1
        else:
            start = sector * self.sector_size
            if command == BLK_CMD_READ:
                self.dma_write(addr, bytes(self.data[start : start + nbytes]))
                self.reads += 1
            else:
                self.data[start : start + nbytes] = self.dma_read(addr, nbytes)
                self.writes += 1
            self.bytes += nbytes
            self.status = STATUS_DONE
        self.interrupt()

    def __repr__(self) -> str:
        if self._done_at is not None:
            state = f"busy until {self._done_at}"
        elif self.status & STATUS_ERROR:
            state = f"error: {self.error}"
        elif self.status & STATUS_DONE:
            state = "done"
        else:
            state = "idle"
        return (
            f"BlockDevice(ATA {self.base:#x}, {self.sectors} x {self.sector_size} B, {state}, "
            f"irq {self.irq_line})"
        )


# ---------------------------------------------------------------------------
# Network card: MMIO registers, DMA, a cable to a peer
# ---------------------------------------------------------------------------

NIC_BASE = 0xFEB0_0000  # a typical address in the PC's PCI MMIO hole (below 4 GiB)
NIC_MMIO_SIZE = 0x1000  # one 4 KiB page, like a small PCI BAR
NIC_TX_ADDR = 0x00
NIC_TX_LEN = 0x04
NIC_TX_DOORBELL = 0x08
NIC_RX_ADDR = 0x0C
NIC_RX_LEN = 0x10
NIC_STATUS = 0x14
NIC_RX_ACK = 0x18
NIC_TX_DONE = 0x1
NIC_RX_READY = 0x2
NIC_ERROR = 0x4
MAX_FRAME = 1514  # bytes: the largest Ethernet frame without the 4-byte FCS


class NetworkCard(Device):
    """A network card with MMIO registers at 0xFEB00000 (PCI MMIO hole), IRQ 11, and DMA.

    Registers (32-bit, offset from :data:`NIC_BASE`)::

        0x00 TX_ADDR      physical address of the frame to send
        0x04 TX_LEN       its length in bytes (1..1514)
        0x08 TX_DOORBELL  write 1: send TX_LEN bytes at TX_ADDR
        0x0C RX_ADDR      physical address where received frames are DMA'd
        0x10 RX_LEN       read: length of the frame in the RX buffer (0 = none)
        0x14 STATUS       bit0 TX_DONE, bit1 RX_READY, bit2 ERROR; writing 1s clears
                          TX_DONE / ERROR
        0x18 RX_ACK       write: the guest is done with the RX buffer

    Ringing the doorbell copies the frame from memory at once (recorded in
    :attr:`sent`, STATUS.TX_DONE set); it arrives at the connected peer
    (:meth:`connect`) ``latency`` ticks later.  An arrived frame is DMA'd to
    the peer's RX_ADDR as soon as its RX buffer is free, with RX_LEN,
    STATUS.RX_READY and IRQ 11; further frames wait in the card's queue until
    the guest writes RX_ACK (backpressure).  A bad TX length or a buffer not
    in RAM sets STATUS.ERROR instead (the frame is dropped).  Without a peer,
    frames are only recorded, unless :attr:`loopback` echoes them back.

    Simplified: one RX buffer instead of a descriptor ring (compare virtio's
    queues, [VIRTIO-SPEC; VIRTIO-RING-H]), no MAC addresses or
    filtering, no TX-complete interrupt (TX_DONE is polled), unbounded RX
    queue, and both ends of a cable share one clock (one machine, or machines
    run in lock-step).

    >>> a, b = NetworkCard(name="a"), NetworkCard(name="b")
    >>> a.connect(b); a
    NetworkCard(a 0xfeb00000, 0 sent, 0 received, irq 11, peer b)
    """

    def __init__(
        self,
        name: str = "nic",
        base: int = NIC_BASE,
        irq_line: int = 11,
        latency: int = 50,
        *,
        loopback: bool = False,
    ) -> None:
        super().__init__(name)
        if isinstance(latency, bool) or not isinstance(latency, int) or latency < 0:
            raise ConfigurationError(f"latency must be an int >= 0, not {latency!r}")
        self.base = base
        self.mmio = range(base, base + NIC_MMIO_SIZE)
        self.irq_line = irq_line
        self.latency = latency
        self.loopback = loopback
        self.peer: NetworkCard | None = None
        self.tx_addr = 0
        self.tx_len = 0
        self.rx_addr = 0
        self.rx_len = 0
        self.status = 0
        self.sent: list[bytes] = []
        self.received: list[bytes] = []  # frames DMA'd into guest memory, in order
        self.errors = 0
        self._in_flight: list[tuple[int, int, bytes]] = []  # heap of (arrival, seq, frame)
        self._seq = 0
        self._rx_queue: deque[bytes] = deque()  # arrived, waiting for the RX buffer

    # Cable ---------------------------------------------------------------------------
    def connect(self, other: NetworkCard) -> None:
        """Plug a cable between this card and ``other``.

        >>> a, b = NetworkCard(name="a"), NetworkCard(name="b"); a.connect(b); b.peer is a
        True
        """
        if not isinstance(other, NetworkCard):
            raise ConfigurationError(f"can only connect to a NetworkCard, not {other!r}")
        if other is self:
            raise ConfigurationError("a card cannot be cabled to itself; set loopback=True")
        for card in (self, other):
            if card.peer is not None and card.peer is not (other if card is self else self):
                raise ConfigurationError(f"{card.name!r} is already connected to "
                                         f"{card.peer.name!r}")
        self.peer = other
        other.peer = self

    def disconnect(self) -> None:
        """Unplug the cable (frames already in flight still arrive)."""
        if self.peer is not None:
            self.peer.peer = None
            self.peer = None

    @property
    def queued(self) -> int:
        """Frames arrived or in flight but not yet delivered to guest memory."""
        return len(self._in_flight) + len(self._rx_queue)

    def inject(self, frame: bytes, delay: int = 0) -> None:
        """Host side: a frame arrives from the wire ``delay`` ticks from now.

        >>> nic = NetworkCard(); nic.inject(b"ping", delay=5); nic.next_deadline()
        5
        """
        frame = bytes(frame)
        if not 1 <= len(frame) <= MAX_FRAME:
            raise ConfigurationError(f"a frame has 1..{MAX_FRAME} bytes, not {len(frame)}")
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
            raise ConfigurationError(f"delay must be an int >= 0, not {delay!r}")
        self._arrive(self.now + delay, frame)
        if delay == 0:
            self.advance(self.now)

    def _arrive(self, tick: int, frame: bytes) -> None:
        heapq.heappush(self._in_flight, (tick, self._seq, frame))
        self._seq += 1
        self.reschedule()

    # Registers -------------------------------------------------------------------------
    def mmio_read(self, paddr: int) -> int:
        off = paddr - self.base
        if off == NIC_TX_ADDR:
            return self.tx_addr
        if off == NIC_TX_LEN:
            return self.tx_len
        if off == NIC_RX_ADDR:
            return self.rx_addr
        if off == NIC_RX_LEN:
            return self.rx_len
        if off == NIC_STATUS:
            return self.status
        return 0

    def mmio_write(self, paddr: int, value: int) -> None:
        off = paddr - self.base
        if off == NIC_TX_ADDR:
            self.tx_addr = value
        elif off == NIC_TX_LEN:
            self.tx_len = value
        elif off == NIC_TX_DOORBELL:
            if value == 1:
                self.transmit()
        elif off == NIC_RX_ADDR:
            self.rx_addr = value
        elif off == NIC_STATUS:
            self.status &= ~(value & (NIC_TX_DONE | NIC_ERROR))
        elif off == NIC_RX_ACK:
            self.rx_ack()

    def transmit(self) -> None:
        """Send TX_LEN bytes at TX_ADDR (what a doorbell write does)."""
        self.status &= ~NIC_TX_DONE
        n, addr = self.tx_len, self.tx_addr
        if not 1 <= n <= MAX_FRAME or not self.dma_ok(addr, n):
            self.status |= NIC_ERROR
            self.errors += 1
            return
        frame = self.dma_read(addr, n)
        self.sent.append(frame)
        self.status |= NIC_TX_DONE
        target = self.peer if self.peer is not None else (self if self.loopback else None)
        if target is not None:
            target._arrive(self.now + self.latency, frame)
            if self.latency == 0:
                target.advance(target.now)

    def rx_ack(self) -> None:
        """Free the RX buffer (what a write to RX_ACK does); the next queued frame follows."""
        if not self.rx_len:
            return
        self.rx_len = 0
        self.status &= ~NIC_RX_READY
        self._deliver()

    def _deliver(self) -> None:
        while self.rx_len == 0 and self._rx_queue and self.memory is not None:
            frame = self._rx_queue.popleft()
            if not self.dma_ok(self.rx_addr, len(frame)):
                self.status |= NIC_ERROR
                self.errors += 1
                continue  # dropped, like a NIC whose RX descriptor points nowhere
            self.dma_write(self.rx_addr, frame)
            self.rx_len = len(frame)
            self.received.append(frame)
            self.status |= NIC_RX_READY
            self.interrupt()

    # Time ---------------------------------------------------------------------------
    def next_deadline(self) -> int | None:
        return self._in_flight[0][0] if self._in_flight else None

    def advance(self, now: int) -> None:
        fl = self._in_flight
        if not fl or fl[0][0] > now:
            return
        while fl and fl[0][0] <= now:
            self._rx_queue.append(heapq.heappop(fl)[2])
        self._deliver()
        self.reschedule()

    def __repr__(self) -> str:
        peer = f", peer {self.peer.name}" if self.peer is not None else (
            ", loopback" if self.loopback else "")
        return (
            f"NetworkCard({self.name} {self.base:#x}, {len(self.sent)} sent, "
            f"{len(self.received)} received, irq {self.irq_line}{peer})"
        )


# ---------------------------------------------------------------------------
# A PC's worth of devices
# ---------------------------------------------------------------------------


def make_pc_devices(memory: MemoryLike | None, irq: InterruptController) -> Bus:
    """A bus with the PC/AT devices: serial (COM1), timer (PIT), disk (64 sectors), NIC.

    Device names: ``"serial"``, ``"timer"``, ``"disk"``, ``"nic"``.

    >>> bus = make_pc_devices(None, InterruptController())
    >>> bus["disk"].sectors, bus["nic"].irq_line, bus["timer"].ports
    (64, 11, range(64, 65))
    """
    bus = Bus(irq, memory)
    bus.attach(Serial())
    bus.attach(Timer())
    bus.attach(BlockDevice(sectors=64))
    bus.attach(NetworkCard())
    return bus
