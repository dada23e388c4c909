"""Helpers for the notebook tests: this Python's kernelspec and a private JupyterLab server.

The tests must run the chapters with the interpreter that runs pytest (the project's venv), never
with whatever ``python3`` kernel a user or a system package registered. Both the headless runner
(nbclient) and the JupyterLab server therefore look up kernels in a temporary data directory that
holds exactly one kernelspec, ``python3``, whose ``argv[0]`` is :data:`sys.executable`.

The JupyterLab server gets its own config, settings, workspaces, runtime and data directories, a
random token and a free loopback port, so a test run neither reads nor changes the user's Jupyter
set-up, and it never saves a notebook (autosave is off), so running the chapters in the browser
leaves the working tree untouched.

Loaded by ``tests/conftest.py`` by file path (the test suite uses ``--import-mode=importlib``).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KERNEL_NAME = "python3"
KERNEL_DISPLAY_NAME = "Python 3 (ipykernel)"

#: JupyterLab user settings written for the test server (plugin id -> settings).
LAB_SETTINGS: dict[str, dict[str, Any]] = {
    # No news or update toasts covering the page (and no network calls for them).
    "@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    # Never write the executed chapters back into the repository.
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
    # Render every cell, so the DOM holds every prompt and output (no virtual scrolling).
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
}


def write_kernelspec(data_dir: Path) -> Path:
    """Write ``<data_dir>/kernels/python3/kernel.json`` that starts ipykernel on this Python.

    Parameters
    ----------
    data_dir : Path
        A Jupyter data directory (put it first on ``JUPYTER_PATH`` or give it to a
        ``KernelSpecManager``).

    Returns
    -------
    Path
        The ``kernels`` directory inside ``data_dir``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     kernels = write_kernelspec(Path(d))
    ...     spec = json.loads((kernels / "python3" / "kernel.json").read_text())
    >>> spec["argv"][0] == sys.executable, spec["argv"][1:3]
    (True, ['-m', 'ipykernel_launcher'])
    """
    kernels = data_dir / "kernels"
    spec_dir = kernels / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": KERNEL_DISPLAY_NAME,
        "language": "python",
        "metadata": {"debugger": True},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    return kernels


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0).

    Examples
    --------
    >>> 1024 <= free_port() <= 65535
    True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_lab_settings(settings_dir: Path) -> None:
    """Write :data:`LAB_SETTINGS` as JupyterLab user settings files under ``settings_dir``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_lab_settings(Path(d))
    ...     p = Path(d, "@jupyterlab", "docmanager-extension", "plugin.jupyterlab-settings")
    ...     json.loads(p.read_text())
    {'autosave': False}
    """
    for plugin_id, values in LAB_SETTINGS.items():
        package, plugin = plugin_id.split(":")
        path = settings_dir / package / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=1), encoding="utf-8")


@dataclass
class LabServer:
    """A running private JupyterLab server (see :func:`start_lab`)."""

    proc: subprocess.Popen[bytes]
    port: int
    token: str
    root_dir: Path
    log_path: Path
    env: dict[str, str] = field(repr=False)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def lab_url(self, path: Path) -> str:
        """URL that opens ``path`` (a file under :attr:`root_dir`) in JupyterLab."""
        rel = path.resolve().relative_to(self.root_dir).as_posix()
        return f"{self.base_url}/lab/tree/{urllib.parse.quote(rel)}?token={self.token}"

    def api_path(self, path: Path) -> str:
        """The server-side (contents API) path of ``path``."""
        return path.resolve().relative_to(self.root_dir).as_posix()

    def api(self, method: str, endpoint: str, timeout: float = 10.0) -> Any:
        """Call the REST API (``endpoint`` like ``/api/sessions``); return decoded JSON or None."""
        req = urllib.request.Request(
            self.base_url + endpoint,
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def shutdown_sessions(self, path: Path | None = None) -> int:
        """Delete the sessions (and so the kernels) of ``path``, or all; return how many."""
        wanted = None if path is None else self.api_path(path)
        count = 0
        for session in self.api("GET", "/api/sessions"):
            if wanted is None or session.get("path") == wanted:
                self.api("DELETE", f"/api/sessions/{session['id']}")
                count += 1
        return count

    def log(self) -> str:
        """The server's combined stdout/stderr so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "<no JupyterLab log>"

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop with SIGTERM (so it shuts its kernels down) and wait; SIGKILL as a last resort."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        return self.proc.returncode


def start_lab(root_dir: Path, work_dir: Path, timeout: float = 60.0) -> LabServer:
    """Start JupyterLab on a free loopback port with private Jupyter directories.

    Parameters
    ----------
    root_dir : Path
        The server's root directory (notebooks are opened relative to it).
    work_dir : Path
        An empty directory for the server's config, settings, runtime, data and log.
    timeout : float
        Seconds to wait until ``/api/status`` answers.

    Returns
    -------
    LabServer
        The running server; call :meth:`LabServer.stop` when done.

    Raises
    ------
    RuntimeError
        When the server exits or does not answer in time (the message holds its log).
    """
    root_dir = root_dir.resolve()
    dirs = {
        name: work_dir / name
        for name in ("config", "settings", "workspaces", "runtime", "data", "home")
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    write_kernelspec(dirs["data"])
    write_lab_settings(dirs["settings"])

    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
        JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_PATH=str(dirs["data"]),
        JUPYTER_PREFER_ENV_PATH="1",
        IPYTHONDIR=str(dirs["home"] / "ipython"),
        MPLCONFIGDIR=str(dirs["home"] / "matplotlib"),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONUNBUFFERED="1",
    )
    env.pop("JUPYTER_TOKEN", None)
    port = free_port()
    token = secrets.token_hex(16)
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root_dir}",
        f"--IdentityProvider.token={token}",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.expose_app_in_browser=True",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log_path = work_dir / "jupyterlab.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=root_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LabServer(proc, port, token, root_dir, log_path, env)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"JupyterLab exited with code {proc.returncode} before answering.\n"
                f"Command: {cmd}\n--- log ---\n{server.log()}"
            )
        try:
            status = server.api("GET", "/api/status", timeout=2.0)
        except (urllib.error.URLError, OSError, ValueError):
            status = None
        if status is not None:
            return server
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(
                f"JupyterLab did not answer /api/status within {timeout} s.\n"
                f"--- log ---\n{server.log()}"
            )
        time.sleep(0.2)
