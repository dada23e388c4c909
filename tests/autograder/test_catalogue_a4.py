"""Assignment 4 (the virtual MMU): the submission catalogue graded by the real pipeline (the
bubblewrap sandbox, per-submission hidden cases, the course's source notebook as the set-up),
and the assignment module's own pieces — the state a worker rebuilds is the reference's, the
redaction covers the reference functions, the cases include hostile updates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest

from autograder import sandbox
from autograder.assignments import a4_virtual_mmu as a4
from autograder.grade import NotebookResult, feedback_text, grade_notebook, run_visible
from autograder.harness.a4 import restore, state_after

A4 = "a4_virtual_mmu"
SOURCE = Path(__file__).resolve().parents[2] / "course" / "source" / A4 / "virtual_mmu.ipynb"
FULL = {"mmu_translate": 20.0, "mmu_validate": 25.0}


def _cells(ag: Any, *variants: str) -> dict[str, str]:
    cells = ag.cells_of("a4_correct.py")
    for v in variants:
        cells.update(ag.cells_of(v))
    return cells


def _grade(ag: Any, tmp_path: Path, cells: dict[str, str], student: str = "alice",
           **kw: Any) -> NotebookResult:
    path = tmp_path / student / "virtual_mmu.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(ag.notebook(A4, cells, preamble="# the set-up comes from the source"), path)
    return grade_notebook(path, A4, student, ag.SECRET, source_notebook=SOURCE, **kw)


def _check(result: NotebookResult, name: str) -> Any:
    return next(c for p in result.parts for c in p.checks if c.name == name)


# -- the catalogue, through grade_notebook (sandboxed workers) ---------------------------------


def test_correct_solution_scores_full_marks(ag, tmp_path):
    result = _grade(ag, tmp_path, _cells(ag))
    assert result.status == "ok", result.reason
    assert ag.scores(result) == {gid: (pts, "ok") for gid, pts in FULL.items()}
    assert result.score == result.max_score == 45
    assert all(c.passed and c.seed is None for p in result.parts for c in p.checks)


def test_released_stub_scores_zero_as_not_implemented(ag, tmp_path):
    result = _grade(ag, tmp_path, ag.cells_of("a4_stub.py"))
    assert ag.scores(result) == dict.fromkeys(FULL, (0.0, "not implemented"))
    assert all("NotImplementedError" in c.message for p in result.parts for c in p.checks)


@pytest.fixture(scope="module")
def close_but_wrong(ag, tmp_path_factory) -> dict[str, NotebookResult]:
    """One notebook, a fault in each part: the walk takes each index one level off, and
    get_page_from_l1e accepts a writable mapping of a page table — graded for two students,
    and alice's file again."""
    tmp = tmp_path_factory.mktemp("a4-wrong")
    cells = _cells(ag, "a4_off_by_one_level.py", "a4_writable_pt.py")
    out = {"alice": _grade(ag, tmp, cells, "alice"), "bob": _grade(ag, tmp, cells, "bob")}
    # the same file again (a rewritten notebook has new cell ids: new bytes, new hidden cases)
    out["alice again"] = grade_notebook(tmp / "alice" / "virtual_mmu.ipynb", A4, "alice",
                                        ag.SECRET, source_notebook=SOURCE)
    return out


def test_off_by_one_level_scores_zero_on_translate_and_says_where(close_but_wrong):
    tr = close_but_wrong["alice"].part("mmu_translate")
    assert (tr.score, tr.status) == (0.0, "ok")
    assert all(not c.passed for c in tr.checks)
    assert "index expected" in tr.checks[0].message
    assert "the index of level L is bits of the va" in tr.checks[0].message


def test_accepting_a_writable_page_table_costs_the_batches_that_try_it(close_but_wrong):
    va = close_but_wrong["alice"].part("mmu_validate")
    assert va.status == "ok"
    directed, public = va.checks[0], va.checks[1]
    assert directed.points == pytest.approx(8 * 13 / 14, abs=1e-3)  # the directed pt_rw batch
    assert public.points == pytest.approx(7 * 4 / 5, abs=1e-3)
    assert 0 < va.score < 25
    assert "must be rejected with -16 (-EBUSY)" in directed.message
    assert "a page-table page is never mapped writable" in directed.message
    assert "d1's L1 table" in directed.message


def test_hidden_cases_differ_per_student_never_show_a_seed_and_regrading_is_identical(
        close_but_wrong):
    alice, bob, again = (close_but_wrong[k] for k in ("alice", "bob", "alice again"))
    for r in (alice, bob):
        hidden = _check(r, "translate_hidden")
        assert not hidden.passed and hidden.seed is None and "seed=" not in hidden.message
        assert "seed=" in hidden.instructor  # the instructor's report names it
    assert _check(alice, "translate_hidden").instructor != _check(bob,
                                                                  "translate_hidden").instructor
    strip = lambda r: {**r.to_json(), "seconds": 0}  # noqa: E731
    assert strip(again) == strip(alice)
    visible = {c.name: c.message for p in alice.parts for c in p.checks if not c.hidden}
    assert visible == {c.name: c.message for p in bob.parts for c in p.checks if not c.hidden}


