"""Real x86 machine code as the model's guest CPU, through the ``unicorn`` emulator.

This is the *x86* guest-CPU backend of the simulated ``/dev/kvm``
(:mod:`virtcore.kvm.model`, ``isa="x86"``).  unicorn (QEMU's TCG) translates the
guest's code to host code and runs it with no Python on the fast path: there is
no per-instruction hook.  What leaves the guest does so as on KVM [KVM-H; KVM-API §5]:

- ``in``/``out`` → ``KVM_EXIT_IO`` (a ``UC_HOOK_INSN`` hook).  As measured on a real
  KVM: after an OUT exit ``rip`` is already past the instruction; after an IN exit it
  is still *at* it, and the next ``KVM_RUN`` puts the data user space left at
  ``io.data_offset`` into AL/AX/EAX and moves ``rip`` on;
- a load or store at a guest-physical address with no memory slot → ``KVM_EXIT_MMIO``
  (the access faults as unmapped, precisely at the instruction).  A read leaves
  ``rip`` *at* the instruction and re-executes it on the next ``KVM_RUN`` with the
  data user space wrote into ``mmio.data``; a write completes at once and ``rip``
  moves past it — both exactly what KVM's instruction emulator does
  (``x86_emulate_instruction``: no write-back until an MMIO read completes);
  a write to a ``KVM_MEM_READONLY`` slot is an MMIO write [KVM-API §4.35; KVM-MAIN];
- ``hlt`` → ``KVM_EXIT_HLT`` (unicorn returns just past the ``hlt``); with an in-kernel
  irqchip the model turns that into a halted vCPU instead (:mod:`virtcore.kvm.model`)
  [KVM-X86];
- fetching code where there is no memory slot → ``KVM_EXIT_INTERNAL_ERROR``
  (suberror 1, ``KVM_INTERNAL_ERROR_EMULATION``), as measured on real KVM;
- an exception or ``int n`` in real mode is delivered through the guest's
  interrupt vector table when it lies in guest RAM, else → ``KVM_EXIT_SHUTDOWN``
  (a triple fault; what real KVM gives for ``ud2`` with no IVT).

Precise exits
-------------
TCG runs whole translation blocks: ``emu_stop()`` inside an I/O hook takes effect
only at the end of the block, so the instructions after an ``out`` would already
have run.  The backend therefore *learns* each I/O instruction: the first time an
``in``/``out`` at address *A* executes, the hook snapshots the CPU context and
write-protects guest RAM, the rest of the block runs into the protection (no
effect on memory), the context is restored and ``rip`` set past *A*; and a hook on
the next instruction (a code hook on that one address, outside the fast path)
makes every later exit at *A* stop exactly there.

Simplifications (say so when you teach with it)
-----------------------------------------------
- Real mode (CR0.PE = 0) and flat 32-bit protected mode without paging only.
  In real mode segment bases must be ``selector × 16`` — except that a code
  segment base with no memory under ``cs.base + rip`` gives the same emulation
  failure as real KVM (the classic "forgot KVM_SET_SREGS" mistake).
- ``KVM_GET_SREGS`` after a run reports selectors, CR0/CR3/CR4/EFER read back from
  unicorn and the bases of the mode (``selector × 16``, or 0); descriptor caches
  are not read back.
- String I/O (``ins``/``outs``) and instructions that touch two MMIO pages are not
  emulated (``KVM_EXIT_INTERNAL_ERROR``, suberror 1).
- ``vmcall``/``vmmcall`` are invalid opcodes here (no VMX in unicorn).
- A run is bounded by a wall-clock limit: when it ends, ``KVM_RUN`` fails with
  ``EINTR`` (exit reason ``KVM_EXIT_INTR``), as if a timer signal had arrived.

unicorn is an optional dependency (``pip install virtcore[x86]``); without it the
backend raises :class:`X86BackendError` saying so.

>>> available, why = unicorn_available()
>>> isinstance(available, bool) and isinstance(why, str)
True
"""

from __future__ import annotations

