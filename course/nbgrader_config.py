"""nbgrader configuration of the virtcore course (nbgrader 0.9.x).

Read by every ``nbgrader`` command run in this directory (and by JupyterLab's
formgrader when the server starts here), and by ``python -m autograder``, which
takes the course id and the gradebook URL from it.

Scores come from the course's grader (differential checks outside the student's
kernel, in sandboxed workers, see ``../autograder/``): ``python -m autograder grade``,
and also ``nbgrader autograde`` and formgrader's Autograde button, whose preprocessors
are replaced here so that they call the same grader and never execute the student's
notebook (``autograder/nbgrader_bridge.py``).  Generated feedback never shows hidden
tests.
"""

import os

c = get_config()  # noqa: F821 - injected by traitlets' config loader

HERE = os.path.dirname(os.path.abspath(__file__))

# -- the course -------------------------------------------------------------------------------
c.CourseDirectory.course_id = "virtcore"
c.CourseDirectory.root = HERE
# The gradebook: nbgrader's SQLite file here by default; any SQLAlchemy URL on a shared
# deployment (e.g. postgresql://nbgrader@db/virtcore), from the environment.
c.CourseDirectory.db_url = os.environ.get(
    "VIRTCORE_GRADEBOOK_URL", "sqlite:///" + os.path.join(HERE, "gradebook.db")
)
# Exchange: JupyterHub's shared /srv/nbgrader/exchange unless told otherwise.
if os.environ.get("VIRTCORE_EXCHANGE"):
    c.Exchange.root = os.environ["VIRTCORE_EXCHANGE"]

# -- generate_assignment ----------------------------------------------------------------------
# The course header (how grading works, what to do before submitting) opens every release.
c.IncludeHeaderFooter.header = os.path.join(HERE, "source", "header.ipynb")
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# -- autograde: nbgrader's own and formgrader's button, through the course's safe grader ------
# nbgrader's default runs the student's notebook and the tests in one kernel (`Execute`), where
# the student's code can write the gradebook and source/.  Here no kernel is started: the
# sanitize pass restores every cell's nbgrader metadata from source/ and strips the student's
# markdown HTML, and `SafeGrade` (instead of `Execute`) grades the answer cells in the
# grader's sandbox and writes each part's score into its test cell, which nbgrader's
# `SaveAutoGrades` records — the same points as `python -m autograder grade`.
# (`autograder` must be importable: `pip install -e .` of the repository; without it
# nbgrader stops on the class name rather than fall back to executing the notebook.)
# (The lists are import strings: reading this file imports none of nbgrader's preprocessors,
# which `python -m autograder` — reading it for the course id and the gradebook URL — does
# not need.)
from autograder.nbgrader_names import (  # noqa: E402
    AUTOGRADE_PREPROCESSORS,
    FEEDBACK_PREPROCESSORS,
    SANITIZE_PREPROCESSORS,
)

c.Autograde.sanitize_preprocessors = SANITIZE_PREPROCESSORS
c.Autograde.autograde_preprocessors = AUTOGRADE_PREPROCESSORS
c.RestoreMetadata.course_dir = HERE
c.SafeGrade.course_dir = HERE
# Wall-clock limit per graded part in the grader's sandbox, and budget per submission, in
# seconds (as `grade --timeout` and `grade --budget`).
c.SafeGrade.timeout = 60.0
c.SafeGrade.budget = 300.0
# A deleted test cell is restored from the gradebook instead of becoming "manual grading".
c.OverwriteCells.add_missing_cells = True
# Only for `nbgrader validate` on the instructor's own notebooks (it executes them).
c.Execute.timeout = 60
c.Execute.interrupt_on_timeout = True
c.ExecutePreprocessor.kernel_name = "python3"
c.Execute.kernel_name = "python3"


# -- generate_feedback: never show hidden tests -------------------------------------------------
# `HideTestTracebacks` (autograder/nbgrader_bridge.py) reduces every test cell's outputs to
# the grader's text and error lines: a traceback would quote hidden test code
# (nbgrader issues #917, #1363).
c.GenerateFeedback.preprocessors = FEEDBACK_PREPROCESSORS
