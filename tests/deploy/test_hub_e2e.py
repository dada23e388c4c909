"""The course hub end to end: real Unix users, PAM logins, JupyterHub, the exchange, PostgreSQL,
grading on a TLS Dask cluster, feedback, formgrader — then everything taken down.

One deployment (``deploy.hub.Deployment``) on loopback, with accounts ``vt<pid>-instructor``,
``…-student1``, ``…-student2`` and ``…-grader`` under a private root in /tmp:

1. ``up``: PostgreSQL, the course (init, release of a1, ``nbgrader release_assignment`` as the
   instructor), a Dask scheduler and two workers as the grader account, the hub and its proxy;
2. student 1 logs in through the login page in headless Chromium, opens JupyterLab's
   Nbgrader ▸ Assignment List, fetches a1 and submits it unchanged (a blank submission);
3. student 2 works through the REST API only: a hub token from the password (PAM), the
   server started through the hub API, ``assignments/fetch`` on their server, the answers
   written into the fetched notebook through the contents API, ``assignments/submit``;
4. student 1, knowing student 2's name, plants a later "submission" under student 2's id in
   the exchange (the classic spoof): the import must ignore it (owner check);
5. root imports from the exchange, grades on the cluster (``grade --cluster tls://…``) into
   PostgreSQL, writes feedback; the instructor runs ``nbgrader release_feedback``; student 1
   fetches it with the button in the browser, student 2 through the API;
6. the scores: full for student 2, zero for the blank — in the gradebook, in the feedback the
   students fetched, and in formgrader's API on the instructor's server;
7. permissions, probed as student 1: another home, the instructor's source and secret, the
   exchange's inbound listing and another's submitted notebook, the gradebook database, the
   Dask scheduler without a certificate and the workers' key — all refused;
8. ``down``: no process, account, port or directory of the deployment is left.

Needs root, PostgreSQL, npm (or an installed proxy), Debian's python3-venv, Chromium and
Playwright; without them it skips with the reason, unless ``VIRTCORE_REQUIRE_HUB=1`` (set by
``.ci/run``) makes that a failure.  The shared environment (/opt/virtcore-hub/venv) is built
on first use (~1.5–2.5 min) and reused.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy import config as cfg
from deploy.config import Layout
from deploy.hub import RUNUSER, Deployment, HubInfo, free_port, http_json, uid_processes

pytestmark = pytest.mark.hub

REPO = Path(__file__).resolve().parents[2]
A1 = "a1_trap_and_emulate"
NB = "trap_and_emulate.ipynb"
REQUIRE = os.environ.get("VIRTCORE_REQUIRE_HUB") == "1"
ARTEFACTS = REPO / "test-artefacts" / "hub"
SPAWN_TIMEOUT = 120.0
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (creates Unix accounts, PAM logins, a PostgreSQL cluster)"
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        return "PostgreSQL is not installed (apt-get install postgresql)"
    proxy = REPO / "deploy" / ".node" / "node_modules" / ".bin" / "configurable-http-proxy"
    if not proxy.exists() and shutil.which("npm") is None:
        return "npm is missing for configurable-http-proxy (apt-get install nodejs npm)"
    if subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"],
                      capture_output=True, check=False).returncode != 0:
        return "Debian's python3-venv is missing (apt-get install python3-venv)"
    for tool in ("useradd", "userdel", "chpasswd", "runuser"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    if not os.access("/usr/bin/chromium", os.X_OK):
        return "Chromium is missing (/usr/bin/chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing"
    return None


def _helpers() -> Any:
    spec = importlib.util.spec_from_file_location("course_helpers",
                                                  REPO / "tests" / "course" / "_helpers.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- the deployment -------------------------------------------------------------------------------


class Hub:
    """The running deployment and what the steps hand to each other."""

    def __init__(self, dep: Deployment, info: HubInfo) -> None:
        self.dep = dep
        self.info = info
        self.lay = dep.layout
        self.tokens: dict[str, str] = {}
        self.timings: dict[str, float] = dict(info.timings)
        self.page: Any = None

    @property
    def s1(self) -> str:
        return self.lay.students[0]

    @property
    def s2(self) -> str:
        return self.lay.students[1]

    def token(self, user: str) -> str:
        """A hub API token for ``user``, obtained with the password (a PAM login)."""
        if user not in self.tokens:
            body = {"auth": {"username": user, "password": self.info.passwords[user]},
                    "expires_in": 1800, "note": "virtcore e2e"}
            tok = http_json(f"{self.info.url}/hub/api/users/{user}/tokens", method="POST",
                            body=body, timeout=30)
            self.tokens[user] = tok["token"]
        return self.tokens[user]

    def start_server(self, user: str) -> float:
        """Start ``user``'s server through the hub API; seconds until it is ready."""
        t0 = time.monotonic()
        token = self.token(user)
        try:
            http_json(f"{self.info.url}/hub/api/users/{user}/server", method="POST",
                      token=token, body={}, timeout=30)
        except urllib.error.HTTPError as e:  # 400: already running
            e.close()
            if e.code != 400:
                raise
        deadline = t0 + SPAWN_TIMEOUT
        while True:
            model = http_json(f"{self.info.url}/hub/api/users/{user}", token=token)
            server = model.get("servers", {}).get("")
            if server and server.get("ready"):
                return time.monotonic() - t0
            assert time.monotonic() < deadline, f"{user}'s server not ready: {model}"
            time.sleep(0.3)

    def server(self, user: str, path: str, *, method: str = "GET", form: dict[str, str] | None
               = None, body: Any = None, timeout: float = 60) -> Any:
        """A request to ``user``'s own server with their token (form- or JSON-encoded)."""
        headers = {"Authorization": f"token {self.token(user)}"}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(f"{self.info.url}/user/{user}/{path.lstrip('/')}",
                                     data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def as_user(self, user: str, code: str,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run Python ``code`` as ``user`` with the shared environment's interpreter."""
        return subprocess.run([RUNUSER, "-u", user, "--", str(self.lay.python), "-c", code],
                              capture_output=True, text=True, timeout=timeout, check=False,
                              cwd="/", env={"PATH": "/usr/bin:/bin", "HOME": str(
                                  self.lay.home(user)), "LANG": "C.UTF-8"})


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    reason = _missing()
    if reason:
        if REQUIRE:
            pytest.fail(f"VIRTCORE_REQUIRE_HUB=1 but {reason}")
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="virtcore-e2e-", dir="/tmp"))
    base.chmod(0o755)
    tag = f"vt{os.getpid() % 100000}-"
    lay = Layout(root=base / "srv", exchange=base / "exchange", home_base=base / "home",
                 user_prefix=tag, n_students=2, http_port=free_port(), hub_api_port=free_port(),
                 proxy_api_port=free_port(), dask_port=free_port(), pg_port=free_port())
    dep = Deployment(lay)
    try:
        info = dep.up()
        h = Hub(dep, info)
        yield h
    finally:
        left = dep.down()
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"left behind: {left}"


