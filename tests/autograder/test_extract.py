"""Reading submissions (solution cells only) and source notebooks (the preamble)."""

from __future__ import annotations

import json

import nbformat
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autograder import extract
from autograder.extract import SubmissionError, read_preamble, read_submission
from autograder.spec import GradingError


def _write(path, nb) -> None:
    nbformat.write(nb, path)


def test_solution_cells_in_source_order_first_grade_id_wins(tmp_path, ag):
    nb = nbformat.v4.new_notebook()
    nb.cells = [ag.solution_cell("b", "B = 1"), nbformat.v4.new_markdown_cell("text"),
                ag.solution_cell("a", "A = 2"), ag.solution_cell("b", "B = 'copy'"),
                ag.graded_test_cell("t", "assert A == 2")]
    md = nbformat.v4.new_markdown_cell("written answer")
    md.metadata["nbgrader"] = {"solution": True, "grade_id": "essay"}
    nb.cells.append(md)
    no_id = nbformat.v4.new_code_cell("x = 1")
    no_id.metadata["nbgrader"] = {"solution": True}
    nb.cells.append(no_id)
    _write(tmp_path / "s.ipynb", nb)
    cells = read_submission(tmp_path / "s.ipynb")
    assert [(c.grade_id, c.source) for c in cells] == [("b", "B = 1"), ("a", "A = 2")]
    assert [c.index for c in cells] == [0, 2]


@pytest.mark.parametrize(("content", "reason"), [
    (b'{"cells": [', "corrupt: not JSON"),
    (b"\xff\xfe\x00garbage", "corrupt: not UTF-8"),
    (b"[1, 2, 3]", "corrupt: not a notebook"),
    (b'{"cells": 5, "nbformat": 4}', "corrupt: not a notebook"),
    (b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": ["x"]}',
     "corrupt: not a notebook nbformat can read"),
    (b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": 1}]}',
     "corrupt: not a notebook nbformat can read"),
    (b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "raw",'
     b' "metadata": {}, "source": "x"}]}', None),
])
def test_corrupt_files_give_a_reason(tmp_path, content, reason):
    path = tmp_path / "c.ipynb"
    path.write_bytes(content)
    if reason is None:  # odd but readable: no solution cells, no exception
        assert read_submission(path) == []
        return
    with pytest.raises(SubmissionError) as info:
        read_submission(path)
    assert info.value.reason.startswith(reason)
    assert info.value.status == "corrupt"


def test_missing_and_oversized(tmp_path, monkeypatch):
    for p in (None, tmp_path / "none.ipynb", tmp_path):
        with pytest.raises(SubmissionError) as info:
            read_submission(p)
        assert (info.value.reason, info.value.status) == ("missing", "missing")
    big = tmp_path / "big.ipynb"
    big.write_text(json.dumps({"cells": [], "pad": "x" * 2000}), encoding="utf-8")
    monkeypatch.setattr(extract, "MAX_NOTEBOOK_BYTES", 1000)
    with pytest.raises(SubmissionError, match="more than a notebook can be"):
        read_submission(big)


def test_an_nbformat_3_notebook_is_upgraded(tmp_path):
    v3 = {"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": [{"cells": [
        {"cell_type": "code", "input": "x = 1", "outputs": [], "language": "python",
         "metadata": {"nbgrader": {"solution": True, "grade_id": "p"}}}]}]}
    path = tmp_path / "v3.ipynb"
    path.write_text(json.dumps(v3), encoding="utf-8")
    assert [(c.grade_id, c.source) for c in read_submission(path)] == [("p", "x = 1")]


def test_preamble_takes_setup_cells_only(tmp_path, ag):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("%matplotlib inline\nimport math\n!pip list"),
                ag.solution_cell("p", "y = 2"), ag.graded_test_cell("t", "assert y == 2"),
                nbformat.v4.new_code_cell("from autograder.grade import run_visible"),
                nbformat.v4.new_code_cell("plot_everything()"),
                nbformat.v4.new_code_cell("   ")]
    nb.cells[4].metadata["tags"] = [extract.SKIP_TAG]
    _write(tmp_path / "src.ipynb", nb)
    assert read_preamble(tmp_path / "src.ipynb") == [
        "# %matplotlib inline\nimport math\n# !pip list"]
    nb.cells.append(nbformat.v4.new_code_cell("import heapq"))
    nb.cells[-1].metadata["tags"] = [extract.PREAMBLE_TAG]
    _write(tmp_path / "src.ipynb", nb)
    assert read_preamble(tmp_path / "src.ipynb") == ["import heapq"]
    with pytest.raises(GradingError, match="source notebook"):
        read_preamble(tmp_path / "absent.ipynb")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_either_read_or_give_a_submission_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "f.ipynb"
    path.write_bytes(data)
    try:
        cells = read_submission(path)
    except SubmissionError as e:
        reason = e.reason
    else:
        reason = "corrupt: (read)"
        assert isinstance(cells, list)
    assert reason.startswith("corrupt: ")
