"""The safe hardware interface (安全硬件接口): devices reach only the domain that owns them (S6.2).

The real rules [XEN-DOMCTL; XEN-PHYSDEV; XIG ch. 2 and 8; XEN-SOSP03]:

- Xen has no drivers for ordinary devices: at boot the *hardware domain* (Dom0) gets every
  device; the control domain may later **assign** a PCI device to another domain
  (``XEN_DOMCTL_assign_device`` 37, after which that domain is a *driver domain*) and grant
  I/O-port, IRQ and MMIO ranges (``XEN_DOMCTL_ioport_permission`` 21, ``irq_permission`` 19,
  ``iomem_permission`` 20).  A domain may only give away what it has itself (``-EPERM``).
- **I/O ports**: a PV kernel's ``in``/``out`` faults into Xen, whose ``guest_io_okay()`` checks
  ``ioports_access_permitted()``; a port the domain was not given is refused (the guest gets
  ``#GP``).
- **PCI configuration space**: reached through ports 0xCF8/0xCFC; Xen filters it so a domain
  sees only its own devices (a device that is not yours reads as all ones, like an empty slot).
- **DMA**: the IOMMU is programmed per domain; a device may only DMA into frames of the domain
  that owns it (its own frames, or frames granted to and mapped by it); anything else is an
  IOMMU fault and the transfer does not happen.
- **physical interrupts**: a device's IRQ is delivered as a *pirq* on an event channel of the
  owning domain (``EVTCHNOP_bind_pirq``, permitted only for IRQs the domain holds);
  ``PHYSDEVOP_eoi`` (12) acknowledges it.
- other domains get *virtual* devices through split drivers (:mod:`virtcore.xen.splitdrv`).

Devices are :mod:`virtcore.hw` devices: the ATA disk (ports 0x1F0–0x1F7, IRQ 14), the NIC
(MMIO, IRQ 11) and the serial port (0x3F8–0x3FF, IRQ 4).

Simplified: ``assign_device`` also moves the device's ports, IRQ and MMIO frames (``xl pci``
issues those permission domctls itself), and takes them away from the previous owner; one PCI
segment; config space has a few registers; no MSI, no interrupt remapping tables.

>>> from virtcore.xen import Xen
>>> xen = Xen(frames=128)
>>> u = xen.create_guest("u", memory_pages=4)
>>> port_io(xen, 0, 0x1F7).ok, port_io(xen, u.domid, 0x1F7)
(True, IOResult(fault='#GP: port 0x1f7 not permitted for d1'))
>>> hex(pci_conf_read(xen, u.domid, "00:01.1", 0)), hex(pci_conf_read(xen, 0, "00:01.1", 0))
('0xffffffff', '0x70108086')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from virtcore.hw.devices import BlockDevice, Device, NetworkCard, Serial
from virtcore.xen.constants import (
    EBUSY,
    EFAULT,
    EINVAL,
    ENODEV,
    ENOSYS,
    EPERM,
    PHYSDEVOP_eoi,
    PHYSDEVOP_irq_status_query,
    XEN_DOMCTL_assign_device,
    XEN_DOMCTL_deassign_device,
    XEN_DOMCTL_iomem_permission,
    XEN_DOMCTL_ioport_permission,
    XEN_DOMCTL_irq_permission,
)

if TYPE_CHECKING:
    from virtcore.xen.domain import Domain
    from virtcore.xen.hypervisor import Xen

__all__ = [
    "IOResult",
    "PCIDevice",
    "Platform",
    "dma",
    "do_physdev_op",
    "domctl_device",
    "pci_conf_read",
    "pci_conf_write",
    "port_io",
    "raise_irq",
]

#: ``PCI_VENDOR_ID`` register (vendor | device << 16) and ``PCI_INTERRUPT_LINE``.
PCI_VENDOR_ID = 0x00
PCI_COMMAND = 0x04
PCI_INTERRUPT_LINE = 0x3C


@dataclass
class PCIDevice:
    """A physical device: where it sits, what it decodes, who owns it."""

    name: str
    bdf: str
    vendor: int
    device: int
    ioports: range
    irq: int
    iomem: range
    hw: Device
    owner: int = 0
    config: dict[int, int] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"PCIDevice({self.name} {self.bdf} {self.vendor:04x}:{self.device:04x},"
                f" irq {self.irq}, owner d{self.owner})")


@dataclass(frozen=True)
class IOResult:
    """The outcome of a guest's ``in``/``out``: the value read, or the fault it got."""

    value: int = 0
    fault: str = ""

    @property
    def ok(self) -> bool:
        return not self.fault

    def __repr__(self) -> str:
        if self.fault:
            return f"IOResult(fault={self.fault!r})"
        return f"IOResult(value={self.value:#x})"