@pytest.fixture(scope="module")
def browser(hub: Hub) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="virtcore-e2e-chromium-")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900})
        ctx.set_default_timeout(90_000)
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


# -- the steps, in order --------------------------------------------------------------------------


def test_up_released_a1_into_the_exchange(hub: Hub) -> None:
    """The course is set up: a1 in the exchange's outbound, owned by the instructor."""
    outbound = hub.lay.exchange / hub.lay.course_id / "outbound" / A1 / NB
    assert outbound.is_file()
    assert outbound.stat().st_uid == _uid(hub.lay.instructor)
    assert hub.lay.exchange.stat().st_mode & 0o7777 == 0o1777
    for user in (hub.lay.instructor, *hub.lay.students):
        assert hub.lay.home(user).stat().st_mode & 0o777 == 0o700, user
    print("up:", ", ".join(f"{k} {v:.1f} s" for k, v in hub.timings.items()))


def test_student1_fetches_and_submits_in_the_browser(hub: Hub, browser: Any) -> None:
    """Login page (PAM) → JupyterLab → Nbgrader ▸ Assignment List → Fetch → Submit."""
    page = browser.new_page()
    hub.page = page
    t0 = time.monotonic()
    page.goto(f"{hub.info.url}/hub/login")
    page.fill("#username_input", hub.s1)
    page.fill("#password_input", hub.info.passwords[hub.s1])
    page.click("#login_submit")
    page.wait_for_url(f"**/user/{hub.s1}/lab**", timeout=SPAWN_TIMEOUT * 1000)
    menu = page.locator(".lm-MenuBar-item", has_text="Nbgrader").first
    menu.wait_for()
    hub.timings["browser login to JupyterLab"] = time.monotonic() - t0
    menu.click()
    page.locator(".lm-Menu-item", has_text="Assignment List").first.click()
    released = page.locator("#released_assignments_list .list_item", has_text=A1)
    released.locator("button", has_text="Fetch").click()
    fetched = page.locator("#fetched_assignments_list .list_item", has_text=A1).first
    fetched.wait_for()
    fetched.locator("button", has_text="Submit").click()
    page.locator("#submitted_assignments_list .list_item", has_text=A1).first.wait_for()
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / "student1-submitted.png"))
    assert (hub.lay.home(hub.s1) / A1 / NB).is_file()
    inbound = hub.lay.exchange / hub.lay.course_id / "inbound"
    mine = [d for d in inbound.iterdir() if d.name.startswith(f"{hub.s1}+{A1}+")]
    assert len(mine) == 1 and mine[0].stat().st_uid == _uid(hub.s1)


