"""The library's import layering: three layers (the machine, the monitors, the views), by package.

Read statically with :mod:`ast` over every ``virtcore/**/*.py`` — every import counts, also the
ones inside functions and under ``if TYPE_CHECKING:`` — so packages added later are checked
without editing this file:

- ``virtcore.hw`` imports nothing from virtcore but ``virtcore.hw``, ``virtcore.errors`` and
  ``virtcore.rng``;
- the foundations ``virtcore.errors`` and ``virtcore.rng`` import no other part of virtcore
  (``rng`` may use ``errors``);
- nothing outside ``virtcore/viz`` imports ``virtcore.viz``;
- the stack is one-way: for :data:`STACK` ``hw ← vmm ← {kvm, xen}`` no package imports one on
  its own level or above (``vmm`` imports neither ``kvm`` nor ``xen``; ``kvm`` and ``xen`` do not
  import each other);
- the imports between virtcore's top-level packages form no cycle (any package, also new ones).

And dynamically, in a fresh interpreter: importing ``virtcore`` and every subpackage but
``viz`` (found with :mod:`pkgutil`) loads only the standard library — in particular not
matplotlib, ipywidgets, networkx, IPython or numpy.
"""

from __future__ import annotations

import ast
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = REPO_ROOT / "virtcore"

#: Levels of the virtualization stack, lowest first; a package may import only lower levels.
STACK: list[set[str]] = [{"hw"}, {"vmm"}, {"kvm", "xen"}]
#: What ``virtcore.hw`` may import from virtcore (top-level parts).
HW_ALLOWED = {"hw", "errors", "rng"}
#: What the foundation modules may import from virtcore.
FOUNDATIONS: dict[str, set[str]] = {"errors": set(), "rng": {"errors"}}
VIEWS = "viz"
HEAVY = ("matplotlib", "ipywidgets", "networkx", "IPython", "numpy")

ROOT = "<virtcore/__init__>"


def module_name(path: Path) -> str:
    """``virtcore/hw/isa.py`` -> ``virtcore.hw.isa``; a package's ``__init__.py`` -> its name."""
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def library_files() -> list[Path]:
    """Every Python file of the library."""
    return sorted(PACKAGE_DIR.rglob("*.py"))