class Platform:
    """The host's devices and Xen's record of who owns each (plus the IOMMU's view)."""

    def __init__(self, xen: Xen, disk_sectors: int = 256) -> None:
        self.xen = xen
        nic = NetworkCard()
        nic.loopback = True
        self.devices: dict[str, PCIDevice] = {
            "disk": PCIDevice("disk", "00:01.1", 0x8086, 0x7010, range(0x1F0, 0x1F8), 14,
                              range(0), BlockDevice(sectors=disk_sectors, latency=0)),
            "nic": PCIDevice("nic", "00:03.0", 0x8086, 0x100E, range(0), 11,
                             range(0xFEB00, 0xFEB01), nic),
            "serial": PCIDevice("serial", "00:1f.0", 0x8086, 0x7000, range(0x3F8, 0x400), 4,
                                range(0), Serial()),
        }
        self.lost_irqs = 0
        self.iommu_faults = 0
        #: Packets the software bridge forwarded: (source domid, bytes).
        self.wire: list[tuple[int, bytes]] = []

    def __getitem__(self, name: str) -> PCIDevice:
        return self.devices[name]

    def find(self, ref: object) -> PCIDevice | None:
        """A device by name or BDF."""
        if not isinstance(ref, str):
            return None
        for d in self.devices.values():
            if ref in (d.name, d.bdf):
                return d
        return None

    def give_all_to(self, dom: Domain) -> None:
        """Boot: the hardware domain gets every device."""
        for dev in self.devices.values():
            self._move(dev, dom)

    def _move(self, dev: PCIDevice, dom: Domain) -> None:
        old = self.xen.domains.get(dev.owner)
        if old is not None:
            old.devices.discard(dev.name)
            old.ioports.difference_update(dev.ioports)
            old.irqs.discard(dev.irq)
            old.iomem.difference_update(dev.iomem)
        dev.owner = dom.domid
        dom.devices.add(dev.name)
        dom.ioports.update(dev.ioports)
        dom.irqs.add(dev.irq)
        dom.iomem.update(dev.iomem)

    def reclaim(self, dom: Domain) -> None:
        """A dying domain's devices go back to the hardware domain."""
        hw = next((d for d in self.xen.domains.values() if d.is_hardware), None)
        for dev in self.devices.values():
            if dev.owner == dom.domid and hw is not None and hw is not dom:
                self._move(dev, hw)

    def owner_of_irq(self, irq: int) -> int | None:
        for dev in self.devices.values():
            if dev.irq == irq:
                return dev.owner
        return None

    def snapshot(self) -> tuple[object, ...]:
        return tuple(sorted((d.name, d.owner, tuple(sorted(d.config.items())))
                            for d in self.devices.values()))


