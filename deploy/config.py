"""The course hub's configuration, as text: pure functions of a :class:`Layout`.

Nothing here touches the system; :mod:`deploy.hub` writes these files and starts the
services.  One :class:`Layout` says where everything lives and which ports and account names
a deployment uses, so ``make hub`` and the end-to-end test differ only in their layout.

The parts and the rules each file enforces:

- **JupyterHub** [JUPYTERHUB] (:func:`jupyterhub_config`): the hub and its proxy
  (configurable-http-proxy) listen on 127.0.0.1 only; users log in with their Unix password
  (``PAMAuthenticator``); ``LocalProcessSpawner`` starts each user's JupyterLab as that user
  from the shared virtual environment; the instructor is in the group ``formgrade-<course>``,
  the students in ``nbgrader-<course>`` (nbgrader's ``JupyterHubAuthPlugin`` reads these
  groups through the hub's API, so a user in neither group cannot fetch or submit);
  nobody is a hub administrator — a ``virtcore-admin`` service with a token kept in the
  root-only state directory does the automation.
- **nbgrader** [NBGRADER-EXCHANGE] (:func:`nbgrader_config`, :func:`server_extensions`,
  :func:`lab_page_config`): per role, a Jupyter config directory that the spawner puts on
  ``JUPYTER_CONFIG_PATH``: the exchange root and the auth plugin for everyone; for the
  instructor the course directory, so formgrader opens on it; for students formgrader and
  "create assignment" are switched off (the course directory and the gradebook are out of
  their reach anyway: a home at mode 700, a database that refuses them).
- **PostgreSQL** (:func:`postgresql_conf`, :func:`pg_hba`, :func:`pg_ident`): no TCP at all
  (``listen_addresses = ''``), a Unix socket in the deployment's directory; one database
  for the course, owned by the instructor's role; ``peer`` authentication, with a map that
  lets exactly the instructor's account and root (who runs ``grade``) in as that role.
- **Dask** [DASK-DISTRIBUTED] (:func:`scheduler_command`, :func:`worker_command`): scheduler
  and workers speak TLS only, with certificates from the deployment's own authority
  (:func:`autograder.cluster.write_certificates`); they run as a dedicated unprivileged
  account, never root.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ADMIN_SERVICE",
    "Layout",
    "gradebook_url",
    "jupyterhub_config",
    "lab_page_config",
    "nbgrader_config",
    "pg_hba",
    "pg_ident",
    "postgresql_conf",
    "scheduler_command",
    "server_extensions",
    "students_csv",
    "worker_command",
]

#: The hub service whose token the deployment uses for automation (never a user).
ADMIN_SERVICE = "virtcore-admin"
#: What that service may do: manage users, their servers and tokens, read groups.
ADMIN_SCOPES = ("admin:users", "admin:servers", "tokens", "read:groups", "list:users",
                "read:users")
#: What a user's own server token may do besides the defaults: read the user's own groups
#: (nbgrader's JupyterHubAuthPlugin asks the hub which courses the user is in).
SERVER_TOKEN_SCOPES = ("users:activity!user", "access:servers!server", "read:users:name!user",
                       "read:users:groups!user")
#: nbgrader's lab plugins a student does not need.
STUDENT_DISABLED_LAB = ("@jupyter/nbgrader:formgrader", "@jupyter/nbgrader:create-assignment",
                        "@jupyter/nbgrader:course-list")
STUDENT_DISABLED_SERVER = ("nbgrader.server_extensions.formgrader",
                           "nbgrader.server_extensions.course_list")


@dataclass(frozen=True)
class Layout:
    """Where a deployment lives, its ports and its account names.

    ``root`` holds the world-readable configuration (``etc/``) and the root-only ``state/``
    (hub database, secrets, certificates, the PostgreSQL cluster, logs, ``state.json``).
    The virtual environment ``venv`` is shared by deployments (built once, reused).

    >>> lay = Layout(user_prefix="t-", n_students=2)
    >>> lay.instructor, lay.students, lay.grader
    ('t-instructor', ('t-student1', 't-student2'), 't-grader')
    >>> lay.course_dir
    PosixPath('/home/t-instructor/course')
    """

    root: Path = Path("/srv/virtcore-hub")
    venv: Path = Path("/opt/virtcore-hub/venv")
    exchange: Path = Path("/srv/nbgrader/exchange")
    home_base: Path = Path("/home")
    user_prefix: str = "vc-"
    n_students: int = 2
    course_id: str = "virtcore"
    http_port: int = 8000
    hub_api_port: int = 8081
    proxy_api_port: int = 8001
    dask_port: int = 8786
    pg_port: int = 5439
    workers: int = 2
    proxy_command: tuple[str, ...] = field(default=("configurable-http-proxy",))

    # -- accounts ------------------------------------------------------------------------------
    @property
    def instructor(self) -> str:
        """The instructor's Unix account (and hub user, and PostgreSQL role)."""
        return f"{self.user_prefix}instructor"

    @property
    def students(self) -> tuple[str, ...]:
        """The students' Unix accounts."""
        return tuple(f"{self.user_prefix}student{i}" for i in range(1, self.n_students + 1))

    @property
    def grader(self) -> str:
        """The unprivileged account that runs the Dask scheduler and workers."""
        return f"{self.user_prefix}grader"

    def home(self, user: str) -> Path:
        """A user's home directory."""
        return self.home_base / user

    # -- paths ---------------------------------------------------------------------------------
    @property
    def course_dir(self) -> Path:
        """The nbgrader course directory, in the instructor's home (mode 700)."""
        return self.home(self.instructor) / "course"

    def etc(self, role: str) -> Path:
        """The Jupyter config directory of ``role`` (``instructor`` or ``student``)."""
        return self.root / "etc" / "jupyter" / role

    @property
    def state(self) -> Path:
        """Root's directory (mode 711; every file in it has its own, stricter mode)."""
        return self.root / "state"

    @property
    def hub_dir(self) -> Path:
        """JupyterHub's working directory: config, sqlite database, secrets (root, 700)."""
        return self.state / "hub"

    @property
    def tls_dir(self) -> Path:
        """The Dask certificates (each key readable only by the account that uses it)."""
        return self.state / "tls"

    @property
    def pg_data(self) -> Path:
        """The PostgreSQL cluster's data directory (owned by ``postgres``, 700)."""
        return self.state / "pg" / "data"

    @property
    def pg_socket_dir(self) -> Path:
        """The directory of PostgreSQL's Unix socket."""
        return self.state / "pg" / "run"

    @property
    def grader_home(self) -> Path:
        """The grader account's home: the Dask workers' local directories (700)."""
        return self.state / "grader"

    @property
    def logs(self) -> Path:
        """Service logs (root, 700)."""
        return self.state / "logs"

    @property
    def state_file(self) -> Path:
        """What ``up`` created, so that ``down`` removes exactly that."""
        return self.state / "state.json"

    @property
    def python(self) -> Path:
        """The shared environment's interpreter."""
        return self.venv / "bin" / "python"

    @property
    def url(self) -> str:
        """The hub's public URL (loopback)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dask_address(self) -> str:
        """The scheduler's address."""
        return f"tls://127.0.0.1:{self.dask_port}"