def _exists(dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (REPO_ROOT / rel).is_dir() or (REPO_ROOT / rel).with_suffix(".py").is_file()


def imported_modules(path: Path, name: str | None = None) -> Iterator[tuple[int, str]]:
    """Yield ``(line, dotted name)`` of every virtcore module that ``path`` imports.

    ``name`` is the module's dotted name (default: from its place under the repository).
    ``from virtcore import x`` counts as importing ``virtcore.x`` when that is a module or
    package, else as importing ``virtcore`` itself; relative imports are resolved.
    """
    this = name or module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "virtcore":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "virtcore":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield node.lineno, candidate if _exists(candidate) else base


def part(dotted: str) -> str:
    """The top-level part of virtcore a module belongs to (``virtcore.hw.isa`` -> ``hw``)."""
    pieces = dotted.split(".")
    return pieces[1] if len(pieces) > 1 else ROOT


def import_edges() -> list[tuple[str, str, str, int]]:
    """``(importer part, imported part, importer file, line)`` for every virtcore import."""
    edges = []
    for path in library_files():
        src = part(module_name(path))
        for line, target in imported_modules(path):
            edges.append((src, part(target), str(path.relative_to(REPO_ROOT)), line))
    return edges


def test_the_library_and_its_hardware_package_exist() -> None:
    """The checks below read real files (an empty scan would prove nothing)."""
    names = {module_name(p) for p in library_files()}
    assert {"virtcore", "virtcore.errors", "virtcore.rng", "virtcore.hw"} <= names, names
    assert ("hw", "errors") in {(src, dst) for src, dst, _, _ in import_edges()}


def test_import_reader_resolves_all_forms(tmp_path: Path) -> None:
    """Absolute, ``from virtcore import x`` (module or name), nested and relative imports."""
    src = tmp_path / "probe.py"
    src.write_text(
        "import virtcore.hw.isa\n"
        "from virtcore import errors, VirtcoreError\n"
        "def f():\n"
        "    from virtcore.viz import anything\n"
        "from . import isa\n"
        "from ..errors import X\n"
        "import os, virtcorex\n",
        encoding="utf-8",
    )
    got = [target for _, target in imported_modules(src, name="virtcore.hw.probe")]
    assert sorted(got) == sorted(
        [
            "virtcore.hw.isa",
            "virtcore.errors",
            "virtcore",
            "virtcore.viz",
            "virtcore.hw.isa",
            "virtcore.errors",
        ]
    )
    assert [part(t) for t in got].count("hw") == 2


def test_hw_imports_only_hw_errors_rng() -> None:
    bad = [
        f"{file}:{line} imports virtcore.{dst if dst != ROOT else '(package root)'}"
        for src, dst, file, line in import_edges()
        if src == "hw" and dst not in HW_ALLOWED
    ]
    assert not bad, "virtcore.hw may import only virtcore.hw/errors/rng:\n" + "\n".join(bad)


def test_foundations_import_nothing_else() -> None:
    bad = [
        f"{file}:{line} imports virtcore.{dst}"
        for src, dst, file, line in import_edges()
        if src in FOUNDATIONS and dst != src and dst not in FOUNDATIONS[src]
    ]
    assert not bad, "\n".join(bad)


def test_nothing_outside_viz_imports_viz() -> None:
    bad = [
        f"{file}:{line} imports virtcore.viz"
        for src, dst, file, line in import_edges()
        if dst == VIEWS and src != VIEWS
    ]
    assert not bad, "only virtcore.viz may import virtcore.viz:\n" + "\n".join(bad)


def test_stack_imports_point_down_only() -> None:
    level = {name: i for i, names in enumerate(STACK) for name in names}
    bad = [
        f"{file}:{line}: virtcore.{src} (level {level[src]}) imports virtcore.{dst} "
        f"(level {level[dst]})"
        for src, dst, file, line in import_edges()
        if src in level and dst in level and src != dst and level[dst] >= level[src]
    ]
    order = " ← ".join("{" + ", ".join(sorted(names)) + "}" for names in STACK)
    assert not bad, f"the stack is one-way ({order}):\n" + "\n".join(bad)


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for src, dst, file, line in import_edges():
        if src != dst and ROOT not in (src, dst):
            graph.setdefault(src, set()).add(dst)
            where.setdefault((src, dst), f"{file}:{line}")
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle between virtcore packages:\n" + "\n".join(
        f"{a} -> {b} ({where[(a, b)]})" for a, b in itertools.pairwise(cycle)
    )


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle ``[a, b, ..., a]`` in ``graph``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}}) is None
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


PROBE = r"""
import importlib, json, pkgutil, sys
sys.path.insert(0, sys.argv[1])
before = set(sys.modules)
import virtcore
names = ["virtcore"]
for info in pkgutil.iter_modules(virtcore.__path__, "virtcore."):
    if info.ispkg and info.name != "virtcore.viz":
        importlib.import_module(info.name)
        names.append(info.name)
new = sorted({m.split(".")[0] for m in set(sys.modules) - before})
print(json.dumps({"imported": names, "file": virtcore.__file__, "new": new,
                  "stdlib": sorted(sys.stdlib_module_names)}))
"""


@pytest.fixture(scope="module")
def fresh_import() -> dict[str, list[str] | str]:
    """Import virtcore and its non-viz subpackages in a new interpreter; report what loaded."""
    proc = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"importing virtcore failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


def test_import_leaves_views_and_notebook_stack_unloaded(fresh_import: dict) -> None:
    assert Path(fresh_import["file"]).is_relative_to(PACKAGE_DIR)
    assert "virtcore.hw" in fresh_import["imported"]
    heavy = [name for name in HEAVY if name in fresh_import["new"]]
    assert not heavy, f"import of {fresh_import['imported']} loaded {heavy}"


def test_import_loads_only_the_standard_library(fresh_import: dict) -> None:
    stdlib = set(fresh_import["stdlib"]) | {"virtcore"}
    foreign = [name for name in fresh_import["new"] if name not in stdlib]
    assert not foreign, (
        f"import of {fresh_import['imported']} loaded non-standard-library modules {foreign}"
    )
