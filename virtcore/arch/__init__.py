"""Virtualization architectures (虚拟化架构) — chapter 1 of the course.

Pure data and pure functions (standard library only):

- :mod:`~virtcore.arch.stacks` — hosted (寄居虚拟化), bare-metal (裸金属虚拟化:
  ESX-style, and Xen-style with Domain 0), OS-level (操作系统虚拟化) and
  hybrid (混合虚拟化) architectures as stacks of layers; Type 1 / Type 2 read
  off a stack (S1.1–S1.6, N3).
- :mod:`~virtcore.arch.paths` — what a system call, an I/O request, a
  privileged instruction, a TLB miss cross in each stack (S1.8).
- :mod:`~virtcore.arch.costs` — paths priced with the course's one cost model
  (:mod:`virtcore.costs`, teaching assumptions); when the notes' speed ordering
  holds and what changes it (S1.7, S1.8).
- :mod:`~virtcore.arch.isolation` — faults and which guests they reach; which
  guest OS a stack can run (S1.4).
- :mod:`~virtcore.arch.products` — the vendor table with the notes'
  claims and corrections (S1.2, S1.7–S1.9, N1–N3, N6–N8).
- :mod:`~virtcore.arch.duties` — the hypervisor's two duties as a tiny
  simulation (S1.3).
- :mod:`~virtcore.arch.nesting` — KVM inside KVM and what it costs (S1.10, N7).

>>> from virtcore.arch import compare_architectures, Event
>>> [name for name, _ in compare_architectures({Event.IO: 0.3, Event.COMPUTE: 0.7})]
['os-level', 'bare-metal', 'hosted']
"""

from virtcore.arch.costs import (
    DEFAULT_MODEL,
    CostModel,
    CostTable,
    Crossover,
    RankChange,
    Sweep,
    assist_configs,
    compare_architectures,
    cost_breakdown,
    cost_table,
    crossing_price,
    normalize_mix,
    ordering_sweep,
    path_cost,
    workload_cost,
)
from virtcore.arch.duties import (
    OPS,
    DutyEvent,
    DutyTrace,
    Instr,
    OpKind,
    Result,
    ToyHypervisor,
    Trap,
    parse_instr,
    run_duties,
)
from virtcore.arch.isolation import (
    Fault,
    FaultOutcome,
    Host,
    IncompatibleGuestError,
    RunCheck,
    can_run,
    isolation_summary,
    kernel_of,
    simulate_fault,
)
from virtcore.arch.nesting import NestingRow, NestingTable, kvm_nested, nested_cost, nesting_costs
from virtcore.arch.paths import CrossingKind, Event, Path, Step, event_path, tlb_miss_references
from virtcore.arch.products import (
    KERNEL_ON_HARDWARE,
    PRODUCTS,
    Correction,
    Nesting,
    Product,
    ProductTable,
    notes_corrections,
    product,
    products,
)
from virtcore.arch.stacks import (
    KVM_TYPE_VIEWS,
    Architecture,
    ArchitectureError,
    Classification,
    Edge,
    EdgeKind,
    HypervisorType,
    Layer,
    LayerKind,
    PrivilegeLevel,
    Stack,
    TypeView,
    all_stacks,
    bare_metal,
    bare_metal_xen,
    classify,
    hosted,
    hybrid,
    native,
    os_level,
    stack_for,
    stack_graph_data,
    type1_diagram,
    type2_diagram,
)

__all__ = [
    "DEFAULT_MODEL",
    "KERNEL_ON_HARDWARE",
    "KVM_TYPE_VIEWS",
    "OPS",
    "PRODUCTS",
    "Architecture",
    "ArchitectureError",
    "Classification",
    "Correction",
    "CostModel",
    "CostTable",
    "CrossingKind",
    "Crossover",
    "DutyEvent",
    "DutyTrace",
    "Edge",
    "EdgeKind",
    "Event",
    "Fault",
    "FaultOutcome",
    "Host",
    "HypervisorType",
    "IncompatibleGuestError",
    "Instr",
    "Layer",
    "LayerKind",
    "Nesting",
    "NestingRow",
    "NestingTable",
    "OpKind",
    "Path",
    "PrivilegeLevel",
    "Product",
    "ProductTable",
    "RankChange",
    "Result",
    "RunCheck",
    "Stack",
    "Step",
    "Sweep",
    "ToyHypervisor",
    "Trap",
    "TypeView",
    "all_stacks",
    "assist_configs",
    "bare_metal",
    "bare_metal_xen",
    "can_run",
    "classify",
    "compare_architectures",
    "cost_breakdown",
    "cost_table",
    "crossing_price",
    "event_path",
    "hosted",
    "hybrid",
    "isolation_summary",
    "kernel_of",
    "kvm_nested",
    "native",
    "nested_cost",
    "nesting_costs",
    "normalize_mix",
    "notes_corrections",
    "ordering_sweep",
    "os_level",
    "parse_instr",
    "path_cost",
    "product",
    "products",
    "run_duties",
    "simulate_fault",
    "stack_for",
    "stack_graph_data",
    "tlb_miss_references",
    "type1_diagram",
    "type2_diagram",
    "workload_cost",
]
