"""Grading on a dask.distributed cluster: ``python -m autograder grade <a> --cluster ADDRESS``.

The grader itself does not change: every submission is still one picklable task that runs the
sandboxed per-part grading, and ``grade`` still collects the results as they finish, caches
them, writes them to the gradebook and draws the same progress bar.  What changes is where the
tasks run.  Locally they run in a :class:`concurrent.futures.ProcessPoolExecutor`; with
``--cluster`` they run on dask.distributed workers, through the
:class:`concurrent.futures.Executor` that ``Client.get_executor`` returns [DASK-DISTRIBUTED].
No task queue of our own: the scheduler places tasks, reschedules those of a worker that died
(up to ``distributed.scheduler.allowed-failures`` times, then the task fails with
``KilledWorker``, and ``grade`` reports that submission as not graded — the next run grades it,
exactly as after a crashed local pool).

``ADDRESS`` is

``tls://host:port``
    a running scheduler (e.g. the one ``deploy/`` starts).  The connection is mutual TLS with
    the deployment's own certificate authority: the client presents ``client.pem`` from the
    TLS directory (``--cluster-tls DIR`` or ``$VIRTCORE_DASK_TLS``), the scheduler and workers
    accept only certificates that authority signed.
``local:N``
    a :class:`distributed.LocalCluster` of ``N`` single-threaded worker processes on
    127.0.0.1, started for this run and stopped after it, also over TLS (in-memory
    certificates from :meth:`distributed.security.Security.temporary`).

A plain ``tcp://`` scheduler is refused: dask runs whatever a connected client sends, so an
open scheduler lets every local user run code as the workers' user.  For the same reason the
deployment never runs workers as root.

Workers need not share a file system with the instructor: a task
(:class:`autograder.grade.GradeTask`) carries the submitted notebook's bytes, the source's
preamble and the per-student seed key, never a path or the course secret.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "TLS_ENV",
    "ClusterAddress",
    "ClusterError",
    "ClusterExecutor",
    "TLSFiles",
    "client_security",
    "cluster_executor",
    "open_executor",
    "parse_cluster",
    "write_certificates",
]

#: Environment variable naming the directory with ``ca.pem``, ``client.pem``, ``client-key.pem``.
TLS_ENV = "VIRTCORE_DASK_TLS"
#: The roles a deployment issues certificates for.
ROLES = ("scheduler", "worker", "client")
_LOCAL = re.compile(r"local(?::(\d+))?")


class ClusterError(Exception):
    """The cluster cannot be used as asked (bad address, no certificates, unreachable)."""


# -- addresses ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterAddress:
    """A parsed ``--cluster`` value: a TLS scheduler address, or a local cluster of N workers."""

    kind: str  # "tls" or "local"
    address: str = ""
    workers: int = 0


def parse_cluster(value: str) -> ClusterAddress:
    """Parse ``tls://host:port`` or ``local[:N]``; refuse anything unencrypted.

    >>> parse_cluster("tls://127.0.0.1:8786")
    ClusterAddress(kind='tls', address='tls://127.0.0.1:8786', workers=0)
    >>> parse_cluster("local:2")
    ClusterAddress(kind='local', address='', workers=2)
    >>> parse_cluster("tcp://127.0.0.1:8786")
    Traceback (most recent call last):
    ...
    autograder.cluster.ClusterError: refusing tcp://127.0.0.1:8786: an unencrypted scheduler \
lets any local user run code as the workers' user; use tls://host:port (see deploy/)
    """
    value = value.strip()
    m = _LOCAL.fullmatch(value)
    if m:
        n = int(m.group(1)) if m.group(1) else (os.cpu_count() or 1)
        if not 1 <= n <= 256:
            raise ClusterError(f"local cluster size {n} is out of range (1..256)")
        return ClusterAddress("local", workers=n)
    scheme, sep, rest = value.partition("://")
    if not sep:
        raise ClusterError(f"--cluster {value!r}: expected tls://host:port or local:N")
    if scheme != "tls":
        raise ClusterError(f"refusing {value}: an unencrypted scheduler lets any local user run"
                           " code as the workers' user; use tls://host:port (see deploy/)")
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"--cluster {value!r}: expected tls://host:port")
    return ClusterAddress("tls", address=value)


# -- certificates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """Where :func:`write_certificates` put the authority and one certificate per role."""

    directory: Path

    @property
    def ca(self) -> Path:
        """The authority's certificate (public)."""
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """The authority's private key: stays with whoever issues certificates (root)."""
        return self.directory / "ca-key.pem"

    def cert(self, role: str) -> Path:
        """``<role>.pem``."""
        return self.directory / f"{role}.pem"

    def key(self, role: str) -> Path:
        """``<role>-key.pem``."""
        return self.directory / f"{role}-key.pem"


