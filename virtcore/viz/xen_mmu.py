"""Views and widgets of chapter 6b (Xen's virtual MMU, 虚拟内存管理单元), on the running model.

Everything here reads :mod:`virtcore.xen.memory`, :mod:`virtcore.xen.mmu`,
:mod:`virtcore.xen.nested`, :mod:`virtcore.xen.shadow` and :mod:`virtcore.xen.paging_compare`
and returns data (tables, a list of walk steps) or draws it; the widget wraps pure functions
(:func:`translation_story`, :func:`render_story_step`), so a notebook, a test and a benchmark
run the same code.

- :class:`MMULab` — one small host, built from a seed, with the *same* guest mappings three
  ways: a PV guest (direct paging), an HVM guest under nested paging (EPT/NPT) and one under
  shadow paging.  Its P2M is shuffled so that pseudo-physical and machine frame numbers differ.
- :func:`three_spaces_graph` / :func:`draw_three_spaces` — the mappings as a networkx graph
  over the three spaces, built from the running model;
- tables: :func:`spaces_table` (gva → pfn → mfn of every mapping), :func:`p2m_m2p_table`,
  :class:`UpdateLog` (hypercalls tried, Xen's answers), :func:`two_d_walk_table` (walks
  *measured* for n guest × m nested levels beside ``(n+1)(m+1)−1``), :func:`comparison_table`,
  :func:`cost_table`, :func:`tagging_table`;
- :func:`translation_story` — one translation step by step, every memory reference with its
  table, its address space, index and entry (OSTEP-style hex and decimal), and for shadow paging
  the miss, the exit, Xen's software walk, the shadow write and the retry;
- :func:`translation_explorer` — the widget: mode, address, step slider and buttons, and shadow
  vs nested paging on one workload;
- :func:`draw_paging_comparison` — the simulated time of both modes, by kind of event.

matplotlib, networkx and ipywidgets are imported inside the functions that need them.

>>> lab = MMULab(seed=0)
>>> [translation_story(lab, m, lab.vas[0]).references for m in MODES]
[4, 24, 9]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from virtcore.viz._lazy import esc, require
from virtcore.viz.kvm import TableView

__all__ = [
    "MODES",
    "SPACES",
    "WHY",
    "Attempt",
    "MMULab",
    "Story",
    "StoryStep",
    "UpdateLog",
    "comparison_table",
    "cost_table",
    "draw_paging_comparison",
    "draw_three_spaces",
    "measured_2d_walk",
    "p2m_m2p_table",
    "render_story_step",
    "spaces_table",
    "tagging_table",
    "three_spaces_graph",
    "translation_explorer",
    "translation_story",
    "two_d_walk_table",
]

#: The three address spaces (三级地址), in the order a translation crosses them.
SPACES = ("guest virtual", "pseudo-physical", "machine")
#: The translation modes the explorer shows.
MODES = ("PV direct paging", "HVM nested paging (EPT/NPT)", "HVM shadow paging")
_SPACE_ZH = {"guest virtual": "虚拟地址", "pseudo-physical": "伪物理地址", "machine": "机器地址"}
_PRE = '<pre style="font-size:12px;line-height:1.3;white-space:pre-wrap;margin:2px 0">'


# ---------------------------------------------------------------------------
# the lab: one host, the same mappings three ways


class MMULab:
    """A small host with the same guest mappings under PV, nested and shadow paging.

    All three use the teaching page-table shape ``PagingConfig.tiny4()`` (4 levels like
    x86-64, 32-byte pages — unrealistically small, so every table can be printed); the EPT has
    4 levels too.  Each domain's P2M is a seeded permutation over frames that start after
    Domain 0's, so a pfn and its mfn differ.

    Parameters
    ----------
    seed : int
        Chooses the P2M permutation and the mapped addresses.
    pages : int
        Pseudo-physical pages per guest.
    nmapped : int
        Guest virtual pages mapped (the same vas to the same pfns in all three modes).

    Attributes
    ----------
    xen : XenMM
        The PV memory manager; ``pv`` its guest (domain 1), ``dom0`` Domain 0.
    hap, shadow : NestedPaging, ShadowPaging
        The two HVM pagers, each with its own guest (domain 1 on its own machine).
    vas : list of int
        The mapped guest virtual addresses (page-aligned), and ``pfns`` their frames.

    Examples
    --------
    >>> lab = MMULab(seed=1)
    >>> t = lab.pv.translate(lab.vas[0])
    >>> t.pfn == lab.pfns[0] and t.mfn == lab.pv.mem.p2m[t.pfn] != t.pfn
    True
    """

    def __init__(self, seed: int = 0, *, pages: int = 32, nmapped: int = 4) -> None:
        from virtcore.hw.paging import PagingConfig
        from virtcore.rng import make_rng
        from virtcore.xen.memory import MachineMemory
        from virtcore.xen.mmu import XenMM
        from virtcore.xen.nested import HVMGuest, NestedPaging, TaggedTLB
        from virtcore.xen.shadow import ShadowPaging

        rng = make_rng(seed)
        self.seed, self.pages, self.nmapped = seed, pages, nmapped
        self.config = PagingConfig.tiny4()
        cfg = self.config
        order = list(range(pages))
        rng.shuffle(order)
        va_pages = cfg.va_limit >> cfg.page_bits
        self.vas = sorted(vpn << cfg.page_bits
                          for vpn in rng.sample(range(1, va_pages), nmapped))
        # PV: Domain 0 first (so domain 1's frames do not start at 0), then the guest
        self.xen = XenMM(MachineMemory(4 * pages + 16, cfg.page_size), cfg, tlb_size=8)
        self.dom0 = self.xen.create_pv_domain(0, 8)
        self.pv = self.xen.create_pv_domain(1, pages, populate=False)
        self.pv.mem.populate_physmap(order)
        # HVM: two machines built the same way, one per paging mode
        self._hvm: dict[str, Any] = {}
        for mode in ("nested", "shadow"):
            m = MachineMemory(8 * pages + 64, cfg.page_size)
            m.new_domain_memory(0, 8).populate_physmap(range(8))
            mem = m.new_domain_memory(1, pages)
            mem.populate_physmap(order)
            guest = HVMGuest(m, mem, cfg)
            pager = (NestedPaging(m, cfg, TaggedTLB(16)) if mode == "nested"
                     else ShadowPaging(m, TaggedTLB(16)))
            pager.add_guest(guest)
            self._hvm[mode] = pager
        self.hap: NestedPaging = self._hvm["nested"]
        self.shadow: ShadowPaging = self._hvm["shadow"]
        self.pfns = [self.hap.guests[1].take_data_page() for _ in self.vas]
        same = [self.shadow.guests[1].take_data_page() for _ in self.vas]
        assert same == self.pfns  # the same free list: the same gfns in both guests
        for va, pfn in zip(self.vas, self.pfns):
            self.hap.map(1, 0, va, pfn)
            self.shadow.map(1, 0, va, pfn)
        self.pv.build({va: (pfn, True) for va, pfn in zip(self.vas, self.pfns)})

    @property
    def spare_pfn(self) -> int:
        """A pseudo-physical frame of the PV guest that is neither mapped nor a page table."""
        used = set(self.pfns) | set(self.pv.table_pfns)
        return next(p for p in sorted(self.pv.mem.p2m) if p not in used)

    @property
    def free_va(self) -> int:
        """An unmapped guest virtual page whose L1 table exists (next to ``vas[0]``)."""
        shift = self.config.shift(1)
        for k in range(1, self.config.entries_per_table):
            va = self.vas[0] ^ (k << shift)
            if va not in self.vas and self.pv.entry_maddr(va, 1) is not None:
                return va
        raise LookupError("no free slot in vas[0]'s L1 table")

    @property
    def free_l2_va(self) -> int:
        """A guest virtual address whose L2 entry is empty while its L3 table exists."""
        shift = self.config.shift(2)
        words = self.xen.machine.physical.words
        for k in range(1, self.config.entries_per_table):
            va = self.vas[0] ^ (k << shift)
            ptr = self.pv.entry_maddr(va, 2)
            if ptr is not None and not words[ptr >> 2]:
                return va
        raise LookupError("no empty entry in vas[0]'s L2 table")

    def __repr__(self) -> str:
        return (f"MMULab(seed={self.seed}: {len(self.vas)} pages mapped the same way under PV"
                f" direct paging, nested paging and shadow paging; {self.config.levels}-level"
                f" guest tables, {self.hap.ept_config.levels}-level EPT)")


# ---------------------------------------------------------------------------
# the three spaces


def spaces_table(guest: Any) -> TableView:
    """Every mapping of a PV guest through the three spaces: gva → pfn → mfn → maddr.

    The guest's tables hold the mfn; the pfn is the M2P's name for it.

    >>> lab = MMULab(seed=0)
    >>> t = spaces_table(lab.pv); t.head[:3]
    ('guest virtual (gva)', 'pseudo-physical (pfn)', 'machine (mfn)')
    >>> len(t.rows) == len(lab.vas)
    True
    """
    m = guest.xen.machine
    bits = guest.xen.config.page_bits
    rows = []
    for va, mfn, writable in guest.leaf_mappings():
        pfn = m.m2p[mfn]
        rows.append((f"{va:#07x}", f"{pfn:#x} [{pfn}]", f"{mfn:#x} [{mfn}]",
                     f"{mfn << bits:#07x}", "rw" if writable else "r-"))
    return TableView.build(("guest virtual (gva)", "pseudo-physical (pfn)", "machine (mfn)",
                            "machine address", "access"), rows,
                           footer=f"d{guest.domid}: {len(rows)} pages mapped; numbers in hex "
                                  "[decimal]")


def three_spaces_graph(guest: Any) -> Any:
    """The PV guest's mappings as a graph over the three spaces (networkx ``DiGraph``).

    Nodes ``("gva", page)``, ``("pfn", n)``, ``("mfn", n)`` with attribute ``space``; an edge
    gva → pfn for each mapping (what the guest kernel meant), pfn → mfn from the P2M, and
    gva → mfn (``kind="page table"``: what the guest's table really holds, which the CPU
    follows).  Built from the running model: the tables walked, the P2M and M2P read.

    >>> lab = MMULab(seed=0)
    >>> g = three_spaces_graph(lab.pv)
    >>> sorted({d["space"] for _n, d in g.nodes(data=True)})
    ['guest virtual', 'machine', 'pseudo-physical']
    >>> all(g.has_edge(("pfn", p), ("mfn", lab.pv.mem.p2m[p])) for p in lab.pfns)
    True
    """
    nx = require("networkx")
    m2p = guest.xen.machine.m2p
    g = nx.DiGraph()
    for va, mfn, writable in guest.leaf_mappings():
        pfn = m2p[mfn]
        g.add_node(("gva", va), space="guest virtual", label=f"{va:#x}")
        g.add_node(("pfn", pfn), space="pseudo-physical", label=f"pfn {pfn:#x}")
        g.add_node(("mfn", mfn), space="machine", label=f"mfn {mfn:#x}")
        g.add_edge(("gva", va), ("pfn", pfn), kind="guest's view")
        g.add_edge(("pfn", pfn), ("mfn", mfn), kind="P2M")
        g.add_edge(("gva", va), ("mfn", mfn), kind="page table", writable=writable)
    return g


def draw_three_spaces(guest: Any, ax: Any = None) -> Any:
    """Three columns — guest virtual, pseudo-physical, machine — and the mappings between them.

    Solid arrows: the guest's view (gva → pfn) and the P2M (pfn → mfn); dashed: the page-table
    entry the CPU follows (gva → mfn directly, for a PV guest).
    """
    g = three_spaces_graph(guest)
    if ax is None:
        plt = require("matplotlib.pyplot")
        _fig, ax = plt.subplots(figsize=(7.5, 3.4))
    cols = {"guest virtual": 0.0, "pseudo-physical": 1.0, "machine": 2.0}
    colour = {"guest virtual": "#2e7d32", "pseudo-physical": "#1565c0", "machine": "#c62828"}
    pos: dict[Any, tuple[float, float]] = {}
    for space, x in cols.items():
        nodes = sorted((n for n, d in g.nodes(data=True) if d["space"] == space),
                       key=lambda n: n[1])
        for i, n in enumerate(nodes):
            pos[n] = (x, -float(i))
            ax.text(x, -i, g.nodes[n]["label"], ha="center", va="center", fontsize=9,
                    zorder=3, bbox={"boxstyle": "round", "fc": "white", "ec": colour[space]})
        ax.text(x, 1.0, space, ha="center", va="bottom",
                fontsize=10, color=colour[space], fontweight="bold")
    for u, v, kind in g.edges(data="kind"):
        (x0, y0), (x1, y1) = pos[u], pos[v]
        if kind == "page table":
            ax.annotate("", xy=(x1 - 0.24, y1), xytext=(x0 + 0.24, y0), zorder=1,
                        arrowprops={"arrowstyle": "->", "color": "#b0bec5", "ls": "--",
                                    "connectionstyle": "arc3,rad=-0.3"})
        else:
            ax.annotate("", xy=(x1 - 0.24, y1), xytext=(x0 + 0.24, y0), zorder=2,
                        arrowprops={"arrowstyle": "->", "color": "#37474f"})
    n = max(len([p for p in pos if p[0] == k]) for k in ("gva", "pfn", "mfn"))
    ax.set_xlim(-0.5, 2.5)
    ax.set_ylim(-n - 0.2, 1.9)
    ax.axis("off")
    ax.set_title(f"d{guest.domid}: solid = guest's view and P2M, dashed = the PV page-table "
                 "entry (holds the mfn)", fontsize=9)
    return ax


def p2m_m2p_table(mem: Any, *, limit: int = 12) -> TableView:
    """A domain's P2M beside the M2P entry of each frame: the two tables are inverse.

    >>> lab = MMULab(seed=0)
    >>> t = p2m_m2p_table(lab.pv.mem, limit=3)
    >>> [r[3] for r in t.rows]
    ['yes', 'yes', 'yes']
    """
    m2p = mem.machine.m2p
    rows = []
    for pfn, mfn in sorted(mem.p2m.items())[:limit]:
        rows.append((f"{pfn:#x}", f"{mfn:#x}", f"{m2p[mfn]:#x}", "yes" if m2p[mfn] == pfn
                     else "NO"))
    more = len(mem.p2m) - len(rows)
    return TableView.build(("pfn", "P2M[pfn] = mfn", "M2P[mfn]", "M2P[P2M[pfn]] == pfn?"),
                           rows, footer=f"... and {more} more" if more > 0 else "")


# ---------------------------------------------------------------------------
# page-table updates tried


@dataclass(frozen=True)
class Attempt:
    """One hypercall tried by a guest and Xen's answer."""

    label: str
    rc: int
    done: int | None
    why: str