import ctypes
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from virtcore.kvm.api import (
    KVM_EXIT_HLT,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_IO,
    KVM_EXIT_IO_IN,
    KVM_EXIT_IO_OUT,
    KVM_EXIT_MMIO,
    KVM_EXIT_SHUTDOWN,
    KVM_INTERNAL_ERROR_EMULATION,
    KVM_PIO_PAGE_OFFSET,
    PAGE_SIZE,
    KvmUsageError,
    kvm_regs,
    kvm_run,
    kvm_sregs,
)

# unicorn is optional and imported on first use (teaching-ISA users never load it)
_uc: Any = None
_x86: Any = None
_ucmod: Any = None
_UC_ERROR: str | None = None


def _load_unicorn() -> str | None:
    """Import unicorn once; the reason it is unusable, or None."""
    global _uc, _x86, _ucmod, _UC_ERROR
    if _uc is None and _UC_ERROR is None:
        try:
            import unicorn
            from unicorn import x86_const
            from unicorn.unicorn_py3 import unicorn as binding
        except ImportError as e:  # pragma: no cover - depends on the environment
            _UC_ERROR = ("the x86 backend needs the 'unicorn' package "
                         f"(pip install 'unicorn>=2.1'): {e}")
        else:
            _uc, _x86, _ucmod = unicorn, x86_const, binding
    return _UC_ERROR

__all__ = ["Slot", "X86BackendError", "X86Engine", "unicorn_available"]

PIO_DATA_OFFSET = KVM_PIO_PAGE_OFFSET * PAGE_SIZE
_END = 0xFFFF_FFFF_FFFF_FFFF  # an "until" address never reached
_PREFIXES = frozenset((0x66, 0x67, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0xF0, 0xF2, 0xF3))
_MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}


class X86BackendError(KvmUsageError):
    """The x86 backend cannot run here (no unicorn) or cannot model this guest state.

    >>> issubclass(X86BackendError, KvmUsageError)
    True
    """


def unicorn_available() -> tuple[bool, str]:
    """Whether ``import unicorn`` works, and the reason if not.

    >>> unicorn_available()[0] in (True, False)
    True
    """
    error = _load_unicorn()
    if error is not None:
        return False, error
    return True, f"unicorn {_uc.__version__}"


@dataclass(frozen=True)
class Slot:
    """A memory slot as a guest CPU backend sees it: guest-physical range → user memory.

    >>> Slot(0x1000, 0x2000, 0x7000_0000, readonly=True).readonly
    True
    """

    gpa: int
    size: int
    hva: int
    readonly: bool = False

    def contains(self, gpa: int, n: int = 1) -> bool:
        """True if ``[gpa, gpa + n)`` lies in this slot.

        >>> Slot(0x1000, 0x1000, 0).contains(0x1ffc, 4), Slot(0x1000, 0x1000, 0).contains(0x1ffd, 4)
        (True, False)
        """
        return self.gpa <= gpa and gpa + n <= self.gpa + self.size


# ---------------------------------------------------------------------------
# the watchdog: ends runs that exceed their wall-clock limit (like a timer signal)
class _Watchdog:
    def __init__(self) -> None:
        self.engines: weakref.WeakSet[X86Engine] = weakref.WeakSet()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def watch(self, engine: X86Engine) -> None:
        with self.lock:
            self.engines.add(engine)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="virtcore-kvm-watchdog",
                                               daemon=True)
                self.thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(0.02)
            now = time.monotonic()
            for engine in list(self.engines):
                with engine._run_lock:
                    deadline = engine._deadline
                    if deadline is not None and now > deadline and engine._uc is not None:
                        engine._fired = engine._generation
                        _ucmod.uclib.uc_emu_stop(engine._uc._uch)


_WATCHDOG = _Watchdog()


# ---------------------------------------------------------------------------
_GPR = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp")


