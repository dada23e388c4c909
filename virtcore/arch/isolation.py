"""Isolation: what one guest's fault reaches, and which guest OS a stack can run.

OS-level virtualization's weakness in the notes (隔离性差，多容器共享同一操作系统,
S1.4) follows from its stack: every container's apps run on the *one* host
kernel, so a kernel crash or a kernel-level exploit started in one container
reaches all of them, and every container must use that kernel.  In a VM a
guest kernel crash stays inside the VM — but the layer all VMs share (the
hypervisor, or the host kernel under hosted and hybrid VMMs) takes every VM
down with it when *it* fails.  :func:`simulate_fault` shows both, computed
from the stack's edges, not looked up.

Simplification: a fault here is all-or-nothing along "runs on" edges.  Real
kernels sometimes survive an oops in one process's context, and real exploits
need a second bug to escape a VM; this model answers "what *can* the fault
reach", which is what isolation means.

>>> out = simulate_fault(os_level(containers=3), "kernel_crash", in_="ct2")
>>> out.affected, out.survivors
(('ct1', 'ct2', 'ct3'), ())
>>> simulate_fault(bare_metal(guests=3), "kernel_crash", in_="vm2").affected
('vm2',)
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from virtcore.arch.stacks import (  # noqa: F401  (bare_metal, hosted, os_level: doctests)
    Architecture,
    ArchitectureError,
    EdgeKind,
    Stack,
    bare_metal,
    hosted,
    os_level,
    stack_for,
)

__all__ = [
    "DEFAULT_GUEST_OS",
    "DEFAULT_HOST_OS",
    "KERNEL_OF",
    "Fault",
    "FaultOutcome",
    "Host",
    "IncompatibleGuestError",
    "RunCheck",
    "can_run",
    "isolation_summary",
    "kernel_of",
    "simulate_fault",
]


class IncompatibleGuestError(ArchitectureError):
    """A guest OS that the host cannot run (e.g. a Windows container on a Linux kernel).

    >>> issubclass(IncompatibleGuestError, ArchitectureError)
    True
    """


#: Operating systems the model knows, and the kernel each one runs on.
#: Linux distributions differ in user space only, so they share a kernel family.
KERNEL_OF: dict[str, str] = {
    "linux": "Linux",
    "ubuntu": "Linux",
    "debian": "Linux",
    "centos": "Linux",
    "rhel": "Linux",
    "alpine": "Linux",
    "windows": "Windows NT",
    "windows server": "Windows NT",
    "freebsd": "FreeBSD",
}

#: Host OS per architecture when none is given (hosted: Windows running Linux, S1.8).
DEFAULT_HOST_OS: dict[Architecture, str | None] = {
    Architecture.HOSTED: "windows",
    Architecture.BARE_METAL: None,
    Architecture.OS_LEVEL: "linux",
    Architecture.HYBRID: "linux",
}

#: Guest OS when none is given.
DEFAULT_GUEST_OS = "linux"


def kernel_of(os_name: str) -> str:
    """The kernel family an OS runs on.

    >>> kernel_of("Ubuntu"), kernel_of("windows")
    ('Linux', 'Windows NT')
    """
    key = os_name.strip().lower()
    try:
        return KERNEL_OF[key]
    except KeyError:
        known = ", ".join(KERNEL_OF)
        raise ArchitectureError(f"unknown OS {os_name!r}; known: {known}") from None


@dataclass(frozen=True)
class RunCheck:
    """Whether a guest OS can run on a stack, and why; true or false like a bool.

    >>> bool(RunCheck(False, "no"))
    False
    """

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return f"<{'yes' if self.ok else 'no'}: {self.reason}>"


def can_run(stack: Stack, guest_os: str) -> RunCheck:
    """Can ``guest_os`` run as a guest of ``stack``?

    A container has no kernel of its own: it runs on the host's, so its OS
    must use the same kernel (S1.4; [NS, OVZ]: containers "share the same
    architecture and kernel version").  A VM brings its own kernel, so guest
    and host OS are independent (S1.8: Windows running Linux).

    >>> can_run(os_level(host_os="linux"), "ubuntu")  # doctest: +ELLIPSIS
    <yes: a container uses the host's Linux kernel; ubuntu runs on Linux ...>
    >>> bool(can_run(os_level(host_os="linux"), "windows"))
    False
    >>> can_run(hosted(host_os="windows"), "linux").ok
    True
    """
    kernel = kernel_of(guest_os)
    if stack.has_role("monitor", stack.guests[0]):
        host = f"a {kernel_of(stack.host_os)} host" if stack.host_os else "the hypervisor"
        return RunCheck(
            True,
            f"a VM brings its own kernel: {guest_os} ({kernel}) runs on {host} (S1.8)",
        )
    host_kernel = kernel_of(stack.host_os or DEFAULT_GUEST_OS)
    if kernel == host_kernel:
        return RunCheck(
            True,
            f"a container uses the host's {host_kernel} kernel; {guest_os} runs on {kernel} "
            "(only its user space is its own)",
        )
    return RunCheck(
        False,
        f"a container has no kernel of its own: {guest_os} needs a {kernel} kernel, but every "
        f"container on this host runs on its {host_kernel} kernel (S1.4). Tools that seem to do it "
        "start a hidden VM with the right kernel.",
    )


@dataclass(frozen=True)
class Host:
    """A machine with an architecture and named guests, each with an OS.

    Building one checks :func:`can_run` for every guest and raises
    :class:`IncompatibleGuestError` with the reason if one cannot run.

    Parameters
    ----------
    architecture : Architecture or str
    guests : mapping of name to OS, or sequence of names (OS = the default)
    host_os : str, optional
        Defaults per architecture (:data:`DEFAULT_HOST_OS`); ignored on bare metal.

    >>> h = Host("os-level", {"web": "ubuntu", "db": "alpine"})
    >>> h.stack.guests
    ('web', 'db')
    >>> Host("os-level", {"web": "ubuntu", "iis": "windows"})
    Traceback (most recent call last):
    ...
    virtcore.arch.isolation.IncompatibleGuestError: cannot place 'iis': a container has no ...
    >>> Host("hosted", {"vm1": "linux"}).host_os
    'windows'
    """

    architecture: Architecture
    guests: tuple[tuple[str, str], ...]
    host_os: str | None = None
    stack: Stack = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        architecture: Architecture | str,
        guests: Mapping[str, str] | Sequence[str],
        host_os: str | None = None,
    ) -> None:
        arch = Architecture(architecture)
        if isinstance(guests, Mapping):
            pairs = tuple((str(n), str(o)) for n, o in guests.items())
        else:
            pairs = tuple((str(n), DEFAULT_GUEST_OS) for n in guests)
        if arch is Architecture.BARE_METAL:
            host = None
        elif arch is Architecture.HYBRID:
            host = "linux"
        else:
            host = host_os if host_os is not None else DEFAULT_HOST_OS[arch]
        kwargs: dict[str, object] = (
            {} if arch in (Architecture.BARE_METAL, Architecture.HYBRID) else {"host_os": host}
        )
        stack = stack_for(arch, [n for n, _ in pairs], **kwargs)
        for name, os_name in pairs:
            check = can_run(stack, os_name)
            if not check:
                raise IncompatibleGuestError(f"cannot place {name!r}: {check.reason}")
        object.__setattr__(self, "architecture", arch)
        object.__setattr__(self, "guests", pairs)
        object.__setattr__(self, "host_os", host)
        object.__setattr__(self, "stack", stack)

    def guest_os(self, name: str) -> str:
        """The OS of one guest.

        >>> Host("bare-metal", {"a": "windows"}).guest_os("a")
        'windows'
        """
        for n, o in self.guests:
            if n == name:
                return o
        raise ArchitectureError(f"no guest {name!r} on this host")

    def __repr__(self) -> str:
        gs = ", ".join(f"{n}: {o}" for n, o in self.guests)
        return f"Host({self.architecture.value}, host OS {self.host_os or '—'}; guests {gs})"


class Fault(str, enum.Enum):
    """Faults to inject.

    - ``app_crash``: an app in the guest dies.
    - ``kernel_crash`` / ``kernel_exploit``: the kernel the guest's apps run on
      panics / is taken over by an attacker in the guest.  For a VM that is its
      own kernel; for a container, the shared host kernel.
    - ``vmm_crash``: the guest's user-space VMM process (hosted VMM, QEMU) dies.
    - ``backend_crash``: the domain holding the guest's backend drivers
      (Xen's Domain 0) crashes; Xen then reboots the machine [XEN-SHUTDOWN].
    - ``hypervisor_crash`` / ``hypervisor_exploit``: the most privileged software
      fails or is taken over ("VM escape"): the hypervisor on bare metal, the host
      kernel (with ``kvm.ko`` in it) for hybrid, the host kernel for hosted and
      OS-level.

    >>> Fault("kernel_exploit").is_exploit
    True
    """

    APP_CRASH = "app_crash"
    KERNEL_CRASH = "kernel_crash"
    KERNEL_EXPLOIT = "kernel_exploit"
    VMM_CRASH = "vmm_crash"
    BACKEND_CRASH = "backend_crash"
    HYPERVISOR_CRASH = "hypervisor_crash"
    HYPERVISOR_EXPLOIT = "hypervisor_exploit"

    @property
    def is_exploit(self) -> bool:
        """True if the fault compromises rather than crashes."""
        return self in (Fault.KERNEL_EXPLOIT, Fault.HYPERVISOR_EXPLOIT)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class FaultOutcome:
    """What a fault reached.

    ``affected`` guests crashed (or are compromised, for exploits);
    ``survivors`` kept running untouched; ``host_affected`` says whether the
    most privileged software layer itself failed.

    >>> o = simulate_fault(hosted(guests=2), "vmm_crash", in_="vm1")
    >>> o.affected, o.survivors, o.host_affected
    (('vm1',), ('vm2',), False)
    """

    stack: str
    fault: Fault
    origin: str
    started_in: str | None
    effect: str
    failed_layers: tuple[str, ...]
    affected: tuple[str, ...]
    survivors: tuple[str, ...]
    host_affected: bool

    def __repr__(self) -> str:
        where = f" in {self.started_in}" if self.started_in else ""
        host = f"; the host itself is {self.effect}" if self.host_affected else ""
        return (
            f"<{self.fault.value}{where} on {self.stack}: {self.origin} {self.effect}; "
            f"{self.effect} guests: {', '.join(self.affected) or 'none'}; "
            f"unaffected: {', '.join(self.survivors) or 'none'}{host}>"
        )


def _spread(stack: Stack, start: str) -> set[str]:
    """Every layer that fails with ``start``.

    Upward along fault-carrying edges, both ways along ``PART_OF``.
    """
    failed = {start}
    todo = [start]
    while todo:
        cur = todo.pop()
        for e in stack.edges:
            nxt = None
            if e.lower == cur and e.kind.propagates_faults:
                nxt = e.upper
            elif e.upper == cur and e.kind is EdgeKind.PART_OF:
                nxt = e.lower
            if nxt is not None and nxt not in failed:
                failed.add(nxt)
                todo.append(nxt)
    return failed


def simulate_fault(
    target: Stack | Host,
    fault: Fault | str,
    in_: str | None = None,
) -> FaultOutcome:
    """Inject ``fault`` (started in guest ``in_``) and see which guests it reaches.

    Parameters
    ----------
    target : Stack or Host
    fault : Fault or str
    in_ : str, optional
        The guest (VM or container) where the fault starts; required for
        app, kernel and VMM faults, optional (for the record) for hypervisor faults.

    >>> simulate_fault(os_level(containers=2), "kernel_exploit", in_="ct1").affected
    ('ct1', 'ct2')
    >>> simulate_fault(bare_metal(guests=2), "kernel_exploit", in_="vm1").survivors
    ('vm2',)
    >>> simulate_fault(bare_metal(guests=2), "hypervisor_crash").affected
    ('vm1', 'vm2')
    """
    stack = target.stack if isinstance(target, Host) else target
    try:
        f = Fault(fault)
    except ValueError:
        known = ", ".join(x.value for x in Fault)
        raise ArchitectureError(f"unknown fault {fault!r}; known: {known}") from None
    if in_ is not None and in_ not in stack.guests:
        raise ArchitectureError(
            f"no guest {in_!r} in {stack.name!r}; guests: {', '.join(stack.guests)}"
        )
    if f in (Fault.HYPERVISOR_CRASH, Fault.HYPERVISOR_EXPLOIT):
        origin = stack.role("root").name
    else:
        if in_ is None:
            raise ArchitectureError(f"{f.value} starts in a guest: pass in_=<guest name>")
        role = {Fault.APP_CRASH: "app", Fault.VMM_CRASH: "user_vmm",
                Fault.BACKEND_CRASH: "backend"}.get(f, "kernel")
        if not stack.has_role(role, in_):
            raise ArchitectureError(
                f"{in_!r} in {stack.name!r} has no {role.replace('_', '-')} layer to fail "
                "(bare-metal and OS-level guests have no user-space VMM process; only a "
                "Xen-style guest has a backend in another domain)"
            )
        origin = stack.role(role, in_).name
    failed = _spread(stack, origin)
    affected = tuple(
        g
        for g in stack.guests
        if any(layer.name in failed for layer in stack.layers if layer.guest == g)
    )
    survivors = tuple(g for g in stack.guests if g not in affected)
    order = {layer.name: i for i, layer in enumerate(stack.layers)}
    return FaultOutcome(
        stack.name,
        f,
        origin,
        in_,
        "compromised" if f.is_exploit else "crashed",
        tuple(sorted(failed, key=order.__getitem__)),
        affected,
        survivors,
        stack.role("root").name in failed,
    )


def isolation_summary(guests: int = 3) -> list[tuple[str, str, int, int]]:
    """For each architecture and guest-started fault: how many of ``guests`` guests it reaches.

    Rows ``(architecture, fault, affected, total)``; faults that an
    architecture cannot have (no VMM process on bare metal) are left out.

    >>> rows = isolation_summary(3)
    >>> [(r[0], r[2]) for r in rows if r[1] == "kernel_crash"]
    [('hosted', 1), ('bare-metal', 1), ('os-level', 3), ('hybrid', 1)]
    """
    rows: list[tuple[str, str, int, int]] = []
    for arch in Architecture:
        stack = stack_for(arch, guests)
        first = stack.guests[0]
        for f in Fault:
            try:
                out = simulate_fault(stack, f, in_=first)
            except ArchitectureError:
                continue
            rows.append((arch.value, f.value, len(out.affected), len(stack.guests)))
    return rows