#: What each return code of a page-table hypercall means [XEN-MM-C; XEN-H; XEN-ERRNO].
WHY = {
    0: "validated and applied",
    -1: "not permitted (a foreign domain without privilege)",
    -3: "no such domain",
    -16: "could not take a reference: not the caller's frame, or it cannot be typed writable",
    -22: "invalid: bad flags, or the frame cannot take the type asked for",
}


class UpdateLog:
    """Page-table hypercalls a guest tries, with Xen's return codes, as a table.

    >>> lab = MMULab(seed=0)
    >>> log = UpdateLog()
    >>> req = lab.pv.map_request(lab.vas[0] + 0x20, lab.pv.table_pfns[0], writable=True)
    >>> log.attempt("map my own L4 writable", lab.xen.mmu_update(1, [req])).rc
    -16
    >>> print(log.table().splitlines()[2][:40])
    map my own L4 writable  -16  -EBUSY  0
    """

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []

    def attempt(self, label: str, result: Any, why: str = "") -> Attempt:
        """Record ``result`` (a :class:`~virtcore.xen.mmu.HypercallResult` or an rc) and why
        Xen answered so (default: the meaning of the return code, :data:`WHY`)."""
        rc = int(getattr(result, "rc", result))
        done = getattr(result, "done", None)
        a = Attempt(label, rc, done, why or WHY.get(rc, ""))
        self.attempts.append(a)
        return a

    def table(self) -> TableView:
        """One row per attempt: what, rc, its name, ``*done``, and why."""
        from virtcore.xen.mmu import errno_name

        rows = [(a.label, str(a.rc), errno_name(a.rc) if a.rc else "ok",
                 "-" if a.done is None else str(a.done), a.why) for a in self.attempts]
        return TableView.build(("guest tries", "rc", "name", "done", "why"), rows)


