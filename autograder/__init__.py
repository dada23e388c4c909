"""autograder — grading the course's nbgrader assignments against virtcore's reference core.

Scores never come from the student's kernel: each part's solution cells run in a bubblewrap
sandbox (:mod:`autograder.sandbox`) around a small worker (:mod:`autograder.worker` and
:mod:`autograder.harness`) that sees neither the course, the secret nor the part's reference;
the grader generates the cases (hidden ones per submission, from the course secret), validates
what comes back and compares it with the reference it computes itself (:mod:`autograder.grade`).

- :mod:`autograder.spec` — assignments, parts, checks (pure data);
- :mod:`autograder.assignments` — one module per assignment (cases, references, comparers);
- :mod:`autograder.harness` — what runs inside the sandbox, per assignment;
- :mod:`autograder.extract`, :mod:`autograder.analysis` — solution cells of a submission and
  the bounded integrity scan;
- :mod:`autograder.grade` — :func:`~autograder.grade.grade_submission`, results, feedback;
- :mod:`autograder.importer`, :mod:`autograder.feedback`, :mod:`autograder.sanitize` — safe
  import, per-student feedback, formgrader-safe copies;
- :mod:`autograder.nbgrader_bridge` — nbgrader's own autograde through the same grader;
- :mod:`autograder.cluster`, :mod:`autograder.stats`, :mod:`autograder.similarity` — grading on
  dask.distributed, the class report, copying flags;
- :mod:`autograder.cli`, :mod:`autograder.gradebook` — the instructor's commands.

>>> from autograder.assignments import REGISTRY
>>> sorted(REGISTRY)
['a1_trap_and_emulate', 'a2_credit_scheduler', 'a3_userspace_vmm', 'a4_virtual_mmu']
"""
