"""virtcore — a simulated machine, hypervisors, KVM and Xen, built to be read.

The library is pure Python and imports only the standard library: the
views (matplotlib, networkx, ipywidgets) live in :mod:`virtcore.viz` and are
imported lazily there, so ``import virtcore`` stays cheap and headless.

Packages, with one-way imports (``hw`` ← ``vmm`` ← ``kvm``/``xen``; nothing
imports ``viz``):

- :mod:`virtcore.hw` — the simulated machine (ISA, CPU, memory, paging, devices).
- :mod:`virtcore.viz` — views of traces: plots, graphs and widgets.

>>> import virtcore
>>> virtcore.__version__
'0.1.0'
"""

from virtcore.errors import VirtcoreError
from virtcore.rng import make_rng

__version__ = "0.1.0"

__all__ = ["VirtcoreError", "__version__", "make_rng"]
