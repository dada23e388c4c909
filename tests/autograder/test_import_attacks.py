"""Hostile submissions at import (``autograder.importer.collect``): every one is refused for
its own student with a reason, the others are imported, nothing is followed, nothing large is
written.  Folder, zip and exchange sources; the exchange owner check uses two throwaway Unix
users (root only: CI runs as root and requires it, ``CI=true`` or ``VIRTCORE_REQUIRE_ROOT=1``).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from autograder import importer
from autograder.assignments import get

A1 = "a1_trap_and_emulate"
NB = "trap_and_emulate.ipynb"
REPO = Path(__file__).resolve().parents[2]
REQUIRE_ROOT = os.environ.get("CI") == "true" or os.environ.get("VIRTCORE_REQUIRE_ROOT") == "1"
SECRET = "TOP-SECRET-course-value-0123456789"


def nb(marker: str) -> str:
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": marker, "id": "x"}]})


def marker_of(course: Path, student: str) -> str | None:
    p = course / "submitted" / student / A1 / NB
    if not p.exists():
        return None
    assert not p.is_symlink()
    return str(json.loads(p.read_text())["cells"][0]["source"])


@pytest.fixture
def course(tmp_path: Path) -> Path:
    c = tmp_path / "course"
    shutil.copytree(REPO / "course" / "source" / A1, c / "source" / A1)
    (c / ".course_secret").write_text(SECRET + "\n")
    (c / ".course_secret").chmod(0o600)
    return c


def collect(course: Path, source: Path, **kw: object) -> dict[str, str]:
    out: dict[str, str] = {}
    for student, what in importer.collect(course, get(A1), source, **kw):  # type: ignore[arg-type]
        out[student] = (out[student] + " | " + what) if student in out else what
    return out


def all_submitted_bytes(course: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (course / "submitted").rglob("*") if p.is_file())


# -- a folder ---------------------------------------------------------------------------------


def test_folder_symlinks_fifos_and_devices_are_refused(course: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "ok").mkdir(parents=True)
    (src / "ok" / NB).write_text(nb("ok"))
    (src / "mallory").mkdir()
    (src / "mallory" / NB).symlink_to(course / ".course_secret")  # the secret
    (src / "eve").mkdir()
    (src / "eve" / NB).symlink_to("/dev/zero")  # would fill the disk
    (src / "sam").symlink_to(course / "source" / A1, target_is_directory=True)  # the solution
    (src / "pip").mkdir()
    os.mkfifo(src / "pip" / NB)  # would block the import forever
    (src / "deep" / A1).mkdir(parents=True)
    (src / "deep" / A1 / NB).symlink_to(course / "source" / A1 / NB)
    got = collect(course, src)
    assert got["ok"] == "new"
    for student in ("mallory", "eve", "sam", "deep"):
        assert got[student].startswith("rejected: "), (student, got[student])
        assert "symbolic link" in got[student]
        assert marker_of(course, student) is None
    assert got["pip"].startswith("rejected: ") and "not a regular file" in got["pip"]
    assert marker_of(course, "ok") == "ok"
    data = all_submitted_bytes(course)
    assert SECRET.encode() not in data and SECRET[::-1].encode() not in data
    assert b"BEGIN SOLUTION" not in data
    assert len(data) < 10_000
    assert "course_secret" not in " ".join(got.values())  # the link target is never quoted
    note = course / "submitted" / "mallory" / A1 / "import-rejected.txt"
    assert "symbolic link" in note.read_text()


def test_a_symlink_swapped_in_after_the_scan_is_not_followed(course: Path,
                                                             tmp_path: Path) -> None:
    """The walk lists a regular file; the student swaps it for a link before it is read."""
    src = tmp_path / "in"
    (src / "tom").mkdir(parents=True)
    (src / "tom" / NB).write_text(nb("tom"))
    entries = importer._walk_folder(src, importer.ImportLimits())
    (src / "tom" / NB).unlink()
    (src / "tom" / NB).symlink_to(course / ".course_secret")
    (entry,) = [e for e in entries if e.parts == ("tom", NB)]
    assert entry.read is not None
    with pytest.raises(importer._RejectedError, match="symbolic link"):
        entry.read(1000)


def test_world_writable_collect_tree_is_not_trusted(course: Path, tmp_path: Path) -> None:
    """`nbgrader collect` leaves submitted/ at 0777: anyone could have replaced a file."""
    src = tmp_path / "submitted"
    for s in ("ann", "bob"):
        (src / s / A1).mkdir(parents=True)
        (src / s / A1 / NB).write_text(nb(s))
    (src / "ann").chmod(0o777)
    (src / "bob" / A1 / NB).chmod(0o666)
    got = collect(course, src)
    for s in ("ann", "bob"):
        assert got[s].startswith("rejected: ") and "writ" in got[s], got[s]
        assert marker_of(course, s) is None
    src.chmod(0o777)
    (src / "ann").chmod(0o755)
    (src / "bob" / A1 / NB).chmod(0o644)
    assert all(w.startswith("rejected") for w in collect(course, src).values())
    src.chmod(0o755)
    assert collect(course, src) == {"ann": "new", "bob": "new"}


def test_a_deeply_nested_notebook_is_refused_without_recursion(course: Path,
                                                               tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "deep").mkdir(parents=True)
    depth = 100_000
    (src / "deep" / NB).write_text('{"cells": [], "x": ' + "[" * depth + "]" * depth + "}")
    (src / "ok").mkdir()
    (src / "ok" / NB).write_text(nb("ok"))
    got = collect(course, src)
    assert got["deep"].startswith("rejected: ") and "100001 levels deep" in got["deep"]
    assert got["ok"] == "new"


# -- a zip ------------------------------------------------------------------------------------


def test_zip_symlink_member_is_refused(course: Path, tmp_path: Path) -> None:
    z = tmp_path / "d.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(f"ok/{NB}", nb("ok"))
        info = zipfile.ZipInfo(f"mallory/{NB}")
        info.create_system = 3
        info.external_attr = 0o120777 << 16
        zf.writestr(info, str(course / ".course_secret"))
    got = collect(course, z)
    assert got["ok"] == "new"
    assert got["mallory"].startswith("rejected: ") and "symbolic link" in got["mallory"]
    assert b"course_secret" not in all_submitted_bytes(course)


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~200 KB zip whose bob/ notebook expands to 200 MB, beside an honest student."""
    z = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr(f"ok/{NB}", nb("ok"))
        with zf.open(f"bob/{NB}", "w") as fh:
            fh.write(b'{"cells": [], "pad": "')
            chunk = b" " * (1 << 20)
            for _ in range(200):
                fh.write(chunk)
            fh.write(b'"}')
    return z


