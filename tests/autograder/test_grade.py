"""grade_notebook's results: JSON round trip, feedback text, secrets, misuse."""

from __future__ import annotations

import json

import pytest

from autograder import grade
from autograder.assignments import get
from autograder.grade import (
    CheckResult,
    NotebookResult,
    PartResult,
    feedback_text,
    grade_notebook,
    normalize_secret,
)
from autograder.spec import GradingError


def test_results_round_trip_through_json(course, ag):
    result = course.grade_cells("a1_trap_and_emulate", ag.cells_of("a1_stub.py"))
    data = json.loads(json.dumps(result.to_json()))
    back = NotebookResult.from_json({**data, "a field from the future": 1})
    assert back == result
    assert isinstance(back.parts[0], PartResult)
    assert isinstance(back.parts[0].checks[0], CheckResult)
    assert back.part("handlers_io").max_score == 10
    with pytest.raises(KeyError):
        back.part("nope")


def test_feedback_lists_every_check_and_says_which_are_hidden():
    part = PartResult("handlers_io", 4.0, 10.0, "ok", [
        CheckResult("io_public", 3.0, 3.0, True, "all 3 cases passed", False),
        CheckResult("io_hidden", 1.0, 4.0, False,
                    "1/4 cases passed; first failure — hidden guest #2 (seed=77): after trap #3"
                    " (in r2, 0x3fd at pc=0x10, clock 5): r2 expected 0x60, got 0x0\nmore",
                    True, 77)], "")
    crashed = PartResult("handlers_control", 0.0, 15.0, "crashed",
                         [CheckResult("control_public", 0.0, 15.0, False, "crashed: boom",
                                      False)], "crashed: boom")
    text = feedback_text(NotebookResult("zoe", "a1_trap_and_emulate", 4.0, 25.0, "ok",
                                        [part, crashed], "", 1.0))
    assert "Score: 4 / 25" in text
    assert "[pass] io_public (visible check): 3 / 3 — all 3 cases passed" in text
    assert "[FAIL] io_hidden (hidden check): 1 / 4 — 1/4 cases passed" in text
    assert "seed=77" in text and "\n      more" in text
    assert ("Part handlers_control: 0 / 15 (crashed)\n  crashed: boom\n  [FAIL] control_public"
            in text)
    missing = NotebookResult("zoe", "a1_trap_and_emulate", 0, 45, "missing", [], "missing", 0)
    assert "The notebook was missing: missing" in feedback_text(missing)


def test_secret_normalisation_and_the_hidden_case_key():
    assert normalize_secret(b"abc \n") == normalize_secret("abc") == "abc"
    assert normalize_secret(b"\xff\x00") == "ff00"
    with pytest.raises(GradingError):
        normalize_secret(b"  ")
    with pytest.raises(GradingError):
        normalize_secret(42)  # type: ignore[arg-type]
    assert len(grade._clip("x" * 5000)) == grade._MAX_MESSAGE
    # the secret only makes the hidden-case key: one per submission, never the secret itself
    key = grade.hidden_seed_key(b"abc\n", "ann", "a1_trap_and_emulate", "00" * 32)
    assert key == grade.hidden_seed_key("abc", "ann", "a1_trap_and_emulate", "00" * 32)
    assert "abc" not in key and len(key) == 16
    assert key != grade.hidden_seed_key("abc", "ann", "a1_trap_and_emulate", "01" * 32)


def test_misuse_raises_grading_error(tmp_path, course):
    with pytest.raises(GradingError, match="unknown assignment"):
        grade_notebook(None, "a9_nope", "s", "k", source_notebook=course.sources[
            "a1_trap_and_emulate"])
    with pytest.raises(GradingError, match="source notebook"):
        grade_notebook(None, "a1_trap_and_emulate", "s", "k",
                       source_notebook=tmp_path / "absent.ipynb")


def test_an_assignment_spec_is_accepted(course):
    spec = get("a2_credit_scheduler")
    result = grade_notebook(None, spec, "s", "k", source_notebook=course.sources[spec.name])
    assert (result.assignment, result.status, result.max_score) == (spec.name, "missing", 45)
    assert [p.grade_id for p in result.parts] == [p.grade_id for p in spec.parts]


def test_a_stub_cell_that_raises_at_top_level_is_not_implemented_where_it_is_needed(course, ag):
    stub = "# YOUR CODE HERE\nraise NotImplementedError()\n"
    cells = ag.submission_cells("a2_credit_scheduler", credit_multi_pcpu=stub)
    result = course.grade_cells("a2_credit_scheduler", cells)
    assert result.score == 0
    assert {p.status for p in result.parts} == {"not implemented"}
    multi = result.part("credit_multi_pcpu")
    assert "cell credit_multi_pcpu, line 2" in multi.reason
    accounting = result.part("credit_accounting")  # its own cell ran; StudentCredit is missing
    assert "StudentCredit is not defined" in accounting.reason
    assert "the cell credit_multi_pcpu raised NotImplementedError" in accounting.reason