def _int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def port_io(xen: Xen, domid: int, port: int, value: int | None = None, *,
            crossing: bool = True) -> IOResult:
    """Domain ``domid`` executes ``in`` (``value`` None) or ``out`` on ``port``.

    Xen's ``guest_io_okay()``: allowed only for ports the domain holds; then the access reaches
    the real device.  Otherwise the guest gets ``#GP`` (nothing reaches the device).  The
    price is the trap (PV) or exit (HVM) and back, plus Xen's emulation; ``crossing=False``
    leaves the crossing out (when the caller already priced it).
    """
    d = xen.domain(domid)
    c = xen.costs
    cost = c.emulate + (2 * (c.trap if d.type == "pv" else c.vm_exit) if crossing else 0)
    if not _int(port) or port not in d.ioports:
        shown = f"{port:#x}" if _int(port) else repr(port)
        xen.trace.add("io", domid, f"{'in' if value is None else 'out'} port {shown}: #GP",
                      cost=cost)
        return IOResult(fault=f"#GP: port {port:#x} not permitted for d{domid}"
                        if _int(port) else f"#GP: bad port {port!r}")
    dev = next((x for x in xen.platform.devices.values() if port in x.ioports), None)
    if dev is None:
        return IOResult(value=0xFF)
    xen.trace.add("io", domid, f"{'in' if value is None else 'out'} port {port:#x} → {dev.name}",
                  cost=cost)
    if value is None:
        return IOResult(value=dev.hw.port_read(port))
    dev.hw.port_write(port, value & 0xFFFFFFFF)
    return IOResult(value=0)


def pci_conf_read(xen: Xen, domid: int, bdf: str, reg: int) -> int:
    """Read config register ``reg`` (dword) of ``bdf``; all ones unless ``domid`` owns it."""
    dev = xen.platform.find(bdf)
    if dev is None or dev.owner != domid or not _int(reg) or not 0 <= reg < 256:
        return 0xFFFFFFFF
    if reg == PCI_VENDOR_ID:
        return dev.vendor | dev.device << 16
    if reg == PCI_INTERRUPT_LINE:
        return dev.irq
    return dev.config.get(reg, 0)


def pci_conf_write(xen: Xen, domid: int, bdf: str, reg: int, value: int) -> int:
    """Write config register ``reg``: 0, or ``-EPERM`` (dropped) unless ``domid`` owns it."""
    dev = xen.platform.find(bdf)
    if dev is None or dev.owner != domid:
        return -EPERM
    if not (_int(reg) and _int(value)) or not 0 <= reg < 256 or reg in (PCI_VENDOR_ID,
                                                                          PCI_INTERRUPT_LINE):
        return -EINVAL
    dev.config[reg] = value & 0xFFFFFFFF
    return 0


def dma(xen: Xen, device: str, mfn: int, offset: int, data: bytes | None = None,
        n: int = 0) -> bytes | int:
    """``device`` does DMA to (``data``) or from (``n`` bytes) machine frame ``mfn``.

    The IOMMU lets it through only if the device's owner may access the frame (its own, or
    granted and mapped — writable for a write into memory).  Returns the bytes read, 0 for a
    write, or ``-EPERM`` for an IOMMU fault (nothing transferred).
    """
    dev = xen.platform.find(device)
    if dev is None:
        return -ENODEV
    write = data is not None
    size = len(data) if data is not None else n
    if not xen._in_frame(mfn, offset, size) or not xen.can_access(dev.owner, mfn, write):
        xen.platform.iommu_faults += 1
        xen.trace.add("iommu", dev.owner, f"IOMMU fault: {device} DMA {'to' if write else 'from'}"
                      f" mfn {mfn!r} not mapped for d{dev.owner}")
        return -EPERM
    xen.trace.add("dma", dev.owner, f"{device} DMA {size} bytes {'to' if write else 'from'}"
                  f" mfn {mfn:#x}", cost=xen.costs.page_copy * size / xen.memory.frame_size)
    if data is not None:
        xen.memory.write_bytes(mfn, offset, bytes(data))  # type: ignore[arg-type]
        return 0
    return xen.memory.read_bytes(mfn, offset, n)  # type: ignore[arg-type]