def test_forgetting_the_p2m_and_not_stopping_the_batch(ag, tmp_path):
    result = _grade(ag, tmp_path, _cells(ag, "a4_forgets_p2m.py", "a4_no_stop.py"))
    tr, va = result.part("mmu_translate"), result.part("mmu_validate")
    assert (tr.score, tr.status) == (0.0, "ok")
    assert "must go through the P2M" in tr.checks[0].message
    assert va.status == "ok" and 0 < va.score < 25
    assert va.checks[0].points == pytest.approx(8 * 10 / 14, abs=1e-3)
    assert va.checks[1].points == pytest.approx(7 * 3 / 5, abs=1e-3)
    assert "the batch stops at the first failure" in va.checks[0].message


def test_forged_results_score_nothing(ag, tmp_path):
    result = _grade(ag, tmp_path, _cells(ag, "a4_forges_results.py"))
    assert result.score == 0
    assert all(not c.passed for p in result.parts for c in p.checks)


def test_a_walk_that_never_ends_times_out_and_costs_only_its_part(ag, tmp_path, monkeypatch):
    monkeypatch.setattr(a4, "CASE_TIMEOUT", 1.0)
    result = _grade(ag, tmp_path, _cells(ag, "a4_loops_forever.py"))
    assert ag.scores(result) == {"mmu_translate": (0.0, "timeout"), "mmu_validate": (25.0, "ok")}
    assert "(an infinite loop?)" in result.part("mmu_translate").reason


def test_calling_the_reference_validator_is_integrity_on_that_part_only(ag, tmp_path):
    result = _grade(ag, tmp_path, _cells(ag, "a4_calls_reference.py"))
    assert ag.scores(result) == {"mmu_translate": (20.0, "ok"),
                                 "mmu_validate": (0.0, "integrity")}
    assert "virtcore.xen.mmu.XenMM" in result.part("mmu_validate").reason
    assert "Part mmu_validate: 0 / 25 (integrity)" in feedback_text(result)


# -- the module's pieces, in this process ----------------------------------------------------------


def test_the_sandbox_copy_has_no_reference_translation_or_validator():
    lib = sandbox.stage(A4, "mmu_validate")
    mmu = (lib / "virtcore" / "xen" / "mmu.py").read_text()
    nested = (lib / "virtcore" / "xen" / "nested.py").read_text()
    for name in ("XenMM.mmu_update", "XenMM._one_update", "XenMM.mod_entry",
                 "XenMM.get_page_from_l1e", "XenMM.get_page_from_lNe", "PVGuest.translate"):
        assert f"virtcore.xen.mmu.{name}: {sandbox.REDACTED_MARK}" in mmu, name
    assert "NestedPaging.translate: " in nested and "HVMGuest.guest_walk: " in nested
    assert "Could not get page type" not in mmu  # the bodies (and their comments) are gone
    assert "put_page_from_l1e" in mmu and "def _alloc_page_type" in mmu  # the rest stays
    assert sorted(p.name for p in (lib / "autograder" / "harness").glob("*.py")) == [
        "__init__.py", "a4.py"]


@pytest.mark.parametrize("seed", [3, 17, 42, 101])
def test_a_restored_state_behaves_exactly_like_the_reference_machine(seed):
    rng = a4._make_rng(seed)
    world = a4._World(rng)
    kinds = [rng.choice(a4.VALID_KINDS + a4.HOSTILE_KINDS) for _ in range(6)]
    reqs = [world.request(k) for k in kinds]
    case = {"state": a4.capture(world.xen), "caller": 1, "reqs": [list(r) for r in reqs]}
    direct = world.xen.mmu_update(1, reqs)
    again = restore(case["state"])
    res = again.mmu_update(1, reqs)
    assert (res.rc, res.done) == (direct.rc, direct.done)
    assert state_after(again) == state_after(world.xen)
    again.machine.check_invariants()


def test_the_cases_include_every_kind_of_rejection():
    part = a4.SPEC.part("mmu_validate")
    cases = [c for check in part.checks[:2] for c in a4.cases(part, check, lambda k: k)]
    rcs = {a4.expected_validation(c)["rc"] for c in cases}
    assert {0, -1, -16, -22} <= rcs  # ok, -EPERM, -EBUSY, -EINVAL
    stopped = [c for c in cases if 0 < a4.expected_validation(c)["done"] < len(c["reqs"])]
    assert stopped  # batches that fail part-way: the later requests must not be applied
    faults = {a4.reference_translate(a4.view_of(c), va, w)[2]
              for check in a4.SPEC.part("mmu_translate").checks[:2]
              for c in a4.cases(a4.SPEC.part("mmu_translate"), check, lambda k: k)
              for va, w in c["queries"]}
    assert faults == {None, "not present", "p2m", "read-only"}


