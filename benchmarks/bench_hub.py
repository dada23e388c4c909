"""The course hub: bring-up time, login → running server, PostgreSQL gradebook writes per second.

Brings a hub up with ``deploy.hub`` (as root; loopback only, private ports and accounts) and
measures:

- ``up``, phase by phase (shared environment check, accounts, PostgreSQL, the course, Dask,
  JupyterHub);
- **login → running server**: a PAM login through the hub's token API, the server started
  through the hub API, polled until ready — for each student, twice (the second start after
  stopping the server);
- **gradebook writes per second**: ``CourseGradebook.record`` of one graded a1 submission per
  student, one transaction each (exactly what ``grade`` does), for ``K`` students into the
  hub's PostgreSQL, and — the baseline, in the same run — into a fresh SQLite gradebook;

then takes the hub down and checks nothing is left.  Skipped (one row saying why) when not
root.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._util import Row

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENT = "a1_trap_and_emulate"
WRITES = 300


def _result(spec: Any, student: str) -> Any:
    from autograder.grade import CheckResult, NotebookResult, PartResult

    parts = [PartResult(p.grade_id, p.points, p.points, "ok",
                        [CheckResult(c.name, c.points, c.points, True, "ok", c.hidden)
                         for c in p.checks]) for p in spec.parts]
    return NotebookResult(student, spec.name, spec.points, spec.points, "ok", parts, "", 1.0)


def _writes_per_second(db_url: str, course_id: str, source_nb: Path, n: int) -> float:
    from autograder import assignments
    from autograder.gradebook import CourseGradebook

    spec = assignments.get(ASSIGNMENT)
    results = [_result(spec, f"bench{i:04d}") for i in range(n)]
    with CourseGradebook(db_url, course_id) as gb:
        gb.ensure_assignment(spec, source_nb)
        t0 = time.perf_counter()
        for r in results:
            gb.record(spec, r, timestamp="2026-01-01 00:00:00 UTC")
        return n / (time.perf_counter() - t0)


def _spawn_times(hub: Any, info: Any, users: list[str]) -> list[float]:
    from deploy.hub import http_json

    times = []
    for rnd in range(2):
        for user in users:
            t0 = time.perf_counter()
            tok = http_json(f"{info.url}/hub/api/users/{user}/tokens", method="POST",
                            body={"auth": {"username": user, "password": info.passwords[user]},
                                  "expires_in": 600}, timeout=30)["token"]
            http_json(f"{info.url}/hub/api/users/{user}/server", method="POST", token=tok,
                      body={}, timeout=30)
            while True:
                model = http_json(f"{info.url}/hub/api/users/{user}", token=tok)
                if (model.get("servers", {}).get("") or {}).get("ready"):
                    break
                if time.perf_counter() - t0 > 180:
                    raise RuntimeError(f"{user}'s server did not start")
                time.sleep(0.1)
            times.append(time.perf_counter() - t0)
            if rnd == 0:
                http_json(f"{info.url}/hub/api/users/{user}/server", method="DELETE",
                          token=info.admin_token, timeout=60)
                while (http_json(f"{info.url}/hub/api/users/{user}", token=info.admin_token)
                       .get("servers")):
                    time.sleep(0.2)
    return times


def run() -> list[Row]:
    """Bring a hub up, time logins/spawns and gradebook writes, take it down."""
    if os.geteuid() != 0:
        return [Row("skipped: the hub benchmark needs root (accounts, PAM)", 0, "")]
    sys.path.insert(0, str(REPO))
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    from deploy.config import Layout
    from deploy.hub import Deployment, free_port

    base = Path(tempfile.mkdtemp(prefix="virtcore-bench-hub-", dir="/tmp"))
    base.chmod(0o755)
    lay = Layout(root=base / "srv", exchange=base / "exchange", home_base=base / "home",
                 user_prefix=f"vb{os.getpid() % 100000}-", n_students=2,
                 http_port=free_port(), hub_api_port=free_port(), proxy_api_port=free_port(),
                 dask_port=free_port(), pg_port=free_port())
    dep = Deployment(lay)
    rows: list[Row] = []
    try:
        t0 = time.perf_counter()
        info = dep.up()
        t_up = time.perf_counter() - t0
        rows.append(Row("make hub (up), total", t_up, "s",
                        ", ".join(f"{k} {v:.1f}" for k, v in info.timings.items())))
        spawns = _spawn_times(dep, info, list(lay.students))
        rows.append(Row("login (PAM) -> running server, median of 4", statistics.median(spawns),
                        "s", f"min {min(spawns):.1f} max {max(spawns):.1f}"))
        src = REPO / "course" / "source" / ASSIGNMENT / "trap_and_emulate.ipynb"
        pg = _writes_per_second(info.gradebook_url, lay.course_id, src, WRITES)
        with tempfile.TemporaryDirectory() as d:
            lite = _writes_per_second(f"sqlite:///{d}/gradebook.db", lay.course_id, src,
                                      WRITES)
        rows.append(Row(f"gradebook writes, PostgreSQL ({WRITES} students)", pg, "/s",
                        "one transaction per student, as grade does"))
        rows.append(Row(f"gradebook writes, SQLite baseline ({WRITES} students)", lite, "/s",
                        f"PostgreSQL / SQLite = {pg / lite:.2f}"))
    finally:
        t0 = time.perf_counter()
        left = dep.down()
        rows.append(Row("make hub-down", time.perf_counter() - t0, "s",
                        "nothing left" if not left else f"LEFT: {left}"))
        shutil.rmtree(base, ignore_errors=True)
    return rows
