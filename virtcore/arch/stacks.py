"""The four virtualization architectures (虚拟化架构) as stacks of layers.

A :class:`Stack` is plain data: its :class:`Layer` objects (hardware, a
hypervisor or host kernel, guest kernels, apps, …) and the :class:`Edge`
objects saying which layer runs on which.  Everything else in
:mod:`virtcore.arch` — event paths, costs, fault isolation, the Type 1 /
Type 2 classification — is computed from these stacks.

The architectures, in the notes' words (syllabus S1.1–S1.6):

- **hosted** (寄居虚拟化): the VMM is an application on a host OS (S1.1);
- **bare-metal** (裸金属虚拟化): the hypervisor sits on the hardware (S1.2) —
  either driving the devices itself, as VMware ESXi's VMkernel does
  (:func:`bare_metal`), or leaving them to a privileged Linux domain,
  Domain 0, whose backend drivers serve the guests, as Xen does
  (:func:`bare_metal_xen`; Hyper-V's parent partition plays the same part);
- **OS-level** (操作系统虚拟化): one kernel split into containers, no
  hypervisor layer (S1.4);
- **hybrid** (混合虚拟化): a kernel-level driver (KVM's ``kvm.ko``) turns the
  host kernel into the hypervisor; needs Intel VT-x / AMD-V (S1.5).

Simplifications (said once here, repeated where they matter): a stack is a
diagram, not an operating system — a layer has a kind and a privilege level,
nothing else; every VM in a hosted or hybrid stack has its own user-space VMM
process (as VMware Workstation and QEMU do); real hosted products also load
a helper driver into the host kernel, which the notes' picture (and
:func:`hosted`) leaves out.

>>> s = hosted()
>>> [layer.name for layer in s.layers_at(1)]
['host kernel']
>>> classify(s).type
<HypervisorType.TYPE_2: 'type 2'>
>>> classify(os_level()).type
<HypervisorType.NONE: 'none'>
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from virtcore.errors import ConfigurationError

__all__ = [
    "KVM_TYPE_VIEWS",
    "Architecture",
    "ArchitectureError",
    "Classification",
    "Edge",
    "EdgeKind",
    "HypervisorType",
    "Layer",
    "LayerKind",
    "PrivilegeLevel",
    "Stack",
    "TypeView",
    "all_stacks",
    "bare_metal",
    "bare_metal_xen",
    "classify",
    "hosted",
    "hybrid",
    "native",
    "os_level",
    "stack_for",
    "stack_graph_data",
    "type1_diagram",
    "type2_diagram",
]


class ArchitectureError(ConfigurationError):
    """A stack, event or guest that the chosen architecture cannot have.

    >>> issubclass(ArchitectureError, ConfigurationError)
    True
    """


class Architecture(str, enum.Enum):
    """The four architectures of the notes, each with its Chinese term.

    >>> Architecture.HOSTED.chinese
    '寄居虚拟化'
    >>> Architecture("os-level") is Architecture.OS_LEVEL
    True
    """

    HOSTED = "hosted"
    BARE_METAL = "bare-metal"
    OS_LEVEL = "os-level"
    HYBRID = "hybrid"

    @property
    def chinese(self) -> str:
        """The notes' term."""
        return _ARCH_CHINESE[self]

    def __str__(self) -> str:
        return self.value


_ARCH_CHINESE = {
    Architecture.HOSTED: "寄居虚拟化",
    Architecture.BARE_METAL: "裸金属虚拟化",
    Architecture.OS_LEVEL: "操作系统虚拟化",
    Architecture.HYBRID: "混合虚拟化",
}


class HypervisorType(str, enum.Enum):
    """Goldberg's classification by where the hypervisor sits (S1.6; [GOLD73, WIKIHV]).

    ``DEBATED`` is KVM's case (correction N3); ``NONE`` is OS-level
    virtualization, which has no hypervisor at all (S1.4).

    >>> HypervisorType.TYPE_1.chinese
    '1型（裸机型）'
    """

    TYPE_1 = "type 1"
    TYPE_2 = "type 2"
    DEBATED = "debated"
    NONE = "none"

    @property
    def chinese(self) -> str:
        """The notes' term."""
        return _TYPE_CHINESE[self]

    def __str__(self) -> str:
        return self.value


_TYPE_CHINESE = {
    HypervisorType.TYPE_1: "1型（裸机型）",
    HypervisorType.TYPE_2: "2型（主机型/宿主型）",
    HypervisorType.DEBATED: "有争议（1型或2型）",
    HypervisorType.NONE: "无Hypervisor层",
}


class LayerKind(str, enum.Enum):
    """What a layer is.

    >>> LayerKind.KERNEL_MODULE.chinese
    '内核级驱动器（内核模块）'
    """

    HARDWARE = "hardware"
    HYPERVISOR = "hypervisor"
    HOST_KERNEL = "host_kernel"
    GUEST_KERNEL = "guest_kernel"
    CONTAINER_RUNTIME = "container_runtime"
    APP = "app"
    VMM_PROCESS = "vmm_process"
    KERNEL_MODULE = "kernel_module"
    CONTROL_DOMAIN = "control_domain"

    @property
    def chinese(self) -> str:
        """The notes' term (or the usual Chinese term where the notes have none)."""
        return _KIND_CHINESE[self]

    def __str__(self) -> str:
        return self.value