# ---------------------------------------------------------------------------
# one translation, step by step


@dataclass(frozen=True)
class StoryStep:
    """One step of a translation: a memory reference, or an event (exit, fill, retry).

    Attributes
    ----------
    phase : str
        ``"hardware walk"``, ``"VM exit"``, ``"software walk (Xen)"``, ``"shadow write"``,
        ``"retry"`` or ``"result"``.
    text : str
        The OSTEP-style line (hex and decimal).
    table : str
        The table read ("" for an event).
    translating : str
        The space of the address being translated at this step.
    table_space : str
        The space the table's address is in ("" for an event).
    points_to : str
        The space the entry's frame number names ("" for an event).
    reference : bool
        True if the step is a page-table memory reference.
    """

    phase: str
    text: str
    table: str = ""
    translating: str = ""
    table_space: str = ""
    points_to: str = ""
    reference: bool = False
    index: int = -1
    entry: int = 0
    address: int = -1
    table_addr: int = -1
    maddr: int = -1


@dataclass(frozen=True)
class Story:
    """A translation of ``va`` in ``mode`` as steps; ``references`` counts the memory reads."""

    mode: str
    va: int
    steps: tuple[StoryStep, ...]
    pfn: int | None
    mfn: int | None
    maddr: int | None

    @property
    def references(self) -> int:
        """Page-table memory references (hardware and the hypervisor's software walk)."""
        return sum(s.reference for s in self.steps)

    def __str__(self) -> str:
        return "\n".join([f"[{self.mode}] guest virtual {self.va:#x} [decimal {self.va}]",
                          *(s.text for s in self.steps),
                          f"{self.references} page-table memory references"])

    def __repr__(self) -> str:
        return str(self)