def _write_private(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


def write_certificates(directory: Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                       days: int = 30, name: str = "virtcore") -> TLSFiles:
    """Create a private certificate authority and a certificate per role in ``directory``.

    ECDSA P-256 keys; the authority signs ``scheduler``, ``worker`` and ``client``
    certificates valid for ``days`` for the given host names / IP addresses, each usable as
    TLS server and client (dask authenticates both ends).  Keys are written mode 600,
    certificates 644; hand each role's key to the account that runs it (``os.chown``).

    >>> import tempfile, ssl
    >>> with tempfile.TemporaryDirectory() as d:
    ...     files = write_certificates(Path(d), days=1)
    ...     ctx = ssl.create_default_context(cafile=str(files.ca))
    ...     ctx.load_cert_chain(files.cert("client"), files.key("client"))
    ...     oct(files.key("worker").stat().st_mode & 0o777)
    '0o600'
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    files = TLSFiles(Path(directory))
    files.directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

    def pem_key(key: Any) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} dask CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(until)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                            crl_sign=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    _write_private(files.ca_key, pem_key(ca_key), 0o600)
    _write_private(files.ca, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    for role in ROLES:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} dask {role}")])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(until)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write_private(files.key(role), pem_key(key), 0o600)
        _write_private(files.cert(role), cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def client_security(directory: Path | str | None = None, role: str = "client") -> Any:
    """A :class:`distributed.security.Security` for ``role`` from a TLS directory.

    ``directory`` defaults to ``$VIRTCORE_DASK_TLS``.  Encryption is required: the object
    refuses to talk to a ``tcp://`` address.
    """
    from distributed.security import Security

    if directory is None:
        directory = os.environ.get(TLS_ENV)
    if not directory:
        raise ClusterError(f"no TLS directory for the cluster: pass --cluster-tls DIR or set"
                           f" ${TLS_ENV} (the deployment's ca.pem, {role}.pem, {role}-key.pem)")
    files = TLSFiles(Path(directory))
    for p in (files.ca, files.cert(role), files.key(role)):
        if not p.is_file():
            raise ClusterError(f"{p} is missing (or unreadable by this account)")
    kw = {f"tls_{r}_cert": str(files.cert(role)) for r in ("client", "scheduler", "worker")}
    kw.update({f"tls_{r}_key": str(files.key(role)) for r in ("client", "scheduler", "worker")})
    return Security(tls_ca_file=str(files.ca), require_encryption=True, **kw)


# -- executors ------------------------------------------------------------------------------------


class ClusterExecutor(Executor):
    """dask's ``ClientExecutor``, plus closing the client (and a local cluster) on shutdown.

    What ``grade`` needs from an executor: ``submit`` returning
    :class:`concurrent.futures.Future` objects (``as_completed`` works on them) and
    ``shutdown(wait, cancel_futures)``.
    """

    def __init__(self, inner: Executor, stack: contextlib.ExitStack) -> None:
        self._inner = inner
        self._stack = stack

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on a worker."""
        return self._inner.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Cancel what is pending (``cancel_futures``), wait if asked, close the client."""
        try:
            self._inner.shutdown(wait=wait and not cancel_futures)
        finally:
            self._stack.close()


def cluster_executor(value: str, *, tls_dir: Path | str | None = None,
                     timeout: float = 30.0) -> ClusterExecutor:
    """A :class:`concurrent.futures.Executor` whose tasks run on the cluster ``value``.

    ``value`` is parsed by :func:`parse_cluster`.  ``shutdown()`` closes the client (and a
    ``local:N`` cluster).  Tasks are submitted with ``pure=False``: two submissions that
    happen to be identical are still graded twice.
    """
    addr = parse_cluster(value)
    from distributed import Client

    stack = contextlib.ExitStack()
    try:
        if addr.kind == "local":
            from distributed import LocalCluster
            from distributed.security import Security

            cluster = stack.enter_context(LocalCluster(
                n_workers=addr.workers, threads_per_worker=1, processes=True,
                host="127.0.0.1", protocol="tls", security=Security.temporary(),
                dashboard_address=None, worker_dashboard_address=None,
                silence_logs=40))
            client = stack.enter_context(Client(cluster, timeout=timeout))
        else:
            security = client_security(tls_dir)
            try:
                client = stack.enter_context(Client(addr.address, security=security,
                                                    timeout=timeout))
            except OSError as e:
                raise ClusterError(f"cannot reach the scheduler {addr.address}: {e}") from None
    except BaseException:
        stack.close()
        raise
    return ClusterExecutor(client.get_executor(pure=False), stack)


@contextlib.contextmanager
def open_executor(value: str, *, tls_dir: Path | str | None = None,
                  timeout: float = 30.0) -> Iterator[Executor]:
    """:func:`cluster_executor` as a context manager (shut down when the block ends)."""
    ex = cluster_executor(value, tls_dir=tls_dir, timeout=timeout)
    try:
        yield ex
    finally:
        ex.shutdown(wait=True)
