"""autograder — grading the course's nbgrader assignments against virtcore's reference core.

Scores never come from the student's kernel: the solution cells run in a confined worker
process (:mod:`autograder.sandbox`, :mod:`autograder.worker`) that returns traces; the grader
generates the cases (hidden ones per student, from the course secret) and compares the traces
with the reference it computes itself (:mod:`autograder.grade`).

- :mod:`autograder.spec` — assignments, parts, checks (pure data);
- :mod:`autograder.assignments` — one module per assignment (cases, runner, comparer);
- :mod:`autograder.extract` — solution cells of a submission, preamble of the source;
- :mod:`autograder.integrity` — static scan and the reference switched off in the worker;
- :mod:`autograder.grade` — :func:`~autograder.grade.grade_notebook`, results, feedback;
- :mod:`autograder.cli`, :mod:`autograder.gradebook` — the instructor's commands.

>>> from autograder.assignments import REGISTRY
>>> sorted(REGISTRY)
['a1_trap_and_emulate', 'a2_credit_scheduler', 'a3_userspace_vmm']
"""
