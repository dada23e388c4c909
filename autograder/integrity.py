"""Integrity: a static scan of student code, and the reference implementations switched off.

Two independent layers (the third, decisive one is :mod:`autograder.grade`: scores are
computed in the grader's own process from traces, so nothing a submission does inside its
worker can change what it is compared with).

1. :func:`scan` — an AST scan of each solution cell, run in the grader *before* any student
   code runs.  A finding puts the part's score to 0 with the reason ``"integrity: …"``; a cell
   flagged only for ``reference`` still runs (references off) when other parts that build on
   it are graded, any other finding keeps the cell from ever running.  Rules
   (:data:`RULES`):

   - ``reference`` — imports or uses a reference implementation named by the assignment
     (e.g. ``virtcore.sched.Credit``, ``virtcore.vmm.handlers.handle_cli``,
     ``HandlerTable.reference``), through any import alias, a ``from … import *``, or a name
     the notebook's own set-up cells imported;
   - ``autograder`` — imports the grader;
   - ``builtins`` — touches ``__builtins__`` or writes to the ``builtins`` module;
   - ``sys.modules`` — any use of ``sys.modules``;
   - ``patch`` — assigns, deletes or ``setattr``\\ s an attribute (or item) of anything
     imported from ``virtcore`` (a module or a class): patching the library or the checker;
   - ``course-file`` — mentions the course secret, its environment variable or the gradebook;
   - ``ctypes`` — ``ctypes``/``cffi`` (raw memory: segfaults, escaping the interpreter);
   - ``process`` — runs programs or processes (``subprocess``, ``os.system``, ``os.popen``,
     ``os.exec*``, ``os.spawn*``, ``os.fork``, ``pty``, ``multiprocessing``);
   - ``dynamic-code`` — ``exec``, ``eval``, ``compile``, ``__import__``, ``importlib``,
     ``runpy``: code the scan cannot see;
   - ``introspection`` — stack frames, ``gc`` object walks, ``__globals__``,
     ``__subclasses__``, ``__code__``…: ways to reach objects the student was not given.

   **False positives** are kept low by resolving names: only names bound by an import (in the
   student's cells or in the notebook's set-up cells) are followed, and a name the student binds
   anywhere in their cells (``def handle_cli``, ``class Credit``) is theirs.  Attribute writes on
   the student's own objects (``vcpu.pc += 4``, ``self.queue = …``) are never flagged.  Code
   that does not parse yields no finding (it fails when it runs, with the SyntaxError).
   What it cannot see: anything built at run time (``getattr(m, "Cre" + "dit")``) — layer 2
   catches those.

2. :func:`disable_references` — in the worker, before student code runs: every reference name
   is replaced by a stub that raises :class:`IntegrityError` when called, instantiated or
   subclassed, and records the attempt (so catching the exception does not hide it); a
   :data:`sys.meta_path` guard refuses to import the guarded modules again
   (``importlib.reload``, ``del sys.modules[…]`` then ``import``).

Simplification: virtcore is open source, so a student can *copy* the reference into a cell;
no grader can tell copying from writing.  That is a plagiarism question (similarity checks),
not an integrity one here.

>>> for f in scan("from virtcore.sched import Credit\\nclass S(Credit): pass",
...               forbidden=("virtcore.sched.Credit",)):
...     print(f)
line 1: [reference] imports the reference implementation virtcore.sched.Credit
line 2: [reference] uses the reference implementation virtcore.sched.Credit
>>> scan("def handle_cli(vcpu, insn):\\n    vcpu.pc += 4",
...      forbidden=("virtcore.vmm.handlers.handle_cli",))
[]
"""

from __future__ import annotations

import ast
import importlib.abc
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from virtcore.errors import VirtcoreError

__all__ = [
    "MESSAGE",
    "RULES",
    "Finding",
    "Guard",
    "IntegrityError",
    "disable_references",
    "scan",
    "touched",
]

#: The message of every stub.
MESSAGE = "the reference implementation is not available while grading"