def gradebook_url(layout: Layout) -> str:
    """The SQLAlchemy URL of the gradebook (psycopg2 driver, Unix socket, peer authentication).

    A plain ``postgresql://`` would select psycopg 3 under SQLAlchemy 2; the driver is named.

    >>> gradebook_url(Layout(root=Path("/srv/h")))
    'postgresql+psycopg2://vc-instructor@/virtcore?host=/srv/h/state/pg/run&port=5439'
    """
    return (f"postgresql+psycopg2://{layout.instructor}@/{layout.course_id}"
            f"?host={layout.pg_socket_dir}&port={layout.pg_port}")


# -- JupyterHub -----------------------------------------------------------------------------------


def jupyterhub_config(layout: Layout, *, admin_token_file: Path) -> str:
    """The text of ``jupyterhub_config.py`` (run by the hub as root).

    >>> text = jupyterhub_config(Layout(), admin_token_file=Path("/x/token"))
    >>> compile(text, "jupyterhub_config.py", "exec") is not None
    True
    >>> "c.JupyterHub.ip = '127.0.0.1'" in text, "PAMAuthenticator" in text
    (True, True)
    """
    lay = layout
    base_env = {
        "PATH": f"{lay.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "JUPYTER_PREFER_ENV_PATH": "1",
        "VIRTCORE_EXCHANGE": str(lay.exchange),
        "PYTHONNOUSERSITE": "1",
    }
    instructor_env = {"VIRTCORE_GRADEBOOK_URL": gradebook_url(lay)}
    return f'''"""JupyterHub configuration of the virtcore course hub (written by deploy/config.py).

One machine, loopback only: PAM logins, LocalProcessSpawner, configurable-http-proxy.
"""

c = get_config()  # noqa: F821

COURSE = {lay.course_id!r}
INSTRUCTORS = [{lay.instructor!r}]
STUDENTS = {list(lay.students)!r}
ETC = {str(lay.etc("")).rstrip("/")!r}
BASE_ENV = {base_env!r}
INSTRUCTOR_ENV = {instructor_env!r}

# -- network: loopback only -------------------------------------------------------------------
c.JupyterHub.ip = '127.0.0.1'
c.JupyterHub.port = {lay.http_port}
c.JupyterHub.hub_ip = '127.0.0.1'
c.JupyterHub.hub_port = {lay.hub_api_port}
c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{lay.proxy_api_port}'
c.ConfigurableHTTPProxy.command = {list(lay.proxy_command)!r}
c.ConfigurableHTTPProxy.pid_file = {str(lay.hub_dir / "proxy.pid")!r}
c.JupyterHub.cleanup_servers = True
c.JupyterHub.cleanup_proxy = True

# -- state (root-only directory) -------------------------------------------------------------
c.JupyterHub.db_url = 'sqlite:///' + {str(lay.hub_dir / "jupyterhub.sqlite")!r}
c.JupyterHub.cookie_secret_file = {str(lay.hub_dir / "cookie_secret")!r}
c.JupyterHub.pid_file = {str(lay.hub_dir / "jupyterhub.pid")!r}

# -- who may log in: Unix accounts with their passwords ----------------------------------------
c.JupyterHub.authenticator_class = 'pam'
c.PAMAuthenticator.open_sessions = False
c.Authenticator.allowed_users = set(INSTRUCTORS + STUDENTS)
c.Authenticator.admin_users = set()
c.JupyterHub.load_groups = {{
    'formgrade-' + COURSE: {{'users': INSTRUCTORS}},
    'nbgrader-' + COURSE: {{'users': STUDENTS}},
}}

# -- automation: a service with a token, not an admin user -----------------------------------
with open({str(admin_token_file)!r}) as _fh:
    _ADMIN_TOKEN = _fh.read().strip()
c.JupyterHub.services = [{{'name': {ADMIN_SERVICE!r}, 'api_token': _ADMIN_TOKEN}}]
c.JupyterHub.load_roles = [
    {{'name': {ADMIN_SERVICE!r}, 'scopes': {list(ADMIN_SCOPES)!r},
      'services': [{ADMIN_SERVICE!r}]}},
]

# -- each user's JupyterLab, as that user, from the shared environment -------------------------
c.JupyterHub.spawner_class = 'localprocess'
c.Spawner.cmd = [{str(lay.venv / "bin" / "jupyterhub-singleuser")!r}]
c.Spawner.default_url = '/lab'
c.Spawner.notebook_dir = '~'
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
c.Spawner.server_token_scopes = {list(SERVER_TOKEN_SCOPES)!r}


def _pre_spawn(spawner):
    """The role's Jupyter config directory; the gradebook URL for the instructor only."""
    groups = {{g.name for g in spawner.user.groups}}
    role = 'instructor' if 'formgrade-' + COURSE in groups else 'student'
    env = dict(BASE_ENV)
    env['JUPYTER_CONFIG_PATH'] = ETC + '/' + role
    if role == 'instructor':
        env.update(INSTRUCTOR_ENV)
    spawner.environment = env


c.Spawner.pre_spawn_hook = _pre_spawn
'''


