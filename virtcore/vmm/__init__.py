"""virtcore.vmm — a generic virtual machine monitor (chapter 2: 虚拟机与VMM).

What is here, and where:

- **VMs and virtual resources** (S2.1, S2.2) — :class:`VM` (memory as a P2M
  list of host frames behind a relocation map, :class:`VCPU` states, private
  serial port and timer), :mod:`virtcore.vmm.vm`.
- **the hypervisor** (S1.3) — :class:`Hypervisor` runs guest kernels
  deprivileged and emulates their privileged instructions through a
  :class:`HandlerTable` (:mod:`virtcore.vmm.handlers`), or in guest mode with
  hardware assist; schedules VMs round-robin (S2.3).
- **Popek & Goldberg** — :func:`classify` the ISA; check equivalence,
  resource control and efficiency on generated guests
  (:mod:`virtcore.vmm.popek`).
- **the three fixes** — binary translation (a translation cache of guest
  kernel blocks, :mod:`virtcore.vmm.bt`), paravirtualization, hardware
  assist, compared on the same guests and priced with the course's one cost
  model, :mod:`virtcore.costs` (:mod:`virtcore.vmm.fixes`).
- **management** (S2.4) — the lifecycle state machine
  (:mod:`virtcore.vmm.lifecycle`), :class:`Manager` over several hosts, and
  pre-copy live migration (:mod:`virtcore.vmm.migration`).

This package imports only :mod:`virtcore.hw`, :mod:`virtcore.errors` and
:mod:`virtcore.rng`.

>>> from virtcore.vmm import Hypervisor
>>> hv = Hypervisor()
>>> vm = hv.create("hello", 1, program='''
...     movi r1, 'h'
...     out  0x3f8, r1        ; traps: the VMM writes to hello's own serial port
...     movi r1, 'i'
...     out  0x3f8, r1
...     hlt''')
>>> hv.run().states["hello"].value, vm.console, vm.stats.emulated
('shutoff', 'hi', 3)
"""

from virtcore.vmm.bt import Block, TranslationCache, translate_block
from virtcore.vmm.fixes import (
    POPF_GUEST,
    POPF_GUEST_PV,
    CostModel,
    FixComparison,
    FixResult,
    compare_fixes,
    run_cost,
    run_fix,
)
from virtcore.vmm.handlers import Action, HandlerTable, Hypercall, Insn
from virtcore.vmm.hypervisor import (
    Hypervisor,
    Manager,
    RunSummary,
    Slice,
    UnknownVMError,
    VMInfo,
    format_list,
)
from virtcore.vmm.lifecycle import (
    TRANSITIONS,
    EventLog,
    IllegalTransition,
    LogEntry,
    VMState,
    allowed_ops,
    next_state,
)
from virtcore.vmm.migration import (
    MigrationResult,
    PrecopyResult,
    PrecopyRound,
    live_migrate,
    precopy,
)
from virtcore.vmm.popek import (
    THEOREM_1,
    Classification,
    EfficiencyResult,
    EquivalenceResult,
    FinalState,
    GuestProgram,
    ResourceControlResult,
    SensitiveUnprivileged,
    check_equivalence,
    check_resource_control,
    classify,
    generate_guest,
    measure_efficiency,
    run_bare,
    run_guest,
)
from virtcore.vmm.vm import VCPU, VM, GuestMemory, Technique, VMMError, VMStats

__all__ = [
    "POPF_GUEST",
    "POPF_GUEST_PV",
    "THEOREM_1",
    "TRANSITIONS",
    "VCPU",
    "VM",
    "Action",
    "Block",
    "Classification",
    "CostModel",
    "EfficiencyResult",
    "EquivalenceResult",
    "EventLog",
    "FinalState",
    "FixComparison",
    "FixResult",
    "GuestMemory",
    "GuestProgram",
    "HandlerTable",
    "Hypercall",
    "Hypervisor",
    "IllegalTransition",
    "Insn",
    "LogEntry",
    "Manager",
    "MigrationResult",
    "PrecopyResult",
    "PrecopyRound",
    "ResourceControlResult",
    "RunSummary",
    "SensitiveUnprivileged",
    "Slice",
    "Technique",
    "TranslationCache",
    "UnknownVMError",
    "VMInfo",
    "VMMError",
    "VMState",
    "VMStats",
    "allowed_ops",
    "check_equivalence",
    "check_resource_control",
    "classify",
    "compare_fixes",
    "format_list",
    "generate_guest",
    "live_migrate",
    "measure_efficiency",
    "next_state",
    "precopy",
    "run_bare",
    "run_cost",
    "run_fix",
    "run_guest",
    "translate_block",
]