def test_zip_bomb_is_refused_before_extraction(course: Path, bomb: Path) -> None:
    assert bomb.stat().st_size < 300_000
    got = collect(course, bomb)
    assert got["ok"] == "new"
    assert got["bob"].startswith("rejected: ") and "expands to 209715224 bytes" in got["bob"]
    assert sum(p.stat().st_size for p in (course / "submitted").rglob("*") if p.is_file()) \
        < 10_000
    # the ratio limit alone catches it too (a member under the size cap)
    lim = importer.ImportLimits(max_member_bytes=300 * 2**20)
    got = dict(importer.collect(course, get(A1), bomb, limits=lim))
    assert "compression ratio" in got["bob"]


def test_declared_sizes_that_lie_are_capped_while_reading(course: Path, tmp_path: Path) -> None:
    z = tmp_path / "liar.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"liz/{NB}", '{"cells": [], "pad": "' + " " * 5000 + '"}')
    with zipfile.ZipFile(z) as zf:
        (info,) = zf.infolist()
        entries = importer._zip_entries(zf, importer.ImportLimits())
        info.file_size = 10  # what a crafted header could claim
        with pytest.raises(importer._RejectedError, match="cannot be read from the zip"):
            entries[0].read(100_000)  # type: ignore[misc]
    # and a crafted size never makes the import fail: one rejected line
    with zipfile.ZipFile(z) as zf:
        raw = z.read_bytes()
    size = (5000 + 24).to_bytes(4, "little")
    z.write_bytes(raw.replace(size, (10).to_bytes(4, "little")))
    got = collect(course, z)
    assert got["liz"].startswith("rejected: "), got


def test_a_corrupt_nested_zip_does_not_stop_the_others(course: Path, tmp_path: Path) -> None:
    z = tmp_path / "d.zip"
    inner = tmp_path / "zed.zip"
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr(NB, nb("zed"))
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(f"Downloads/amy/{NB}", nb("amy"))
        zf.writestr("Downloads/bad.zip", b"PK\x03\x04 this is not really a zip")
        zf.write(inner, "Downloads/zed.zip")
        deep = tmp_path / "nest.zip"
        with zipfile.ZipFile(deep, "w") as dz:
            dz.writestr("again.zip", inner.read_bytes())
        zf.write(deep, "Downloads/nest.zip")
    got = collect(course, z)
    assert got["amy"] == "new" and got["zed"] == "new"
    assert got["bad"].startswith("rejected: ") and "BadZipFile" in got["bad"]
    assert got["nest"].startswith("rejected: ") and "zip inside a zip" in got["nest"]
    assert (marker_of(course, "amy"), marker_of(course, "zed")) == ("amy", "zed")