# -- nbgrader and Jupyter, per role ---------------------------------------------------------------


def nbgrader_config(layout: Layout, role: str) -> str:
    """``nbgrader_config.py`` for ``role``: exchange, auth plugin, course directory.

    >>> "CourseDirectory.root" in nbgrader_config(Layout(), "student")
    False
    >>> "CourseDirectory.root = '/home/vc-instructor/course'" in nbgrader_config(
    ...     Layout(), "instructor")
    True
    """
    if role not in ("instructor", "student"):
        raise ValueError(f"unknown role {role!r}")
    lines = [
        f'"""nbgrader settings for the {role}s of the virtcore hub (generated by deploy/)."""',
        "c = get_config()  # noqa: F821",
        f"c.Exchange.root = {str(layout.exchange)!r}",
        "c.Authenticator.plugin_class = 'nbgrader.auth.JupyterHubAuthPlugin'",
    ]
    if role == "instructor":
        lines += [f"c.CourseDirectory.root = {str(layout.course_dir)!r}",
                  f"c.CourseDirectory.course_id = {layout.course_id!r}"]
    return "\n".join(lines) + "\n"


def server_extensions(role: str) -> str:
    """``jupyter_server_config.json`` for ``role``: which nbgrader server extensions load.

    >>> json.loads(server_extensions("student"))["ServerApp"]["jpserver_extensions"][
    ...     "nbgrader.server_extensions.formgrader"]
    False
    """
    enabled = {"nbgrader.server_extensions.assignment_list": True,
               "nbgrader.server_extensions.validate_assignment": True,
               "nbgrader.server_extensions.formgrader": role == "instructor",
               "nbgrader.server_extensions.course_list": role == "instructor"}
    return json.dumps({"ServerApp": {"jpserver_extensions": enabled}}, indent=1) + "\n"