def test_student2_fetches_solves_and_submits_through_the_api(hub: Hub) -> None:
    """Token from the password, server via the hub API, nbgrader's handlers, contents API."""
    hub.timings["REST login to running server"] = hub.start_server(hub.s2)
    listed = hub.server(hub.s2, f"assignments?course_id={hub.lay.course_id}")
    assert [a["status"] for a in listed["value"] if a["assignment_id"] == A1] == ["released"]
    form = {"course_id": hub.lay.course_id, "assignment_id": A1}
    hub.server(hub.s2, "assignments/fetch", method="POST", form=form)
    path = f"api/contents/{A1}/{NB}"
    model = hub.server(hub.s2, f"{path}?type=notebook&content=1")
    nb = _solve(model["content"], hub)
    hub.server(hub.s2, path, method="PUT", body={"type": "notebook", "format": "json",
                                                 "content": nb})
    done = hub.server(hub.s2, "assignments/submit", method="POST", form=form)
    assert any(a["status"] == "submitted" for a in done["value"]), done


def test_a_spoofed_submission_is_not_imported(hub: Hub) -> None:
    """Student 1 plants a later, blank "submission" under student 2's id; import skips it."""
    inbound = hub.lay.exchange / hub.lay.course_id / "inbound"
    real = [d for d in inbound.iterdir() if d.name.startswith(f"{hub.s2}+{A1}+")]
    assert len(real) == 1
    fake = inbound / f"{hub.s2}+{A1}+2099-01-01 00:00:00.000000 UTC+spoof"
    blank = hub.lay.home(hub.s1) / A1 / NB
    code = (f"import os, shutil; os.mkdir({str(fake)!r}); "
            f"shutil.copy({str(blank)!r}, {str(fake / NB)!r}); print('planted')")
    proc = hub.as_user(hub.s1, code)
    assert "planted" in proc.stdout, proc.stderr  # the exchange lets anyone create a folder
    proc = hub.dep.autograder("import", A1, str(hub.lay.exchange))
    out = proc.stdout + proc.stderr
    assert hub.s1 in out and hub.s2 in out
    assert "owned by" in out or "owner" in out, out  # the spoof is reported
    sub = hub.lay.course_dir / "submitted" / hub.s2 / A1 / NB
    got = json.loads(sub.read_text())
    src = json.loads((hub.lay.home(hub.s2) / A1 / NB).read_text())
    assert [c["source"] for c in got["cells"]] == [c["source"] for c in src["cells"]]