def test_the_notebooks_visible_checks_are_the_graders(ag):
    ns: dict[str, Any] = {}
    exec(compile(_preamble(), "<preamble>", "exec"), ns)
    for src in _cells(ag, "a4_no_stop.py").values():
        exec(src, ns)
    checks = {c.name: c for c in run_visible(A4, "mmu_validate", ns)}
    assert checks["validate_directed"].points == pytest.approx(8 * 10 / 14, abs=1e-3)
    assert checks["validate_public"].points == pytest.approx(7 * 3 / 5, abs=1e-3)
    assert "the batch stops at the first failure" in checks["validate_directed"].message


def test_reference_translation_on_a_hand_traced_guest():
    # root gfn 0 at mfn 9; L2 entry 0 -> gfn 1 (mfn 4); L1 entry 2 -> gfn 7 (mfn 2), read-only
    view = a4.GuestView(2, 5, 3, 0, {0: 9, 1: 4, 7: 2},
                        {9: [0x1007] + [0] * 7, 4: [0, 0, 0x7005] + [0] * 5})
    assert a4.reference_translate(view, 0x44) == (
        0x44, [(2, 0, 0x120, 0x1007), (1, 2, 0x88, 0x7005)], None)
    assert a4.reference_translate(view, 0x44, True)[2] == "read-only"
    assert a4.reference_translate(view, 0x64) == (None, [(2, 0, 0x120, 0x1007),
                                                         (1, 3, 0x8C, 0)], "not present")
    del view.p2m[7]
    assert a4.reference_translate(view, 0x44)[2] == "p2m"


def _preamble() -> str:
    nb = nbformat.read(SOURCE, as_version=4)
    return "\n".join(c.source for c in nb.cells
                     if "autograder:preamble" in c.metadata.get("tags", []))


def test_the_scan_flags_the_reference_methods_not_the_library_around_them(ag):
    from autograder.integrity import scan_cells

    def flagged(src: str) -> list[str]:
        found = scan_cells([("mmu_validate", src)], forbidden=a4.FORBIDDEN,
                           preamble=[_preamble()])
        return [f.rule for f in found.get("mmu_validate", [])]

    assert flagged("def mmu_update(xen, caller, reqs):\n"
                   "    return XenMM.mmu_update(xen, caller, reqs)\n") == ["reference"]
    assert flagged("from virtcore.xen.nested import HVMGuest\nw = HVMGuest.guest_walk\n")
    assert flagged("def f(xen):\n    assert isinstance(xen, XenMM)\n"
                   "    XenMM.put_page_from_l1e(xen, 0, 1)\n") == []  # allowed: the release side
    assert flagged("\n".join(ag.cells_of("a4_correct.py").values())) == []


@pytest.mark.parametrize("seed", range(6))
def test_the_reference_walk_agrees_with_the_librarys_nested_paging(seed):
    """On an HVM guest of virtcore.xen.nested (P2M as an EPT, no holes): the same guest-table
    references (level, index, machine address, entry), the same machine address, the same
    faults as NestedPaging.translate's two-dimensional walk."""
    from virtcore.hw.paging import PagingConfig
    from virtcore.rng import make_rng
    from virtcore.xen.memory import MachineMemory
    from virtcore.xen.nested import HVMGuest, NestedPaging, TaggedTLB, populate

    rng = make_rng(seed)
    m = MachineMemory(256, 32)
    mem = populate(m, 1, 32)
    guest = HVMGuest(m, mem, PagingConfig.tiny())
    hap = NestedPaging(m, PagingConfig.tiny4(), TaggedTLB(8))
    hap.add_guest(guest)
    for _ in range(5):
        hap.map(1, 0, rng.randrange(64) << 5, guest.take_data_page(), rng.random() < 0.5)
    frames = {mfn: m.physical.words[mfn * 8: mfn * 8 + 8] for mfn in mem.p2m.values()}
    view = a4.GuestView(2, 5, 3, guest.roots[0], dict(mem.p2m), frames)
    for _ in range(20):
        va, write = rng.randrange(2048) & ~3, rng.random() < 0.5
        lib = hap.translate(1, va, write)
        maddr, refs, fault = a4.reference_translate(view, va, write)
        assert refs == [(r.level, r.index, r.maddr, r.entry) for r in lib.refs
                        if not r.table.startswith("EPT")]
        assert (maddr, fault is None) == (lib.maddr if lib.ok else None, lib.ok)
