"""The course map: chapters, the syllabus claims they teach, and which chapters exist yet.

The source notes (Chinese study notes on virtualization) are the syllabus;
every claim in them has an id — ``S1.1`` … ``S6.5`` for what the notes say,
``N1`` … ``N8`` for where the course corrects them — and each id belongs to
one chapter; ``docs/syllabus.md`` states each claim and where it is taught.
Chapter 0 (this tour) has no claim of its own.

:data:`CHAPTERS` are the seven numbered chapters (one per section of the
notes); :data:`COURSE` is the reading order of the notebooks, which adds the
KVM walkthrough (``W``, between chapters 2 and 3) and the parts a long chapter
is split into (``2a``, ``2b``; ``6a``, ``6b``).

>>> chapter_of("S6.3").number
6
>>> chapter_of("S1.5").title_zh
'虚拟化架构'
>>> [c.number for c in CHAPTERS]
[0, 1, 2, 3, 4, 5, 6]
>>> [c.name for c in COURSE]
['0', '1', '2a', '2b', 'W', '3', '4', '5', '6a', '6b']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from virtcore.errors import VirtcoreError
from virtcore.viz._lazy import TextView, esc


class UnknownClaimError(VirtcoreError, KeyError):
    """A syllabus id that the notes do not have."""


@dataclass(frozen=True)
class Chapter:
    """One chapter (notebook) of the course.

    Attributes
    ----------
    number : int
        0–6; the notebook is ``notebooks/NN-*.ipynb``.
    title, title_zh : str
        English title and the title of the notes' section (Chinese).
    section : str
        The notes' section id (``"S1"`` …), empty for chapter 0.
    library : tuple of str
        The virtcore packages the chapter runs on.
    summary : str
        What it covers, in one line.
    stem : str
        The notebook's file name without ``.ipynb`` where it is fixed (the walkthrough,
        the planned chapters 3–6); empty: any ``NN-*.ipynb``.
    label : str
        How the map names it: the number, a part (``"6a"``) or ``"W"`` (walkthrough).
    claims : tuple of str
        The claims this notebook teaches when it is not the whole chapter's
        (the walkthrough, a part of a split chapter); empty: all of :func:`claims_of`.

    Examples
    --------
    >>> CHAPTERS[1].section, CHAPTERS[1].pattern, CHAPTERS[2].pattern
    ('S1', '01-*.ipynb', '02a-vm-and-vmm.ipynb')
    >>> WALKTHROUGH.pattern, WALKTHROUGH.label
    ('kvm-walkthrough.ipynb', 'W')
    """

    number: int
    title: str
    title_zh: str
    section: str
    library: tuple[str, ...]
    summary: str
    stem: str = ""
    label: str = ""
    claims: tuple[str, ...] = ()

    @property
    def pattern(self) -> str:
        """The notebook's file-name pattern, e.g. ``01-*.ipynb`` or ``03-kvm-vs-xen.ipynb``."""
        return f"{self.stem}.ipynb" if self.stem else f"{self.number:02d}-*.ipynb"

    @property
    def name(self) -> str:
        """The label of the map: ``label`` or the number."""
        return self.label or str(self.number)


#: The chapters, one per section of the notes, in order.
CHAPTERS: tuple[Chapter, ...] = (
    Chapter(0, "Start here", "从这里开始", "", ("hw",),
            "how the course works; a first look at the simulated machine"),
    Chapter(1, "Virtualization architectures", "虚拟化架构", "S1", ("arch",),
            "hosted, bare-metal, OS-level and hybrid; Type 1 and Type 2 hypervisors"),
    Chapter(2, "The VM and its monitor", "虚拟机与VMM", "S2", ("vmm", "hw"),
            "the VM, virtual resources, trap-and-emulate, Popek–Goldberg, the three fixes",
            stem="02a-vm-and-vmm", label="2a", claims=("S2.1", "S2.2")),
    Chapter(3, "KVM vs Xen", "KVM架构 VS Xen架构", "S3", ("kvm", "xen"),
            "a kernel module turning Linux into a hypervisor vs a small hypervisor with Dom0",
            stem="03-kvm-vs-xen"),
    Chapter(4, "Security vs performance", "Xen 和KVM架构各有所长", "S4",
            ("xen", "kvm"),
            "grant tables vs shared memory; the KVM + QEMU stack; emulated vs virtio devices",
            stem="04-security-vs-performance"),
    Chapter(5, "Xen", "XEN", "S5", ("xen",),
            "the Xen stack: hypervisor, Domain 0, DomU, driver domains, split drivers",
            stem="05-xen"),
    Chapter(6, "Xen internals", "Xen架构简介", "S6", ("xen",),
            "control interface, safe hardware interface, event channels, virtual processor",
            stem="06a-xen-internals", label="6a",
            claims=("S6.1", "S6.2", "S6.3", "S6.4")),
)

#: Chapter 2's second part: scheduling, the management interface, live migration.
SCHED_MGMT = Chapter(2, "Scheduling, management and migration", "调度、管理接口与迁移", "S2",
                     ("sched", "vmm"),
                     "vCPU scheduling (FIFO, round robin, Xen credit), lifecycle, live migration",
                     stem="02b-scheduling-and-management", label="2b", claims=("S2.3", "S2.4"))