def test_lms_names_cannot_be_spoofed_by_the_students_file_name(course: Path,
                                                               tmp_path: Path) -> None:
    z = tmp_path / "lms.zip"
    spoof = f"x_alice_attempt_2099-01-01-00-00-00_{NB}"  # what mallory named her upload
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(f"{A1}_alice_attempt_2024-03-01-10-00-00_{NB}", nb("alice's own"))
        zf.writestr(f"{A1}_mallory_attempt_2024-03-01-11-00-00_{spoof}", nb("by mallory"))
    got = collect(course, z)
    assert got["alice"] == "new"
    assert "imitates an LMS name" in got["mallory"]
    assert marker_of(course, "alice") == "alice's own"
    assert marker_of(course, "mallory") == "by mallory"
    stamp = (course / "submitted" / "alice" / A1 / "timestamp.txt").read_text().strip()
    assert stamp == "2024-03-01 10:00:00"
    # the roster decides between ids with underscores; a label unlike the assignment's too
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(f"Week 3_al_1_attempt_2024-03-02-10-00-00_{NB}", nb("al_1"))
    assert collect(course, z, roster=("al_1", "1")) == {"al_1": "new"}


# -- the exchange ---------------------------------------------------------------------------------


@pytest.fixture
def two_users() -> Iterator[tuple[str, str]]:
    """Two throwaway Unix users (removed afterwards)."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        if REQUIRE_ROOT:
            pytest.fail("the exchange owner check needs root and useradd (required in CI)")
        pytest.skip("creating Unix users needs root and useradd")
    names = [f"vcx{os.getpid() % 100000}a", f"vcx{os.getpid() % 100000}m"]
    made = []
    try:
        for n in names:
            subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", n], check=True,
                           capture_output=True)
            made.append(n)
        yield names[0], names[1]
    finally:
        for n in made:
            subprocess.run(["userdel", n], check=False, capture_output=True)


def _submit(inbound: Path, student: str, stamp: str, owner: str, marker: str) -> Path:
    """A submission as `nbgrader submit` leaves it: dir 0777, files 0644, owned by `owner`."""
    uid = pwd.getpwnam(owner).pw_uid
    d = inbound / f"{student}+{A1}+{stamp}+{os.urandom(4).hex()}"
    d.mkdir()
    (d / NB).write_text(nb(marker))
    (d / "timestamp.txt").write_text(stamp)
    (d / "submission_secret.txt").write_text("s3")
    for p in (d, d / NB, d / "timestamp.txt", d / "submission_secret.txt"):
        os.chown(p, uid, uid)
    for p in (d / NB, d / "timestamp.txt", d / "submission_secret.txt"):
        p.chmod(0o644)
    d.chmod(0o777)
    return d


def test_exchange_submission_must_be_owned_by_its_student(course: Path, tmp_path: Path,
                                                          two_users: tuple[str, str]) -> None:
    alice, mallory = two_users
    inbound = tmp_path / "exchange" / "virtcore" / "inbound"
    inbound.mkdir(parents=True)
    _submit(inbound, alice, "2024-03-01 10:00:00.000000 UTC", alice, "alice's own")
    # mallory, later, under alice's id: nbgrader collect would take it (and only warn)
    _submit(inbound, alice, "2024-03-09 10:00:00.000000 UTC", mallory, "by mallory")
    _submit(inbound, mallory, "2024-03-02 10:00:00.000000 UTC", mallory, "mallory's own")
    got = collect(course, tmp_path / "exchange")
    assert f"owned by user {mallory!r}" in got[alice] and "ignored" in got[alice]
    assert got[alice].endswith("new")
    assert marker_of(course, alice) == "alice's own"
    assert marker_of(course, mallory) == "mallory's own"
    # a file swapped into alice's own (0777) directory by mallory is refused too
    d = _submit(inbound, alice, "2024-03-10 10:00:00.000000 UTC", alice, "alice again")
    (d / NB).unlink()
    (d / NB).write_text(nb("swapped by mallory"))
    os.chown(d / NB, pwd.getpwnam(mallory).pw_uid, -1)
    got = collect(course, tmp_path / "exchange")
    assert got[alice].endswith(f"owned by user {mallory!r} (uid"
                               f" {pwd.getpwnam(mallory).pw_uid}) (graded as missing)")
    assert marker_of(course, alice) is None
    # a mapping student id -> user name is honoured
    shutil.rmtree(d)
    _submit(inbound, "alice-id", "2024-03-03 10:00:00.000000 UTC", alice, "mapped")
    got = collect(course, tmp_path / "exchange", uid_map={"alice-id": alice})
    assert got["alice-id"] == "new"


def test_exchange_symlinked_submission_is_ignored(course: Path, tmp_path: Path) -> None:
    inbound = tmp_path / "exchange" / "virtcore" / "inbound"
    inbound.mkdir(parents=True)
    real = tmp_path / "elsewhere"
    real.mkdir()
    (real / NB).write_text(nb("x"))
    (inbound / f"kim+{A1}+2024-03-01 10:00:00.000000 UTC").symlink_to(real)
    d = inbound / f"lee+{A1}+2024-03-01 10:00:00.000000 UTC"
    d.mkdir()
    (d / NB).symlink_to(course / ".course_secret")
    got = collect(course, tmp_path / "exchange")
    assert "not a directory" in got["kim"]
    assert got["lee"].startswith("rejected: ") and "symbolic link" in got["lee"]
    assert not (course / "submitted" / "kim" / A1 / NB).exists()