RULES = ("reference", "autograder", "builtins", "sys.modules", "patch", "course-file", "ctypes",
         "process", "dynamic-code", "introspection")

_COURSE_WORDS = (".course_secret", "course_secret", "VIRTCORE_COURSE_SECRET", "gradebook")
_PROCESS_MODULES = ("subprocess", "pty", "multiprocessing", "_posixsubprocess")
_OS_PROCESS = ("system", "popen", "fork", "forkpty", "execl", "execle", "execlp", "execlpe",
               "execv", "execve", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp",
               "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn",
               "posix_spawnp")
_DYNAMIC_CALLS = ("exec", "eval", "compile", "__import__")
_DYNAMIC_MODULES = ("importlib", "runpy", "imp")
_INTROSPECTION_ATTRS = ("f_back", "f_globals", "f_locals", "f_builtins", "tb_frame", "gi_frame",
                        "cr_frame", "ag_frame", "__globals__", "__subclasses__", "__code__",
                        "__closure__", "__builtins__")
_INTROSPECTION_CALLS = ("gc.get_objects", "gc.get_referrers", "gc.get_referents",
                        "sys._getframe", "inspect.currentframe", "inspect.stack",
                        "inspect.getouterframes", "inspect.getsource", "inspect.getsourcelines",
                        "inspect.getmembers", "inspect.getclosurevars")


class IntegrityError(VirtcoreError):
    """Student code reached a reference implementation while being graded.

    >>> str(IntegrityError(MESSAGE))
    'the reference implementation is not available while grading'
    """


@dataclass(frozen=True)
class Finding:
    """One integrity finding of :func:`scan`: the rule, the line (1-based) and what it saw.

    >>> str(Finding("ctypes", 2, "uses ctypes"))
    'line 2: [ctypes] uses ctypes'
    """

    rule: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: [{self.rule}] {self.message}"


# ------------------------------------------------------------------------------------ the scan


