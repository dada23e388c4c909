"""The VM lifecycle as a state machine, and the management event log (S2.4).

A management interface (管理接口) is a small set of calls — define, start,
pause, resume, shutdown, destroy, undefine, migrate — that a user interface
(a CLI like Xen's ``xl`` or libvirt's ``virsh``) is built on.  Each call is
a *transition* of one VM between states; the whole interface is one table,
:data:`TRANSITIONS`, and a call that is not in the table raises
:class:`IllegalTransition`, naming the state and the operation.

The words are libvirt's and ``xl``'s [VIRSH, XL-1]:

- ``define`` registers a configuration (no memory, nothing runs); ``undefine``
  removes the configuration of a VM that is not running — the VM is gone.
- ``shutdown`` asks the guest OS to power off; ``destroy`` is a **forced
  power-off** ("pulling the plug"): the VM stops at once, its memory goes back
  to the host, and — in libvirt — its definition stays, so it can be started
  again.  (``xl destroy`` kills the domain in the same way; ``xl`` keeps no
  definitions, only the configuration file it was created from.)
- ``migrate`` moves a VM to another host: a running VM live (pre-copy), a
  paused VM paused (its memory copied while it does not run, and it stays
  paused on the target), and an inactive one *offline* — only its definition
  moves (``virsh migrate --offline --persistent``).

::

                 start                 pause
     DEFINED ──────────────▶ RUNNING ◀───────▶ PAUSED
        │           ▲          │  ▲    resume    │
        │     start │ shutdown │  │ migrated     │ destroy
        │           │ destroy  ▼  │ (on target)  ▼
        │        SHUTOFF ◀─────┘ MIGRATING      SHUTOFF
        │        CRASHED ◀── the guest crashes (unhandled trap, killed)
        └──── undefine (from DEFINED or SHUTOFF) ──▶ UNDEFINED

     migrate: RUNNING → MIGRATING (live); PAUSED, SHUTOFF, DEFINED stay as they are,
              on the other host

Guest-initiated changes are transitions too (``guest-halt``: the guest
stopped for good, ``guest-crash``), so the event log shows them.  The
``xl list`` state letters [XL-1, XL-INFO-C] are given for comparison in
:attr:`VMState.xl_letter`: ``r`` running, ``p`` paused, ``s`` shut down,
``c`` crashed.  Simplifications: ``DEFINED`` is libvirt's idea (a
configuration never started; libvirt shows it as "shut off" too); ``xl``
has no such state — ``xl create`` builds and starts at once.  ``shutdown``
completes at once (a real guest takes its time, and may refuse); a paused
guest cannot act on a shutdown request, so only ``destroy`` stops it.
Undefining a *running* VM (libvirt makes it transient) is refused here.

>>> next_state(VMState.DEFINED, "start")
<VMState.RUNNING: 'running'>
>>> next_state(VMState.RUNNING, "destroy")
<VMState.SHUTOFF: 'shutoff'>
>>> next_state(VMState.RUNNING, "undefine")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
virtcore.vmm.lifecycle.IllegalTransition: cannot undefine a VM that is running (allowed: ...)
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from virtcore.errors import VirtcoreError

__all__ = [
    "GUEST_OPS",
    "MANAGEMENT_OPS",
    "TRANSITIONS",
    "EventLog",
    "IllegalTransition",
    "LogEntry",
    "VMState",
    "allowed_ops",
    "next_state",
]


class VMState(enum.Enum):
    """The states a VM can be in.

    >>> [s.value for s in VMState]
    ['defined', 'running', 'paused', 'shutoff', 'crashed', 'migrating', 'undefined']
    """

    DEFINED = "defined"  # configuration only: no memory, never started
    RUNNING = "running"  # eligible for scheduling on its host
    PAUSED = "paused"  # keeps its memory, not scheduled (virsh suspend, xl pause)
    SHUTOFF = "shutoff"  # powered off (shut down or destroyed); still defined, can start again
    CRASHED = "crashed"  # the guest died (unhandled trap, killed by the VMM)
    MIGRATING = "migrating"  # being copied live to another host (still runs during pre-copy)
    UNDEFINED = "undefined"  # its definition removed: gone, no operation is legal any more

    @property
    def xl_letter(self) -> str:
        """The nearest ``xl list`` state letter (r b p s c), or ``-`` [XL-1].

        >>> VMState.PAUSED.xl_letter, VMState.DEFINED.xl_letter
        ('p', '-')
        """
        return {"running": "r", "migrating": "r", "paused": "p", "shutoff": "s",
                "crashed": "c"}.get(self.value, "-")

    @property
    def active(self) -> bool:
        """True while the VM holds memory on a host (running, paused, migrating).

        >>> VMState.PAUSED.active, VMState.SHUTOFF.active
        (True, False)
        """
        return self in (VMState.RUNNING, VMState.PAUSED, VMState.MIGRATING)


S = VMState

#: Operations a management tool may call.
MANAGEMENT_OPS: tuple[str, ...] = ("start", "pause", "resume", "shutdown", "destroy", "undefine",
                                   "migrate")
#: Transitions the VMM makes itself (the guest halted or crashed; a migration finished).
GUEST_OPS: tuple[str, ...] = ("guest-halt", "guest-crash", "migrated")

#: The whole state machine: (state, operation) → new state.  Anything else is illegal.
TRANSITIONS: dict[tuple[VMState, str], VMState] = {
    (S.DEFINED, "start"): S.RUNNING,
    (S.SHUTOFF, "start"): S.RUNNING,
    (S.CRASHED, "start"): S.RUNNING,
    (S.RUNNING, "pause"): S.PAUSED,
    (S.PAUSED, "resume"): S.RUNNING,
    (S.RUNNING, "shutdown"): S.SHUTOFF,
    (S.RUNNING, "destroy"): S.SHUTOFF,
    (S.PAUSED, "destroy"): S.SHUTOFF,
    (S.CRASHED, "destroy"): S.SHUTOFF,
    (S.DEFINED, "undefine"): S.UNDEFINED,
    (S.SHUTOFF, "undefine"): S.UNDEFINED,
    (S.RUNNING, "migrate"): S.MIGRATING,
    (S.MIGRATING, "migrated"): S.RUNNING,
    (S.PAUSED, "migrate"): S.PAUSED,
    (S.SHUTOFF, "migrate"): S.SHUTOFF,
    (S.DEFINED, "migrate"): S.DEFINED,
    (S.RUNNING, "guest-halt"): S.SHUTOFF,
    (S.RUNNING, "guest-crash"): S.CRASHED,
}


class IllegalTransition(VirtcoreError):  # noqa: N818 - the name the course uses
    """An operation that the VM's current state does not allow.

    Attributes
    ----------
    state : VMState
    op : str
    vm : str
        The VM's name ("" when not known).

    >>> err = IllegalTransition(VMState.UNDEFINED, "start", vm="web")
    >>> err.state.name, err.op, str(err)
    ('UNDEFINED', 'start', "cannot start VM 'web': it is undefined (no operation is allowed)")
    """

    def __init__(self, state: VMState, op: str, *, vm: str = "") -> None:
        self.state = state
        self.op = op
        self.vm = vm
        allowed = allowed_ops(state)
        what = f"VM {vm!r}: it is" if vm else "a VM that is"
        hint = f"allowed: {', '.join(allowed)}" if allowed else "no operation is allowed"
        super().__init__(f"cannot {op} {what} {state.value} ({hint})")


def allowed_ops(state: VMState, *, include_guest: bool = False) -> list[str]:
    """The operations legal in ``state`` (management operations only, by default).

    >>> allowed_ops(VMState.RUNNING)
    ['destroy', 'migrate', 'pause', 'shutdown']
    >>> allowed_ops(VMState.SHUTOFF)
    ['migrate', 'start', 'undefine']
    """
    ops = MANAGEMENT_OPS + (GUEST_OPS if include_guest else ())
    return sorted(op for op in ops if (state, op) in TRANSITIONS)


def next_state(state: VMState, op: str, *, vm: str = "") -> VMState:
    """The state after ``op`` in ``state``; raises :class:`IllegalTransition` if not allowed.

    >>> next_state(VMState.RUNNING, "pause").name
    'PAUSED'
    >>> next_state(VMState.SHUTOFF, "resume", vm="db")
    Traceback (most recent call last):
    ...
    virtcore.vmm.lifecycle.IllegalTransition: cannot resume VM 'db': it is shutoff (allowed: ...)
    """
    if op not in MANAGEMENT_OPS and op not in GUEST_OPS:
        raise IllegalTransition(state, op, vm=vm)
    try:
        return TRANSITIONS[(state, op)]
    except KeyError:
        raise IllegalTransition(state, op, vm=vm) from None


@dataclass(frozen=True)
class LogEntry:
    """One line of the management event log.

    ``time`` is the host's clock (ticks of guest execution on that host) when
    the event happened; ``old``/``new`` are None for events that change no
    state (e.g. ``define``).

    >>> print(LogEntry(3, 120, "host0", "web", "pause", VMState.RUNNING, VMState.PAUSED))
    #3    t=120      host0    web        pause running -> paused
    """

    seq: int
    time: int
    host: str
    vm: str
    op: str
    old: VMState | None
    new: VMState | None
    detail: str = ""

    def __str__(self) -> str:
        change = ""
        if self.old is not None and self.new is not None:
            change = f" {self.old.value} -> {self.new.value}"
        extra = f"  ({self.detail})" if self.detail else ""
        return (f"#{self.seq:<4d} t={self.time:<8d} {self.host:<8s} {self.vm:<10s}"
                f" {self.op}{change}{extra}")


class EventLog:
    """The management event log: what happened to which VM, in order.

    Several hypervisors may share one log (a :class:`~virtcore.vmm.Manager` does),
    so a migration shows up once, in order, across hosts.  Keeps the last
    ``maxlen`` entries.

    >>> log = EventLog()
    >>> _ = log.record("host0", "web", "start", VMState.DEFINED, VMState.RUNNING, time=5)
    >>> print(log)
    #0    t=5        host0    web        start defined -> running
    >>> len(log), log[-1].op
    (1, 'start')
    """

    def __init__(self, maxlen: int = 10_000) -> None:
        self._entries: deque[LogEntry] = deque(maxlen=maxlen)
        self._seq = 0

    def record(self, host: str, vm: str, op: str, old: VMState | None = None,
               new: VMState | None = None, *, time: int = 0, detail: str = "") -> LogEntry:
        """Append an entry and return it."""
        entry = LogEntry(self._seq, time, host, vm, op, old, new, detail)
        self._seq += 1
        self._entries.append(entry)
        return entry

    def for_vm(self, vm: str) -> list[LogEntry]:
        """The entries about ``vm``.

        >>> log = EventLog(); _ = log.record("h", "a", "define"); _ = log.record("h", "b", "define")
        >>> [e.vm for e in log.for_vm("b")]
        ['b']
        """
        return [e for e in self._entries if e.vm == vm]

    def __iter__(self) -> Iterator[LogEntry]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> LogEntry:
        return self._entries[index]

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self._entries)

    def __repr__(self) -> str:
        last = f", last: {self._entries[-1].op} {self._entries[-1].vm}" if self._entries else ""
        return f"EventLog({len(self._entries)} entries{last})"