def _ref_step(ref: Any, phase: str) -> StoryStep:
    where = (ref.translating, ref.table_addr, ref.maddr)
    if ref.table.startswith("EPT"):
        return StoryStep(phase, str(ref), ref.table, "pseudo-physical", "machine", "machine",
                         True, ref.index, ref.entry, *where)
    if ref.frame_kind == "gfn":
        return StoryStep(phase, str(ref), ref.table, "guest virtual", "pseudo-physical",
                         "pseudo-physical", True, ref.index, ref.entry, *where)
    return StoryStep(phase, str(ref), ref.table, "guest virtual", "machine", "machine", True,
                     ref.index, ref.entry, *where)


def _result_step(t: Any) -> StoryStep:
    if t.fault is not None:
        return StoryStep("result", f"--> fault: {t.fault}")
    return StoryStep("result", f"--> gva {t.gva:#x} -> pseudo-physical frame {t.pfn:#x} -> "
                               f"machine frame {t.mfn:#x} -> maddr {t.maddr:#x} "
                               f"[decimal {t.maddr}]", translating="machine")


def translation_story(lab: MMULab, mode: str, va: int) -> Story:
    """Translate ``va`` in ``mode`` (one of :data:`MODES`) on a TLB miss, step by step.

    PV and nested paging: the hardware walk (:meth:`PVGuest.translate`,
    :meth:`NestedPaging.translate`).  Shadow paging: the first touch — the hardware walk of the
    shadow misses, the CPU exits to Xen, Xen walks the guest's tables in software (each gfn
    through the P2M), writes the shadow entries, and the retried walk succeeds (the model's
    :meth:`ShadowPaging.access`, on a fresh :class:`MMULab` so every call tells the same story).

    >>> lab = MMULab(seed=0)
    >>> s = translation_story(lab, "HVM shadow paging", lab.vas[1])
    >>> [p for p in dict.fromkeys(x.phase for x in s.steps)]
    ['hardware walk', 'VM exit', 'software walk (Xen)', 'shadow write', 'retry', 'result']
    """
    from virtcore.xen.mmu import MemRef

    if mode == MODES[0]:
        t = lab.pv.translate(va)
        steps = [_ref_step(r, "hardware walk") for r in t.refs]
        return Story(mode, va, (*steps, _result_step(t)), t.pfn, t.mfn, t.maddr)
    if mode == MODES[1]:
        t = lab.hap.translate(1, va)
        steps = [_ref_step(r, "hardware walk") for r in t.refs]
        return Story(mode, va, (*steps, _result_step(t)), t.pfn, t.mfn, t.maddr)
    if mode != MODES[2]:
        from virtcore.viz import ViewError

        raise ViewError(f"mode {mode!r} is not one of {MODES}")
    fresh = MMULab(lab.seed, pages=lab.pages, nmapped=lab.nmapped)
    sh = fresh.shadow
    g = sh.guests[1]
    cfg = g.config
    miss = sh.translate(1, va)
    steps = [_ref_step(r, "hardware walk") for r in miss.refs]
    level = miss.refs[-1].level if miss.refs else cfg.levels
    steps.append(StoryStep("VM exit", f"--> shadow entry not present at level {level}: page "
                                      "fault → VM exit to Xen (sh_page_fault)",
                           translating="guest virtual"))
    walk, _leaf, _perms = g.guest_walk(g.roots[g.current], va)
    for i, (gfn, index, entry) in enumerate(walk):
        level = cfg.levels - i
        gpa = (gfn << cfg.page_bits) + 4 * index
        ref = MemRef(f"guest L{level} (gfn {gfn:#x}) read by Xen", "pseudo-physical", level,
                     index, gfn << cfg.page_bits, g.gpa_to_maddr(gpa), entry, va, "gfn")
        steps.append(_ref_step(ref, "software walk (Xen)"))
    before = sh.shadow_writes
    sh.access(1, va)
    leaf_gfn = walk[-1][2] >> 12
    steps.append(StoryStep("shadow write", f"--> Xen writes {sh.shadow_writes - before} shadow "
                                           f"entries: gva page {va:#x} -> mfn "
                                           f"{g.mem.p2m[leaf_gfn]:#x} (gfn {leaf_gfn:#x} "
                                           "through the P2M); VM entry",
                           translating="machine"))
    hit = sh.translate(1, va)
    steps += [_ref_step(r, "retry") for r in hit.refs]
    steps.append(_result_step(hit))
    return Story(mode, va, tuple(steps), hit.pfn, hit.mfn, hit.maddr)