def _dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` (or ``getattr(a.b, "c")``) as ``["a", "b", "c"]``; None for anything else."""
    parts: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "getattr" and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            parts.append(node.args[1].value)
            node = node.args[0]
        else:
            break
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Names bound by imports → the dotted name they stand for."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    out[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    out[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                if a.name != "*":
                    out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _star_modules(tree: ast.AST) -> list[str]:
    return [n.module for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module and not n.level
            and any(a.name == "*" for a in n.names)]


def _bound_names(tree: ast.AST) -> set[str]:
    """Names the code binds itself (def, class, assignment, loop/with/except targets, args)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.id)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            out.add(node.name)
    return out


def _parse(source: str) -> ast.AST | None:
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


class _Scanner:
    def __init__(self, tree: ast.AST, forbidden: tuple[str, ...], aliases: dict[str, str],
                 own: set[str]) -> None:
        self.tree = tree
        self.forbidden = forbidden
        self.aliases = aliases
        self.own = own
        self.findings: list[Finding] = []
        self._seen: set[tuple[str, int, str]] = set()

    def add(self, rule: str, node: ast.AST, message: str) -> None:
        line = getattr(node, "lineno", 0)
        key = (rule, line, message)
        if key not in self._seen:
            self._seen.add(key)
            self.findings.append(Finding(rule, line, message))

    def resolve(self, node: ast.AST) -> str | None:
        """The dotted name an expression stands for, through import aliases (None if unknown)."""
        parts = _dotted(node)
        if parts is None:
            return None
        root = parts[0]
        if root in self.aliases and root not in self.own:
            return ".".join([self.aliases[root], *parts[1:]])
        return None

    def reference(self, full: str) -> str | None:
        """The forbidden name ``full`` is or lies inside (None if none)."""
        for f in self.forbidden:
            if full == f or full.startswith(f + "."):
                return f
        return None

    def run(self) -> list[Finding]:
        for node in ast.walk(self.tree):
            self.visit(node)
        self.findings.sort(key=lambda f: (f.line, f.rule))
        return self.findings

    def visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for a in node.names:
                self.module_used(node, a.name)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                return
            self.module_used(node, mod)
            for a in node.names:
                full = f"{mod}.{a.name}"
                ref = self.reference(full) if a.name != "*" else None
                if ref:
                    self.add("reference", node, f"imports the reference implementation {ref}")
                self.module_used(node, full, from_import=True)
        elif isinstance(node, ast.Name):
            self.name(node)
        elif isinstance(node, ast.Attribute):
            self.attribute(node)
        elif isinstance(node, ast.Call):
            self.call(node)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = (node.targets if isinstance(node, (ast.Assign, ast.Delete))
                       else [node.target])
            for t in targets:
                self.store_target(t)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for w in _COURSE_WORDS:
                if w in node.value:
                    self.add("course-file", node, f"mentions {w!r} (the course secret and the"
                             " gradebook are off limits)")
                    break

    def module_used(self, node: ast.AST, name: str, *, from_import: bool = False) -> None:
        top = name.split(".")[0]
        if top == "autograder":
            self.add("autograder", node, f"imports the autograder ({name})")
        elif top in ("ctypes", "cffi"):
            self.add("ctypes", node, f"imports {top}")
        elif top in _PROCESS_MODULES:
            self.add("process", node, f"imports {top} (no other processes while grading)")
        elif top in _DYNAMIC_MODULES:
            self.add("dynamic-code", node, f"imports {top}")
        elif from_import and name.startswith("os.") and name[3:] in _OS_PROCESS:
            self.add("process", node, f"imports {name} (no other programs while grading)")
        elif from_import and name in ("sys.modules", "sys._getframe"):
            self.add("sys.modules" if name == "sys.modules" else "introspection", node,
                     f"imports {name}")
        elif from_import and name.startswith("gc.get_"):
            self.add("introspection", node, f"imports {name}")
        elif from_import and name == "builtins.__dict__":
            self.add("builtins", node, "imports builtins.__dict__")

    def name(self, node: ast.Name) -> None:
        if node.id == "__builtins__":
            self.add("builtins", node, "uses __builtins__")
            return
        if node.id in _DYNAMIC_CALLS and node.id not in self.own:
            self.add("dynamic-code", node, f"uses {node.id}() (code the grader cannot check)")
            return
        if not isinstance(node.ctx, ast.Load) or node.id in self.own:
            return
        full = self.aliases.get(node.id)
        if full is not None:
            ref = self.reference(full)
            if ref:
                self.add("reference", node, f"uses the reference implementation {ref}")

    def attribute(self, node: ast.Attribute) -> None:
        if node.attr in _INTROSPECTION_ATTRS:
            rule = "builtins" if node.attr == "__builtins__" else "introspection"
            self.add(rule, node, f"uses .{node.attr}")
        full = self.resolve(node)
        if full is None:
            return
        ref = self.reference(full)
        if ref:
            self.add("reference", node, f"uses the reference implementation {ref}")
        elif full == "sys.modules" or full.startswith("sys.modules."):
            self.add("sys.modules", node, "uses sys.modules")
        elif full.startswith("os.") and full[3:] in _OS_PROCESS:
            self.add("process", node, f"calls {full} (no other programs while grading)")
        elif full in _INTROSPECTION_CALLS:
            self.add("introspection", node, f"uses {full}")
        elif full.startswith("builtins.") and full != "builtins.__dict__" and isinstance(
                node.ctx, (ast.Store, ast.Del)):
            self.add("builtins", node, f"writes {full}")

    def call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "getattr":
            full = self.resolve(node)
            ref = self.reference(full) if full is not None else None
            if ref:
                self.add("reference", node, f"uses the reference implementation {ref}")
        if isinstance(func, ast.Name) and func.id in ("setattr", "delattr") and node.args:
            target = self.resolve(node.args[0])
            if target is not None and target.split(".")[0] in ("virtcore", "autograder"):
                self.add("patch", node, f"{func.id}() on {target} (patching virtcore)")
            elif target is not None and target.split(".")[0] == "builtins":
                self.add("builtins", node, f"{func.id}() on the builtins module")
            elif target == "sys":
                self.add("sys.modules", node, f"{func.id}() on the sys module")

    def store_target(self, t: ast.AST) -> None:
        if isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                self.store_target(e)
            return
        if isinstance(t, ast.Starred):
            self.store_target(t.value)
            return
        if isinstance(t, (ast.Subscript, ast.Attribute)):
            base = self.resolve(t.value)
        else:
            return
        if base is None:
            return
        top = base.split(".")[0]
        if top in ("virtcore", "autograder"):
            self.add("patch", t, f"changes {base} (patching virtcore or the grader)")
        elif top == "builtins":
            self.add("builtins", t, "writes to the builtins module")
        elif base == "sys" and isinstance(t, ast.Attribute) and t.attr == "modules":
            self.add("sys.modules", t, "replaces sys.modules")


def scan(source: str, *, forbidden: Iterable[str] = (), context: Iterable[str] = (),
         own: Iterable[str] = ()) -> list[Finding]:
    """Integrity findings in one cell's ``source`` (empty list: nothing suspicious).

    Parameters
    ----------
    source : str
        The student's cell.
    forbidden : iterable of str
        Dotted names of the reference implementations (every path they are reachable by,
        e.g. both ``virtcore.sched.Credit`` and ``virtcore.sched.credit.Credit``).
    context : iterable of str
        Other code whose *imports* the cell can use without importing them itself: the
        notebook's set-up cells and the student's other cells.
    own : iterable of str
        Names the student binds in their other cells (they are the student's, not imports).

    Returns
    -------
    list of Finding
        Sorted by line.

    Examples
    --------
    >>> fb = ("virtcore.sched.Credit", "virtcore.sched.credit.Credit")
    >>> [f.rule for f in scan("import virtcore.sched as s\\nx = s.Credit()", forbidden=fb)]
    ['reference']
    >>> [f.rule for f in scan("class S(Credit): pass", forbidden=fb,
    ...                       context=["from virtcore.sched import Credit"])]
    ['reference']
    >>> [f.rule for f in scan("import virtcore.vmm.popek as p\\np.run_guest = None")]
    ['patch']
    >>> [f.rule for f in scan("import os\\nos.system('ls')")]
    ['process']
    >>> scan("def f(:")  # does not parse: no finding (it fails when it runs)
    []
    """
    tree = _parse(source)
    if tree is None:
        return []
    aliases: dict[str, str] = {}
    forbidden_t = tuple(forbidden)
    for code in context:
        ctree = _parse(code)
        if ctree is not None:
            aliases.update(_aliases(ctree))
            for mod in _star_modules(ctree):
                _star_aliases(aliases, mod, forbidden_t)
    aliases.update(_aliases(tree))
    for mod in _star_modules(tree):
        _star_aliases(aliases, mod, forbidden_t)
    derived: set[str] = set()
    for code in [*context, source]:  # H = virtcore.vmm.hypervisor.Hypervisor: H is an alias
        ctree = tree if code is source else _parse(code)
        if ctree is not None:
            derived |= _derived_aliases(ctree, aliases)
    bound = (_bound_names(tree) | set(own)) - derived
    return _Scanner(tree, forbidden_t, aliases, bound).run()


def scan_cells(cells: Sequence[tuple[str, str]], *, forbidden: Iterable[str] = (),
               preamble: Iterable[str] = ()) -> dict[str, list[Finding]]:
    """:func:`scan` of every cell of a notebook with the others as context — in linear time.

    ``cells`` are ``(grade_id, source)`` pairs.  Each cell and each set-up cell is parsed
    once; the imports of all of them (the context every cell may use) are collected once, so a
    notebook of many large cells costs what its size costs (calling :func:`scan` per cell with
    the others as ``context`` parses every cell once per cell).  Findings are those of
    :func:`scan`; cells without any are left out.

    >>> fb = ("virtcore.sched.Credit",)
    >>> found = scan_cells([("a", "from virtcore.sched import Credit"),
    ...                     ("b", "class S(Credit): pass"), ("c", "x = 1")], forbidden=fb)
    >>> sorted(found), [f.rule for f in found["b"]]
    (['a', 'b'], ['reference'])
    """
    forbidden_t = tuple(forbidden)
    pre_trees = [t for t in (_parse(c) for c in preamble) if t is not None]
    trees = [(gid, _parse(src)) for gid, src in cells]
    aliases: dict[str, str] = {}
    for t in [*pre_trees, *(t for _, t in trees if t is not None)]:
        aliases.update(_aliases(t))
        for mod in _star_modules(t):
            _star_aliases(aliases, mod, forbidden_t)
    derived: set[str] = set()
    for t in [*pre_trees, *(t for _, t in trees if t is not None)]:
        derived |= _derived_aliases(t, aliases)
    defined = [_defined_names(t) if t is not None else set() for _, t in trees]
    counts: dict[str, int] = {}
    for names in defined:
        for n in names:
            counts[n] = counts.get(n, 0) + 1
    out: dict[str, list[Finding]] = {}
    for (gid, tree), mine in zip(trees, defined):
        if tree is None:
            continue
        own = {n for n, k in counts.items() if k > (1 if n in mine else 0)}
        local = dict(aliases)
        local.update(_aliases(tree))
        for mod in _star_modules(tree):
            _star_aliases(local, mod, forbidden_t)
        bound = (_bound_names(tree) | own) - derived
        found = _Scanner(tree, forbidden_t, local, bound).run()
        if found:
            out[gid] = found
    return out


def _derived_aliases(tree: ast.AST, aliases: dict[str, str]) -> set[str]:
    """Add ``name = <import alias>.attr…`` assignments to ``aliases``; return those names."""
    found: set[str] = set()
    for _ in range(3):  # chains of such assignments
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)):
                continue
            parts = _dotted(node.value)
            if parts and parts[0] in aliases and parts[0] != node.targets[0].id:
                aliases[node.targets[0].id] = ".".join([aliases[parts[0]], *parts[1:]])
                found.add(node.targets[0].id)
    return found


def _defined_names(tree: ast.AST) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
    return out


def _star_aliases(aliases: dict[str, str], module: str, forbidden: tuple[str, ...]) -> None:
    """``from module import *`` binds the forbidden names directly inside ``module``."""
    for f in forbidden:
        head, _, leaf = f.rpartition(".")
        if head == module:
            aliases.setdefault(leaf, f)


def defined_names(source: str) -> set[str]:
    """Names a cell binds at top level or anywhere (def, class, assignment); empty if unparsable.

    >>> sorted(defined_names("def handle_cli(v, i): pass\\nX = 1"))
    ['X', 'handle_cli']
    """
    tree = _parse(source)
    return _defined_names(tree) if tree is not None else set()


# ------------------------------------------------------------------------ the runtime guard

_TOUCHED: list[str] = []
_RECORDING = [False]


def _touch(what: str) -> None:
    if _RECORDING[0] and len(_TOUCHED) < 100:
        _TOUCHED.append(what)


def touched(*, clear: bool = False) -> list[str]:
    """Reference names student code touched since the guard went up (or since the last clear).

    >>> touched(clear=True)
    []
    """
    out = list(_TOUCHED)
    if clear:
        _TOUCHED.clear()
    return out


def _stub_function(qualname: str) -> Any:
    def stub(*args: object, **kwargs: object) -> Any:
        _touch(qualname)
        raise IntegrityError(f"{MESSAGE} ({qualname})")

    stub.__name__ = qualname.rsplit(".", 1)[-1]
    stub.__qualname__ = stub.__name__
    stub.__doc__ = f"Disabled while grading: {qualname}."
    return stub


def _stub_class(qualname: str) -> type:
    def new(cls: type, *args: object, **kwargs: object) -> Any:
        _touch(qualname)
        raise IntegrityError(f"{MESSAGE} ({qualname})")

    def init_subclass(cls: type, **kwargs: object) -> None:
        _touch(qualname)
        raise IntegrityError(f"{MESSAGE} ({qualname}: subclassing it is not allowed)")

    name = qualname.rsplit(".", 1)[-1]
    return type(name, (), {"__new__": new, "__init_subclass__": classmethod(init_subclass),
                           "__doc__": f"Disabled while grading: {qualname}.",
                           "__module__": qualname.rsplit(".", 1)[0]})


def _stub_for(qualname: str, original: object) -> object:
    if isinstance(original, type):
        return _stub_class(qualname)
    if isinstance(original, dict):
        return {k: _stub_function(f"{qualname}[{k!r}]") for k in original}
    if isinstance(original, (classmethod, staticmethod)):
        return classmethod(lambda cls, *a, **k: _stub_function(qualname)())
    return _stub_function(qualname)


class _ImportGuard(importlib.abc.MetaPathFinder):
    """Refuses to (re)import the guarded modules: ``reload`` and fresh imports see no reference."""

    def __init__(self, modules: Iterable[str]) -> None:
        self.modules = frozenset(modules)

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname in self.modules:
            _touch(f"import {fullname}")
            raise IntegrityError(f"{MESSAGE} (re-importing {fullname})")
        return


@dataclass
class Guard:
    """What :func:`disable_references` did (for tests and the worker's report)."""

    replaced: list[str]
    finder: _ImportGuard

    def record(self, on: bool) -> None:
        """Start or stop recording touches (only student code's touches count)."""
        _RECORDING[0] = on


def disable_references(references: Mapping[str, Iterable[str]]) -> Guard:
    """Replace reference implementations by stubs in the imported modules; guard re-imports.

    Call it in the worker process only — it changes the modules for good.

    Parameters
    ----------
    references : mapping
        Module name → attribute names to disable.  A dotted attribute (``"HandlerTable.reference"``)
        disables a method of a class; a dict attribute keeps its keys with stub values.

    Returns
    -------
    Guard

    Examples
    --------
    >>> import subprocess, sys
    >>> code = ("from autograder.integrity import disable_references, IntegrityError\\n"
    ...         "disable_references({'virtcore.sched.credit': ['Credit'],"
    ...         " 'virtcore.sched': ['Credit']})\\n"
    ...         "from virtcore.sched import Credit\\n"
    ...         "try:\\n    Credit()\\nexcept IntegrityError as e:\\n    print(e)")
    >>> subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    'the reference implementation is not available while grading (virtcore.sched.credit.Credit)\\n'
    """
    replaced: list[str] = []
    stubs: dict[int, object] = {}  # id(original) -> its stub: one stub per object
    for modname, names in references.items():
        module = sys.modules.get(modname)
        if module is None:
            module = __import__(modname, fromlist=["_"])
        for name in names:
            owner: Any = module
            path = name.split(".")
            for p in path[:-1]:
                owner = getattr(owner, p)
            leaf = path[-1]
            raw = owner.__dict__.get(leaf) if isinstance(owner, type) else getattr(owner, leaf)
            if raw is None:
                raw = getattr(owner, leaf)
            qual = _home(raw, f"{modname}.{name}")
            stub = stubs.get(id(raw))
            if stub is None:
                stub = stubs[id(raw)] = _stub_for(qual, raw)
            if isinstance(owner, ModuleType) and isinstance(raw, dict):
                # keep the dict object (others may hold it): replace its values in place
                raw.update(stub)  # type: ignore[call-overload]
            else:
                setattr(owner, leaf, stub)
            replaced.append(f"{modname}.{name}")
    finder = _ImportGuard(references)
    sys.meta_path.insert(0, finder)
    return Guard(replaced, finder)


def _home(obj: object, fallback: str) -> str:
    """Where an object was defined (``virtcore.sched.credit.Credit``), for messages."""
    mod = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None)
    if isinstance(mod, str) and isinstance(name, str) and not isinstance(obj, dict):
        return f"{mod}.{name}"
    return fallback
