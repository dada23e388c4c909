"""The hub's generated configuration: it loads in the real programs and says what we mean.

The JupyterHub config is executed with traitlets (as JupyterHub does) and its pre-spawn hook
run on stand-in spawners; the nbgrader config is loaded by nbgrader's own config loader; the
PostgreSQL files are checked line by line.  Nothing here needs root.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from traitlets.config import Config, PyFileConfigLoader

from deploy import config as cfg
from deploy.config import Layout
from deploy.hub import port_free

LAY = Layout(root=Path("/srv/t"), exchange=Path("/srv/t/exchange"), home_base=Path("/srv/t/home"),
             user_prefix="t-", n_students=3, http_port=18000, dask_port=18786, pg_port=15439,
             proxy_command=("/x/chp",))


def _load(text: str, tmp_path: Path, name: str) -> Config:
    path = tmp_path / name
    path.write_text(text)
    loader = PyFileConfigLoader(name, path=str(tmp_path))
    return loader.load_config()


@pytest.fixture
def hub_config(tmp_path: Path) -> Config:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    return _load(cfg.jupyterhub_config(LAY, admin_token_file=token), tmp_path, "jh_config.py")


def test_hub_listens_on_loopback_only(hub_config: Config) -> None:
    jh = hub_config.JupyterHub
    assert (jh.ip, jh.port, jh.hub_ip) == ("127.0.0.1", 18000, "127.0.0.1")
    assert hub_config.ConfigurableHTTPProxy.api_url.startswith("http://127.0.0.1:")
    assert hub_config.ConfigurableHTTPProxy.command == ["/x/chp"]


def test_accounts_groups_and_no_admin_user(hub_config: Config) -> None:
    assert hub_config.JupyterHub.authenticator_class == "pam"
    assert hub_config.Authenticator.allowed_users == {"t-instructor", "t-student1",
                                                      "t-student2", "t-student3"}
    assert hub_config.Authenticator.admin_users == set()
    groups = hub_config.JupyterHub.load_groups
    assert groups["formgrade-virtcore"]["users"] == ["t-instructor"]
    assert groups["nbgrader-virtcore"]["users"] == ["t-student1", "t-student2", "t-student3"]
    (svc,) = hub_config.JupyterHub.services
    assert svc == {"name": cfg.ADMIN_SERVICE, "api_token": "s3cret"}
    (role,) = hub_config.JupyterHub.load_roles
    assert role["services"] == [cfg.ADMIN_SERVICE] and "admin:users" in role["scopes"]
    assert "read:users:groups!user" in hub_config.Spawner.server_token_scopes


def _spawn(hub_config: Config, groups: list[str]) -> dict[str, Any]:
    spawner = SimpleNamespace(user=SimpleNamespace(groups=[SimpleNamespace(name=g)
                                                           for g in groups]),
                              environment={})
    hub_config.Spawner.pre_spawn_hook(spawner)
    return spawner.environment


def test_pre_spawn_gives_each_role_its_config(hub_config: Config) -> None:
    inst = _spawn(hub_config, ["formgrade-virtcore"])
    stud = _spawn(hub_config, ["nbgrader-virtcore"])
    assert inst["JUPYTER_CONFIG_PATH"] == "/srv/t/etc/jupyter/instructor"
    assert stud["JUPYTER_CONFIG_PATH"] == "/srv/t/etc/jupyter/student"
    assert inst["VIRTCORE_GRADEBOOK_URL"] == cfg.gradebook_url(LAY)
    assert "VIRTCORE_GRADEBOOK_URL" not in stud  # students never learn where the gradebook is
    assert stud["PATH"].startswith("/opt/virtcore-hub/venv/bin:")
    assert hub_config.Spawner.cmd == ["/opt/virtcore-hub/venv/bin/jupyterhub-singleuser"]


def test_nbgrader_config_per_role(tmp_path: Path) -> None:
    inst = _load(cfg.nbgrader_config(LAY, "instructor"), tmp_path, "nbgrader_config.py")
    assert inst.Exchange.root == "/srv/t/exchange"
    assert inst.CourseDirectory.root == "/srv/t/home/t-instructor/course"
    assert inst.CourseDirectory.course_id == "virtcore"
    assert inst.Authenticator.plugin_class == "nbgrader.auth.JupyterHubAuthPlugin"
    stud = _load(cfg.nbgrader_config(LAY, "student"), tmp_path, "nbgrader_config.py")
    assert "root" not in stud.CourseDirectory
    with pytest.raises(ValueError, match="unknown role"):
        cfg.nbgrader_config(LAY, "admin")


def test_students_have_no_formgrader() -> None:
    stud = json.loads(cfg.server_extensions("student"))["ServerApp"]["jpserver_extensions"]
    inst = json.loads(cfg.server_extensions("instructor"))["ServerApp"]["jpserver_extensions"]
    assert stud["nbgrader.server_extensions.formgrader"] is False
    assert stud["nbgrader.server_extensions.assignment_list"] is True
    assert inst["nbgrader.server_extensions.formgrader"] is True
    lab = json.loads(cfg.lab_page_config("student"))["disabledExtensions"]
    assert lab["@jupyter/nbgrader:formgrader"] is True
    assert json.loads(cfg.lab_page_config("instructor"))["disabledExtensions"] == {}


def test_postgresql_socket_only_and_peer_map() -> None:
    conf = cfg.postgresql_conf(LAY)
    assert "listen_addresses = ''" in conf and "port = 15439" in conf
    assert "unix_socket_directories = '/srv/t/state/pg/run'" in conf
    hba = [ln.split() for ln in cfg.pg_hba(LAY).splitlines() if not ln.startswith("#")]
    assert all(row[0] == "local" for row in hba)  # no host (TCP) line at all
    assert ["local", "virtcore", "all", "peer", "map=virtcore"] in hba
    ident = [ln.split() for ln in cfg.pg_ident(LAY).splitlines() if not ln.startswith("#")]
    assert sorted(ident) == [["virtcore", "root", "t-instructor"],
                             ["virtcore", "t-instructor", "t-instructor"]]
    url = cfg.gradebook_url(LAY)
    assert url.startswith("postgresql+psycopg2://t-instructor@/virtcore?")  # driver named


def test_dask_commands_are_tls_on_loopback() -> None:
    sched = cfg.scheduler_command(LAY)
    assert sched[sched.index("--protocol") + 1] == "tls"
    assert sched[sched.index("--host") + 1] == "127.0.0.1"
    assert "--no-dashboard" in sched
    assert sched[sched.index("--tls-key") + 1] == "/srv/t/state/tls/scheduler-key.pem"
    w = cfg.worker_command(LAY, 2)
    assert w[2] == "tls://127.0.0.1:18786"
    assert w[w.index("--tls-cert") + 1] == "/srv/t/state/tls/worker.pem"
    assert w[w.index("--nthreads") + 1] == "1"


def test_roster_and_layout() -> None:
    rows = cfg.students_csv(LAY).splitlines()
    assert rows[0] == "id,first_name,last_name,email"
    assert [r.split(",")[0] for r in rows[1:]] == list(LAY.students)
    assert LAY.course_dir == Path("/srv/t/home/t-instructor/course")
    assert LAY.grader == "t-grader"
    assert LAY.url == "http://127.0.0.1:18000"


def test_port_free_sees_a_listener() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not port_free(port)
    assert port_free(port)