def render_story_step(story: Story, i: int) -> str:
    """HTML for step ``i`` (0-based) of ``story``: the three spaces (the ones this step touches
    highlighted), the step's table, index and entry, and the trace so far."""
    s = story.steps[i]
    cells: list[str] = []
    for space in SPACES:
        role = []
        if space == s.translating:
            role.append(f"translating {s.address:#x}" if s.address >= 0 else "translating")
        if space == s.table_space:
            role.append(f"table at {s.table_addr:#x}")
        if space == s.points_to:
            role.append("entry points here")
        on = bool(role)
        style = ("background:#1565c0;color:white;font-weight:bold" if on
                 else "background:#eceff1;color:#37474f")
        if cells:
            cells.append('<td style="padding:0 4px">→</td>')
        cells.append(f'<td style="{style};padding:6px 12px;text-align:center;'
                     f'border:1px solid white">{esc(space)}<br>{_SPACE_ZH[space]}<br>'
                     f'<small>{"<br>".join(esc(r) for r in role) or "&nbsp;"}</small></td>')
    refs_so_far = sum(x.reference for x in story.steps[: i + 1])
    detail = (f" · <b>{esc(s.table)}</b> · index {s.index:#x} [{s.index}] · read at machine "
              f"{s.maddr:#x} [{s.maddr}] · entry {s.entry:#010x}" if s.reference else "")
    trace = "\n".join(x.text for x in story.steps[: i + 1])
    return (f"<div><b>{esc(story.mode)}</b> · gva {story.va:#x} [{story.va}]</div>"
            f"<table style='border-collapse:collapse'><tr>{''.join(cells)}</tr></table>"
            f"<p style='margin:4px 0'><b>step {i + 1}/{len(story.steps)}</b> · "
            f"{esc(s.phase)}{detail} · references so far <b>{refs_so_far}</b> of "
            f"{story.references}</p>{_PRE}{esc(trace)}</pre>")


