"""The real ``/dev/kvm``, through the same Python API as the model.

Nothing is simulated here: :func:`open_real_kvm` is ``os.open("/dev/kvm")``, every
``ioctl`` is :func:`fcntl.ioctl` with the request numbers and ctypes structures of
:mod:`virtcore.kvm.api`, and ``VcpuFd.mmap`` is :func:`mmap.mmap` of the vCPU
descriptor.  Errors are the kernel's own :class:`OSError`.

Only Linux machines that expose a usable ``/dev/kvm`` to this user can run it; ask
:func:`kvm_available` first (it says why not).

>>> ok, why = kvm_available()
>>> isinstance(ok, bool) and isinstance(why, str)
True
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from virtcore.kvm.api import (
    KVM_API_VERSION,
    KVM_CREATE_VCPU,
    KVM_CREATE_VM,
    KVM_GET_API_VERSION,
    KVM_VCPU_MMAP_SIZE,
    KvmUsageError,
    SystemFd,
    VcpuFd,
    VmFd,
    ioc_dir,
    kvm_run,
)

DEVICE = "/dev/kvm"
#: environment variable naming another device path (tests use it to play "no KVM here")
DEVICE_ENV = "VIRTCORE_KVM_DEVICE"


def _device(path: str | None) -> str:
    return path or os.environ.get(DEVICE_ENV) or DEVICE

__all__ = ["DEVICE", "RealSystemFd", "RealVcpuFd", "RealVmFd", "kvm_available",
           "open_real_kvm", "signal_after"]


class _RealFd:
    """Shared part of the three real descriptors: an ``int`` fd and ``fcntl.ioctl``."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        """The descriptor number."""
        if self._fd < 0:
            raise KvmUsageError(f"this {self.kind} descriptor is closed")  # type: ignore[attr-defined]
        return self._fd

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._fd < 0

    def close(self) -> None:
        """``close(fd)``."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            self.close()

    def _ioctl(self, request: int, arg: Any) -> int:
        fd = self.fileno()
        if isinstance(arg, int):
            return fcntl.ioctl(fd, request, arg)
        # a structure: the kernel reads it (_IOW) or writes it back (_IOR/_IOWR)
        if ioc_dir(request) & 2:
            return fcntl.ioctl(fd, request, arg, True)
        # _IOW: the kernel only reads it; a mutable copy makes fcntl return the int result
        # (with an immutable buffer it returns the buffer instead of ioctl's 0)
        return fcntl.ioctl(fd, request, bytearray(memoryview(arg).cast("B")), True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fd={self._fd})"


class RealSystemFd(_RealFd, SystemFd):
    """The system descriptor of the real ``/dev/kvm``.

    >>> issubclass(RealSystemFd, SystemFd), RealSystemFd.backend
    (True, 'real')
    """

    backend = "real"

    def ioctl(self, request: int, arg: Any = 0) -> Any:
        """``ioctl(kvm_fd, request, arg)``; ``KVM_CREATE_VM`` returns a :class:`RealVmFd`."""
        result = self._ioctl(request, arg)
        if request == KVM_CREATE_VM:
            return RealVmFd(result)
        return result


class RealVmFd(_RealFd, VmFd):
    """A VM descriptor of the real KVM.

    >>> issubclass(RealVmFd, VmFd)
    True
    """

    def ioctl(self, request: int, arg: Any = 0) -> Any:
        """``ioctl(vm_fd, request, arg)``; ``KVM_CREATE_VCPU`` returns a :class:`RealVcpuFd`."""
        result = self._ioctl(request, arg)
        if request == KVM_CREATE_VCPU:
            return RealVcpuFd(result)
        return result


class RealVcpuFd(_RealFd, VcpuFd):
    """A vCPU descriptor of the real KVM.

    >>> issubclass(RealVcpuFd, VcpuFd)
    True
    """

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self._maps: list[mmap.mmap] = []

    def ioctl(self, request: int, arg: Any = 0) -> Any:
        """``ioctl(vcpu_fd, request, arg)``."""
        return self._ioctl(request, arg)

    def mmap(self, length: int = KVM_VCPU_MMAP_SIZE) -> kvm_run:
        """``mmap(NULL, length, PROT_READ|PROT_WRITE, MAP_SHARED, vcpufd, 0)`` as a ``kvm_run``."""
        area = mmap.mmap(self.fileno(), length, flags=mmap.MAP_SHARED,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._maps.append(area)
        run = kvm_run.from_buffer(area)
        run._mapping_size = length
        return run


def open_real_kvm(path: str | None = None) -> RealSystemFd:
    """``open("/dev/kvm", O_RDWR | O_CLOEXEC)`` (step 1 of [LWN15]).

    Raises the kernel's :class:`OSError` (ENOENT where there is no KVM, EACCES
    without permission).  ``path`` defaults to ``$VIRTCORE_KVM_DEVICE`` or ``/dev/kvm``.

    >>> try:
    ...     open_real_kvm("/nonexistent/kvm")
    ... except FileNotFoundError as e:
    ...     e.errno
    2
    """
    return RealSystemFd(os.open(_device(path), os.O_RDWR | os.O_CLOEXEC))


def kvm_available(path: str | None = None) -> tuple[bool, str]:
    """Whether the real KVM can be used here, and why not.

    Checks that ``path`` opens, that ``KVM_GET_API_VERSION`` is 12, that a VM and a
    vCPU can be created and that the vCPU area maps.  ``path`` defaults to
    ``$VIRTCORE_KVM_DEVICE`` or ``/dev/kvm``.

    >>> kvm_available("/nonexistent/kvm")
    (False, '/nonexistent/kvm: No such file or directory')
    """
    path = _device(path)
    try:
        kvm = open_real_kvm(path)
    except OSError as e:
        return False, f"{path}: {e.strerror}"
    try:
        version = kvm.ioctl(KVM_GET_API_VERSION, 0)
        if version != KVM_API_VERSION:
            return False, f"{path}: KVM_GET_API_VERSION returned {version}, not 12"
        vm = kvm.create_vm(0)
        vcpu = vm.create_vcpu(0)
        with vm, vcpu:
            vcpu.mmap(kvm.vcpu_mmap_size())
    except OSError as e:
        return False, f"{path} opens but is not usable: {e}"
    finally:
        kvm.close()
    return True, f"{path}: usable (API version 12)"


@contextlib.contextmanager
def signal_after(seconds: float) -> Iterator[None]:
    """Deliver ``SIGALRM`` after ``seconds``, so that a blocking ``KVM_RUN`` returns ``EINTR``.

    A vCPU halted on an in-kernel irqchip sleeps inside ``KVM_RUN`` until an interrupt
    or a signal [KVM-API §4.10; KVM-X86 ``kvm_vcpu_halt``]; QEMU kicks its vCPU threads
    with a signal for the same reason.  Python retries a system call interrupted by a
    signal unless the handler raises (PEP 475), so the handler here raises the
    kernel's ``InterruptedError`` (``EINTR``) — what a C VMM would see.  Main thread
    only (Python runs signal handlers there).

    >>> import time
    >>> with signal_after(0.01):
    ...     try:
    ...         time.sleep(1)
    ...     except InterruptedError as e:
    ...         e.errno == errno.EINTR
    True
    """
    if threading.current_thread() is not threading.main_thread():
        raise KvmUsageError("signal_after works only in the main thread")

    def _interrupt(signum: int, frame: object) -> None:
        raise InterruptedError(errno.EINTR, os.strerror(errno.EINTR))

    old = signal.signal(signal.SIGALRM, _interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