def lab_page_config(role: str) -> str:
    """``labconfig/page_config.json``: nbgrader's instructor plugins off for students."""
    disabled = {} if role == "instructor" else dict.fromkeys(STUDENT_DISABLED_LAB, True)
    return json.dumps({"disabledExtensions": disabled}, indent=1) + "\n"


def students_csv(layout: Layout) -> str:
    """The roster in ``nbgrader db student import`` format.

    >>> print(students_csv(Layout(n_students=1)), end="")
    id,first_name,last_name,email
    vc-student1,Student,1,
    """
    rows = ["id,first_name,last_name,email"]
    rows += [f"{s},Student,{i},"
             for i, s in enumerate(layout.students, start=1)]
    return "\n".join(rows) + "\n"


# -- PostgreSQL -----------------------------------------------------------------------------------


def postgresql_conf(layout: Layout) -> str:
    """Settings appended to the cluster's ``postgresql.conf``: no TCP, a private socket.

    >>> "listen_addresses = ''" in postgresql_conf(Layout())
    True
    """
    return (
        "# virtcore hub (deploy/): Unix socket only, in the deployment's directory\n"
        "listen_addresses = ''\n"
        f"port = {layout.pg_port}\n"
        f"unix_socket_directories = '{layout.pg_socket_dir}'\n"
        "unix_socket_permissions = 0777\n"
        "max_connections = 100\n"
        "shared_buffers = 64MB\n"
    )


def pg_hba(layout: Layout) -> str:
    """``pg_hba.conf``: peer authentication on the socket; the course database by map only.

    >>> print(pg_hba(Layout()), end="")
    # TYPE  DATABASE  USER  METHOD
    local   all       postgres  peer
    local   virtcore  all       peer map=virtcore
    """
    return ("# TYPE  DATABASE  USER  METHOD\n"
            "local   all       postgres  peer\n"
            f"local   {layout.course_id}  all       peer map={layout.course_id}\n")


def pg_ident(layout: Layout) -> str:
    """``pg_ident.conf``: the instructor's account and root (``grade``) as the instructor's role.

    >>> print(pg_ident(Layout(user_prefix="t-")), end="")
    # MAPNAME  SYSTEM-USERNAME  PG-USERNAME
    virtcore  t-instructor  t-instructor
    virtcore  root  t-instructor
    """
    m = layout.course_id
    return ("# MAPNAME  SYSTEM-USERNAME  PG-USERNAME\n"
            f"{m}  {layout.instructor}  {layout.instructor}\n"
            f"{m}  root  {layout.instructor}\n")


# -- Dask -----------------------------------------------------------------------------------------


def _tls_args(layout: Layout, role: str) -> list[str]:
    tls = layout.tls_dir
    return ["--tls-ca-file", str(tls / "ca.pem"), "--tls-cert", str(tls / f"{role}.pem"),
            "--tls-key", str(tls / f"{role}-key.pem")]


def scheduler_command(layout: Layout) -> list[str]:
    """The Dask scheduler: TLS on 127.0.0.1, no dashboard.

    >>> cmd = scheduler_command(Layout())
    >>> cmd[1:3], cmd[cmd.index("--protocol") + 1], cmd[cmd.index("--host") + 1]
    (['scheduler', '--protocol'], 'tls', '127.0.0.1')
    """
    return [str(layout.venv / "bin" / "dask"), "scheduler", "--protocol", "tls",
            "--host", "127.0.0.1", "--port", str(layout.dask_port), "--no-dashboard",
            *_tls_args(layout, "scheduler")]


def worker_command(layout: Layout, index: int) -> list[str]:
    """One Dask worker process (one thread: grading runs a subprocess per part).

    >>> " ".join(worker_command(Layout(), 1)[1:3])
    'worker tls://127.0.0.1:8786'
    """
    return [str(layout.venv / "bin" / "dask"), "worker", layout.dask_address,
            "--name", f"w{index}", "--nthreads", "1", "--nworkers", "1",
            "--host", "127.0.0.1", "--no-dashboard",
            "--local-directory", str(layout.grader_home / f"w{index}"),
            "--death-timeout", "60", *_tls_args(layout, "worker")]


def shell_line(cmd: list[str]) -> str:
    """A command as one shell line (for logs and the README).

    >>> shell_line(["a", "b c"])
    "a 'b c'"
    """
    return " ".join(shlex.quote(x) for x in cmd)