# ---------------------------------------------------------------------------
# the 2-D walk, measured


def measured_2d_walk(n: int, m: int) -> int:
    """Page-table references of one TLB miss with ``n`` guest and ``m`` nested levels, counted
    by running the walk (``m = 0``: native paging, no EPT).

    >>> [measured_2d_walk(n, 4) for n in (1, 2, 4)], measured_2d_walk(4, 0)
    ([9, 14, 24], 4)
    """
    from virtcore.hw.paging import PagingConfig
    from virtcore.xen.memory import MachineMemory
    from virtcore.xen.nested import HVMGuest, NestedPaging, TaggedTLB, populate

    guest_cfg = PagingConfig(5, n, 3, f"{n} levels")
    machine = MachineMemory(256, 32)
    pages = min(24, 8 ** m) if m else 24  # an m-level EPT of 8-entry tables reaches 8**m gfns
    guest = HVMGuest(machine, populate(machine, 1, pages), guest_cfg)
    va = 1 << guest_cfg.page_bits
    gfn = guest.take_data_page()
    if m == 0:  # native: the CPU walks the guest's own tables, one read per level
        for gpa, value in guest.plan_map(0, va, gfn):
            guest.write_gpa(gpa, value)
        steps, _leaf, _perms = guest.guest_walk(guest.roots[0], va)
        return len(steps)
    hap = NestedPaging(machine, PagingConfig(5, m, 3, f"EPT {m} levels"), TaggedTLB(0))
    hap.add_guest(guest)
    hap.map(1, 0, va, gfn)
    return hap.translate(1, va).references