#: The KVM walkthrough: read after chapter 2, before chapter 3 (whose claims it starts on).
WALKTHROUGH = Chapter(
    3, "KVM from the inside (walkthrough)", "KVM，基于内核的虚拟机", "S3, S4", ("kvm",),
    "/dev/kvm ioctl by ioctl, exits, the in-kernel irqchip, guests as processes, TCG vs KVM, "
    "QEMU's emulated and virtio devices",
    stem="kvm-walkthrough", label="W",
    claims=("S3.1", "S3.2", "S3.3", "S4.3", "S4.4", "S4.5", "N4", "N5", "N6"))

#: Chapter 6's second part: Xen's virtual MMU.
XEN_MMU = Chapter(6, "Xen's virtual MMU", "虚拟内存管理单元", "S6", ("xen",),
                  "P2M and M2P, validated page tables, shadow page tables, EPT/NPT"
                  " (assignment a4_virtual_mmu)",
                  stem="06b-xen-mmu", label="6b", claims=("S6.5",))

#: The notebooks in reading order.
COURSE: tuple[Chapter, ...] = (*CHAPTERS[:3], SCHED_MGMT, WALKTHROUGH, *CHAPTERS[3:], XEN_MMU)

#: Every claim of the syllabus (``docs/syllabus.md``), in a few words.
SYLLABUS: dict[str, str] = {
    "S1.1": "hosted virtualization (寄居虚拟化): the VMM is an application on a host OS",
    "S1.2": "bare-metal virtualization (裸金属虚拟化): the hypervisor runs on the hardware",
    "S1.3": "the hypervisor's two duties: capture privileged instructions; schedule VMs",
    "S1.4": "OS-level virtualization (操作系统虚拟化): containers sharing one kernel",
    "S1.5": "hybrid virtualization (混合虚拟化): a kernel driver as the virtual hardware "
            "manager",
    "S1.6": "Type 1 vs Type 2 hypervisors, by where the hypervisor sits",
    "S1.7": "Type 1 products; a thin OS of its own",
    "S1.8": "Type 2: a whole virtual platform on a host OS; the slowest path",
    "S1.9": "hypervisors embedded in firmware",
    "S1.10": "Type 1 faster in theory; Type 2 more flexible, supports nesting",
    "S2.1": "a VM (虚拟机) is an efficient, isolated virtual computer; VMM = hypervisor",
    "S2.2": "virtual resources (虚拟资源): vCPUs, memory and devices built by the VMM",
    "S2.3": "scheduling (调度) many VMs on one machine",
    "S2.4": "the management interface (管理接口): create, delete, pause, resume, migrate",
    "S3.1": "KVM is a kernel module exposing /dev/kvm, driven by ioctl",
    "S3.2": "a KVM guest is a process, each vCPU a thread; KVM reuses Linux",
    "S3.3": "KVM needs hardware virtualization (Intel VT / AMD-V)",
    "S3.4": "Xen is a small hypervisor with its own scheduler and memory manager",
    "S3.5": "Xen's Domain 0 does I/O virtualization and VM management; DomU are guests",
    "S3.6": "Xen runs PV guests without hardware support and HVM guests with it",
    "S4.1": "Xen leans to security: shared memory needs the hypervisor's authorization",
    "S4.2": "KVM leans to performance: a shorter path without the hypervisor's approval",
    "S4.3": "the KVM stack: guest, KVM in the kernel, QEMU in user space",
    "S4.4": "with KVM guest code runs directly; QEMU alone translates every instruction",
    "S4.5": "emulated devices are slow; virtio_blk and virtio_net are faster",
    "S4.6": "KVM is the most used hypervisor on x86 and best supported by OpenStack",
    "S5.1": "the Xen stack: hypervisor first, Domain 0 and DomUs above",
    "S5.2": "the hypervisor hands out virtual hardware and isolates domains",
    "S5.3": "Domain 0 holds native drivers, management tools and backend drivers",
    "S5.4": "DomU cannot touch hardware; frontend drivers talk to backends",
    "S5.5": "unmodified guests run on processors with hardware virtualization (HVM)",
    "S5.6": "driver domains and SMP guests with several vCPUs",
    "S6.1": "the control interface (控制接口), for Domain 0 only",
    "S6.2": "the safe hardware interface (安全硬件接口): DMA, I/O, virtual PCI, interrupts",
    "S6.3": "event channels (事件通道): asynchronous notifications between domains and Xen",
    "S6.4": "the virtual processor (虚拟处理器): privileged instructions checked by Xen",
    "S6.5": "the virtual MMU (虚拟内存管理单元): guest virtual → guest physical → machine",
    "N1": "ESXi is bare-metal and Virtage is embedded in firmware, not hosted",
    "N2": "Type 1 hypervisors are not 'customised Linux' (Xen, VMkernel)",
    "N3": "KVM's type is debated: Type 2 by placement, Type 1 by function",
    "N4": "virtio is paravirtualized I/O, not pass-through (VFIO / SR-IOV)",
    "N5": "'KVM only supports full virtualization' holds for the CPU, not for I/O",
    "N6": "'QEMU translates every instruction' describes QEMU without KVM (TCG)",
    "N7": "nesting is not special to Type 2: Xen and Hyper-V nest too",
    "N8": "typos in the notes: Ctrix → Citrix, Readhat → Red Hat",
}

