"""``python -m autograder <command>``: the instructor's workflow (see :mod:`autograder.cli`).

Two start-up costs that this command-line process does not pay (seconds on every command;
grading overlaps what is left with its pool, see ``cmd_grade``):

- jsonschema (imported through nbgrader and nbformat) registers its "iri" format checkers by
  importing rfc3987_syntax, which compiles 38 Lark grammars on import (~2 s of CPU), for a
  check the grader never makes (it validates no IRI); without it jsonschema has no "iri"
  checker;
- nbgrader's package ``__init__`` imports its Jupyter server extensions (jupyter_server,
  tornado, the formgrader handlers: ~1 s), which a command line never serves; the package is
  loaded without running it (:func:`_nbgrader_without_server_extensions`), and its
  submodules (``nbgrader.api``, ``nbgrader.apps``, …) import as usual.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def _nbgrader_without_server_extensions() -> None:
    """Put the ``nbgrader`` package in ``sys.modules`` without executing its ``__init__``.

    Only what ``__init__`` itself defines is then missing; ``__version__`` is set, the
    server-extension hooks (``_jupyter_server_extension_points`` …) are for Jupyter's
    server, not this process.
    """
    if "nbgrader" in sys.modules:
        return
    spec = importlib.util.find_spec("nbgrader")
    if spec is None or not spec.submodule_search_locations:
        return
    pkg = types.ModuleType("nbgrader", "nbgrader, loaded without its server extensions")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__file__ = spec.origin
    sys.modules["nbgrader"] = pkg
    try:
        from nbgrader._version import __version__
    except ImportError:  # pragma: no cover - not an nbgrader we know: load it normally
        del sys.modules["nbgrader"]
        return
    pkg.__version__ = __version__  # type: ignore[attr-defined]


sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
_nbgrader_without_server_extensions()

from autograder.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