def two_d_walk_table(pairs: Sequence[tuple[int, int]] = ((1, 1), (2, 2), (3, 3), (2, 4),
                                                         (4, 2), (4, 4))) -> TableView:
    """References per TLB miss for n guest × m nested levels: measured, and the formula.

    >>> t = two_d_walk_table([(4, 4)]); t.rows
    (('4', '4', '4', '24', '24', '6.0x'),)
    """
    from virtcore.xen.nested import two_d_walk_references

    rows = []
    for n, m in pairs:
        got = measured_2d_walk(n, m)
        native = measured_2d_walk(n, 0)
        rows.append((str(n), str(m), str(native), str(got), str(two_d_walk_references(n, m)),
                     f"{got / native:.1f}x"))
    return TableView.build(("guest levels n", "nested levels m", "native refs",
                            "2-D walk refs (measured)", "(n+1)(m+1)-1", "vs native"), rows,
                           right=(0, 1, 2, 3, 4, 5))


# ---------------------------------------------------------------------------
# shadow vs nested, tagging


def comparison_table(c: Any) -> TableView:
    """:class:`~virtcore.xen.paging_compare.PagingComparison` as a table."""
    rows = [(name, f"{a:g}", f"{b:g}") for name, a, b in c.rows()]
    return TableView.build(("same workload", "shadow (hap=0)", "nested (hap=1)"), rows,
                           footer=repr(c.workload), right=(1, 2))


def cost_table(c: Any) -> TableView:
    """Where the simulated time of each mode goes (prices from ``DEFAULT_COSTS``), in µs."""
    s, n = dict(c.shadow.breakdown), dict(c.nested.breakdown)
    rows = [(k, f"{s[k] / 1000:.1f}", f"{n[k] / 1000:.1f}") for k in s]
    rows.append(("total", f"{c.shadow.time_ns / 1000:.1f}", f"{c.nested.time_ns / 1000:.1f}"))
    return TableView.build(("simulated time (µs)", "shadow", "nested"), rows, right=(1, 2))