_KIND_CHINESE = {
    LayerKind.HARDWARE: "物理硬件",
    LayerKind.HYPERVISOR: "虚拟机监控程序（Hypervisor）",
    LayerKind.HOST_KERNEL: "主机内核（宿主操作系统）",
    LayerKind.GUEST_KERNEL: "VM内核（GuestOS）",
    LayerKind.CONTAINER_RUNTIME: "容器管理器",
    LayerKind.APP: "应用程序",
    LayerKind.VMM_PROCESS: "虚拟化管理软件（用户态进程）",
    LayerKind.KERNEL_MODULE: "内核级驱动器（内核模块）",
    LayerKind.CONTROL_DOMAIN: "特权域（Domain 0，后端驱动）",
}


class PrivilegeLevel(str, enum.Enum):
    """How much of the CPU a layer controls.

    - ``ROOT``: the most privileged software — ring 0 on a machine without
      virtualization extensions, VMX root mode with them [SDM].
    - ``GUEST_KERNEL``: a kernel that believes it runs in ring 0 but does not
      own the machine: deprivileged to ring 1/3 under software virtualization,
      or ring 0 in VMX non-root mode with hardware assist [SDM, VMW07].
    - ``USER``: ring 3.

    >>> [p.value for p in PrivilegeLevel]
    ['hardware', 'root', 'guest_kernel', 'user']
    """

    HARDWARE = "hardware"
    ROOT = "root"
    GUEST_KERNEL = "guest_kernel"
    USER = "user"

    def __str__(self) -> str:
        return self.value


class EdgeKind(str, enum.Enum):
    """How two layers are related.

    - ``RUNS_ON``: the upper layer runs on the lower one; if the lower one
      dies, so does the upper.
    - ``HOSTS``: a user-space VMM process provides a VM's devices and memory
      (the VM *is* that process): the VM dies with it.
    - ``PART_OF``: a kernel module inserted into a kernel; a fault in either is
      a fault of both (they share one address space and privilege).
    - ``MANAGES``: control only (a container manager starts and stops
      containers); faults do not travel along it.
    - ``SERVES``: a driver domain's backend serves a guest's I/O (Xen's
      Domain 0).  Faults travel along it: a guest loses its devices with the
      backend, and when Domain 0 crashes Xen reboots the whole machine
      [XEN-SHUTDOWN].

    >>> EdgeKind.PART_OF.propagates_faults
    True
    >>> EdgeKind.MANAGES.propagates_faults
    False
    """

    RUNS_ON = "runs_on"
    HOSTS = "hosts"
    PART_OF = "part_of"
    MANAGES = "manages"
    SERVES = "serves"

    @property
    def propagates_faults(self) -> bool:
        """Whether a crash of the lower layer takes the upper one with it."""
        return self is not EdgeKind.MANAGES

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Layer:
    """One box of a stack diagram.

    Parameters
    ----------
    name : str
        Unique within its stack, e.g. ``"vm1 kernel"``.
    chinese : str
        The notes' term for it.
    kind : LayerKind
    privilege : PrivilegeLevel
    level : int
        Height in the diagram (hardware is 0); used for drawing.
    guest : str or None
        The guest (VM or container) this layer belongs to; ``None`` if shared.
    note : str
        One line on what the box simplifies.

    >>> Layer("hardware", "物理硬件", LayerKind.HARDWARE, PrivilegeLevel.HARDWARE, 0).shared
    True
    """

    name: str
    chinese: str
    kind: LayerKind
    privilege: PrivilegeLevel
    level: int
    guest: str | None = None
    note: str = ""

    @property
    def shared(self) -> bool:
        """True if the layer serves every guest of the stack."""
        return self.guest is None


@dataclass(frozen=True)
class Edge:
    """``upper`` depends on ``lower`` in the way ``kind`` says.

    >>> Edge("hardware", "hypervisor")
    Edge(lower='hardware', upper='hypervisor', kind=<EdgeKind.RUNS_ON: 'runs_on'>)
    """

    lower: str
    upper: str
    kind: EdgeKind = EdgeKind.RUNS_ON


@dataclass(frozen=True)
class TypeView:
    """One side of a classification debate, with its argument and source.

    >>> KVM_TYPE_VIEWS[0].type
    <HypervisorType.TYPE_2: 'type 2'>
    """

    type: HypervisorType
    argument: str
    source: str


#: Correction N3: KVM's type is debated; both views with their arguments.
KVM_TYPE_VIEWS: tuple[TypeView, ...] = (
    TypeView(
        HypervisorType.TYPE_2,
        "By placement: kvm.ko is a module loaded into a general-purpose Linux kernel, "
        "and ordinary Linux applications compete with the VMs for the machine.",
        "[WIKIHV]; the notes' Type 2 diagram and list "
        "('KVM 、VirtualBox、VMware Workstation都属于这个类型')",
    ),
    TypeView(
        HypervisorType.TYPE_1,
        "By function: the module turns the host kernel itself into the hypervisor, which "
        "runs directly on the hardware; there is no separate host OS layer beneath it.",
        "[WIKIHV] ('effectively convert the host operating system to a type-1 "
        "hypervisor'); "
        "the notes' KVM section ('物理硬件层上直接就是VMM虚拟化层…Host OS就是一个VMM')",
    ),
)


