"""Xen from the inside: the hypervisor, domains, hypercalls, memory and the virtual MMU.

Submodules are imported on demand (e.g. ``from virtcore.xen.memory import MachineMemory``).
"""