def tagging_table(tagged: Any, flushed: Any) -> TableView:
    """The same workload with VPID/ASID-tagged TLB entries and with a flush on every switch."""
    rows = []
    for name, attr in (("domain switches", "switches"), ("TLB flushes on switch",
                                                         "switch_flushes"),
                       ("TLB misses", "tlb_misses")):
        rows.append((name, str(getattr(tagged, attr)), str(getattr(flushed, attr))))
    rows.append(("TLB hit rate %", f"{100 * tagged.hit_rate:.1f}", f"{100 * flushed.hit_rate:.1f}"))
    rows.append(("simulated time (µs)", f"{tagged.time_ns / 1000:.1f}",
                 f"{flushed.time_ns / 1000:.1f}"))
    return TableView.build(("same workload, nested paging", "tagged (VPID)", "untagged (flush)"),
                           rows, right=(1, 2))


def draw_paging_comparison(c: Any, ax: Any = None) -> Any:
    """Stacked bars: the simulated time of shadow and nested paging, by kind of event."""
    if ax is None:
        plt = require("matplotlib.pyplot")
        _fig, ax = plt.subplots(figsize=(7, 3.2))
    s, n = dict(c.shadow.breakdown), dict(c.nested.breakdown)
    left = [0.0, 0.0]
    for k in s:
        vals = [s[k] / 1000, n[k] / 1000]
        if not any(vals):
            continue
        ax.barh(["shadow (hap=0)", "nested (hap=1)"], vals, left=left, label=k)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("simulated time (µs), prices from virtcore.costs")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"the same workload ({c.workload.count('access')} accesses)")
    return ax


# ---------------------------------------------------------------------------
# the widget


def translation_explorer(*, seed: int = 0, workload_events: int = 1200) -> Any:
    """One translation animated through the three spaces, and shadow vs nested paging.

    Mode buttons, an address, a step slider with ◀ / ▶; below, the shadow-vs-nested table of
    one seeded workload (computed once).  Returns an ``ipywidgets.VBox`` with ``lab``,
    ``mode``, ``address``, ``slider``, ``buttons``, ``view``, ``story`` (current
    :class:`Story`) and ``show(i)``.

    >>> w = translation_explorer()
    >>> w.mode.value = "HVM nested paging (EPT/NPT)"; w.slider.max
    24
    >>> w.buttons["next"].click(); w.slider.value, "step 2/25" in w.view.value
    (1, True)
    """
    widgets = require("ipywidgets")
    from virtcore.xen.paging_compare import compare_paging, make_workload

    lab = MMULab(seed)
    stories: dict[tuple[str, int], Story] = {}
    mode = widgets.ToggleButtons(options=list(MODES), value=MODES[0])
    address = widgets.Dropdown(options=[(f"{va:#x}", va) for va in lab.vas],
                               value=lab.vas[0], description="gva")
    slider = widgets.IntSlider(value=0, min=0, max=0, description="step",
                               continuous_update=True)
    buttons = {"prev": widgets.Button(description="◀ prev", layout=widgets.Layout(width="auto")),
               "next": widgets.Button(description="next ▶", layout=widgets.Layout(width="auto"))}
    view = widgets.HTML()
    c = compare_paging(make_workload(seed=seed, nevents=workload_events))
    compare = widgets.HTML(_PRE + esc(str(comparison_table(c))) + "</pre>")
    box = widgets.VBox([mode, widgets.HBox([address, buttons["prev"], buttons["next"], slider]),
                        view, widgets.HTML("<b>shadow vs nested paging, same workload</b>"),
                        compare])

    def story() -> Story:
        key = (mode.value, address.value)
        if key not in stories:
            stories[key] = translation_story(lab, *key)
        return stories[key]

    def show(i: int) -> None:
        view.value = render_story_step(story(), i)

    def reset(_change: Any = None) -> None:
        s = story()
        box.story = s
        slider.value = 0
        slider.max = len(s.steps) - 1
        show(0)

    def step(delta: int) -> Callable[[Any], None]:
        def on_click(_b: Any) -> None:
            slider.value = min(slider.max, max(0, slider.value + delta))
        return on_click

    slider.observe(lambda ch: show(ch["new"]), names="value")
    mode.observe(reset, names="value")
    address.observe(reset, names="value")
    buttons["prev"].on_click(step(-1))
    buttons["next"].on_click(step(1))
    box.lab, box.mode, box.address, box.slider, box.buttons = lab, mode, address, slider, buttons
    box.view, box.show, box.comparison = view, show, c
    reset()
    return box