@dataclass(frozen=True)
class Stack:
    """A virtualization architecture as layers and edges (plain data).

    Build one with :func:`hosted`, :func:`bare_metal`, :func:`os_level`,
    :func:`hybrid`, :func:`native`, :func:`type1_diagram`, :func:`type2_diagram`
    (or :func:`virtcore.arch.kvm_nested`).

    Parameters
    ----------
    name, chinese : str
    architecture : Architecture or None
        ``None`` for a machine without virtualization (:func:`native`).
    layers : tuple of Layer
    edges : tuple of Edge
    host_os : str or None
        The OS whose kernel sits under the guests (``None`` on bare metal).
    guests : tuple of str
        VM or container names, in order.
    roles : tuple of (guest, role, layer) triples
        Which layer plays which part for each guest: ``app``, ``kernel``
        (the kernel the guest's apps call), ``monitor`` (where the guest's
        traps and VM exits land), ``user_vmm`` (its user-space VMM process).
        Shared roles use guest ``""``: ``hardware``, ``root`` (the most
        privileged software), ``host_kernel``, ``hypervisor``.
    requires_hardware_assist : bool
        Hybrid virtualization needs Intel VT-x / AMD-V (S1.5).
    syllabus : tuple of str
        The claims the stack illustrates.

    >>> s = bare_metal(guests=["web", "db"])
    >>> s.guests
    ('web', 'db')
    >>> s.role("monitor", "db").name
    'hypervisor'
    >>> s.role("kernel", "db").name
    'db kernel'
    """

    name: str
    chinese: str
    architecture: Architecture | None
    layers: tuple[Layer, ...]
    edges: tuple[Edge, ...]
    host_os: str | None
    guests: tuple[str, ...]
    roles: tuple[tuple[str, str, str], ...]
    requires_hardware_assist: bool = False
    syllabus: tuple[str, ...] = ()
    _by_name: dict[str, Layer] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Layer] = {}
        for layer in self.layers:
            if layer.name in by_name:
                raise ArchitectureError(f"two layers named {layer.name!r} in stack {self.name!r}")
            by_name[layer.name] = layer
        for edge in self.edges:
            for end in (edge.lower, edge.upper):
                if end not in by_name:
                    raise ArchitectureError(f"edge {edge} names unknown layer {end!r}")
        for guest, _role, layer_name in self.roles:
            if layer_name not in by_name:
                raise ArchitectureError(f"role of {guest!r} names unknown layer {layer_name!r}")
        object.__setattr__(self, "_by_name", by_name)

    # -- lookups -----------------------------------------------------------------
    def layer(self, name: str) -> Layer:
        """The layer called ``name``.

        >>> hosted().layer("host kernel").kind
        <LayerKind.HOST_KERNEL: 'host_kernel'>
        """
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(self._by_name)
            raise ArchitectureError(
                f"stack {self.name!r} has no layer {name!r}; has: {known}"
            ) from None

    def has_layer(self, name: str) -> bool:
        """True if a layer of that name exists.

        >>> os_level().has_layer("hypervisor")
        False
        """
        return name in self._by_name

    def role(self, role: str, guest: str | None = None) -> Layer:
        """The layer that plays ``role`` (for ``guest``, or a shared role).

        Raises :class:`ArchitectureError` if the stack has no such part (e.g.
        the ``monitor`` of a container: OS-level virtualization has none).

        >>> hybrid().role("monitor", "vm1").name
        'kvm module'
        >>> hybrid().role("root").name
        'host kernel'
        """
        key = guest or ""
        if guest is not None and guest not in self.guests:
            raise ArchitectureError(
                f"stack {self.name!r} has no guest {guest!r}; guests: {', '.join(self.guests)}"
            )
        for g, r, layer_name in self.roles:
            if g == key and r == role:
                return self._by_name[layer_name]
        what = f"guest {guest!r}" if guest else "the stack"
        raise ArchitectureError(f"in stack {self.name!r}, {what} has no {role!r} layer")

    def has_role(self, role: str, guest: str | None = None) -> bool:
        """True if :meth:`role` would find a layer.

        >>> os_level().has_role("monitor", "ct1")
        False
        """
        key = guest or ""
        return any(g == key and r == role for g, r, _ in self.roles)

    def layers_of_kind(self, kind: LayerKind | str) -> tuple[Layer, ...]:
        """All layers of one kind, in stack order.

        >>> [l.name for l in hosted(guests=2).layers_of_kind("guest_kernel")]
        ['vm1 kernel', 'vm2 kernel']
        """
        kind = LayerKind(kind)
        return tuple(layer for layer in self.layers if layer.kind is kind)

    def layers_at(self, level: int) -> tuple[Layer, ...]:
        """The layers drawn at one height.

        >>> [l.name for l in bare_metal(guests=1).layers_at(0)]
        ['hardware']
        """
        return tuple(layer for layer in self.layers if layer.level == level)

    def below(self, name: str) -> tuple[Layer, ...]:
        """The layers ``name`` runs on (or is hosted by, or is part of).

        >>> [l.name for l in hybrid(guests=1).below("vm1 kernel")]
        ['kvm module', 'vm1 QEMU']
        """
        self.layer(name)
        return tuple(
            self._by_name[e.lower]
            for e in self.edges
            if e.upper == name and e.kind is not EdgeKind.MANAGES
        )

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def max_level(self) -> int:
        """The height of the tallest layer."""
        return max(layer.level for layer in self.layers)

    def describe(self) -> str:
        """The stack drawn as text, top layer first.

        >>> print(os_level(containers=2).describe())  # doctest: +NORMALIZE_WHITESPACE
        Stack 'os-level' 操作系统虚拟化 — type: none; host OS: linux
          2  ct1 app | ct2 app
          1  host kernel | container manager
          0  hardware
        """
        cls = classify(self)
        host = self.host_os or "none (on the hardware)"
        lines = [f"Stack {self.name!r} {self.chinese} — type: {cls.type.value}; host OS: {host}"]
        for level in range(self.max_level, -1, -1):
            names = [layer.name for layer in self.layers_at(level)]
            if names:
                lines.append(f"  {level}  " + " | ".join(names))
        if self.requires_hardware_assist:
            lines.append("  (needs hardware virtualization: Intel VT-x / AMD-V)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.describe()


# -- builders ---------------------------------------------------------------------


def _names(guests: int | Sequence[str], prefix: str) -> tuple[str, ...]:
    if isinstance(guests, int):
        if isinstance(guests, bool) or guests < 1:
            raise ArchitectureError(f"need at least one guest, got {guests!r}")
        return tuple(f"{prefix}{i}" for i in range(1, guests + 1))
    names = tuple(guests)
    if not names:
        raise ArchitectureError("need at least one guest")
    if len(set(names)) != len(names):
        raise ArchitectureError(f"guest names must be unique: {names}")
    for n in names:
        if not isinstance(n, str) or not n or " " in n:
            raise ArchitectureError(f"guest names are non-empty words without spaces, got {n!r}")
    return names


def _hardware() -> Layer:
    return Layer(
        "hardware", "物理硬件（服务器硬件）", LayerKind.HARDWARE, PrivilegeLevel.HARDWARE, 0
    )


def _host_kernel(host_os: str, level: int = 1) -> Layer:
    return Layer(
        "host kernel",
        "主机内核（宿主操作系统）",
        LayerKind.HOST_KERNEL,
        PrivilegeLevel.ROOT,
        level,
        note=f"the {host_os} kernel",
    )


def _vm_layers(g: str, kernel_level: int) -> tuple[Layer, Layer]:
    kernel = Layer(
        f"{g} kernel",
        "VM内核（GuestOS）",
        LayerKind.GUEST_KERNEL,
        PrivilegeLevel.GUEST_KERNEL,
        kernel_level,
        guest=g,
    )
    app = Layer(
        f"{g} app", "VM的应用程序", LayerKind.APP, PrivilegeLevel.USER, kernel_level + 1, guest=g
    )
    return kernel, app


def hosted(guests: int | Sequence[str] = 2, host_os: str = "windows") -> Stack:
    """Hosted virtualization (寄居虚拟化, Type 2): the VMM is an application on a host OS.

    Each VM gets its own VMM process on the host kernel (S1.1, S1.8).  The
    default host is Windows, as in the notes' example of Windows running Linux.
    The VMM box stands for VMware Workstation's two halves (Sugerman et al.,
    USENIX 2001): a monitor that catches the guest's traps in its own "world",
    and an ordinary application that does the guest's I/O through host system
    calls.

    >>> s = hosted(guests=1)
    >>> [l.name for l in s.below("vm1 kernel")]
    ['vm1 VMM']
    >>> [l.name for l in s.below("vm1 VMM")]
    ['host kernel']
    """
    names = _names(guests, "vm")
    layers = [_hardware(), _host_kernel(host_os)]
    edges = [Edge("hardware", "host kernel")]
    roles = [
        ("", "hardware", "hardware"),
        ("", "root", "host kernel"),
        ("", "host_kernel", "host kernel"),
    ]
    for g in names:
        vmm = Layer(
            f"{g} VMM",
            "虚拟化管理软件（普通应用程序）",
            LayerKind.VMM_PROCESS,
            PrivilegeLevel.USER,
            2,
            guest=g,
            note="an application on the host; its monitor half runs in its own world",
        )
        kernel, app = _vm_layers(g, 3)
        layers += [vmm, kernel, app]
        edges += [
            Edge("host kernel", vmm.name),
            Edge(vmm.name, kernel.name, EdgeKind.HOSTS),
            Edge(kernel.name, app.name),
        ]
        roles += [
            (g, "app", app.name),
            (g, "kernel", kernel.name),
            (g, "monitor", vmm.name),
            (g, "user_vmm", vmm.name),
        ]
    return Stack(
        "hosted",
        Architecture.HOSTED.chinese,
        Architecture.HOSTED,
        tuple(layers),
        tuple(edges),
        host_os,
        names,
        tuple(roles),
        syllabus=("S1.1", "S1.6", "S1.8"),
    )


def bare_metal(guests: int | Sequence[str] = 2, *, embedded: bool = False) -> Stack:
    """Bare-metal virtualization (裸金属虚拟化, Type 1): the hypervisor sits on the hardware.

    No host OS; guests do not depend on one (S1.2, S1.7).  The hypervisor
    here also drives the devices itself, as ESXi's VMkernel does [WALD02]; Xen
    hands I/O to Domain 0 instead — see :func:`bare_metal_xen` (and chapters
    5–6).  ``embedded=True`` marks a hypervisor
    shipped inside the machine's firmware, beside the BIOS (S1.9: Hitachi
    Virtage, ESXi Embedded) — the layers are the same.

    >>> s = bare_metal(guests=1)
    >>> s.host_os is None, [l.name for l in s.below("hypervisor")]
    (True, ['hardware'])
    >>> bare_metal(embedded=True).layer("hypervisor").note
    'embedded in firmware beside the BIOS (S1.9)'
    """
    names = _names(guests, "vm")
    hv = Layer(
        "hypervisor",
        "虚拟机监控程序（虚拟层内核）",
        LayerKind.HYPERVISOR,
        PrivilegeLevel.ROOT,
        1,
        note="embedded in firmware beside the BIOS (S1.9)" if embedded else "a thin OS of its own",
    )
    layers = [_hardware(), hv]
    edges = [Edge("hardware", "hypervisor")]
    roles = [
        ("", "hardware", "hardware"),
        ("", "root", "hypervisor"),
        ("", "hypervisor", "hypervisor"),
    ]
    for g in names:
        kernel, app = _vm_layers(g, 2)
        layers += [kernel, app]
        edges += [Edge("hypervisor", kernel.name), Edge(kernel.name, app.name)]
        roles += [(g, "app", app.name), (g, "kernel", kernel.name), (g, "monitor", "hypervisor")]
    return Stack(
        "bare-metal (embedded)" if embedded else "bare-metal",
        Architecture.BARE_METAL.chinese,
        Architecture.BARE_METAL,
        tuple(layers),
        tuple(edges),
        None,
        names,
        tuple(roles),
        syllabus=("S1.2", "S1.6", "S1.7") + (("S1.9",) if embedded else ()),
    )


def bare_metal_xen(guests: int | Sequence[str] = 2) -> Stack:
    """Bare metal the Xen way: the hypervisor on the hardware, the devices in Domain 0.

    Xen's hypervisor has no device drivers of its own: the privileged
    Domain 0 (a Linux kernel running *on* the hypervisor) holds the native
    drivers and a **backend** driver for each guest device; a guest's
    **frontend** driver puts requests on a ring in memory shared with the
    backend (granted through the grant table) and notifies it through an
    event channel (S5.3, S5.4, S6.2, S6.3) [XIG, XEN-RING, XEN-GNTTAB,
    XEN-EVTCHN].  Hyper-V's parent partition plays the same part.  Still
    Type 1: the hypervisor runs directly on the hardware, and Dom0 is a guest
    of it — a privileged one.

    Simplifications: one Domain 0 (no separate driver domain, S5.6); Domain 0
    is drawn as one box (its kernel, backends and toolstack); a crash of
    Domain 0 takes every guest with it because Xen reboots the machine when
    the hardware domain crashes [XEN-SHUTDOWN].

    >>> s = bare_metal_xen(guests=1)
    >>> s.host_os is None, [l.name for l in s.below("hypervisor")]
    (True, ['hardware'])
    >>> [l.name for l in s.below("vm1 kernel")]
    ['hypervisor', 'dom0 kernel']
    >>> classify(s).type.value
    'type 1'
    """
    names = _names(guests, "vm")
    hv = Layer(
        "hypervisor",
        "Xen Hypervisor（无设备驱动）",
        LayerKind.HYPERVISOR,
        PrivilegeLevel.ROOT,
        1,
        note="Xen: CPU, memory, scheduling, event channels; no device drivers",
    )
    dom0 = Layer(
        "dom0 kernel",
        LayerKind.CONTROL_DOMAIN.chinese,
        LayerKind.CONTROL_DOMAIN,
        PrivilegeLevel.GUEST_KERNEL,
        2,
        note="Domain 0: Linux with the native drivers, the backends and the toolstack",
    )
    layers = [_hardware(), hv, dom0]
    edges = [Edge("hardware", "hypervisor"), Edge("hypervisor", "dom0 kernel")]
    roles = [
        ("", "hardware", "hardware"),
        ("", "root", "hypervisor"),
        ("", "hypervisor", "hypervisor"),
        ("", "driver_domain", "dom0 kernel"),
    ]
    for g in names:
        kernel, app = _vm_layers(g, 2)
        layers += [kernel, app]
        edges += [
            Edge("hypervisor", kernel.name),
            Edge("dom0 kernel", kernel.name, EdgeKind.SERVES),
            Edge(kernel.name, app.name),
        ]
        roles += [
            (g, "app", app.name),
            (g, "kernel", kernel.name),
            (g, "monitor", "hypervisor"),
            (g, "backend", "dom0 kernel"),
        ]
    return Stack(
        "bare-metal (Xen-style)",
        Architecture.BARE_METAL.chinese,
        Architecture.BARE_METAL,
        tuple(layers),
        tuple(edges),
        None,
        names,
        tuple(roles),
        syllabus=("S1.2", "S1.6", "S1.7", "S3.5", "S5.3"),
    )


def os_level(containers: int | Sequence[str] = 2, host_os: str = "linux") -> Stack:
    """OS-level virtualization (操作系统虚拟化): one kernel split into containers.

    No hypervisor layer; every container's apps call the one host kernel
    directly; a container manager (容器管理器) starts and stops them (S1.4).
    In Linux the kernel keeps them apart with namespaces and limits them with
    cgroups [NS, CG].

    >>> s = os_level(containers=2)
    >>> s.has_layer("hypervisor"), s.role("kernel", "ct2").name
    (False, 'host kernel')
    """
    names = _names(containers, "ct")
    runtime = Layer(
        "container manager",
        "容器管理器",
        LayerKind.CONTAINER_RUNTIME,
        PrivilegeLevel.USER,
        1,
        note="a host process; the kernel itself does the isolation (namespaces, cgroups)",
    )
    layers = [_hardware(), _host_kernel(host_os), runtime]
    edges = [Edge("hardware", "host kernel"), Edge("host kernel", runtime.name)]
    roles = [
        ("", "hardware", "hardware"),
        ("", "root", "host kernel"),
        ("", "host_kernel", "host kernel"),
    ]
    for g in names:
        app = Layer(
            f"{g} app",
            "容器内的应用程序",
            LayerKind.APP,
            PrivilegeLevel.USER,
            2,
            guest=g,
            note="own files, processes and user accounts; the host's kernel",
        )
        layers.append(app)
        edges += [Edge("host kernel", app.name), Edge(runtime.name, app.name, EdgeKind.MANAGES)]
        roles += [(g, "app", app.name), (g, "kernel", "host kernel")]
    # the runtime is drawn at level 1 beside the kernel, but it runs on it
    return Stack(
        "os-level",
        Architecture.OS_LEVEL.chinese,
        Architecture.OS_LEVEL,
        tuple(layers),
        tuple(edges),
        host_os,
        names,
        tuple(roles),
        syllabus=("S1.4",),
    )


def hybrid(guests: int | Sequence[str] = 2) -> Stack:
    """Hybrid virtualization (混合虚拟化): KVM turns the Linux kernel into the hypervisor.

    A kernel-level driver (``kvm.ko``, 内核级驱动器) is inserted into the host
    kernel and catches the guests' VM exits; one user-space QEMU process per
    VM emulates its devices (S1.5, S4.3).  Needs Intel VT-x / AMD-V.

    >>> s = hybrid(guests=1)
    >>> s.requires_hardware_assist, s.layer("kvm module").kind.value
    (True, 'kernel_module')
    >>> [l.name for l in s.below("kvm module")]
    ['host kernel']
    """
    names = _names(guests, "vm")
    kvm = Layer(
        "kvm module",
        "内核级驱动器（kvm.ko）",
        LayerKind.KERNEL_MODULE,
        PrivilegeLevel.ROOT,
        1,
        note="inserted into the host kernel; exposes /dev/kvm",
    )
    layers = [_hardware(), _host_kernel("linux"), kvm]
    edges = [Edge("hardware", "host kernel"), Edge("host kernel", "kvm module", EdgeKind.PART_OF)]
    roles = [
        ("", "hardware", "hardware"),
        ("", "root", "host kernel"),
        ("", "host_kernel", "host kernel"),
        ("", "hypervisor", "kvm module"),
    ]
    for g in names:
        qemu = Layer(
            f"{g} QEMU",
            "QEMU（用户空间，模拟I/O设备）",
            LayerKind.VMM_PROCESS,
            PrivilegeLevel.USER,
            2,
            guest=g,
            note="the VM is this process; each vCPU is one of its threads",
        )
        kernel, app = _vm_layers(g, 2)
        app = Layer(app.name, app.chinese, app.kind, app.privilege, 3, guest=g)
        layers += [qemu, kernel, app]
        edges += [
            Edge("host kernel", qemu.name),
            Edge("kvm module", kernel.name),
            Edge(qemu.name, kernel.name, EdgeKind.HOSTS),
            Edge(kernel.name, app.name),
        ]
        roles += [
            (g, "app", app.name),
            (g, "kernel", kernel.name),
            (g, "monitor", "kvm module"),
            (g, "user_vmm", qemu.name),
        ]
    return Stack(
        "hybrid",
        Architecture.HYBRID.chinese,
        Architecture.HYBRID,
        tuple(layers),
        tuple(edges),
        "linux",
        names,
        tuple(roles),
        requires_hardware_assist=True,
        syllabus=("S1.5", "S1.6"),
    )


def native(apps: int | Sequence[str] = 1, host_os: str = "linux") -> Stack:
    """No virtualization: apps on one kernel on the hardware — the baseline for costs.

    >>> s = native()
    >>> s.architecture is None, s.guests
    (True, ('p1',))
    """
    names = _names(apps, "p")
    layers = [_hardware(), _host_kernel(host_os)]
    edges = [Edge("hardware", "host kernel")]
    roles = [
        ("", "hardware", "hardware"),
        ("", "root", "host kernel"),
        ("", "host_kernel", "host kernel"),
    ]
    for g in names:
        app = Layer(f"{g} app", "应用程序", LayerKind.APP, PrivilegeLevel.USER, 2, guest=g)
        layers.append(app)
        edges.append(Edge("host kernel", app.name))
        roles += [(g, "app", app.name), (g, "kernel", "host kernel")]
    return Stack(
        "native", "无虚拟化", None, tuple(layers), tuple(edges), host_os, names, tuple(roles)
    )


def type1_diagram() -> Stack:
    """The notes' Type 1 picture: GuestOS, GuestOS / Hypervisor (ESXi, Xen) / Server Hardware.

    >>> [l.name for l in type1_diagram().layers_at(1)]
    ['Hypervisor (ESXi, Xen)']
    >>> classify(type1_diagram()).type.value
    'type 1'
    """
    hv = "Hypervisor (ESXi, Xen)"
    layers = (
        Layer("Server Hardware", "服务器硬件", LayerKind.HARDWARE, PrivilegeLevel.HARDWARE, 0),
        Layer(hv, "Hypervisor", LayerKind.HYPERVISOR, PrivilegeLevel.ROOT, 1),
        Layer("GuestOS 1", "GuestOS", LayerKind.GUEST_KERNEL, PrivilegeLevel.GUEST_KERNEL, 2, "g1"),
        Layer("GuestOS 2", "GuestOS", LayerKind.GUEST_KERNEL, PrivilegeLevel.GUEST_KERNEL, 2, "g2"),
    )
    edges = (Edge("Server Hardware", hv), Edge(hv, "GuestOS 1"), Edge(hv, "GuestOS 2"))
    roles = (
        ("", "hardware", "Server Hardware"),
        ("", "root", hv),
        ("", "hypervisor", hv),
        ("g1", "kernel", "GuestOS 1"),
        ("g1", "monitor", hv),
        ("g2", "kernel", "GuestOS 2"),
        ("g2", "monitor", hv),
    )
    return Stack(
        "type 1 (notes' diagram)",
        "1型",
        Architecture.BARE_METAL,
        layers,
        edges,
        None,
        ("g1", "g2"),
        roles,
        syllabus=("S1.6",),
    )


def type2_diagram() -> Stack:
    """The notes' Type 2 picture: GuestOS, GuestOS / Hypervisor (KVM) / Linux OS / Server Hardware.

    The notes draw KVM as a program *on* Linux; correction N3 says that is
    only one of two views (see :data:`KVM_TYPE_VIEWS` and :func:`hybrid`).

    >>> classify(type2_diagram()).type.value
    'type 2'
    """
    hv = "Hypervisor (KVM)"
    layers = (
        Layer("Server Hardware", "服务器硬件", LayerKind.HARDWARE, PrivilegeLevel.HARDWARE, 0),
        Layer("Linux OS", "Linux OS", LayerKind.HOST_KERNEL, PrivilegeLevel.ROOT, 1),
        Layer(
            hv,
            "Hypervisor",
            LayerKind.HYPERVISOR,
            PrivilegeLevel.ROOT,
            2,
            note="as the notes draw it (N3)",
        ),
        Layer("GuestOS 1", "GuestOS", LayerKind.GUEST_KERNEL, PrivilegeLevel.GUEST_KERNEL, 3, "g1"),
        Layer("GuestOS 2", "GuestOS", LayerKind.GUEST_KERNEL, PrivilegeLevel.GUEST_KERNEL, 3, "g2"),
    )
    edges = (
        Edge("Server Hardware", "Linux OS"),
        Edge("Linux OS", hv),
        Edge(hv, "GuestOS 1"),
        Edge(hv, "GuestOS 2"),
    )
    roles = (
        ("", "hardware", "Server Hardware"),
        ("", "root", "Linux OS"),
        ("", "host_kernel", "Linux OS"),
        ("", "hypervisor", hv),
        ("g1", "kernel", "GuestOS 1"),
        ("g1", "monitor", hv),
        ("g2", "kernel", "GuestOS 2"),
        ("g2", "monitor", hv),
    )
    return Stack(
        "type 2 (notes' diagram)",
        "2型",
        Architecture.HOSTED,
        layers,
        edges,
        "linux",
        ("g1", "g2"),
        roles,
        syllabus=("S1.6",),
    )


_BUILDERS: dict[Architecture, Callable[..., Stack]] = {
    Architecture.HOSTED: hosted,
    Architecture.BARE_METAL: bare_metal,
    Architecture.OS_LEVEL: os_level,
    Architecture.HYBRID: hybrid,
}


#: Stacks that are variants of an architecture, by their stack name.
_VARIANTS: dict[str, Callable[..., Stack]] = {"bare-metal (Xen-style)": bare_metal_xen}


def stack_for(
    architecture: Architecture | str, guests: int | Sequence[str] = 2, **kwargs: object
) -> Stack:
    """The stack of one architecture, by enum or name (or a variant's stack name).

    >>> stack_for("bare-metal", guests=3).guests
    ('vm1', 'vm2', 'vm3')
    >>> stack_for("bare-metal (Xen-style)").has_layer("dom0 kernel")
    True
    """
    if isinstance(architecture, str) and architecture in _VARIANTS:
        return _VARIANTS[architecture](guests, **kwargs)
    try:
        arch = Architecture(architecture)
    except ValueError:
        known = ", ".join([a.value for a in Architecture] + list(_VARIANTS))
        raise ArchitectureError(f"unknown architecture {architecture!r}; known: {known}") from None
    return _BUILDERS[arch](guests, **kwargs)


def all_stacks(guests: int = 2) -> tuple[Stack, ...]:
    """One stack per architecture, in the order hosted, bare-metal, OS-level, hybrid.

    >>> [s.name for s in all_stacks()]
    ['hosted', 'bare-metal', 'os-level', 'hybrid']
    """
    return tuple(_BUILDERS[a](guests) for a in Architecture)


# -- classification (S1.6, N3) ----------------------------------------------------


@dataclass(frozen=True)
class Classification:
    """Where the hypervisor sits, and so its type (S1.6).

    >>> c = classify(hybrid())
    >>> c.type.value, [v.type.value for v in c.views]
    ('debated', ['type 2', 'type 1'])
    """

    type: HypervisorType
    monitor: str | None
    runs_on: str | None
    reason: str
    views: tuple[TypeView, ...] = ()

    def __repr__(self) -> str:
        text = f"<{self.type.value} ({self.type.chinese}): {self.reason}>"
        for v in self.views:
            text += f"\n  view {v.type.value}: {v.argument}"
        return text


def classify(stack: Stack) -> Classification:
    """Type 1, Type 2, debated or none — read off the stack, not looked up.

    The rule is Goldberg's ([GOLD73, WIKIHV]): find the layer the guests' traps
    land in (the *monitor*); if it runs directly on the hardware it is Type 1;
    if it runs on a host OS kernel it is Type 2; if it is a module *inside* a
    host kernel, both readings hold (correction N3); with no monitor at all
    (containers) there is no hypervisor.

    >>> classify(bare_metal()).type.value
    'type 1'
    >>> classify(hosted()).runs_on
    'host kernel'
    >>> classify(native()).type.value
    'none'
    """
    monitors = {stack.role("monitor", g).name for g in stack.guests if stack.has_role("monitor", g)}
    if not monitors:
        return Classification(
            HypervisorType.NONE, None, None, "no hypervisor layer: guests share the kernel"
        )
    monitor = stack.layer(sorted(monitors)[0])
    if monitor.kind is LayerKind.KERNEL_MODULE:
        kernel = next(
            (
                e.lower
                for e in stack.edges
                if e.upper == monitor.name and e.kind is EdgeKind.PART_OF
            ),
            None,
        )
        return Classification(
            HypervisorType.DEBATED,
            monitor.name,
            kernel,
            f"{monitor.name} is part of the {kernel}, which runs on the hardware",
            KVM_TYPE_VIEWS,
        )
    below = list(stack.below(monitor.name))
    if any(layer.kind is LayerKind.HARDWARE for layer in below):
        return Classification(
            HypervisorType.TYPE_1,
            monitor.name,
            below[0].name,
            f"{monitor.name} runs on the hardware",
        )
    host = next((layer for layer in below if layer.kind is LayerKind.HOST_KERNEL), below[0])
    return Classification(
        HypervisorType.TYPE_2, monitor.name, host.name, f"{monitor.name} runs on the {host.name}"
    )


# -- graph data for virtcore.viz ---------------------------------------------------


def stack_graph_data(
    stack: Stack,
) -> tuple[list[tuple[str, dict[str, object]]], list[tuple[str, str, dict[str, object]]]]:
    """Nodes and edges as plain data, ready for ``networkx``'s ``add_*_from``.

    Returns
    -------
    nodes : list of (name, attributes)
        attributes: ``label``, ``chinese``, ``kind``, ``privilege``, ``level``, ``guest``.
    edges : list of (lower, upper, attributes)
        attributes: ``kind``.

    >>> nodes, edges = stack_graph_data(bare_metal(guests=1))
    >>> nodes[0][0], nodes[0][1]["kind"], nodes[0][1]["level"], nodes[0][1]["chinese"]
    ('hardware', 'hardware', 0, '物理硬件（服务器硬件）')
    >>> sorted(nodes[0][1])
    ['chinese', 'guest', 'kind', 'label', 'level', 'privilege']
    >>> edges[0]
    ('hardware', 'hypervisor', {'kind': 'runs_on'})
    """
    nodes: list[tuple[str, dict[str, object]]] = [
        (
            layer.name,
            {
                "label": layer.name,
                "chinese": layer.chinese,
                "kind": layer.kind.value,
                "privilege": layer.privilege.value,
                "level": layer.level,
                "guest": layer.guest,
            },
        )
        for layer in stack.layers
    ]
    edges: list[tuple[str, str, dict[str, object]]] = [
        (e.lower, e.upper, {"kind": e.kind.value}) for e in stack.edges
    ]
    return nodes, edges
