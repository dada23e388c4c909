"""Which product is which: the notes' vendor lists, classified and corrected.

Each :class:`Product` row records the architecture and hypervisor type, whether
the product needs a host OS, whether it sits in firmware, whether it can run
hypervisors inside its guests (nesting), **what the notes say** (a short
Chinese quotation) and, where the notes are wrong, the correction in English
with the syllabus id (N1, N2, N3, N6, N7, N8).  :func:`notes_corrections`
lists the corrections themselves.

Sources (ids in ``docs/references.md``): [GOLD73, WIKIHV] for types and KVM's
debate, [ESX08] for ESX(i), [OVZ] for Virtuozzo; the syllabus corrections N1–N8.
Nesting support has no source there except Xen's ``nestedhvm`` [XL-CFG]; the
rows say ``yes`` only where the syllabus (N7, S1.10) or well-known vendor
documentation says so, ``experimental`` for Xen's nested
HVM, and ``unknown`` otherwise.  Huawei FusionSphere is kept to what the notes
say (a bare-metal platform): the references have no source on its hypervisor.

>>> product("esxi").hypervisor_type.value
'type 1'
>>> [p.name for p in products(architecture="os-level")]
['Virtuozzo']
>>> sorted(c.id for c in notes_corrections())
['N1', 'N2', 'N3', 'N6', 'N7', 'N8']
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from virtcore.arch.stacks import (
    KVM_TYPE_VIEWS,
    Architecture,
    ArchitectureError,
    HypervisorType,
    TypeView,
)

__all__ = [
    "KERNEL_ON_HARDWARE",
    "PRODUCTS",
    "Correction",
    "Nesting",
    "Product",
    "ProductTable",
    "notes_corrections",
    "product",
    "products",
]


class Nesting(str, enum.Enum):
    """Can the product run a hypervisor inside one of its guests?

    >>> Nesting.EXPERIMENTAL.possible, Nesting.UNKNOWN.possible
    (True, False)
    """

    YES = "yes"
    EXPERIMENTAL = "experimental"
    NO = "no"
    NOT_APPLICABLE = "n/a"
    UNKNOWN = "unknown"

    @property
    def possible(self) -> bool:
        """True if nesting works, even if only experimentally."""
        return self in (Nesting.YES, Nesting.EXPERIMENTAL)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Product:
    """One row of the classification table.

    >>> p = product("Ctrix XenServer")
    >>> p.name, p.correction_ids
    ('Citrix XenServer', ('N2', 'N7', 'N8'))
    """

    name: str
    vendor: str
    architecture: Architecture
    hypervisor_type: HypervisorType
    needs_host_os: bool
    nesting: Nesting
    notes_says: str
    notes_claim: str
    correction: str = ""
    correction_ids: tuple[str, ...] = ()
    embedded_in_firmware: bool = False
    emulator: bool = False
    aliases: tuple[str, ...] = ()
    syllabus: tuple[str, ...] = ()
    detail: str = ""
    nesting_note: str = ""
    type_views: tuple[TypeView, ...] = ()

    @property
    def corrected(self) -> bool:
        """True if the notes say something wrong about this product."""
        return bool(self.correction_ids)

    def describe(self) -> str:
        """All of the row, as text.

        >>> print(product("virtuozzo").describe().splitlines()[0])
        Virtuozzo (Virtuozzo; formerly Parallels): os-level 操作系统虚拟化, type none
        """
        lines = [
            f"{self.name} ({self.vendor}): {self.architecture.value} {self.architecture.chinese}, "
            f"type {self.hypervisor_type.value}",
            f"  needs a host OS: {'yes' if self.needs_host_os else 'no'}"
            + ("; embedded in firmware" if self.embedded_in_firmware else "")
            + ("; an emulator" if self.emulator else ""),
            f"  nesting: {self.nesting.value}"
            + (f" — {self.nesting_note}" if self.nesting_note else ""),
            f"  the notes say: {self.notes_says}",
            f"  i.e. {self.notes_claim}",
        ]
        if self.correction:
            lines.append(f"  correction ({', '.join(self.correction_ids)}): {self.correction}")
        for v in self.type_views:
            lines.append(f"  view {v.type.value}: {v.argument}")
        if self.detail:
            lines.append(f"  {self.detail}")
        return "\n".join(lines)


A, T, N = Architecture, HypervisorType, Nesting

#: The table (order: as the notes meet them, roughly).
PRODUCTS: tuple[Product, ...] = (
    Product(
        "VMware Workstation",
        "VMware",
        A.HOSTED,
        T.TYPE_2,
        True,
        N.YES,
        "厂家：VMware WorkStation；…VMware Workstation都属于这个类型",
        "hosted (寄居), Type 2",
        aliases=("workstation", "vmware workstation"),
        syllabus=("S1.1", "S1.8"),
        detail="Installs like an application on Windows or Linux; for I/O its monitor switches "
        "to the host world and its application half calls the host OS (Sugerman et al. 2001); "
        "Type 2 [WIKIHV].",
        nesting_note="it can expose VT-x/EPT or AMD-V/RVI to a guest",
    ),
    Product(
        "VMware Server",
        "VMware",
        A.HOSTED,
        T.TYPE_2,
        True,
        N.UNKNOWN,
        "其它操作系统和应用程序运行在VMware Server和Microsoft Virtual Server之上",
        "hosted, Type 2 (宿主型)",
        aliases=("vmware gsx server", "gsx server"),
        syllabus=("S1.8",),
        detail="Formerly GSX Server: runs on a Windows or Linux host.",
    ),
    Product(
        "VMware ESX Server",
        "VMware",
        A.BARE_METAL,
        T.TYPE_1,
        False,
        N.UNKNOWN,
        "厂家：VMware ESXServer、…；主流虚拟化产品…包括VMware ESX Server",
        "bare-metal (裸金属), Type 1 — and Type 1 is 'usually a specially customised Linux'",
        "The hypervisor is VMware's own vmkernel; classic ESX booted a Linux 'service console' "
        "that became the first VM *above* the vmkernel [ESX08], so it is not a customised "
        "Linux (N2).",
        ("N2",),
        aliases=("esx", "vmware esx", "esx server", "vmware esxserver", "esxserver"),
        syllabus=("S1.2", "S1.7"),
    ),
    Product(
        "VMware ESXi",
        "VMware",
        A.BARE_METAL,
        T.TYPE_1,
        False,
        N.YES,
        "与使用这种方式的有Hitachi Virtage、VMware ESXi和Linux KVM（主机型段落）；"
        "Xen和VMware ESXi属于这个类型（1型）",
        "listed among hosted (Type 2) hypervisors, and elsewhere as Type 1; Type 1 said to be "
        "'a specially customised Linux'",
        "ESXi is bare-metal (Type 1) and needs no host OS (N1); it runs VMware's own VMkernel, "
        "not Linux — ESXi even dropped classic ESX's Linux service console (N2) [ESX08]; "
        "it can run nested hypervisors (N7).",
        ("N1", "N2", "N7"),
        aliases=("esxi", "esx 3i", "vmware esx 3i"),
        syllabus=("S1.6", "S1.7"),
        detail="ESX 3i had 'a small, 32MB footprint' and 'does not depend on a large, general "
        "purpose operating system' [ESX08].",
        nesting_note="a guest can be given hardware-assisted virtualization",
    ),
    Product(
        "VMware ESXi Embedded",
        "VMware",
        A.BARE_METAL,
        T.TYPE_1,
        False,
        N.UNKNOWN,
        "也有一些这样的Hypervisor可以内嵌在硬件计算资源的固件套装中--和主板BIOS位于同一级别（主机型段落）",
        "hypervisors embedded in firmware beside the BIOS, described under the hosted (Type 2) "
        "heading",
        "Embedded hypervisors are Type 1 — no OS under them (N1). ESX 3i Embedded (2008) was "
        "shipped pre-installed by server OEMs on a compact storage device inside the server "
        "[ESX08], which the notes call 'in the firmware'.",
        ("N1",),
        embedded_in_firmware=True,
        aliases=("esxi embedded", "esx 3i embedded"),
        syllabus=("S1.9",),
    ),
    Product(
        "Hitachi Virtage",
        "Hitachi",
        A.BARE_METAL,
        T.TYPE_1,
        False,
        N.UNKNOWN,
        "与使用这种方式的有Hitachi Virtage、VMware ESXi和Linux KVM（主机型段落）",
        "listed among hosted (Type 2) hypervisors",
        "Virtage is embedded in the firmware of Hitachi's servers (S1.9); it needs no host OS, "
        "so it is not hosted (N1).",
        ("N1",),
        embedded_in_firmware=True,
        aliases=("virtage",),
        syllabus=("S1.9",),
        detail="No source in docs/references.md; classified from the syllabus (N1, S1.9).",
    ),
    Product(
        "Microsoft Hyper-V",
        "Microsoft",
        A.BARE_METAL,
        T.TYPE_1,
        False,
        N.YES,
        "主流虚拟化产品…包括VMware ESX Server、Microsoft Hyper-V 、Ctrix XenServer",
        "Type 1; nesting presented as a Type 2 strength",
        "Nesting is not special to Type 2: Hyper-V can run nested hypervisors (N7).",
        ("N7",),
        aliases=("hyper-v", "hyperv"),
        syllabus=("S1.7",),
        detail="Type 1 [WIKIHV].",
    ),
    Product(
        "Microsoft Virtual PC",
        "Microsoft",
        A.HOSTED,
        T.TYPE_2,
        True,
        N.UNKNOWN,
        "诸如VMware Workstation、Microsoft Virtual PC和Parallels Workstation,"
        "这些都是宿主型的Hypervisor",
        "hosted, Type 2 (宿主型)",
        aliases=("virtual pc",),
        syllabus=("S1.8",),
    ),
    Product(
        "Microsoft Virtual Server",
        "Microsoft",
        A.HOSTED,
        T.TYPE_2,
        True,
        N.UNKNOWN,
        "其它操作系统和应用程序运行在VMware Server和Microsoft Virtual Server之上",
        "hosted, Type 2 (宿主型)",
        aliases=("virtual server",),
        syllabus=("S1.8",),
    ),
    Product(
        "Citrix XenServer",
        "Citrix",
        A.BARE_METAL,
        T.TYPE_1,
        False,
        N.EXPERIMENTAL,
        "厂家：VMware ESXServer、Ctrix XenServer、华为FusionSphere",
        "bare-metal (裸金属), Type 1 (spelled 'Ctrix'); Type 1 said to be a customised Linux",
        "Spelled Citrix (N8). Its hypervisor is Xen, which is not Linux; the Linux in it is "
        "Domain 0, a privileged guest above Xen (N2). Xen can nest, experimentally (N7).",
        ("N2", "N7", "N8"),
        aliases=("xenserver", "ctrix xenserver", "citrix hypervisor"),
        syllabus=("S1.2", "S1.7"),
        nesting_note="Xen's nested HVM is experimental",
    ),
    Product(
        "Xen",
        "Xen Project",
        A.BARE_METAL,
        T.TYPE_1,
        False,
        N.EXPERIMENTAL,
        "Hypervisor(ESXi Xen)（1型图）；Hypervisor实现方式一般是一个特殊定制的Linux系统，"
        "Xen和VMware ESXi属于这个类型",
        "Type 1, implemented as 'a specially customised Linux'",
        "Xen's hypervisor is its own small kernel, with its own scheduler, memory manager and "
        "timers (S3.4); Linux runs above it in Domain 0 (N2). Xen can nest, experimentally (N7).",
        ("N2", "N7"),
        aliases=("xen hypervisor", "xen project"),
        syllabus=("S1.6",),
        detail="Type 1 [WIKIHV]; Dom0 [XEN-GLOSSARY].",
        nesting_note="nested HVM is experimental",
    ),
    Product(
        "Red Hat KVM",
        "Red Hat (KVM is part of the Linux kernel)",
        A.HYBRID,
        T.DEBATED,
        True,
        N.YES,
        "厂家：Readhat KVM；KVM 、VirtualBox、VMware Workstation都属于这个类型（2型）；"
        "与使用这种方式的有…Linux KVM（主机型段落）",
        "hybrid (混合); drawn and listed as Type 2; also listed among hosted hypervisors",
        "Spelled Red Hat (N8). KVM's type is debated (N3): Type 2 by placement, Type 1 by "
        "function — see type_views. Running KVM inside a KVM guest is a KVM feature, and Type 1 "
        "hypervisors nest too (N7).",
        ("N3", "N7", "N8"),
        aliases=("kvm", "linux kvm", "readhat kvm", "qemu-kvm"),
        syllabus=("S1.5", "S1.6", "S1.10"),
        detail="Needs Linux, which kvm.ko turns into the hypervisor, and Intel VT-x / AMD-V "
        "(S1.5).",
        nesting_note="the notes' own example: KVM in a KVM guest (S1.10)",
        type_views=KVM_TYPE_VIEWS,
    ),
    Product(
        "Oracle VM VirtualBox",
        "Oracle",
        A.HOSTED,
        T.TYPE_2,
        True,
        N.YES,
        "KVM 、VirtualBox、VMware Workstation都属于这个类型（2型）",
        "Type 2",
        aliases=("virtualbox", "vbox"),
        syllabus=("S1.8",),
        detail="VirtualBox is Type 2 [WIKIHV].",
        nesting_note="nested hardware virtualization in recent versions",
    ),
    Product(
        "Parallels Workstation",
        "Parallels",
        A.HOSTED,
        T.TYPE_2,
        True,
        N.UNKNOWN,
        "诸如VMware Workstation、Microsoft Virtual PC和Parallels Workstation,"
        "这些都是宿主型的Hypervisor",
        "hosted, Type 2 (宿主型)",
        aliases=("parallels",),
        syllabus=("S1.8",),
    ),
    Product(
        "Virtuozzo",
        "Virtuozzo; formerly Parallels",
        A.OS_LEVEL,
        T.NONE,
        True,
        N.NOT_APPLICABLE,
        "厂家：virtuozzo",
        "OS-level virtualization (操作系统虚拟化)",
        aliases=("openvz", "parallels virtuozzo containers"),
        syllabus=("S1.4",),
        detail="Containers on 'a single patched Linux kernel'; OpenVZ is its open base "
        "[OVZ].",
        nesting_note="containers, not VMs: there is no hypervisor to nest",
    ),
    Product(
        "Huawei FusionSphere",
        "Huawei",
        A.BARE_METAL,
        T.TYPE_1,
        False,
        N.UNKNOWN,
        "厂家：…华为FusionSphere；华为格式的统一虚拟化平台使用的是裸金属虚拟化结构",
        "bare-metal (裸金属)",
        aliases=("fusionsphere", "华为fusionsphere"),
        syllabus=("S1.2",),
        detail="Kept to what the notes say; the references have no source on which hypervisor it "
        "is built on, so the course claims none.",
    ),
    Product(
        "QEMU (without KVM)",
        "QEMU project",
        A.HOSTED,
        T.TYPE_2,
        True,
        N.UNKNOWN,
        "Qemu是一个模拟器…由于所有指令要Qemu转译，因此性能比较差",
        "an emulator that translates every guest instruction, hence slow",
        "True of QEMU alone (its TCG translator); with KVM the guest's instructions run directly "
        "on the CPU and QEMU only emulates devices (N6).",
        ("N6",),
        emulator=True,
        aliases=("qemu", "qemu tcg", "qemu alone"),
        syllabus=("S4.4",),
        detail="A hosted emulator: an application on a host OS that emulates a whole machine.",
    ),
)

del A, T, N


class ProductTable(tuple[Product, ...]):
    """A selection of :data:`PRODUCTS`, printed as a table.

    >>> t = products(hypervisor_type="type 2")
    >>> "VMware Workstation" in [p.name for p in t]
    True
    """

    __slots__ = ()

    def names(self) -> list[str]:
        """The product names.

        >>> products(embedded_in_firmware=True).names()
        ['VMware ESXi Embedded', 'Hitachi Virtage']
        """
        return [p.name for p in self]

    def __repr__(self) -> str:
        head = (
            f"{'product':<26}{'architecture':<13}{'type':<9}{'host OS':<9}{'nesting':<14}"
            "corrections"
        )
        lines = [head]
        for p in self:
            host = "needed" if p.needs_host_os else "none"
            extra = (
                " (firmware)" if p.embedded_in_firmware else (" (emulator)" if p.emulator else "")
            )
            lines.append(
                f"{p.name:<26}{p.architecture.value:<13}{p.hypervisor_type.value:<9}{host:<9}"
                f"{p.nesting.value:<14}{', '.join(p.correction_ids) or '—'}{extra}"
            )
        return "\n".join(lines)


def _key(name: str) -> str:
    return " ".join(name.lower().replace("-", " ").replace("_", " ").split())


def product(name: str) -> Product:
    """Look a product up by name or alias (case, spaces and hyphens ignored).

    >>> product("Readhat KVM").name
    'Red Hat KVM'
    >>> product("hyperv").architecture.value
    'bare-metal'
    """
    key = _key(name)
    for p in PRODUCTS:
        if key == _key(p.name) or key in {_key(a) for a in p.aliases}:
            return p
    raise ArchitectureError(
        f"unknown product {name!r}; known: {', '.join(p.name for p in PRODUCTS)}"
    )


def products(
    *,
    architecture: Architecture | str | None = None,
    hypervisor_type: HypervisorType | str | None = None,
    needs_host_os: bool | None = None,
    nesting: Nesting | str | None = None,
    embedded_in_firmware: bool | None = None,
    corrected: bool | None = None,
    correction: str | None = None,
) -> ProductTable:
    """The rows that match every filter given (all rows with no filter).

    Parameters
    ----------
    architecture, hypervisor_type, nesting : enum or its value, optional
    needs_host_os, embedded_in_firmware, corrected : bool, optional
    correction : str, optional
        A correction id such as ``"N1"``: rows the correction is about.

    >>> products(correction="N8").names()
    ['Citrix XenServer', 'Red Hat KVM']
    >>> products(hypervisor_type="type 1", needs_host_os=True).names()
    []
    """
    arch = Architecture(architecture) if architecture is not None else None
    typ = HypervisorType(hypervisor_type) if hypervisor_type is not None else None
    nest = Nesting(nesting) if nesting is not None else None
    rows = []
    for p in PRODUCTS:
        if arch is not None and p.architecture is not arch:
            continue
        if typ is not None and p.hypervisor_type is not typ:
            continue
        if needs_host_os is not None and p.needs_host_os is not needs_host_os:
            continue
        if nest is not None and p.nesting is not nest:
            continue
        if embedded_in_firmware is not None and p.embedded_in_firmware is not embedded_in_firmware:
            continue
        if corrected is not None and p.corrected is not corrected:
            continue
        if correction is not None and correction.upper() not in p.correction_ids:
            continue
        rows.append(p)
    return ProductTable(rows)


@dataclass(frozen=True)
class Correction:
    """A place where the notes are wrong (syllabus ids N1…N8), kindly corrected.

    >>> c = [c for c in notes_corrections() if c.id == "N3"][0]
    >>> c.products
    ('Red Hat KVM',)
    """

    id: str
    topic: str
    notes_say: str
    correction: str
    products: tuple[str, ...]

    def __repr__(self) -> str:
        return (
            f"{self.id} {self.topic}\n  the notes: {self.notes_say}"
            f"\n  correction: {self.correction}\n  products: {', '.join(self.products)}"
        )


_CORRECTIONS: tuple[tuple[str, str, str, str], ...] = (
    (
        "N1",
        "ESXi and Virtage are not hosted",
        "与使用这种方式的有Hitachi Virtage、VMware ESXi和Linux KVM（主机型）",
        "VMware ESXi is a bare-metal (Type 1) hypervisor and Hitachi Virtage is embedded in "
        "firmware; only products that need a host OS are hosted.",
    ),
    (
        "N2",
        "Type 1 is not 'a customised Linux'",
        "Hypervisor实现方式一般是一个特殊定制的Linux系统，Xen和VMware ESXi属于这个类型",
        "Xen's hypervisor is not Linux (its Domain 0 usually is), and ESXi runs VMware's own "
        "VMkernel.",
    ),
    (
        "N3",
        "KVM's type is debated",
        "KVM 、VirtualBox、VMware Workstation都属于这个类型（2型）",
        "KVM is a module in a general-purpose kernel (Type 2 by placement) that turns the kernel "
        "itself into a bare-metal hypervisor (Type 1 by function); both views hold.",
    ),
    (
        "N6",
        "QEMU is slow only without KVM",
        "由于所有指令要Qemu转译，因此性能比较差",
        "QEMU translates every instruction only without KVM (TCG); with KVM guest code runs "
        "natively.",
    ),
    (
        "N7",
        "nesting is not special to Type 2",
        "2型虚拟化因为基于普通操作系统，比较灵活，支持虚拟嵌套",
        "Type 1 hypervisors nest too: Xen, Hyper-V and ESXi can run hypervisors in their guests.",
    ),
    (
        "N8",
        "product-name typos",
        "Ctrix XenServer；Readhat KVM",
        "Citrix XenServer; Red Hat KVM.",
    ),
)


#: What runs directly on the hardware (VMX root / ring 0) under each hypervisor — correction
#: N2: a Type 1 hypervisor is not "a customised Linux".  Xen is its own small kernel, Linux
#: runs above it in Domain 0 [XEN-SOSP03, XIG]; ESXi runs VMware's VMkernel [ESX08]; Hyper-V's
#: hypervisor runs under the Windows of its parent partition [WIKIHV]; only under KVM is the
#: kernel on the hardware Linux itself [KVM-ORIG, WIKIHV].
KERNEL_ON_HARDWARE: dict[str, str] = {
    "Xen": "xen",
    "Citrix XenServer": "xen",
    "VMware ESXi": "vmkernel",
    "VMware ESXi Embedded": "vmkernel",
    "Microsoft Hyper-V": "hyper-v",
    "Red Hat KVM": "linux",
}


def notes_corrections() -> tuple[Correction, ...]:
    """The corrections this chapter makes, each with the products it concerns.

    >>> [c.id for c in notes_corrections() if "VMware ESXi" in c.products]
    ['N1', 'N2', 'N7']
    """
    return tuple(
        Correction(cid, topic, says, text, tuple(products(correction=cid).names()))
        for cid, topic, says, text in _CORRECTIONS
    )
