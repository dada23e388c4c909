"""autograder.cluster: addresses, the deployment's certificates, TLS-only executors, shipping.

A real dask.distributed scheduler and worker run here (in-process scheduler, worker process),
over TLS on 127.0.0.1, with certificates from :func:`write_certificates`: a client with the
deployment's client certificate runs a task; a client with a certificate of its own making, or
none, is refused.  ``local:2`` runs tasks in two worker processes.
"""

from __future__ import annotations

import os
import ssl
import warnings
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path

import pytest

from autograder.cluster import (
    ClusterError,
    TLSFiles,
    client_security,
    open_executor,
    parse_cluster,
    write_certificates,
)

distributed = pytest.importorskip("distributed")


def _whoami_pid() -> tuple[str, int]:
    import getpass

    return getpass.getuser(), os.getpid()


@pytest.mark.parametrize("bad", ["tcp://127.0.0.1:8786", "127.0.0.1:8786", "ws://h:1",
                                 "tls://nohost", "tls://h:0", "local:0", "local:x"])
def test_parse_refuses_anything_but_tls_and_local(bad: str) -> None:
    with pytest.raises(ClusterError):
        parse_cluster(bad)


def test_parse_accepts_tls_and_local() -> None:
    assert parse_cluster("tls://10.0.0.5:8786").address == "tls://10.0.0.5:8786"
    assert parse_cluster("local:3").workers == 3
    assert parse_cluster("local").workers == (os.cpu_count() or 1)


def test_certificates_are_signed_by_their_ca_and_keys_private(tmp_path: Path) -> None:
    files = write_certificates(tmp_path / "tls", days=1)
    for role in ("scheduler", "worker", "client"):
        assert files.key(role).stat().st_mode & 0o777 == 0o600
        assert files.cert(role).stat().st_mode & 0o777 == 0o644
        ctx = ssl.create_default_context(cafile=str(files.ca))
        ctx.load_cert_chain(files.cert(role), files.key(role))
    assert files.ca_key.stat().st_mode & 0o777 == 0o600
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(files.cert("worker").read_bytes())
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    other = write_certificates(tmp_path / "other", days=1)
    foreign = x509.load_pem_x509_certificate(other.cert("client").read_bytes())
    with pytest.raises(Exception):  # noqa: B017 - cryptography raises several types
        foreign.verify_directly_issued_by(ca)


def test_client_security_needs_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIRTCORE_DASK_TLS", raising=False)
    with pytest.raises(ClusterError, match="no TLS directory"):
        client_security(None)
    with pytest.raises(ClusterError, match="missing"):
        client_security(tmp_path)
    files = write_certificates(tmp_path, days=1)
    sec = client_security(tmp_path)
    assert sec.require_encryption
    assert sec.tls_client_cert == str(files.cert("client"))


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TLSFiles]]:
    """A scheduler and one worker process speaking TLS with the deployment's certificates."""
    from distributed import LocalCluster

    files = write_certificates(tmp_path_factory.mktemp("tls"), days=1)
    sec = client_security(files.directory, role="scheduler")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                               host="127.0.0.1", protocol="tls", security=sec,
                               dashboard_address=None, worker_dashboard_address=None,
                               silence_logs=50)
    try:
        yield cluster.scheduler_address, files
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cluster.close()


def test_tls_executor_runs_tasks_on_the_worker(tls_cluster: tuple[str, TLSFiles]) -> None:
    address, files = tls_cluster
    assert address.startswith("tls://127.0.0.1:")
    with open_executor(address, tls_dir=files.directory) as ex:
        assert isinstance(ex, Executor)
        _user, pid = ex.submit(_whoami_pid).result(timeout=60)
        assert pid != os.getpid()
        # two identical submissions are two tasks (pure=False): both run
        a = ex.submit(_whoami_pid)
        b = ex.submit(_whoami_pid)
        assert a.result(timeout=60) and b.result(timeout=60)


def test_a_foreign_or_missing_certificate_is_refused(tls_cluster: tuple[str, TLSFiles],
                                                     tmp_path: Path) -> None:
    from distributed import Client
    from distributed.security import Security

    address, files = tls_cluster
    foreign = write_certificates(tmp_path / "mine", days=1)
    # trusts the scheduler (the real CA) but presents a certificate the CA never signed:
    # the refusal can only come from the scheduler
    impostor = Security(tls_ca_file=str(files.ca), tls_client_cert=str(foreign.cert("client")),
                        tls_client_key=str(foreign.key("client")), require_encryption=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises((OSError, TimeoutError)):
            Client(address, security=impostor, timeout=5)
        with pytest.raises((OSError, TimeoutError)):
            Client(address, security=client_security(foreign.directory), timeout=5)
        with pytest.raises((OSError, TimeoutError)):
            Client(address, security=Security.temporary(), timeout=5)
        with pytest.raises((OSError, TypeError, TimeoutError)):
            Client(address, timeout=5)  # no certificate at all
    with pytest.raises(ClusterError, match="refusing tcp"), open_executor(
            address.replace("tls://", "tcp://")):
        pass


def test_unreachable_scheduler_is_a_cluster_error(tmp_path: Path) -> None:
    """In a fresh interpreter, as ``grade`` meets it (this process has run clients already)."""
    import socket
    import subprocess
    import sys

    files = write_certificates(tmp_path, days=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("from autograder.cluster import ClusterError, open_executor\n"
            "try:\n"
            f"    with open_executor('tls://127.0.0.1:{port}', tls_dir={str(files.directory)!r},"
            " timeout=2):\n"
            "        print('CONNECTED')\n"
            "except ClusterError as e:\n"
            "    print('CLUSTER-ERROR', e)\n")
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                          text=True, timeout=120, check=False)
    assert f"CLUSTER-ERROR cannot reach the scheduler tls://127.0.0.1:{port}" in proc.stdout, (
        proc.stdout + proc.stderr)


def test_local_cluster_runs_tasks_in_worker_processes() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_executor("local:2") as ex:
            pids = {ex.submit(_whoami_pid).result(timeout=60)[1] for _ in range(4)}
    assert os.getpid() not in pids