def raise_irq(xen: Xen, irq: int) -> bool:
    """A device raises physical ``irq``: Xen sends it as a pirq to the owner's bound port.

    Returns True if an event channel got it (the owner bound the pirq), else it is lost.
    """
    from virtcore.xen.evtchn import set_pending

    owner = xen.platform.owner_of_irq(irq)
    d = xen.domains.get(owner) if owner is not None else None
    port = d.pirq_to_port.get(irq) if d is not None else None
    if d is None or port is None:
        xen.platform.lost_irqs += 1
        xen.trace.add("irq", owner, f"IRQ {irq}: no pirq channel bound, not delivered")
        return False
    xen.trace.add("irq", d.domid, f"IRQ {irq} → pirq port {port}")
    set_pending(xen, d, port)
    return True


def domctl_device(xen: Xen, cur: Domain, d: Domain, cmd: int, u: dict[str, Any]) -> int:
    """The device-access domctls (called by :func:`virtcore.xen.control.do_domctl`)."""
    allow = u.get("allow_access", 1)
    if cmd == XEN_DOMCTL_ioport_permission:
        first, nr = u.get("first_port"), u.get("nr_ports")
        if not (_int(first) and _int(nr)) or nr < 1 or first < 0 or first + nr > 0x10000:
            return -EINVAL
        ports = range(first, first + nr)
        if not set(ports) <= cur.ioports:
            return -EPERM  # ioports_access_permitted(current->domain, ...)
        (d.ioports.update if allow else d.ioports.difference_update)(ports)
        return 0
    if cmd == XEN_DOMCTL_irq_permission:
        pirq = u.get("pirq")
        if not _int(pirq) or not 0 <= pirq < xen.nr_pirqs:
            return -EINVAL
        if pirq not in cur.irqs:
            return -EPERM
        (d.irqs.add if allow else d.irqs.discard)(pirq)
        return 0
    if cmd == XEN_DOMCTL_iomem_permission:
        first, nr = u.get("first_mfn"), u.get("nr_mfns")
        if not (_int(first) and _int(nr)) or nr < 1 or first < 0:
            return -EINVAL
        frames = range(first, first + nr)
        if not set(frames) <= cur.iomem:
            return -EPERM
        (d.iomem.update if allow else d.iomem.difference_update)(frames)
        return 0
    dev = xen.platform.find(u.get("dev"))
    if dev is None:
        return -ENODEV
    if cmd == XEN_DOMCTL_assign_device:
        if dev.owner == d.domid:
            return -EBUSY
        if dev.owner != cur.domid:
            return -EBUSY  # still bound elsewhere: deassign first
        xen.platform._move(dev, d)
        xen.trace.add("domctl", cur.domid, f"assign_device {dev.name} ({dev.bdf}) → d{d.domid}")
        return 0
    if cmd == XEN_DOMCTL_deassign_device:
        if dev.owner != d.domid:
            return -EINVAL
        xen.platform._move(dev, cur)
        return 0
    return -ENOSYS


def do_physdev_op(xen: Xen, dom: Domain, vcpu: int, args: tuple[Any, ...]) -> int:
    """``do_physdev_op(cmd, arg)``: hypercall 33 (``PHYSDEVOP_eoi``, ``irq_status_query``)."""
    if len(args) != 2:
        return -EINVAL
    cmd, arg = args
    if not isinstance(arg, dict):
        return -EFAULT
    if cmd == PHYSDEVOP_eoi:
        irq = arg.get("irq")
        if not _int(irq) or not 0 <= irq < xen.nr_pirqs:
            return -EINVAL
        return 0 if irq in dom.irqs else -EPERM
    if cmd == PHYSDEVOP_irq_status_query:
        irq = arg.get("irq")
        if not _int(irq) or not 0 <= irq < xen.nr_pirqs:
            return -EINVAL
        arg["flags"] = 0
        return 0
    return -ENOSYS
