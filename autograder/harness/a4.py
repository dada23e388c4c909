"""Worker side of assignment 4 (the virtual MMU, 虚拟MMU): the student's functions on a case.

Staged into the sandbox with a copy of virtcore whose reference translations
(``PVGuest.translate``, ``NestedPaging.translate``, ``ShadowPaging.translate``,
``HVMGuest.guest_walk`` / ``leaf_gpa``) and reference validator (``XenMM.mmu_update`` and
what it is made of: ``_one_update``, ``mod_entry``, ``get_page_from_l1e``,
``get_page_from_lNe``, ``_plain_write``, ``update_va_mapping``) are redacted.  What stays:
the frame table and its reference counts (:class:`virtcore.xen.memory.MachineMemory`), the
release side (``XenMM.put_page_from_l1e`` / ``put_page_from_lNe``) and the table-validation
hook, which calls the *student's* ``get_page_from_l1e``.

A case carries its whole state as data: this module rebuilds it (:func:`restore`) without
running any reference, runs the student's function and returns plain JSON; the grader runs
the reference on the same state in its own process and compares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["FUNCTIONS", "GrantTable", "GuestView", "build", "capture", "restore", "run_case",
           "state_after", "view_of", "worker_setup"]

#: Part → the functions its cell must define.
FUNCTIONS: dict[str, tuple[str, ...]] = {"mmu_translate": ("translate",),
                                         "mmu_validate": ("get_page_from_l1e", "mmu_update")}
#: The faults a translation may end with.
FAULTS = ("not present", "p2m", "read-only")


class GuestView:
    """What the student's ``translate`` gets: an auto-translated guest's paging state.

    Attributes
    ----------
    levels, page_bits, index_bits : int
        Table levels, bits of the page offset, index bits per level (entries are 4-byte words;
        an entry's frame field is bits 31:12, the flags bits 11:0 — virtcore's PTE format).
    root_gfn : int
        The guest's root table, as a guest frame number (what its CR3 holds).
    p2m : dict of int to int
        gfn → mfn (the P2M, 物理到机器映射); a missing gfn is a hole.
    """

    def __init__(self, levels: int, page_bits: int, index_bits: int, root_gfn: int,
                 p2m: dict[int, int], frames: dict[int, list[int]]) -> None:
        self.levels = levels
        self.page_bits = page_bits
        self.index_bits = index_bits
        self.root_gfn = root_gfn
        self.p2m = dict(p2m)
        self._frames = {k: list(v) for k, v in frames.items()}

    def read(self, maddr: int) -> int:
        """The 32-bit word at machine address ``maddr`` (4-byte aligned; 0 where nothing is)."""
        if not isinstance(maddr, int) or maddr < 0 or maddr % 4:
            raise ValueError(f"read({maddr!r}): a machine address is a non-negative multiple of 4")
        words = self._frames.get(maddr >> self.page_bits)
        if words is None:
            return 0
        return words[(maddr & ((1 << self.page_bits) - 1)) >> 2]

    def __repr__(self) -> str:
        return (f"GuestView({self.levels} levels, {1 << self.page_bits}-byte pages, root gfn"
                f" {self.root_gfn:#x}, {len(self.p2m)} P2M entries)")


def view_of(case: dict[str, Any]) -> GuestView:
    """The :class:`GuestView` of a translation case."""
    page_bits, levels, index_bits = case["config"]
    return GuestView(int(levels), int(page_bits), int(index_bits), int(case["root_gfn"]),
                     {int(g): int(m) for g, m in case["p2m"]},
                     {int(k): [int(w) for w in v] for k, v in case["frames"].items()})


class GrantTable:
    """The grant hook of a validation case: ``(mapper, mfn, writable)`` triples it allows.

    A writable grant allows read-only mappings too (``GTF_readonly`` clear).
    """

    def __init__(self, grants: list[list[int]]) -> None:
        self.grants = {(int(a), int(b), bool(w)) for a, b, w in grants}
        self.maps: list[tuple[int, int, bool, int]] = []

    def may_map(self, mapper: int, mfn: int, writable: bool) -> bool:
        return (mapper, mfn, True) in self.grants or (
            not writable and (mapper, mfn, False) in self.grants)

    def mapped(self, mapper: int, mfn: int, writable: bool) -> None:
        self.maps.append((mapper, mfn, writable, 1))

    def unmapped(self, mapper: int, mfn: int, writable: bool) -> None:
        self.maps.append((mapper, mfn, writable, -1))


_FIELDS = ("owner", "type", "type_count", "count", "pinned", "validated", "allocated", "m2p")


def capture(xen: Any) -> dict[str, Any]:
    """A validation case's state as JSON data (the grader calls it on the reference XenMM)."""
    m = xen.machine
    return {"nframes": m.nframes, "frame_size": m.frame_size,
            "config": [xen.config.page_bits, xen.config.levels, xen.config.index_bits],
            **{f: [int(v) for v in getattr(m, f)] for f in _FIELDS},
            "words": list(m.physical.words),
            "domains": [[d, dm.max_pages, dm.tot_pages, sorted(dm.p2m.items())]
                        for d, dm in sorted(m.domains.items())],
            "guests": [[d, bool(g.privileged), g.baseptr]
                       for d, g in sorted(xen.guests.items())],
            "grants": sorted([a, b, int(w)] for a, b, w in getattr(xen.foreign, "grants", ()))}


