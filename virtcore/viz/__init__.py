"""virtcore.viz — views of the library's data: tables, plots, graphs and widgets.

Simulations return data (states, traces); a view is a function of that data.
Each topic has its own module beside the others, named after the package it
shows:

- :mod:`virtcore.viz.hw` — the simulated machine: registers, memory with
  disassembly, the ISA reference card, a stepper widget, trace plots.
- :mod:`virtcore.viz.course` — the course map (chapters ↔ syllabus ids).
- :mod:`virtcore.viz.selfcheck` — ungraded self-checks for the chapters.
- :mod:`virtcore.viz.arch` — architecture stacks, event paths, cost plots and
  the chapter-1 explorers.
- :mod:`virtcore.viz.vmm` — the VM lifecycle graph and panel, pre-copy
  migration plots, the trap stepper, the comparison of the three fixes.
- :mod:`virtcore.viz.sched` — Gantt charts, shares, the scheduler playground.
- :mod:`virtcore.viz.selfcheck_ch2` — chapter 2's self-check questions.
- :mod:`virtcore.viz.kvm` — ioctl and exit tables, device-path and TCG-vs-KVM
  plots for the KVM walkthrough; :mod:`virtcore.viz.selfcheck_kvm` its questions.

Rules every module here follows:

- matplotlib, ipywidgets, IPython and networkx are imported *inside* the
  functions that need them (see :mod:`virtcore.viz._lazy`), so
  ``import virtcore.viz`` — and every ``virtcore.viz.*`` module — works
  without them and without a display.
- Nothing in the rest of virtcore imports ``viz``.
- Text views return a :class:`~virtcore.viz._lazy.TextView`: a ``str``
  whose repr is the text itself (so a notebook cell shows it as is) and
  which may carry an HTML or Markdown rendering for Jupyter.

This file imports none of the submodules; ``virtcore.viz.hw`` and the
others load on first attribute access:

>>> import virtcore.viz as viz
>>> callable(viz.hw.registers_table)
True
>>> issubclass(viz.ViewError, ValueError)
True
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from virtcore.errors import VirtcoreError

__all__ = ["ViewError"]


class ViewError(VirtcoreError, ValueError):
    """A view was asked to show something it cannot (e.g. a run recorded without a trace)."""


def __getattr__(name: str) -> ModuleType:
    """Import the submodule ``virtcore.viz.<name>`` on first use (PEP 562).

    Any public module placed in this folder works, so later chapters add
    ``arch.py`` or ``sched.py`` without touching this file.
    """
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