class X86Engine:
    """One vCPU's x86 CPU, run by unicorn over the VM's memory slots.

    Parameters
    ----------
    slots : callable
        Returns ``(version, [Slot, ...])``: the VM's current memory layout; the
        engine remaps when ``version`` changes.  Slot memory is shared, not copied:
        unicorn maps the user buffers themselves (``mem_map_ptr``), as KVM maps
        user memory into the guest.
    time_limit : float or None
        Seconds one ``KVM_RUN`` may last (None: unbounded, like real KVM).

    >>> try:
    ...     engine = X86Engine(lambda: (0, []))
    ... except X86BackendError:     # no unicorn here
    ...     engine = None
    >>> (engine is not None) == unicorn_available()[0]
    True
    """

    def __init__(self, slots: Callable[[], tuple[int, Sequence[Slot]]],
                 time_limit: float | None = 5.0) -> None:
        ok, why = unicorn_available()
        if not ok:
            raise X86BackendError(why)
        self._slots_fn = slots
        self.time_limit = time_limit
        self._uc: Any = None
        self._mode = 0
        self._layout = -1
        self._slots: tuple[Slot, ...] = ()
        self._sites: dict[int, int] = {}  # linear address of an I/O instruction → its length
        self._hooks: list[Any] = []
        self._v = ctypes.c_uint64()
        self._run_lock = threading.Lock()
        self._deadline: float | None = None
        self._generation = 0
        self._fired = -1
        # state of the current run, set by the hooks
        self._exit: tuple | None = None
        self._frozen = False
        self._context: Any = None
        self._pending: tuple | None = None  # completion owed on the next run
        self._cs_base: int | None = None
        self._replayed_writes: list[tuple[int, int, int]] = []
        self.exits = 0
        self.learned = 0

    # -- unicorn set-up ---------------------------------------------------------------
    def _create(self, mode: int) -> None:
        uc = _uc.Uc(_uc.UC_ARCH_X86, mode)
        self._uc = uc
        self._mode = mode
        self._uch = uc._uch
        lib = _ucmod.uclib
        self._read = lib.uc_reg_read
        self._write = lib.uc_reg_write
        self._start = lib.uc_emu_start
        self._stop = lib.uc_emu_stop
        self._layout = -1
        self._sites = {}
        self._pending = None
        self._hooks = [
            uc.hook_add(_uc.UC_HOOK_INSN, self._on_in, None, 1, 0, _x86.UC_X86_INS_IN),
            uc.hook_add(_uc.UC_HOOK_INSN, self._on_out, None, 1, 0, _x86.UC_X86_INS_OUT),
            uc.hook_add(_uc.UC_HOOK_MEM_UNMAPPED, self._on_unmapped),
            uc.hook_add(_uc.UC_HOOK_MEM_WRITE_PROT, self._on_write_prot),
            uc.hook_add(_uc.UC_HOOK_INTR, self._on_interrupt),
        ]

    def _sync_layout(self) -> None:
        version, slots = self._slots_fn()
        if version == self._layout:
            return
        uc = self._uc
        for gpa, end, _perms in list(uc.mem_regions()):
            uc.mem_unmap(gpa, end - gpa + 1)
        self._slots = tuple(slots)
        for s in self._slots:
            perms = _uc.UC_PROT_READ | _uc.UC_PROT_EXEC
            if not s.readonly:
                perms |= _uc.UC_PROT_WRITE
            uc.mem_map_ptr(s.gpa, s.size, perms, s.hva)
        self._layout = version

    def _slot_of(self, gpa: int, n: int = 1) -> Slot | None:
        for s in self._slots:
            if s.contains(gpa, n):
                return s
        return None

    def _guest_bytes(self, gpa: int, n: int) -> bytes:
        """Up to ``n`` bytes of guest RAM at ``gpa`` (fewer at the end of a slot)."""
        s = self._slot_of(gpa)
        if s is None:
            return b""
        n = min(n, s.gpa + s.size - gpa)
        return ctypes.string_at(s.hva + gpa - s.gpa, n)

    # -- registers ----------------------------------------------------------------------
    def _get(self, reg: int) -> int:
        v = self._v
        v.value = 0  # unicorn writes only the register's width
        self._read(self._uch, reg, ctypes.byref(v))
        return v.value

    def _set(self, reg: int, value: int) -> None:
        self._v.value = value
        self._write(self._uch, reg, ctypes.byref(self._v))

    @staticmethod
    def _mode_for(sregs: kvm_sregs) -> int:
        if not sregs.cr0 & 1:
            return _uc.UC_MODE_16
        if sregs.cr0 & (1 << 31) or sregs.efer & (1 << 10) or sregs.cs.l:
            raise X86BackendError("the x86 backend runs real mode and flat 32-bit protected "
                                  "mode without paging; these sregs ask for paging or long "
                                  "mode")
        if not sregs.cs.db:
            raise X86BackendError("16-bit protected mode is not supported by the x86 backend")
        if any(getattr(sregs, n).base for n in ("cs", "ds", "es", "ss", "fs", "gs")):
            raise X86BackendError("the x86 backend's protected mode is flat: all segment "
                                  "bases must be 0")
        return _uc.UC_MODE_32

    def load(self, regs: kvm_regs, sregs: kvm_sregs, *, sregs_changed: bool = True) -> None:
        """Load the architectural state (before a run, after KVM_SET_REGS/SREGS)."""
        if sregs_changed or self._uc is None:
            mode = self._mode_for(sregs)
            if self._uc is None or mode != self._mode:
                self._create(mode)
            if mode == _uc.UC_MODE_16:
                for name in ("ds", "es", "ss", "fs", "gs"):
                    seg = getattr(sregs, name)
                    if seg.base != seg.selector << 4:
                        raise X86BackendError(
                            f"real-mode {name}.base {seg.base:#x} is not {name}.selector × 16 "
                            f"({seg.selector << 4:#x}); the x86 backend derives real-mode bases "
                            "from selectors")
                    self._set(getattr(_x86, "UC_X86_REG_" + name.upper()), seg.selector)
                self._set(_x86.UC_X86_REG_CS, sregs.cs.selector)
            for name in ("cr0", "cr3", "cr4"):
                self._set(getattr(_x86, "UC_X86_REG_" + name.upper()), getattr(sregs, name))
            self._cs_base = sregs.cs.base
        x = _x86
        for name in _GPR:
            self._set(getattr(x, "UC_X86_REG_E" + name[1:].upper()),
                      getattr(regs, name) & 0xFFFF_FFFF)
        self._set(x.UC_X86_REG_EIP, regs.rip & 0xFFFF_FFFF)
        self._set(x.UC_X86_REG_EFLAGS, regs.rflags | 2)

    def store_regs(self, regs: kvm_regs) -> None:
        """Read the registers back into ``regs`` (KVM_GET_REGS)."""
        x = _x86
        for name in _GPR:
            setattr(regs, name, self._get(getattr(x, "UC_X86_REG_E" + name[1:].upper())))
        regs.rip = self._get(x.UC_X86_REG_EIP)
        regs.rflags = self._get(x.UC_X86_REG_EFLAGS) | 2

    def store_sregs(self, sregs: kvm_sregs) -> None:
        """Read selectors and control registers back into ``sregs`` (KVM_GET_SREGS)."""
        x = _x86
        for name in ("cr0", "cr3", "cr4"):
            setattr(sregs, name, self._get(getattr(x, "UC_X86_REG_" + name.upper())))
        if self._mode == _uc.UC_MODE_16 and not sregs.cr0 & 1:
            for name in ("cs", "ds", "es", "ss", "fs", "gs"):
                if name == "cs" and self._cs_base is not None:
                    continue  # an sregs cs the guest never ran with: reported as it was set
                seg = getattr(sregs, name)
                seg.selector = self._get(getattr(x, "UC_X86_REG_" + name.upper()))
                seg.base = seg.selector << 4

    def _linear_pc(self) -> int:
        eip = self._get(_x86.UC_X86_REG_EIP)
        if self._mode == _uc.UC_MODE_16:
            return (self._get(_x86.UC_X86_REG_CS) << 4) + eip
        return eip

    # -- hooks (called by unicorn inside emu_start) ----------------------------------------
    def _site(self) -> tuple[int, int]:
        """(linear address, eip) of the instruction in a hook."""
        eip = self._get(_x86.UC_X86_REG_EIP)
        if self._mode == _uc.UC_MODE_16:
            return (self._get(_x86.UC_X86_REG_CS) << 4) + eip, eip
        return eip, eip

    def _io(self, direction: int, port: int, size: int, value: int) -> None:
        lin, eip = self._site()
        self._exit = ("io", direction, port, size, value, lin, eip)
        if lin not in self._sites:
            self._freeze()
        self._stop(self._uch)

    def _on_in(self, uc: Any, port: int, size: int, ud: Any) -> int:
        if not self._frozen:
            self._io(KVM_EXIT_IO_IN, port, size, 0)
        return 0

    def _on_out(self, uc: Any, port: int, size: int, value: int, ud: Any) -> None:
        if not self._frozen:
            self._io(KVM_EXIT_IO_OUT, port, size, value)

    def _on_unmapped(self, uc: Any, access: int, address: int, size: int, value: int,
                     ud: Any) -> bool:
        if self._frozen:
            return False
        if access == _uc.UC_MEM_FETCH_UNMAPPED:
            self._exit = ("fetch", address)
        elif access == _uc.UC_MEM_WRITE_UNMAPPED:
            self._exit = ("mmio", True, address, size, value)
        else:
            self._exit = ("mmio", False, address, size, 0)
        return False

    def _on_write_prot(self, uc: Any, access: int, address: int, size: int, value: int,
                       ud: Any) -> bool:
        if not self._frozen:
            self._exit = ("mmio", True, address, size, value)
        return False

    def _on_interrupt(self, uc: Any, vector: int, ud: Any) -> None:
        if self._frozen:
            return
        if not self._deliver(vector):
            self._exit = ("shutdown", vector)
            self._stop(self._uch)

    def _on_replay_read(self, uc: Any, offset: int, size: int, ud: Any) -> int:
        page, gpa, data = ud
        if page + offset == gpa and size == len(data):
            return int.from_bytes(data, "little")
        return int.from_bytes(self._guest_bytes(page + offset, size).ljust(size, b"\0"),
                              "little")

    def _on_replay_write(self, uc: Any, offset: int, size: int, value: int, ud: Any) -> None:
        page, _gpa, _data = ud
        self._replayed_writes.append((page + offset, size, value))

    # -- real-mode exception delivery -------------------------------------------------------
    def _deliver(self, vector: int) -> bool:
        """Deliver ``vector`` through the real-mode IVT if it is in guest RAM."""
        if self._mode != _uc.UC_MODE_16 or self._get(_x86.UC_X86_REG_CR0) & 1:
            return False
        entry = self._guest_bytes(4 * vector, 4)
        x = _x86
        sp = self._get(x.UC_X86_REG_SP)
        ss = self._get(x.UC_X86_REG_SS)
        stack = (ss << 4) + ((sp - 6) & 0xFFFF)
        if len(entry) != 4 or self._slot_of(stack, 6) is None:
            return False
        flags = self._get(x.UC_X86_REG_EFLAGS)
        frame = (self._get(x.UC_X86_REG_IP).to_bytes(2, "little")
                 + self._get(x.UC_X86_REG_CS).to_bytes(2, "little")
                 + (flags & 0xFFFF).to_bytes(2, "little"))
        self._uc.mem_write(stack, frame)
        self._set(x.UC_X86_REG_SP, (sp - 6) & 0xFFFF)
        self._set(x.UC_X86_REG_EFLAGS, flags & ~((1 << 9) | (1 << 8) | (1 << 18)))
        self._set(x.UC_X86_REG_CS, int.from_bytes(entry[2:], "little"))
        self._set(x.UC_X86_REG_EIP, int.from_bytes(entry[:2], "little"))
        return True

    # -- learning I/O instructions ----------------------------------------------------------
    def _freeze(self) -> None:
        """First exit at an unknown site: snapshot and stop everything else having effects."""
        self._context = self._uc.context_save()
        self._frozen = True
        for s in self._slots:
            if not s.readonly:
                self._uc.mem_protect(s.gpa, s.size, _uc.UC_PROT_READ | _uc.UC_PROT_EXEC)

    def _thaw(self) -> None:
        self._frozen = False
        for s in self._slots:
            if not s.readonly:
                self._uc.mem_protect(s.gpa, s.size, _uc.UC_PROT_ALL)

    def _io_length(self, lin: int) -> int | None:
        """Length of the IN/OUT at ``lin``, or None for string I/O / not IN/OUT."""
        code = self._guest_bytes(lin, 15)
        i = 0
        while i < len(code) and code[i] in _PREFIXES:
            i += 1
        if i >= len(code):
            return None
        op = code[i]
        if 0xE4 <= op <= 0xE7:
            return i + 2
        if 0xEC <= op <= 0xEF:
            return i + 1
        return None

    def _learn(self, lin: int, length: int) -> None:
        nxt = lin + length
        self._sites[lin] = length
        self._hooks.append(self._uc.hook_add(_uc.UC_HOOK_CODE, _no_op, None, nxt, nxt))
        self._uc.ctl_remove_cache(lin, nxt + 1)
        self.learned += 1

    # -- one instruction with a temporary MMIO page -------------------------------------------
    def _step_with_page(self, lin: int, gpa: int, data: bytes) -> tuple[int, list]:
        """Execute the single instruction at ``lin`` with the page of ``gpa`` answered by
        ``data`` (reads) and swallowing writes.  Returns (unicorn status, writes seen)."""
        uc = self._uc
        page = gpa & ~(PAGE_SIZE - 1)
        slot = self._slot_of(page)
        if slot is not None:
            uc.mem_unmap(page, PAGE_SIZE)
        self._replayed_writes = []
        ud = (page, gpa, data)
        uc.mmio_map(page, PAGE_SIZE, self._on_replay_read, ud, self._on_replay_write, ud)
        try:
            uc.ctl_remove_cache(lin, lin + 1)
            status = self._start(self._uch, lin, _END, 0, 1)
        finally:
            uc.mem_unmap(page, PAGE_SIZE)
            if slot is not None:
                uc.mem_map_ptr(page, PAGE_SIZE, _uc.UC_PROT_READ | _uc.UC_PROT_EXEC,
                               slot.hva + page - slot.gpa)
            uc.ctl_remove_cache(lin, lin + 1)
        return status, self._replayed_writes

    # -- KVM_RUN ------------------------------------------------------------------------------
    def run(self, run: kvm_run) -> None:
        """Run until the next exit and describe it in ``run`` (the model's ``KVM_RUN``).

        Raises
        ------
        InterruptedError
            The time limit ended the run (the model turns it into ``EINTR``).
        """
        self._sync_layout()
        if self._pending is not None and not self._complete(run):
            return
        uc_ok = _uc.UC_ERR_OK
        while True:
            lin = self._linear_pc()
            if self._mode == _uc.UC_MODE_16 and self._cs_base is not None:
                cs = self._get(_x86.UC_X86_REG_CS)
                if self._cs_base != cs << 4:
                    # an sregs cs.base unicorn cannot represent (e.g. the reset state)
                    real_lin = self._cs_base + self._get(_x86.UC_X86_REG_EIP)
                    if self._slot_of(real_lin) is None:
                        self._internal_error(run)
                        return
                    raise X86BackendError(
                        f"real-mode cs.base {self._cs_base:#x} is not cs.selector × 16; the "
                        "x86 backend cannot run code there")
                self._cs_base = None
            self._exit = None
            with self._run_lock:
                self._generation += 1
                gen = self._generation
                limit = self.time_limit
                self._deadline = None if limit is None else time.monotonic() + limit
            if limit is not None:
                _WATCHDOG.watch(self)
            status = self._start(self._uch, lin, _END, 0, 0)
            with self._run_lock:
                self._deadline = None
            ex = self._exit
            if self._frozen:
                self._thaw()
            if ex is not None:
                kind = ex[0]
                if kind == "io":
                    self._exit_io(run, ex)
                    return
                if kind == "mmio":
                    self._exit_mmio(run, ex)
                    return
                if kind == "fetch":
                    self._internal_error(run)
                    return
                if kind == "shutdown":
                    run.exit_reason = KVM_EXIT_SHUTDOWN
                    return
            if status == _uc.UC_ERR_INSN_INVALID:
                if self._deliver(6):
                    continue
                run.exit_reason = KVM_EXIT_SHUTDOWN
                return
            if status != uc_ok:
                self._internal_error(run)
                return
            if self._fired == gen:
                raise InterruptedError("the run exceeded its time limit")
            run.exit_reason = KVM_EXIT_HLT
            self.exits += 1
            return

    def _internal_error(self, run: kvm_run) -> None:
        run.exit_reason = KVM_EXIT_INTERNAL_ERROR
        run.internal.suberror = KVM_INTERNAL_ERROR_EMULATION
        run.internal.ndata = 0
        self.exits += 1

    def _exit_io(self, run: kvm_run, ex: tuple) -> None:
        _kind, direction, port, size, value, lin, eip = ex
        length = self._sites.get(lin)
        if length is None:
            self._uc.context_restore(self._context)
            self._context = None
            # a context saved inside a hook keeps the arithmetic flags in CC_SRC/CC_OP;
            # write EFLAGS back so the next emu_start does not drop them
            self._set(_x86.UC_X86_REG_EFLAGS, self._get(_x86.UC_X86_REG_EFLAGS))
            length = self._io_length(lin)
            if length is None:  # string I/O: not emulated
                self._set(_x86.UC_X86_REG_EIP, eip)
                self._internal_error(run)
                return
            self._set(_x86.UC_X86_REG_EIP, eip + length)
            self._learn(lin, length)
        run.exit_reason = KVM_EXIT_IO
        io = run.io
        io.direction = direction
        io.size = size
        io.port = port
        io.count = 1
        io.data_offset = PIO_DATA_OFFSET
        if direction == KVM_EXIT_IO_OUT:
            ctypes.memmove(ctypes.addressof(run) + PIO_DATA_OFFSET,
                           value.to_bytes(size, "little"), size)
        else:
            # as measured on KVM: rip stays at the IN until the data arrives
            # (complete_fast_pio_in skips the instruction on the next KVM_RUN)
            self._set(_x86.UC_X86_REG_EIP, eip)
            self._pending = ("in", size, eip, length)
        self.exits += 1

    def _exit_mmio(self, run: kvm_run, ex: tuple) -> None:
        _kind, is_write, gpa, size, value = ex
        lin = self._linear_pc()
        run.exit_reason = KVM_EXIT_MMIO
        m = run.mmio
        m.phys_addr = gpa
        m.len = size
        m.is_write = int(is_write)
        if is_write:
            self._describe_mmio_write(run, gpa, size, value)
            status, _writes = self._step_with_page(lin, gpa, b"")
            if status != _uc.UC_ERR_OK:
                self._internal_error(run)
                return
        else:
            self._pending = ("mmio_read", lin, gpa, size)
        self.exits += 1

    def complete_pending(self, run: kvm_run) -> None:
        """Finish an instruction left in flight (``KVM_RUN`` with ``immediate_exit`` set)."""
        if self._pending is not None:
            self._complete(run)

    def _describe_mmio_write(self, run: kvm_run, gpa: int, size: int, value: int) -> None:
        run.exit_reason = KVM_EXIT_MMIO
        m = run.mmio
        m.phys_addr = gpa
        m.len = size
        m.is_write = 1
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        ctypes.memmove(ctypes.addressof(m.data), data, min(size, 8))

    def _complete(self, run: kvm_run) -> bool:
        """Finish the instruction left in flight by the last exit [KVM-API §5]; False if that
        itself produced an exit (already described in ``run``)."""
        pending, self._pending = self._pending, None
        if pending[0] == "in":  # type: ignore[index]
            _kind, size, eip, length = pending  # type: ignore[misc]
            if self._get(_x86.UC_X86_REG_EIP) != eip:
                return True  # user space moved rip: the IN is abandoned, as in KVM
            data = ctypes.string_at(ctypes.addressof(run) + PIO_DATA_OFFSET, size)
            eax = self._get(_x86.UC_X86_REG_EAX)
            mask = _MASKS[size]
            self._set(_x86.UC_X86_REG_EAX, (eax & ~mask) | int.from_bytes(data, "little"))
            self._set(_x86.UC_X86_REG_EIP, eip + length)
            return True
        _kind, lin, gpa, size = pending  # type: ignore[misc]
        data = bytes(run.mmio.data)[:size]
        status, writes = self._step_with_page(lin, gpa, data)
        if status != _uc.UC_ERR_OK:
            self._internal_error(run)
            return False
        if writes:  # a read-modify-write instruction: its write is the next exit
            wgpa, wsize, value = writes[0]
            self._describe_mmio_write(run, wgpa, wsize, value)
            return False
        return True


def _no_op(uc: Any, address: int, size: int, ud: Any) -> None:
    """The code hook after a learned I/O instruction: its existence is what makes
    unicorn check for a stop request right there."""
