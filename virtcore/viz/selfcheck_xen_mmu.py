"""Chapter 6b's ungraded self-checks (``xenmmu.*``), registered with :mod:`.selfcheck`.

Importing this module registers the questions (once; importing it again changes nothing).
Each question is a generator — text and data, varied by the seed — and a solver that computes
the answer **by running** the virtual-MMU models: :class:`~virtcore.xen.mmu.XenMM` (PV direct
paging and its validation), :class:`~virtcore.xen.nested.NestedPaging`,
:class:`~virtcore.xen.shadow.ShadowPaging` and :func:`~virtcore.xen.paging_compare.run_paging`.
Nothing is hard-coded. An answer left as ``...`` is "not answered yet".

======================  ======================================================  ==========
question                what it asks                                            section
======================  ======================================================  ==========
``xenmmu.spaces``       the machine address a guest virtual address reaches     1 (S6.5)
``xenmmu.which-space``  which space an address or frame number is in           3 (S6.5)
``xenmmu.update``       which page-table updates Xen validates, which it        2 (S6.5)
                        rejects and with which error
``xenmmu.2d-walk``      page-table references of one TLB miss, n × m levels     4 (S6.5)
``xenmmu.exits``        VM exits of guest events under shadow and nested paging 5 (S6.5)
``xenmmu.tlb-tag``      TLB misses with VPID-tagged entries and with flushes    6 (S6.5)
======================  ======================================================  ==========

:data:`PLACEHOLDERS` holds the example answer each answer cell shows; a test checks that it is
never right for seeds 0–99.

>>> from virtcore.viz.selfcheck import check_answer, solution
>>> check_answer("xenmmu.2d-walk", 25, seed=0).status
'wrong'
>>> check_answer("xenmmu.update", solution("xenmmu.update", seed=4), seed=4).status
'correct'
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping
from typing import Any

from virtcore.viz.selfcheck import REGISTRY, SelfCheck, as_int, as_int_pair, register
from virtcore.viz.selfcheck_xen import as_result_list

__all__ = ["CHECKS", "PLACEHOLDERS", "as_space_list"]

_PAGE = 4096


# ---------------------------------------------------------------------------
# xenmmu.spaces — three spaces, P2M


def _gen_spaces(rng: random.Random) -> tuple[str, dict[str, Any]]:
    base = rng.randint(20, 40)  # frames Xen and Domain 0 hold before the guest's
    order = list(range(8))
    rng.shuffle(order)
    p2m = {pfn: base + i for i, pfn in enumerate(order)}
    pfn = rng.choice(order[:6])
    vpn = rng.randint(0x100, 0x3FF)
    offset = rng.randrange(0x400, 0x1000, 4)
    va = vpn * _PAGE + offset
    lines = "\n".join(f"    pfn {p:#x} -> mfn {p2m[p]:#x}" for p in sorted(p2m))
    return ("A PV DomU with 8 pages of pseudo-physical memory (4 KiB pages); Xen gave it these "
            "machine frames\n(its P2M):\n\n" + lines + "\n\n"
            f"Its kernel maps guest virtual page {vpn:#x} to its pseudo-physical frame "
            f"{pfn:#x}: it looks the frame\nup in the P2M and asks Xen (mmu_update) to write the "
            "entry. Which machine address does\n"
            f"a read of guest virtual {va:#x} reach? Answer with a number, e.g. 0x1234"), \
        {"base": base, "order": order, "pfn": pfn, "va": va}


def _solve_spaces(data: Mapping[str, Any]) -> int:
    from virtcore.hw.paging import PagingConfig
    from virtcore.xen.memory import MachineMemory
    from virtcore.xen.mmu import XenMM

    xen = XenMM(MachineMemory(data["base"] + 16, _PAGE), PagingConfig.x86_32())
    xen.create_pv_domain(0, data["base"])  # Domain 0 takes the first frames
    g = xen.create_pv_domain(1, 8, populate=False)
    g.mem.populate_physmap(data["order"])
    va = data["va"]
    g.build({va & ~(_PAGE - 1): (data["pfn"], True)})
    t = g.translate(va)
    assert t.maddr is not None
    return int(t.maddr)


# ---------------------------------------------------------------------------
# xenmmu.which-space — what each number is (conceptual)

_SPACE_ITEMS = {
    "pv-l1": "the frame number in a PV guest's L1 page-table entry",
    "pv-table": "the address at which the CPU reads a PV guest's page-table entry",
    "hvm-l1": "the frame number in an HVM guest's own L1 entry (nested paging)",
    "hvm-table": "the address of an HVM guest's page table, as the guest kernel knows it",
    "ept-entry": "the frame number in an EPT entry",
    "ept-input": "the address an EPT walk translates",
    "shadow-l1": "the frame number in a shadow L1 entry",
    "program": "the address a program in the guest loads from",
}


def as_space_list(answer: object) -> tuple[str, ...]:
    """Address spaces in order: ``'virtual'``, ``'pseudo-physical'`` or ``'machine'``; also
    ``'gva'``, ``'pfn'``/``'gpa'``/``'guest physical'``, ``'mfn'``/``'maddr'``.

    >>> as_space_list(["gva", "Guest physical", "MFN"])
    ('guest virtual', 'pseudo-physical', 'machine')
    """
    from virtcore.viz.selfcheck import AnswerFormatError

    names = {"virtual": "guest virtual", "guest virtual": "guest virtual",
             "gva": "guest virtual", "pseudo-physical": "pseudo-physical",
             "pseudo physical": "pseudo-physical", "guest physical": "pseudo-physical",
             "guest-physical": "pseudo-physical", "pfn": "pseudo-physical",
             "gpa": "pseudo-physical", "gfn": "pseudo-physical", "machine": "machine",
             "mfn": "machine", "maddr": "machine"}
    if isinstance(answer, (list, tuple)):
        out = []
        for x in answer:
            key = x.strip().lower() if isinstance(x, str) else None
            if key not in names:
                raise AnswerFormatError(f"expected 'virtual', 'pseudo-physical' or 'machine', "
                                        f"got {x!r}")
            out.append(names[key])
        return tuple(out)
    raise AnswerFormatError(f"expected a list like ['virtual', 'machine'], got {answer!r}")


def _gen_which_space(rng: random.Random) -> tuple[str, dict[str, Any]]:
    keys = rng.sample(sorted(_SPACE_ITEMS), 4)
    lines = "\n".join(f"    {i}. {_SPACE_ITEMS[k]}" for i, k in enumerate(keys, start=1))
    return ("Which address space — 'virtual' (guest virtual), 'pseudo-physical' or 'machine' — "
            "is each of\nthese in (an address, or the frame number's page)?\n\n" + lines
            + "\n\nAnswer with a list of four names."), {"keys": keys}


@functools.cache
def _spaces_seen() -> dict[str, str]:
    """The space of each item, read off one translation in each mode of :class:`MMULab`."""
    from virtcore.viz.xen_mmu import MODES, MMULab, translation_story

    lab = MMULab(0)
    pv, nested, shadow = (translation_story(lab, m, lab.vas[0]) for m in MODES)
    pv_l1 = next(s for s in pv.steps if s.table.startswith("guest L1"))
    hvm_l1 = next(s for s in nested.steps if s.table.startswith("guest L1"))
    ept = next(s for s in nested.steps if s.table.startswith("EPT"))
    sh_l1 = next(s for s in shadow.steps if s.phase == "retry" and s.table == "shadow L1")
    return {"pv-l1": pv_l1.points_to, "pv-table": pv_l1.table_space,
            "hvm-l1": hvm_l1.points_to, "hvm-table": hvm_l1.table_space,
            "ept-entry": ept.points_to, "ept-input": ept.translating,
            "shadow-l1": sh_l1.points_to, "program": pv.steps[0].translating}


def _solve_which_space(data: Mapping[str, Any]) -> list[str]:
    seen = _spaces_seen()
    return [seen[k] for k in data["keys"]]


# ---------------------------------------------------------------------------
# xenmmu.update — validation of guest page-table updates


_ATTEMPTS = {
    "data-ro": "map its page D (mapped nowhere yet) read-only",
    "data-rw": "map its data page D writable",
    "l1-ro": "map its own L1 page-table page read-only",
    "l1-rw": "map its own L1 page-table page writable",
    "foreign": "map a frame of another DomU (no grant) read-only",
    "pcd": "map its data page D with the cache-disable bit PCD set",
    "rw-as-table": "point an L2 entry at its page W (mapped writable) as a new L1 table",
    "pin-again": "pin its root table again (MMUEXT_PIN_L2_TABLE)",
}


def _gen_update(rng: random.Random) -> tuple[str, dict[str, Any]]:
    keys = rng.sample(sorted(_ATTEMPTS), rng.randint(3, 5))
    lines = "\n".join(f"    {i}. {_ATTEMPTS[k]}" for i, k in enumerate(keys, start=1))
    return ("A PV DomU has built, pinned and loaded its page tables (2 levels: one L2, one L1). "
            "Its page W\nis mapped writable at 0x1000. Each attempt below is made on its own, "
            "on that fresh state,\nthrough mmu_update (or mmuext_op for the pin), at a free "
            "virtual address:\n\n" + lines + "\n\n"
            "What does Xen return for each? Answer with a list of 'ok' or error names, in "
            "order,\ne.g. ['ok', 'EPERM']"), {"keys": keys}


def _one_attempt(key: str) -> int:
    from virtcore.hw.paging import PTE_P, PagingConfig
    from virtcore.xen.memory import PFN, MachineMemory
    from virtcore.xen.mmu import MMUEXT_PIN_L2_TABLE, MMUExtOp, MMUUpdate, XenMM

    xen = XenMM(MachineMemory(64, _PAGE), PagingConfig.x86_32())
    xen.create_pv_domain(0, 8)
    g = xen.create_pv_domain(1, 16)
    other = xen.create_pv_domain(2, 4)
    data_pfn, w_pfn = 3, 4
    g.build({0x1000: (w_pfn, True)})
    free_va = 0x2000
    root = g.baseptr
    assert root is not None
    if key == "pin-again":
        return xen.mmuext_op(1, [MMUExtOp(MMUEXT_PIN_L2_TABLE, root)]).rc
    if key == "rw-as-table":
        return xen.mmu_update(1, [g.map_request(0x400000, w_pfn, level=2)]).rc
    if key == "foreign":
        mfn = other.mem.pfn_to_mfn(PFN(0))
        ptr = g.entry_maddr(free_va, 1)
        assert ptr is not None
        return xen.mmu_update(1, [MMUUpdate(ptr, (mfn << 12) | PTE_P)]).rc
    if key == "pcd":
        req = g.map_request(free_va, data_pfn, writable=False)
        return xen.mmu_update(1, [MMUUpdate(req.ptr, req.val | 0x10)]).rc
    pfn = g.table_pfns[-1] if key.startswith("l1") else data_pfn
    writable = key.endswith("rw")
    return xen.mmu_update(1, [g.map_request(free_va, pfn, writable=writable)]).rc


def _solve_update(data: Mapping[str, Any]) -> list[int]:
    return [_one_attempt(k) for k in data["keys"]]


# ---------------------------------------------------------------------------
# xenmmu.2d-walk


def _gen_2d_walk(rng: random.Random) -> tuple[str, dict[str, Any]]:
    n = rng.randint(1, 4)
    m = rng.choice([0, 1, 2, 3, 4, 4])
    dim = ("no nested paging: the CPU walks the guest's own tables, which hold machine frames"
           if m == 0 else f"a {m}-level EPT (the P2M in hardware)")
    return (f"A guest with {n}-level page tables runs with {dim}.\nA TLB miss, nothing cached "
            "in any paging-structure cache: how many page-table entries\ndoes the hardware "
            "read to translate one guest virtual address? (Do not count the access\nto the "
            "data itself.)"), {"n": n, "m": m}


def _solve_2d_walk(data: Mapping[str, Any]) -> int:
    from virtcore.viz.xen_mmu import measured_2d_walk

    return measured_2d_walk(data["n"], data["m"])


# ---------------------------------------------------------------------------
# xenmmu.exits — shadow vs nested paging

_EVENT_TEXT = {
    "touch": "reads page {p}, mapped earlier but never touched yet",
    "again": "reads page {p} again (it read it before)",
    "cr3": "switches to process 1 and back to process 0 (two CR3 loads)",
    "unmap": "unmaps page {p} (one store to its PTE, then invlpg)",
    "invlpg": "executes invlpg for page {p}",
}


def _gen_exits(rng: random.Random) -> tuple[str, dict[str, Any]]:
    untouched = ["A", "B", "C"]
    touched = ["D", "E", "F"]
    events: list[tuple[str, str]] = []
    for _ in range(rng.randint(3, 5)):
        kind = rng.choice(["touch", "again", "again", "cr3", "unmap", "invlpg"])
        if kind == "touch" and untouched:
            p = untouched.pop(0)
            touched.append(p)
        elif kind in ("again", "unmap", "invlpg") and touched:
            p = rng.choice(touched)
            if kind == "unmap":
                touched.remove(p)
        else:
            kind, p = "cr3", ""
        events.append((kind, p))
    if all(k == "again" for k, _ in events):
        events.append(("cr3", ""))
    lines = "\n".join(f"    {i}. the guest " + _EVENT_TEXT[k].format(p=p)
                      for i, (k, p) in enumerate(events, start=1))
    return ("An HVM guest's process 0 has pages A–F mapped; it has already read D, E and F "
            "(the hypervisor\nhas done whatever it needed for those); process 1 has run "
            "before too. The same guest runs once\nwith shadow paging (hap=0) and once with "
            "nested paging (hap=1, P2M fully populated):\n\n" + lines + "\n\n"
            "How many VM exits do these events cause in each run? Answer as a pair "
            "(shadow, nested)."), {"events": events}


def _solve_exits(data: Mapping[str, Any]) -> tuple[int, int]:
    from virtcore.hw.paging import PagingConfig
    from virtcore.xen.memory import MachineMemory
    from virtcore.xen.nested import HVMGuest, NestedPaging, TaggedTLB, populate
    from virtcore.xen.shadow import ShadowPaging

    cfg = PagingConfig.tiny()
    out = []
    for mode in ("shadow", "nested"):
        m = MachineMemory(256, cfg.page_size)
        g = HVMGuest(m, populate(m, 1, 48), cfg, nprocs=2)
        pager = (ShadowPaging(m, TaggedTLB(64)) if mode == "shadow"
                 else NestedPaging(m, PagingConfig.tiny4(), TaggedTLB(64)))
        pager.add_guest(g)
        pager.switch(1)
        va = {p: (i + 1) << cfg.page_bits for i, p in enumerate("ABCDEF")}
        for p in "ABCDEF":
            pager.map(1, 0, va[p], g.take_data_page())
        pager.map(1, 1, va["A"], g.take_data_page())
        pager.load_cr3(1, 1)
        pager.access(1, va["A"])
        pager.load_cr3(1, 0)
        for p in "DEF":
            pager.access(1, va[p])
        before = pager.exits
        for kind, p in data["events"]:
            if kind in ("touch", "again"):
                pager.access(1, va[p])
            elif kind == "cr3":
                pager.load_cr3(1, 1)
                pager.load_cr3(1, 0)
            elif kind == "unmap":
                pager.unmap(1, 0, va[p])
            else:
                pager.invlpg(1, va[p])
        out.append(pager.exits - before)
    return out[0], out[1]


# ---------------------------------------------------------------------------
# xenmmu.tlb-tag — VPID / ASID


def _gen_tlb_tag(rng: random.Random) -> tuple[str, dict[str, Any]]:
    runs = [rng.choice([1, 2, 3]) for _ in range(rng.randint(5, 8))]
    pages = rng.randint(2, 3)
    seq = ", ".join(f"d{d}" for d in runs)
    return ("Three HVM domains share one physical CPU (nested paging; a TLB of 64 entries, "
            "never full here).\nEach time a domain's vCPU runs it reads the same "
            f"{pages} pages of its own. The vCPUs run in this order\n(a domain running twice in "
            "a row is not switched out in between):\n\n"
            f"    {seq}\n\n"
            "How many TLB misses are there with VPID-tagged TLB entries, and how many when "
            "the hypervisor\nmust flush the TLB on every switch between domains? Answer as a "
            "pair (tagged, untagged)."), {"runs": runs, "pages": pages}


def _solve_tlb_tag(data: Mapping[str, Any]) -> tuple[int, int]:
    from virtcore.hw.paging import PagingConfig
    from virtcore.xen.paging_compare import Workload, run_paging

    cfg = PagingConfig.tiny4()
    pages = data["pages"]
    events: list[tuple[Any, ...]] = []
    for d in range(3):
        for p in range(pages):
            events.append(("map", d, 0, (p + 1) << cfg.page_bits, p, False))
    for d in data["runs"]:
        events.append(("switch", d - 1))
        for p in range(pages):
            events.append(("access", d - 1, (p + 1) << cfg.page_bits, False))
    w = Workload(0, 3, 1, pages, cfg, tuple(events))
    tagged = run_paging("nested", w, tlb_capacity=64, use_vpid=True)
    flushed = run_paging("nested", w, tlb_capacity=64, use_vpid=False)
    return tagged.tlb_misses, flushed.tlb_misses


# ---------------------------------------------------------------------------

#: The example answer shown in each answer cell (never right for seeds 0–99).
PLACEHOLDERS: dict[str, object] = {
    "xenmmu.spaces": 0x1234,
    "xenmmu.which-space": ["virtual", "virtual"],
    "xenmmu.update": ["ok", "EPERM"],
    "xenmmu.2d-walk": 25,
    "xenmmu.exits": (0, 0),
    "xenmmu.tlb-tag": (0, 0),
}

#: The questions, in the order of the chapter's sections.
CHECKS: tuple[SelfCheck, ...] = (
    SelfCheck("xenmmu.spaces", 6, _gen_spaces, _solve_spaces, as_int,
              hint="the page number of the virtual address goes through the guest's table to "
                   "the mfn the kernel wrote (the P2M's entry for the pfn); the offset within "
                   "the page is kept: maddr = mfn × 4096 + offset. spaces_table(guest) shows "
                   "every mapping.",
              covers=("S6.5",)),
    SelfCheck("xenmmu.which-space", 6, _gen_which_space, _solve_which_space, as_space_list,
              hint="a PV guest's tables hold machine frames and live in machine memory; an "
                   "HVM guest's tables hold gfns (pseudo-physical) and are addressed "
                   "pseudo-physically; EPT and shadow entries hold machine frames; the EPT "
                   "translates guest-physical addresses. translation_story(lab, mode, va) "
                   "shows each step's spaces.",
              covers=("S6.5",)),
    SelfCheck("xenmmu.update", 6, _gen_update, _solve_update, as_result_list,
              hint="get_page_from_l1e refuses a frame the guest does not own (EBUSY) and a "
                   "writable mapping of a page-table page (EBUSY: it cannot take type "
                   "PGT_writable_page); bad flags are EINVAL; a writable page cannot become a "
                   "page table (EINVAL), and pinning is not counted: twice is EINVAL. "
                   "`UpdateLog` records the answers.",
              covers=("S6.5",)),
    SelfCheck("xenmmu.2d-walk", 6, _gen_2d_walk, _solve_2d_walk, as_int,
              hint="each of the n guest table pointers and the final guest-physical address "
                   "needs an m-level nested walk: n·m + n + m = (n+1)(m+1) − 1 (texts that say "
                   "25 for 4 × 4 count the data access too); measured_2d_walk(n, m) counts it.",
              covers=("S6.5",)),
    SelfCheck("xenmmu.exits", 6, _gen_exits, _solve_exits, as_int_pair,
              hint="shadow paging exits on a shadow miss (first touch), on every CR3 load, on "
                   "a store to a write-protected guest page table and on invlpg; a page read "
                   "before hits the shadow. Nested paging exits on none of these: the guest "
                   "edits its own tables.",
              covers=("S6.5",)),
    SelfCheck("xenmmu.tlb-tag", 6, _gen_tlb_tag, _solve_tlb_tag, as_int_pair,
              hint="tagged: a page misses only the first time its domain reads it; untagged: "
                   "every switch to another domain empties the TLB, so each run after a switch "
                   "misses all its pages again (two runs in a row are one switch).",
              covers=("S6.5",)),
)

for _check in CHECKS:
    if _check.qid not in REGISTRY:
        register(_check)
del _check
