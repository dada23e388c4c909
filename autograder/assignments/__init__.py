"""The assignments the autograder knows: one module each, found automatically.

Adding an assignment = adding one module here that defines (the *assignment protocol*):

``SPEC`` : :class:`~autograder.spec.AssignmentSpec`
    Parts (grade ids of the notebook's solution cells), checks and points.
``REFERENCES`` : dict
    Module → names of the reference implementations switched off in the worker
    (:func:`autograder.integrity.disable_references`).
``FORBIDDEN`` : tuple of str
    Dotted names flagged by the static scan (:func:`autograder.integrity.scan`).
``CASE_TIMEOUT``, ``CELL_TIMEOUT`` : float
    Seconds a case / a cell may run in the worker.
``cases(part, check, seed_of) -> list[dict]``  *(grader)*
    The check's cases as JSON data, each with a ``"seed"`` and a ``"label"``.  ``seed_of(k)``
    gives the k-th seed: per student for hidden checks
    (``derive_seed(secret, student, assignment, check, k)``); visible checks use the module's
    own public seeds, the same for everyone.
``worker_setup(grade_id) -> object``  *(worker, before the references are disabled)*
``build(namespace, grade_id, setup) -> impl``  *(worker)*
    The student's implementation from the executed cells; raises
    :class:`autograder.worker.BuildError` with a clear message when something is missing.
``run_case(impl, case) -> dict``  *(worker)*
    Run one case; return plain JSON data (a trace).
``compare(part, check, case, got) -> str | None``  *(grader)*
    Compute the reference result itself and compare: None when the case passes, else a
    message naming the first divergence (time or step, expected vs got).  The grader adds the
    case's label and seed.

Nothing else changes: :data:`REGISTRY` lists every module of this package that has a ``SPEC``.

>>> sorted(REGISTRY)
['a1_trap_and_emulate', 'a2_credit_scheduler', 'a3_userspace_vmm', 'a4_virtual_mmu']
>>> get("a2_credit_scheduler").notebook
'credit_scheduler.ipynb'
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from autograder.spec import AssignmentSpec, GradingError

__all__ = ["REGISTRY", "get", "module"]

_MODULES: dict[str, ModuleType] = {}


def _discover() -> dict[str, AssignmentSpec]:
    found: dict[str, AssignmentSpec] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        spec = getattr(mod, "SPEC", None)
        if isinstance(spec, AssignmentSpec):
            if spec.name in found:
                raise GradingError(f"two assignment modules define {spec.name!r}")
            found[spec.name] = spec
            _MODULES[spec.name] = mod
    return found


#: Assignment name → spec, for every assignment module of this package.
REGISTRY: dict[str, AssignmentSpec] = _discover()


def get(name: str) -> AssignmentSpec:
    """The spec of assignment ``name``.

    >>> get("a1_trap_and_emulate").title
    'Trap and emulate: the VMM handlers'
    >>> get("nope")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    autograder.spec.GradingError: unknown assignment 'nope' (known: a1_trap_and_emulate, ...)
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise GradingError(f"unknown assignment {name!r} (known:"
                           f" {', '.join(sorted(REGISTRY))})") from None


def module(name: str) -> ModuleType:
    """The module implementing assignment ``name`` (its checks, runner and comparer)."""
    get(name)
    return _MODULES[name]