def test_grade_on_the_cluster_into_postgresql(hub: Hub) -> None:
    """``grade --cluster tls://…`` on the two workers; the scores land in PostgreSQL."""
    t0 = time.monotonic()
    env_tls = {"VIRTCORE_DASK_TLS": str(hub.info.tls_dir)}
    proc = _autograder_env(hub, env_tls, "grade", A1, "--cluster", hub.info.dask_address,
                           "--timeout", "60")
    hub.timings["grade 2 on the cluster"] = time.monotonic() - t0
    print(proc.stdout[-2000:])
    from autograder.gradebook import CourseGradebook

    total = 45.0
    with CourseGradebook(hub.info.gradebook_url, hub.lay.course_id) as gb:
        assert sum(gb.part_scores(A1, hub.s2).values()) == pytest.approx(total)
        assert sum(gb.part_scores(A1, hub.s1).values()) == 0.0
    # graded on the workers, as the grader account: the scheduler saw the tasks
    log = (hub.lay.logs / "dask-scheduler.log").read_text(errors="replace")
    assert "Receive client connection" in log


def test_feedback_reaches_both_students(hub: Hub) -> None:
    """``feedback`` + ``nbgrader release_feedback``; fetched in the browser and via the API."""
    hub.dep.autograder("feedback", A1)
    hub.dep.nbgrader_as(hub.lay.instructor, "release_feedback", A1,
                        f"--course={hub.lay.course_id}")
    page = hub.page
    page.locator("#refresh_assignments_list").click()
    page.locator("#submitted_assignments_list .list_item", has_text=A1).locator(
        "button", has_text="Fetch Feedback").first.click()
    form = {"course_id": hub.lay.course_id, "assignment_id": A1}
    hub.server(hub.s2, "assignments/fetch_feedback", method="POST", form=form)
    for student, score in ((hub.s1, "0 / 45"), (hub.s2, "45 / 45")):
        deadline = time.monotonic() + 60
        while True:
            pages = list((hub.lay.home(student) / A1 / "feedback").glob("*/*.html"))
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert pages, f"no feedback fetched by {student}"
        text = pages[0].read_text()
        assert f"<b>{score}</b>" in text, (student, text[:800])  # not "10 / 45" for "0 / 45"
        assert pages[0].stat().st_uid == _uid(student)
    page.screenshot(path=str(ARTEFACTS / "student1-feedback.png"))


def test_formgrader_shows_the_autograder_scores(hub: Hub) -> None:
    """The instructor's formgrader (nbgrader's API on their server) reads the same gradebook."""
    hub.start_server(hub.lay.instructor)
    subs = hub.server(hub.lay.instructor, f"formgrader/api/submissions/{A1}")
    by_student = {s["student"]: s for s in subs}
    assert by_student[hub.s2]["score"] == pytest.approx(45.0)
    assert by_student[hub.s2]["max_score"] == pytest.approx(45.0)
    assert by_student[hub.s1]["score"] == 0.0
    # a student's server has no formgrader
    with pytest.raises(urllib.error.HTTPError) as err:
        hub.server(hub.s2, f"formgrader/api/submissions/{A1}")
    assert err.value.code == 404
    err.value.close()


