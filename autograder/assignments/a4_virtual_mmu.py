"""Assignment 4 — the virtual MMU (虚拟内存管理单元): three spaces and Xen's ``mmu_update``.

The students program against virtcore's Xen memory model (:mod:`virtcore.xen.memory`,
:mod:`virtcore.xen.mmu`) [XEN-MM-C; XEN-H; XENPV-LINUX].  Their solution cells define::

    translate(view, va, write=False) -> (maddr | None, refs, fault)       # mmu_translate
    get_page_from_l1e(xen, l1e, l1e_owner, pg_owner) -> 0 | -errno        # mmu_validate
    mmu_update(xen, caller, reqs) -> (rc, done)                           # mmu_validate

================= ========================================================= ======
part              what is checked                                           points
================= ========================================================= ======
``mmu_translate`` guest virtual → pseudo-physical → machine for an            20
                  auto-translated guest: walk the guest's tables (they hold
                  gfns and live in pseudo-physical memory, so each table's
                  gfn goes through the P2M before it can be read), then the
                  P2M step for the data page; every entry read is one
                  reference ``(level, index, entry maddr, entry)``; faults
                  ``"not present"``, ``"p2m"`` (a hole), ``"read-only"``
``mmu_validate``  Xen's ``do_mmu_update()`` for a PV guest: the frame         25
                  holding ``ptr`` must be the caller's; L1 entries through
                  ``get_page_from_l1e()`` (bad flags ``-EINVAL``, not RAM
                  ``-EPERM``, not the caller's and not granted ``-EBUSY``, a
                  page table mapped writable ``-EBUSY``), L2 entries (a
                  writable page used as a table ``-EINVAL``), plain writes to
                  ordinary pages; the batch stops at the first failure and
                  ``done`` counts the requests applied — same ``rc``, same
                  ``done`` and the same frame table and memory afterwards as
                  the reference :meth:`virtcore.xen.mmu.XenMM.mmu_update`
================= ========================================================= ======

How a case is checked: a translation case is a guest (page-table shape, root gfn, P2M,
the machine frames holding its tables) and eight queries ``(va, write)``; a validation case
is a machine state (frame table, memory, P2Ms, grants — two PV domains and some of Xen's
own frames) and a batch of ``(ptr, val)`` requests from domain 1, about a third of them
hostile.  The worker rebuilds the case from data (:mod:`autograder.harness.a4`: nothing of
the reference runs there, and the reference functions are redacted in its virtcore) and
returns the walks, or ``rc``, ``done`` and the state after the batch.  The grader computes
the reference here — :func:`reference_translate`, and ``XenMM.mmu_update`` on the same
restored state — and reports the first divergence in words, e.g. ``request #2 (ptr 0x5a4 =
entry 1 of mfn 0x2d, d1's L1 table; val 0x0002e007 = mfn 0x2e — d1's L1 table — P W U):
rc expected -16 (-EBUSY), got 0 — a page-table page is never mapped writable``.

Cases: *directed* (visible, hand-picked situations), *public* generated (fixed seeds
:data:`PUBLIC_SEEDS`, visible), *hidden* generated with per-submission seeds.

Simplifications (said in the notebook): 2-level 32-byte-page tables (the teaching shape
``PagingConfig.tiny()``) for validation, 2 or 3 levels for translation; only
``MMU_NORMAL_PT_UPDATE`` and ``MMU_PT_UPDATE_PRESERVE_AD`` requests from the caller itself
(``foreigndom = DOMID_SELF``); the grant bookkeeping (``GTF_reading``/``GTF_writing``) is
not graded.  The translation's fault order is the model's: present bits during the walk,
then W along the path, then the data page's P2M entry.

>>> [p.grade_id for p in SPEC.parts], SPEC.points
(['mmu_translate', 'mmu_validate'], 45)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from autograder.harness.a4 import (
    FAULTS,
    FUNCTIONS,
    GrantTable,
    GuestView,
    build,
    capture,
    restore,
    run_case,
    state_after,
    view_of,
    worker_setup,
)
from autograder.spec import AssignmentSpec, Check, Part

__all__ = [
    "CASE_TIMEOUT",
    "CELL_TIMEOUT",
    "DIRECTED",
    "FAULTS",
    "FORBIDDEN",
    "FUNCTIONS",
    "HIDDEN_CASES",
    "PUBLIC_SEEDS",
    "REFERENCES",
    "SPEC",
    "GuestView",
    "build",
    "cases",
    "check_seeds",
    "compare",
    "describe_request",
    "expected_validation",
    "reference_namespace",
    "reference_translate",
    "run_case",
    "sandbox_plan",
    "translate_case",
    "validate_case",
    "view_of",
    "worker_setup",
]

HIDDEN_CASES = 6
CASE_TIMEOUT = 3.0
CELL_TIMEOUT = 5.0

#: The fixed seeds of the public (visible) generated cases — the same for every student.
PUBLIC_SEEDS: dict[str, tuple[int, ...]] = {
    "translate_public": (1, 2, 3, 4),
    "validate_public": (5, 6, 7, 8, 9),
}

SPEC = AssignmentSpec(
    name="a4_virtual_mmu",
    notebook="virtual_mmu.ipynb",
    title="The virtual MMU: three spaces and mmu_update",
    parts=(
        Part("mmu_translate", 20, (
            Check("translate_directed", 6, False,
                  "two and three levels, a P2M hole under a table, read-only upper level"),
            Check("translate_public", 6, False, "generated guests with the public seeds"),
            Check("translate_hidden", 8, True, "generated guests with your own hidden seeds"),
        ), "guest virtual -> pseudo-physical -> machine, every reference, the faults",
            ("translate",)),
        Part("mmu_validate", 25, (
            Check("validate_directed", 8, False,
                  "one batch per rule: flags, ownership, grants, not RAM, page tables mapped"
                  " writable, writable pages as tables, the batch stopping"),
            Check("validate_public", 7, False, "generated batches with the public seeds"),
            Check("validate_hidden", 10, True, "generated batches with your own hidden seeds"),
        ), "Xen's mmu_update: validate each (ptr, val), stop at the first failure",
            ("get_page_from_l1e", "mmu_update")),
    ),
)

#: Redacted in the sandbox's virtcore (both parts): the reference translations and validator.
REFERENCES: dict[str, tuple[str, ...]] = {
    "virtcore.xen.mmu": ("XenMM.mmu_update", "XenMM._one_update", "XenMM.mod_entry",
                         "XenMM.get_page_from_l1e", "XenMM.get_page_from_lNe",
                         "XenMM._plain_write", "XenMM.update_va_mapping",
                         "XenMM.zap_foreign_mappings", "PVGuest.translate"),
    "virtcore.xen.nested": ("NestedPaging.translate", "HVMGuest.guest_walk",
                            "HVMGuest.leaf_gpa"),
    "virtcore.xen.shadow": ("ShadowPaging.translate",),
}

#: Flagged by the static scan: the reference methods (a name reached only at run time is
#: caught there: it is redacted in the sandbox).
FORBIDDEN: tuple[str, ...] = tuple(
    f"{mod}.{name}" for mod, names in REFERENCES.items() for name in names)


def sandbox_plan(grade_id: str) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    """Both parts: the references above redacted, and the a4 harness (no reference in it).

    >>> sandbox_plan("mmu_validate")[1]
    ('a4',)
    """
    return dict(REFERENCES), ("a4",)


# ------------------------------------------------------------------------- bits and names

P, W, U, A, D = 0x1, 0x2, 0x4, 0x20, 0x40
PWT, PCD, PAT, G = 0x8, 0x10, 0x80, 0x100


def _make_rng(seed: int) -> Any:
    from virtcore.rng import make_rng

    return make_rng(seed)


# ------------------------------------------------------------------------ translation

def reference_translate(view: GuestView, va: int, write: bool = False
                        ) -> tuple[int | None, list[tuple[int, int, int, int]], str | None]:
    """The reference three-space translation of an auto-translated guest (grader side only).

    For each level, top first: the table's gfn goes through the P2M (a hole: fault
    ``"p2m"``), the entry at ``index`` is read from machine memory (one reference), not
    present → ``"not present"``; the entry's frame field is the next gfn.  After the leaf:
    a write needs W at every level (``"read-only"``), then the data page's gfn goes through
    the P2M.  On a guest without holes the references are the guest-table references of
    :meth:`virtcore.xen.nested.NestedPaging.translate` (which adds the EPT's own), with the
    same result (tested).

    >>> v = GuestView(2, 5, 3, 0, {0: 9, 1: 4, 7: 2}, {9: [0x1007, 0, 0, 0, 0, 0, 0, 0],
    ...               4: [0, 0, 0x7005, 0, 0, 0, 0, 0]})
    >>> maddr, refs, fault = reference_translate(v, 0x44)
    >>> hex(maddr), [(lv, i, hex(a), hex(e)) for lv, i, a, e in refs], fault
    ('0x44', [(2, 0, '0x120', '0x1007'), (1, 2, '0x88', '0x7005')], None)
    >>> reference_translate(v, 0x44, write=True)[2]
    'read-only'
    """
    mask = (1 << view.index_bits) - 1
    refs: list[tuple[int, int, int, int]] = []
    gfn = view.root_gfn
    writable = True
    for level in range(view.levels, 0, -1):
        mfn = view.p2m.get(gfn)
        if mfn is None:
            return None, refs, "p2m"
        index = (va >> (view.page_bits + (level - 1) * view.index_bits)) & mask
        at = (mfn << view.page_bits) + 4 * index
        entry = view.read(at)
        refs.append((level, index, at, entry))
        if not entry & P:
            return None, refs, "not present"
        writable = writable and bool(entry & W)
        gfn = entry >> 12
    if write and not writable:
        return None, refs, "read-only"
    mfn = view.p2m.get(gfn)
    if mfn is None:
        return None, refs, "p2m"
    return (mfn << view.page_bits) | (va & ((1 << view.page_bits) - 1)), refs, None


_SHAPES = ((5, 2, 3), (5, 3, 3))  # (page_bits, levels, index_bits): tiny, and 3 levels


def translate_case(seed: int, label: str | None = None, *, levels: int | None = None,
                   table_hole: bool | None = None, ro_upper: bool | None = None
                   ) -> dict[str, Any]:
    """A generated translation case (JSON data): an auto-translated guest and 8 queries.

    The P2M is a random permutation (a forgotten P2M step never lands on the right frame);
    some leaves are read-only, sometimes an upper-level entry is, some data pages and
    sometimes a table have no P2M entry, some entries are not present but hold junk.

    >>> c = translate_case(3)
    >>> c == translate_case(3), c["kind"], len(c["queries"])
    (True, 'translate', 8)
    """
    rng = _make_rng(seed)
    shape = rng.choice([s for s in _SHAPES if levels is None or s[1] == levels])
    page_bits, nlev, ib = shape
    entries = 1 << ib
    va_pages = 1 << (ib * nlev)
    npages = 28
    mfns = rng.sample(range(1, 96), npages)
    p2m = {g: mfns[g] for g in range(npages)}
    frames: dict[int, list[int]] = {}
    free = list(range(npages))
    rng.shuffle(free)

    def new_table() -> int:
        g = free.pop()
        frames[p2m[g]] = [0] * entries
        return g

    root = new_table()
    tables: dict[tuple[int, int], int] = {}
    mapped: list[int] = []
    upper_ro = rng.random() < 0.3 if ro_upper is None else ro_upper
    for _ in range(rng.randint(3, 6)):
        page = rng.randrange(va_pages)
        if page in mapped:
            continue
        mapped.append(page)
        t = root
        for level in range(nlev, 1, -1):
            idx = (page >> (ib * (level - 1))) & (entries - 1)
            prefix = page >> (ib * (level - 1))
            if (level, prefix) not in tables:
                child = new_table()
                tables[(level, prefix)] = child
                flags = P | U | W
                if upper_ro and rng.random() < 0.5:
                    flags = P | U
                frames[p2m[t]][idx] = (child << 12) | flags | (A if rng.random() < 0.5 else 0)
            t = tables[(level, prefix)]
        data = free.pop()
        flags = P | U | (W if rng.random() < 0.6 else 0) | rng.choice((0, A, A | D))
        frames[p2m[t]][page & (entries - 1)] = (data << 12) | flags
    # holes and junk
    if rng.random() < 0.3:  # a non-present entry with junk in its frame field
        f = rng.choice(sorted(frames))
        i = rng.randrange(entries)
        if not frames[f][i] & P:
            frames[f][i] = rng.randrange(1, 1 << 20) << 12 | W
    leaves = [e >> 12 for f in frames.values() for e in f if e & P]
    data_gfns = [g for g in leaves if p2m.get(g) not in frames]
    if data_gfns and rng.random() < 0.5:
        del p2m[rng.choice(data_gfns)]
    lower = [g for (lv, _), g in tables.items() if lv < nlev]
    if lower and (table_hole if table_hole is not None else rng.random() < 0.25):
        g = rng.choice(lower)
        frames.pop(p2m[g], None)  # the frame is not the guest's any more
        del p2m[g]
    queries = []
    for _ in range(8):
        page = rng.choice(mapped) if mapped and rng.random() < 0.75 else rng.randrange(va_pages)
        va = (page << page_bits) | (4 * rng.randrange(1 << (page_bits - 2)))
        queries.append([va, rng.random() < 0.4])
    return {"kind": "translate", "label": label or f"guest seed={seed}", "seed": seed,
            "config": [page_bits, nlev, ib], "root_gfn": root,
            "p2m": sorted(p2m.items()), "frames": {str(k): v for k, v in sorted(frames.items())},
            "queries": queries}


# -------------------------------------------------------------------------- validation

#: Request kinds of the generated batches; the second group is hostile.
VALID_KINDS = ("map_rw", "map_ro", "unmap", "plain", "map_pt_ro", "l2_new", "preserve_ad",
               "granted")
HOSTILE_KINDS = ("pt_rw", "bad_flags", "foreign", "granted_rw", "xen_frame", "free_frame",
                 "not_ram", "ptr_foreign", "l2_global", "l2_foreign", "l2_writable", "huge")

#: The central rules come up more often: a table mapped writable, a writable page as a table.
_HOSTILE_WEIGHTS = (4, 2, 2, 1, 1, 1, 1, 1, 1, 1, 3, 1)


class _World:
    """The reference machine of a validation case and what the request generator needs."""

    def __init__(self, rng: Any) -> None:
        from virtcore.hw.paging import PagingConfig
        from virtcore.xen.memory import DOMID_XEN, MachineMemory
        from virtcore.xen.mmu import XenMM

        self.rng = rng
        m = MachineMemory(48, 32)
        xen = XenMM(m, PagingConfig.tiny(), tlb_size=0)
        self.xen, self.m = xen, m
        d1 = xen.create_pv_domain(1, 16)
        self.xen_frames = [int(m.alloc(DOMID_XEN)) for _ in range(rng.randint(1, 2))]
        d2 = xen.create_pv_domain(2, 8)
        pages = rng.sample(range(64), rng.randint(4, 7))
        d1.build({p << 5: (rng.randrange(10), rng.random() < 0.6) for p in pages})
        d2.build({p << 5: (rng.randrange(5), rng.random() < 0.5)
                  for p in rng.sample(range(64), 3)})
        self.d1, self.d2 = d1, d2
        tables1 = {d1.mem.p2m[p] for p in d1.table_pfns}
        self.tables1 = sorted(tables1)
        assert d1.baseptr is not None
        self.root1: int = d1.baseptr
        self.l1s = [t for t in self.tables1 if t != self.root1]
        self.data1 = sorted(set(d1.mem.p2m.values()) - tables1)
        self.tables2 = sorted({d2.mem.p2m[p] for p in d2.table_pfns})
        self.data2 = sorted(set(d2.mem.p2m.values()) - set(self.tables2))
        self.writable1 = sorted({mfn for _, mfn, w in d1.leaf_mappings() if w})
        g = rng.sample(self.data2, 2)
        self.grants = [[1, g[0], 1], [1, g[1], 0]]
        xen.foreign = GrantTable(self.grants)
        self.free = [f for f in range(m.nframes) if m.owner[f] < 0]

    def l1_ptr(self) -> int:
        t = self.rng.choice(self.l1s)
        return (t << 5) + 4 * self.rng.randrange(8)

    def l2_ptr(self, empty: bool = True) -> int:
        words = self.m.physical.words
        slots = [i for i in range(8) if not (empty and words[(self.root1 << 3) + i] & P)]
        i = self.rng.choice(slots or list(range(8)))
        return (self.root1 << 5) + 4 * i

    def request(self, kind: str) -> tuple[int, int]:
        rng = self.rng
        pu = P | U
        if kind == "map_rw":
            return self.l1_ptr(), rng.choice(self.data1) << 12 | pu | W
        if kind == "map_ro":
            return self.l1_ptr(), rng.choice(self.data1) << 12 | pu | rng.choice((0, A))
        if kind == "unmap":
            return self.l1_ptr(), 0
        if kind == "plain":
            f = rng.choice(self.data1)
            return (f << 5) + 4 * rng.randrange(8), rng.choice((0, rng.getrandbits(32),
                                                                rng.choice(self.data1) << 12 | P))
        if kind == "map_pt_ro":
            return self.l1_ptr(), rng.choice(self.tables1) << 12 | pu
        if kind == "l2_new":
            return self.l2_ptr(), rng.choice(self.data1) << 12 | pu | W
        if kind == "preserve_ad":
            return self.l1_ptr() | 2, rng.choice(self.data1) << 12 | pu | rng.choice((0, W))
        if kind == "granted":
            _mapper, mfn, w = rng.choice(self.grants)
            return self.l1_ptr(), mfn << 12 | pu | (W if w else 0)
        if kind == "pt_rw":
            return self.l1_ptr(), rng.choice(self.tables1) << 12 | pu | W
        if kind == "bad_flags":
            return self.l1_ptr(), rng.choice(self.data1) << 12 | pu | rng.choice((PWT, PCD, PAT))
        if kind == "foreign":
            granted = {g[1] for g in self.grants}
            mfn = rng.choice([f for f in self.data2 + self.tables2 if f not in granted])
            return self.l1_ptr(), mfn << 12 | pu | rng.choice((0, W))
        if kind == "granted_rw":
            return self.l1_ptr(), self.grants[1][1] << 12 | pu | W
        if kind == "xen_frame":
            return self.l1_ptr(), rng.choice(self.xen_frames) << 12 | pu
        if kind == "free_frame":
            return self.l1_ptr(), rng.choice(self.free) << 12 | pu
        if kind == "not_ram":
            return self.l1_ptr(), rng.randrange(48, 4096) << 12 | pu
        if kind == "ptr_foreign":
            t = rng.choice(self.tables2)
            return (t << 5) + 4 * rng.randrange(8), rng.choice(self.data1) << 12 | pu
        if kind == "l2_global":
            return self.l2_ptr(), rng.choice(self.l1s) << 12 | pu | W | G
        if kind == "l2_foreign":
            return self.l2_ptr(), rng.choice(self.data2) << 12 | pu | W
        if kind == "l2_writable":
            mfn = rng.choice(self.writable1 or self.data1)
            return self.l2_ptr(), mfn << 12 | pu | W
        if kind == "huge":
            return self.l1_ptr(), (1 << 32) | rng.choice(self.data1) << 12 | pu
        raise ValueError(f"unknown request kind {kind!r}")


def validate_case(seed: int, label: str | None = None, kinds: Iterable[str] | None = None
                  ) -> dict[str, Any]:
    """A generated validation case (JSON data): the machine state and a batch from d1.

    >>> c = validate_case(5)
    >>> c == validate_case(5), c["kind"], c["caller"], 2 <= len(c["reqs"]) <= 7
    (True, 'validate', 1, True)
    """
    rng = _make_rng(seed)
    world = _World(rng)
    if kinds is None:
        kinds = [rng.choices(HOSTILE_KINDS, weights=_HOSTILE_WEIGHTS)[0] if rng.random() < 0.2
                 else rng.choice(VALID_KINDS) for _ in range(rng.randint(2, 7))]
    reqs = [list(world.request(k)) for k in kinds]
    return {"kind": "validate", "label": label or f"batch seed={seed}", "seed": seed,
            "caller": 1, "reqs": reqs, "state": capture(world.xen)}


def expected_validation(case: dict[str, Any]) -> dict[str, Any]:
    """The reference outcome: ``XenMM.mmu_update`` on the restored state, here."""
    xen = restore(case["state"])
    res = xen.mmu_update(int(case["caller"]), [tuple(r) for r in case["reqs"]])
    return {"rc": res.rc, "done": res.done, "state": state_after(xen)}


# ------------------------------------------------------------------------ directed cases

#: Directed cases per part: (name, generator keywords).  Visible: the notebook shows them.
DIRECTED: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "mmu_translate": (
        ("two levels, no holes", {"seed": 101, "levels": 2, "table_hole": False,
                                  "ro_upper": False}),
        ("three levels, no holes", {"seed": 102, "levels": 3, "table_hole": False,
                                    "ro_upper": False}),
        ("three levels, a table without a P2M entry", {"seed": 103, "levels": 3,
                                                       "table_hole": True}),
        ("read-only upper-level entries", {"seed": 104, "levels": 2, "ro_upper": True}),
    ),
    "mmu_validate": (
        ("valid updates: map, map read-only, unmap, plain write",
         {"seed": 201, "kinds": ("map_rw", "map_ro", "unmap", "plain")}),
        ("a page table mapped writable, then more", {"seed": 202,
                                                     "kinds": ("map_pt_ro", "pt_rw", "map_ro")}),
        ("bad L1 flags", {"seed": 203, "kinds": ("map_ro", "bad_flags", "unmap")}),
        ("another domain's frame, not granted",
         {"seed": 204, "kinds": ("foreign",)}),
        ("grants: allowed, and writable where only read-only was granted",
         {"seed": 205, "kinds": ("granted", "granted_rw", "map_ro")}),
        ("not RAM", {"seed": 206, "kinds": ("not_ram",)}),
        ("an update in another domain's page table", {"seed": 207,
                                                      "kinds": ("map_ro", "ptr_foreign")}),
        ("a new L1 table, then a writable page used as a page table",
         {"seed": 208, "kinds": ("l2_new", "map_rw", "l2_writable")}),
        ("G in an L2 entry", {"seed": 209, "kinds": ("l2_global",)}),
        ("Xen's own frame", {"seed": 210, "kinds": ("xen_frame",)}),
        ("a free frame", {"seed": 211, "kinds": ("free_frame", "unmap")}),
        ("an entry value above 32 bits", {"seed": 212, "kinds": ("huge",)}),
        ("another domain's frame as a page table", {"seed": 213, "kinds": ("l2_foreign",)}),
        ("MMU_PT_UPDATE_PRESERVE_AD keeps A and D", {"seed": 214,
                                                     "kinds": ("preserve_ad", "preserve_ad")}),
    ),
}


def _directed(gid: str) -> list[dict[str, Any]]:
    out = []
    for name, kw in DIRECTED[gid]:
        kw = dict(kw)
        seed = kw.pop("seed")
        label = f"directed case {name!r}"
        case = (translate_case(seed, label, **kw) if gid == "mmu_translate"
                else validate_case(seed, label, **kw))
        out.append({**case, "seed": None})
    return out


def cases(part: Part, check: Check, seed_of: Callable[[int], int]) -> list[dict[str, Any]]:
    """The cases of ``check`` (see :mod:`autograder.assignments`).

    >>> part = SPEC.part("mmu_validate")
    >>> [c["seed"] for c in cases(part, part.checks[1], lambda k: k)]
    [5, 6, 7, 8, 9]
    >>> len(cases(part, part.checks[2], lambda k: 1000 + k)) == HIDDEN_CASES
    True
    """
    gid = part.grade_id
    make = translate_case if gid == "mmu_translate" else validate_case
    if check.name.endswith("_directed"):
        return _directed(gid)
    if not check.hidden:
        return [make(s, f"public case seed={s}") for s in PUBLIC_SEEDS[check.name]]
    return [make(seed_of(k), f"hidden case #{k + 1}") for k in range(HIDDEN_CASES)]


# ---------------------------------------------------------------------------- comparing

_PGT = {0: "no type", 1: "L1 table", 2: "L2 table", 3: "L3 table", 4: "L4 table",
        7: "writable page"}


def _errno(rc: object) -> str:
    from virtcore.xen.mmu import errno_name

    return f"{rc} ({errno_name(rc)})" if isinstance(rc, int) and rc < 0 else repr(rc)


def _frame(state: dict[str, Any], mfn: int) -> str:
    if not 0 <= mfn < int(state["nframes"]):
        return f"mfn {mfn:#x} — not RAM"
    owner = state["owner"][mfn]
    if owner < 0:
        return f"mfn {mfn:#x} — a free frame"
    who = "Xen's" if owner == 0x7FF2 else f"d{owner}'s"
    kind = "ordinary page"
    if state["type_count"][mfn]:
        kind = _PGT.get(state["type"][mfn], "page")
    granted = [g for g in state["grants"] if g[1] == mfn]
    extra = f", granted to d1 {'writable' if granted[0][2] else 'read-only'}" if granted else ""
    return f"mfn {mfn:#x} — {who} {kind}{extra}"


def _flags(val: int) -> str:
    names = [n for bit, n in ((P, "P"), (W, "W"), (U, "U"), (PWT, "PWT"), (PCD, "PCD"),
                              (A, "A"), (D, "D"), (PAT, "PAT"), (G, "G")) if val & bit]
    return " ".join(names) or "no flags"


def describe_request(state: dict[str, Any], ptr: int, val: int) -> str:
    """A request in words, against the case's initial state.

    >>> c = validate_case(202, kinds=("pt_rw",))
    >>> print(describe_request(c["state"], *c["reqs"][0]))
    ptr 0x1c4 = entry 1 of mfn 0xe (d1's L1 table); val 0x00005007 = mfn 0x5 — d1's L1 table — P W U
    """
    cmd = ptr & 3
    base = ptr & ~3
    mfn, index = base >> 5, (base & 31) >> 2
    where = f"ptr {base:#x} = entry {index} of {_frame(state, mfn).replace(' — ', ' (', 1)})"
    if cmd == 2:
        where += " MMU_PT_UPDATE_PRESERVE_AD"
    if val >= 1 << 32:
        return f"{where}; val {val:#x} (more than 32 bits)"
    if not val & P:
        return f"{where}; val {val:#010x} (not present)"
    return f"{where}; val {val:#010x} = {_frame(state, val >> 12)} — {_flags(val & 0xFFF)}"


def _hint(state: dict[str, Any], ptr: int, val: int, rc: int) -> str:
    mfn = (ptr & ~3) >> 5
    if rc == -16 and val & W and 0 <= val >> 12 < state["nframes"] and state["type_count"][
            val >> 12] and state["type"][val >> 12] in (1, 2):
        return " — a page-table page is never mapped writable"
    if rc == -22 and val & 0x198 and val & P:
        return " — check the flag bits first (L1_DISALLOW_MASK, BASE_DISALLOW_MASK)"
    if rc == -22 and (state["owner"][mfn] if 0 <= mfn < state["nframes"] else -1) != 1:
        return " — the frame holding ptr must be the caller's"
    if rc == -1:
        return " — a frame that is not RAM: -EPERM"
    return ""


def _compare_walks(case: dict[str, Any], got: Any) -> str | None:
    if not isinstance(got, dict) or not isinstance(got.get("walks"), list) or len(
            got["walks"]) != len(case["queries"]):
        return "the worker returned no usable result for this guest"
    view = view_of(case)
    for (va, write), mine in zip(case["queries"], got["walks"]):
        access = "write" if write else "read"
        if not isinstance(mine, list) or len(mine) != 3:
            return f"{access} of {va:#x}: no usable result"
        if mine[0] == "problem":
            return f"{access} of {va:#x}: {mine[1]}"
        exp_maddr, exp_refs, exp_fault = reference_translate(view, va, write)
        gm, grefs, gfault = mine
        for k, e in enumerate(exp_refs):
            if k >= len(grefs):
                return (f"{access} of {va:#x}: expected {len(exp_refs)} references, got"
                        f" {len(grefs)} — the walk stopped too early (level {e[0]} is read"
                        " next)")
            g = tuple(grefs[k])
            if g != e:
                what = ["level", "index", "entry maddr", "entry"]
                diffs = [f"{what[i]} expected {e[i]:#x}, got {g[i]:#x}" for i in range(4)
                         if e[i] != g[i]]
                hint = ""
                if e[2] != g[2] and e[1] == g[1]:
                    hint = (" — a table's gfn must go through the P2M before the table can be"
                            " read (its maddr is p2m[gfn] << page_bits)")
                elif e[1] != g[1]:
                    hint = " — the index of level L is bits of the va above the offset"
                return f"{access} of {va:#x}: reference #{k + 1}: " + "; ".join(diffs) + hint
        if len(grefs) > len(exp_refs):
            return (f"{access} of {va:#x}: expected {len(exp_refs)} references, got"
                    f" {len(grefs)}" + (f" — the walk ends with fault {exp_fault!r}"
                                        if exp_fault else " — the walk has no more levels"))
        if gfault != exp_fault:
            return f"{access} of {va:#x}: fault expected {exp_fault!r}, got {gfault!r}"
        if gm != exp_maddr:
            hint = ""
            if exp_maddr is not None and gm is not None and (gm & 31) == (exp_maddr & 31):
                hint = " — the data page's gfn goes through the P2M too"
            return (f"{access} of {va:#x}: maddr expected {_hx(exp_maddr)}, got {_hx(gm)}"
                    + hint)
    return None


def _hx(v: object) -> str:
    return f"{v:#x}" if isinstance(v, int) else repr(v)


def _compare_validation(case: dict[str, Any], got: Any) -> str | None:
    if not isinstance(got, dict):
        return "the worker returned no usable result for this batch"
    if "problem" in got:
        return str(got["problem"])
    exp = expected_validation(case)
    st, reqs = case["state"], case["reqs"]
    if got.get("rc") != exp["rc"] or got.get("done") != exp["done"]:
        k = exp["done"]
        if k < len(reqs):
            ptr, val = reqs[k]
            what = (f"request #{k + 1} ({describe_request(st, ptr, val)}) must be rejected"
                    f" with {_errno(exp['rc'])}{_hint(st, ptr, val, exp['rc'])}")
        else:
            what = f"all {len(reqs)} requests are valid (rc 0)"
        msg = (f"rc expected {_errno(exp['rc'])}, got {_errno(got.get('rc'))}; done expected"
               f" {exp['done']}, got {got.get('done')!r}: {what}")
        if isinstance(got.get("done"), int) and got["done"] > k and exp["rc"] and got.get(
                "rc") == exp["rc"]:
            msg += " — the batch stops at the first failure"
        return msg
    mine = got.get("state")
    if not isinstance(mine, dict):
        return "no state came back"
    for field, why in (("words", "memory"), ("owner", "owner"), ("type", "type"),
                       ("type_count", "type count"), ("count", "reference count"),
                       ("validated", "validated"), ("pinned", "pinned"),
                       ("allocated", "allocated")):
        e, g = exp["state"][field], mine.get(field)
        if e == g:
            continue
        if not isinstance(g, list) or len(g) != len(e):
            return f"the {why} table came back malformed"
        i = next(i for i in range(len(e)) if e[i] != g[i])
        if field == "words":
            return (f"rc and done are right, but machine memory differs at maddr {4 * i:#x}"
                    f" (entry {i % 8} of mfn {i // 8:#x}): expected {e[i]:#010x}, got"
                    f" {g[i]:#010x}")
        hint = ""
        if field in ("count", "type_count"):
            hint = (" — a present L1 entry holds a reference on its frame (get_page), a"
                    " writable one a PGT_writable_page type reference too; the old entry's"
                    " are dropped (put_page_from_l1e)")
        return (f"rc and done are right, but the frame table differs: mfn {i:#x} {why}"
                f" expected {e[i]}, got {g[i]}{hint}")
    return None


def compare(part: Part, check: Check, case: dict[str, Any], got: Any) -> str | None:
    """Compare the student's result with the reference (computed here); None when they agree.

    >>> ns = reference_namespace()
    >>> part = SPEC.part("mmu_validate")
    >>> case = validate_case(202, kinds=("map_ro", "pt_rw", "map_ro"))
    >>> compare(part, part.checks[0], case, run_case(build(ns, part.grade_id, None), case))
    """
    if part.grade_id == "mmu_translate":
        return _compare_walks(case, got)
    return _compare_validation(case, got)


def reference_namespace() -> dict[str, Any]:
    """The reference as a submission — for tests and doctests (never sent to a worker):
    ``translate`` is :func:`reference_translate`; ``get_page_from_l1e`` / ``mmu_update`` call
    the library's ``XenMM`` methods.

    >>> sorted(reference_namespace())
    ['get_page_from_l1e', 'mmu_update', 'translate']
    """
    from virtcore.xen.mmu import XenMM

    def get_page_from_l1e(xen: Any, l1e: int, l1e_owner: int, pg_owner: int) -> int:
        return XenMM.get_page_from_l1e(xen, l1e, l1e_owner, pg_owner)

    def mmu_update(xen: Any, caller: int, reqs: list[tuple[int, int]]) -> tuple[int, int]:
        res = XenMM.mmu_update(xen, caller, reqs)
        return res.rc, res.done

    return {"translate": reference_translate, "get_page_from_l1e": get_page_from_l1e,
            "mmu_update": mmu_update}


def check_seeds(grade_id: str, namespace: dict[str, Any], seeds: Iterable[int]) -> list[str]:
    """Run a part's generated cases with these ``seeds`` on ``namespace``'s functions, in this
    process: the failure messages ([] when all pass).  For the notebook's own test cells.

    >>> check_seeds("mmu_translate", reference_namespace(), (7, 8))
    []
    """
    part = SPEC.part(grade_id)
    worker_setup(grade_id)
    impl = build(namespace, grade_id, None)
    make = translate_case if grade_id == "mmu_translate" else validate_case
    out = []
    for seed in seeds:
        case = make(seed)
        try:
            msg = compare(part, part.checks[-1], case, run_case(impl, case))
        except Exception as e:  # a bug of the grader would surface here, not be hidden
            msg = f"{type(e).__name__}: {e}"
        if msg is not None:
            out.append(f"{case['label']}: {msg}")
    return out

