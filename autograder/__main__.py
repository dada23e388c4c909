"""``python -m autograder <command>``: the instructor's workflow (see :mod:`autograder.cli`)."""

from __future__ import annotations

import sys

# jsonschema (imported through nbgrader and nbformat) registers its "iri" format checkers by
# importing rfc3987_syntax, which compiles 38 Lark grammars on import: about 2 s of CPU on
# every command, for a check the grader never makes (it validates no IRI).  Without it
# jsonschema simply has no "iri" checker.  Only this command-line process is affected.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

from autograder.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