#: The chapter of each correction N1–N8 (the S ids follow their section number).
_CORRECTIONS = {"N1": 1, "N2": 1, "N3": 3, "N4": 4, "N5": 3, "N6": 4, "N7": 1, "N8": 1}


def chapter_of(claim: str) -> Chapter:
    """The chapter that teaches a syllabus claim.

    Parameters
    ----------
    claim : str
        An id such as ``"S2.3"`` or ``"N4"``.

    Raises
    ------
    UnknownClaimError
        If the notes have no such claim.

    Examples
    --------
    >>> chapter_of("S2.3").title, chapter_of("N4").number
    ('The VM and its monitor', 4)
    >>> chapter_of("S9.9")
    Traceback (most recent call last):
    ...
    virtcore.viz.course.UnknownClaimError: "no syllabus claim 'S9.9' (ids run S1.1 … S6.5, N1 … N8)"
    """
    if claim not in SYLLABUS:
        raise UnknownClaimError(f"no syllabus claim {claim!r} (ids run S1.1 … S6.5, N1 … N8)")
    number = _CORRECTIONS[claim] if claim.startswith("N") else int(claim[1:].split(".")[0])
    return CHAPTERS[number]


def claims_of(chapter: int) -> list[str]:
    """The syllabus ids a chapter teaches, in order.

    >>> claims_of(6)
    ['S6.1', 'S6.2', 'S6.3', 'S6.4', 'S6.5']
    >>> claims_of(0)
    []
    """
    return [c for c in SYLLABUS if chapter_of(c).number == chapter]


def available(chapter: Chapter, notebooks: Path | str) -> Path | None:
    """The chapter's notebook in the folder ``notebooks``, or None if it is not written yet.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = Path(d, "00-start-here.ipynb").write_text("{}")
    ...     available(CHAPTERS[0], d).name, available(CHAPTERS[1], d)
    ('00-start-here.ipynb', None)
    """
    found = sorted(Path(notebooks).glob(chapter.pattern))
    return found[0] if found else None


def _claim_range(ids: list[str]) -> str:
    """``S1.1–S1.10`` for a run of one section, else the ids joined (``S3.1–S3.3, N4``)."""
    if not ids:
        return "—"
    groups: list[list[str]] = []
    for c in ids:
        prefix = c.split(".")[0] if c.startswith("S") else "N"
        if groups and (groups[-1][0].split(".")[0] if groups[-1][0].startswith("S") else "N") \
                == prefix:
            groups[-1].append(c)
        else:
            groups.append([c])
    return ", ".join(g[0] if len(g) == 1 else f"{g[0]}–{g[-1]}" for g in groups)


def chapters_table(notebooks: Path | str | None = None) -> TextView:
    """The course map as a table: chapter, notes section, what it covers, claims, status.

    One row per notebook of :data:`COURSE`, in reading order.

    Parameters
    ----------
    notebooks : path, optional
        The folder of the chapter notebooks; each chapter's status is
        "ready" (with its file name) when its ``NN-*.ipynb`` is there, else
        "coming".  Without it the status column is left out.

    Returns
    -------
    TextView
        Markdown (the text) with a Markdown rendering for Jupyter.

    Examples
    --------
    >>> print(chapters_table().splitlines()[3])
    | 1 | Virtualization architectures | S1 虚拟化架构 | hosted, ... | S1.1–S1.10 |
    >>> print(chapters_table().splitlines()[6].split(" | ")[4].rstrip(" |"))
    S3.1–S3.3, S4.3–S4.5, N4–N6
    """
    head = ["#", "chapter", "notes section", "covers", "claims"]
    if notebooks is not None:
        head.append("status")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ch in COURSE:
        ids = list(ch.claims) or [c for c in claims_of(ch.number) if c.startswith("S")]
        section = f"{ch.section} {ch.title_zh}" if ch.section else "—"
        cells = [ch.name, ch.title, section, ch.summary, _claim_range(ids)]
        if notebooks is not None:
            path = available(ch, notebooks)
            cells.append(f"ready: [{path.name}]({path.name})" if path else "coming")
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    return TextView(text, markdown=text)


def syllabus_table(chapter: int) -> TextView:
    """The claims one chapter teaches, as a Markdown list.

    >>> print(syllabus_table(6).splitlines()[0])
    - **S6.1** the control interface (控制接口), for Domain 0 only
    """
    text = "\n".join(f"- **{c}** {SYLLABUS[c]}" for c in claims_of(chapter))
    return TextView(text, markdown=text, html="<ul>" + "".join(
        f"<li><b>{c}</b> {esc(SYLLABUS[c])}</li>" for c in claims_of(chapter)) + "</ul>")