def restore(state: dict[str, Any]) -> Any:
    """A fresh XenMM in exactly the captured state (no reference code runs)."""
    from virtcore.hw.paging import PagingConfig
    from virtcore.xen.memory import INVALID_M2P_ENTRY, MachineMemory
    from virtcore.xen.mmu import XenMM

    page_bits, levels, index_bits = state["config"]
    m = MachineMemory(int(state["nframes"]), int(state["frame_size"]))
    xen = XenMM(m, PagingConfig(page_bits=page_bits, levels=levels, index_bits=index_bits),
                tlb_size=0)
    n = m.nframes
    for _ in range(n):  # the heap: every frame taken, then the free ones given back
        m.alloc(0x7FF2)
    owner = [int(v) for v in state["owner"]]
    for mfn in range(n):
        if owner[mfn] < 0:
            m.free(mfn)  # type: ignore[arg-type]
    for d, max_pages, tot, p2m in state["domains"]:
        dm = m.new_domain_memory(int(d), int(max_pages))
        dm.tot_pages = int(tot)
        dm.p2m = {int(a): int(b) for a, b in p2m}
    m.owner = owner
    m.type = [int(v) for v in state["type"]]
    m.type_count = [int(v) for v in state["type_count"]]
    m.count = [int(v) for v in state["count"]]
    m.pinned = [bool(v) for v in state["pinned"]]
    m.validated = [bool(v) for v in state["validated"]]
    m.allocated = [bool(v) for v in state["allocated"]]
    m.m2p = [int(v) if int(v) >= 0 else INVALID_M2P_ENTRY for v in state["m2p"]]
    m.physical.words[:] = [int(w) for w in state["words"]]
    for d, privileged, base in state["guests"]:
        g = xen.adopt_domain(int(d), privileged=bool(privileged))
        if base is not None:
            g.baseptr = int(base)
    xen.foreign = GrantTable(state["grants"])
    return xen


def state_after(xen: Any) -> dict[str, list[int]]:
    """The machine state a batch left (types and validation as in force: count 0 = none)."""
    s = xen.machine.snapshot()
    return {"words": list(s.words), "owner": list(s.owner), "type": list(s.type),
            "type_count": list(s.type_count), "count": list(s.count),
            "pinned": [int(p) for p in s.pinned], "validated": [int(v) for v in s.validated],
            "allocated": [int(a) for a in s.allocated]}


def worker_setup(grade_id: str) -> None:
    """Import what the runs need before privileges drop."""
    import virtcore.hw.paging
    import virtcore.xen.memory
    import virtcore.xen.mmu  # noqa: F401


def build(namespace: dict[str, Any], grade_id: str, setup: Any) -> dict[str, Callable[..., Any]]:
    """The student's functions for the part, from the executed cells (BuildError if missing)."""
    from autograder.worker import BuildError

    out = {}
    for name in FUNCTIONS[grade_id]:
        fn = namespace.get(name)
        if fn is None:
            raise BuildError(f"{name} is not defined: the cell {grade_id} must define {name}")
        if not callable(fn):
            raise BuildError(f"{name} is not a function (it is {type(fn).__name__})")
        out[name] = fn
    return out


def _int(x: object) -> int | None:
    return int(x) if isinstance(x, int) and not isinstance(x, bool) else None


def _walk_json(res: object) -> list[Any]:
    """``(maddr, refs, fault)`` as ``[maddr, [[level, index, maddr, entry], …], fault]`` or
    ``["problem", text]``."""
    if not isinstance(res, (tuple, list)) or len(res) != 3:
        return ["problem", f"translate returned {_short(res)}, not (maddr, refs, fault)"]
    maddr, refs, fault = res
    if maddr is not None and _int(maddr) is None:
        return ["problem", f"maddr is {_short(maddr)}, not an int or None"]
    if not isinstance(refs, (list, tuple)):
        return ["problem", f"refs is {_short(refs)}, not a list"]
    out = []
    for r in refs[:64]:
        if not isinstance(r, (list, tuple)) or len(r) != 4 or any(_int(v) is None for v in r):
            return ["problem", f"a reference is {_short(r)}, not (level, index, maddr, entry)"]
        out.append([int(v) for v in r])
    if fault is not None and fault not in FAULTS:
        return ["problem", f"fault is {_short(fault)}, not None or one of {FAULTS}"]
    return [None if maddr is None else int(maddr), out, fault]


def run_case(impl: dict[str, Callable[..., Any]], case: dict[str, Any]) -> dict[str, Any]:
    """Run one case: a translation case's queries, or one ``mmu_update`` batch."""
    if case["kind"] == "translate":
        view = view_of(case)
        return {"walks": [_walk_json(impl["translate"](view, int(va), bool(w)))
                          for va, w in case["queries"]]}
    xen = restore(case["state"])
    student_l1e = impl["get_page_from_l1e"]

    def hook(l1e: int, l1e_owner: int, pg_owner: int) -> int:
        return student_l1e(xen, l1e, l1e_owner, pg_owner)

    xen.get_page_from_l1e = hook  # table validation (alloc_l1_table) uses the student's check
    res = impl["mmu_update"](xen, int(case["caller"]), [(int(p), int(v)) for p, v in case["reqs"]])
    if not isinstance(res, (tuple, list)) or len(res) != 2 or any(_int(v) is None for v in res):
        return {"problem": f"mmu_update returned {_short(res)}, not (rc, done)"}
    return {"rc": int(res[0]), "done": int(res[1]), "state": state_after(xen)}


def _short(x: object) -> str:
    try:
        r = repr(x)
    except Exception:
        r = f"<{type(x).__name__}>"
    return r if len(r) <= 60 else r[:59] + "…"
