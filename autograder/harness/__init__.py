"""What runs inside the sandbox: per assignment, the code that runs a student's part on a case.

Only this package (with :mod:`autograder.worker`) and a copy of virtcore whose reference
implementations for the part are redacted are staged into the sandbox
(:func:`autograder.sandbox.stage`).  The grader's own side — case generators, seeds, the
reference runs and the comparers — lives in :mod:`autograder.assignments` and never enters it.
"""
