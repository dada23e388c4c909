"""Bring the course hub up on this machine, and take it down: ``python -m deploy.hub up|down``.

``up`` (as root; ``make hub``):

1. the shared environment (:func:`ensure_venv`): a virtual environment built from an
   interpreter every account can run (Debian's ``/usr/bin/python3`` — one under a mode-700
   home, such as a pyenv in ``/root``, cannot be run by the students), with JupyterLab,
   nbgrader, JupyterHub, dask.distributed and virtcore itself, checked by running it as
   ``nobody``;  configurable-http-proxy from npm into ``deploy/.node`` (:func:`ensure_proxy`);
2. accounts: the instructor and the students with random passwords (PAM logins) and homes at
   mode 700 (``useradd -K HOME_MODE=0700``; Debian's default would be 755, readable by
   every other student); an unprivileged ``grader`` account for Dask;
3. nbgrader's exchange, mode 1777 with the sticky bit (nbgrader's requirement: everyone
   creates, nobody removes another's files);
4. a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl`` as ``postgres``, see
   :func:`deploy.config.postgresql_conf`) and the course database;
5. the course in the instructor's home: roster, ``python -m autograder init``, ``release``
   of the first assignment (recorded in the gradebook with the course id — ``nbgrader db
   assignment add`` without one fails on PostgreSQL), ``nbgrader release_assignment`` run
   as the instructor, so the instructor owns the course's exchange directories;
6. the Dask scheduler and workers, TLS with certificates of the deployment's own authority,
   as the grader account;
7. JupyterHub (which starts the proxy), on 127.0.0.1.

Everything ``up`` creates is recorded in ``<root>/state/state.json`` as it goes, so ``down``
(also after a failed ``up``) stops exactly those processes (by pid), the users' servers and
whatever else runs under the accounts it made, stops PostgreSQL, removes the accounts with
their homes and the directories it made, and checks the ports are closed.  ``up --minutes N``
(default 60) leaves a watchdog that runs ``down`` after N minutes; ``--minutes 0`` none.
The shared environment stays (``down --purge`` removes it too).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import grp
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import config as cfg
from deploy.config import Layout

REPO = Path(__file__).resolve().parents[1]
NODE_PREFIX = REPO / "deploy" / ".node"
PROXY_BIN = NODE_PREFIX / "node_modules" / ".bin" / "configurable-http-proxy"
PROXY_PACKAGE = "configurable-http-proxy@5"
#: Interpreters tried for the shared environment, in order (must be runnable by every user).
BASE_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")
FIRST_ASSIGNMENT = "a1_trap_and_emulate"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"
#: JupyterLab settings for every user of the hub.
LAB_OVERRIDES = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false",
                                                                 "checkForUpdates": False}}


class DeployError(Exception):
    """A step of ``up``/``down`` failed; the message says which and why."""


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[hub] {msg}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str | Path], *, user: str | None = None, check: bool = True,
        timeout: float = 300, cwd: Path | None = None, env: dict[str, str] | None = None,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (as ``user`` through ``runuser``); DeployError with its output on failure."""
    argv = [str(x) for x in cmd]
    if user is not None:
        argv = [RUNUSER, "-u", user, "--", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env, input=input, check=False)
    if check and proc.returncode != 0:
        raise DeployError(f"{cfg.shell_line(argv)} failed ({proc.returncode}):\n"
                          f"{(proc.stdout + proc.stderr)[-3000:]}")
    return proc


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port``."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, ok: Any, timeout: float, interval: float = 0.2) -> None:
    """Poll ``ok()`` until true; DeployError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if ok():
                return
        if time.monotonic() > deadline:
            raise DeployError(f"{what}: not ready within {timeout:.0f} s")
        time.sleep(interval)


def http_json(url: str, *, token: str | None = None, method: str = "GET",
              body: Any = None, timeout: float = 15) -> Any:
    """A JSON request to the hub (or a user's server)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"token {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


# -- the shared environment -----------------------------------------------------------------------


def base_python() -> str:
    """An interpreter that every account can run (not one under a mode-700 home)."""
    for cand in BASE_PYTHONS:
        if os.access(cand, os.X_OK):
            ok = run([cand, "-c", "import ensurepip, venv"], user="nobody", check=False)
            if ok.returncode == 0:
                return cand
    raise DeployError("no Python runnable by every account with venv support: on Debian"
                      " `apt-get install python3-venv` (/usr/bin/python3)")


def _tree_hash(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*.py")
                                                    if "__pycache__" not in p.parts)
        for p in files:
            h.update(str(p.relative_to(REPO)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _deps_hash() -> str:
    """What the environment's packages depend on: the project's and the hub extra's requirements
    (another change to pyproject.toml, e.g. a linter setting, rebuilds nothing)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: any change to pyproject.toml rebuilds
        return _tree_hash([REPO / "pyproject.toml"])
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [project.get("requires-python", ""), *project.get("dependencies", []),
              *project.get("optional-dependencies", {}).get("hub", [])]
    return hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:16]


def ensure_venv(venv: Path) -> None:
    """Build (once) and update the shared environment; verify it runs as ``nobody``."""
    deps_stamp = venv / f".deps-{_deps_hash()}"
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
           "--progress-bar", "off", "--disable-pip-version-check"]
    if not deps_stamp.exists():
        t0 = time.monotonic()
        py = base_python()
        log(f"building the shared environment {venv} from {py} (once; ~1.5 min)")
        old = os.umask(0o022)
        try:
            run([py, "-m", "venv", "--clear", venv])
            run([*pip, f"{REPO}[hub]", "hatchling>=1.24"], timeout=900)
        finally:
            os.umask(old)
        for p in venv.glob(".deps-*"):
            p.unlink()
        deps_stamp.touch()
        log(f"shared environment built in {time.monotonic() - t0:.0f} s")
    code_stamp = venv / f".code-{_tree_hash([REPO / 'virtcore', REPO / 'autograder'])}"
    if not code_stamp.exists():
        old = os.umask(0o022)
        try:
            run([*pip, "--no-deps", "--no-build-isolation", "--force-reinstall", str(REPO)],
                timeout=300)
        finally:
            os.umask(old)
        for p in venv.glob(".code-*"):
            p.unlink()
        code_stamp.touch()
    # no news or update toasts in the users' JupyterLab (and no calls out for them)
    overrides = venv / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    overrides.parent.mkdir(parents=True, exist_ok=True)
    overrides.write_text(json.dumps(LAB_OVERRIDES, indent=1))
    run(["chmod", "-R", "a+rX", venv])
    probe = run([venv / "bin" / "python", "-c",
                 "import virtcore, autograder.cluster, nbgrader, jupyterhub, distributed"],
                user="nobody", check=False, cwd=Path("/"))
    if probe.returncode != 0:
        raise DeployError(f"the shared environment does not run as an ordinary user:\n"
                          f"{probe.stderr[-2000:]}")


def ensure_proxy() -> Path:
    """configurable-http-proxy from npm, in ``deploy/.node`` (not committed)."""
    if not os.access(PROXY_BIN, os.X_OK):
        if shutil.which("npm") is None:
            raise DeployError("npm is missing (Debian: apt-get install nodejs npm)")
        log(f"npm install {PROXY_PACKAGE} into {NODE_PREFIX}")
        run(["npm", "install", "--prefix", NODE_PREFIX, "--no-audit", "--no-fund",
             "--silent", PROXY_PACKAGE], timeout=300)
    return PROXY_BIN


# -- the deployment -------------------------------------------------------------------------------


@dataclass
class HubInfo:
    """What ``up`` hands back: where the hub is and how to log in."""

    url: str
    passwords: dict[str, str]
    admin_token: str
    gradebook_url: str
    dask_address: str
    tls_dir: Path
    timings: dict[str, float] = field(default_factory=dict)


class Deployment:
    """One course hub on this machine, described by a :class:`~deploy.config.Layout`."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.state: dict[str, Any] = {"users": [], "pids": {}, "dirs": [], "postgres": False,
                                      "ports": []}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}  # what this process started

    # -- state ---------------------------------------------------------------------------------
    def _save(self) -> None:
        sf = self.layout.state_file
        sf.parent.mkdir(parents=True, exist_ok=True)
        tmp = sf.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.chmod(0o600)
        os.replace(tmp, sf)

    @classmethod
    def load(cls, root: Path) -> Deployment:
        """The deployment recorded in ``<root>/state/state.json``."""
        sf = root / "state" / "state.json"
        if not sf.is_file():
            raise DeployError(f"no deployment at {root} ({sf} is missing)")
        state = json.loads(sf.read_text())
        lay = state["layout"]
        kw: dict[str, Any] = {k: (Path(v) if k in ("root", "venv", "exchange", "home_base")
                                  else tuple(v) if k == "proxy_command" else v)
                              for k, v in lay.items()}
        layout = Layout(**kw)
        dep = cls(layout)
        dep.state = state
        return dep

    def _mkdir(self, path: Path, mode: int, owner: str = "root") -> None:
        if not path.exists():
            missing = [path, *(a for a in path.parents if not a.exists())]
            path.mkdir(parents=True)
            self.state["dirs"].extend(str(d) for d in missing)  # ancestors too: down removes them
            self._save()
        os.chmod(path, mode)
        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid)

    def _write(self, path: Path, text: str, mode: int = 0o644, owner: str = "root") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, mode)
        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid)

    # -- accounts ------------------------------------------------------------------------------
    def _add_user(self, name: str, home: Path, *, system: bool = False) -> str | None:
        try:
            pwd.getpwnam(name)
        except KeyError:
            pass
        else:
            raise DeployError(f"the account {name!r} exists already; take the hub down"
                              " (`make hub-down`) or choose another --prefix")
        if system:
            run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", home,
                 "--shell", "/usr/sbin/nologin", name])
        else:
            run(["useradd", "--create-home", "--user-group", "--home-dir", home,
                 "--shell", "/bin/bash", "-K", "HOME_MODE=0700", name])
        self.state["users"].append(name)
        self._save()
        if system:
            self._mkdir(home, 0o700, owner=name)
            return None
        os.chmod(home, 0o700)  # whatever login.defs says
        password = secrets.token_urlsafe(12)
        run(["chpasswd"], input=f"{name}:{password}\n")
        return password

    # -- up ------------------------------------------------------------------------------------
    def up(self) -> HubInfo:
        """Bring everything up (see the module docstring); ``down()`` on any failure."""
        if os.geteuid() != 0:
            raise DeployError("the hub is brought up as root (it creates accounts and runs"
                              " PAM logins): sudo make hub")
        lay = self.layout
        if lay.state_file.exists():
            raise DeployError(f"a deployment is recorded at {lay.root}: take it down first"
                              f" (python -m deploy.hub down --root {lay.root})")
        busy = [p for p in (lay.http_port, lay.hub_api_port, lay.proxy_api_port, lay.dask_port)
                if not port_free(p)]
        if busy:
            raise DeployError(f"port(s) {busy} on 127.0.0.1 are in use")
        t: dict[str, float] = {}
        try:
            return self._up(t)
        except BaseException:
            log("up failed: taking down what was brought up")
            with contextlib.suppress(Exception):
                self.down()
            raise

    def _up(self, t: dict[str, float]) -> HubInfo:
        lay = self.layout
        t0 = time.monotonic()
        ensure_venv(lay.venv)
        proxy = ensure_proxy()
        lay = dataclasses.replace(lay, proxy_command=(str(proxy),))
        self.layout = lay
        t["environment"] = time.monotonic() - t0
        self._mkdir(lay.root, 0o755)
        self.state["layout"] = {k: (str(v) if isinstance(v, Path) else v)
                                for k, v in dataclasses.asdict(lay).items()}
        self.state["started"] = time.time()
        self._save()
        for d, mode in ((lay.state, 0o711), (lay.hub_dir, 0o700), (lay.logs, 0o700),
                        (lay.root / "etc", 0o755)):
            self._mkdir(d, mode)

        t0 = time.monotonic()
        if not lay.home_base.exists():
            self._mkdir(lay.home_base, 0o755)
        passwords: dict[str, str] = {}
        for user in (lay.instructor, *lay.students):
            pw = self._add_user(user, lay.home(user))
            assert pw is not None
            passwords[user] = pw
        self._add_user(lay.grader, lay.grader_home, system=True)
        self._write(lay.hub_dir / "passwords.json", json.dumps(passwords, indent=1), 0o600)
        t["accounts"] = time.monotonic() - t0

        # the exchange: world-writable with the sticky bit, as nbgrader requires
        self._mkdir(lay.exchange, 0o1777)
        # per-role Jupyter configuration (world-readable)
        for role in ("instructor", "student"):
            etc = lay.etc(role)
            self._mkdir(etc, 0o755)
            self._write(etc / "nbgrader_config.py", cfg.nbgrader_config(lay, role))
            self._write(etc / "jupyter_server_config.json", cfg.server_extensions(role))
            self._write(etc / "labconfig" / "page_config.json", cfg.lab_page_config(role))
            os.chmod(etc / "labconfig", 0o755)

        t0 = time.monotonic()
        self._start_postgres()
        t["postgres"] = time.monotonic() - t0
        t0 = time.monotonic()
        self._set_up_course()
        t["course"] = time.monotonic() - t0
        t0 = time.monotonic()
        self._start_dask()
        t["dask"] = time.monotonic() - t0
        t0 = time.monotonic()
        token = self._start_hub()
        t["hub"] = time.monotonic() - t0
        return HubInfo(lay.url, passwords, token, cfg.gradebook_url(lay), lay.dask_address,
                       lay.tls_dir, t)

    def _spawn(self, key: str, cmd: list[str], *, user: str, cwd: Path,
               env: dict[str, str]) -> subprocess.Popen[bytes]:
        logf = open(self.layout.logs / f"{key}.log", "ab")  # noqa: SIM115 - handed to the child
        pw = pwd.getpwnam(user)
        kwargs: dict[str, Any] = {}
        if user != "root":
            kwargs = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True, **kwargs)
        finally:
            logf.close()
        self.procs[key] = proc
        self.state["pids"][key] = proc.pid
        self._save()
        return proc

    def _start_postgres(self) -> None:
        lay = self.layout
        bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not bindirs:
            raise DeployError("PostgreSQL is missing (Debian: apt-get install postgresql)")
        bindir = bindirs[-1].parent
        self.state["pg_bindir"] = str(bindir)
        self._mkdir(lay.pg_data.parent, 0o711)
        self._mkdir(lay.pg_data, 0o700, owner="postgres")
        self._mkdir(lay.pg_socket_dir, 0o755, owner="postgres")
        run([bindir / "initdb", "-D", lay.pg_data, "-U", "postgres", "-A", "peer",
             "-E", "UTF8", "--locale=C", "--no-instructions"], user="postgres", cwd=Path("/"))
        conf = lay.pg_data / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write("\n" + cfg.postgresql_conf(lay))
        self._write(lay.pg_data / "pg_hba.conf", cfg.pg_hba(lay), 0o600, owner="postgres")
        self._write(lay.pg_data / "pg_ident.conf", cfg.pg_ident(lay), 0o600, owner="postgres")
        self.state["postgres"] = True
        self._save()
        run([bindir / "pg_ctl", "-D", lay.pg_data, "-l", lay.pg_data / "postgres.log",
             "-w", "-t", "60", "start"], user="postgres", cwd=Path("/"), timeout=90)
        psql = [str(bindir / "psql"), "-h", str(lay.pg_socket_dir), "-p", str(lay.pg_port),
                "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c"]
        run([*psql, f'CREATE ROLE "{lay.instructor}" LOGIN'], user="postgres", cwd=Path("/"))
        run([*psql, f'CREATE DATABASE "{lay.course_id}" OWNER "{lay.instructor}"'],
            user="postgres", cwd=Path("/"))

    def tool_env(self) -> dict[str, str]:
        """The environment of the course tools (nbgrader, autograder) in the deployment."""
        lay = self.layout
        return {"PATH": f"{lay.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
                "JUPYTER_PREFER_ENV_PATH": "1", "LANG": "C.UTF-8",
                "VIRTCORE_GRADEBOOK_URL": cfg.gradebook_url(lay),
                "VIRTCORE_EXCHANGE": str(lay.exchange), "PYTHONNOUSERSITE": "1",
                "PYTHONWARNINGS": "ignore::DeprecationWarning"}

    def autograder(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """``python -m autograder <args>`` as root with the shared environment, on this course."""
        lay = self.layout
        return run([lay.python, "-m", "autograder", *args, "--course", lay.course_dir,
                    "--db-url", cfg.gradebook_url(lay)], env=self.tool_env(), cwd=lay.course_dir,
                   timeout=timeout)

    def nbgrader_as(self, user: str, *args: str,
                    timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``nbgrader <args>`` as ``user`` (in the course directory for the instructor)."""
        lay = self.layout
        env = self.tool_env()
        env.update(HOME=str(lay.home(user)), USER=user,
                   JUPYTER_CONFIG_PATH=str(lay.etc("instructor" if user == lay.instructor
                                                   else "student")))
        cwd = lay.course_dir if user == lay.instructor else lay.home(user)
        return run(["env", *(f"{k}={v}" for k, v in env.items()), lay.venv / "bin" / "nbgrader",
                    *args], user=user, cwd=cwd, timeout=timeout, env={})

    def _set_up_course(self) -> None:
        lay = self.layout
        course = lay.course_dir
        inst = pwd.getpwnam(lay.instructor)
        course.mkdir(mode=0o700)
        shutil.copy(REPO / "course" / "nbgrader_config.py", course / "nbgrader_config.py")
        shutil.copytree(REPO / "course" / "source", course / "source",
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        (course / "students.csv").write_text(cfg.students_csv(lay))
        t0 = time.monotonic()
        # `python -m autograder init` then `release`, in one interpreter (nbgrader imports once)
        url = cfg.gradebook_url(lay)
        common = ["--course", str(course), "--db-url", url]
        steps = [["init", *common], ["release", FIRST_ASSIGNMENT, *common]]
        script = ("import sys\nfrom autograder.cli import main\n"
                  f"for argv in {steps!r}:\n"
                  "    rc = main(argv)\n    if rc:\n        sys.exit(rc)\n")
        run([lay.python, "-c", script], env=self.tool_env(), cwd=course, timeout=600)
        log(f"course: autograder init + release {time.monotonic() - t0:.1f} s")
        # the instructor owns the course (the secret stays root's: only `grade` reads it)
        for p in [course, *course.rglob("*")]:
            if p.name != ".course_secret":
                os.lchown(p, inst.pw_uid, inst.pw_gid)
        self.nbgrader_as(lay.instructor, "release_assignment", FIRST_ASSIGNMENT,
                         f"--course={lay.course_id}")

    def _start_dask(self) -> None:
        from autograder.cluster import write_certificates

        lay = self.layout
        grader = pwd.getpwnam(lay.grader)
        self._mkdir(lay.tls_dir, 0o711)
        files = write_certificates(lay.tls_dir, days=7, name=f"virtcore-hub-{lay.user_prefix}")
        for role in ("scheduler", "worker"):
            os.chown(files.key(role), grader.pw_uid, grader.pw_gid)
        env = {"PATH": f"{lay.venv / 'bin'}:/usr/bin:/bin", "HOME": str(lay.grader_home),
               "LANG": "C.UTF-8", "PYTHONNOUSERSITE": "1",
               "DASK_DISTRIBUTED__WORKER__DAEMON": "True"}
        self._spawn("dask-scheduler", cfg.scheduler_command(lay), user=lay.grader,
                    cwd=lay.grader_home, env=env)
        wait_for("the Dask scheduler", lambda: not port_free(lay.dask_port), 60)
        for i in range(1, lay.workers + 1):
            self._spawn(f"dask-worker-{i}", cfg.worker_command(lay, i), user=lay.grader,
                        cwd=lay.grader_home, env=env)
        from distributed import Client

        from autograder.cluster import client_security

        with warnings.catch_warnings():  # this Python's micro version may differ from theirs
            warnings.simplefilter("ignore")
            with Client(lay.dask_address, security=client_security(lay.tls_dir),
                        timeout=30) as client:
                client.wait_for_workers(lay.workers, timeout=90)

    def _start_hub(self) -> str:
        lay = self.layout
        token = secrets.token_hex(32)
        token_file = lay.hub_dir / "admin_token"
        self._write(token_file, token + "\n", 0o600)
        cfile = lay.hub_dir / "jupyterhub_config.py"
        self._write(cfile, cfg.jupyterhub_config(lay, admin_token_file=token_file), 0o600)
        env = {"PATH": f"{lay.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               "HOME": str(lay.hub_dir), "PYTHONNOUSERSITE": "1",
               "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(32)}
        self._spawn("jupyterhub", [str(lay.venv / "bin" / "jupyterhub"), "-f", str(cfile)],
                    user="root", cwd=lay.hub_dir, env=env)
        wait_for("JupyterHub", lambda: http_json(f"{lay.url}/hub/api/", timeout=2), 60)
        return token

    # -- down ----------------------------------------------------------------------------------
    def down(self, *, purge: bool = False) -> list[str]:
        """Stop and remove everything ``up`` recorded; returns what is still left (ideally [])."""
        lay = self.layout
        pids = self.state.get("pids", {})
        # the hub first: it stops the users' servers and the proxy it started
        for key in sorted(pids, key=lambda k: (k != "jupyterhub", k)):
            if key == "watchdog" and pids[key] == os.getpid():
                continue
            _stop_group(pids[key], timeout=20)
        for proc in self.procs.values():  # reap our own children
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        proxy_pid = lay.hub_dir / "proxy.pid"
        with contextlib.suppress(OSError, ValueError):
            _stop_group(int(proxy_pid.read_text().strip()), timeout=10)
        uids = []
        for user in self.state.get("users", []):
            with contextlib.suppress(KeyError):
                uids.append(pwd.getpwnam(user).pw_uid)
        _kill_uids(uids)
        if self.state.get("postgres") and lay.pg_data.is_dir():
            bindir = Path(self.state.get("pg_bindir", ""))
            if (lay.pg_data / "postmaster.pid").exists():
                run([bindir / "pg_ctl", "-D", lay.pg_data, "-m", "fast", "-w", "-t", "60",
                     "stop"], user="postgres", check=False, cwd=Path("/"), timeout=90)
        for user in reversed(self.state.get("users", [])):
            run(["userdel", "--remove", user], check=False)
            with contextlib.suppress(KeyError):
                grp.getgrnam(user)
                run(["groupdel", user], check=False)
        for d in sorted(self.state.get("dirs", []), key=len, reverse=True):
            shutil.rmtree(d, ignore_errors=True)
        if purge:
            shutil.rmtree(lay.venv, ignore_errors=True)
        return self.leftovers()

    def leftovers(self) -> list[str]:
        """Processes, accounts, ports and directories of this deployment still present."""
        lay = self.layout
        left = []
        for key, pid in self.state.get("pids", {}).items():
            if key != "watchdog" and _alive(pid):
                left.append(f"process {key} ({pid})")
        for user in self.state.get("users", []):
            with contextlib.suppress(KeyError):
                pwd.getpwnam(user)
                left.append(f"account {user}")
        for port in (lay.http_port, lay.hub_api_port, lay.proxy_api_port, lay.dask_port):
            if not port_free(port):
                left.append(f"port 127.0.0.1:{port}")
        if (lay.pg_socket_dir / f".s.PGSQL.{lay.pg_port}").exists():
            left.append("PostgreSQL socket")
        left += [f"directory {d}" for d in self.state.get("dirs", []) if Path(d).exists()]
        return left


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie child of ours is as good as gone
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True


def _stop_group(pid: int, timeout: float) -> None:
    """SIGTERM the process group ``pid`` leads (we started it with a new session), then KILL."""
    if not _alive(pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _kill_uids(uids: Sequence[int]) -> None:
    """Kill, by pid, every process running as one of ``uids`` (accounts this deployment made)."""
    if not uids:
        return
    wanted = set(uids)
    for _ in range(50):  # up to ~10 s: a SIGKILLed process may take a moment to go
        found = uid_processes(wanted)
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def uid_processes(uids: set[int]) -> list[int]:
    """Live processes (zombies excluded: already dead, waiting to be reaped) owned by ``uids``."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if d.stat().st_uid in uids and state != "Z":
                found.append(int(d.name))
    return found


# -- command line ---------------------------------------------------------------------------------


def _layout_from_args(args: argparse.Namespace) -> Layout:
    return Layout(root=Path(args.root), user_prefix=args.prefix, n_students=args.students,
                  http_port=args.port, dask_port=args.dask_port)


def _watchdog(root: Path, seconds: float) -> None:
    """Run ``down`` after ``seconds`` in a detached process (the hub is bounded in time)."""
    proc = subprocess.Popen([sys.executable, "-m", "deploy.hub", "down", "--root", str(root),
                             "--after", str(seconds)], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    dep = Deployment.load(root)
    dep.state["pids"]["watchdog"] = proc.pid
    dep._save()


def cmd_up(args: argparse.Namespace) -> int:
    """Bring the hub up and print how to use it."""
    dep = Deployment(_layout_from_args(args))
    info = dep.up()
    lay = dep.layout
    if args.minutes > 0:
        _watchdog(lay.root, args.minutes * 60)
    print(f"""
The virtcore course hub is up (loopback only): {info.url}

  log in as                 password
""" + "\n".join(f"  {u:<25} {p}" for u, p in info.passwords.items()) + f"""

  instructor: JupyterLab's Nbgrader menu ▸ Formgrader (course {lay.course_id!r},
              course directory {lay.course_dir}); assignment {FIRST_ASSIGNMENT} is released
  students:   Nbgrader ▸ Assignment List ▸ Fetch, solve, Submit; later Fetch Feedback
  grading (as root, in the repository):
    python -m autograder import {FIRST_ASSIGNMENT} {lay.exchange} --course {lay.course_dir} \\
        --db-url '{info.gradebook_url}'
    VIRTCORE_DASK_TLS={info.tls_dir} python -m autograder grade {FIRST_ASSIGNMENT} \\
        --cluster {info.dask_address} --course {lay.course_dir} --db-url '{info.gradebook_url}'
  took {sum(info.timings.values()):.0f} s ({", ".join(f"{k} {v:.1f} s"
                                                      for k, v in info.timings.items())})
  {"stops by itself in " + str(args.minutes) + " min; " if args.minutes > 0 else ""}\
take it down now with: make hub-down
""")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Take the hub down (after ``--after`` seconds)."""
    if args.after:
        time.sleep(args.after)
    try:
        dep = Deployment.load(Path(args.root))
    except DeployError as e:
        print(f"nothing to take down: {e}")
        return 0
    left = dep.down(purge=args.purge)
    if left:
        print("still present after down:\n  " + "\n  ".join(left), file=sys.stderr)
        return 1
    print(f"the hub at {args.root} is down: processes stopped, accounts and directories"
          " removed, ports closed")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """What the recorded deployment is running."""
    dep = Deployment.load(Path(args.root))
    for key, pid in dep.state.get("pids", {}).items():
        print(f"  {key:<16} pid {pid:<8} {'running' if _alive(pid) else 'stopped'}")
    print(f"  accounts: {', '.join(dep.state.get('users', []))}")
    print(f"  hub: {dep.layout.url}   dask: {dep.layout.dask_address}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """``python -m deploy.hub``'s arguments."""
    p = argparse.ArgumentParser(prog="python -m deploy.hub", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    root_default = str(Layout().root)
    up = sub.add_parser("up", help=cmd_up.__doc__)
    up.add_argument("--root", default=root_default)
    up.add_argument("--prefix", default="vc-", help="account name prefix (default: %(default)s)")
    up.add_argument("--students", type=int, default=2)
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--dask-port", type=int, default=8786)
    up.add_argument("--minutes", type=float, default=60,
                    help="take the hub down by itself after this long; 0: never")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help=cmd_down.__doc__)
    down.add_argument("--root", default=root_default)
    down.add_argument("--after", type=float, default=0.0, help=argparse.SUPPRESS)
    down.add_argument("--purge", action="store_true", help="also remove the shared environment")
    down.set_defaults(func=cmd_down)
    st = sub.add_parser("status", help=cmd_status.__doc__)
    st.add_argument("--root", default=root_default)
    st.set_defaults(func=cmd_status)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def iter_created(dep: Deployment) -> Iterator[str]:
    """The accounts a deployment created (for tests and ``status``)."""
    yield from dep.state.get("users", [])


if __name__ == "__main__":
    sys.exit(main())