def test_a_student_reaches_nothing_of_others(hub: Hub) -> None:
    """Probes run as student 1: every one must be refused by the system, not by politeness."""
    lay = hub.lay
    inbound = lay.exchange / lay.course_id / "inbound"
    real = next(d for d in inbound.iterdir() if d.name.startswith(f"{hub.s2}+{A1}+")
                and "spoof" not in d.name)
    probes = {
        "read another's home": f"os.listdir({str(lay.home(hub.s2))!r})",
        "read another's notebook": f"open({str(lay.home(hub.s2) / A1 / NB)!r}).read()",
        "read the instructor's source": f"open({str(lay.course_dir / 'source' / A1 / NB)!r})"
                                        ".read()",
        "read the course secret": f"open({str(lay.course_dir / '.course_secret')!r}).read()",
        "list the exchange's inbound": f"os.listdir({str(inbound)!r})",
        "overwrite another's submission": f"open({str(real / NB)!r}, 'w').write('x')",
        "write another's collected copy": f"open({str(lay.course_dir / 'submitted' / hub.s2 / A1 / NB)!r}, 'w').write('x')",  # noqa: E501
        "read the Dask workers' key": f"open({str(lay.tls_dir / 'worker-key.pem')!r}).read()",
        "connect to the gradebook": "import psycopg2; psycopg2.connect("
                                    f"host={str(lay.pg_socket_dir)!r}, port={lay.pg_port},"
                                    f" dbname={lay.course_id!r}, user={lay.instructor!r})",
        # with a certificate of one's own making: the scheduler accepts only its CA's
        "run code on the Dask cluster": "from distributed import Client; "
                                        "from distributed.security import Security; "
                                        f"Client({hub.info.dask_address!r}, timeout=5,"
                                        " security=Security.temporary())",
    }
    code = ("import json, os\nout = {}\n" + "".join(
        f"try:\n    {stmt}\n    out[{name!r}] = 'ALLOWED'\n"
        f"except Exception as e:\n    out[{name!r}] = type(e).__name__ + ': ' + str(e)[:120]\n"
        for name, stmt in probes.items()) + "print(json.dumps(out))")
    proc = hub.as_user(hub.s1, code, timeout=90)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    allowed = {k: v for k, v in results.items() if v == "ALLOWED"}
    assert not allowed, f"student 1 could: {sorted(allowed)}\n{results}"
    assert "Permission" in results["read another's home"]
    assert "Permission" in results["read the instructor's source"]
    assert "Permission" in results["overwrite another's submission"]


def test_down_leaves_nothing(hub: Hub) -> None:
    """Everything ``up`` started is stopped, every account and directory it made removed."""
    uids = [_uid(u) for u in hub.dep.state["users"]]
    left = hub.dep.down()
    assert left == []
    for uid in uids:
        running = uid_processes({uid})  # zombies are dead already (their parent reaps them)
        assert not running, f"processes of uid {uid} still run: {running}"
    print("timings:", json.dumps({k: round(v, 1) for k, v in hub.timings.items()}))


# -- helpers --------------------------------------------------------------------------------------


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def _solve(nb: dict[str, Any], hub: Hub) -> dict[str, Any]:
    """The fetched notebook with every answer cell replaced by the source's solution."""
    helpers = _helpers()
    src = helpers.read_nb(REPO / "course" / "source" / A1 / NB)
    solutions = {helpers.nbg(c).get("grade_id"): helpers.strip_markers(c.source)
                 for c in src.cells if helpers.nbg(c).get("solution")}
    filled = 0
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution") and meta.get("grade_id") in solutions:
            cell["source"] = solutions[meta["grade_id"]]
            filled += 1
    assert filled == len(solutions) >= 4
    return nb


def _autograder_env(hub: Hub, extra: dict[str, str],
                    *args: str) -> subprocess.CompletedProcess[str]:
    lay = hub.lay
    env = {**hub.dep.tool_env(), **extra}
    proc = subprocess.run([str(lay.python), "-m", "autograder", *args, "--course",
                           str(lay.course_dir), "--db-url", cfg.gradebook_url(lay)],
                          capture_output=True, text=True, timeout=600, cwd=lay.course_dir,
                          env=env, check=False)
    assert proc.returncode == 0, f"autograder {args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc
